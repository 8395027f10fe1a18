-- dialects/postgresql/journal.sql — durable mode's schema "sqlnotify": the journal's tables,
-- consumers, shares and server-side functions (journal.c has the design).
--
-- Run in one transaction when the schema's comment names another version than
-- JOURNAL_VERSION (journal.c), then journal.c's tail (sqlnotify.append, whose body the trigger
-- generator shares, and the version mark). Every statement is idempotent and brings any
-- earlier journal, from journal 1, to this one: the comments say which version each step
-- belongs to. A row's share of a consumer with n shares is ((hash & 2147483647) % n), the
-- writer's hash of table and key.
--
-- Embedded in the program at build time (tools/embed.sh): this file is the SQL; no C string
-- holds a copy of it.
SELECT pg_catalog.pg_advisory_xact_lock(7146359124501207);
-- not CREATE SCHEMA IF NOT EXISTS: it asks for CREATE on the database even when the schema
-- is there, made for this role by an administrator (CREATE SCHEMA sqlnotify AUTHORIZATION)
DO $m$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'sqlnotify') THEN CREATE SCHEMA sqlnotify; END IF;
END $m$;
GRANT USAGE ON SCHEMA sqlnotify TO PUBLIC;
CREATE SEQUENCE IF NOT EXISTS sqlnotify.journal_id;
CREATE TABLE IF NOT EXISTS sqlnotify.journal_0 (id bigint NOT NULL DEFAULT pg_catalog.nextval('sqlnotify.journal_id'), xid pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), channel text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT pg_catalog.now());
CREATE TABLE IF NOT EXISTS sqlnotify.journal_1 (LIKE sqlnotify.journal_0 INCLUDING DEFAULTS);
CREATE TABLE IF NOT EXISTS sqlnotify.journal_2 (LIKE sqlnotify.journal_0 INCLUDING DEFAULTS);
-- journal 3: the writer's hash of table and key, which places a row in a share
ALTER TABLE sqlnotify.journal_0 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;
ALTER TABLE sqlnotify.journal_1 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;
ALTER TABLE sqlnotify.journal_2 ADD COLUMN IF NOT EXISTS hash int NOT NULL DEFAULT 0;
-- journal 6: pages are read in id order from a bound (see floor_of), not by xid range
CREATE INDEX IF NOT EXISTS journal_0_id ON sqlnotify.journal_0 (id);
CREATE INDEX IF NOT EXISTS journal_1_id ON sqlnotify.journal_1 (id);
CREATE INDEX IF NOT EXISTS journal_2_id ON sqlnotify.journal_2 (id);
DROP INDEX IF EXISTS sqlnotify.journal_0_xid, sqlnotify.journal_1_xid, sqlnotify.journal_2_xid;
CREATE OR REPLACE VIEW sqlnotify.journal AS SELECT * FROM sqlnotify.journal_0 UNION ALL SELECT * FROM sqlnotify.journal_1 UNION ALL SELECT * FROM sqlnotify.journal_2;
CREATE TABLE IF NOT EXISTS sqlnotify.state (one boolean PRIMARY KEY DEFAULT true CHECK (one), cur int NOT NULL DEFAULT 0, switched_at timestamptz NOT NULL DEFAULT pg_catalog.now());
INSERT INTO sqlnotify.state DEFAULT VALUES ON CONFLICT DO NOTHING;
-- journal 4: the current table is the id's epoch; one in state.cur becomes the epoch
DO $m$ DECLARE e bigint; c int; BEGIN
  SELECT s.cur INTO c FROM sqlnotify.state s;
  SELECT q.last_value >> 32 INTO e FROM sqlnotify.journal_id q;
  IF c IS NOT NULL AND e % 3 <> c THEN
    PERFORM pg_catalog.setval('sqlnotify.journal_id', (e + (c - e % 3 + 3) % 3) << 32, false);
  END IF;
END $m$;
-- the wake-up gate: the time (ms) of the last wake-up, in a sequence (read without a
-- query, set without a row lock); unlogged where the server has them (15+)
CREATE SEQUENCE IF NOT EXISTS sqlnotify.wake;
DO $m$ BEGIN
  IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
    EXECUTE 'ALTER SEQUENCE sqlnotify.wake SET UNLOGGED';
  END IF;
