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
