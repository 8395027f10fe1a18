-- A reload-friendly watcher: edit the handler below while it runs and save; the new
-- version takes over at once (or send SIGHUP). Connections and triggers are kept, and
-- no event is lost or delivered twice across the switch.
--
-- Run it:
--   DATABASE_URL=postgresql://root@127.0.0.1/test build/sqlnotify-lua --reload scripts/examples/reload.lua
-- then insert into the table from psql, change the message below, save, insert again:
--   psql postgresql://root@127.0.0.1/test -c "INSERT INTO sqlnotifydemo.orders (total) VALUES (12.50)"
local sqlnotify = require("sqlnotify")

local n = assert(sqlnotify.notifier{ url = os.getenv("DATABASE_URL") or "postgresql://root@127.0.0.1/test" })
assert(n:query("CREATE SCHEMA IF NOT EXISTS sqlnotifydemo"))
assert(n:query([[CREATE TABLE IF NOT EXISTS sqlnotifydemo.orders (
  id serial PRIMARY KEY, total numeric NOT NULL DEFAULT 0)]]))

-- Keep side effects of loading idempotent (CREATE ... IF NOT EXISTS above): the script
-- runs again on every reload. Put state you want to keep in the database, not in Lua.
n:watch("sqlnotifydemo.orders", sqlnotify.INSERT, { extra_columns = { "total" } })

-- numeric values arrive as strings of their exact text ("12.50"), never rounded through a float
n:subscribe("sqlnotifydemo.orders", sqlnotify.INSERT, function(ev)
  print(string.format("order %d for %s", ev.id, ev.extra_columns.total)) -- edit me
end)