END $m$;
-- writers append in their own trigger, as themselves: they may add rows, never choose
-- the transaction id or the time a row carries, nor read, change or remove rows
GRANT INSERT (id, channel, payload, hash) ON sqlnotify.journal_0, sqlnotify.journal_1, sqlnotify.journal_2 TO PUBLIC;
GRANT USAGE ON SEQUENCE sqlnotify.journal_id TO PUBLIC;
GRANT USAGE, UPDATE ON SEQUENCE sqlnotify.wake TO PUBLIC;
-- A consumer is a group of members sharing its shares (issue 13): each share has its own
-- cursor (PgQ's snapshot pair plus the position inside the batch) and a lease (owner,
-- expiry by the server's clock, and an epoch bumped by every claim that fences the
-- acknowledgements of a member that lost it).
CREATE TABLE IF NOT EXISTS sqlnotify.consumers (name text PRIMARY KEY, last_seen timestamptz NOT NULL DEFAULT pg_catalog.now(), missed_n bigint NOT NULL DEFAULT 0, missed_lo bigint, missed_hi bigint);
ALTER TABLE sqlnotify.consumers ADD COLUMN IF NOT EXISTS nshares int NOT NULL DEFAULT 16;
-- journal 5: each consumer's own retention (NULL: the one of the reader that maintains)
ALTER TABLE sqlnotify.consumers ADD COLUMN IF NOT EXISTS retention float8;
CREATE TABLE IF NOT EXISTS sqlnotify.shares (consumer text NOT NULL REFERENCES sqlnotify.consumers ON DELETE CASCADE, share int NOT NULL, snap_lo pg_catalog.pg_snapshot NOT NULL, snap_hi pg_catalog.pg_snapshot, pos bigint NOT NULL DEFAULT 0, owner text, epoch bigint NOT NULL DEFAULT 0, expires timestamptz, moved_at timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (consumer, share));
-- journal 6: where a cursor's rows start in id order (see floor_of)
ALTER TABLE sqlnotify.shares ADD COLUMN IF NOT EXISTS lo_seq bigint, ADD COLUMN IF NOT EXISTS lo_lb bigint[], ADD COLUMN IF NOT EXISTS hi_seq bigint, ADD COLUMN IF NOT EXISTS hi_top bigint, ADD COLUMN IF NOT EXISTS lo_next pg_catalog.xid8, ADD COLUMN IF NOT EXISTS lo_rlb bigint, ADD COLUMN IF NOT EXISTS hi_next pg_catalog.xid8;
CREATE TABLE IF NOT EXISTS sqlnotify.members (consumer text NOT NULL REFERENCES sqlnotify.consumers ON DELETE CASCADE, member text NOT NULL, pid int, expires timestamptz NOT NULL, joined timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (consumer, member));
-- from journal 2: one cursor per consumer becomes the same cursor in each of 16 shares
DO $m$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'sqlnotify.consumers'::regclass
             AND attname = 'snap_lo' AND NOT attisdropped) THEN
    INSERT INTO sqlnotify.shares (consumer, share, snap_lo, snap_hi, pos)
      SELECT c.name, s, c.snap_lo, c.snap_hi, c.pos FROM sqlnotify.consumers c,
        pg_catalog.generate_series(0, 15) s ON CONFLICT DO NOTHING;
    ALTER TABLE sqlnotify.consumers DROP COLUMN snap_lo, DROP COLUMN snap_hi, DROP COLUMN pos,
      DROP COLUMN pid;
    DROP FUNCTION IF EXISTS sqlnotify.fetch(text, bigint, text[], int);
    DROP FUNCTION IF EXISTS sqlnotify.register(text, boolean);
  END IF;
END $m$;
-- Where a batch's rows start in id order. Ids come from one sequence, taken by a writer
-- after its transaction has its xid (the triggers run AFTER the write; append() takes
-- the xid first). A cursor's snapshot lo is taken between two readings of the sequence
-- (lo_seq before it) and before the reader takes an xid of its own (lo_next): a
-- transaction with an xid from lo_next on began after lo, so its ids are at or above
-- lo_seq. One running when lo was taken (in lo's xip, or at or above lo's xmax and
-- below lo_next: running, though no xid below it had finished) has ids at or above its
-- own bound: lo_lb, one per xip in order, and lo_rlb, one for that range, carried from
-- batch to batch (unknown ones 0). The rows of batch (lo, hi) are thus at or above the
-- least of lo_seq and the bounds of what hi sees committed: a long transaction still
-- running holds no page back, and a page is read from the id index from there, never
-- the whole batch sorted (hi NULL: every bound, where anything the cursor has not passed
-- starts). These helpers are plpgsql: a SQL function with a subquery is not inlined and
-- is planned again at every call.
CREATE OR REPLACE FUNCTION sqlnotify.floor_of(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,
  hi pg_catalog.pg_snapshot) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN RETURN LEAST(COALESCE(lo_seq, 0), (SELECT pg_catalog.min(COALESCE(l.b, 0)) FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b)
      WHERE hi IS NULL OR pg_catalog.pg_visible_in_snapshot(l.x, hi)),
    CASE WHEN lo_next IS NULL THEN 0
      WHEN lo_next OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo) AND (hi IS NULL
        OR pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo))
      THEN COALESCE(lo_rlb, 0) END)
; END
$f$;
-- the bound of a transaction q running when hi was taken, from lo's (hi sees lo's)
CREATE OR REPLACE FUNCTION sqlnotify.lb_of(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,
  q pg_catalog.xid8) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN RETURN CASE WHEN q OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmax(lo)
      THEN COALESCE((SELECT l.b FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b) WHERE l.x OPERATOR(pg_catalog.=) q), 0)
    WHEN lo_next IS NULL THEN 0
    WHEN q OPERATOR(pg_catalog.>=) lo_next THEN COALESCE(lo_seq, 0)
    ELSE COALESCE(lo_rlb, 0) END
; END
$f$;
-- hi's bounds when hi becomes lo: one per xip of hi, and the least for hi's range (from
-- hi's xmax to hi_next), which is above lo's xip: lo_seq and lo's range bound at most
CREATE OR REPLACE FUNCTION sqlnotify.lb_carry(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,
  hi pg_catalog.pg_snapshot) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN RETURN ARRAY(SELECT sqlnotify.lb_of(lo, lo_seq, lo_lb, lo_next, lo_rlb, h.x)
    FROM pg_catalog.pg_snapshot_xip(hi) WITH ORDINALITY h(x, o) ORDER BY h.o)
; END
$f$;
CREATE OR REPLACE FUNCTION sqlnotify.rlb_carry(lo pg_catalog.pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next pg_catalog.xid8, lo_rlb bigint,
  hi pg_catalog.pg_snapshot, hi_next pg_catalog.xid8) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN RETURN CASE WHEN hi_next IS NULL OR hi_next OPERATOR(pg_catalog.<=) pg_catalog.pg_snapshot_xmax(hi) THEN NULL
    WHEN lo_next IS NULL THEN 0
    ELSE LEAST(CASE WHEN hi_next OPERATOR(pg_catalog.>) lo_next THEN COALESCE(lo_seq, 0) END,
      CASE WHEN pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.<) lo_next THEN COALESCE(lo_rlb, 0) END) END
