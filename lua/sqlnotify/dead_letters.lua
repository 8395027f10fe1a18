--- sqlnotify.dead_letters: the table of events whose handlers failed on every attempt, in the
-- watched database itself (SPEC §8.1): sqlnotify.dead_letters on PostgreSQL, beside the
-- journal; sqlnotify_dead_letters on SQLite and MySQL. Made on the first dead letter.
local M = {}

-- The statements are each driver's (statements.sql, dead_*), and take the same arguments on
-- every dialect.
local statements = require("sqlnotify.statements")

local MAX_ERROR = 8000 -- bytes of the error (a traceback) kept

-- Text a text column takes: valid UTF-8 without NUL (PostgreSQL refuses both, MySQL's utf8mb4
-- too), cut at MAX_ERROR bytes on a character boundary. A handler's error may hold any bytes
-- (a binary reply, a latin-1 message): each invalid byte becomes U+FFFD, a NUL "\\0". A
-- dead letter that cannot be written holds the consumer's position, so this must never fail.
local function text_of(err)
  local s = tostring(err)
  if #s > MAX_ERROR then s = s:sub(1, MAX_ERROR) end
  if utf8.len(s) and not s:find("%z") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local len, bad = utf8.len(s, i)
    if len then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\239\191\189" -- U+FFFD
    i = bad + 1
  end
  s = table.concat(out):gsub("%z", "\\0")
  if #s > MAX_ERROR then -- the replacements grew it: cut before a character's first byte
    local cut = MAX_ERROR
    while cut > 0 and s:byte(cut + 1) and s:byte(cut + 1) >= 0x80 and s:byte(cut + 1) < 0xC0 do cut = cut - 1 end
    s = s:sub(1, cut)
  end
  return s
end
M.text_of = text_of

local sql_of = statements.of

-- A statement, the table made first when it is missing (dropped by hand, or never made).
local function run(n, key, ...) return statements.run_made(n, "dead_create", key, ...) end

-- A new dead letter; returns its id (or true), or nil and why.
function M.write(n, consumer, channel, seq, payload, err, attempts)
  err = text_of(err)
  local rows, e = run(n, "dead_insert", consumer, channel, seq, payload, err, attempts)
  if not rows then return nil, e end
  local id = rows[1] and rows[1].id
  return id and math.tointeger(tonumber(id)) or true
end

-- A replayed dead letter failed again: its error and count of attempts move on.
function M.again(n, id, err, attempts)
  err = text_of(err)
  local rows, e = run(n, "dead_again", err, attempts, id)
  if not rows then return nil, e end
  return true
end

-- A replayed dead letter was handled: it goes.
function M.delete(n, id)
  local s = sql_of(n)
  local rows, e = n._h:query(s.dead_delete, id)
  if not rows then return nil, e end
  return true
end

-- The table is known to be missing (not when the question failed: the statement then says why).
local function absent(n)
  return statements.present(n, "dead_exists") == false
end

-- How many dead letters each consumer has: { [consumer] = count } (empty without the table),
-- or nil and why.
function M.counts(n)
  local s = sql_of(n)
  if absent(n) then return {} end
  local rows, e = n._h:query(s.dead_counts)
  if not rows then return nil, e end
  local out = {}
  for _, r in ipairs(rows) do out[r.consumer] = math.tointeger(tonumber(r.n)) or r.n end
  return out
end

-- The dead letters of a consumer (all when nil), oldest first: rows with id, consumer,
-- channel, seq, payload, error, attempts, failed_at (ISO 8601, UTC).
function M.list(n, consumer, id, limit)
  local s = sql_of(n)
  if absent(n) then return {} end
  local rows, e = n._h:query(s.dead_list, consumer, consumer, id, id, limit)
  if not rows then return nil, e end
  for _, r in ipairs(rows) do
    r.id = math.tointeger(tonumber(r.id)) or r.id
    r.seq = r.seq ~= nil and (math.tointeger(tonumber(r.seq)) or r.seq) or nil
    r.attempts = math.tointeger(tonumber(r.attempts)) or r.attempts
  end
  return rows
end

return M
