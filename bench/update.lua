-- bench/update.lua — the old-values figure of `make bench`: UPDATE throughput into Lua with
-- and without two old_columns, on one PostgreSQL or SQLite database, alternating runs.
--
--   build/sqlnotify-lua bench/update.lua URL ROWS
--
-- Watches UPDATE on two tables of the same shape (schema sqlnotify_bench on PostgreSQL):
-- upd_plain with extra_columns {t0, note}, upd_old with the same plus old_columns {t0, note}.
-- bench/update.sh updates every row of one of them in one statement; after ROWS events of a
-- table the handler prints "run <table> n= rate=" (events/s from the first to the last event)
-- and counts again; "last=" is the wall-clock time of the last event, for the figure from the
-- UPDATE's start to it (the writer's trigger included); "channel=" is the watch's channel, for
-- bench/update.sh's bare libpq listener. Prints "ready" once listening. Not a test.
local sqlnotify = require("sqlnotify")

local url = assert(arg[1], "usage: update.lua URL ROWS")
local rows = assert(math.tointeger(tonumber(arg[2])), "usage: update.lua URL ROWS")
local n = assert(sqlnotify.notifier { url = url, use_logger = false })
local prefix = n.dialect_name == "postgresql" and "sqlnotify_bench." or ""
local now, fmt = sqlnotify.now, string.format
io.stdout:setvbuf("line")

local function watch(name, old)
  local t = prefix .. name
  n:watch(t, sqlnotify.UPDATE, { extra_columns = { "t0", "note" }, old_columns = old and { "t0", "note" } or nil })
  local count, first = 0, 0
  n:subscribe(t, sqlnotify.UPDATE, function(ev)
    local x, o = ev.extra_columns, ev.old
    -- read what a handler would: the new values and, where carried, the old ones
    if type(ev.id) ~= "number" or type(x.note) ~= "string" or (old and type(o.note) ~= "string") then
      error("unexpected event on " .. ev.channel)
    end
    count = count + 1
    if count == 1 then first = now() end
    if count == rows then
      local at = now()
      io.stdout:write(fmt("run %s n=%d rate=%.0f last=%.6f channel=%s\n", name, count, (rows - 1) / (at - first), at,
        ev.channel))
      count = 0
    end
  end)
end

watch("upd_plain", false)
watch("upd_old", true)
assert(n:start())
io.stdout:write("ready\n")