; END
$f$;
-- A member's acknowledgement: the handlers finished every event up to p_acked of the page
-- of batch p_batch (its hi snapshot) that covered p_shares, which it held with p_epochs.
-- Applied where it still holds them (expired or not: the same epoch means nobody else read
-- them) and the batch is still the same (a repeated ack changes nothing); the shares it
-- lost are returned (the member says so; their new owner reads that page again). The
-- caller has locked the rows.
CREATE OR REPLACE FUNCTION sqlnotify.ack(p_name text, p_member text, p_shares int[], p_epochs bigint[],
  p_batch text, p_acked bigint) RETURNS SETOF int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF p_acked <= 0 OR COALESCE(cardinality(p_shares), 0) = 0 THEN RETURN; END IF;
  UPDATE sqlnotify.shares s SET pos = p_acked FROM unnest(p_shares, p_epochs) x(sh, ep)
    WHERE s.consumer = p_name AND s.share = x.sh AND s.owner = p_member AND s.epoch = x.ep
      AND s.snap_hi::text = p_batch AND s.pos < p_acked;
  RETURN QUERY SELECT x.sh FROM unnest(p_shares, p_epochs) x(sh, ep) WHERE NOT EXISTS (
    SELECT 1 FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.share = x.sh
      AND s.owner = p_member AND s.epoch = x.ep);
END $f$;
-- A member's lease step, every third of the lease: renew what it holds, then balance.
-- With L live members each should hold ceil(n / L) shares at most: a member over that
-- releases its highest ones, one under it claims free ones, or ones whose lease expired
-- or whose owner's session is gone (kill -9 closes it at once). A claim bumps the epoch.
-- Returns the member's shares: (share, epoch, NULL) kept, (share, epoch, why) claimed,
-- (share, NULL, 'released'), (share, NULL, 'refused') for an ack it could not apply.
-- journal 9: p_keep, the shares whose events a held member's handlers still have in
-- flight, are never released to balance (another member would deliver them again, side by
-- side with the handlers still running them); the member stays over its fair count until
-- it is released.
-- journal 12: p_channels, the channels the member reads (plain, without a capture's tag). A
-- member reads only while its channels include every other live member's: one that watches
-- fewer tables or events would pass the rest's rows in its shares, never to be delivered. Such a member holds no
-- shares (its kept ones until their events are done) and gets one row (-2, NULL, 'member <m>
-- watches "t", ...'): a rolling deploy that adds a table or an event moves the work to the new members
-- at once, one that drops one leaves it with the old ones until they stop, and two
-- scripts on different tables under one name both wait, nothing lost. NULL: a member of an
-- earlier release, told apart from none.
ALTER TABLE sqlnotify.members ADD COLUMN IF NOT EXISTS channels text[];
CREATE OR REPLACE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease float8, p_nshares int,
  p_shares int[],
  p_epochs bigint[], p_batch text, p_acked bigint, p_keep int[], p_channels text[])
RETURNS TABLE (share int, epoch bigint, note text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE n int; live int; fair int; held int; d interval := make_interval(secs => p_lease); waits text;
BEGIN
  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
  IF NOT FOUND THEN
-- dropped under its members: it starts again, at the end
    PERFORM sqlnotify.register(p_name, false, p_nshares);
    SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
    RETURN QUERY SELECT -1, NULL::bigint, 'registered'::text;
  END IF;
  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;
  INSERT INTO sqlnotify.members AS m (consumer, member, pid, expires, channels)
    VALUES (p_name, p_member, pg_backend_pid(), now() + d, p_channels)
    ON CONFLICT (consumer, member) DO UPDATE SET pid = EXCLUDED.pid, expires = EXCLUDED.expires,
      channels = EXCLUDED.channels;
  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member <> p_member
    AND (m.expires < now() - d OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid));
  SELECT 'member ' || o.member || ' watches ' || (SELECT string_agg('"' || replace(t, '"', '""') || '"', ', '
      ORDER BY t) FROM unnest(o.channels) t WHERE NOT t = ANY (p_channels)) INTO waits
    FROM sqlnotify.members o WHERE o.consumer = p_name AND o.member <> p_member AND o.expires > now()
      AND NOT o.channels <@ p_channels
    ORDER BY o.joined, o.member LIMIT 1;
  IF waits IS NOT NULL THEN
    RETURN QUERY SELECT -2, NULL::bigint, waits;
  END IF;
  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name ORDER BY s.share FOR UPDATE;
  RETURN QUERY SELECT rf, NULL::bigint, 'refused'::text FROM sqlnotify.ack(p_name, p_member, p_shares,
    p_epochs, p_batch, p_acked) rf;
  UPDATE sqlnotify.shares s SET expires = now() + d WHERE s.consumer = p_name AND s.owner = p_member;
  SELECT count(*) INTO live FROM sqlnotify.members m WHERE m.consumer = p_name AND m.expires > now()
    AND NOT EXISTS (SELECT 1 FROM sqlnotify.members o WHERE o.consumer = p_name AND o.member <> m.member
      AND o.expires > now() AND NOT o.channels <@ m.channels);
  SELECT count(*) INTO held FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.owner = p_member;
  fair := CASE WHEN waits IS NULL THEN (n + live - 1) / GREATEST(live, 1) ELSE 0 END;
  IF held > fair THEN
    RETURN QUERY UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL
      WHERE s.consumer = p_name AND s.share IN (SELECT s2.share FROM sqlnotify.shares s2
        WHERE s2.consumer = p_name AND s2.owner = p_member
          AND NOT s2.share = ANY (COALESCE(p_keep, '{}'::int[])) ORDER BY s2.share DESC LIMIT held - fair)
      RETURNING s.share, NULL::bigint, 'released'::text;
  END IF;
  RETURN QUERY SELECT s.share, s.epoch, NULL::text FROM sqlnotify.shares s
    WHERE s.consumer = p_name AND s.owner = p_member;
  IF held < fair THEN
    RETURN QUERY WITH cand AS (
      SELECT s.share, s.owner AS was,
        CASE WHEN s.owner IS NULL THEN 'free'
             WHEN s.expires < now() THEN 'its lease expired (member ' || s.owner || ')'
             ELSE 'its member ' || s.owner || ' is gone' END AS why
      FROM sqlnotify.shares s LEFT JOIN sqlnotify.members m ON m.consumer = s.consumer AND m.member = s.owner
      WHERE s.consumer = p_name AND s.owner IS DISTINCT FROM p_member
        AND (s.owner IS NULL OR s.expires < now() OR m.member IS NULL
        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid))
      ORDER BY s.owner IS NOT NULL, s.share LIMIT fair - held)
    UPDATE sqlnotify.shares s SET owner = p_member, epoch = s.epoch + 1, expires = now() + d
      FROM cand WHERE s.consumer = p_name AND s.share = cand.share
      RETURNING s.share, s.epoch, cand.why;
  END IF;
