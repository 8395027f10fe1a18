-- A durable relay of one table's changes to MQTT: each insert, update and delete is published
-- as ev:json() at QoS 1 to <prefix>/<table>/<operation>/<id>, and counts as done only once
-- the broker acknowledged it (PUBACK). A broker that is down or restarts only delays it:
-- the failed publish raises, so the event is retried; nothing is skipped (at least once).
--
-- Run it:  sqlnotify-lua scripts/examples/mqtt_relay.lua URL TABLE [MQTT_URL [PREFIX]]
--   e.g.   sqlnotify-lua scripts/examples/mqtt_relay.lua postgresql://localhost/shop public.orders
--   watch: mosquitto_sub -t 'db/#' -v -q 1
local sqlnotify = require("sqlnotify")
local url, tbl = arg[1], arg[2]
if not tbl then
  io.stderr:write("usage: sqlnotify-lua scripts/examples/mqtt_relay.lua URL TABLE [MQTT_URL [PREFIX]]\n")
  os.exit(2)
end
local prefix = arg[4] or "db"
-- No client_id: each copy gets a random one. Copies of the relay share its consumer's work
-- (a group), and a broker closes a client whenever another connects with the same client_id.
local mq = sqlnotify.mqtt{ url = arg[3] or "mqtt://127.0.0.1:1883" }
local n = assert(sqlnotify.notifier{ url = url, consumer = "mqtt_relay_" .. tbl:gsub("%W", "_"),
  concurrency = 64, retry = { attempts = math.huge, delay = 0.5, max_delay = 30 } })
for _, op in ipairs({ "insert", "update", "delete" }) do
  n:watch(tbl, op)
  n:subscribe(tbl, op, function(ev)
    local topic = string.format("%s/%s/%s/%s", prefix, ev.table, op, tostring(ev.id))
    assert(mq:publish(topic, ev:json(), { qos = 1 }))
  end)
end
assert(n:start())
