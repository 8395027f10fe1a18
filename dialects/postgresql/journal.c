/*
 * journal.c — durable mode's tables and server-side functions (schema "sqlnotify"),
 * created on first use, and the blocking calls made at the caller's request on the
 * control connection: registering a consumer, consumers(), drop_consumer().
 *
 * The journal is three tables used in turn (PgQ's rotation): a row goes to the table of
 * its id's epoch (id >> 32, table epoch % 3), ids coming from one sequence (CACHE 1: per-row
 * order), so a writer reads no state row to find the current table: maintain() moves the
 * sequence to the next epoch to switch. It TRUNCATEs a table that is not current once every
 * live consumer is past all its rows (checked under an ACCESS EXCLUSIVE lock, so no writer
 * is in the middle of it). Which table a row lands in never matters for delivery (the reader
 * reads all three by snapshot), only for how soon a table can be emptied; the tables are
 * never dropped, so a writer holding an id of the previous epoch still finds its table.
 */
#include "pg.h"

#define JOURNAL_VERSION "sqlnotify journal 10"

/* A journal row's share of a consumer with n shares: its writer's hash of table and key. */
#define SHARE_OF(j, n) "((" j ".hash & 2147483647) % " n ")"
/* the same inside a format() string */
#define SHARE_OF_FMT(j, n) "((" j ".hash & 2147483647) %% " n ")"

