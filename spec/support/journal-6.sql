-- spec/support/journal-6.sql: a PostgreSQL database as sqlnotify-lua of journal 6 left it (the
-- release before 4cfaa6d), for the upgrade spec (spec/21): `pg_dump --schema-only --no-owner`
-- of the schema "sqlnotify" and of a watched table spec_j6.items (id int key, k int) with that
-- release's plpgsql triggers of a durable watch of insert and update with extra_columns k.
-- Schema only: rows carry transaction ids, which belong to the server that wrote them; the
-- spec registers the consumer and writes its rows through these triggers.
--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: spec_j6; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA spec_j6;


--
-- Name: sqlnotify; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA sqlnotify;


--
-- Name: SCHEMA sqlnotify; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON SCHEMA sqlnotify IS 'sqlnotify journal 6';


--
-- Name: sqlnotify_items_insert_f02922bfee51(); Type: FUNCTION; Schema: spec_j6; Owner: -
--

CREATE FUNCTION spec_j6.sqlnotify_items_insert_f02922bfee51() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$DECLARE
  sn_k jsonb;
  sn_ok jsonb;
  sn_v jsonb;
  sn_p text;
  sn_id bigint;
  sn_h int;
  sn_ms bigint;
  sn_g bigint;
BEGIN
  BEGIN
    sn_k := pg_catalog.jsonb_build_object('id'::text, NEW."id");
    sn_v := pg_catalog.jsonb_build_object('id', sn_k, 'x', pg_catalog.jsonb_build_object('k'::text, NEW."k"));
    sn_p := sn_v::text;
  EXCEPTION WHEN OTHERS THEN
    sn_p := NULL;
  END;
  IF sn_p IS NULL THEN
    sn_k := NULL;
    sn_ok := NULL;
    BEGIN
      EXECUTE 'SELECT pg_catalog.jsonb_build_object(''id'', s.k, ''x'', pg_catalog.jsonb_build_object(''k''::text, ($1)."k")) OPERATOR(pg_catalog.||) CASE WHEN s.ok IS NULL THEN ''{}''::jsonb ELSE pg_catalog.jsonb_build_object(''oid'', s.ok) END, s.k, s.ok FROM (SELECT pg_catalog.jsonb_build_object(''id''::text, ($1)."id") AS k, NULL::jsonb AS ok) s' INTO sn_v, sn_k, sn_ok USING NEW;
      sn_p := sn_v::text;
    EXCEPTION WHEN OTHERS THEN
      BEGIN
        EXECUTE 'SELECT s.k, s.ok FROM (SELECT pg_catalog.jsonb_build_object(''id''::text, ($1)."id") AS k, NULL::jsonb AS ok) s' INTO sn_k, sn_ok USING NEW;
      EXCEPTION WHEN OTHERS THEN
        sn_k := NULL;
        sn_ok := NULL;
      END;
    END;
  END IF;
  IF false THEN
    sn_p := NULL;
  END IF;
  IF sn_p IS NULL THEN
    sn_p := '{"t": true}';
    IF sn_k IS NOT NULL THEN
      sn_v := pg_catalog.jsonb_build_object('id', sn_k, 't', true);
      IF sn_ok IS NOT NULL THEN
        sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);
      END IF;
      IF pg_catalog.octet_length(sn_v::text) OPERATOR(pg_catalog.<=) 7999 THEN
        sn_p := sn_v::text;
      END IF;
    END IF;
  END IF;
  sn_id := pg_catalog.nextval('sqlnotify.journal_id');
  sn_h := pg_catalog.hashtext(COALESCE(sn_k::text, sn_p)) OPERATOR(pg_catalog.#) TG_RELID::int;
  sn_g := (sn_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3::bigint;
  CASE
  WHEN sn_g OPERATOR(pg_catalog.=) 1::bigint THEN
    INSERT INTO sqlnotify.journal_1 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_insert_c0eee3f871a67102', sn_p, sn_h);
  WHEN sn_g OPERATOR(pg_catalog.=) 2::bigint THEN
    INSERT INTO sqlnotify.journal_2 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_insert_c0eee3f871a67102', sn_p, sn_h);
  ELSE
    INSERT INTO sqlnotify.journal_0 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_insert_c0eee3f871a67102', sn_p, sn_h);
  END CASE;
  sn_ms := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000::float8)::bigint;
  sn_g := sn_ms OPERATOR(pg_catalog.-) COALESCE(pg_catalog.pg_sequence_last_value('sqlnotify.wake'), 0::bigint);
  IF sn_g OPERATOR(pg_catalog.>) 10::bigint OR sn_g OPERATOR(pg_catalog.<) '-60000'::bigint THEN
    PERFORM pg_catalog.setval('sqlnotify.wake', sn_ms), pg_catalog.pg_notify('sqlnotify:journal', '');
  END IF;
  RETURN NULL;
END$_$;


--
-- Name: FUNCTION sqlnotify_items_insert_f02922bfee51(); Type: COMMENT; Schema: spec_j6; Owner: -
--

COMMENT ON FUNCTION spec_j6.sqlnotify_items_insert_f02922bfee51() IS 'sqlnotify:2 marker=ef3400091b6736f7.693f06f5a8be6bf1
installed=2026-12-06T22:36:41Z
channel=47:sqlnotify_spec_j6_items_insert_c0eee3f871a67102
columns=id | x: k';


--
-- Name: sqlnotify_items_update_c0d49abeebdb(); Type: FUNCTION; Schema: spec_j6; Owner: -
--

CREATE FUNCTION spec_j6.sqlnotify_items_update_c0d49abeebdb() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$DECLARE
  sn_k jsonb;
  sn_ok jsonb;
  sn_v jsonb;
  sn_p text;
  sn_id bigint;
  sn_h int;
  sn_ms bigint;
  sn_g bigint;
BEGIN
  BEGIN
    sn_k := pg_catalog.jsonb_build_object('id'::text, NEW."id");
    IF pg_catalog.to_jsonb(OLD."id") IS DISTINCT FROM pg_catalog.to_jsonb(NEW."id") THEN
      sn_ok := pg_catalog.jsonb_build_object('id'::text, OLD."id");
    END IF;
    sn_v := pg_catalog.jsonb_build_object('id', sn_k, 'x', pg_catalog.jsonb_build_object('k'::text, NEW."k"));
    IF sn_ok IS NOT NULL THEN
      sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);
    END IF;
    sn_p := sn_v::text;
  EXCEPTION WHEN OTHERS THEN
    sn_p := NULL;
  END;
  IF sn_p IS NULL THEN
    sn_k := NULL;
    sn_ok := NULL;
    BEGIN
      EXECUTE 'SELECT pg_catalog.jsonb_build_object(''id'', s.k, ''x'', pg_catalog.jsonb_build_object(''k''::text, ($1)."k")) OPERATOR(pg_catalog.||) CASE WHEN s.ok IS NULL THEN ''{}''::jsonb ELSE pg_catalog.jsonb_build_object(''oid'', s.ok) END, s.k, s.ok FROM (SELECT pg_catalog.jsonb_build_object(''id''::text, ($1)."id") AS k, CASE WHEN pg_catalog.to_jsonb(($2)."id") IS DISTINCT FROM pg_catalog.to_jsonb(($1)."id") THEN pg_catalog.jsonb_build_object(''id''::text, ($2)."id") END AS ok) s' INTO sn_v, sn_k, sn_ok USING NEW, OLD;
      sn_p := sn_v::text;
    EXCEPTION WHEN OTHERS THEN
      BEGIN
        EXECUTE 'SELECT s.k, s.ok FROM (SELECT pg_catalog.jsonb_build_object(''id''::text, ($1)."id") AS k, CASE WHEN pg_catalog.to_jsonb(($2)."id") IS DISTINCT FROM pg_catalog.to_jsonb(($1)."id") THEN pg_catalog.jsonb_build_object(''id''::text, ($2)."id") END AS ok) s' INTO sn_k, sn_ok USING NEW, OLD;
      EXCEPTION WHEN OTHERS THEN
        sn_k := NULL;
        sn_ok := NULL;
      END;
    END;
  END IF;
  IF false THEN
    sn_p := NULL;
  END IF;
  IF sn_p IS NULL THEN
    sn_p := '{"t": true}';
    IF sn_k IS NOT NULL THEN
      sn_v := pg_catalog.jsonb_build_object('id', sn_k, 't', true);
      IF sn_ok IS NOT NULL THEN
        sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);
      END IF;
      IF pg_catalog.octet_length(sn_v::text) OPERATOR(pg_catalog.<=) 7999 THEN
        sn_p := sn_v::text;
      END IF;
    END IF;
  END IF;
  sn_id := pg_catalog.nextval('sqlnotify.journal_id');
  sn_h := pg_catalog.hashtext(COALESCE(sn_k::text, sn_p)) OPERATOR(pg_catalog.#) TG_RELID::int;
  sn_g := (sn_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3::bigint;
  CASE
  WHEN sn_g OPERATOR(pg_catalog.=) 1::bigint THEN
    INSERT INTO sqlnotify.journal_1 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_update_f98f6bfea4dde5d2', sn_p, sn_h);
  WHEN sn_g OPERATOR(pg_catalog.=) 2::bigint THEN
    INSERT INTO sqlnotify.journal_2 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_update_f98f6bfea4dde5d2', sn_p, sn_h);
  ELSE
    INSERT INTO sqlnotify.journal_0 (id, channel, payload, hash) VALUES (sn_id, 'sqlnotify_spec_j6_items_update_f98f6bfea4dde5d2', sn_p, sn_h);
  END CASE;
  sn_ms := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000::float8)::bigint;
  sn_g := sn_ms OPERATOR(pg_catalog.-) COALESCE(pg_catalog.pg_sequence_last_value('sqlnotify.wake'), 0::bigint);
  IF sn_g OPERATOR(pg_catalog.>) 10::bigint OR sn_g OPERATOR(pg_catalog.<) '-60000'::bigint THEN
    PERFORM pg_catalog.setval('sqlnotify.wake', sn_ms), pg_catalog.pg_notify('sqlnotify:journal', '');
  END IF;
  RETURN NULL;
END$_$;


--
-- Name: FUNCTION sqlnotify_items_update_c0d49abeebdb(); Type: COMMENT; Schema: spec_j6; Owner: -
--

COMMENT ON FUNCTION spec_j6.sqlnotify_items_update_c0d49abeebdb() IS 'sqlnotify:2 marker=e5fe367d0e8b94ca.01b09244c86d8d3b
installed=2026-12-06T22:36:41Z
channel=47:sqlnotify_spec_j6_items_update_f98f6bfea4dde5d2
columns=id | x: k';


--
-- Name: ack(text, text, integer[], bigint[], text, bigint); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.ack(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) RETURNS SETOF integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  IF p_acked <= 0 OR COALESCE(cardinality(p_shares), 0) = 0 THEN RETURN; END IF;
  UPDATE sqlnotify.shares s SET pos = p_acked FROM unnest(p_shares, p_epochs) x(sh, ep)
    WHERE s.consumer = p_name AND s.share = x.sh AND s.owner = p_member AND s.epoch = x.ep
      AND s.snap_hi::text = p_batch AND s.pos < p_acked;
  RETURN QUERY SELECT x.sh FROM unnest(p_shares, p_epochs) x(sh, ep) WHERE NOT EXISTS (
    SELECT 1 FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.share = x.sh
      AND s.owner = p_member AND s.epoch = x.ep);
END $$;


--
-- Name: append(text, text); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.append(p_channel text, p_payload text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT sqlnotify.append(p_channel, p_payload, 0)
$$;


--
-- Name: append(text, text, integer); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.append(p_channel text, p_payload text, p_hash integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE sn_id bigint; sn_h int; sn_ms bigint; sn_g bigint;
BEGIN
  PERFORM pg_catalog.pg_current_xact_id();
  sn_id := pg_catalog.nextval('sqlnotify.journal_id');
  sn_h := p_hash;
  sn_g := (sn_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3::bigint;
  CASE
  WHEN sn_g OPERATOR(pg_catalog.=) 1::bigint THEN
    INSERT INTO sqlnotify.journal_1 (id, channel, payload, hash) VALUES (sn_id, p_channel, p_payload, sn_h);
  WHEN sn_g OPERATOR(pg_catalog.=) 2::bigint THEN
    INSERT INTO sqlnotify.journal_2 (id, channel, payload, hash) VALUES (sn_id, p_channel, p_payload, sn_h);
  ELSE
    INSERT INTO sqlnotify.journal_0 (id, channel, payload, hash) VALUES (sn_id, p_channel, p_payload, sn_h);
  END CASE;
  sn_ms := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000::float8)::bigint;
  sn_g := sn_ms OPERATOR(pg_catalog.-) COALESCE(pg_catalog.pg_sequence_last_value('sqlnotify.wake'), 0::bigint);
  IF sn_g OPERATOR(pg_catalog.>) 10::bigint OR sn_g OPERATOR(pg_catalog.<) '-60000'::bigint THEN
    PERFORM pg_catalog.setval('sqlnotify.wake', sn_ms), pg_catalog.pg_notify('sqlnotify:journal', '');
  END IF;
END $$;


--
-- Name: consumer_list(); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.consumer_list() RETURNS TABLE(name text, lag_events bigint, lag_seconds double precision, members integer, last_seen text, nshares integer, holders text)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
        AND NOT (s.snap_hi IS NOT NULL AND pg_visible_in_snapshot(j.xid, s.snap_hi) AND j.id <= s.pos)) lag
  ORDER BY c.name
$$;


--
-- Name: fetch(text, text, integer[], bigint[], text, bigint, text[], integer); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify."fetch"(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint, p_chans text[], p_limit integer) RETURNS TABLE(share integer, id bigint, channel text, payload text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_sort TO 'off'
    SET jit TO 'off'
    AS $$
DECLARE n int; g record; lo pg_snapshot; hi pg_snapshot; p bigint; got bigint := 0;
  lseq bigint; lb bigint[]; hseq bigint; htop bigint; fl bigint; lnext xid8; lrlb bigint; hnext xid8;
  nlb bigint[];
  sb bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);
  cur pg_snapshot := pg_current_snapshot();
  sa bigint := (SELECT q.last_value FROM sqlnotify.journal_id q);
  nx xid8 := pg_current_xact_id();
  saved boolean; fresh boolean; wrote int[] := '{}';
  acking boolean := p_acked > 0 AND COALESCE(cardinality(p_shares), 0) > 0;
BEGIN
  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR SHARE;
  IF NOT FOUND THEN RETURN; END IF;
  IF acking THEN
    RETURN QUERY SELECT x.sh, NULL::bigint, 'R'::text, NULL::text FROM unnest(p_shares, p_epochs) x(sh, ep)
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
      RETURN QUERY SELECT ((j.hash & 2147483647) % n), j.id, j.channel, j.payload FROM sqlnotify.journal j
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
    IF got > 0 OR saved OR g.moved < now() - interval '2 s' THEN
      UPDATE sqlnotify.shares s SET snap_lo = lo, snap_hi = hi, pos = p, moved_at = now(),
        lo_seq = lseq, lo_lb = lb, hi_seq = hseq, hi_top = htop, lo_next = lnext, lo_rlb = lrlb,
        hi_next = hnext
        WHERE s.consumer = p_name AND s.share = ANY (g.sh);
      wrote := wrote || g.sh;
    END IF;
    IF got > 0 THEN
      RETURN QUERY SELECT x, NULL::bigint, 'G'::text, hi::text FROM unnest(g.sh) x;
      EXIT;
    END IF;
  END LOOP;
  IF acking AND NOT p_shares <@ wrote THEN
    PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);
  END IF;
END $$;


--
-- Name: floor_of(pg_snapshot, bigint, bigint[], xid8, bigint, pg_snapshot); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.floor_of(lo pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next xid8, lo_rlb bigint, hi pg_snapshot) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN RETURN LEAST(COALESCE(lo_seq, 0), (SELECT pg_catalog.min(COALESCE(l.b, 0)) FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b)
      WHERE hi IS NULL OR pg_catalog.pg_visible_in_snapshot(l.x, hi)),
    CASE WHEN lo_next IS NULL THEN 0
      WHEN lo_next OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo) AND (hi IS NULL
        OR pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.>) pg_catalog.pg_snapshot_xmax(lo))
      THEN COALESCE(lo_rlb, 0) END)