END $f$;
-- the calls of journal 9's and journal 8's readers (and of a role granted only their
-- functions): members that do not say their tables
CREATE OR REPLACE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease float8, p_nshares int,
  p_shares int[], p_epochs bigint[], p_batch text, p_acked bigint, p_keep int[])
RETURNS TABLE (share int, epoch bigint, note text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT * FROM sqlnotify.lease(p_name, p_member, p_lease, p_nshares, p_shares, p_epochs, p_batch, p_acked,
    p_keep, NULL::text[])
$f$;
CREATE OR REPLACE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease float8, p_nshares int,
  p_shares int[], p_epochs bigint[], p_batch text, p_acked bigint)
RETURNS TABLE (share int, epoch bigint, note text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT * FROM sqlnotify.lease(p_name, p_member, p_lease, p_nshares, p_shares, p_epochs, p_batch, p_acked,
    '{}'::int[], NULL::text[])
$f$;
-- journal 8: the id sequence's guards. The bounds above hold only while ids come out of the
-- sequence in the order writers take them: CACHE 1, never moved back. A session caching 50
-- ids moves last_value to its chunk's end and uses the ids below it in its later
-- transactions, under the floor of a cursor that read that value (194 of 203 rows of one
-- such writer were skipped); a RESTART or a restore puts it below every cursor's position.
-- fetch() and register() take no bound from a sequence with another cache (rows are read
-- from id 0 until sequence_check() sets CACHE 1 back); a sequence below a cursor's
-- position is moved on past it and past every journal id, and every cursor forgets its
-- bounds, so the rows written since are read, wherever their ids are. Looked at again
-- under maintain()'s locks, the state row then every consumer (no fetch, lease or
-- maintain() runs meanwhile). Returns what it found ("<value> <position> <moved to>
-- <consumer>"), or NULL.
CREATE OR REPLACE FUNCTION sqlnotify.sequence_moved() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE lv bigint; hw bigint; who text; nv bigint;
BEGIN
  FOR r IN 1..2 LOOP
    IF r = 2 THEN
      PERFORM 1 FROM sqlnotify.state FOR UPDATE;
      PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;
    END IF;
    SELECT q.last_value INTO lv FROM sqlnotify.journal_id q;
    SELECT GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos), s.consumer INTO hw, who FROM sqlnotify.shares s
      ORDER BY GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos) DESC NULLS LAST LIMIT 1;
    IF hw IS NULL OR lv >= hw THEN RETURN NULL; END IF;
-- or put right meanwhile
  END LOOP;
  nv := GREATEST(hw, (SELECT max(j.id) FROM sqlnotify.journal j)) + 1;
  UPDATE sqlnotify.shares s SET lo_seq = NULL, lo_lb = NULL, lo_next = NULL, lo_rlb = NULL, hi_seq = NULL,
    hi_top = NULL, hi_next = NULL;
  PERFORM setval('sqlnotify.journal_id', nv, false);
  RETURN lv || ' ' || hw || ' ' || nv || ' ' || to_json(who)::text;
END $f$;
-- each maintenance pass first: CACHE 1 put back (waiting 100 ms at most for the writers
-- holding the sequence: the next pass tries again), and a sequence moved back moved on.
-- Open to PUBLIC, as it only ever repairs (and locks nothing while all is well): a reader
-- that may not maintain is told so about maintain()
CREATE OR REPLACE FUNCTION sqlnotify.sequence_check(OUT cache_was bigint, OUT moved text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE lt text := current_setting('lock_timeout');
BEGIN
  SELECT q.seqcache INTO cache_was FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass;
  IF cache_was = 1 THEN
    cache_was := NULL;
  ELSE
    BEGIN
      PERFORM set_config('lock_timeout', '100ms', true);
      ALTER SEQUENCE sqlnotify.journal_id CACHE 1;
      PERFORM set_config('lock_timeout', lt, true);
    EXCEPTION WHEN lock_not_available THEN cache_was := NULL;
    END;
  END IF;
  moved := sqlnotify.sequence_moved();
END $f$;
-- The next page for a member (PgQ's method, per share): its shares' cursors are grouped
-- by batch (shares that move together stay together); the first group with rows gives
-- the page: the transactions visible in hi but not in lo, of those shares, in id order,
-- after pos. The shares
-- whose ack was refused as (share, NULL, 'R', NULL). The page's group comes as
-- (share, NULL, 'G', hi), hi naming the batch for the ack. Journal 10: fetch_at, each row's
-- at its created_at in seconds since the epoch (event.written_at), NULL on the other rows;
-- fetch, journal 9's call, is kept as a wrapper (its grants stay, and readers of 9 go on). The batch is saved before it is
-- delivered, so a crash redelivers only what was not acked.
-- The ack is folded into the cursor's one write (a share's acked position is its pos for
-- the grouping) and written apart only for the shares no group wrote: a page writes each
-- share row once. No share row is locked: ownership moves only in lease() and leave(),
-- which take the consumer's row FOR UPDATE (here FOR SHARE), so the rows a member writes
-- here are its own, untouched by any other transaction until it commits.
CREATE OR REPLACE FUNCTION sqlnotify.fetch_at(p_name text, p_member text, p_shares int[], p_epochs bigint[],
  p_batch text, p_acked bigint, p_chans text[], p_limit int)
RETURNS TABLE (share int, id bigint, channel text, payload text, at float8)
-- a page is the first rows of the id index from the floor on: never the batch sorted,
-- which the planner would choose, not knowing how many rows the snapshots let through
-- (and no JIT, which the cost of a sort so discouraged would call for)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_sort = off SET jit = off AS $f$
DECLARE n int; g record; lo pg_snapshot; hi pg_snapshot; p bigint; got bigint := 0;
  lseq bigint; lb bigint[]; hseq bigint; htop bigint; fl bigint; lnext xid8; lrlb bigint; hnext xid8;
  nlb bigint[];
-- the sequence just before and just after the snapshot: the bound of rows not yet
-- begun when cur was taken, and the top of those it sees
  ck bigint := (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass);
  sb bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);
  cur pg_snapshot := pg_current_snapshot();
  sa bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);
