-- bench/backfill.lua — the host side of bench/backfill.sh: a durable consumer that backfills
-- one PostgreSQL table into a "read" handler that counts the rows.
--
--   build/sqlnotify-lua bench/backfill.lua URL TABLE CONSUMER CHUNK N MODE [CTL [RATE]]
--
-- The table has a durable UPDATE watch carrying v and n (so its trigger is installed, and the
-- read rows carry the same columns as bench/backfill.sh's COPY), with a handler that does
-- nothing; "read" is subscribed with a handler that counts. N is the table's row count.
-- MODE:
--   once    n:backfill(TABLE, {chunk = CHUNK}) as soon as started; when the N-th row reached
--           the handler prints "run n=N secs=S rate=R": from the call to n:backfill to that
--           handler call.
--   toggle  while the file CTL exists, a backfill runs, started again each time its N-th row
--           arrives (so it never stops while CTL is there); when CTL goes, the backfill is
--           cancelled, and once no read row arrived for half a second the host prints "idle".
--           Every 0.2 s it writes "ROWS SECONDS" to CTL.stat: read rows handled so far, and
--           sqlnotify.now().
-- RATE: the notifier's backfill_rate: rows/s at most, or "full"; absent or 0: the default, "auto".
-- Prints "ready" once started. Not a test.
local sqlnotify = require("sqlnotify")

local url, tbl, consumer, chunk, N, mode, ctl =
  arg[1], arg[2], arg[3], math.tointeger(tonumber(arg[4])), math.tointeger(tonumber(arg[5])), arg[6], arg[7]
local rate = arg[8] == "full" and "full" or tonumber(arg[8] or "0")
assert(url and tbl and consumer and chunk and N and (mode == "once" or (mode == "toggle" and ctl)),
  "usage: backfill.lua URL TABLE CONSUMER CHUNK N once|toggle [CTL]")
local now, fmt = sqlnotify.now, string.format
io.stdout:setvbuf("line")

local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, backfill_rate = (rate == "full" or rate > 0) and rate or nil })
n:watch(tbl, "update", { extra_columns = { "v", "n" } })
n:subscribe(tbl, "update", function() end)

local count, total, t0, last_read = 0, 0, 0, 0
local pass_done = false
n:subscribe(tbl, "read", function()
  count = count + 1
  total = total + 1
  if count == N then
    count = 0
    if mode == "once" then
      local secs = now() - t0
      io.stdout:write(fmt("run n=%d secs=%.6f rate=%.0f\n", N, secs, N / secs))
    else
      pass_done = true
    end
  end
  last_read = now()
end)
assert(n:start())
print("ready")

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

if mode == "once" then
  t0 = now()
  n:backfill(tbl, { chunk = chunk })
else
  local on, said_idle = false, true
  sqlnotify.every(0.05, function()
    local want = exists(ctl)
    if want and (not on or pass_done) then -- start, or start again after a pass read every row
      on, pass_done, count, said_idle = true, false, 0, false
      n:backfill(tbl, { chunk = chunk })
    elseif not want and on then
      on, last_read = false, now()
      n:cancel_backfill(tbl) -- nil when the pass had just finished
    elseif not on and not said_idle and now() - last_read >= 0.5 then
      said_idle, count = true, 0
      print("idle")
    end
  end)
  sqlnotify.every(0.2, function()
    local f = assert(io.open(ctl .. ".stat.tmp", "w"))
    f:write(fmt("%d %.6f\n", total, now()))
    f:close()
    assert(os.rename(ctl .. ".stat.tmp", ctl .. ".stat"))
  end)
end