; END
$$;


--
-- Name: lb_carry(pg_snapshot, bigint, bigint[], xid8, bigint, pg_snapshot); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.lb_carry(lo pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next xid8, lo_rlb bigint, hi pg_snapshot) RETURNS bigint[]
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN RETURN ARRAY(SELECT sqlnotify.lb_of(lo, lo_seq, lo_lb, lo_next, lo_rlb, h.x)
    FROM pg_catalog.pg_snapshot_xip(hi) WITH ORDINALITY h(x, o) ORDER BY h.o)
; END
$$;


--
-- Name: lb_of(pg_snapshot, bigint, bigint[], xid8, bigint, xid8); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.lb_of(lo pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next xid8, lo_rlb bigint, q xid8) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN RETURN CASE WHEN q OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmax(lo)
      THEN COALESCE((SELECT l.b FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo))), pg_catalog.unnest(lo_lb)) l(x, b) WHERE l.x OPERATOR(pg_catalog.=) q), 0)
    WHEN lo_next IS NULL THEN 0
    WHEN q OPERATOR(pg_catalog.>=) lo_next THEN COALESCE(lo_seq, 0)
    ELSE COALESCE(lo_rlb, 0) END
; END
$$;


--
-- Name: lease(text, text, double precision, integer, integer[], bigint[], text, bigint); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease double precision, p_nshares integer, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) RETURNS TABLE(share integer, epoch bigint, note text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE n int; live int; fair int; held int; d interval := make_interval(secs => p_lease);
BEGIN
  SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM sqlnotify.register(p_name, false, p_nshares);
    SELECT c.nshares INTO n FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
    RETURN QUERY SELECT -1, NULL::bigint, 'registered'::text;
  END IF;
  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;
  INSERT INTO sqlnotify.members AS m (consumer, member, pid, expires)
    VALUES (p_name, p_member, pg_backend_pid(), now() + d)
    ON CONFLICT (consumer, member) DO UPDATE SET pid = EXCLUDED.pid, expires = EXCLUDED.expires;
  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member <> p_member
    AND (m.expires < now() - d OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.pid));
  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name ORDER BY s.share FOR UPDATE;
  RETURN QUERY SELECT rf, NULL::bigint, 'refused'::text FROM sqlnotify.ack(p_name, p_member, p_shares,
    p_epochs, p_batch, p_acked) rf;
  UPDATE sqlnotify.shares s SET expires = now() + d WHERE s.consumer = p_name AND s.owner = p_member;
  SELECT count(*) INTO live FROM sqlnotify.members m WHERE m.consumer = p_name AND m.expires > now();
  SELECT count(*) INTO held FROM sqlnotify.shares s WHERE s.consumer = p_name AND s.owner = p_member;
  fair := (n + live - 1) / GREATEST(live, 1);
  IF held > fair THEN
    RETURN QUERY UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL
      WHERE s.consumer = p_name AND s.share IN (SELECT s2.share FROM sqlnotify.shares s2
        WHERE s2.consumer = p_name AND s2.owner = p_member ORDER BY s2.share DESC LIMIT held - fair)
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
END $$;