-- an xid of the reader's own after the snapshot: any above it began after
  nx xid8 := pg_current_xact_id();
  saved boolean; fresh boolean; wrote int[] := '{}'; note text;
  acking boolean := p_acked > 0 AND COALESCE(cardinality(p_shares), 0) > 0;
BEGIN
-- journal 8: the sequence's guards (see sequence_moved), its cache read before it: no bound
-- from a sequence that has another cache or was moved back ('C' and 'S' tell the reader)
  IF sb < (SELECT max(GREATEST(s.lo_seq, s.hi_seq, s.hi_top, s.pos)) FROM sqlnotify.shares s
      WHERE s.consumer = p_name) THEN
    note := sqlnotify.sequence_moved();
    RETURN QUERY SELECT -1, NULL::bigint, 'S'::text, note, NULL::float8 WHERE note IS NOT NULL;
    sb := NULL; sa := NULL; nx := NULL;
  ELSIF ck IS DISTINCT FROM 1 THEN
    RETURN QUERY SELECT -1, NULL::bigint, 'C'::text, ck::text, NULL::float8;
    sb := NULL; sa := NULL; nx := NULL;
  END IF;
-- the consumer's row first, shared: a lease() (which takes it FOR UPDATE before any share)
-- and a fetch never hold share rows the other waits for (a deadlock seen under kill -9)
  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR SHARE;
  IF NOT FOUND THEN RETURN; END IF;
  IF acking THEN
    RETURN QUERY SELECT x.sh, NULL::bigint, 'R'::text, NULL::text, NULL::float8
      FROM unnest(p_shares, p_epochs) x(sh, ep)
      WHERE NOT EXISTS (SELECT 1 FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.share = x.sh
        AND s.owner = p_member AND s.epoch = x.ep);
  END IF;
  FOR g IN SELECT (array_agg(s.snap_lo))[1] AS lo, (array_agg(s.snap_hi))[1] AS hi, a.pos AS p,
      array_agg(s.share ORDER BY s.share) AS sh, min(s.moved_at) AS moved,
      s.lo_seq AS lseq, s.lo_lb AS lb, s.hi_seq AS hseq, s.hi_top AS htop, s.lo_next AS lnext,
      s.lo_rlb AS lrlb, s.hi_next AS hnext
    FROM sqlnotify.shares s LEFT JOIN unnest(p_shares, p_epochs) x(sh, ep) ON acking AND x.sh = s.share
      CROSS JOIN LATERAL (SELECT CASE WHEN x.ep = s.epoch AND s.snap_hi::text = p_batch
        THEN GREATEST(s.pos, p_acked) ELSE s.pos END AS pos) a
    WHERE s.consumer = p_name AND s.owner = p_member AND s.expires > now()
    GROUP BY s.snap_lo::text, s.snap_hi::text, a.pos, s.lo_seq, s.lo_lb, s.hi_seq, s.hi_top,
      s.lo_next, s.lo_rlb, s.hi_next
    ORDER BY (array_agg(s.snap_hi))[1] IS NULL, min(s.share)
  LOOP
    lo := g.lo; hi := g.hi; p := g.p; saved := hi IS NOT NULL; fresh := false;
    lseq := g.lseq; lb := g.lb; hseq := g.hseq; htop := g.htop; lnext := g.lnext; lrlb := g.lrlb;
    hnext := g.hnext;
    FOR r IN 1..2 LOOP
      IF hi IS NULL THEN hi := cur; hseq := sb; htop := sa; hnext := nx; p := 0; fresh := true; END IF;
      fl := GREATEST(p + 1, sqlnotify.floor_of(lo, lseq, lb, lnext, lrlb, hi));
      RETURN QUERY SELECT ((j.hash & 2147483647) % n), j.id, j.channel, j.payload,
          extract(epoch FROM j.created_at)::float8 FROM sqlnotify.journal j
        WHERE j.id >= fl AND j.id <= COALESCE(htop, 9223372036854775807)
          AND NOT pg_visible_in_snapshot(j.xid, lo) AND pg_visible_in_snapshot(j.xid, hi)
          AND j.channel = ANY (p_chans) AND ((j.hash & 2147483647) % n) = ANY (g.sh)
        ORDER BY j.id LIMIT p_limit;
      GET DIAGNOSTICS got = ROW_COUNT;
      EXIT WHEN got > 0;
      nlb := sqlnotify.lb_carry(lo, lseq, lb, lnext, lrlb, hi);
      lrlb := sqlnotify.rlb_carry(lo, lseq, lb, lnext, lrlb, hi, hnext);
      lb := nlb; lseq := hseq; lnext := hnext;
      lo := hi; hi := NULL; p := 0; hseq := NULL; htop := NULL; hnext := NULL;
      EXIT WHEN fresh;
    END LOOP;
