-- The outbox pattern: every row inserted into an outbox table goes to a JetStream stream, once.
-- A durable consumer redelivers what was not done (a crash, a broker restart); msg_id makes the
-- stream drop a message it stored already, so each row is in the stream exactly once.
-- Run it:  sqlnotify-lua scripts/examples/nats_outbox.lua URL [TABLE [NATS_URL [SUBJECT]]]
--   e.g.   sqlnotify-lua scripts/examples/nats_outbox.lua postgresql://localhost/shop public.outbox
-- with a stream taking SUBJECT: nats stream add OUTBOX --subjects 'outbox.>' --dupe-window 2h
local sqlnotify = require("sqlnotify")

local url = arg[1] or os.getenv("DATABASE_URL")
local tbl = arg[2] or "outbox"
local nc = sqlnotify.nats{ url = arg[3] or os.getenv("NATS_URL") or "nats://127.0.0.1:4222", timeout = 5 }
local subject = arg[4] or "outbox.events"

local n = assert(sqlnotify.notifier{ url = url, consumer = "nats_outbox", concurrency = 64 })
n:watch(tbl, "insert", { extra_columns = "*" }) -- the whole row travels in ev:json()
n:subscribe(tbl, "insert", function(ev)
  -- a failure (no stream, timeout, broker down) raises: the event is retried with backoff
  assert(nc:publish(subject, ev:json(), { msg_id = tostring(ev.id) }))
end)
n:on("dead_letter", function(ev, info)
  io.stderr:write(("outbox row %s dead-lettered: %s\n"):format(tostring(ev.id), info.error))
end)
assert(n:start())
