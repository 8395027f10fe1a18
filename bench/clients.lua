-- bench/clients.lua — the host side of bench/clients.sh: a durable relay of one table's inserts
-- to NATS JetStream, Redis or an HTTP server, at concurrency 64 (SPEC §8.2, issue 31).
--
--   build/sqlnotify-lua bench/clients.lua URL TABLE CONSUMER KIND TARGET N [CONCURRENCY]
--
-- KIND: nats (nc:publish(subject, ev:json(), { msg_id = seq }); TARGET "nats://...|subject"),
-- redis (r:call("SET", "relay:<id>", ev:json()); TARGET a redis:// URL) or http (a POST of
-- ev:json() by sqlnotify.http.request; TARGET the URL). Each handler asserts its call, so a
-- failure is a retry, and counts once the call returned (the broker's or server's ack).
-- KIND none: the same handler (ev:json() included) with no call, what the relay costs alone.
-- CONCURRENCY: 64 unless given.
-- A row with t0 NULL is a throughput row: after N of them prints
--   "run n= secs= rate= size= wall= errors="
-- secs from the start of the first handler to the return of the N-th call (wall: from the
-- start of this script), size the first message's bytes. A row with t0 set (its commit time,
-- clock_timestamp() at the insert) is a latency row of the phase its note names (busy, idle):
-- now - t0 once its call returned; the row with note = 'end' closes the set:
-- "lat busy_n= busy_p50_us= busy_p99_us= idle_n= idle_p50_us= idle_p99_us=". Prints "ready"
-- once listening. Not a test.
local T_START = require("sqlnotify").now()
local sqlnotify = require("sqlnotify")

local url, tbl, consumer, kind, target, N, conc =
  arg[1], arg[2], arg[3], arg[4], arg[5], math.tointeger(tonumber(arg[6])), math.tointeger(tonumber(arg[7] or 64))
assert(url and tbl and consumer and kind and target and N,
  "usage: clients.lua URL TABLE CONSUMER KIND TARGET N")

local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, concurrency = conc, use_logger = false })
n:watch(tbl, "insert", { extra_columns = { "note", "t0" } })

local now, fmt = sqlnotify.now, string.format
local out = io.stdout
out:setvbuf("line")

local send
if kind == "nats" then
  local nurl, subject = target:match("^(.-)|(.+)$")
  local nc = sqlnotify.nats{ url = nurl, timeout = 10, name = "bench-relay" }
  send = function(ev, body) return nc:publish(subject, body, { msg_id = tostring(ev.seq) }) end
elseif kind == "redis" then
  local r = sqlnotify.redis{ url = target, timeout = 10 }
  send = function(ev, body) return r:call("SET", "relay:" .. ev.id, body) end
elseif kind == "none" then -- the relay's own part: the same handler with no call
  send = function() return true end
elseif kind == "http" then
  local request, headers = sqlnotify.http.request, { ["Content-Type"] = "application/json" }
  send = function(_, body)
    return request{ method = "POST", url = target, headers = headers, body = body, timeout = 10 }
  end
else
  error("unknown kind " .. kind)
end

local count, first, last, size, errors = 0, 0, 0, 0, 0
local lats = {}
n:subscribe(tbl, "insert", function(ev)
  local t0 = ev.extra_columns.t0
  if t0 == nil and count == 0 and first == 0 then first = now() end
  local body = ev:json()
  local ok, err = send(ev, body)
  if not ok then
    errors = errors + 1
    error(err)
  end
  local t = now()
  if t0 == nil then
    if size == 0 then size = #body end
    count = count + 1
    if t > last then last = t end
    if count == N then
      out:write(fmt("run n=%d secs=%.6f rate=%.0f size=%d wall=%.3f errors=%d\n",
        count, last - first, count / (last - first), size, last - T_START, errors))
      count, first = 0, 0
    end
  elseif ev.extra_columns.note == "end" then
    local line = { "lat" }
    for _, phase in ipairs({ "busy", "idle" }) do
      local l = lats[phase] or {}
      table.sort(l)
      local k = #l
      line[#line + 1] = fmt("%s_n=%d %s_p50_us=%.0f %s_p99_us=%.0f", phase, k, phase,
        k > 0 and l[k // 2 + 1] * 1e6 or 0, phase, k > 0 and l[math.min(k, math.floor(k * 0.99) + 1)] * 1e6 or 0)
    end
    out:write(table.concat(line, " "), "\n")
    lats = {}
  else
    local phase = ev.extra_columns.note
    lats[phase] = lats[phase] or {}
    local l = lats[phase]
    l[#l + 1] = t - t0
  end
end)
assert(n:start())
print("ready")
