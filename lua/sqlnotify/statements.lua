--- sqlnotify.statements: the statements each driver keeps in its statements.sql (compiled in,
-- read through h:statements()), by name. A statement starts at a line "-- name: <key>" and runs
-- to the next one; other lines that start with "--" are comments and left out. A key given
-- more than once is a list, run in order (M.list); M.of(n)[key] is a key's one statement.
local M = {}

local parsed = {} -- dialect name -> { [key] = text, _lists = { [key] = { text, ... } } }

local function parse(text)
  local one, lists, key, lines = {}, {}, nil, nil
  local function close()
    if not key then return end
    local sql = table.concat(lines, "\n"):match("^%s*(.-)%s*$")
    local list = lists[key] or {}
    list[#list + 1] = sql
    lists[key], one[key] = list, sql
  end
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local name = line:match("^%-%- name: (%S+)%s*$")
    if name then
      close()
      key, lines = name, {}
    elseif key and not line:match("^%s*%-%-") then
      lines[#lines + 1] = line
    end
  end
  close()
  one._lists = lists
  return one
end

--- of(n) -> the statements of the notifier's dialect: { [key] = SQL text } (absent: the dialect
-- has none of that name, and does without).
function M.of(n)
  local s = parsed[n.dialect_name]
  if not s then
    s = parse(n._h:statements())
    parsed[n.dialect_name] = s
  end
  return s
end

--- truthy(v): a cell that says yes, as each dialect returns one (true, "t", 1).
function M.truthy(v)
  return v == true or v == "t" or v == "true" or (tonumber(v) or 0) ~= 0
end

--- present(n, key) -> true | false | nil: what the dialect's statement key (one row with a
-- column "present") says: whether a table of ours exists; nil when it could not be run.
function M.present(n, key)
  local rows = n._h:query(M.of(n)[key])
  if not (rows and rows[1]) then return nil end
  return M.truthy(rows[1].present)
end

--- list(s, key) -> { SQL text, ... }: every statement of that name, in the file's order.
function M.list(s, key)
  return s._lists[key] or {}
end

--- run_made(n, create_key, key, ...) -> rows | nil, err: statement key with its arguments, the
-- table it needs made first (the statements create_key lists) when it fails, once: for a table
-- of ours made on first use, or dropped by hand since.
function M.run_made(n, create_key, key, ...)
  local s = M.of(n)
  local rows, err = n._h:query(s[key], ...)
  if rows then return rows end
  for _, stmt in ipairs(M.list(s, create_key)) do
    local ok, err2 = n._h:query(stmt)
    if not ok then return nil, err .. "; making the table: " .. err2 end
  end
  return n._h:query(s[key], ...)
end

--- quote(n, name) -> the identifier quoted as the dialect quotes ("" or ``).
function M.quote(n, name)
  local q = n._caps.quote
  return q .. name:gsub(q, q .. q) .. q
end

return M
