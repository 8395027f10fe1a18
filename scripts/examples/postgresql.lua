-- A PostgreSQL watcher: prints every insert, update and delete on a users table.
--
-- Run it (the table is created if missing):
--   DATABASE_URL=postgresql://root@127.0.0.1/test build/sqlnotify-lua scripts/examples/postgresql.lua
-- then, from another terminal:
--   psql postgresql://root@127.0.0.1/test -c "INSERT INTO users (email, plan) VALUES ('ann@example.com', 'pro')"
--   psql postgresql://root@127.0.0.1/test -c "UPDATE users SET email = 'ann@example.org'"
--   psql postgresql://root@127.0.0.1/test -c "DELETE FROM users"
-- Stop it with Ctrl-C.
local sqlnotify = require("sqlnotify")

local n = assert(sqlnotify.notifier{ url = os.getenv("DATABASE_URL") or "postgresql://root@127.0.0.1/test" })
assert(n:query([[CREATE TABLE IF NOT EXISTS users (
  id serial PRIMARY KEY, email text NOT NULL, plan text NOT NULL DEFAULT 'free')]]))

n:watch("users", sqlnotify.INSERT, { extra_columns = { "email", "plan" } })
n:watch("users", sqlnotify.UPDATE, { extra_columns = { "email" }, trigger_columns = { "email" } })
n:watch("users", sqlnotify.DELETE)

n:subscribe("users", sqlnotify.INSERT, function(ev)
  print(string.format("new user %d: %s (%s)", ev.id, ev.extra_columns.email, ev.extra_columns.plan))
end)

-- Only paying customers: a filter on a carried column.
n:subscribe("users", sqlnotify.INSERT, { filters = { { column = "plan", value = "pro" } } }, function(ev)
  print(string.format("  -> welcome pack for pro user %d", ev.id))
end)

n:subscribe("users", sqlnotify.UPDATE, function(ev)
  print(string.format("user %d changed email to %s", ev.id, ev.extra_columns.email))
end)

n:subscribe("users", sqlnotify.DELETE, function(ev)
  print(string.format("user %d deleted", ev.id))
end)

-- Under sqlnotify-lua the host starts the notifier and runs the loop; under plain
-- lua5.4 these two lines do it.
n:start()
sqlnotify.run()
