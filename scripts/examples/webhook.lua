-- Post every change of one table to a webhook, as one JSON object per event (ev:json()).
-- A durable consumer: a failed post (refused, timed out, a 5xx) is retried with backoff, and
-- events that came while the relay was down are sent when it comes back. Per key in order.
--
-- Run it:  sqlnotify-lua scripts/examples/webhook.lua URL TABLE HOOK
--   e.g.   sqlnotify-lua scripts/examples/webhook.lua sqlite:///$PWD/shop.db orders http://127.0.0.1:8080/hook
--   or with $DATABASE_URL, $WEBHOOK_TABLE and $WEBHOOK_URL set, and no arguments.
local sqlnotify = require("sqlnotify")

local url = arg[1] or os.getenv("DATABASE_URL")
local tbl = arg[2] or os.getenv("WEBHOOK_TABLE")
local hook = arg[3] or os.getenv("WEBHOOK_URL")
assert(url and tbl and hook, "usage: webhook.lua DATABASE_URL TABLE WEBHOOK_URL")

local n = assert(sqlnotify.notifier{ url = url, consumer = "webhook", concurrency = 16,
  retry = { attempts = math.huge, delay = 1, max_delay = 60 } })

local function post(ev)
  assert(sqlnotify.http.request{ method = "POST", url = hook, body = ev:json(), timeout = 10,
    headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = ev.table .. ":" .. ev.seq } })
end

for _, op in ipairs({ "insert", "update", "delete" }) do
  n:watch(tbl, op)
  n:subscribe(tbl, op, post)
end
assert(n:start())
