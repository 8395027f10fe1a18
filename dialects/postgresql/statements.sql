-- statements.sql: what the shared Lua runs on PostgreSQL by name (lua/sqlnotify/statements.lua
-- reads this file, compiled in, through h:statements()). Each statement starts at a line
-- "-- name: <key>" and runs to the next one; a key given twice is a list run in order.
-- Parameters: $1.. in the order the caller passes them, each used once (MySQL's ? cannot be
-- used twice, so every dialect takes the same arguments). %s: an identifier the caller quotes.

-- ===== catalog.lua: what of sqlnotify's is in a database, for --list, --consumers, --uninstall

-- name: reads_exists
SELECT pg_catalog.to_regclass('sqlnotify.reads') IS NOT NULL AS present
-- name: reads
SELECT consumer, channel FROM sqlnotify.reads ORDER BY consumer COLLATE "C"
-- name: journal_rows
SELECT count(*) AS n FROM sqlnotify.journal
-- name: prepare
-- no statement waits long behind a writer's lock: it fails and says so instead
SET lock_timeout = '5s'
-- name: table_owner
SELECT pg_catalog.pg_get_userbyid(c.relowner) AS owner, pg_catalog.pg_has_role(c.relowner, 'MEMBER') AS mine
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
-- name: functions
-- our trigger functions (marked by their comment) no trigger uses: a dropped table leaves them
SELECT pg_catalog.format('%I.%I()', n.nspname, p.proname) AS name,
  pg_catalog.pg_get_userbyid(p.proowner) AS owner, pg_catalog.pg_has_role(p.proowner, 'MEMBER') AS mine
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.objsubid = 0
  AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass
WHERE d.description LIKE 'sqlnotify:%' AND p.pronargs = 0
  AND n.nspname NOT IN ('sqlnotify', 'sqlnotify_capture')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger u WHERE u.tgfoid = p.oid)
