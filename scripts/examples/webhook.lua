-- Post every change of one table to a webhook, as one JSON object per event (ev:json()).
-- A durable consumer: a failed post (refused, timed out, any answer but a 2xx) is retried with
-- backoff; what came while the relay was down is sent when it is back. Per key in order.
--
-- Run it:  sqlnotify-lua scripts/examples/webhook.lua URL TABLE HOOK
--   e.g.   sqlnotify-lua scripts/examples/webhook.lua sqlite:///$PWD/shop.db orders http://127.0.0.1:8080/hook
--   or with $DATABASE_URL, $WEBHOOK_TABLE and $WEBHOOK_URL set, and no arguments.
local sqlnotify = require("sqlnotify")

local url = arg[1] or os.getenv("DATABASE_URL")
local tbl = arg[2] or os.getenv("WEBHOOK_TABLE")
local hook = arg[3] or os.getenv("WEBHOOK_URL")
if not (url and tbl and hook) then
  io.stderr:write("usage: sqlnotify-lua scripts/examples/webhook.lua DATABASE_URL TABLE WEBHOOK_URL\n") os.exit(2)
end

local n = assert(sqlnotify.notifier{ url = url, consumer = "webhook_" .. tbl:gsub("%W", "_"),
  concurrency = 16, retry = { attempts = math.huge, delay = 1, max_delay = 60 } })

local function post(ev) -- a 5xx or no answer: nil, err, and assert raises (a retry)
  local status = assert(sqlnotify.http.request{ method = "POST", url = hook, body = ev:json(), timeout = 10,
    headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = ev.table .. ":" .. ev.seq } })
  if status >= 300 then error(hook .. " answered " .. status, 0) end -- a 404 or 401 is no success either
end

for _, op in ipairs({ "insert", "update", "delete" }) do
  n:watch(tbl, op)
  n:subscribe(tbl, op, post)
end
assert(n:start())
