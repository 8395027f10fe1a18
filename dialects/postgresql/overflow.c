/*
 * overflow.c — payloads over the 7999-byte NOTIFY limit. The trigger parks the whole
 * payload in a table `sqlnotify_overflow` (id, channel, payload, created_at) and notifies
 * "sqlnotify:overflow:<id>"; the listener fetches the row by id AND channel, so a
 * reference sent on another channel cannot read what was parked for this one.
 *
 * Where the table lives: the notifier's overflow_schema when set, else the schema of the
 * watched table (PostgreSQL 15 lets only the database owner create in `public`; whoever
 * may add a trigger to a table can usually create in its schema). Each channel's schema
 * is remembered at install, so the listener knows where to fetch from. Rows older than
 * the retention are pruned by a timer on the control connection.
 */
#include "pg.h"

#define PRUNE_LOCK_TIMEOUT "100ms" /* longest the loop waits for a lock on an overflow table */

const char *pg_overflow_schema_for(const sn_conn *c, const char *schema)
{
    return c->overflow_schema ? c->overflow_schema : schema;
}

int pg_route_set(sn_conn *c, const char *channel, const char *schema)
{
    for (size_t i = 0; i < c->nroutes; i++)
        if (strcmp(c->routes[i].channel, channel) == 0) {
            if (strcmp(c->routes[i].schema, schema) == 0)
                return 0;
            char *s = strdup(schema);
            if (s == NULL)
                return -1;
            free(c->routes[i].schema);
            c->routes[i].schema = s;
            return 0;
        }
    if (c->nroutes == c->caproutes) {
        size_t cap = c->caproutes ? c->caproutes * 2 : 8;
        pg_route *r = realloc(c->routes, cap * sizeof *r);
        if (r == NULL)
            return -1;
        c->routes = r;
        c->caproutes = cap;
    }
    pg_route *r = &c->routes[c->nroutes];
    r->channel = strdup(channel);
    r->schema = strdup(schema);
    if (r->channel == NULL || r->schema == NULL) {
        free(r->channel);
        free(r->schema);
        return -1;
    }
    c->nroutes++;
    return 0;
}

/* A channel nothing was installed for here: the configured schema, else public. */
const char *pg_route_get(const sn_conn *c, const char *channel)
{
    for (size_t i = 0; i < c->nroutes; i++)
        if (strcmp(c->routes[i].channel, channel) == 0)
            return c->routes[i].schema;
    return c->overflow_schema ? c->overflow_schema : "public";
}

static pg_ovf *ovf_get(sn_conn *c, const char *schema)
{
    for (size_t i = 0; i < c->novfs; i++)
        if (strcmp(c->ovfs[i].schema, schema) == 0)
            return &c->ovfs[i];
    if (c->novfs == c->capovfs) {
        size_t cap = c->capovfs ? c->capovfs * 2 : 4;
        pg_ovf *o = realloc(c->ovfs, cap * sizeof *o);
        if (o == NULL)
            return NULL;
        c->ovfs = o;
        c->capovfs = cap;
    }
    pg_ovf *o = &c->ovfs[c->novfs];
    if ((o->schema = strdup(schema)) == NULL)
        return NULL;
    o->ready = 0;
    c->novfs++;
    return o;
}

void pg_overflow_forget(sn_conn *c, const char *schema)
{
    for (size_t i = 0; i < c->novfs; i++)
        if (strcmp(c->ovfs[i].schema, schema) == 0)
            c->ovfs[i].ready = 0;
}

void pg_overflow_free(sn_conn *c)
{
    for (size_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].channel);
        free(c->routes[i].schema);
    }
    free(c->routes);
    for (size_t i = 0; i < c->novfs; i++)
        free(c->ovfs[i].schema);
    free(c->ovfs);
    c->routes = NULL;
    c->ovfs = NULL;
    c->nroutes = c->novfs = 0;
}

