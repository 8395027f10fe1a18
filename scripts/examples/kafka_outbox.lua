-- The outbox pattern on Kafka: every row inserted into an outbox table goes to a topic as
-- ev:json(), keyed by the row's id, and counts as done once the brokers acknowledged it (acks =
-- all). A broker down past the timeout fails the produce, so the event is retried: at least
-- once. librdkafka's own retries never duplicate (the idempotent producer); a retry after a
-- timeout can, so consumers drop a key and seq they have seen. CONSUMER renames the consumer.
-- Run it:  sqlnotify-lua scripts/examples/kafka_outbox.lua URL [TABLE [BROKERS [TOPIC]]]
--   e.g.   sqlnotify-lua scripts/examples/kafka_outbox.lua postgresql://localhost/shop public.outbox
--   watch: kcat -C -b 127.0.0.1:9092 -t outbox -f '%k %s\n'
local sqlnotify = require("sqlnotify")
local url = arg[1] or os.getenv("DATABASE_URL")
if not url then
  io.stderr:write("usage: sqlnotify-lua scripts/examples/kafka_outbox.lua DATABASE_URL [TABLE [BROKERS [TOPIC]]]\n")
  os.exit(2)
end
local tbl, topic = arg[2] or "outbox", arg[4] or "outbox"
local k = sqlnotify.kafka{ brokers = arg[3] or os.getenv("KAFKA_BROKERS") or "127.0.0.1:9092", timeout = 10 }
local n = assert(sqlnotify.notifier{ url = url,
  consumer = os.getenv("CONSUMER") or "kafka_outbox_" .. tbl:gsub("%W", "_"),
  concurrency = 64, retry = { attempts = math.huge, delay = 0.5, max_delay = 30 } }) -- never drops
n:watch(tbl, "insert", { extra_columns = "*" }) -- the whole row travels in ev:json()
n:subscribe(tbl, "insert", function(ev)
  assert(k:produce(topic, ev:json(), { key = tostring(ev.id) })) -- nil, err -> retried
end)
assert(n:start())