--
-- Name: leave(text, text, integer[], bigint[], text, bigint); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.leave(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
  PERFORM 1 FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;
  PERFORM 1 FROM sqlnotify.shares s WHERE s.consumer = p_name
    AND (s.owner = p_member OR s.share = ANY (p_shares)) ORDER BY s.share FOR UPDATE;
  PERFORM sqlnotify.ack(p_name, p_member, p_shares, p_epochs, p_batch, p_acked);
  UPDATE sqlnotify.shares s SET owner = NULL, expires = NULL WHERE s.consumer = p_name AND s.owner = p_member;
  DELETE FROM sqlnotify.members m WHERE m.consumer = p_name AND m.member = p_member;
  UPDATE sqlnotify.consumers c SET last_seen = now() WHERE c.name = p_name;
END $$;


--
-- Name: maintain(double precision, double precision); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.maintain(p_retention double precision, p_rotate double precision) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE v_cur int; e bigint; sw timestamptz; t text; busy boolean; live_lo bigint; all_lo bigint;
BEGIN
  SELECT s.switched_at INTO sw FROM sqlnotify.state s FOR UPDATE;
  IF NOT FOUND THEN RETURN; END IF;
  SELECT q.last_value >> 32 INTO e FROM sqlnotify.journal_id q;
  v_cur := e % 3;
  PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;
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
END $_$;


--
-- Name: register(text, boolean, integer); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares integer) RETURNS TABLE(missed_n bigint, missed_lo bigint, missed_hi bigint, nshares integer)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
  SELECT * FROM sqlnotify.register(p_name, p_beginning, p_shares, NULL::float8)
