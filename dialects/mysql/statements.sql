-- statements.sql: what the shared Lua runs on MySQL and MariaDB by name
-- (lua/sqlnotify/statements.lua reads this file, compiled in, through h:statements()). Each
-- statement starts at a line "-- name: <key>" and runs to the next one; a key given twice is a
-- list run in order. Parameters: ? in the order the caller passes them, each used once.
-- %s: an identifier the caller quotes.

-- ===== catalog.lua: what of sqlnotify's is in a database, for --list, --consumers, --uninstall

-- name: reads_exists
SELECT COUNT(*) AS present FROM information_schema.tables WHERE table_schema = DATABASE()
  AND table_name = 'sqlnotify_reads'
-- name: reads
SELECT consumer, channel FROM sqlnotify_reads ORDER BY consumer
-- name: journal_rows
SELECT COUNT(*) AS n FROM sqlnotify_journal
-- name: consumers_exist
-- reading the consumers makes the journal's tables: none yet is no consumer
SELECT COUNT(*) AS present FROM information_schema.tables WHERE table_schema = DATABASE()
  AND table_name = 'sqlnotify_consumers'
-- name: prepare
SET SESSION lock_wait_timeout = 5
-- name: tables
SELECT table_name AS name FROM information_schema.tables WHERE table_schema = DATABASE()
  AND table_name LIKE 'sqlnotify\_%' ORDER BY table_name
-- name: drop_table
DROP TABLE IF EXISTS %s

-- ===== dead_letters.lua: events whose handlers failed on every attempt (SPEC §8.1)

-- name: dead_create
CREATE TABLE IF NOT EXISTS sqlnotify_dead_letters (id BIGINT AUTO_INCREMENT PRIMARY KEY,
  consumer VARCHAR(255) NOT NULL, channel VARCHAR(255) NOT NULL, seq BIGINT, payload LONGTEXT NOT NULL,
  error TEXT NOT NULL, attempts INT NOT NULL, failed_at DATETIME(6) NOT NULL, KEY (consumer, id))
-- name: dead_insert
-- (consumer, channel, seq, payload, error, attempts); the id comes back as the last insert id
INSERT INTO sqlnotify_dead_letters (consumer, channel, seq, payload, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))
-- name: dead_again
-- (error, attempts, id)
UPDATE sqlnotify_dead_letters SET error = ?, attempts = attempts + ?, failed_at = UTC_TIMESTAMP(6)
WHERE id = ?
-- name: dead_delete
DELETE FROM sqlnotify_dead_letters WHERE id = ?
-- name: dead_list
-- (consumer, consumer, id, id, limit): a NULL consumer or id matches every one
SELECT id, consumer, channel, seq, payload, error, attempts,
  DATE_FORMAT(failed_at, '%Y-%m-%dT%H:%i:%SZ') AS failed_at FROM sqlnotify_dead_letters
WHERE (? IS NULL OR consumer = ?) AND (? IS NULL OR id = ?) ORDER BY id LIMIT ?
-- name: dead_exists
SELECT COUNT(*) AS present FROM information_schema.tables WHERE table_schema = DATABASE()
  AND table_name = 'sqlnotify_dead_letters'
-- name: dead_counts
SELECT consumer, COUNT(*) AS n FROM sqlnotify_dead_letters GROUP BY consumer

-- ===== backfill.lua: the rows a table had before (SPEC §8.3)
-- {holes} as in the PostgreSQL file. LOCK IN SHARE MODE NOWAIT is MariaDB's (10.3 on);
-- MySQL 8 spells it FOR SHARE NOWAIT.

-- name: param
?
-- name: backfill_create
CREATE TABLE IF NOT EXISTS sqlnotify_backfills (consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  tbl VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, wire VARCHAR(255) NOT NULL, where_sql TEXT,
  chunk INT NOT NULL, last_key LONGTEXT, rows_done BIGINT NOT NULL DEFAULT 0, total BIGINT,
  state VARCHAR(16) NOT NULL DEFAULT 'running', started_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
  updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), PRIMARY KEY (consumer, tbl)) ENGINE=InnoDB
  COMMENT='sqlnotify: where each backfill stands'
-- name: backfill_count
SELECT COUNT(*) AS n FROM {table} r WHERE ({where})
-- name: backfill_start
-- (consumer, tbl, wire, where, chunk, total)
REPLACE INTO sqlnotify_backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES (?, ?, ?, ?, ?, ?)
-- name: backfill_snapshot
-- (consumer, tbl, wire, where, chunk, total)
INSERT IGNORE INTO sqlnotify_backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES (?, ?, ?, ?, ?, ?)
-- name: backfill_get
-- (consumer, tbl)
SELECT wire, where_sql, chunk, last_key, rows_done, total, state,
  TIMESTAMPDIFF(MICROSECOND, started_at, UTC_TIMESTAMP(6)) / 1e6 AS age
FROM sqlnotify_backfills WHERE consumer = ? AND tbl = ?
-- name: backfill_list
-- (consumer)
SELECT tbl, rows_done, total, state, where_sql, chunk, DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%sZ') AS started_at,
  DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%sZ') AS updated_at FROM sqlnotify_backfills WHERE consumer = ? ORDER BY tbl
-- name: backfill_begin
START TRANSACTION
-- name: backfill_claim
-- (consumer, tbl)
SELECT last_key, rows_done, state FROM sqlnotify_backfills WHERE consumer = ? AND tbl = ? FOR UPDATE SKIP LOCKED
-- name: backfill_lock
SELECT {keys_as} FROM {table} r WHERE {after} AND ({where}) ORDER BY {keys} LIMIT {limit} LOCK IN SHARE MODE NOWAIT
-- name: backfill_copy
-- (wire, bounds)
INSERT INTO sqlnotify_journal (channel, payload) SELECT ?, {payload} FROM {table} r
WHERE {after} AND {upto} AND ({where}) ORDER BY {keys}
-- name: backfill_save
-- (last_key, rows, consumer, tbl)
UPDATE sqlnotify_backfills SET last_key = ?, rows_done = rows_done + ?, updated_at = UTC_TIMESTAMP(6)
WHERE consumer = ? AND tbl = ?
-- name: backfill_finish
-- (state, consumer, tbl)
UPDATE sqlnotify_backfills SET state = ?, updated_at = UTC_TIMESTAMP(6) WHERE consumer = ? AND tbl = ?
  AND state = 'running'
-- name: backfill_forget
-- (consumer)
DELETE FROM sqlnotify_backfills WHERE consumer = ?
-- name: backfill_commit
COMMIT
-- name: backfill_rollback
ROLLBACK
