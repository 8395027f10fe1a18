-- reader.sql: statements of the journal reader (reader.c) kept as data. Each starts at a line
-- "-- name: <key>" and runs to the next one; other lines starting with "--" are comments. The
-- reader runs text statements on its non-blocking connection: each ? is a literal it quotes in
-- (my_sb_statement), so no ? may appear elsewhere.

-- name: triggers_of_table
-- (schema, table, schema, table): one per table whose durable triggers the reader reads, joined
-- by UNION ALL, once a second. The table's row (a NULL trigger) says that it is there, then
-- each of its triggers' names. Both by equality on schema and table: MariaDB then reads that
-- table's definition and trigger file alone, about 1 ms a table whose three sqlnotify triggers
-- it parses, however many tables the schema has. By TRIGGER_NAME it parses every trigger of
-- the schema: 100 ms with 200 tables. (MySQL 8 reads its data dictionary's indexes either way.)
SELECT TABLE_SCHEMA, TABLE_NAME, NULL FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
UNION ALL
SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS
WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?

-- ===== the members of a durable consumer (consumers.c; reader.c's look each MY_MEMBER_BEAT)
-- Each takes its literals in this order, as many as it has: consumer, member, pid, host, tables
-- (member_mark its own).

-- name: member_write
-- this process's row: its tables (one a line) and a heartbeat
INSERT INTO sqlnotify_members (consumer, member, pid, host, tables, heartbeat)
VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE pid = VALUES(pid), host = VALUES(host),
tables = VALUES(tables), heartbeat = VALUES(heartbeat)
-- name: member_mark
-- (consumer, consumer, member) after a write whose tables changed, in the journal (channel
-- MY_MEMBERS_CHANNEL), where another member lives: the holder meets it before any row the new
-- tables' triggers capture (a process alone has no reader to warn: one that comes later reads
-- our row before it reads the journal)
INSERT INTO sqlnotify_journal (channel, payload) SELECT 'sqlnotify:members', ? FROM DUAL WHERE EXISTS
(SELECT 1 FROM sqlnotify_members WHERE consumer = ? AND member <> ?
AND heartbeat > UTC_TIMESTAMP(6) - INTERVAL 10 SECOND)
-- name: members_live
-- the other members, written within MY_MEMBER_TIMEOUT
SELECT pid, host, tables FROM sqlnotify_members WHERE consumer = ? AND member <> ?
AND heartbeat > UTC_TIMESTAMP(6) - INTERVAL 10 SECOND ORDER BY pid
-- name: member_leave
DELETE FROM sqlnotify_members WHERE consumer = ? AND member = ?
