/*
 * journal.c — durable mode's tables and server-side functions (schema "sqlnotify"),
 * created on first use, and the blocking calls made at the caller's request on the
 * control connection: registering a consumer, consumers(), drop_consumer().
 *
 * The journal is three tables used in turn (PgQ's rotation): writers append to the
 * current one; maintain() TRUNCATEs a table that is not current once every live consumer
 * is past all its rows (checked under an ACCESS EXCLUSIVE lock, so no writer is in the
 * middle of it). The tables are never dropped: a writer that read the old "current" just
 * before a switch still finds its table. Ids come from one sequence (CACHE 1: per-row order).
 */
#include "pg.h"

#define JOURNAL_VERSION "sqlnotify journal 2"

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
    "CREATE INDEX IF NOT EXISTS journal_0_xid ON sqlnotify.journal_0 (xid);\n"
    "CREATE INDEX IF NOT EXISTS journal_1_xid ON sqlnotify.journal_1 (xid);\n"
    "CREATE INDEX IF NOT EXISTS journal_2_xid ON sqlnotify.journal_2 (xid);\n"
    "CREATE OR REPLACE VIEW sqlnotify.journal AS SELECT * FROM sqlnotify.journal_0"
    " UNION ALL SELECT * FROM sqlnotify.journal_1 UNION ALL SELECT * FROM sqlnotify.journal_2;\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.state (one boolean PRIMARY KEY DEFAULT true CHECK (one),"
    " cur int NOT NULL DEFAULT 0, switched_at timestamptz NOT NULL DEFAULT pg_catalog.now());\n"
    "INSERT INTO sqlnotify.state DEFAULT VALUES ON CONFLICT DO NOTHING;\n"
    /* the wake-up gate: unlogged (no WAL for a timestamp), re-made by maintain() after a crash */
    "CREATE UNLOGGED TABLE IF NOT EXISTS sqlnotify.gate (at timestamptz NOT NULL);\n"
    "INSERT INTO sqlnotify.gate SELECT '-infinity' WHERE NOT EXISTS (SELECT 1 FROM sqlnotify.gate);\n"
    "CREATE TABLE IF NOT EXISTS sqlnotify.consumers (name text PRIMARY KEY,"
    " snap_lo pg_catalog.pg_snapshot NOT NULL, snap_hi pg_catalog.pg_snapshot, pos bigint NOT NULL DEFAULT 0,"
    " last_seen timestamptz NOT NULL DEFAULT pg_catalog.now(), pid int,"
    " missed_n bigint NOT NULL DEFAULT 0, missed_lo bigint, missed_hi bigint);\n"

    /* Called by every durable trigger. A user's write never fails here: the three tables
     * always exist, and a missing state row means table 0. */
    "CREATE OR REPLACE FUNCTION sqlnotify.append(p_channel text, p_payload text) RETURNS void\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE c int;\n"
    "BEGIN\n"
    "  SELECT s.cur INTO c FROM sqlnotify.state s;\n"
    "  IF c = 1 THEN INSERT INTO sqlnotify.journal_1 (channel, payload) VALUES (p_channel, p_payload);\n"
    "  ELSIF c = 2 THEN INSERT INTO sqlnotify.journal_2 (channel, payload) VALUES (p_channel, p_payload);\n"
    "  ELSE INSERT INTO sqlnotify.journal_0 (channel, payload) VALUES (p_channel, p_payload);\n"
    "  END IF;\n"
    /* at most one wake-up per 10 ms; a busy writer skips the locked gate (and NOTIFY's lock) */
    "  PERFORM 1 FROM sqlnotify.gate g WHERE g.at < pg_catalog.clock_timestamp() - interval '10 ms'"
    " FOR UPDATE SKIP LOCKED;\n"
    "  IF FOUND THEN\n"
    "    UPDATE sqlnotify.gate SET at = pg_catalog.clock_timestamp();\n"
    "    PERFORM pg_catalog.pg_notify('" PG_JOURNAL_CHANNEL "', '');\n"
    "  END IF;\n"
    "END $f$;\n"

    /* The next page of a consumer's batch (PgQ's method): the transactions visible in hi but
     * not in lo, in id order, after pos. p_acked: the last id the handlers finished. The
     * batch is saved before it is delivered, so a crash redelivers only what was not acked. */
    "CREATE OR REPLACE FUNCTION sqlnotify.fetch(p_name text, p_acked bigint, p_chans text[], p_limit int)\n"
    "RETURNS TABLE (id bigint, channel text, payload text)\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE lo pg_snapshot; hi pg_snapshot; p bigint; seen timestamptz; n bigint := 0;\n"
    "  saved boolean; fresh boolean := false;\n"
    "BEGIN\n"
    "  SELECT c.snap_lo, c.snap_hi, c.pos, c.last_seen INTO lo, hi, p, seen\n"
    "    FROM sqlnotify.consumers c WHERE c.name = p_name FOR UPDATE;\n"
    "  IF NOT FOUND THEN\n"
    "    INSERT INTO sqlnotify.consumers (name, snap_lo) VALUES (p_name, pg_current_snapshot())\n"
    "      ON CONFLICT DO NOTHING;\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  saved := hi IS NOT NULL;\n"
    "  IF saved AND p_acked > p THEN p := p_acked; END IF;\n"
    "  FOR r IN 1..2 LOOP\n"
    "    IF hi IS NULL THEN hi := pg_current_snapshot(); p := 0; fresh := true; END IF;\n"
    "    RETURN QUERY SELECT j.id, j.channel, j.payload FROM sqlnotify.journal j\n"
    "      WHERE j.xid >= pg_snapshot_xmin(lo) AND j.xid < pg_snapshot_xmax(hi)\n"
    "        AND NOT pg_visible_in_snapshot(j.xid, lo) AND pg_visible_in_snapshot(j.xid, hi)\n"
    "        AND j.id > p AND j.channel = ANY (p_chans)\n"
    "      ORDER BY j.id LIMIT p_limit;\n"
    "    GET DIAGNOSTICS n = ROW_COUNT;\n"
    "    EXIT WHEN n > 0;\n"
    "    lo := hi; hi := NULL; p := 0;\n"
    "    EXIT WHEN fresh;\n"
    "  END LOOP;\n"
    /* idle polls write nothing (lo may lag a little; the next batch covers it) */
    "  IF n = 0 AND NOT saved AND seen > clock_timestamp() - interval '2 s' THEN RETURN; END IF;\n"
    "  UPDATE sqlnotify.consumers c SET snap_lo = lo, snap_hi = hi, pos = p, last_seen = now(),\n"
    "    pid = pg_backend_pid() WHERE c.name = p_name;\n"
    "END $f$;\n"

    /* A consumer seen for the first time starts at the end (now) or the beginning; one that
     * comes back is told what maintain() removed while it was away. */
    "CREATE OR REPLACE FUNCTION sqlnotify.register(p_name text, p_beginning boolean)\n"
    "RETURNS TABLE (missed_n bigint, missed_lo bigint, missed_hi bigint)\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE n bigint; lo bigint; hi bigint;\n"
    "BEGIN\n"
    "  INSERT INTO sqlnotify.consumers (name, snap_lo) VALUES (p_name,\n"
    "    CASE WHEN p_beginning THEN '1:1:'::pg_snapshot ELSE pg_current_snapshot() END)\n"
    "    ON CONFLICT DO NOTHING;\n"
    "  SELECT c.missed_n, c.missed_lo, c.missed_hi INTO n, lo, hi FROM sqlnotify.consumers c\n"
    "    WHERE c.name = p_name FOR UPDATE;\n"
    "  UPDATE sqlnotify.consumers c SET last_seen = now(), missed_n = 0, missed_lo = NULL, missed_hi = NULL\n"
    "    WHERE c.name = p_name;\n"
    "  RETURN QUERY SELECT n, lo, hi;\n"
    "END $f$;\n"

    /* Truncate what nobody holds (a consumer not seen for p_retention holds nothing: what it
     * loses is counted on its row), and switch tables every p_rotate seconds. */
    "CREATE OR REPLACE FUNCTION sqlnotify.maintain(p_retention float8, p_rotate float8) RETURNS void\n"
    "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "DECLARE v_cur int; sw timestamptz; t text; busy boolean;\n"
    "BEGIN\n"
    "  INSERT INTO sqlnotify.gate SELECT '-infinity' WHERE NOT EXISTS (SELECT 1 FROM sqlnotify.gate);\n"
    "  SELECT s.cur, s.switched_at INTO v_cur, sw FROM sqlnotify.state s FOR UPDATE;\n"
    "  IF NOT FOUND THEN RETURN; END IF;\n"
    /* consumers before journal tables, the order fetch() takes them in: no deadlock */
    "  PERFORM 1 FROM sqlnotify.consumers FOR UPDATE;\n"
    "  FOR k IN 0..2 LOOP\n"
    "    CONTINUE WHEN k = v_cur;\n"
    "    t := 'sqlnotify.journal_' || k;\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO busy;\n"
    "    CONTINUE WHEN NOT busy;\n"
    "    BEGIN\n"
    "      EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', t);\n"
    "    EXCEPTION WHEN lock_not_available THEN CONTINUE;\n"
    "    END;\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s j, sqlnotify.consumers c WHERE c.last_seen >='\n"
    "      ' now() - make_interval(secs => $1) AND NOT pg_visible_in_snapshot(j.xid, c.snap_lo))', t)\n"
    "      INTO busy USING p_retention;\n"
    "    CONTINUE WHEN busy;\n"
    "    EXECUTE format('UPDATE sqlnotify.consumers c SET missed_n = c.missed_n + m.n,'\n"
    "      ' missed_lo = LEAST(c.missed_lo, m.lo), missed_hi = GREATEST(c.missed_hi, m.hi)'\n"
    "      ' FROM (SELECT c2.name, count(*) AS n, min(j.id) AS lo, max(j.id) AS hi FROM %s j,'\n"
    "      ' sqlnotify.consumers c2 WHERE NOT pg_visible_in_snapshot(j.xid, c2.snap_lo) GROUP BY c2.name) m'\n"
    "      ' WHERE m.name = c.name', t);\n"
    "    EXECUTE format('TRUNCATE %s', t);\n"
    "  END LOOP;\n"
    "  IF sw < now() - make_interval(secs => p_rotate) THEN\n"
    "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM sqlnotify.journal_%s)', (v_cur + 1) % 3) INTO busy;\n"
    "    IF NOT busy THEN\n"
    "      UPDATE sqlnotify.state SET cur = (v_cur + 1) % 3, switched_at = now();\n"
    "    END IF;\n"
    "  END IF;\n"
    "END $f$;\n"

    /* lag: rows the consumer has not passed; members: its reader's session is alive */
    "CREATE OR REPLACE FUNCTION sqlnotify.consumer_list()\n"
    "RETURNS TABLE (name text, lag_events bigint, lag_seconds float8, members int, last_seen text)\n"
    "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
    "  SELECT c.name, count(j.id), COALESCE(extract(epoch FROM now() - min(j.created_at)), 0)::float8,\n"
    "    (c.pid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.pid))::int,\n"
    "    to_char(c.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')\n"
    "  FROM sqlnotify.consumers c LEFT JOIN sqlnotify.journal j\n"
    "    ON NOT pg_visible_in_snapshot(j.xid, c.snap_lo)\n"
    "   AND NOT (c.snap_hi IS NOT NULL AND pg_visible_in_snapshot(j.xid, c.snap_hi) AND j.id <= c.pos)\n"
    "  GROUP BY c.name, c.pid, c.last_seen ORDER BY c.name\n"
    "$f$;\n"
    "REVOKE ALL ON FUNCTION sqlnotify.maintain(float8, float8) FROM PUBLIC;\n"
    "COMMENT ON SCHEMA sqlnotify IS '" JOURNAL_VERSION "';\n";

