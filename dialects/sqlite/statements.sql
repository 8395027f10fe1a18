-- statements.sql: what the shared Lua runs on SQLite by name (lua/sqlnotify/statements.lua
-- reads this file, compiled in, through h:statements()). Each statement starts at a line
-- "-- name: <key>" and runs to the next one; a key given twice is a list run in order.
-- Parameters: ? in the order the caller passes them, each used once (MySQL's ? cannot be used
-- twice, so every dialect takes the same arguments). %s: an identifier the caller quotes.

-- ===== catalog.lua: what of sqlnotify's is in a database, for --list, --consumers, --uninstall

-- name: reads_exists
SELECT count(*) AS present FROM sqlite_master WHERE type = 'table' AND name = 'sqlnotify_reads'
-- name: reads
SELECT consumer, channel FROM sqlnotify_reads ORDER BY consumer
-- name: journal_rows
SELECT count(*) AS n FROM sqlnotify_changes
-- name: tables
SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sqlnotify\_%' ESCAPE '\' ORDER BY name
-- name: drop_table
DROP TABLE IF EXISTS %s
-- name: opened.sqlnotify_changes
-- what opening the file makes (the driver does at every open): rows in it say it was used
SELECT count(*) AS n FROM sqlnotify_changes
-- name: opened.sqlnotify_readers
SELECT count(*) AS n FROM sqlnotify_readers

-- ===== dead_letters.lua: events whose handlers failed on every attempt (SPEC §8.1)

-- name: dead_create
CREATE TABLE IF NOT EXISTS sqlnotify_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,
  consumer TEXT NOT NULL, channel TEXT NOT NULL, seq INTEGER, payload TEXT NOT NULL, error TEXT NOT NULL,
  attempts INTEGER NOT NULL, failed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))
-- name: dead_insert
-- (consumer, channel, seq, payload, error, attempts) -> id
INSERT INTO sqlnotify_dead_letters (consumer, channel, seq, payload, error, attempts)
VALUES (?, ?, ?, ?, ?, ?) RETURNING id
-- name: dead_again
-- (error, attempts, id)
UPDATE sqlnotify_dead_letters SET error = ?, attempts = attempts + ?,
  failed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?
-- name: dead_delete
DELETE FROM sqlnotify_dead_letters WHERE id = ?
-- name: dead_list
-- (consumer, consumer, id, id, limit): a NULL consumer or id matches every one
SELECT id, consumer, channel, seq, payload, error, attempts, failed_at FROM sqlnotify_dead_letters
WHERE (? IS NULL OR consumer = ?) AND (? IS NULL OR id = ?) ORDER BY id LIMIT ?
-- name: dead_exists
SELECT count(*) AS present FROM sqlite_master WHERE type = 'table' AND name = 'sqlnotify_dead_letters'
-- name: dead_counts
SELECT consumer, count(*) AS n FROM sqlnotify_dead_letters GROUP BY consumer

-- ===== backfill.lua: the rows a table had before (SPEC §8.3)
-- {holes} as in the PostgreSQL file. SQLite has one writer at a time: a chunk's transaction
-- (BEGIN IMMEDIATE) holds the others back while it reads, and nothing else is needed.

-- name: param
?
-- name: backfill_create
CREATE TABLE IF NOT EXISTS sqlnotify_backfills (consumer TEXT NOT NULL, tbl TEXT NOT NULL, wire TEXT NOT NULL,
  where_sql TEXT, chunk INTEGER NOT NULL, last_key TEXT, rows_done INTEGER NOT NULL DEFAULT 0, total INTEGER,
  state TEXT NOT NULL DEFAULT 'running', started_at REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0)),
  updated_at REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0)), PRIMARY KEY (consumer, tbl))
-- name: backfill_count
SELECT count(*) AS n FROM {table} r WHERE ({where})
-- name: backfill_start
-- (consumer, tbl, wire, where, chunk, total)
INSERT OR REPLACE INTO sqlnotify_backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES (?, ?, ?, ?, ?, ?)
-- name: backfill_snapshot
-- (consumer, tbl, wire, where, chunk, total)
INSERT OR IGNORE INTO sqlnotify_backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES (?, ?, ?, ?, ?, ?)
-- name: backfill_get
-- (consumer, tbl)
SELECT wire, where_sql, chunk, last_key, rows_done, total, state, ((julianday('now') - 2440587.5) * 86400.0) - started_at AS age
FROM sqlnotify_backfills WHERE consumer = ? AND tbl = ?
-- name: backfill_list
-- (consumer)
SELECT tbl, rows_done, total, state, where_sql, chunk,
  strftime('%Y-%m-%dT%H:%M:%SZ', started_at, 'unixepoch') AS started_at,
  strftime('%Y-%m-%dT%H:%M:%SZ', updated_at, 'unixepoch') AS updated_at
FROM sqlnotify_backfills WHERE consumer = ? ORDER BY tbl
-- name: backfill_begin
BEGIN IMMEDIATE
-- name: backfill_claim
-- (consumer, tbl)
SELECT last_key, rows_done, state FROM sqlnotify_backfills WHERE consumer = ? AND tbl = ?
-- name: backfill_lock
SELECT {keys_as} FROM {table} r WHERE {after} AND ({where}) ORDER BY {keys} LIMIT {limit}
-- name: backfill_copy
-- (wire, bounds)
INSERT INTO sqlnotify_changes (channel, payload) SELECT ?, {payload} FROM {table} r
WHERE {after} AND {upto} AND ({where}) ORDER BY {keys}
-- name: backfill_save
-- (last_key, rows, consumer, tbl)
UPDATE sqlnotify_backfills SET last_key = ?, rows_done = rows_done + ?, updated_at = ((julianday('now') - 2440587.5) * 86400.0)
WHERE consumer = ? AND tbl = ?
-- name: backfill_finish
-- (state, consumer, tbl)
UPDATE sqlnotify_backfills SET state = ?, updated_at = ((julianday('now') - 2440587.5) * 86400.0) WHERE consumer = ? AND tbl = ?
  AND state = 'running'
-- name: backfill_forget
-- (consumer)
DELETE FROM sqlnotify_backfills WHERE consumer = ?
-- name: backfill_commit
COMMIT
-- name: backfill_rollback
ROLLBACK