-- idle polls write nothing (lo may lag a little; the next batch covers it), unless the
-- journal moved on by more than a page meanwhile: a consumer whose tables are quiet
-- while others' are busy would otherwise read those rows again at every wake-up from
-- a floor up to 2 s old (journal 7; measured: a second, idle consumer took the
-- writers from 0.83x to 0.55x)
    IF got > 0 OR saved OR g.moved < now() - interval '2 s'
        OR sb - COALESCE(g.lseq, 0) > 500 THEN
      UPDATE sqlnotify.shares s SET snap_lo = lo, snap_hi = hi, pos = p, moved_at = now(),
        lo_seq = lseq, lo_lb = lb, hi_seq = hseq, hi_top = htop, lo_next = lnext, lo_rlb = lrlb,
        hi_next = hnext
        WHERE s.consumer = p_name AND s.share = ANY (g.sh);
      wrote := wrote || g.sh;
    END IF;
    IF got > 0 THEN
      RETURN QUERY SELECT x, NULL::bigint, 'G'::text, hi::text, NULL::float8 FROM unnest(g.sh) x;
      EXIT;
    END IF;
  END LOOP;
-- the acked shares no group wrote: those of later groups, or held past their lease (to the
-- ones a group wrote the ack no longer applies: their batch moved on, or their pos is past it)
  IF acking AND NOT p_shares <@ wrote THEN
    PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);
  END IF;
END $f$;
CREATE OR REPLACE FUNCTION sqlnotify.fetch(p_name text, p_member text, p_shares int[], p_epochs bigint[],
  p_batch text, p_acked bigint, p_chans text[], p_limit int)
RETURNS TABLE (share int, id bigint, channel text, payload text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT f.share, f.id, f.channel, f.payload
    FROM sqlnotify.fetch_at(p_name, p_member, p_shares, p_epochs, p_batch, p_acked, p_chans, p_limit) f
$f$;
-- A consumer seen for the first time starts at the end (now) or the beginning, with
-- p_shares shares; one that comes back is told what maintain() removed while it was away.
-- Returns its share count (a different one asked for is refused by the caller).
CREATE OR REPLACE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares int,
  p_retention float8)
RETURNS TABLE (missed_n bigint, missed_lo bigint, missed_hi bigint, nshares int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE n bigint; lo bigint; hi bigint; k int;
-- no bound from a sequence with another cache than 1 (see sequence_moved)
  ck bigint := (SELECT q.seqcache FROM pg_sequence q WHERE q.seqrelid = 'sqlnotify.journal_id'::regclass);
  sb bigint := CASE WHEN ck = 1 THEN (SELECT q.last_value FROM sqlnotify.journal_id q) END;
  cur pg_snapshot := pg_current_snapshot();
  nx xid8 := CASE WHEN ck = 1 THEN pg_current_xact_id() END;
BEGIN
  INSERT INTO sqlnotify.consumers (name, nshares)
    VALUES (p_name, CASE WHEN p_shares > 0 THEN p_shares ELSE 16 END) ON CONFLICT DO NOTHING;
  SELECT c.missed_n, c.missed_lo, c.missed_hi, c.nshares INTO n, lo, hi, k FROM sqlnotify.consumers c
    WHERE c.name = p_name FOR UPDATE;
  INSERT INTO sqlnotify.shares (consumer, share, snap_lo, lo_seq, lo_next) SELECT p_name, s,
    CASE WHEN p_beginning THEN '1:1:'::pg_snapshot ELSE cur END, CASE WHEN p_beginning THEN 0 ELSE sb END,
    CASE WHEN p_beginning THEN NULL ELSE nx END
    FROM generate_series(0, k - 1) s ON CONFLICT DO NOTHING;
  UPDATE sqlnotify.consumers c SET last_seen = now(), missed_n = 0, missed_lo = NULL, missed_hi = NULL,
    retention = COALESCE(p_retention, c.retention)
    WHERE c.name = p_name;
  RETURN QUERY SELECT n, lo, hi, k;
END $f$;
-- the call of journal 4's readers: the retention stays as it was
CREATE OR REPLACE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares int)
RETURNS TABLE (missed_n bigint, missed_lo bigint, missed_hi bigint, nshares int)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT * FROM sqlnotify.register(p_name, p_beginning, p_shares, NULL::float8)
$f$;
-- A member that stops cleanly leaves its shares to the others at once.
CREATE OR REPLACE FUNCTION sqlnotify.leave(p_name text, p_member text, p_shares int[], p_epochs bigint[],
  p_batch text, p_acked bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM 1 FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name
    AND (s.owner = p_member OR s.share = ANY (p_shares)) ORDER BY s.share FOR UPDATE;
  PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);
  UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL WHERE s.consumer = p_name AND s.owner = p_member;
  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member = p_member;
  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;
END $f$;
-- Truncate what nobody holds (a consumer not seen for p_retention holds nothing: what it
-- loses is counted on its row), and switch tables every p_rotate seconds.
CREATE OR REPLACE FUNCTION sqlnotify.maintain(p_retention float8, p_rotate float8) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE v_cur int; e bigint; sw timestamptz; t text; busy boolean; live_lo bigint; all_lo bigint;
BEGIN
  SELECT s.switched_at INTO sw FROM sqlnotify.state s FOR UPDATE;
  IF NOT FOUND THEN RETURN; END IF;
-- current: the epoch of the next id handed out
  SELECT q.last_value >> 32 INTO e FROM sqlnotify.journal_id q;
  v_cur := e % 3;
-- consumers before journal tables: lease() and leave() take their consumer's row first
-- too, fetch() shared (and a cursor only moves forward: an older one is the safe one)
  PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;
