--- sqlnotify.dead_letters: the table of events whose handlers failed on every attempt, in the
-- watched database itself (SPEC §8.1): sqlnotify.dead_letters on PostgreSQL, beside the
-- journal; sqlnotify_dead_letters on SQLite and MySQL. Made on the first dead letter.
local M = {}

-- The statements of each dialect; $n (PostgreSQL) or ? (SQLite, MySQL) in the order of the
-- arguments the functions below pass.
local SQL = {
  postgresql = {
    create = {
      "CREATE SCHEMA IF NOT EXISTS sqlnotify",
      "CREATE TABLE IF NOT EXISTS sqlnotify.dead_letters (id bigserial PRIMARY KEY, consumer text NOT NULL,"
        .. " channel text NOT NULL, seq bigint, payload text NOT NULL, error text NOT NULL,"
        .. " attempts integer NOT NULL, failed_at timestamptz NOT NULL DEFAULT now())",
      "CREATE INDEX IF NOT EXISTS dead_letters_consumer ON sqlnotify.dead_letters (consumer, id)",
    },
    insert = "INSERT INTO sqlnotify.dead_letters (consumer, channel, seq, payload, error, attempts)"
      .. " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    again = "UPDATE sqlnotify.dead_letters SET error = $2, attempts = attempts + $3, failed_at = now() WHERE id = $1",
    delete = "DELETE FROM sqlnotify.dead_letters WHERE id = $1",
    list = "SELECT id, consumer, channel, seq, payload, error, attempts,"
      .. " to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS failed_at"
      .. " FROM sqlnotify.dead_letters WHERE ($1::text IS NULL OR consumer = $1) AND ($2::bigint IS NULL OR id = $2)"
      .. " ORDER BY id LIMIT $3",
    exists = "SELECT to_regclass('sqlnotify.dead_letters') IS NOT NULL AS present",
    counts = "SELECT consumer, count(*) AS n FROM sqlnotify.dead_letters GROUP BY consumer",
  },
  sqlite = {
    create = {
      "CREATE TABLE IF NOT EXISTS sqlnotify_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        .. " consumer TEXT NOT NULL, channel TEXT NOT NULL, seq INTEGER, payload TEXT NOT NULL, error TEXT NOT NULL,"
        .. " attempts INTEGER NOT NULL, failed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))",
    },
    insert = "INSERT INTO sqlnotify_dead_letters (consumer, channel, seq, payload, error, attempts)"
      .. " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    again = "UPDATE sqlnotify_dead_letters SET error = ?2, attempts = attempts + ?3,"
      .. " failed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?1",
    delete = "DELETE FROM sqlnotify_dead_letters WHERE id = ?",
    list = "SELECT id, consumer, channel, seq, payload, error, attempts, failed_at FROM sqlnotify_dead_letters"
      .. " WHERE (?1 IS NULL OR consumer = ?1) AND (?2 IS NULL OR id = ?2) ORDER BY id LIMIT ?3",
    exists = "SELECT count(*) AS present FROM sqlite_master WHERE type = 'table' AND name = 'sqlnotify_dead_letters'",
    counts = "SELECT consumer, count(*) AS n FROM sqlnotify_dead_letters GROUP BY consumer",
  },
  mysql = {
    create = {
      "CREATE TABLE IF NOT EXISTS sqlnotify_dead_letters (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
        .. " consumer VARCHAR(255) NOT NULL, channel VARCHAR(255) NOT NULL, seq BIGINT, payload LONGTEXT NOT NULL,"
        .. " error TEXT NOT NULL, attempts INT NOT NULL, failed_at DATETIME(6) NOT NULL, KEY (consumer, id))",
    },
    insert = "INSERT INTO sqlnotify_dead_letters (consumer, channel, seq, payload, error, attempts, failed_at)"
      .. " VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
    again = "UPDATE sqlnotify_dead_letters SET error = ?, attempts = attempts + ?, failed_at = UTC_TIMESTAMP(6)"
      .. " WHERE id = ?",
    delete = "DELETE FROM sqlnotify_dead_letters WHERE id = ?",
    list = "SELECT id, consumer, channel, seq, payload, error, attempts,"
      .. " DATE_FORMAT(failed_at, '%Y-%m-%dT%H:%i:%SZ') AS failed_at FROM sqlnotify_dead_letters"
      .. " WHERE (? IS NULL OR consumer = ?) AND (? IS NULL OR id = ?) ORDER BY id LIMIT ?",
    exists = "SELECT count(*) AS present FROM information_schema.tables WHERE table_schema = DATABASE()"
      .. " AND table_name = 'sqlnotify_dead_letters'",
    counts = "SELECT consumer, COUNT(*) AS n FROM sqlnotify_dead_letters GROUP BY consumer",
  },
}

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