static const char setup_sql[] =
    "SELECT pg_catalog.pg_advisory_xact_lock(7146359124501207);\n"
    "CREATE SCHEMA IF NOT EXISTS sqlnotify;\n"
    "GRANT USAGE ON SCHEMA sqlnotify TO PUBLIC;\n"
    "CREATE SEQUENCE IF NOT EXISTS sqlnotify.journal_id;\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.journal_0 (id bigint NOT NULL DEFAULT"
    " pg_catalog.nextval('sqlnotify.journal_id'), xid pg_catalog.xid8 NOT NULL DEFAULT"
    " pg_catalog.pg_current_xact_id(), channel text NOT NULL, payload text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT pg_catalog.now());\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.journal_1 (LIKE sqlnotify.journal_0 INCLUDING DEFAULTS);\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.journal_2 (LIKE sqlnotify.journal_0 INCLUDING DEFAULTS);\n"
    /* journal 3: the writer's hash of table and key, which places a row in a share */
    "ALTER TABLE sqlnotify.journal_0 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;\n"
    "ALTER TABLE sqlnotify.journal_1 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;\n"
    "ALTER TABLE sqlnotify.journal_2 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;\n"
    /* journal 6: pages are read in id order from a bound (see floor_of), not by xid range */
    "CREATE INDEX IF NOT EXISTS journal_0_id ON sqlnotify.journal_0 (id);\n"
    "CREATE INDEX IF NOT EXISTS journal_1_id ON sqlnotify.journal_1 (id);\n"
    "CREATE INDEX IF NOT EXISTS journal_2_id ON sqlnotify.journal_2 (id);\n"
    "DROP INDEX IF EXISTS sqlnotify.journal_0_xid, sqlnotify.journal_1_xid, sqlnotify.journal_2_xid;\n"
    "CREATE OR REPLACE VIEW sqlnotify.journal AS SELECT * FROM sqlnotify.journal_0"
    " UNION ALL SELECT * FROM sqlnotify.journal_1 UNION ALL SELECT * FROM sqlnotify.journal_2;\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.state (one boolean PRIMARY KEY DEFAULT true CHECK (one),"
    " cur int NOT NULL DEFAULT 0, switched_at timestamptz NOT NULL DEFAULT pg_catalog.now());\n"
    "INSERT INTO sqlnotify.state DEFAULT VALUES ON CONFLICT DO NOTHING;\n"
    /* journal 4: the current table is the id's epoch; one in state.cur becomes the epoch */
    "DO $m$ DECLARE e bigint; c int; BEGIN\n"
    "  SELECT s.cur INTO c FROM sqlnotify.state s;\n"
    "  SELECT q.last_value >> 32 INTO e FROM sqlnotify.journal_id q;\n"
    "  IF c IS NOT NULL AND e % 3 <> c THEN\n"
    "    PERFORM pg_catalog.setval('sqlnotify.journal_id', (e + (c - e % 3 + 3) % 3) << 32, false);\n"
    "  END IF;\n"
    "END $m$;\n"
    /* the wake-up gate: the time (ms) of the last wake-up, in a sequence (read without a
     * query, set without a row lock); unlogged where the server has them (15+) */
    "CREATE SEQUENCE IF NOT EXISTS sqlnotify.wake;\n"
    "DO $m$ BEGIN\n"
    "  IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN\n"
    "    EXECUTE 'ALTER SEQUENCE sqlnotify.wake SET UNLOGGED';\n"
    "  END IF;\n"
    "END $m$;\n"
    /* writers append in their own trigger, as themselves: they may add rows, never choose
     * the transaction id or the time a row carries, nor read, change or remove rows */
    "GRANT INSERT (id, channel, payload, hash) ON sqlnotify.journal_0, sqlnotify.journal_1,"
    " sqlnotify.journal_2 TO PUBLIC;\n"
    "GRANT USAGE ON SEQUENCE sqlnotify.journal_id TO PUBLIC;\n"
    "GRANT USAGE, UPDATE ON SEQUENCE sqlnotify.wake TO PUBLIC;\n"
    /* A consumer is a group of members sharing its shares (issue 13): each share has its own
     * cursor (PgQ's snapshot pair plus the position inside the batch) and a lease (owner,
     * expiry by the server's clock, and an epoch bumped by every claim that fences the
     * acknowledgements of a member that lost it). */
    "CREATE TABLE IF NOT EXISTS sqlnotify.consumers (name text PRIMARY KEY,"
    " last_seen timestamptz NOT NULL DEFAULT pg_catalog.now(),"
    " missed_n bigint NOT NULL DEFAULT 0, missed_lo bigint, missed_hi bigint);\n"
    "ALTER TABLE sqlnotify.consumers ADD COLUMN IF NOT EXISTS nshares int NOT NULL DEFAULT 16;\n"
    /* journal 5: each consumer's own retention (NULL: the one of the reader that maintains) */
    "ALTER TABLE sqlnotify.consumers ADD COLUMN IF NOT EXISTS retention float8;\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.shares (consumer text NOT NULL REFERENCES sqlnotify.consumers"
    " ON DELETE CASCADE, share int NOT NULL, snap_lo pg_catalog.pg_snapshot NOT NULL,"
    " snap_hi pg_catalog.pg_snapshot, pos bigint NOT NULL DEFAULT 0, owner text,"
    " epoch bigint NOT NULL DEFAULT 0, expires timestamptz,"
    " moved_at timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (consumer, share));\n"
    /* journal 6: where a cursor's rows start in id order (see floor_of) */
    "ALTER TABLE sqlnotify.shares ADD COLUMN IF NOT EXISTS lo_seq bigint,"
    " ADD COLUMN IF NOT EXISTS lo_lb bigint[], ADD COLUMN IF NOT EXISTS hi_seq bigint,"
    " ADD COLUMN IF NOT EXISTS hi_top bigint, ADD COLUMN IF NOT EXISTS lo_next pg_catalog.xid8,"
    " ADD COLUMN IF NOT EXISTS lo_rlb bigint, ADD COLUMN IF NOT EXISTS hi_next pg_catalog.xid8;\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.members (consumer text NOT NULL REFERENCES sqlnotify.consumers"
    " ON DELETE CASCADE, member text NOT NULL, pid int, expires timestamptz NOT NULL,"
    " joined timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (consumer, member));\n"
    /* from journal 2: one cursor per consumer becomes the same cursor in each of 16 shares */
    "DO $m$ BEGIN\n"
    "  IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'sqlnotify.consumers'::regclass\n"
    "             AND attname = 'snap_lo' AND NOT attisdropped) THEN\n"
    "    INSERT INTO sqlnotify.shares (consumer, share, snap_lo, snap_hi, pos)\n"
    "      SELECT c.name, s, c.snap_lo, c.snap_hi, c.pos FROM sqlnotify.consumers c,\n"
    "        pg_catalog.generate_series(0, 15) s ON CONFLICT DO NOTHING;\n"
    "    ALTER TABLE sqlnotify.consumers DROP COLUMN snap_lo, DROP COLUMN snap_hi, DROP COLUMN pos,\n"
    "      DROP COLUMN pid;\n"
    "    DROP FUNCTION IF EXISTS sqlnotify.fetch(text, bigint, text[], int);\n"
    "    DROP FUNCTION IF EXISTS sqlnotify.register(text, boolean);\n"
    "  END IF;\n"
    "END $m$;\n"


    /* Where a batch's rows start in id order. Ids come from one sequence, taken by a writer
     * after its transaction has its xid (the triggers run AFTER the write; append() takes
     * the xid first). A cursor's snapshot lo is taken between two readings of the sequence
     * (lo_seq before it) and before the reader takes an xid of its own (lo_next): a
     * transaction with an xid from lo_next on began after lo, so its ids are at or above
     * lo_seq. One running when lo was taken (in lo's xip, or at or above lo's xmax and
     * below lo_next: running, though no xid below it had finished) has ids at or above its
     * own bound: lo_lb, one per xip in order, and lo_rlb, one for that range, carried from
     * batch to batch (unknown ones 0). The rows of batch (lo, hi) are thus at or above the
     * least of lo_seq and the bounds of what hi sees committed: a long transaction still
     * running holds no page back, and a page is read from the id index from there, never
     * the whole batch sorted (hi NULL: every bound, where anything the cursor has not passed
     * starts). These helpers are plpgsql: a SQL function with a subquery is not inlined and
     * is planned again at every call. */
    "CREATE OR REPLACE FUNCTION sqlnotify.floor_of(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,\n"
    "  hi pg_catalog.pg_snapshot) RETURNS bigint\n"
    "LANGUAGE plpgsql IMMUTABLE AS $f$\n"
    "BEGIN RETURN LEAST(COALESCE(lo_seq, 0), (SELECT pg_catalog.min(COALESCE(l.b, 0)) FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b)\n"
    "      WHERE hi IS NULL OR pg_catalog.pg_visible_in_snapshot(l.x, hi)),\n"
    "    CASE WHEN lo_next IS NULL THEN 0\n"
    "      WHEN lo_next OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo) AND (hi IS NULL\n"
    "        OR pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo))\n"
    "      THEN COALESCE(lo_rlb, 0) END)\n"
    "; END\n"
    "$f$;\n"
    /* the bound of a transaction q running when hi was taken, from lo's (hi sees lo's) */
    "CREATE OR REPLACE FUNCTION sqlnotify.lb_of(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,\n"
    "  q pg_catalog.xid8) RETURNS bigint\n"
    "LANGUAGE plpgsql IMMUTABLE AS $f$\n"
    "BEGIN RETURN CASE WHEN q OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmax(lo)\n"
    "      THEN COALESCE((SELECT l.b FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b) WHERE l.x OPERATOR(pg_catalog.=) q), 0)\n"
    "    WHEN lo_next IS NULL THEN 0\n"
    "    WHEN q OPERATOR(pg_catalog.>=) lo_next THEN COALESCE(lo_seq, 0)\n"
    "    ELSE COALESCE(lo_rlb, 0) END\n"
    "; END\n"
    "$f$;\n"
    /* hi's bounds when hi becomes lo: one per xip of hi, and the least for hi's range (from
     * hi's xmax to hi_next), which is above lo's xip: lo_seq and lo's range bound at most */
    "CREATE OR REPLACE FUNCTION sqlnotify.lb_carry(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,\n"
    "  hi pg_catalog.pg_snapshot) RETURNS bigint[]\n"
    "LANGUAGE plpgsql IMMUTABLE AS $f$\n"
    "BEGIN RETURN ARRAY(SELECT sqlnotify.lb_of(lo, lo_seq, lo_lb, lo_next, lo_rlb, h.x)\n"
    "    FROM pg_catalog.pg_snapshot_xip(hi) WITH ORDINALITY h(x, o) ORDER BY h.o)\n"
    "; END\n"
    "$f$;\n"
    "CREATE OR REPLACE FUNCTION sqlnotify.rlb_carry(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,\n"
    "  hi pg_catalog.pg_snapshot, hi_next pg_catalog.xid8) RETURNS bigint\n"
    "LANGUAGE plpgsql IMMUTABLE AS $f$\n"
    "BEGIN RETURN CASE WHEN hi_next IS NULL OR hi_next OPERATOR(pg_catalog.<=) pg_catalog.pg_snapshot_xmax(hi) THEN NULL\n"
    "    WHEN lo_next IS NULL THEN 0\n"
    "    ELSE LEAST(CASE WHEN hi_next OPERATOR(pg_catalog.>) lo_next THEN COALESCE(lo_seq, 0) END,\n"
    "      CASE WHEN pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.<) lo_next THEN COALESCE(lo_rlb, 0) END) END\n"
    "; END\n"
    "$f$;\n"

    /* A member's acknowledgement: the handlers finished every event up to p_acked of the page
     * of batch p_batch (its hi snapshot) that covered p_shares, which it held with p_epochs.
     * Applied where it still holds them (expired or not: the same epoch means nobody else read
     * them) and the batch is still the same (a repeated ack changes nothing); the shares it
     * lost are returned (the member says so; their new owner reads that page again). The
     * caller has locked the rows. */
    "CREATE OR REPLACE FUNCTION sqlnotify.ack(p_name text, p_member text, p_shares int[], p_epochs bigint[],\n"
    "  p_batch text, p_acked bigint) RETURNS SETOF int\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "BEGIN\n"
    "  IF p_acked <= 0 OR COALESCE(cardinality(p_shares), 0) = 0 THEN RETURN; END IF;\n"
    "  UPDATE sqlnotify.shares s SET pos = p_acked FROM unnest(p_shares, p_epochs) x(sh, ep)\n"
    "    WHERE s.consumer = p_name AND s.share = x.sh AND s.owner = p_member AND s.epoch = x.ep\n"
    "      AND s.snap_hi::text = p_batch AND s.pos < p_acked;\n"
    "  RETURN QUERY SELECT x.sh FROM unnest(p_shares, p_epochs) x(sh, ep) WHERE NOT EXISTS (\n"
    "    SELECT 1 FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.share = x.sh\n"
    "      AND s.owner = p_member AND s.epoch = x.ep);\n"
    "END $f$;\n"

    /* A member's lease step, every third of the lease: renew what it holds, then balance.
     * With L live members each should hold ceil(n / L) shares at most: a member over that
     * releases its highest ones, one under it claims free ones, or ones whose lease expired
     * or whose owner's session is gone (kill -9 closes it at once). A claim bumps the epoch.
     * Returns the member's shares: (share, epoch, NULL) kept, (share, epoch, why) claimed,
     * (share, NULL, 'released'), (share, NULL, 'refused') for an ack it could not apply.
     * journal 9: p_keep, the shares whose events a held member's handlers still have in
     * flight, are never released to balance (another member would deliver them again, side by
     * side with the handlers still running them); the member stays over its fair count until
     * it is released. */
    "CREATE OR REPLACE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease float8, p_nshares int,\n"
    "  p_shares int[],\n"
    "  p_epochs bigint[], p_batch text, p_acked bigint, p_keep int[])\n"
    "RETURNS TABLE (share int, epoch bigint, note text)\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE n int; live int; fair int; held int; d interval := make_interval(secs => p_lease);\n"
    "BEGIN\n"
    "  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;\n"
    "  IF NOT FOUND THEN\n" /* dropped under its members: it starts again, at the end */
    "    PERFORM sqlnotify.register(p_name, false, p_nshares);\n"
    "    SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;\n"
    "    RETURN QUERY SELECT -1, NULL::bigint, 'registered'::text;\n"
    "  END IF;\n"
    "  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;\n"
    "  INSERT INTO sqlnotify.members AS m (consumer, member, pid, expires)\n"
    "    VALUES (p_name, p_member, pg_backend_pid(), now() + d)\n"
    "    ON CONFLICT (consumer, member) DO UPDATE SET pid = EXCLUDED.pid, expires = EXCLUDED.expires;\n"
    "  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member <> p_member\n"
    "    AND (m.expires < now() - d OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid));\n"
    "  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name ORDER BY s.share FOR UPDATE;\n"
    "  RETURN QUERY SELECT rf, NULL::bigint, 'refused'::text FROM sqlnotify.ack(p_name, p_member, p_shares,\n"
    "    p_epochs, p_batch, p_acked) rf;\n"
    "  UPDATE sqlnotify.shares s SET expires = now() + d WHERE s.consumer = p_name AND s.owner = p_member;\n"
    "  SELECT count(*) INTO live FROM sqlnotify.members m WHERE m.consumer = p_name AND m.expires > now();\n"
    "  SELECT count(*) INTO held FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.owner = p_member;\n"
    "  fair := (n + live - 1) / GREATEST(live, 1);\n"
    "  IF held > fair THEN\n"
    "    RETURN QUERY UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL\n"
    "      WHERE s.consumer = p_name AND s.share IN (SELECT s2.share FROM sqlnotify.shares s2\n"
    "        WHERE s2.consumer = p_name AND s2.owner = p_member\n"
    "          AND NOT s2.share = ANY (COALESCE(p_keep, '{}'::int[])) ORDER BY s2.share DESC LIMIT held - fair)\n"
    "      RETURNING s.share, NULL::bigint, 'released'::text;\n"
    "  END IF;\n"
    "  RETURN QUERY SELECT s.share, s.epoch, NULL::text FROM sqlnotify.shares s\n"
    "    WHERE s.consumer = p_name AND s.owner = p_member;\n"
    "  IF held < fair THEN\n"
    "    RETURN QUERY WITH cand AS (\n"
    "      SELECT s.share, s.owner AS was,\n"
    "        CASE WHEN s.owner IS NULL THEN 'free'\n"
    "             WHEN s.expires < now() THEN 'its lease expired (member ' || s.owner || ')'\n"
    "             ELSE 'its member ' || s.owner || ' is gone' END AS why\n"
    "      FROM sqlnotify.shares s LEFT JOIN sqlnotify.members m ON m.consumer = s.consumer AND m.member = s.owner\n"
    "      WHERE s.consumer = p_name AND s.owner IS DISTINCT FROM p_member\n"
    "        AND (s.owner IS NULL OR s.expires < now() OR m.member IS NULL\n"
    "        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid))\n"
    "      ORDER BY s.owner IS NOT NULL, s.share LIMIT fair - held)\n"
    "    UPDATE sqlnotify.shares s SET owner = p_member, epoch = s.epoch + 1, expires = now() + d\n"
    "      FROM cand WHERE s.consumer = p_name AND s.share = cand.share\n"
    "      RETURNING s.share, s.epoch, cand.why;\n"
    "  END IF;\n"
    "END $f$;\n"
    /* the call of journal 8's readers, and of a member with nothing in flight (a role granted
     * only the functions of journal 8 calls this one) */
    "CREATE OR REPLACE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease float8, p_nshares int,\n"
    "  p_shares int[], p_epochs bigint[], p_batch text, p_acked bigint)\n"
    "RETURNS TABLE (share int, epoch bigint, note text)\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT * FROM sqlnotify.lease(p_name, p_member, p_lease, p_nshares, p_shares, p_epochs, p_batch, p_acked,\n"
    "    '{}'::int[])\n"
    "$f$;\n"

    /* journal 8: the id sequence's guards. The bounds above hold only while ids come out of the
     * sequence in the order writers take them: CACHE 1, never moved back. A session caching 50
     * ids moves last_value to its chunk's end and uses the ids below it in its later
     * transactions, under the floor of a cursor that read that value (194 of 203 rows of one
     * such writer were skipped); a RESTART or a restore puts it below every cursor's position.
     * fetch() and register() take no bound from a sequence with another cache (rows are read
     * from id 0 until sequence_check() sets CACHE 1 back); a sequence below a cursor's
     * position is moved on past it and past every journal id, and every cursor forgets its
     * bounds, so the rows written since are read, wherever their ids are. Looked at again
     * under maintain()'s locks, the state row then every consumer (no fetch, lease or
     * maintain() runs meanwhile). Returns what it found ("<value> <position> <moved to>
     * <consumer>"), or NULL. */
    "CREATE OR REPLACE FUNCTION sqlnotify.sequence_moved() RETURNS text\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE lv bigint; hw bigint; who text; nv bigint;\n"
    "BEGIN\n"
    "  FOR r IN 1..2 LOOP\n"
    "    IF r = 2 THEN\n"
    "      PERFORM 1 FROM sqlnotify.state FOR UPDATE;\n"
    "      PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;\n"
    "    END IF;\n"
    "    SELECT q.last_value INTO lv FROM sqlnotify.journal_id q;\n"
    "    SELECT GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos), s.consumer INTO hw, who FROM sqlnotify.shares s\n"
    "      ORDER BY GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos) DESC NULLS LAST LIMIT 1;\n"
    "    IF hw IS NULL OR lv >= hw THEN RETURN NULL; END IF;\n" /* or put right meanwhile */
    "  END LOOP;\n"
    "  nv := GREATEST(hw, (SELECT max(j.id) FROM sqlnotify.journal j)) + 1;\n"
    "  UPDATE sqlnotify.shares s SET lo_seq = NULL, lo_lb = NULL, lo_next = NULL, lo_rlb = NULL, hi_seq = NULL,\n"
    "    hi_top = NULL, hi_next = NULL;\n"
    "  PERFORM setval('sqlnotify.journal_id', nv, false);\n"
    "  RETURN lv || ' ' || hw || ' ' || nv || ' ' || to_json(who)::text;\n"
    "END $f$;\n"
    /* each maintenance pass first: CACHE 1 put back (waiting 100 ms at most for the writers
     * holding the sequence: the next pass tries again), and a sequence moved back moved on.
     * Open to PUBLIC, as it only ever repairs (and locks nothing while all is well): a reader
     * that may not maintain is told so about maintain() */
    "CREATE OR REPLACE FUNCTION sqlnotify.sequence_check(OUT cache_was bigint, OUT moved text)\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE lt text := current_setting('lock_timeout');\n"
    "BEGIN\n"
    "  SELECT q.seqcache INTO cache_was FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass;\n"
    "  IF cache_was = 1 THEN\n"
    "    cache_was := NULL;\n"
    "  ELSE\n"
    "    BEGIN\n"
    "      PERFORM set_config('lock_timeout', '100ms', true);\n"
    "      ALTER SEQUENCE sqlnotify.journal_id CACHE 1;\n"
    "      PERFORM set_config('lock_timeout', lt, true);\n"
    "    EXCEPTION WHEN lock_not_available THEN cache_was := NULL;\n"
    "    END;\n"
    "  END IF;\n"
    "  moved := sqlnotify.sequence_moved();\n"
    "END $f$;\n"

    /* The next page for a member (PgQ's method, per share): its shares' cursors are grouped
     * by batch (shares that move together stay together); the first group with rows gives
     * the page: the transactions visible in hi but not in lo, of those shares, in id order,
     * after pos. The shares
     * whose ack was refused as (share, NULL, 'R', NULL). The page's group comes as
     * (share, NULL, 'G', hi), hi naming the batch for the ack. Journal 10: fetch_at, each row's
     * at its created_at in seconds since the epoch (event.written_at), NULL on the other rows;
     * fetch, journal 9's call, is kept as a wrapper (its grants stay, and readers of 9 go on). The batch is saved before it is
     * delivered, so a crash redelivers only what was not acked.
     * The ack is folded into the cursor's one write (a share's acked position is its pos for
     * the grouping) and written apart only for the shares no group wrote: a page writes each
     * share row once. No share row is locked: ownership moves only in lease() and leave(),
     * which take the consumer's row FOR UPDATE (here FOR SHARE), so the rows a member writes
     * here are its own, untouched by any other transaction until it commits. */
    "CREATE OR REPLACE FUNCTION sqlnotify.fetch_at(p_name text, p_member text, p_shares int[], p_epochs bigint[],\n"
    "  p_batch text, p_acked bigint, p_chans text[], p_limit int)\n"
    "RETURNS TABLE (share int, id bigint, channel text, payload text, at float8)\n"
    /* a page is the first rows of the id index from the floor on: never the batch sorted,
     * which the planner would choose, not knowing how many rows the snapshots let through
     * (and no JIT, which the cost of a sort so discouraged would call for) */
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_sort = off SET jit = off AS $f$\n"
    "DECLARE n int; g record; lo pg_snapshot; hi pg_snapshot; p bigint; got bigint := 0;\n"
    "  lseq bigint; lb bigint[]; hseq bigint; htop bigint; fl bigint; lnext xid8; lrlb bigint; hnext xid8;\n"
    "  nlb bigint[];\n"
    /* the sequence just before and just after the snapshot: the bound of rows not yet
     * begun when cur was taken, and the top of those it sees */
    "  ck bigint := (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass);\n"
    "  sb bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);\n"
    "  cur pg_snapshot := pg_current_snapshot();\n"
    "  sa bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);\n"
    /* an xid of the reader's own after the snapshot: any above it began after */
    "  nx xid8 := pg_current_xact_id();\n"
    "  saved boolean; fresh boolean; wrote int[] := '{}'; note text;\n"
    "  acking boolean := p_acked > 0 AND COALESCE(cardinality(p_shares), 0) > 0;\n"
    "BEGIN\n"
    /* journal 8: the sequence's guards (see sequence_moved), its cache read before it: no bound
     * from a sequence that has another cache or was moved back ('C' and 'S' tell the reader) */
    "  IF sb < (SELECT max(GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos)) FROM sqlnotify.shares s\n"
    "      WHERE s.consumer = p_name) THEN\n"
    "    note := sqlnotify.sequence_moved();\n"
    "    RETURN QUERY SELECT -1, NULL::bigint, 'S'::text, note, NULL::float8 WHERE note IS NOT NULL;\n"
    "    sb := NULL; sa := NULL; nx := NULL;\n"
    "  ELSIF ck IS DISTINCT FROM 1 THEN\n"
    "    RETURN QUERY SELECT -1, NULL::bigint, 'C'::text, ck::text, NULL::float8;\n"
    "    sb := NULL; sa := NULL; nx := NULL;\n"
    "  END IF;\n"
    /* the consumer's row first, shared: a lease() (which takes it FOR UPDATE before any share)
     * and a fetch never hold share rows the other waits for (a deadlock seen under kill -9) */
    "  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR SHARE;\n"
    "  IF NOT FOUND THEN RETURN; END IF;\n"
    "  IF acking THEN\n"
    "    RETURN QUERY SELECT x.sh, NULL::bigint, 'R'::text, NULL::text, NULL::float8\n"
    "      FROM unnest(p_shares, p_epochs) x(sh, ep)\n"
    "      WHERE NOT EXISTS (SELECT 1 FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.share = x.sh\n"
    "        AND s.owner = p_member AND s.epoch = x.ep);\n"
    "  END IF;\n"
    "  FOR g IN SELECT (array_agg(s.snap_lo))[1] AS lo, (array_agg(s.snap_hi))[1] AS hi, a.pos AS p,\n"
    "      array_agg(s.share ORDER BY s.share) AS sh, min(s.moved_at) AS moved,\n"
    "      s.lo_seq AS lseq, s.lo_lb AS lb, s.hi_seq AS hseq, s.hi_top AS htop, s.lo_next AS lnext,\n"
    "      s.lo_rlb AS lrlb, s.hi_next AS hnext\n"
    "    FROM sqlnotify.shares s LEFT JOIN unnest(p_shares, p_epochs) x(sh, ep) ON acking AND x.sh = s.share\n"
    "      CROSS JOIN LATERAL (SELECT CASE WHEN x.ep = s.epoch AND s.snap_hi::text = p_batch\n"
    "        THEN GREATEST(s.pos, p_acked) ELSE s.pos END AS pos) a\n"
    "    WHERE s.consumer = p_name AND s.owner = p_member AND s.expires > now()\n"
    "    GROUP BY s.snap_lo::text, s.snap_hi::text, a.pos, s.lo_seq, s.lo_lb, s.hi_seq, s.hi_top,\n"
    "      s.lo_next, s.lo_rlb, s.hi_next\n"
    "    ORDER BY (array_agg(s.snap_hi))[1] IS NULL, min(s.share)\n"
    "  LOOP\n"
    "    lo := g.lo; hi := g.hi; p := g.p; saved := hi IS NOT NULL; fresh := false;\n"
    "    lseq := g.lseq; lb := g.lb; hseq := g.hseq; htop := g.htop; lnext := g.lnext; lrlb := g.lrlb;\n"
    "    hnext := g.hnext;\n"
    "    FOR r IN 1..2 LOOP\n"
    "      IF hi IS NULL THEN hi := cur; hseq := sb; htop := sa; hnext := nx; p := 0; fresh := true; END IF;\n"
    "      fl := GREATEST(p + 1, sqlnotify.floor_of(lo, lseq, lb, lnext, lrlb, hi));\n"
    "      RETURN QUERY SELECT " SHARE_OF("j", "n") ", j.id, j.channel, j.payload,\n"
    "          extract(epoch FROM j.created_at)::float8 FROM sqlnotify.journal j\n"
    "        WHERE j.id >= fl AND j.id <= COALESCE(htop, 9223372036854775807)\n"
    "          AND NOT pg_visible_in_snapshot(j.xid, lo) AND pg_visible_in_snapshot(j.xid, hi)\n"
    "          AND j.channel = ANY (p_chans) AND " SHARE_OF("j", "n") " = ANY (g.sh)\n"
    "        ORDER BY j.id LIMIT p_limit;\n"
    "      GET DIAGNOSTICS got = ROW_COUNT;\n"
    "      EXIT WHEN got > 0;\n"
    "      nlb := sqlnotify.lb_carry(lo, lseq, lb, lnext, lrlb, hi);\n"
    "      lrlb := sqlnotify.rlb_carry(lo, lseq, lb, lnext, lrlb, hi, hnext);\n"
    "      lb := nlb; lseq := hseq; lnext := hnext;\n"
    "      lo := hi; hi := NULL; p := 0; hseq := NULL; htop := NULL; hnext := NULL;\n"
    "      EXIT WHEN fresh;\n"
    "    END LOOP;\n"
    /* idle polls write nothing (lo may lag a little; the next batch covers it), unless the
     * journal moved on by more than a page meanwhile: a consumer whose tables are quiet
     * while others' are busy would otherwise read those rows again at every wake-up from
     * a floor up to 2 s old (journal 7; measured: a second, idle consumer took the
     * writers from 0.83x to 0.55x) */
    "    IF got > 0 OR saved OR g.moved < now() - interval '2 s'\n"
    "        OR sb - COALESCE(g.lseq, 0) > 500 THEN\n"
    "      UPDATE sqlnotify.shares s SET snap_lo = lo, snap_hi = hi, pos = p, moved_at = now(),\n"
    "        lo_seq = lseq, lo_lb = lb, hi_seq = hseq, hi_top = htop, lo_next = lnext, lo_rlb = lrlb,\n"
    "        hi_next = hnext\n"
    "        WHERE s.consumer = p_name AND s.share = ANY (g.sh);\n"
    "      wrote := wrote || g.sh;\n"
    "    END IF;\n"
    "    IF got > 0 THEN\n"
    "      RETURN QUERY SELECT x, NULL::bigint, 'G'::text, hi::text, NULL::float8 FROM unnest(g.sh) x;\n"
    "      EXIT;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    /* the acked shares no group wrote: those of later groups, or held past their lease (to the
     * ones a group wrote the ack no longer applies: their batch moved on, or their pos is past it) */
    "  IF acking AND NOT p_shares <@ wrote THEN\n"
    "    PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);\n"
    "  END IF;\n"
    "END $f$;\n"
    "CREATE OR REPLACE FUNCTION sqlnotify.fetch(p_name text, p_member text, p_shares int[], p_epochs bigint[],\n"
    "  p_batch text, p_acked bigint, p_chans text[], p_limit int)\n"
    "RETURNS TABLE (share int, id bigint, channel text, payload text)\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT f.share, f.id, f.channel, f.payload\n"
    "    FROM sqlnotify.fetch_at(p_name, p_member, p_shares, p_epochs, p_batch, p_acked, p_chans, p_limit) f\n"
    "$f$;\n"

    /* A consumer seen for the first time starts at the end (now) or the beginning, with
     * p_shares shares; one that comes back is told what maintain() removed while it was away.
     * Returns its share count (a different one asked for is refused by the caller). */
    "CREATE OR REPLACE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares int,\n"
    "  p_retention float8)\n"
    "RETURNS TABLE (missed_n bigint, missed_lo bigint, missed_hi bigint, nshares int)\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE n bigint; lo bigint; hi bigint; k int;\n"
    /* no bound from a sequence with another cache than 1 (see sequence_moved) */
    "  ck bigint := (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass);\n"
    "  sb bigint := CASE WHEN ck = 1 THEN (SELECT q.last_value FROM sqlnotify.journal_id q) END;\n"
    "  cur pg_snapshot := pg_current_snapshot();\n"
    "  nx xid8 := CASE WHEN ck = 1 THEN pg_current_xact_id() END;\n"
    "BEGIN\n"
    "  INSERT INTO sqlnotify.consumers (name, nshares)\n"
    "    VALUES (p_name, CASE WHEN p_shares > 0 THEN p_shares ELSE 16 END) ON CONFLICT DO NOTHING;\n"
    "  SELECT c.missed_n, c.missed_lo, c.missed_hi, c.nshares INTO n, lo, hi, k FROM sqlnotify.consumers c\n"
    "    WHERE c.name = p_name FOR UPDATE;\n"
    "  INSERT INTO sqlnotify.shares (consumer, share, snap_lo, lo_seq, lo_next) SELECT p_name, s,\n"
    "    CASE WHEN p_beginning THEN '1:1:'::pg_snapshot ELSE cur END, CASE WHEN p_beginning THEN 0 ELSE sb END,\n"
    "    CASE WHEN p_beginning THEN NULL ELSE nx END\n"
    "    FROM generate_series(0, k - 1) s ON CONFLICT DO NOTHING;\n"
    "  UPDATE sqlnotify.consumers c SET last_seen = now(), missed_n = 0, missed_lo = NULL, missed_hi = NULL,\n"
    "    retention = COALESCE(p_retention, c.retention)\n"
    "    WHERE c.name = p_name;\n"
    "  RETURN QUERY SELECT n, lo, hi, k;\n"
    "END $f$;\n"
    /* the call of journal 4's readers: the retention stays as it was */
    "CREATE OR REPLACE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares int)\n"
    "RETURNS TABLE (missed_n bigint, missed_lo bigint, missed_hi bigint, nshares int)\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT * FROM sqlnotify.register(p_name, p_beginning, p_shares, NULL::float8)\n"
    "$f$;\n"

    /* A member that stops cleanly leaves its shares to the others at once. */
    "CREATE OR REPLACE FUNCTION sqlnotify.leave(p_name text, p_member text, p_shares int[], p_epochs bigint[],\n"
    "  p_batch text, p_acked bigint) RETURNS void\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "BEGIN\n"
    "  PERFORM 1 FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;\n"
    "  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name\n"
    "    AND (s.owner = p_member OR s.share = ANY (p_shares)) ORDER BY s.share FOR UPDATE;\n"
    "  PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);\n"
    "  UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL WHERE s.consumer = p_name AND s.owner = p_member;\n"
    "  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member = p_member;\n"
    "  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;\n"
    "END $f$;\n"

    /* Truncate what nobody holds (a consumer not seen for p_retention holds nothing: what it
     * loses is counted on its row), and switch tables every p_rotate seconds. */
    "CREATE OR REPLACE FUNCTION sqlnotify.maintain(p_retention float8, p_rotate float8) RETURNS void\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE v_cur int; e bigint; sw timestamptz; t text; busy boolean; live_lo bigint; all_lo bigint;\n"
    "BEGIN\n"
    "  SELECT s.switched_at INTO sw FROM sqlnotify.state s FOR UPDATE;\n"
    "  IF NOT FOUND THEN RETURN; END IF;\n"
    /* current: the epoch of the next id handed out */
    "  SELECT q.last_value >> 32 INTO e FROM sqlnotify.journal_id q;\n"
    "  v_cur := e % 3;\n"
    /* consumers before journal tables: lease() and leave() take their consumer's row first
     * too, fetch() shared (and a cursor only moves forward: an older one is the safe one) */
    "  PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;\n"
    /* rows below a cursor's floor are behind it: only rows from the lowest floor on can be
     * held (of the live consumers) or missed (of any), found by the id index instead of a
     * scan of the whole table */
    "  SELECT min(sqlnotify.floor_of(s.snap_lo, s.lo_seq, s.lo_lb, s.lo_next, s.lo_rlb, NULL)) FILTER (WHERE c.last_seen >= now()\n"
    "      - make_interval(secs => COALESCE(c.retention, p_retention))),\n"
    "    min(sqlnotify.floor_of(s.snap_lo, s.lo_seq, s.lo_lb, s.lo_next, s.lo_rlb, NULL))\n"
    "    INTO live_lo, all_lo FROM sqlnotify.consumers c JOIN sqlnotify.shares s ON s.consumer = c.name;\n"
    "  FOR k IN 0..2 LOOP\n"
    "    CONTINUE WHEN k = v_cur;\n"
    "    t := 'sqlnotify.journal_' || k;\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO busy;\n"
    "    CONTINUE WHEN NOT busy;\n"
    "    BEGIN\n"
    "      EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', t);\n"
    "    EXCEPTION WHEN lock_not_available THEN CONTINUE;\n"
    "    END;\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s j, sqlnotify.consumers c, sqlnotify.shares s'\n"
    "      ' WHERE c.last_seen >= now() - make_interval(secs => COALESCE(c.retention, $1)) AND s.consumer = c.name'\n"
    "      ' AND s.share = " SHARE_OF_FMT("j", "c.nshares") " AND j.id >= $2'\n"
    "      ' AND NOT pg_visible_in_snapshot(j.xid, s.snap_lo))', t)\n"
    "      INTO busy USING p_retention, live_lo;\n"
    "    CONTINUE WHEN busy;\n"
    "    EXECUTE format('UPDATE sqlnotify.consumers c SET missed_n = c.missed_n + m.n,'\n"
    "      ' missed_lo = LEAST(c.missed_lo, m.lo), missed_hi = GREATEST(c.missed_hi, m.hi)'\n"
    "      ' FROM (SELECT c2.name, count(*) AS n, min(j.id) AS lo, max(j.id) AS hi FROM %s j,'\n"
    "      ' sqlnotify.consumers c2, sqlnotify.shares s WHERE s.consumer = c2.name'\n"
    "      ' AND s.share = " SHARE_OF_FMT("j", "c2.nshares") " AND j.id >= $1'\n"
    "      ' AND NOT pg_visible_in_snapshot(j.xid, s.snap_lo) GROUP BY c2.name) m WHERE m.name = c.name', t)\n"
    "      USING all_lo;\n"
    "    EXECUTE format('TRUNCATE %s', t);\n"
    "  END LOOP;\n"
    "  IF sw < now() - make_interval(secs => p_rotate) THEN\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM sqlnotify.journal_%s)', (v_cur + 1) % 3) INTO busy;\n"
    "    IF NOT busy THEN\n"
    "      PERFORM pg_catalog.setval('sqlnotify.journal_id', (e + 1) << 32, false);\n"
    "      UPDATE sqlnotify.state SET cur = (v_cur + 1) % 3, switched_at = now();\n"
    "    END IF;\n"
    "  END IF;\n"
    "END $f$;\n"

    /* journal 8: the channels each consumer reads (its captures' and the plain ones of the
     * previous release), so that its lag counts only its own tables' rows */
    "CREATE TABLE IF NOT EXISTS sqlnotify.reads (consumer text NOT NULL REFERENCES sqlnotify.consumers"
    " ON DELETE CASCADE, channel text NOT NULL, PRIMARY KEY (consumer, channel));\n"
    /* records that p_name reads p_channel, and returns the other captures of the same declared
     * channel (p_plain) it read before (its columns changed since) that no other consumer
     * reads: their triggers may go (reads_forget once they went) */
    "DROP FUNCTION IF EXISTS sqlnotify.reads_channel(text, text);\n"
    "CREATE OR REPLACE FUNCTION sqlnotify.reads_channel(p_name text, p_channel text, p_plain text)\n"
    "RETURNS SETOF text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  INSERT INTO sqlnotify.reads (consumer, channel) SELECT p_name, p_channel\n"
    "    WHERE EXISTS (SELECT 1 FROM sqlnotify.consumers c WHERE c.name = p_name) ON CONFLICT DO NOTHING;\n"
    "  SELECT r.channel FROM sqlnotify.reads r WHERE r.consumer = p_name AND r.channel <> p_channel\n"
    "    AND length(r.channel) = length(p_plain) + 13 AND left(r.channel, length(p_plain) + 1) = p_plain || '#'\n"
    "    AND right(r.channel, 12) ~ '^[0-9a-f]{12}$'\n"
    "    AND NOT EXISTS (SELECT 1 FROM sqlnotify.reads o WHERE o.channel = r.channel AND o.consumer <> p_name)\n"
    "$f$;\n"
    "CREATE OR REPLACE FUNCTION sqlnotify.reads_has(p_name text, p_channel text) RETURNS boolean\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT EXISTS (SELECT 1 FROM sqlnotify.reads WHERE consumer = p_name AND channel = p_channel)\n"
    "$f$;\n"
    "CREATE OR REPLACE FUNCTION sqlnotify.reads_forget(p_name text, p_channel text) RETURNS void\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  DELETE FROM sqlnotify.reads WHERE consumer = p_name AND channel = p_channel\n"
    "$f$;\n"
    /* lag: rows of its channels a share's cursor has not passed (a consumer of a release that
     * recorded none: every row); members: live ones, with the shares they hold
     * ("member=0,1,2;member=3,4") */
    "DROP FUNCTION IF EXISTS sqlnotify.consumer_list();\n"
    "CREATE FUNCTION sqlnotify.consumer_list()\n"
    "RETURNS TABLE (name text, lag_events bigint, lag_seconds float8, members int, last_seen text,\n"
    "  nshares int, holders text)\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT c.name, lag.n, COALESCE(extract(epoch FROM now() - lag.oldest), 0)::float8,\n"
    "    (SELECT count(*) FROM sqlnotify.members m WHERE m.consumer = c.name AND m.expires > now()\n"
    "      AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid))::int,\n"
    "    to_char(c.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), c.nshares,\n"
    "    (SELECT string_agg(o.owner || '=' || o.list, ';' ORDER BY o.owner) FROM (SELECT s.owner,\n"
    "      string_agg(s.share::text, ',' ORDER BY s.share) AS list FROM sqlnotify.shares s\n"
    "      WHERE s.consumer = c.name AND s.owner IS NOT NULL GROUP BY s.owner) o)\n"
    "  FROM sqlnotify.consumers c CROSS JOIN LATERAL (SELECT count(*) AS n, min(j.created_at) AS oldest\n"
    "      FROM sqlnotify.journal j JOIN sqlnotify.shares s\n"
    "        ON s.consumer = c.name AND s.share = " SHARE_OF("j", "c.nshares") "\n"
    "      WHERE NOT pg_visible_in_snapshot(j.xid, s.snap_lo)\n"
    "        AND NOT (s.snap_hi IS NOT NULL AND pg_visible_in_snapshot(j.xid, s.snap_hi) AND j.id <= s.pos)\n"
    "        AND (j.channel IN (SELECT r.channel FROM sqlnotify.reads r WHERE r.consumer = c.name)\n"
    "          OR NOT EXISTS (SELECT 1 FROM sqlnotify.reads r WHERE r.consumer = c.name))) lag\n"
    "  ORDER BY c.name\n"
    "$f$;\n"
    "REVOKE ALL ON FUNCTION sqlnotify.maintain(float8, float8) FROM PUBLIC;\n"
    /* journal 5: reading is the owner's, and of the roles it grants it to (these functions
     * run as the owner: open to every role, they read every payload and moved any consumer) */
    "REVOKE ALL ON FUNCTION sqlnotify.ack(text, text, int[], bigint[], text, bigint),"
    " sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint),"
    " sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint, int[]),"
    " sqlnotify.fetch(text, text, int[], bigint[], text, bigint, text[], int),"
    " sqlnotify.fetch_at(text, text, int[], bigint[], text, bigint, text[], int),"
    " sqlnotify.register(text, boolean, int), sqlnotify.register(text, boolean, int, float8),"
    " sqlnotify.leave(text, text, int[], bigint[], text, bigint), sqlnotify.consumer_list(),"
    " sqlnotify.reads_channel(text, text, text), sqlnotify.reads_forget(text, text), sqlnotify.reads_has(text, text),"
    " sqlnotify.sequence_moved() FROM PUBLIC;\n";

