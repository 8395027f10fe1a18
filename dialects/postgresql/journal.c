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

#define JOURNAL_VERSION "sqlnotify journal 12"

/* The schema and its functions: journal.sql, embedded at build time (tools/embed.sh). */

/* The statements that append one row to the journal, for a plpgsql body that declares
 * sn_id bigint, sn_h int, sn_ms bigint and sn_g bigint: the row goes to the table of its id's epoch, and
 * the reader is woken through the gate of capture.h (shared with pgext/capture.c). channel is
 * a SQL literal, payload and hash expressions. */
void pg_journal_append_sql(sn_sbuf *b, const char *channel, const char *payload, const char *hash)
{
    /* Every operator is pg_catalog's by name: a body runs with the writer's search_path, where
     * an operator of another schema that matches the types exactly (bigint % int) would be
     * chosen over the built-in one that needs a cast. */
    sn_sb_add(b, "  sn_id := pg_catalog.nextval('sqlnotify.journal_id');\n  sn_h := ");
    sn_sb_add(b, hash);
    sn_sb_add(b, ";\n  sn_g := (sn_id OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.%) 3::bigint;\n  CASE\n");
    for (int k = 1; k <= 3; k++) {
        if (k < 3)
            sn_sb_addf(b, "  WHEN sn_g OPERATOR(pg_catalog.=) %d::bigint THEN\n", k);
        else
            sn_sb_add(b, "  ELSE\n");
        sn_sb_addf(b, "    INSERT INTO sqlnotify.journal_%d (id, channel, payload, hash) VALUES (sn_id, ", k % 3);
        sn_sb_add(b, channel);
        sn_sb_add(b, ", ");
        sn_sb_add(b, payload);
        sn_sb_add(b, ", sn_h);\n");
    }
    sn_sb_add(b, "  END CASE;\n"
                 "  sn_ms := (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*)"
                 " 1000::float8)::bigint;\n"
                 "  sn_g := sn_ms OPERATOR(pg_catalog.-)"
                 " COALESCE(pg_catalog.pg_sequence_last_value('sqlnotify.wake'), 0::bigint);\n"
                 "  IF sn_g OPERATOR(pg_catalog.>) " PG_STR(PG_WAKE_MS) "::bigint OR sn_g OPERATOR(pg_catalog.<) '-"
                 PG_STR(PG_WAKE_AHEAD_MS) "'::bigint THEN\n"
                 "    PERFORM pg_catalog.setval('sqlnotify.wake', sn_ms), pg_catalog.pg_notify('" PG_JOURNAL_CHANNEL
                 "', '');\n"
                 "  END IF;\n");
}

/* The setup's tail: sqlnotify.append(), which triggers made by earlier versions call until
 * they are replaced (journal 2's, without a hash, put all their rows in share 0), then the
 * version mark. */
static void setup_tail(sn_sbuf *b)
{
    sn_sb_add(b, "CREATE OR REPLACE FUNCTION sqlnotify.append(p_channel text, p_payload text, p_hash int)"
                 " RETURNS void\n"
                 "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$\n"
                 "DECLARE sn_id bigint; sn_h int; sn_ms bigint; sn_g bigint;\n"
                 "BEGIN\n"
                 /* the xid before the id, as in a trigger (see floor_of): a caller may not
                  * have written anything yet */
                 "  PERFORM pg_catalog.pg_current_xact_id();\n");
    pg_journal_append_sql(b, "p_channel", "p_payload", "p_hash");
    sn_sb_add(b, "END $f$;\n"
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
        sn_sbuf b = {0};
        sn_sb_add(&b, "BEGIN;\n");
        sn_sb_add(&b, pg_journal_sql);
        setup_tail(&b);
        sn_sb_add(&b, "COMMIT");
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