ORDER BY 1 COLLATE "C"
-- name: drop_function
DROP FUNCTION IF EXISTS %s
-- name: overflow
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name,
  pg_catalog.pg_get_userbyid(c.relowner) AS owner, pg_catalog.pg_has_role(c.relowner, 'MEMBER') AS mine
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = 'sqlnotify_overflow' AND c.relkind IN ('r', 'p') AND n.nspname <> 'sqlnotify'
ORDER BY 1 COLLATE "C"
-- name: drop_table
DROP TABLE IF EXISTS %s
-- name: schema
-- the schema: its tables, what in it another role owns, and what outside it depends on it
-- (DROP SCHEMA ... CASCADE would take those along: they are not ours)
SELECT pg_catalog.pg_get_userbyid(s.nspowner) AS owner, pg_catalog.pg_has_role(s.nspowner, 'MEMBER') AS mine,
  (SELECT pg_catalog.string_agg(c.relname, ', ' ORDER BY c.relname COLLATE "C") FROM pg_catalog.pg_class c
    WHERE c.relnamespace = s.oid AND c.relkind IN ('r', 'p')) AS tables,
  (SELECT pg_catalog.string_agg(pg_catalog.format('%s (owner %s)', c.relname, pg_catalog.pg_get_userbyid(c.relowner)),
    ', ' ORDER BY c.relname COLLATE "C") FROM pg_catalog.pg_class c WHERE c.relnamespace = s.oid
    AND c.relkind IN ('r', 'p', 'S', 'v') AND NOT pg_catalog.pg_has_role(c.relowner, 'MEMBER')) AS others,
  (SELECT pg_catalog.string_agg(DISTINCT i.type || ' ' || i.identity, ', ') FROM pg_catalog.pg_depend d
    CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) i
    WHERE d.deptype = 'n' AND (
     (d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid IN
       (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace = s.oid))
     OR (d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid IN
       (SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace = s.oid))
     OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid IN
       (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typnamespace = s.oid)))
    -- the schema of the dependent object, or of the table it belongs to
    AND CASE d.classid
     WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN
      (SELECT x.relnamespace FROM pg_catalog.pg_class x WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
      (SELECT x.pronamespace FROM pg_catalog.pg_proc x WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_type'::pg_catalog.regclass THEN
      (SELECT x.typnamespace FROM pg_catalog.pg_type x WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_attrdef x
      JOIN pg_catalog.pg_class c ON c.oid = x.adrelid WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_rewrite x
      JOIN pg_catalog.pg_class c ON c.oid = x.ev_class WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_trigger x
      JOIN pg_catalog.pg_class c ON c.oid = x.tgrelid WHERE x.oid = d.objid)
     WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN (SELECT COALESCE(c.relnamespace, x.connamespace)
      FROM pg_catalog.pg_constraint x LEFT JOIN pg_catalog.pg_class c ON c.oid = x.conrelid WHERE x.oid = d.objid)
     -- ours, on its function in the schema (journal 11): it goes with it
     WHEN 'pg_catalog.pg_event_trigger'::pg_catalog.regclass THEN (SELECT s.oid FROM pg_catalog.pg_event_trigger x
      WHERE x.oid = d.objid AND x.evtname = 'sqlnotify_remake_triggers')
    END IS DISTINCT FROM s.oid) AS dependents
FROM pg_catalog.pg_namespace s WHERE s.nspname = 'sqlnotify'
-- name: drop_schema
DROP SCHEMA IF EXISTS sqlnotify CASCADE
-- name: extension
SELECT e.extversion AS version, pg_catalog.pg_get_userbyid(e.extowner) AS owner,
  pg_catalog.pg_has_role(e.extowner, 'MEMBER') AS mine FROM pg_catalog.pg_extension e
WHERE e.extname = 'sqlnotify_capture'
-- name: drop_extension
DROP EXTENSION IF EXISTS sqlnotify_capture
-- name: capture_schema
-- the extension's schema, which CREATE EXTENSION made and DROP EXTENSION leaves
SELECT pg_catalog.pg_get_userbyid(s.nspowner) AS owner, pg_catalog.pg_has_role(s.nspowner, 'MEMBER') AS mine
FROM pg_catalog.pg_namespace s WHERE s.nspname = 'sqlnotify_capture'
-- name: drop_capture_schema
DROP SCHEMA IF EXISTS sqlnotify_capture

-- ===== dead_letters.lua: events whose handlers failed on every attempt (SPEC §8.1)

-- name: dead_create
CREATE SCHEMA IF NOT EXISTS sqlnotify
-- name: dead_create
CREATE TABLE IF NOT EXISTS sqlnotify.dead_letters (id bigserial PRIMARY KEY, consumer text NOT NULL,
  channel text NOT NULL, seq bigint, payload text NOT NULL, error text NOT NULL,
  attempts integer NOT NULL, failed_at timestamptz NOT NULL DEFAULT now())
-- name: dead_create
CREATE INDEX IF NOT EXISTS dead_letters_consumer ON sqlnotify.dead_letters (consumer, id)
-- name: dead_insert
-- (consumer, channel, seq, payload, error, attempts) -> id
INSERT INTO sqlnotify.dead_letters (consumer, channel, seq, payload, error, attempts)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
-- name: dead_again
-- (error, attempts, id)
UPDATE sqlnotify.dead_letters SET error = $1, attempts = attempts + $2, failed_at = now() WHERE id = $3
-- name: dead_delete
DELETE FROM sqlnotify.dead_letters WHERE id = $1
-- name: dead_list
-- (consumer, consumer, id, id, limit): a NULL consumer or id matches every one
SELECT id, consumer, channel, seq, payload, error, attempts,
  to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS failed_at
FROM sqlnotify.dead_letters WHERE ($1::text IS NULL OR consumer = $2) AND ($3::bigint IS NULL OR id = $4)
ORDER BY id LIMIT $5
-- name: dead_exists
SELECT pg_catalog.to_regclass('sqlnotify.dead_letters') IS NOT NULL AS present
-- name: dead_counts
SELECT consumer, count(*) AS n FROM sqlnotify.dead_letters GROUP BY consumer

-- ===== backfill.lua: the rows a table had before (SPEC §8.3)
-- {holes} are filled by backfill.lua: {table} the table, quoted; {keys} its key columns as
-- r."a", r."b"; {keys_as} the same AS k1, k2; {after} the keyset bound (or a truth); {where}
-- the caller's condition (or a truth); {limit} the chunk; {payload} and {hash} what
-- h:row_sql made of one row r.

-- name: param
$%d
-- name: backfill_create
CREATE SCHEMA IF NOT EXISTS sqlnotify
-- name: backfill_create
CREATE TABLE IF NOT EXISTS sqlnotify.backfills (consumer text NOT NULL, tbl text NOT NULL, wire text NOT NULL,
  where_sql text, chunk integer NOT NULL, last_key text, rows_done bigint NOT NULL DEFAULT 0, total bigint,
  state text NOT NULL DEFAULT 'running', started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, tbl))
