-- bench/delivery.lua — the host side of bench/delivery.sh: one notifier on one table.
--
--   build/sqlnotify-lua bench/delivery.lua URL TABLE OP CONSUMER MODE CONCURRENCY RETRY N
--
-- CONSUMER: the durable consumer's name, or "-" for a live notifier. CONCURRENCY and RETRY
-- (retry.attempts): "-" passes no option (the defaults; the release before the coroutines
-- knows neither). MODE, the handler:
--   plain  reads the event's fields and counts (never yields);
--   sleep  sqlnotify.sleep(0.001), a stand-in for a broker's round trip;
--   hold   sleeps an hour: the events stay in flight; prints "held" lines (below).
-- plain and sleep print "run n=N secs=S rate=R" every N events: from the start of the run's
-- first handler to the return of its last; sleep then "dups n=D", the events it saw again. hold prints "base rss_kb= lua_kb=" once ready,
-- then "held inflight= rss_kb= lua_kb=" when N events are in flight or their number stayed
-- the same for a second (a durable reader delivers no more while any is in flight), after a
-- full collection. Prints "ready" once listening. Not a test.
local sqlnotify = require("sqlnotify")

local url, tbl, op, consumer, mode, conc, retry, N =
  arg[1], arg[2], arg[3], arg[4], arg[5], arg[6], arg[7], math.tointeger(tonumber(arg[8]))
assert(url and tbl and op and consumer and mode and conc and retry and N,
  "usage: delivery.lua URL TABLE OP CONSUMER MODE CONCURRENCY RETRY N")
local opts = { url = url, use_logger = false }
if consumer ~= "-" then opts.consumer = consumer end
if conc ~= "-" then opts.concurrency = math.tointeger(tonumber(conc)) end
if retry ~= "-" then opts.retry = { attempts = math.tointeger(tonumber(retry)) } end
if mode == "hold" and opts.concurrency then opts.shutdown_grace = 0 end
local n = assert(sqlnotify.notifier(opts))
n:watch(tbl, op, { extra_columns = { "note" } })

local now, fmt, sleep = sqlnotify.now, string.format, sqlnotify.sleep
local out = io.stdout
out:setvbuf("line")

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local count, first, last = 0, 0, 0
local function done(t)
  count = count + 1
  if t > last then last = t end
  if count == N then
    out:write(fmt("run n=%d secs=%.6f rate=%.0f\n", count, last - first, count / (last - first)))
    count = 0
  end
end

local handler
if mode == "plain" then
  handler = function(ev)
    local t = now()
    if count == 0 then first = t end
    local note, id = ev.extra_columns.note, ev.id
    if type(id) ~= "number" or type(note) ~= "string" then error("unexpected event on " .. ev.channel) end
    done(t)
  end
elseif mode == "sleep" then
  -- an event delivered again is counted apart, by its row and note, and does not count to N:
  -- a durable reader that did not hold while handlers waited read the same page again; since
  -- the reader holds (journal 9) there are none, and "delivered again" in the table checks it
  local started, seen, dups = 0, {}, 0
  handler = function(ev)
    if type(ev.id) ~= "number" then error("unexpected event on " .. ev.channel) end
    local k = ev.id .. "/" .. ev.extra_columns.note
    if seen[k] then
      dups = dups + 1
      sleep(0.001)
      return
    end
    seen[k] = true
    if started == 0 then first = now() end
    started = started + 1
    if started == N then started = 0 end
    sleep(0.001)
    done(now())
    if count == 0 then
      out:write(fmt("dups n=%d\n", dups))
      dups = 0
    end
  end
  sqlnotify.every(1, function() out:write(fmt("progress n=%d dups=%d\n", count, dups)) end)
elseif mode == "hold" then
  local inflight = 0
  handler = function()
    inflight = inflight + 1
    sleep(3600)
  end
  local seen, since, said = 0, now(), false
  sqlnotify.every(0.1, function()
    if said or inflight == 0 then return end
    if inflight ~= seen then seen, since = inflight, now() end
    if inflight >= N or now() - since >= 1 then
      said = true
      collectgarbage("collect")
      out:write(fmt("held inflight=%d rss_kb=%d lua_kb=%.0f\n", inflight, rss_kb(), collectgarbage("count")))
    end
  end)
else
  error("unknown mode " .. mode)
end
n:subscribe(tbl, op, handler)
assert(n:start())
if mode == "hold" then
  collectgarbage("collect")
  out:write(fmt("base rss_kb=%d lua_kb=%.0f\n", rss_kb(), collectgarbage("count")))
end
print("ready")
