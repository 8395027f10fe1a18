-- A PostgreSQL watcher: prints every insert, update and delete on a table of its own,
-- sqlnotifydemo.users (schema and table are created if missing, so it needs no right
-- to write into public).
--
-- Run it:
--   export DATABASE_URL=postgresql://root@127.0.0.1/test
--   build/sqlnotify-lua scripts/examples/postgresql.lua
-- then, from another terminal (with the same DATABASE_URL):
--   psql "$DATABASE_URL" -c "INSERT INTO sqlnotifydemo.users (email, plan) VALUES ('ann@example.com', 'free')"
--   psql "$DATABASE_URL" -c "UPDATE sqlnotifydemo.users SET plan = 'pro'"
--   psql "$DATABASE_URL" -c "DELETE FROM sqlnotifydemo.users"
-- Stop it with Ctrl-C. `build/sqlnotify-lua --list "$DATABASE_URL"` shows the triggers it
-- installed, `build/sqlnotify-lua --drop "$DATABASE_URL" sqlnotifydemo.users` removes them.
local sqlnotify = require("sqlnotify")

local n = assert(sqlnotify.notifier{ url = os.getenv("DATABASE_URL") or "postgresql://root@127.0.0.1/test" })
assert(n:query("CREATE SCHEMA IF NOT EXISTS sqlnotifydemo"))
assert(n:query([[CREATE TABLE IF NOT EXISTS sqlnotifydemo.users (
  id serial PRIMARY KEY, email text NOT NULL, plan text NOT NULL DEFAULT 'free')]]))

local USERS = "sqlnotifydemo.users"
n:watch(USERS, sqlnotify.INSERT, { extra_columns = { "email", "plan" } })
-- Only when email or plan really changed; their values before the update arrive in event.old.
n:watch(USERS, sqlnotify.UPDATE, { extra_columns = { "email", "plan" }, trigger_columns = { "email", "plan" },
  old_columns = { "email", "plan" } })
n:watch(USERS, sqlnotify.DELETE)

n:subscribe(USERS, sqlnotify.INSERT, function(ev)
  print(string.format("new user %d: %s (%s)", ev.id, ev.extra_columns.email, ev.extra_columns.plan))
end)

-- Only paying customers: a filter on a carried column.
n:subscribe(USERS, sqlnotify.INSERT, { filters = { { column = "plan", value = "pro" } } }, function(ev)
  print(string.format("  -> welcome pack for pro user %d", ev.id))
end)

n:subscribe(USERS, sqlnotify.UPDATE, function(ev)
  for _, col in ipairs { "email", "plan" } do
    local was, now = ev.old and ev.old[col], ev.extra_columns[col]
    if was ~= now then print(string.format("user %d: %s changed from %s to %s", ev.id, col, was, now)) end
  end
end)

-- "Left the free plan": a filter on the value before the update.
n:subscribe(USERS, sqlnotify.UPDATE, { filters = { { column = "plan", value = "free", old = true } } }, function(ev)
  print(string.format("  -> user %d upgraded to %s", ev.id, ev.extra_columns.plan))
end)

n:subscribe(USERS, sqlnotify.DELETE, function(ev)
  print(string.format("user %d deleted", ev.id))
end)

-- After a lost connection, rows committed meanwhile were not seen: a cache would flush here.
n:on("reconnect", function(outage, may_have_missed)
  print(string.format("reconnected after %.1f s%s", outage, may_have_missed and "; events may have been missed" or ""))
end)

-- Under sqlnotify-lua the host starts the notifier and runs the loop; under plain
-- lua5.4 these two lines do it.
assert(n:start())
sqlnotify.run()