-- name: backfill_count
-- what the backfill reads: the count is its total, and a bad condition fails here, before anything is written
SELECT count(*) AS n FROM {table} r WHERE ({where})
-- name: backfill_start
-- (consumer, tbl, wire, where, chunk, total): a new backfill, over one that was there
INSERT INTO sqlnotify.backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (consumer, tbl) DO UPDATE SET wire = excluded.wire, where_sql = excluded.where_sql,
  chunk = excluded.chunk, total = excluded.total, last_key = NULL, rows_done = 0, state = 'running',
  started_at = now(), updated_at = now()
-- name: backfill_snapshot
-- (consumer, tbl, wire, where, chunk, total): start_at = "snapshot", once per consumer and table
INSERT INTO sqlnotify.backfills (consumer, tbl, wire, where_sql, chunk, total) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (consumer, tbl) DO NOTHING
-- name: backfill_get
-- (consumer, tbl)
SELECT wire, where_sql, chunk, last_key, rows_done, total, state,
  extract(epoch FROM now() - started_at)::float8 AS age FROM sqlnotify.backfills WHERE consumer = $1 AND tbl = $2
-- name: backfill_list
-- (consumer)
SELECT tbl, rows_done, total, state, where_sql, chunk,
  to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS started_at,
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS updated_at
FROM sqlnotify.backfills WHERE consumer = $1 ORDER BY tbl COLLATE "C"
-- name: backfill_begin
-- one chunk is one transaction
BEGIN
-- name: backfill_claim
-- (consumer, tbl): the backfill's row, locked for the chunk; none while another member reads
-- one. With it, for the session (the backfills' own connection, where a chunk read into
-- memory is read after the claim's commit): floats and bytea as the triggers send them
SELECT last_key, rows_done, state, pg_catalog.set_config('extra_float_digits', '1', false) AS f,
  pg_catalog.set_config('bytea_output', 'hex', false) AS b
FROM sqlnotify.backfills WHERE consumer = $1 AND tbl = $2 FOR UPDATE SKIP LOCKED
-- name: backfill_chunk
-- (wire, consumer, tbl, bound): a chunk in one statement (the other dialects take three:
-- backfill_lock, backfill_copy, backfill_save), so that its rows stay locked for the statement
-- and the commit only. Its rows are locked as they are read (FOR SHARE NOWAIT: a writer of
-- one waits at most one chunk; one that holds one now fails the chunk, and we never wait, so
-- never deadlock), go into the journal each in the table of its id's epoch as
-- sqlnotify.append() puts one (journal.c), numbered in key order (a volatile target is
-- computed after the sort), and where the chunk ends is saved ({key_text}: the last key as
-- text from r0's k1, k2, ..., each value tagged a string, which PostgreSQL reads back as the
-- column's type: made for that row only, as backfill_read does); the
-- reader is woken on the channel of capture.h's PG_JOURNAL_CHANNEL. {ckeys}: k1, k2, ...
WITH r0 AS MATERIALIZED (SELECT {keys_as}, {payload} AS p, {hash} AS h FROM {table} r
    WHERE {after} AND ({where}) ORDER BY {keys} LIMIT {limit} FOR SHARE OF r NOWAIT),
  c AS (SELECT pg_catalog.nextval('sqlnotify.journal_id') AS id, p, h FROM r0 ORDER BY {ckeys}),
  j0 AS (INSERT INTO sqlnotify.journal_0 (id, channel, payload, hash) SELECT id, $1, p, h FROM c
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 0),
  j1 AS (INSERT INTO sqlnotify.journal_1 (id, channel, payload, hash) SELECT id, $1, p, h FROM c
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 1),
  j2 AS (INSERT INTO sqlnotify.journal_2 (id, channel, payload, hash) SELECT id, $1, p, h FROM c
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 2),
  sv AS (UPDATE sqlnotify.backfills SET last_key = (SELECT {key_text} FROM r0 ORDER BY {ckeys_desc} LIMIT 1),
      rows_done = rows_done + (SELECT count(*) FROM r0), updated_at = pg_catalog.now()
    WHERE consumer = $2 AND tbl = $3 AND EXISTS (SELECT 1 FROM r0))
SELECT count(*) AS n, pg_catalog.pg_notify('sqlnotify:journal', '') FROM c
-- name: backfill_read
-- (wire, consumer, mark, bound): a chunk read into memory, for a member that holds every
-- share of its consumer (backfill.lua delivers it from there; docs/design.md, Backfill): its
-- rows' payloads in key order (the last with its key as text), no lock taken and nothing
-- written but a mark for each share, into the
-- journal on the read watch's channel ($3 and the share, which the trigger's payload never
-- is: it is no JSON object). The marks' ids come after this statement's snapshot was taken,
-- so a share's mark arrives after every change of that share the rows already carry. Like
-- every writer's (journal.sql, floor_of), they are taken once the statement has its xid (m's
-- filter, evaluated once before its rows): this statement takes no lock, and an id taken
-- before the xid could fall below the floor of a fetch whose snapshot came in between; that
-- mark would never come, and the chunk would wait MARK_WAIT to be read again. mk, on the
-- first row: the marks' first id (the chunk waits while the reader is still below it).
WITH r0 AS MATERIALIZED (SELECT {keys_as}, {payload} AS p FROM {table} r
    WHERE {after} AND ({where}) ORDER BY {keys} LIMIT {limit}),
  m AS MATERIALIZED (SELECT pg_catalog.nextval('sqlnotify.journal_id') AS id, s AS h,
      pg_catalog.pg_notify('sqlnotify:journal', '') AS woke FROM pg_catalog.generate_series(0, (SELECT c.nshares - 1 FROM sqlnotify.consumers c WHERE c.name = $2)) s
    WHERE pg_catalog.pg_current_xact_id() IS NOT NULL),
  j0 AS (INSERT INTO sqlnotify.journal_0 (id, channel, payload, hash) SELECT id, $1, $3::text || h::text, h FROM m
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 0),
  j1 AS (INSERT INTO sqlnotify.journal_1 (id, channel, payload, hash) SELECT id, $1, $3::text || h::text, h FROM m
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 1),
  j2 AS (INSERT INTO sqlnotify.journal_2 (id, channel, payload, hash) SELECT id, $1, $3::text || h::text, h FROM m
    WHERE (id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3 = 2)
SELECT p, CASE WHEN pg_catalog.row_number() OVER () = (SELECT pg_catalog.count(*) FROM r0) THEN {key_text} END AS kt,
  CASE WHEN pg_catalog.row_number() OVER () = 1 THEN (SELECT pg_catalog.min(id) FROM m) END AS mk
FROM (SELECT * FROM r0 ORDER BY {ckeys}) o
-- name: backfill_shares
-- (consumer): the shares its marks go to, one each, and its members whose lease runs
SELECT c.nshares, (SELECT count(*) FROM sqlnotify.members m
    WHERE m.consumer = c.name AND m.expires > pg_catalog.now()) AS members
  FROM sqlnotify.consumers c WHERE c.name = $1
-- name: backfill_save
-- (last_key, rows, consumer, tbl): a chunk done, under the claim
UPDATE sqlnotify.backfills SET last_key = $1, rows_done = rows_done + $2, updated_at = now()
WHERE consumer = $3 AND tbl = $4 AND state = 'running'
-- name: backfill_save_from
-- (last_key, rows, consumer, tbl, from): chunks read into memory, done, saved outside the
-- claim: only where the first of them began, so a backfill started again meanwhile (by
-- another process: last_key back to NULL) is not moved past rows it has not read. A row
-- back: saved; none: started again (backfill.lua reads from the table's row again).
UPDATE sqlnotify.backfills SET last_key = $1, rows_done = rows_done + $2, updated_at = now()
WHERE consumer = $3 AND tbl = $4 AND state = 'running' AND last_key IS NOT DISTINCT FROM $5
RETURNING 1 AS saved
-- name: backfill_finish
-- (state, consumer, tbl)
UPDATE sqlnotify.backfills SET state = $1, updated_at = now() WHERE consumer = $2 AND tbl = $3 AND state = 'running'
-- name: backfill_forget
-- (consumer): its consumer dropped
DELETE FROM sqlnotify.backfills WHERE consumer = $1
-- name: backfill_commit
COMMIT
-- name: backfill_rollback
ROLLBACK
