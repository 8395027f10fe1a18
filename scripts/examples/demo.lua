-- The embedded demo: a fresh SQLite database, a table, writes made from a timer,
-- and every change printed as it arrives. Needs no server; stops by itself.
--
-- Run it:  make demo
--   or:    build/sqlnotify-lua scripts/examples/demo.lua /tmp/demo.db
local sqlnotify = require("sqlnotify")

local path = arg[1] or os.tmpname()
os.remove(path)
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path .. "?mode=rwc", use_logger = false })
assert(n:query("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)"))

n:watch("tasks", sqlnotify.INSERT, { extra_columns = { "title" } })
 :watch("tasks", sqlnotify.UPDATE, { extra_columns = { "title", "done" }, trigger_columns = { "done" } })
 :watch("tasks", sqlnotify.DELETE, { extra_columns = { "title" } })

local t0 = sqlnotify.now()
local function show(ev)
  local x = ev.extra_columns
  print(string.format("%7.1f ms  %-6s task %d  %-22s%s", (sqlnotify.now() - t0) * 1000, ev.operation, ev.id,
    string.format("%q", x.title or ""), x.done ~= nil and ("  done=" .. x.done) or ""))
end
for _, op in ipairs { sqlnotify.INSERT, sqlnotify.UPDATE, sqlnotify.DELETE } do
  n:subscribe("tasks", op, show)
end

local steps = {
  { "INSERT INTO tasks (title) VALUES (?)", "write the demo" },
  { "INSERT INTO tasks (title) VALUES (?)", "run make check" },
  { "INSERT INTO tasks (title) VALUES (?)", "ship it" },
  { "UPDATE tasks SET title = 'write the demo!' WHERE id = ?", 1 }, -- done unchanged: no event
  { "UPDATE tasks SET done = 1 WHERE id = ?", 1 },
  { "DELETE FROM tasks WHERE id = ?", 2 },
}
local i = 0
local writer
writer = sqlnotify.every(0.2, function()
  i = i + 1
  local step = steps[i]
  if not step then
    writer:stop()
    sqlnotify.after(0.3, function()
      print("demo done: " .. path)
      n:close()
      os.remove(path)
      sqlnotify.stop()
    end)
    return
  end
  print(string.format("%7.1f ms  write: %s  [%s]", (sqlnotify.now() - t0) * 1000, step[1], step[2]))
  assert(n:query(step[1], step[2]))
end)

print("watching tasks in " .. path)
n:start()
sqlnotify.run()