/* The statements that append one row to the journal, for a plpgsql body that declares
 * sn_id bigint, sn_h int, sn_ms bigint and sn_g bigint: the row goes to the table of its id's epoch, and
 * the reader is woken unless the last wake-up is under 10 ms old, so busy writers skip
 * NOTIFY and its cluster-wide lock (a far-future gate, set by hand or by a clock stepped
 * back, is taken as due). The reader polls too: a skipped wake-up costs milliseconds, never
 * an event. channel is a SQL literal, payload and hash expressions. */
void pg_journal_append_sql(pg_sbuf *b, const char *channel, const char *payload, const char *hash)
{
    /* Every operator is pg_catalog's by name: a body runs with the writer's search_path, where
     * an operator of another schema that matches the types exactly (bigint % int) would be
     * chosen over the built-in one that needs a cast. */
    pg_sb_add(b, "  sn_id := pg_catalog.nextval('sqlnotify.journal_id');\n  sn_h := ");
    pg_sb_add(b, hash);
    pg_sb_add(b, ";\n  sn_g := (sn_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3::bigint;\n  CASE\n");
    for (int k = 1; k <= 3; k++) {
        if (k < 3)
            pg_sb_addf(b, "  WHEN sn_g OPERATOR(pg_catalog.=) %d::bigint THEN\n", k);
        else
            pg_sb_add(b, "  ELSE\n");
        pg_sb_addf(b, "    INSERT INTO sqlnotify.journal_%d (id, channel, payload, hash) VALUES (sn_id, ", k % 3);
        pg_sb_add(b, channel);
        pg_sb_add(b, ", ");
        pg_sb_add(b, payload);
        pg_sb_add(b, ", sn_h);\n");
    }
    pg_sb_add(b, "  END CASE;\n"
                 "  sn_ms := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*)"
                 " 1000::float8)::bigint;\n"
                 "  sn_g := sn_ms OPERATOR(pg_catalog.-)"
                 " COALESCE(pg_catalog.pg_sequence_last_value('sqlnotify.wake'), 0::bigint);\n"
                 "  IF sn_g OPERATOR(pg_catalog.>) 10::bigint OR sn_g OPERATOR(pg_catalog.<) '-60000'::bigint THEN\n"
                 "    PERFORM pg_catalog.setval('sqlnotify.wake', sn_ms), pg_catalog.pg_notify('" PG_JOURNAL_CHANNEL
                 "', '');\n"
                 "  END IF;\n");
}

