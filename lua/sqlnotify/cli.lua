--- sqlnotify.cli: what `sqlnotify-lua --list URL`, `--drop URL [table]`, `--dead-letters URL [consumer]`,
-- `--consumers URL`, `--drop-consumer URL NAME` and `--uninstall URL [--yes]` do.
-- Each function prints to out (default io.stdout), reports a failure as one
-- "sqlnotify: ..." line on err (default io.stderr), and returns the exit status.
local sqlnotify = require("sqlnotify")
local catalog = require("sqlnotify.catalog")
local dead = require("sqlnotify.dead_letters")

local M = {}

local COLUMNS = { "schema", "table", "operation", "channel", "capture", "trigger", "function", "columns", "installed" }

-- Run f(n) on a notifier of url that is closed afterwards; 0, or 1 after printing why not.
local function with_notifier(url, err, f)
  err = err or io.stderr
  local ok, status = pcall(function()
    local n, why = sqlnotify.notifier{ url = url, use_logger = false }
    if not n then error(why, 0) end
    local ok2, res = pcall(f, n)
    n:close()
    if not ok2 then error(res, 0) end
    return res
  end)
  if ok then return status end
  err:write(sqlnotify._one_line(status), "\n")
  return 1
end

local function width(s)
  return utf8.len(s) or #s
end