$$;


--
-- Name: register(text, boolean, integer, double precision); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares integer, p_retention double precision) RETURNS TABLE(missed_n bigint, missed_lo bigint, missed_hi bigint, nshares integer)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE n bigint; lo bigint; hi bigint; k int;
  sb bigint := (SELECT q.last_value FROM sqlnotify.journal_id q); cur pg_snapshot := pg_current_snapshot();
  nx xid8 := pg_current_xact_id();
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
END $$;


--
-- Name: rlb_carry(pg_snapshot, bigint, bigint[], xid8, bigint, pg_snapshot, xid8); Type: FUNCTION; Schema: sqlnotify; Owner: -
--

CREATE FUNCTION sqlnotify.rlb_carry(lo pg_snapshot, lo_seq bigint, lo_lb bigint[], lo_next xid8, lo_rlb bigint, hi pg_snapshot, hi_next xid8) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN RETURN CASE WHEN hi_next IS NULL OR hi_next OPERATOR(pg_catalog.<=) pg_catalog.pg_snapshot_xmax(hi) THEN NULL
    WHEN lo_next IS NULL THEN 0
    ELSE LEAST(CASE WHEN hi_next OPERATOR(pg_catalog.>) lo_next THEN COALESCE(lo_seq, 0) END,
      CASE WHEN pg_catalog.pg_snapshot_xmax(hi) OPERATOR(pg_catalog.<) lo_next THEN COALESCE(lo_rlb, 0) END) END