/* The setup's tail: sqlnotify.append(), which triggers made by earlier versions call until
 * they are replaced (journal 2's, without a hash, put all their rows in share 0), then the
 * version mark. */
static void setup_tail(pg_sbuf *b)
{
    pg_sb_add(b, "CREATE OR REPLACE FUNCTION sqlnotify.append(p_channel text, p_payload text, p_hash int)"
                 " RETURNS void\n"
                 "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
                 "DECLARE sn_id bigint; sn_h int; sn_ms bigint; sn_g bigint;\n"
                 "BEGIN\n"
                 /* the xid before the id, as in a trigger (see floor_of): a caller may not
                  * have written anything yet */
                 "  PERFORM pg_catalog.pg_current_xact_id();\n");
    pg_journal_append_sql(b, "p_channel", "p_payload", "p_hash");
    pg_sb_add(b, "END $f$;\n"
                 "CREATE OR REPLACE FUNCTION sqlnotify.append(p_channel text, p_payload text) RETURNS void\n"
                 "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
                 "  SELECT sqlnotify.append(p_channel, p_payload, 0)\n"
                 "$f$;\n"
                 "DROP TABLE IF EXISTS sqlnotify.gate;\n"
                 "COMMENT ON SCHEMA sqlnotify IS '" JOURNAL_VERSION "';\n");
}

