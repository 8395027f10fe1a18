--- sqlnotify.cli: what `sqlnotify-lua --list URL`, `--drop URL [table]` and `--dead-letters URL [consumer]` do.
-- Each function prints to out (default io.stdout), reports a failure as one
-- "sqlnotify: ..." line on err (default io.stderr), and returns the exit status.
local sqlnotify = require("sqlnotify")

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
    local cells, widths = { COLUMNS }, {}
    for i, c in ipairs(COLUMNS) do widths[i] = width(c) end
    for _, r in ipairs(rows) do
      -- the wire channel's tag says whose capture it is: a live watch's or a consumer's shape
      local plain, capture = sqlnotify._capture_of(tostring(r[4] or ""))
      r = { r[1], r[2], r[3], r[4] and plain, capture, r[5], r[6], r[7], r[8] }
      local line = {}
      for i = 1, #COLUMNS do
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
    out:write(string.format("%d trigger(s) in %s\n", #rows, n._h:target()))
    return 0
  end)
end

--- drop(url, [table], [out], [err]) -> 0 | 1: drop sqlnotify's triggers and functions on one
-- table ("table" or "schema.table"), or in the whole database when table is nil.
function M.drop(url, tbl, out, err)
  out = out or io.stdout
  local errout = err or io.stderr
  return with_notifier(url, err, function(n)
    local count, e, where, info
    -- the durable consumers' captures it takes, to say what they will miss
    local rows = n._h:list() or {}
    if tbl ~= nil then
      info = n:_table(tbl, 1)
      count, e = n._h:drop(info.schema, info.table)
      where = "on " .. info.name
    else
      count, e = n._h:drop(nil, nil)
      where = "in " .. n._h:target()
    end
    if not count then error(e, 0) end
    out:write(string.format("dropped %d sqlnotify trigger(s) %s\n", count, where))
    for _, r in ipairs(rows) do
      local plain, capture = sqlnotify._capture_of(tostring(r[4] or ""))
      if capture ~= "live" and (not info or (r[1] == info.schema and r[2] == info.table)) then
        errout:write(string.format("sqlnotify: warning: dropped the capture of a durable consumer for %s on %s.%s "
          .. "(channel %s, %s): its changes from now until that consumer starts again are not captured, and it "
          .. "says so at error level when it does\n", r[3] or "?", r[1], r[2], plain, capture))
      end
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

return M