static int journal_ensure(sn_conn *c, char *err, size_t errlen)
{
    char state[6] = "", why[900];
    if (c->journal_ready)
        return 0;
    PGresult *res = pg_exec(c, &c->ctl,
                            "SELECT pg_catalog.obj_description(oid, 'pg_namespace') = '" JOURNAL_VERSION
                            "' FROM pg_catalog.pg_namespace WHERE nspname = 'sqlnotify'",
                            0, NULL, PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    int ok = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!ok) {
        pg_sbuf b = {0};
        pg_sb_add(&b, "BEGIN;\n");
        pg_sb_add(&b, setup_sql);
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
    return journal_ensure(c, err, errlen);
}

/* Registers the consumer (start_at applies to a new one) and logs, at error level, what was
 * removed while it was away. */
int pg_journal_register(sn_conn *c, char *err, size_t errlen)
{
    char state[6] = "";
    if (journal_ensure(c, err, errlen) < 0)
        return -1;
    const char *vals[2] = {c->consumer, c->start_beginning ? "t" : "f"};
    PGresult *res =
        pg_exec(c, &c->ctl, "SELECT * FROM sqlnotify.register($1, $2)", 2, vals, PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0)
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
                            none ? "SELECT NULL::text, 0, 0, 0, NULL::text WHERE false"
                                 : "SELECT name, lag_events, lag_seconds, members, last_seen"
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

int pg_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen)
{
    char state[6] = "";
    int none = no_journal(c, err, errlen);
    if (none != 0)
        return none < 0 ? -1 : 0;
    const char *vals[1] = {name};
    PGresult *res =
        pg_exec(c, &c->ctl, "DELETE FROM sqlnotify.consumers WHERE name = $1", 1, vals, PG_RETRY, state, err, errlen);
    if (res == NULL)
        return -1;
    int n = atoi(PQcmdTuples(res));
    PQclear(res);
    return n > 0;
}