-- rows below a cursor's floor are behind it: only rows from the lowest floor on can be
-- held (of the live consumers) or missed (of any), found by the id index instead of a
-- scan of the whole table
  SELECT min(sqlnotify.floor_of(s.snap_lo, s.lo_seq, s.lo_lb, s.lo_next, s.lo_rlb, NULL)) FILTER (WHERE c.last_seen >= now()
      - make_interval(secs => COALESCE(c.retention, p_retention))),
    min(sqlnotify.floor_of(s.snap_lo, s.lo_seq, s.lo_lb, s.lo_next, s.lo_rlb, NULL))
    INTO live_lo, all_lo FROM sqlnotify.consumers c JOIN sqlnotify.shares s ON s.consumer = c.name;
  FOR k IN 0..2 LOOP
    CONTINUE WHEN k = v_cur;
    t := 'sqlnotify.journal_' || k;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO busy;
    CONTINUE WHEN NOT busy;
    BEGIN
      EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', t);
    EXCEPTION WHEN lock_not_available THEN CONTINUE;
    END;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s j, sqlnotify.consumers c, sqlnotify.shares s'
      ' WHERE c.last_seen >= now() - make_interval(secs => COALESCE(c.retention, $1)) AND s.consumer = c.name'
      ' AND s.share = ((j.hash & 2147483647) %% c.nshares) AND j.id >= $2'
      ' AND NOT pg_visible_in_snapshot(j.xid, s.snap_lo))', t)
      INTO busy USING p_retention, live_lo;
    CONTINUE WHEN busy;
    EXECUTE format('UPDATE sqlnotify.consumers c SET missed_n = c.missed_n + m.n,'
      ' missed_lo = LEAST(c.missed_lo, m.lo), missed_hi = GREATEST(c.missed_hi, m.hi)'
      ' FROM (SELECT c2.name, count(*) AS n, min(j.id) AS lo, max(j.id) AS hi FROM %s j,'
      ' sqlnotify.consumers c2, sqlnotify.shares s WHERE s.consumer = c2.name'
      ' AND s.share = ((j.hash & 2147483647) %% c2.nshares) AND j.id >= $1'
      ' AND NOT pg_visible_in_snapshot(j.xid, s.snap_lo) GROUP BY c2.name) m WHERE m.name = c.name', t)
      USING all_lo;
    EXECUTE format('TRUNCATE %s', t);
  END LOOP;
  IF sw < now() - make_interval(secs => p_rotate) THEN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM sqlnotify.journal_%s)', (v_cur + 1) % 3) INTO busy;
    IF NOT busy THEN
      PERFORM pg_catalog.setval('sqlnotify.journal_id', (e + 1) << 32, false);
      UPDATE sqlnotify.state SET cur = (v_cur + 1) % 3, switched_at = now();
    END IF;
  END IF;
END $f$;
-- journal 8: the channels each consumer reads (its captures' and the plain ones of the
-- previous release), so that its lag counts only its own tables' rows
CREATE TABLE IF NOT EXISTS sqlnotify.reads (consumer text NOT NULL REFERENCES sqlnotify.consumers ON DELETE CASCADE, channel text NOT NULL, PRIMARY KEY (consumer, channel));
-- records that p_name reads p_channel, and returns the other captures of the same declared
-- channel (p_plain) it read before (its columns changed since) that no other consumer
-- reads: their triggers may go (reads_forget once they went)
DROP FUNCTION IF EXISTS sqlnotify.reads_channel(text, text);
CREATE OR REPLACE FUNCTION sqlnotify.reads_channel(p_name text, p_channel text, p_plain text)
RETURNS SETOF text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  INSERT INTO sqlnotify.reads (consumer, channel) SELECT p_name, p_channel
    WHERE EXISTS (SELECT 1 FROM sqlnotify.consumers c WHERE c.name = p_name) ON CONFLICT DO NOTHING;
  SELECT r.channel FROM sqlnotify.reads r WHERE r.consumer = p_name AND r.channel <> p_channel
    AND length(r.channel) = length(p_plain) + 13 AND left(r.channel, length(p_plain) + 1) = p_plain || '#'
    AND right(r.channel, 12) ~ '^[0-9a-f]{12}$'
    AND NOT EXISTS (SELECT 1 FROM sqlnotify.reads o WHERE o.channel = r.channel AND o.consumer <> p_name)
