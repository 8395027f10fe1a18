rockspec_format = "3.0"
package = "sqlnotify"
version = "scm-1"
source = {
  url = "git+file:///sqlnotify-lua",
}
description = {
  summary = "React to database changes (INSERT, UPDATE, DELETE) in near real time, in Lua",
  detailed = [[
    sqlnotify-lua embeds Lua 5.4 in a small C host. Watcher scripts subscribe to row
    changes on PostgreSQL (LISTEN/NOTIFY) and SQLite (a trigger-fed change log with
    file-change wake-ups); triggers are generated and managed for them.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson",
}
external_dependencies = {
  LIBPQ = { header = "postgresql/libpq-fe.h" },
  SQLITE = { header = "sqlite3.h" },
  LIBEV = { header = "ev.h" },
}
build = {
  type = "make",
  build_target = "all",
  install_target = "install",
  build_variables = {},
  install_variables = {
    PREFIX = "$(PREFIX)",
    BINDIR = "$(BINDIR)",
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
  },
}