/* The setup runs when the schema's version mark is not this one's, or always (force: a part
 * of it may be gone under the mark); every statement of it is idempotent. */
static int journal_ensure(sn_conn *c, int force, char *err, size_t errlen)
{
    char state[6] = "", why[900];
    if (c->journal_ready && !force)
        return 0;
    int ok = 0;
    if (!force) {
        PGresult *res = pg_exec(c, &c->ctl,
                                "SELECT pg_catalog.obj_description(oid, 'pg_namespace') = '" JOURNAL_VERSION
                                "' FROM pg_catalog.pg_namespace WHERE nspname = 'sqlnotify'",
                                0, NULL, PG_RETRY, state, err, errlen);
        if (res == NULL)
            return -1;
        ok = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
    }
    if (!ok) {
        pg_sbuf b = {0};
        pg_sb_add(&b, "BEGIN;\n");
        pg_sb_add(&b, setup_sql);
        setup_tail(&b);
        pg_sb_add(&b, "COMMIT");
        int rc = b.fail ? -1 : pg_script(c, b.p, state, why, sizeof why);
        free(b.p);
        if (rc < 0) {
            if (strcmp(state, "42501") == 0)
                sn_seterr(err, errlen,
                          "cannot create the durable journal (schema \"sqlnotify\"): %s (run once as a role "
                          "that may: CREATE SCHEMA sqlnotify AUTHORIZATION <you>; or GRANT CREATE ON DATABASE "
                          "to this role)",
                          why);
            else
                sn_seterr(err, errlen, "cannot create the durable journal (schema \"sqlnotify\"): %s",
                          b.fail ? b.fail : why);
            return -1;
        }
    }
    c->journal_ready = 1;
    return 0;
}