$f$;
CREATE OR REPLACE FUNCTION sqlnotify.reads_has(p_name text, p_channel text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT EXISTS (SELECT 1 FROM sqlnotify.reads WHERE consumer = p_name AND channel = p_channel)
$f$;
CREATE OR REPLACE FUNCTION sqlnotify.reads_forget(p_name text, p_channel text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  DELETE FROM sqlnotify.reads WHERE consumer = p_name AND channel = p_channel
$f$;
-- lag: rows of its channels a share's cursor has not passed (a consumer of a release that
-- recorded none: every row); members: live ones, with the shares they hold
-- ("member=0,1,2;member=3,4")
DROP FUNCTION IF EXISTS sqlnotify.consumer_list();
CREATE FUNCTION sqlnotify.consumer_list()
RETURNS TABLE (name text, lag_events bigint, lag_seconds float8, members int, last_seen text,
  nshares int, holders text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT c.name, lag.n, COALESCE(extract(epoch FROM now() - lag.oldest), 0)::float8,
    (SELECT count(*) FROM sqlnotify.members m WHERE m.consumer = c.name AND m.expires > now()
      AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid))::int,
    to_char(c.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), c.nshares,
    (SELECT string_agg(o.owner || '=' || o.list, ';' ORDER BY o.owner) FROM (SELECT s.owner,
      string_agg(s.share::text, ',' ORDER BY s.share) AS list FROM sqlnotify.shares s
      WHERE s.consumer = c.name AND s.owner IS NOT NULL GROUP BY s.owner) o)
  FROM sqlnotify.consumers c CROSS JOIN LATERAL (SELECT count(*) AS n, min(j.created_at) AS oldest
      FROM sqlnotify.journal j JOIN sqlnotify.shares s
        ON s.consumer = c.name AND s.share = ((j.hash & 2147483647) % c.nshares)
      WHERE NOT pg_visible_in_snapshot(j.xid, s.snap_lo)
        AND NOT (s.snap_hi IS NOT NULL AND pg_visible_in_snapshot(j.xid, s.snap_hi) AND j.id <= s.pos)
        AND (j.channel IN (SELECT r.channel FROM sqlnotify.reads r WHERE r.consumer = c.name)
          OR NOT EXISTS (SELECT 1 FROM sqlnotify.reads r WHERE r.consumer = c.name))) lag
  ORDER BY c.name
$f$;
REVOKE ALL ON FUNCTION sqlnotify.maintain(float8, float8) FROM PUBLIC;
-- journal 5: reading is the owner's, and of the roles it grants it to (these functions
-- run as the owner: open to every role, they read every payload and moved any consumer)
REVOKE ALL ON FUNCTION sqlnotify.ack(text, text, int[], bigint[], text, bigint), sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint), sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint, int[]), sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint, int[], text[]), sqlnotify.fetch(text, text, int[], bigint[], text, bigint, text[], int), sqlnotify.fetch_at(text, text, int[], bigint[], text, bigint, text[], int), sqlnotify.register(text, boolean, int), sqlnotify.register(text, boolean, int, float8), sqlnotify.leave(text, text, int[], bigint[], text, bigint), sqlnotify.consumer_list(), sqlnotify.reads_channel(text, text, text), sqlnotify.reads_forget(text, text), sqlnotify.reads_has(text, text), sqlnotify.sequence_moved() FROM PUBLIC;
-- journal 11: a watched table dropped and created again, or renamed into place (a migration
-- tool's swap), gets its durable triggers back in the DDL's own transaction, so before any
-- row can be written to it: from the statements kept when they were made (triggers.c keeps
-- them, and forgets them with the trigger), while a consumer reads its channel. The event
-- trigger runs them as a superuser: made only when the journal is made by one in a schema one
-- owns, and it runs nothing unless the schema, the statements' table and the reads it looks
-- at are a superuser's (the owner of any of them could run SQL of its choice as one: a view
-- in place of reads calls its functions as the superuser) and no other role was granted
-- writing the statements; elsewhere the notifiers' check repairs, later.
-- It never fails the user's DDL: a trigger that cannot be made again is a warning.
CREATE TABLE IF NOT EXISTS sqlnotify.triggers_made (schema_name text NOT NULL, table_name text NOT NULL, tgname text NOT NULL, channel text NOT NULL, ddl text[] NOT NULL, PRIMARY KEY (schema_name, table_name, tgname));
CREATE OR REPLACE FUNCTION sqlnotify.remake_triggers() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE r record; s text; open boolean;
BEGIN
  IF NOT COALESCE((SELECT pg_catalog.bool_and(COALESCE(o.rolsuper, false)) FROM (VALUES
        ((SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'sqlnotify')),
        ((SELECT k.relowner FROM pg_catalog.pg_class k WHERE k.oid = 'sqlnotify.triggers_made'::pg_catalog.regclass)),
        ((SELECT k.relowner FROM pg_catalog.pg_class k WHERE k.oid = 'sqlnotify.reads'::pg_catalog.regclass))) v (id)
      LEFT JOIN pg_catalog.pg_roles o ON o.oid = v.id), false) THEN
    RETURN;
  END IF;
  open := EXISTS (SELECT FROM pg_catalog.pg_class k CROSS JOIN LATERAL pg_catalog.aclexplode(k.relacl) a
    LEFT JOIN pg_catalog.pg_roles o ON o.oid = a.grantee
    WHERE k.oid = 'sqlnotify.triggers_made'::pg_catalog.regclass
      AND a.privilege_type IN ('INSERT', 'UPDATE', 'TRIGGER') AND NOT COALESCE(o.rolsuper, false));
  FOR r IN SELECT DISTINCT m.schema_name, m.table_name, m.tgname, m.ddl
      FROM pg_catalog.pg_event_trigger_ddl_commands() d
      JOIN pg_catalog.pg_class c ON c.oid = d.objid AND c.relkind IN ('r', 'p')
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      JOIN sqlnotify.triggers_made m ON m.schema_name = n.nspname::text AND m.table_name = c.relname::text
      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname::text = m.tgname)
        AND EXISTS (SELECT FROM sqlnotify.reads rd WHERE rd.channel = m.channel)
  LOOP
    IF open THEN
      RAISE WARNING 'sqlnotify: trigger % on %.% not made again: a role that is not a superuser may write sqlnotify.triggers_made (REVOKE it)',
        quote_ident(r.tgname), quote_ident(r.schema_name), quote_ident(r.table_name);
      CONTINUE;
    END IF;
    BEGIN
      FOREACH s IN ARRAY r.ddl LOOP EXECUTE s; END LOOP;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'sqlnotify: trigger % on %.% not made again: %', quote_ident(r.tgname),
        quote_ident(r.schema_name), quote_ident(r.table_name), SQLERRM;
    END;
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'sqlnotify: watched tables made again not checked: %', SQLERRM;
END $f$;
DO $m$ BEGIN
  IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
     AND (SELECT r.rolsuper FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
       WHERE n.nspname = 'sqlnotify') THEN
    -- what it runs as a superuser, only a superuser writes: statements another role kept in
    -- a table of its own (or triggers it put on it) are not taken over
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_class k JOIN pg_catalog.pg_roles r ON r.oid = k.relowner
        WHERE k.oid = 'sqlnotify.triggers_made'::pg_catalog.regclass) THEN
      DROP TABLE sqlnotify.triggers_made CASCADE;
      CREATE TABLE sqlnotify.triggers_made (schema_name text NOT NULL, table_name text NOT NULL, tgname text NOT NULL, channel text NOT NULL, ddl text[] NOT NULL, PRIMARY KEY (schema_name, table_name, tgname));
    END IF;
    REVOKE ALL ON sqlnotify.triggers_made FROM PUBLIC;
    -- the event trigger runs it as its owner: another role's (made by a journal setup of
    -- that role) would be that role's to change
    ALTER FUNCTION sqlnotify.remake_triggers() OWNER TO CURRENT_USER;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'sqlnotify_remake_triggers') THEN
      CREATE EVENT TRIGGER sqlnotify_remake_triggers ON ddl_command_end
        WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
        EXECUTE FUNCTION sqlnotify.remake_triggers();
    END IF;
  END IF;
END $m$;
