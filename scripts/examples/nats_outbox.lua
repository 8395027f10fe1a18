-- The outbox pattern: every row inserted into an outbox table goes to a JetStream stream, once.
-- A durable consumer redelivers what was not done (a crash, a broker restart); msg_id makes the
-- stream drop a message it stored already (within its duplicate window, made 2 h here).
-- Run it:  sqlnotify-lua scripts/examples/nats_outbox.lua URL [TABLE [NATS_URL [SUBJECT]]]
--   e.g.   sqlnotify-lua scripts/examples/nats_outbox.lua postgresql://localhost/shop public.outbox
local sqlnotify = require("sqlnotify")

local url = arg[1] or os.getenv("DATABASE_URL")
local tbl = arg[2] or "outbox"
local nc = sqlnotify.nats{ url = arg[3] or os.getenv("NATS_URL") or "nats://127.0.0.1:4222", timeout = 5 }
local subject = arg[4] or "outbox.events"

sqlnotify.spawn(function() -- the stream, unless one takes the subject already (an error then: fine)
  nc:request("$JS.API.STREAM.CREATE.OUTBOX", ('{"name":"OUTBOX","subjects":["%s"],"storage":"file",'
    .. '"duplicate_window":7200000000000}'):format(subject))
end)

local n = assert(sqlnotify.notifier{ url = url, consumer = "nats_outbox_" .. tbl:gsub("%W", "_"),
  concurrency = 64, retry = { attempts = math.huge, delay = 0.5, max_delay = 30 } }) -- a broker down waits, never drops
n:watch(tbl, "insert", { extra_columns = "*" }) -- the whole row travels in ev:json()
n:subscribe(tbl, "insert", function(ev)
  assert(nc:publish(subject, ev:json(), { msg_id = tostring(ev.id) })) -- nil, err -> retried
end)
assert(n:start())