int pg_journal_ensure(sn_conn *c, char *err, size_t errlen)
{
    return journal_ensure(c, 0, err, errlen);
}

int pg_journal_remake(sn_conn *c, char *err, size_t errlen)
{
    return journal_ensure(c, 1, err, errlen);
}

/* Registers the consumer (beginning, or the end, and shares apply to a new one), refuses a
 * share count other than its own, and logs, at error level, what was removed while it was
 * away. */
int pg_journal_register(sn_conn *c, int beginning, char *err, size_t errlen)
{
    char state[6] = "", shares[16];
    if (journal_ensure(c, 0, err, errlen) < 0)
        return -1;
    snprintf(shares, sizeof shares, "%d", c->shares);
    char retention[32];
    snprintf(retention, sizeof retention, "%.3f", c->consumer_retention);
    const char *vals[4] = {c->consumer, beginning ? "t" : "f", shares, retention};
    PGresult *res = pg_exec(c, &c->ctl, "SELECT * FROM sqlnotify.register($1, $2, $3, $4)", 4, vals, PG_RETRY,
                            state, err, errlen);
    if (res == NULL && strcmp(state, "42501") == 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        sn_seterr(err, errlen,
                  "this role may not read the durable journal (schema \"sqlnotify\"): %s (its owner may let it: "
                  "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA sqlnotify TO <role>)",
                  why);
    }
    if (res == NULL)
        return -1;
    int k = PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 3)) : 0;
    if (k <= 0 || (c->shares > 0 && k != c->shares)) {
        if (k > 0)
            sn_seterr(err, errlen,
                      "consumer \"%s\" has %d shares, not %d: the number changes only by draining (stop its "
                      "writers, let it catch up, n:drop_consumer(\"%s\"), then start it with shares = %d)",
                      c->consumer, k, c->shares, c->consumer, c->shares);
        else
            sn_seterr(err, errlen, "consumer \"%s\" could not be registered", c->consumer);
        PQclear(res);
        return -1;
    }
    c->nshares = k;
    if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
        sn_logf(&c->sink, SN_LOG_ERROR,
                "consumer \"%s\" was away longer than the journal kept its rows: %s events (ids %s to %s) "
                "were removed before it read them and are not delivered",
                c->consumer, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    PQclear(res);
    return 0;
}