; END
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: items; Type: TABLE; Schema: spec_j6; Owner: -
--

CREATE TABLE spec_j6.items (
    id integer NOT NULL,
    k integer NOT NULL
);


--
-- Name: consumers; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.consumers (
    name text NOT NULL,
    last_seen timestamp with time zone DEFAULT now() NOT NULL,
    missed_n bigint DEFAULT 0 NOT NULL,
    missed_lo bigint,
    missed_hi bigint,
    nshares integer DEFAULT 16 NOT NULL,
    retention double precision
);


--
-- Name: journal_id; Type: SEQUENCE; Schema: sqlnotify; Owner: -
--

CREATE SEQUENCE sqlnotify.journal_id
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: journal_0; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.journal_0 (
    id bigint DEFAULT nextval('sqlnotify.journal_id'::regclass) NOT NULL,
    xid xid8 DEFAULT pg_current_xact_id() NOT NULL,
    channel text NOT NULL,
    payload text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    hash integer DEFAULT 0 NOT NULL
);


--
-- Name: journal_1; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.journal_1 (
    id bigint DEFAULT nextval('sqlnotify.journal_id'::regclass) NOT NULL,
    xid xid8 DEFAULT pg_current_xact_id() NOT NULL,
    channel text NOT NULL,
    payload text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    hash integer DEFAULT 0 NOT NULL
);