-- Rows (lists of #columns values, nil printed "-") under their column names, aligned.
local function print_table(out, columns, rows)
  local cells, widths = { columns }, {}
  for i, c in ipairs(columns) do widths[i] = width(c) end
  for _, r in ipairs(rows) do
    local line = {}
    for i = 1, #columns do
      local v = r[i] == nil and "-" or tostring(r[i]):gsub("[%c]", " ")
      line[i] = v
      if width(v) > widths[i] then widths[i] = width(v) end
    end
    cells[#cells + 1] = line
  end
  for _, line in ipairs(cells) do
    local parts = {}
    for i, v in ipairs(line) do
      parts[i] = i < #line and v .. (" "):rep(widths[i] - width(v)) or v
    end
    out:write(table.concat(parts, "  "), "\n")
  end
end

-- Whose capture a trigger's wire channel is: "live", or "durable <tag> for <its consumers>".
local function capture_of(wire, reads)
  local plain, capture = sqlnotify._capture_of(wire)
  if capture ~= "live" then
    local who = reads[wire]
    capture = capture .. " for " .. (who and table.concat(who, ", ") or "no consumer")
  end
  return plain, capture
end

--- list(url, [out], [err]) -> 0 | 1: a table of every sqlnotify trigger in the database.
function M.list(url, out, err)
  out = out or io.stdout
  return with_notifier(url, err, function(n)
    local rows, e = n._h:list()
    if not rows then error(e, 0) end
    if #rows == 0 then
      out:write("no sqlnotify triggers in ", n._h:target(), "\n")
      return 0
    end
    local reads = catalog.reads(n)
    local lines = {}
    for i, r in ipairs(rows) do
      -- the wire channel's tag says whose capture it is: a live watch's or a consumer's shape
      local plain, capture = capture_of(tostring(r[4] or ""), reads)
      lines[i] = { r[1], r[2], r[3], r[4] and plain, capture, r[5], r[6], r[7], r[8] }
    end
    print_table(out, COLUMNS, lines)
    out:write(string.format("%d trigger(s) in %s\n", #rows, n._h:target()))
    return 0
  end)
end

-- Seconds since an ISO 8601 UTC time ("2024-05-01T10:00:00.123Z"), by this machine's clock.
local function age(iso)
  local y, mo, d, h, mi, sec = tostring(iso):match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  y, mo = tonumber(y), tonumber(mo)
  -- days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
  local yy = mo <= 2 and y - 1 or y
  local era = (yy >= 0 and yy or yy - 399) // 400
  local yoe = yy - era * 400
  local doy = (153 * (mo > 2 and mo - 3 or mo + 9) + 2) // 5 + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  return os.time() - (days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec))
end

local RECENT = 60 -- seconds: a consumer seen since is taken as running

-- The consumers that look like running (a live member, or seen in the last minute): their
-- names, each with how it was seen, in the order --consumers lists them.
local function running(n)
  local out = {}
  if not catalog.consumers_exist(n) then return out end
  for _, r in ipairs(n:consumers() or {}) do
    local ago = age(r.last_seen)
    if (r.members or 0) > 0 or (ago and ago < RECENT) then
      out[#out + 1] = r.name
      out[r.name] = string.format("was seen %s (%d live member(s))",
        ago and string.format("%d s ago", math.max(ago, 0)) or "at " .. tostring(r.last_seen), r.members or 0)
    end
  end
  return out
end

--- drop(url, [table], [out], [err], [yes]) -> 0 | 1: drop sqlnotify's triggers and functions on
-- one table ("table" or "schema.table"), or in the whole database when table is nil. A durable
-- consumer's capture is not dropped while that consumer looks like running (as for uninstall)
-- unless yes: it would make the trigger again at its next check, and what is written meanwhile
-- is lost to it.
function M.drop(url, tbl, out, err, yes)
  out = out or io.stdout
  local errout = err or io.stderr
  return with_notifier(url, err, function(n)
    local count, e, where, info
    if tbl ~= nil then info = n:_table(tbl, 1) end
    -- the durable consumers' captures it takes, to say what they will miss
    local captures = {}
    local reads = catalog.reads(n)
    for _, r in ipairs(n._h:list() or {}) do
      local wire = tostring(r[4] or "")
      local plain, capture = sqlnotify._capture_of(wire)
      if capture ~= "live" and (not info or (r[1] == info.schema and r[2] == info.table)) then
        captures[#captures + 1] = { op = r[3] or "?", name = r[1] .. "." .. r[2], plain = plain, capture = capture,
          who = reads[wire] or {} }
      end
    end
    local seen = #captures > 0 and running(n) or {}
    local busy = {}
    for _, c in ipairs(captures) do
      for _, who in ipairs(c.who) do
        if seen[who] then busy[#busy + 1] = { c = c, who = who } end
      end
    end
    if #busy > 0 and not yes then
      for _, b in ipairs(busy) do
        errout:write(string.format("sqlnotify: consumer %q reads the capture of %s on %s (channel %s, %s) and %s: "
          .. "it would make the trigger again at its next check and miss what is written meanwhile; stop it first, "
          .. "or give --yes to drop it anyway\n", b.who, b.c.op, b.c.name, b.c.plain, b.c.capture, seen[b.who]))
      end
      errout:write("sqlnotify: nothing dropped\n")
      return 1
    end
    if info then
      count, e = n._h:drop(info.schema, info.table)
      where = "on " .. info.name
    else
      count, e = n._h:drop(nil, nil)
      where = "in " .. n._h:target()
    end
    if not count then error(e, 0) end
    out:write(string.format("dropped %d sqlnotify trigger(s) %s\n", count, where))
    for _, c in ipairs(captures) do
      local running_now = false
      for _, who in ipairs(c.who) do running_now = running_now or seen[who] ~= nil end
      errout:write(string.format("sqlnotify: warning: dropped the capture of a durable consumer for %s on %s "
        .. "(channel %s, %s): %s\n", c.op, c.name, c.plain, c.capture, running_now
        and "a consumer reading it may be running: it makes the trigger again at its next check (verify_interval) "
          .. "and says at error level what it did not capture meanwhile"
        or "its changes from now until that consumer starts again are not captured, and it says so at error level "
          .. "when it does"))
    end
    return 0
  end)
end

--- dead_letters(url, [consumer], [out], [err]) -> 0 | 1: the dead letters (of one consumer),
-- oldest first: id, consumer, seq, attempts, when, channel, the error's first line, the payload.
function M.dead_letters(url, consumer, out, err)
  out = out or io.stdout
  return with_notifier(url, err, function(n)
    local rows, e = n:dead_letters{ consumer = consumer, limit = 100000 }
    if not rows then error(e, 0) end
    if #rows == 0 and consumer then -- a name mistyped is not a consumer without dead letters
      local known = false
      for _, r in ipairs(assert(n:consumers())) do known = known or r.name == consumer end
      if not known then error(string.format("sqlnotify: no consumer %q in %s", consumer, n._h:target()), 0) end
    end
    if #rows == 0 then
      out:write(string.format("no dead letters%s in %s\n", consumer and " of consumer " .. consumer or "",
        n._h:target()))
      return 0
    end
    for _, r in ipairs(rows) do
      local first = tostring(r.error):match("^[^\n]*"):gsub("%c", " ")
      out:write(string.format("%s  %s  seq %s  %d attempt(s)  %s  %s\n  error: %s\n  payload: %s\n", tostring(r.id),
        r.consumer, r.seq ~= nil and tostring(r.seq) or "-", r.attempts, tostring(r.failed_at), r.channel, first,
        (tostring(r.payload):gsub("%c", " "))))
    end
    out:write(string.format("%d dead letter(s) in %s\n", #rows, n._h:target()))
    return 0
  end)
end

-- ===== consumers =====

local CONSUMER_COLUMNS = { "consumer", "lag_events", "lag_seconds", "members", "shares", "last_seen", "dead_letters" }

--- consumers(url, [out], [err]) -> 0 | 1: a table of every durable consumer of the database:
-- its lag (events of its own tables, and the seconds since the oldest), live members, shares
-- (PostgreSQL), when it was last seen and how many dead letters it has.
function M.consumers(url, out, err)
  out = out or io.stdout
  return with_notifier(url, err, function(n)
    local rows, e = n:consumers()
    if not rows then error(e, 0) end
    if #rows == 0 then
      out:write("no consumers in ", n._h:target(), "\n")
      return 0
    end
    local counts = assert(dead.counts(n))
    local lines = {}
    for i, r in ipairs(rows) do
      lines[i] = { r.name, r.lag_events, string.format("%.1f", r.lag_seconds or 0), r.members, r.shares,
        r.last_seen and (tostring(r.last_seen):gsub("%.%d+Z$", "Z")), counts[r.name] or 0 }
    end
    print_table(out, CONSUMER_COLUMNS, lines)
    out:write(string.format("%d consumer(s) in %s\n", #rows, n._h:target()))
    return 0
  end)
end

--- drop_consumer(url, name, [out], [err]) -> 0 | 1: forget a consumer: the journal rows only it
-- held are released, and its captures no other consumer reads are dropped.
function M.drop_consumer(url, name, out, err)
  out = out or io.stdout
  local errout = err or io.stderr
  return with_notifier(url, err, function(n)
    local live = 0
    for _, r in ipairs(n:consumers() or {}) do
      if r.name == name then live = r.members or 0 end
    end
    local before = n._h:list() or {}
    local ok, e = n:drop_consumer(name)
    if ok == nil then error(e, 0) end
    if not ok then error(string.format("sqlnotify: no consumer %q in %s", name, n._h:target()), 0) end
    out:write(string.format("dropped consumer %q in %s: the journal rows only it held are released\n", name,
      n._h:target()))
    local after = {}
    for _, r in ipairs(n._h:list() or {}) do after[r[1] .. "\0" .. r[2] .. "\0" .. r[5]] = true end
    for _, r in ipairs(before) do
      if not after[r[1] .. "\0" .. r[2] .. "\0" .. r[5]] then
        local plain, capture = sqlnotify._capture_of(tostring(r[4] or ""))
        out:write(string.format("dropped its capture of %s on %s.%s (channel %s, %s)\n", r[3], r[1], r[2], plain,
          capture))
      end
    end
    if live > 0 then
      errout:write(string.format("sqlnotify: warning: consumer %q has %d live member(s): they record it again "
        .. "and read on; stop them first to drop it for good\n", name, live))
    end
    return 0
  end)
end

-- ===== uninstall =====


-- The lines an object prints: one per trigger, else one.
local function describe(o)
  local mark = ""
  if o.mine == false then
    mark = string.format(" [owner %s: this role cannot drop it]", tostring(o.owner))
  end
  if o.kind == "triggers" then
    local lines = {}
    for i, r in ipairs(o.triggers) do
      local _, capture = sqlnotify._capture_of(tostring(r[4] or ""))
      lines[i] = string.format("trigger %s on %s.%s (%s, %s%s)%s", tostring(r[5]), r[1], r[2], tostring(r[3]),
        capture, r[6] and ", function " .. tostring(r[6]) or "", mark)
    end
    return lines
  end
  return { string.format("%s %s%s%s", o.kind, o.name, o.note and " (" .. o.note .. ")" or "", mark) }
end


--- uninstall(url, yes, [out], [err]) -> 0 | 1: print every object of sqlnotify's in the database
-- (triggers and their functions, journal, consumer and dead-letter tables, PostgreSQL's schema
-- sqlnotify, overflow tables and extension); with yes (> 0) drop them all. A durable consumer
-- seen in the last minute stops yes = 1 (yes = 2 goes on). Objects triggers may write to stay
-- while one of those triggers could not be dropped.
function M.uninstall(url, yes, out, err)
  out = out or io.stdout
  local errout = err or io.stderr
  yes = math.tointeger(yes) or 0
  return with_notifier(url, err, function(n)
    local target = n._h:target()
    local objects, e = catalog.objects(n)
    if not objects then error(e, 0) end
    if #objects == 0 then
      out:write("no sqlnotify objects in ", target, "\n")
      return 0
    end
    local busy = running(n)
    if yes == 0 then
      out:write("sqlnotify objects in ", target, ":\n")
      local count = 0
      for _, o in ipairs(objects) do
        for _, line in ipairs(describe(o)) do
          out:write("  ", line, "\n")
          count = count + 1
        end
        if o.blocked then out:write("    cannot be dropped: ", o.blocked, "\n") end
      end
      out:write(string.format("%d object(s); --yes drops them\n", count))
      for _, b in ipairs(busy) do
        errout:write(string.format("sqlnotify: warning: consumer %q %s", b, busy[b]), ": --yes refuses while it may run (stop it first, or give --yes twice)\n")
      end
      return 0
    end
    if yes == 1 and #busy > 0 then
      for _, b in ipairs(busy) do
        errout:write(string.format("sqlnotify: consumer %q %s", b, busy[b]), ": stop it first, or give --yes twice to uninstall anyway (its journal goes, "
          .. "and what is written meanwhile is lost)\n")
      end
      errout:write("sqlnotify: nothing dropped\n")
      return 1
    end
    catalog.prepare(n)
    local dropped, failed, trigger_left = 0, 0, false
    local function failure(line, why)
      errout:write("sqlnotify: cannot drop ", line, ": ", (sqlnotify._one_line(why):gsub("^sqlnotify: ", "")), "\n")
      failed = failed + 1
    end
    for _, o in ipairs(objects) do
      local lines = describe(o)
      local ok, why
      if o.kind == "triggers" then
        ok, why = n._h:drop(o.schema, o.table)
        if not ok then trigger_left = true end
      elseif o.blocked then
        ok, why = nil, o.blocked
      elseif o.journal and trigger_left then
        ok, why = nil, "kept: a trigger that could not be dropped may still write to it"
      else
        ok, why = n._h:query(o.sql)
      end
      for _, line in ipairs(lines) do
        if ok then
          out:write("dropped ", (line:gsub(" %[owner .*%]$", "")), "\n")
          dropped = dropped + 1
        else
          failure(line, why)
        end
      end
    end
    out:write(string.format("dropped %d object(s) in %s\n", dropped, target))
    if failed > 0 then
      errout:write(string.format("sqlnotify: %d object(s) not dropped\n", failed))
      return 1
    end
    return 0
  end)
end

return M