static int no_journal(sn_conn *c, char *err, size_t errlen)
{
    char state[6] = "";
    PGresult *res = pg_exec(c, &c->ctl, "SELECT pg_catalog.to_regclass('sqlnotify.consumers') IS NULL", 0, NULL,
                            PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    int none = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return none;
}

int pg_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    char state[6] = "";
    int none = no_journal(c, err, errlen);
    if (none < 0)
        return -1;
    PGresult *res = pg_exec(c, &c->ctl,
                            none ? "SELECT NULL::text, 0, 0, 0, NULL::text, 0, NULL::text WHERE false"
                                 : "SELECT name, lag_events, lag_seconds, members, last_seen, nshares, holders"
                                   " FROM sqlnotify.consumer_list()",
                            0, NULL, PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    *out = pg_result_copy(res, 0);
    PQclear(res);
    if (*out == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* Whether this connection's consumer read the capture of channel before: 1, 0 (or unknown). */
int pg_journal_read_before(sn_conn *c, const char *channel)
{
    char err[256];
    const char *vals[2] = {c->consumer, channel};
    PGresult *res = pg_exec(c, &c->ctl, "SELECT sqlnotify.reads_has($1, $2)", 2, vals, PG_RETRY, NULL, err, sizeof err);
    int yes = res && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return yes;
}

int pg_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen)
{
    char state[6] = "";
    int none = no_journal(c, err, errlen);
    if (none != 0)
        return none < 0 ? -1 : 0;
    const char *vals[1] = {name};
    /* the captures only it read go with it (their channels carry a 12-hex tag), unless a member
     * still reads it: that one records the consumer again and reads on, through its triggers */
    PGresult *res = pg_exec(c, &c->ctl,
                            "WITH gone AS (DELETE FROM sqlnotify.consumers WHERE name = $1 RETURNING name)"
                            " SELECT (SELECT count(*) FROM gone)::text, r.channel FROM (SELECT NULL::text) one"
                            " LEFT JOIN sqlnotify.reads r ON r.consumer = $1"
                            "  AND r.channel ~ '#[0-9a-f]{12}$' AND NOT EXISTS (SELECT 1 FROM sqlnotify.reads o"
                            "  WHERE o.channel = r.channel AND o.consumer <> $1)"
                            "  AND NOT EXISTS (SELECT 1 FROM sqlnotify.members m WHERE m.consumer = $1"
                            "  AND m.expires > pg_catalog.now() AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a"
                            "  WHERE a.pid = m.pid))",
                            1, vals, PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    int n = atoi(PQgetvalue(res, 0, 0));
    for (int i = 0; i < PQntuples(res) && n > 0; i++)
        if (!PQgetisnull(res, i, 1))
            pg_capture_unused(c, PQgetvalue(res, i, 1));
    PQclear(res);
    return n > 0;
}
