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
