-- bench/watch.lua — the sqlnotify-lua side of `make bench` (PostgreSQL and SQLite).
--
--   build/sqlnotify-lua bench/watch.lua URL [LONG_RUN]
--
-- Watches INSERT on two bench tables, lat and bulk (schema sqlnotify_bench on
-- PostgreSQL, main on SQLite), each carrying t0 (microseconds since the epoch, stamped
-- when the row was written) and a short text column. The handlers do what a user's
-- would: read the event's fields, take the time, keep a number. Protocol, shared with
-- bench/bare_listener.c:
--   t0 > 0   a measured event          t0 == 0  end of a run: print a "run" line
--   t0 < 0   print the peak RSS and stop
-- LONG_RUN: how many bulk events the whole bench sends (default 1,000,000); the RSS is
-- read when 10% of them have been handled, and reported with every bulk run.
-- Prints "ready" once listening. Run by bench/run.sh; not a test.
local sqlnotify = require("sqlnotify")

local url = assert(arg[1], "usage: watch.lua URL [LONG_RUN]")
local rss_mark = math.max(1, (tonumber(arg[2]) or 1000000) // 10)
local n = assert(sqlnotify.notifier { url = url, use_logger = false })
local prefix = n.dialect_name == "postgresql" and "sqlnotify_bench." or ""

n:watch(prefix .. "lat", sqlnotify.INSERT, { extra_columns = { "t0", "note" }, channel_label = "bench_lat" })
n:watch(prefix .. "bulk", sqlnotify.INSERT, { extra_columns = { "t0", "note" }, channel_label = "bench_bulk" })

local now, floor, sort, fmt = sqlnotify.now, math.floor, table.sort, string.format
local out = io.stdout
out:setvbuf("line")

local function status(field)
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) or 0
end

-- One run's state per table: count, first/last arrival, latencies (lat only).
local function new_run(keep_latencies)
  return { n = 0, first = 0, last = 0, lat = keep_latencies and {} or nil, keep = keep_latencies }
end

local bulk_total, rss_at_mark = 0, nil

local function report(run, channel)
  local p50, p99, rate = 0, 0, 0
  local lat = run.lat
  if lat and #lat > 0 then
    sort(lat)
    p50 = lat[floor((#lat - 1) * 50 / 100) + 1]
    p99 = lat[floor((#lat - 1) * 99 / 100) + 1]
  end
  if run.n > 1 and run.last > run.first then rate = (run.n - 1) / (run.last - run.first) end
  out:write(fmt("run %s n=%d p50_us=%.1f p99_us=%.1f rate=%.0f rss_kb=%d total=%d rss10_kb=%d\n",
    channel, run.n, p50, p99, rate, status("VmRSS"), bulk_total, rss_at_mark or 0))
end

local function quit()
  out:write(fmt("quit hwm_kb=%d rss_kb=%d\n", status("VmHWM"), status("VmRSS")))
  n:close()
  sqlnotify.stop()
end

local function handler(keep_latencies)
  local run = new_run(keep_latencies)
  return function(ev)
    local t = now()
    local x = ev.extra_columns
    local t0, note, id = x.t0, x.note, ev.id
    if t0 > 0 then
      -- the fields a user's handler would read
      if ev.operation ~= "insert" or type(id) ~= "number" or type(note) ~= "string" then
        error("unexpected event on " .. ev.channel)
      end
      local k = run.n + 1
      run.n = k
      if k == 1 then run.first = t end
      run.last = t
      if run.keep then
        run.lat[k] = t * 1e6 - t0
      else
        bulk_total = bulk_total + 1
        if bulk_total == rss_mark then rss_at_mark = status("VmRSS") end
      end
    elseif t0 == 0 then
      report(run, ev.channel)
      run = new_run(keep_latencies)
    else
      quit()
    end
  end
end

n:subscribe(prefix .. "lat", sqlnotify.INSERT, { channel_label = "bench_lat" }, handler(true))
n:subscribe(prefix .. "bulk", sqlnotify.INSERT, { channel_label = "bench_bulk" }, handler(false))

assert(n:start())
out:write("ready\n")