/* "schema".sqlnotify_overflow, malloc'ed, or NULL. */
static char *ovf_name(sn_conn *c, const char *schema)
{
    sn_sbuf b = {0};
    pg_sb_qname(&b, c->ctl.conn, schema, PG_OVERFLOW_TABLE);
    if (b.fail) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* 1 the table exists, 0 it does not, -1 and err. */
static int ovf_exists(sn_conn *c, const char *name, char *err, size_t errlen)
{
    const char *vals[1] = {name};
    PGresult *res = pg_exec(c, &c->ctl, "SELECT pg_catalog.to_regclass($1) IS NOT NULL", 1, vals, PG_RETRY,
                            NULL, err, errlen);
    if (res == NULL)
        return -1;
    int yes = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return yes;
}

int pg_overflow_ensure(sn_conn *c, const char *schema, char *err, size_t errlen)
{
    pg_ovf *o = ovf_get(c, schema);
    char e2[512];
    if (o == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    if (o->ready)
        return 0;
    char *name = ovf_name(c, schema);
    if (name == NULL) {
        sn_seterr(err, errlen, "cannot quote the schema name of the overflow table");
        return -1;
    }
    int rc = ovf_exists(c, name, err, errlen);
    if (rc == 0) {
        sn_sbuf b = {0};
        char state[6];
        sn_sb_add(&b, "CREATE TABLE IF NOT EXISTS ");
        sn_sb_add(&b, name);
        sn_sb_add(&b, " (id bigserial PRIMARY KEY, channel text NOT NULL, payload jsonb NOT NULL,"
                      " created_at timestamptz NOT NULL DEFAULT pg_catalog.now())");
        rc = b.fail ? -1 : pg_script(c, b.p, state, e2, sizeof e2);
        free(b.p);
        /* Two processes may race here; the loser's error is fine if the table is there. */
        if (rc < 0 && ovf_exists(c, name, err, errlen) == 1) {
            rc = 1;
        } else if (rc < 0) {
            sn_sbuf q = {0};
            pg_sb_quote(&q, c->ctl.conn, schema, 1);
            sn_seterr(err, errlen, "cannot create the overflow table %s: %s%s%s%s", name, e2,
                      strcmp(state, "42501") == 0 ? " (GRANT CREATE ON SCHEMA " : "",
                      strcmp(state, "42501") == 0 && q.p ? q.p : "",
                      strcmp(state, "42501") == 0 ? " to this role, or give the notifier an overflow_schema it may "
                                                    "create in)"
                                                  : "");
            free(q.p);
        }
    }
    free(name);
    if (rc < 0)
        return -1;
    o->ready = 1;
    return 0;
}

/* "sqlnotify:overflow:<digits>" exactly. */
int pg_is_overflow_ref(const char *s, size_t len)
{
    size_t p = sizeof PG_OVERFLOW_REF - 1;
    if (len <= p || len > p + 19 || memcmp(s, PG_OVERFLOW_REF, p) != 0)
        return 0;
    for (; p < len; p++)
        if (s[p] < '0' || s[p] > '9')
            return 0;
    return 1;
}

char *pg_overflow_fetch(sn_conn *c, const char *channel, const char *id, size_t *len)
{
    char err[512];
    const char *schema = pg_route_get(c, channel);
    pg_ovf *o = ovf_get(c, schema);
    char *name = ovf_name(c, schema);
    char *p = NULL;
    if (o == NULL || name == NULL) {
        sn_logf(&c->sink, SN_LOG_WARN, "out of memory fetching overflow payload %s for channel \"%s\"; event skipped",
                id, channel);
        goto done;
    }
    if (!o->ready) {
        /* Look before reading: a missing table must not cost the server an error per event. */
        int rc = ovf_exists(c, name, err, sizeof err);
        if (rc <= 0) {
            sn_logf(&c->sink, SN_LOG_WARN, "cannot fetch overflow payload %s for channel \"%s\": %s; event skipped",
                    id, channel, rc < 0 ? err : "there is no overflow table here");
            goto done;
        }
        o->ready = 1;
    }
    sn_sbuf b = {0};
    char state[6];
    sn_sb_add(&b, "SELECT payload::text FROM ");
    sn_sb_add(&b, name);
    sn_sb_add(&b, " WHERE id = $1::bigint AND channel = $2");
    const char *vals[2] = {id, channel};
    PGresult *res = b.fail ? NULL : pg_exec(c, &c->ctl, b.p, 2, vals, PG_RETRY, state, err, sizeof err);
    free(b.p);
    if (res == NULL) {
        if (strcmp(state, "42P01") == 0)
            o->ready = 0;
        sn_logf(&c->sink, SN_LOG_WARN, "cannot fetch overflow payload %s for channel \"%s\" from %s: %s; event skipped",
                id, channel, name, b.fail ? b.fail : err);
        goto done;
    }
    if (PQntuples(res) == 0) {
        sn_logf(&c->sink, SN_LOG_WARN,
                "overflow payload %s for channel \"%s\" is not in %s (pruned, deleted, or parked for another "
                "channel); event skipped",
                id, channel, name);
    } else if ((p = malloc((size_t)PQgetlength(res, 0, 0) + 1)) != NULL) {
        *len = (size_t)PQgetlength(res, 0, 0);
        memcpy(p, PQgetvalue(res, 0, 0), *len + 1);
    } else {
        sn_logf(&c->sink, SN_LOG_WARN, "out of memory fetching overflow payload %s for channel \"%s\"; event skipped",
                id, channel);
    }
    PQclear(res);
done:
    free(name);
    return p;
}

/* Drop one table's rows older than the retention period (delivered long ago). */
static void prune_one(sn_conn *c, pg_ovf *o)
{
    char err[512], state[6] = "", secs[40];
    char *name = ovf_name(c, o->schema);
    if (name == NULL)
        return;
    /* The loop waits for this DELETE: another session locking the table (REINDEX, VACUUM
     * FULL, ALTER) must not stall every delivery. Give up quickly; the next tick retries. */
    sn_sbuf b = {0};
    snprintf(secs, sizeof secs, "%.17g", c->retention);
    sn_sb_add(&b, "BEGIN; SET LOCAL lock_timeout = '" PRUNE_LOCK_TIMEOUT "'; DELETE FROM ");
    sn_sb_add(&b, name);
    sn_sb_add(&b, " WHERE created_at < pg_catalog.now() - pg_catalog.make_interval(secs => ");
    sn_sb_add(&b, secs);
    sn_sb_add(&b, "); COMMIT");
    if (b.fail)
        goto done;
    if (pg_script(c, b.p, state, err, sizeof err) < 0) {
        if (strcmp(state, "42P01") == 0)
            o->ready = 0; /* dropped behind our back: wait for it to come back */
        else if (strcmp(state, "55P03") == 0)
            sn_logf(&c->sink, SN_LOG_DEBUG, "%s on %s is locked; pruning it later", name, c->target);
        else
            sn_logf(&c->sink, SN_LOG_WARN, "cannot prune %s on %s: %s", name, c->target, err);
    }
done:
    free(b.p);
    free(name);
}

void pg_prune_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sn_conn *c = w->data;
    (void)loop;
    (void)revents;
    /* Never (re)connect from a timer: a server that is down is the listener's to report. */
    if (c->ctl.conn == NULL || PQstatus(c->ctl.conn) != CONNECTION_OK)
        return;
    for (size_t i = 0; i < c->novfs; i++) {
        pg_ovf *o = &c->ovfs[i];
        if (!o->ready) {
            char err[512], *name = ovf_name(c, o->schema);
            o->ready = name && ovf_exists(c, name, err, sizeof err) == 1;
            free(name);
        }
        if (o->ready)
            prune_one(c, o);
    }
}