local function sql_of(n)
  return SQL[n.dialect_name] or error("sqlnotify: no dead-letter table on " .. tostring(n.dialect_name), 3)
end

local function create(n, s)
  for _, stmt in ipairs(s.create) do
    local ok, err = n._h:query(stmt)
    if not ok then return nil, err end
  end
  return true
end

-- A statement, the table made first when it is missing (dropped by hand, or never made).
local function run(n, s, stmt, ...)
  local rows, err = n._h:query(stmt, ...)
  if rows then return rows end
  local ok, err2 = create(n, s)
  if not ok then return nil, err .. "; making the table: " .. err2 end
  return n._h:query(stmt, ...)
end

-- A new dead letter; returns its id (or true), or nil and why.
function M.write(n, consumer, channel, seq, payload, err, attempts)
  local s = sql_of(n)
  err = text_of(err)
  local rows, e = run(n, s, s.insert, consumer, channel, seq, payload, err, attempts)
  if not rows then return nil, e end
  local id = rows[1] and rows[1].id
  return id and math.tointeger(tonumber(id)) or true
end

-- A replayed dead letter failed again: its error and count of attempts move on.
function M.again(n, id, err, attempts)
  local s = sql_of(n)
  err = text_of(err)
  local rows, e
  if n.dialect_name == "mysql" then
    rows, e = run(n, s, s.again, err, attempts, id)
  else
    rows, e = run(n, s, s.again, id, err, attempts)
  end
  if not rows then return nil, e end
  return true
end

-- A replayed dead letter was handled: it goes.
function M.delete(n, id)
  local s = sql_of(n)
  local rows, e = n._h:query(s.delete, id)
  if not rows then return nil, e end
  return true
end

local function absent(n, s)
  local present = n._h:query(s.exists)
  return present and present[1] and (present[1].present == false or tonumber(present[1].present) == 0
    or present[1].present == "f")
end

-- How many dead letters each consumer has: { [consumer] = count } (empty without the table),
-- or nil and why.
function M.counts(n)
  local s = sql_of(n)
  if absent(n, s) then return {} end
  local rows, e = n._h:query(s.counts)
  if not rows then return nil, e end
  local out = {}
  for _, r in ipairs(rows) do out[r.consumer] = math.tointeger(tonumber(r.n)) or r.n end
  return out
end

-- The dead letters of a consumer (all when nil), oldest first: rows with id, consumer,
-- channel, seq, payload, error, attempts, failed_at (ISO 8601, UTC).
function M.list(n, consumer, id, limit)
  local s = sql_of(n)
  if absent(n, s) then return {} end
  local rows, e
  if n.dialect_name == "mysql" then
    rows, e = n._h:query(s.list, consumer, consumer, id, id, limit)
  else
    rows, e = n._h:query(s.list, consumer, id, limit)
  end
  if not rows then return nil, e end
  for _, r in ipairs(rows) do
    r.id = math.tointeger(tonumber(r.id)) or r.id
    r.seq = r.seq ~= nil and (math.tointeger(tonumber(r.seq)) or r.seq) or nil
    r.attempts = math.tointeger(tonumber(r.attempts)) or r.attempts
  end
  return rows
end

return M