--
-- Name: journal_2; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.journal_2 (
    id bigint DEFAULT nextval('sqlnotify.journal_id'::regclass) NOT NULL,
    xid xid8 DEFAULT pg_current_xact_id() NOT NULL,
    channel text NOT NULL,
    payload text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    hash integer DEFAULT 0 NOT NULL
);


--
-- Name: journal; Type: VIEW; Schema: sqlnotify; Owner: -
--

CREATE VIEW sqlnotify.journal AS
 SELECT journal_0.id,
    journal_0.xid,
    journal_0.channel,
    journal_0.payload,
    journal_0.created_at,
    journal_0.hash
   FROM sqlnotify.journal_0
UNION ALL
 SELECT journal_1.id,
    journal_1.xid,
    journal_1.channel,
    journal_1.payload,
    journal_1.created_at,
    journal_1.hash
   FROM sqlnotify.journal_1
UNION ALL
 SELECT journal_2.id,
    journal_2.xid,
    journal_2.channel,
    journal_2.payload,
    journal_2.created_at,
    journal_2.hash
   FROM sqlnotify.journal_2;


--
-- Name: members; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.members (
    consumer text NOT NULL,
    member text NOT NULL,
    pid integer,
    expires timestamp with time zone NOT NULL,
    joined timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: shares; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.shares (
    consumer text NOT NULL,
    share integer NOT NULL,
    snap_lo pg_snapshot NOT NULL,
    snap_hi pg_snapshot,
    pos bigint DEFAULT 0 NOT NULL,
    owner text,
    epoch bigint DEFAULT 0 NOT NULL,
    expires timestamp with time zone,
    moved_at timestamp with time zone DEFAULT now() NOT NULL,
    lo_seq bigint,
    lo_lb bigint[],
    hi_seq bigint,
    hi_top bigint,
    lo_next xid8,
    lo_rlb bigint,
    hi_next xid8
);


--
-- Name: state; Type: TABLE; Schema: sqlnotify; Owner: -
--

CREATE TABLE sqlnotify.state (
    one boolean DEFAULT true NOT NULL,
    cur integer DEFAULT 0 NOT NULL,
    switched_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT state_one_check CHECK (one)
);


--
-- Name: wake; Type: SEQUENCE; Schema: sqlnotify; Owner: -
--

CREATE UNLOGGED SEQUENCE sqlnotify.wake
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: items items_pkey; Type: CONSTRAINT; Schema: spec_j6; Owner: -
--

ALTER TABLE ONLY spec_j6.items
    ADD CONSTRAINT items_pkey PRIMARY KEY (id);


--
-- Name: consumers consumers_pkey; Type: CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.consumers
    ADD CONSTRAINT consumers_pkey PRIMARY KEY (name);


--
-- Name: members members_pkey; Type: CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.members
    ADD CONSTRAINT members_pkey PRIMARY KEY (consumer, member);


--
-- Name: shares shares_pkey; Type: CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.shares
    ADD CONSTRAINT shares_pkey PRIMARY KEY (consumer, share);


--
-- Name: state state_pkey; Type: CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.state
    ADD CONSTRAINT state_pkey PRIMARY KEY (one);


--
-- Name: journal_0_id; Type: INDEX; Schema: sqlnotify; Owner: -
--

CREATE INDEX journal_0_id ON sqlnotify.journal_0 USING btree (id);


--
-- Name: journal_1_id; Type: INDEX; Schema: sqlnotify; Owner: -
--

CREATE INDEX journal_1_id ON sqlnotify.journal_1 USING btree (id);


--
-- Name: journal_2_id; Type: INDEX; Schema: sqlnotify; Owner: -
--

CREATE INDEX journal_2_id ON sqlnotify.journal_2 USING btree (id);


--
-- Name: items sqlnotify_items_insert_f02922bfee51; Type: TRIGGER; Schema: spec_j6; Owner: -
--

CREATE TRIGGER sqlnotify_items_insert_f02922bfee51 AFTER INSERT ON spec_j6.items FOR EACH ROW EXECUTE FUNCTION spec_j6.sqlnotify_items_insert_f02922bfee51();


--
-- Name: TRIGGER sqlnotify_items_insert_f02922bfee51 ON items; Type: COMMENT; Schema: spec_j6; Owner: -
--

COMMENT ON TRIGGER sqlnotify_items_insert_f02922bfee51 ON spec_j6.items IS 'sqlnotify:2 marker=ef3400091b6736f7.693f06f5a8be6bf1
installed=2026-12-06T22:36:41Z
channel=47:sqlnotify_spec_j6_items_insert_c0eee3f871a67102
columns=id | x: k';


--
-- Name: items sqlnotify_items_update_c0d49abeebdb; Type: TRIGGER; Schema: spec_j6; Owner: -
--

CREATE TRIGGER sqlnotify_items_update_c0d49abeebdb AFTER UPDATE ON spec_j6.items FOR EACH ROW EXECUTE FUNCTION spec_j6.sqlnotify_items_update_c0d49abeebdb();


--
-- Name: TRIGGER sqlnotify_items_update_c0d49abeebdb ON items; Type: COMMENT; Schema: spec_j6; Owner: -
--

COMMENT ON TRIGGER sqlnotify_items_update_c0d49abeebdb ON spec_j6.items IS 'sqlnotify:2 marker=e5fe367d0e8b94ca.01b09244c86d8d3b
installed=2026-12-06T22:36:41Z
channel=47:sqlnotify_spec_j6_items_update_f98f6bfea4dde5d2
columns=id | x: k';


--
-- Name: members members_consumer_fkey; Type: FK CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.members
    ADD CONSTRAINT members_consumer_fkey FOREIGN KEY (consumer) REFERENCES sqlnotify.consumers(name) ON DELETE CASCADE;


--
-- Name: shares shares_consumer_fkey; Type: FK CONSTRAINT; Schema: sqlnotify; Owner: -
--

ALTER TABLE ONLY sqlnotify.shares
    ADD CONSTRAINT shares_consumer_fkey FOREIGN KEY (consumer) REFERENCES sqlnotify.consumers(name) ON DELETE CASCADE;


--
-- Name: SCHEMA sqlnotify; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA sqlnotify TO PUBLIC;


--
-- Name: FUNCTION ack(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.ack(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) FROM PUBLIC;


--
-- Name: FUNCTION consumer_list(); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.consumer_list() FROM PUBLIC;


--
-- Name: FUNCTION "fetch"(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint, p_chans text[], p_limit integer); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify."fetch"(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint, p_chans text[], p_limit integer) FROM PUBLIC;


--
-- Name: FUNCTION lease(p_name text, p_member text, p_lease double precision, p_nshares integer, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.lease(p_name text, p_member text, p_lease double precision, p_nshares integer, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) FROM PUBLIC;


--
-- Name: FUNCTION leave(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.leave(p_name text, p_member text, p_shares integer[], p_epochs bigint[], p_batch text, p_acked bigint) FROM PUBLIC;


--
-- Name: FUNCTION maintain(p_retention double precision, p_rotate double precision); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.maintain(p_retention double precision, p_rotate double precision) FROM PUBLIC;


--
-- Name: FUNCTION register(p_name text, p_beginning boolean, p_shares integer); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares integer) FROM PUBLIC;


--
-- Name: FUNCTION register(p_name text, p_beginning boolean, p_shares integer, p_retention double precision); Type: ACL; Schema: sqlnotify; Owner: -
--

REVOKE ALL ON FUNCTION sqlnotify.register(p_name text, p_beginning boolean, p_shares integer, p_retention double precision) FROM PUBLIC;


--
-- Name: SEQUENCE journal_id; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT USAGE ON SEQUENCE sqlnotify.journal_id TO PUBLIC;


--
-- Name: COLUMN journal_0.id; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(id) ON TABLE sqlnotify.journal_0 TO PUBLIC;


--
-- Name: COLUMN journal_0.channel; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(channel) ON TABLE sqlnotify.journal_0 TO PUBLIC;


--
-- Name: COLUMN journal_0.payload; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(payload) ON TABLE sqlnotify.journal_0 TO PUBLIC;


--
-- Name: COLUMN journal_0.hash; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(hash) ON TABLE sqlnotify.journal_0 TO PUBLIC;


--
-- Name: COLUMN journal_1.id; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(id) ON TABLE sqlnotify.journal_1 TO PUBLIC;


--
-- Name: COLUMN journal_1.channel; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(channel) ON TABLE sqlnotify.journal_1 TO PUBLIC;


--
-- Name: COLUMN journal_1.payload; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(payload) ON TABLE sqlnotify.journal_1 TO PUBLIC;


--
-- Name: COLUMN journal_1.hash; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(hash) ON TABLE sqlnotify.journal_1 TO PUBLIC;


--
-- Name: COLUMN journal_2.id; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(id) ON TABLE sqlnotify.journal_2 TO PUBLIC;


--
-- Name: COLUMN journal_2.channel; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(channel) ON TABLE sqlnotify.journal_2 TO PUBLIC;


--
-- Name: COLUMN journal_2.payload; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(payload) ON TABLE sqlnotify.journal_2 TO PUBLIC;


--
-- Name: COLUMN journal_2.hash; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT INSERT(hash) ON TABLE sqlnotify.journal_2 TO PUBLIC;


--
-- Name: SEQUENCE wake; Type: ACL; Schema: sqlnotify; Owner: -
--

GRANT USAGE,UPDATE ON SEQUENCE sqlnotify.wake TO PUBLIC;


--
-- PostgreSQL database dump complete
--


