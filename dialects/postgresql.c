/*
 * postgresql.c — the PostgreSQL driver behind dialect.h.
 *
 * Each notifier gets two libpq connections:
 *   - the query connection (blocking): catalog lookups, trigger DDL, NOTIFY from the
 *     runtime, user queries, overflow fetches and the overflow table's pruning;
 *   - the listener connection (non-blocking, driven by libev): LISTEN/NOTIFY traffic,
 *     drained into batches for the sink, reconnected with backoff when it drops.
 *
 * Triggers are one plpgsql function per watch that reads the row through to_jsonb(), so
 * no column is referenced and a later ALTER TABLE never breaks the user's writes. A row
 * too large for NOTIFY (7999 bytes) is sent as its key only, or parked in
 * public.sqlnotify_overflow and sent as a reference the listener resolves.
 */
#include "dialect.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>

#include <libpq-fe.h>

/* Bump whenever the generated SQL changes: installed triggers then no longer match. */
#define SQL_VERSION "1"
#define MARK_PREFIX "sqlnotify:"

#define MAX_PAYLOAD 7999
#define MAX_PAYLOAD_STR "7999"
#define OVERFLOW_REF "sqlnotify:overflow:"
#define OVERFLOW_TABLE "public.sqlnotify_overflow"

#define BACKOFF_FIRST 0.1   /* first reconnect within 100 ms */
#define BACKOFF_CAP 10.0
#define CONNECT_TIMEOUT 15.0 /* per attempt, unless the URL sets connect_timeout */
#define PRUNE_EVERY 60.0
#define PRUNE_LOCK_TIMEOUT "100ms" /* longest the loop waits for a lock on the overflow table */
#define JSON_CHUNK 50        /* pairs per jsonb_build_object(): functions take <= 100 args */

enum ln_state {
    LN_OFF,        /* no listener wanted */
    LN_WAITING,    /* lost; the retry timer will start a new attempt */
    LN_CONNECTING, /* PQconnectPoll in progress */
    LN_BUSY,       /* connected, re-LISTEN of every channel in flight */
    LN_READY       /* connected and listening */
};

struct sn_conn {
    struct ev_loop *loop;
    sn_sink sink;
    char *url, *app;         /* kept to open the listener with the same parameters */
    char target[512];
    double connect_timeout;

    PGconn *db;              /* query connection */
    ev_timer prune;
    double retention;
    int overflow_ready;      /* the overflow table is known to exist */

    PGconn *ln;              /* listener connection */
    int state;               /* enum ln_state */
    ev_io io;
    ev_timer retry;          /* backoff delay, then the attempt's timeout */
    unsigned gen;            /* bumped whenever ln is closed: checked after deliver() */
    int attempt;
    double lost_at;
    char fatal[256];         /* the server's last FATAL on the listener: the reason it went */
    uint64_t rng;

    char **chans;            /* channels listened to */
    size_t nchans, capchans;

    PGnotify **notes;        /* one drained batch, reused */
    sn_event *events;
    char **fetched;
    size_t cap;

    int depth;               /* > 0 while inside a callback that may deliver */
    int dead;                /* closed from within deliver(): free when the callback unwinds */
};

/* ===== small helpers ===== */

/* libpq messages end with a newline and may span lines ("...\n\tIs the server running"):
 * fold them into one line for logs and errors. */
static void one_line(char *dst, size_t n, const char *src)
{
    size_t k = 0;
    int space = 0;
    if (n == 0)
        return;
    for (; src && *src && k + 1 < n; src++) {
        if (*src == '\n' || *src == '\r' || *src == '\t') {
            space = 1;
            continue;
        }
        if (space && k > 0 && k + 2 < n)
            dst[k++] = ' ';
        space = 0;
        dst[k++] = *src;
    }
    dst[k] = '\0';
}

/* The best message for a failed result: the server's primary text, else libpq's. */
static void result_err(PGconn *conn, const PGresult *res, char state[6], char *err, size_t errlen)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[1024];
    if (state) {
        const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        snprintf(state, 6, "%s", s ? s : "");
    }
    if (m == NULL && res)
        m = PQresultErrorMessage(res);
    if ((m == NULL || *m == '\0') && conn)
        m = PQerrorMessage(conn);
    one_line(line, sizeof line, m);
    sn_seterr(err, errlen, "%s", *line ? line : "out of memory");
}

/* A growing string for generated SQL; the first failure sticks and is reported once. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    const char *fail;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->fail)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->fail = "out of memory";
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(sbuf *b, const char *s)
{
    if (s) /* NULL: a part that already failed (its failure is reported instead) */
        sb_addn(b, s, strlen(s));
}

/* Append s quoted by libpq's rules for db: an identifier, or a string literal. */
static void sb_quote(sbuf *b, PGconn *db, const char *s, int ident)
{
    if (b->fail)
        return;
    char *q = ident ? PQescapeIdentifier(db, s, strlen(s)) : PQescapeLiteral(db, s, strlen(s));
    if (q == NULL) {
        b->fail = "cannot quote a name (out of memory or not valid in the client encoding)";
        return;
    }
    sb_add(b, q);
    PQfreemem(q);
}

/* Notices ("... does not exist, skipping") would go to stderr by default: route them. */
static void on_notice(void *arg, const PGresult *res)
{
    sn_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    char line[900];
    one_line(line, sizeof line, msg ? msg : PQresultErrorMessage(res));
    int level = sev && strcmp(sev, "WARNING") == 0 ? SN_LOG_WARN : SN_LOG_DEBUG;
    sn_logf(&c->sink, level, "%s: %s", c->target, line);
}

/* The server says why it drops a connection ("terminating connection due to administrator
 * command") as an unsolicited FATAL that libpq hands to the notice hook: keep it. */
static void on_listener_notice(void *arg, const PGresult *res)
{
    sn_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (sev && msg && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        one_line(c->fatal, sizeof c->fatal, msg);
    else
        on_notice(arg, res);
}

/* ===== connections ===== */

/* Parameters come from the URL as given; we only supply defaults it may override
 * (the URL is expanded at the dbname position, after them). */
static PGconn *pg_connect(const sn_conn *c, int async)
{
    const char *kw[9], *val[9];
    int n = 0;
    kw[n] = "client_encoding"; /* names and payloads cross the interface as UTF-8 */
    val[n++] = "UTF8";
    /* A network that silently drops everything leaves an idle listener waiting for hours
     * (the kernel's keepalive starts after 2 h): probe after 10 s idle, give up after 3
     * unanswered probes 5 s apart, and fail a send nobody acknowledges within 25 s. */
    kw[n] = "keepalives_idle";
    val[n++] = "10";
    kw[n] = "keepalives_interval";
    val[n++] = "5";
    kw[n] = "keepalives_count";
    val[n++] = "3";
    if (PQlibVersion() >= 120000) { /* tcp_user_timeout is new in libpq 12 */
        kw[n] = "tcp_user_timeout";
        val[n++] = "25000";
    }
    if (c->app) {
        kw[n] = "application_name";
        val[n++] = c->app;
    }
    kw[n] = "dbname";
    val[n++] = c->url;
    kw[n] = NULL;
    val[n] = NULL;
    return async ? PQconnectStartParams(kw, val, 1) : PQconnectdbParams(kw, val, 1);
}

static void connect_err(PGconn *conn, char *err, size_t errlen)
{
    char line[700];
    const char *db = conn ? PQdb(conn) : NULL, *host = conn ? PQhost(conn) : NULL;
    const char *port = conn ? PQport(conn) : NULL;
    one_line(line, sizeof line, conn ? PQerrorMessage(conn) : "out of memory");
    sn_seterr(err, errlen, "cannot connect to database \"%s\" on %s:%s: %s", db ? db : "?",
              host && *host ? host : "localhost", port && *port ? port : "5432",
              *line ? line : "unknown error");
}

/* libpq ignores connect_timeout under PQconnectPoll: we apply it ourselves. */
static double url_connect_timeout(PGconn *conn)
{
    double t = CONNECT_TIMEOUT;
    PQconninfoOption *opts = PQconninfo(conn);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val) {
            int v = atoi(o->val);
            if (v > 0)
                t = v < 2 ? 2 : v; /* libpq's own minimum */
        }
    PQconninfoFree(opts);
    return t;
}

/* Make sure the query connection is up: PQreset it once if it was lost. */
static int db_ensure(sn_conn *c, char *err, size_t errlen)
{
    char line[700];
    if (PQstatus(c->db) == CONNECTION_OK)
        return 0;
    PQreset(c->db);
    if (PQstatus(c->db) == CONNECTION_OK) {
        sn_logf(&c->sink, SN_LOG_INFO, "query connection to %s re-established", c->target);
        return 0;
    }
    one_line(line, sizeof line, PQerrorMessage(c->db));
    sn_seterr(err, errlen, "lost connection to %s: %s", c->target, *line ? line : "unknown error");
    return -1;
}

/* One statement with text parameters on the query connection. The result when it
 * succeeded, else NULL with err (and the SQLSTATE). retry: the statement may be run again
 * when the connection turns out to have been lost (never inside our own transactions). */
static PGresult *db_run(sn_conn *c, const char *sql, int n, const char *const *vals, int retry,
                        char state[6], char *err, size_t errlen)
{
    if (state)
        state[0] = '\0';
    if (db_ensure(c, err, errlen) < 0)
        return NULL;
    PGresult *res = PQexecParams(c->db, sql, n, NULL, vals, NULL, NULL, 0);
    if (retry && PQstatus(c->db) == CONNECTION_BAD) {
        PQclear(res);
        if (db_ensure(c, err, errlen) < 0)
            return NULL;
        res = PQexecParams(c->db, sql, n, NULL, vals, NULL, NULL, 0);
    }
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    result_err(c->db, res, state, err, errlen);
    PQclear(res);
    return NULL;
}

/* Run our own SQL (one or several statements, e.g. BEGIN ... COMMIT) in one round trip;
 * when it fails, roll back whatever it left open, so the connection is never stuck in an
 * aborted transaction. */
static int db_script(sn_conn *c, const char *sql, char state[6], char *err, size_t errlen)
{
    if (state)
        state[0] = '\0';
    if (db_ensure(c, err, errlen) < 0)
        return -1;
    PGresult *res = PQexec(c->db, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        result_err(c->db, res, state, err, errlen);
    PQclear(res);
    if (!ok && PQstatus(c->db) == CONNECTION_OK && PQtransactionStatus(c->db) != PQTRANS_IDLE)
        PQclear(PQexec(c->db, "ROLLBACK"));
    return ok ? 0 : -1;
}

/* ===== results ===== */

static int cell_from_pg(sn_value *v, const PGresult *res, int row, int col, int typed)
{
    const char *s = PQgetvalue(res, row, col);
    if (PQgetisnull(res, row, col))
        return 0; /* the row starts as SN_NULL */
    switch (typed ? PQftype(res, col) : 25) {
    case 16: /* bool */
        v->type = SN_BOOL;
        v->i = s[0] == 't';
        return 0;
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
        v->type = SN_INT;
        v->i = strtoll(s, NULL, 10);
        return 0;
    case 700: /* float4 */
    case 701: /* float8 */
        v->type = SN_FLOAT;
        v->d = strtod(s, NULL); /* also reads "NaN", "Infinity", "-Infinity" */
        return 0;
    default:
        return sn_value_text(v, s, (size_t)PQgetlength(res, row, col));
    }
}

/* Copy a PGresult into an sn_result: typed by column OID, or every cell as text. */
static sn_result *result_from_pg(const PGresult *res, int typed)
{
    int nc = PQnfields(res), nr = PQntuples(res);
    sn_result *r = sn_result_new(nc);
    if (r == NULL)
        return NULL;
    for (int col = 0; col < nc; col++)
        if (sn_result_name(r, col, PQfname(res, col)) < 0)
            goto oom;
    for (int row = 0; row < nr; row++) {
        sn_value *v = sn_result_row(r);
        if (v == NULL)
            goto oom;
        for (int col = 0; col < nc; col++)
            if (cell_from_pg(&v[col], res, row, col, typed) < 0)
                goto oom;
    }
    return r;
oom:
    sn_result_free(r);
    return NULL;
}

/* ===== overflow table ===== */

static int overflow_ensure(sn_conn *c, char *err, size_t errlen)
{
    if (c->overflow_ready)
        return 0;
    PGresult *res = db_run(c, "SELECT pg_catalog.to_regclass('" OVERFLOW_TABLE "') IS NOT NULL",
                           0, NULL, 1, NULL, err, errlen);
    if (res == NULL)
        return -1;
    int exists = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!exists) {
        /* Two processes may race here; the loser's error is fine if the table is there. */
        char e2[256];
        int rc = db_script(c,
                           "CREATE TABLE IF NOT EXISTS " OVERFLOW_TABLE " ("
                           "id bigserial PRIMARY KEY, channel text NOT NULL, payload jsonb NOT NULL, "
                           "created_at timestamptz NOT NULL DEFAULT pg_catalog.now())",
                           NULL, e2, sizeof e2);
        if (rc < 0) {
            res = db_run(c, "SELECT pg_catalog.to_regclass('" OVERFLOW_TABLE "') IS NOT NULL", 0,
                         NULL, 1, NULL, err, errlen);
            exists = res && PQgetvalue(res, 0, 0)[0] == 't';
            PQclear(res);
            if (!exists) {
                sn_seterr(err, errlen, "cannot create " OVERFLOW_TABLE ": %s", e2);
                return -1;
            }
        }
    }
    c->overflow_ready = 1;
    return 0;
}

/* Drop overflow rows older than the retention period (they were delivered long ago). */
static void prune_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sn_conn *c = w->data;
    char err[512], state[6], secs[40];
    (void)loop;
    (void)revents;
    /* Never reconnect or interleave with a transaction from a timer. */
    if (PQstatus(c->db) != CONNECTION_OK || PQtransactionStatus(c->db) != PQTRANS_IDLE)
        return;
    if (!c->overflow_ready) {
        PGresult *res = db_run(c, "SELECT pg_catalog.to_regclass('" OVERFLOW_TABLE "') IS NOT NULL",
                               0, NULL, 0, NULL, err, sizeof err);
        if (res == NULL)
            return;
        c->overflow_ready = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (!c->overflow_ready)
            return;
    }
    /* The loop waits for this DELETE: another session locking the table (REINDEX, VACUUM
     * FULL, ALTER) must not stall every delivery. Give up quickly; the next tick retries. */
    if (db_script(c, "BEGIN; SET LOCAL lock_timeout = '" PRUNE_LOCK_TIMEOUT "'", NULL, err, sizeof err) < 0) {
        sn_logf(&c->sink, SN_LOG_WARN, "cannot prune " OVERFLOW_TABLE " on %s: %s", c->target, err);
        return;
    }
    snprintf(secs, sizeof secs, "%.17g", c->retention);
    const char *vals[1] = {secs};
    PGresult *res = db_run(c,
                           "DELETE FROM " OVERFLOW_TABLE " WHERE created_at < "
                           "pg_catalog.now() - pg_catalog.make_interval(secs => $1::float8)",
                           1, vals, 0, state, err, sizeof err);
    if (res == NULL || db_script(c, "COMMIT", state, err, sizeof err) < 0) {
        if (PQstatus(c->db) == CONNECTION_OK && PQtransactionStatus(c->db) != PQTRANS_IDLE)
            PQclear(PQexec(c->db, "ROLLBACK"));
        if (strcmp(state, "42P01") == 0)
            c->overflow_ready = 0; /* dropped behind our back: wait for it to come back */
        else if (strcmp(state, "55P03") == 0)
            sn_logf(&c->sink, SN_LOG_DEBUG, OVERFLOW_TABLE " on %s is locked; pruning it later", c->target);
        else
            sn_logf(&c->sink, SN_LOG_WARN, "cannot prune " OVERFLOW_TABLE " on %s: %s", c->target, err);
        PQclear(res);
        return;
    }
    if (strcmp(PQcmdTuples(res), "0") != 0)
        sn_logf(&c->sink, SN_LOG_DEBUG, "pruned %s overflow rows on %s", PQcmdTuples(res), c->target);
    PQclear(res);
}

/* "sqlnotify:overflow:<digits>" exactly. */
static int is_overflow_ref(const char *s, size_t len)
{
    size_t p = sizeof OVERFLOW_REF - 1;
    if (len <= p || len > p + 19 || memcmp(s, OVERFLOW_REF, p) != 0)
        return 0;
    for (; p < len; p++)
        if (s[p] < '0' || s[p] > '9')
            return 0;
    return 1;
}

/* The parked payload, malloc'ed, or NULL (logged) when it cannot be had. */
static char *overflow_fetch(sn_conn *c, const char *channel, const char *id, size_t *len)
{
    char err[512];
    const char *vals[1] = {id};
    PGresult *res = db_run(c, "SELECT payload::text FROM " OVERFLOW_TABLE " WHERE id = $1::bigint", 1,
                           vals, 1, NULL, err, sizeof err);
    if (res == NULL) {
        sn_logf(&c->sink, SN_LOG_WARN, "cannot fetch overflow payload %s for channel \"%s\": %s; event skipped",
                id, channel, err);
        return NULL;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        sn_logf(&c->sink, SN_LOG_WARN,
                "overflow payload %s for channel \"%s\" is gone (pruned or deleted); event skipped", id,
                channel);
        return NULL;
    }
    *len = (size_t)PQgetlength(res, 0, 0);
    char *p = malloc(*len + 1);
    if (p)
        memcpy(p, PQgetvalue(res, 0, 0), *len + 1);
    else
        sn_logf(&c->sink, SN_LOG_WARN, "out of memory fetching overflow payload %s for channel \"%s\"", id,
                channel);
    PQclear(res);
    return p;
}

/* ===== open, close, target ===== */

static void listener_close(sn_conn *c);
static void chans_clear(sn_conn *c);
static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents);

static sn_conn *pg_open(const char *url, struct ev_loop *loop, const sn_sink *sink,
                        const sn_options *opt, char *err, size_t errlen)
{
    sn_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->sink = *sink;
    c->url = strdup(url);
    c->app = opt && opt->application && *opt->application ? strdup(opt->application) : NULL;
    if (c->url == NULL || (opt && opt->application && *opt->application && c->app == NULL)) {
        sn_seterr(err, errlen, "out of memory");
        goto fail;
    }
    c->db = pg_connect(c, 0);
    if (c->db == NULL || PQstatus(c->db) != CONNECTION_OK) {
        connect_err(c->db, err, errlen);
        goto fail;
    }
    PQsetNoticeReceiver(c->db, on_notice, c);
    const char *host = PQhost(c->db), *port = PQport(c->db);
    snprintf(c->target, sizeof c->target, "database \"%s\" on %s:%s", PQdb(c->db),
             host && *host ? host : "localhost", port && *port ? port : "5432");
    c->connect_timeout = url_connect_timeout(c->db);
    c->rng = ((uint64_t)(ev_time() * 1e6) ^ (uint64_t)(uintptr_t)c) | 1;

    c->retention = opt && opt->retention > 0 ? opt->retention : 3600;
    double every = c->retention < PRUNE_EVERY ? c->retention : PRUNE_EVERY;
    if (every < 1)
        every = 1;
    ev_timer_init(&c->prune, prune_cb, every, every);
    c->prune.data = c;
    ev_timer_start(loop, &c->prune);
    ev_unref(loop); /* housekeeping must not keep the loop alive */
    ev_init(&c->io, io_cb);
    c->io.data = c;
    ev_init(&c->retry, retry_cb);
    c->retry.data = c;
    c->state = LN_OFF;
    return c;
fail:
    PQfinish(c->db);
    free(c->url);
    free(c->app);
    free(c);
    return NULL;
}

static void conn_shutdown(sn_conn *c)
{
    listener_close(c);
    c->state = LN_OFF;
    chans_clear(c);
    if (ev_is_active(&c->prune)) {
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &c->prune);
    }
    PQfinish(c->db);
    c->db = NULL;
}

static void conn_free(sn_conn *c)
{
    free(c->chans);
    free(c->notes);
    free(c->events);
    free(c->fetched);
    free(c->url);
    free(c->app);
    free(c);
}

static void pg_close(sn_conn *c)
{
    if (c == NULL || c->dead)
        return;
    conn_shutdown(c);
    if (c->depth > 0)
        c->dead = 1; /* closed from a handler: the io callback frees it on its way out */
    else
        conn_free(c);
}

static const char *pg_target(sn_conn *c)
{
    return c ? c->target : "";
}

/* ===== catalog ===== */

/* Names compare as text (a name longer than 63 bytes must not match its truncation);
 * the ::name comparison beside it lets the catalog indexes be used. */
static const char describe_sql[] =
    "WITH t AS ("
    " SELECT c.oid, n.nspname::text AS nsp, c.relname::text AS rel"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname = $2::text::name AND c.relname::text = $2::text"
    "   AND c.relkind IN ('r', 'p')"
    "   AND CASE WHEN $1::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)"
    "            ELSE n.nspname::text = $1::text END"
    "), k AS ("
    " SELECT i.indexrelid, i.indisprimary, x.attnum, x.ord"
    " FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid"
    " CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS x(attnum, ord)"
    " WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
    "   AND x.ord <= i.indnkeyatts"
    ")"
    " SELECT kind, a, b, n FROM ("
    "  SELECT 0 AS s1, ''::text AS s2, 0::bigint AS s3,"
    "         'table'::text AS kind, t.nsp AS a, t.rel AS b, NULL::text AS n FROM t"
    "  UNION ALL"
    "  SELECT 1, '', a.attnum, 'column', a.attname::text,"
    "         pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnum::text"
    "  FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid"
    "  WHERE a.attnum > 0 AND NOT a.attisdropped"
    "  UNION ALL"
    "  SELECT 2, '', k.ord, 'pk', a.attname::text, NULL, k.ord::text"
    "  FROM t JOIN k ON k.indisprimary"
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
    "  UNION ALL"
    "  SELECT 3, ic.relname::text, k.ord, 'unique', a.attname::text, ic.relname::text, k.ord::text"
    "  FROM t JOIN k ON true JOIN pg_catalog.pg_class ic ON ic.oid = k.indexrelid"
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
    " ) s ORDER BY s1, s2 COLLATE \"C\", s3";

static int pg_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err,
                       size_t errlen)
{
    const char *vals[2] = {schema, table};
    *out = NULL;
    PGresult *res = db_run(c, describe_sql, 2, vals, 1, NULL, err, errlen);
    if (res == NULL)
        return -1;
    *out = result_from_pg(res, 0);
    PQclear(res);
    if (*out == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* ===== triggers ===== */

static const char trigger_comment_sql[] =
    "SELECT pg_catalog.obj_description(t.oid, 'pg_trigger')"
    " FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname = $2::text::name AND c.relname::text = $2::text"
    "   AND n.nspname::text = $1::text AND t.tgname::text = $3::text";

/* Whether the watch's trigger exists (*found) and its comment (*comment, malloc'ed or NULL). */
static int trigger_lookup(sn_conn *c, const sn_watch *w, const char *name, int *found, char **comment,
                          char *err, size_t errlen)
{
    const char *vals[3] = {w->schema, w->table, name};
    *found = 0;
    *comment = NULL;
    PGresult *res = db_run(c, trigger_comment_sql, 3, vals, 1, NULL, err, errlen);
    if (res == NULL)
        return -1;
    if (PQntuples(res) > 0) {
        *found = 1;
        if (!PQgetisnull(res, 0, 0) && (*comment = strdup(PQgetvalue(res, 0, 0))) == NULL) {
            PQclear(res);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    }
    PQclear(res);
    return 0;
}

/* jsonb_build_object(col, sn_j -> col, ...) for a list of columns; missing keys are null. */
static void sb_json_object(sbuf *b, PGconn *db, const char *const *cols, int n)
{
    if (n <= 0) {
        sb_add(b, "'{}'::jsonb");
        return;
    }
    for (int i = 0; i < n; i += JSON_CHUNK) {
        if (i > 0)
            sb_add(b, " || ");
        sb_add(b, "pg_catalog.jsonb_build_object(");
        for (int k = i; k < n && k < i + JSON_CHUNK; k++) {
            if (k > i)
                sb_add(b, ", ");
            sb_quote(b, db, cols[k], 0);
            sb_add(b, "::text, sn_j -> ");
            sb_quote(b, db, cols[k], 0);
            sb_add(b, "::text");
        }
        sb_add(b, ")");
    }
}

/* The plpgsql body. It names no column (to_jsonb + key lookups), so ALTER TABLE on the
 * watched table never breaks it, and nothing in it can fail a user's write on purpose. */
static void sb_function_body(sbuf *b, PGconn *db, const sn_watch *w)
{
    int changed_check = w->op == SN_UPDATE && w->ntrigger > 0;
    sb_add(b, "DECLARE\n  sn_j jsonb := pg_catalog.to_jsonb(");
    sb_add(b, w->op == SN_DELETE ? "OLD" : "NEW");
    sb_add(b, ");\n");
    if (changed_check)
        sb_add(b, "  sn_o jsonb := pg_catalog.to_jsonb(OLD);\n");
    sb_add(b, "  sn_k jsonb;\n  sn_v jsonb;\n  sn_p text;\n  sn_id bigint;\nBEGIN\n");
    if (changed_check) {
        sb_add(b, "  IF NOT (");
        for (int i = 0; i < w->ntrigger; i++) {
            if (i > 0)
                sb_add(b, "\n       OR ");
            sb_add(b, "(sn_o -> ");
            sb_quote(b, db, w->trigger_cols[i], 0);
            sb_add(b, "::text) IS DISTINCT FROM (sn_j -> ");
            sb_quote(b, db, w->trigger_cols[i], 0);
            sb_add(b, "::text)");
        }
        sb_add(b, ") THEN\n    RETURN NULL;\n  END IF;\n");
    }
    sb_add(b, "  sn_k := ");
    sb_json_object(b, db, w->pk, w->npk);
    sb_add(b, ";\n  sn_v := pg_catalog.jsonb_build_object('id', sn_k, 'x', ");
    sb_json_object(b, db, w->extra, w->nextra);
    sb_add(b, ");\n  sn_p := sn_v::text;\n"
              "  IF pg_catalog.octet_length(sn_p) > " MAX_PAYLOAD_STR " THEN\n");
    if (w->overflow) {
        /* A missing table or privilege must not fail the write: fall back to the key. */
        sb_add(b, "    BEGIN\n"
                  "      INSERT INTO " OVERFLOW_TABLE " (channel, payload) VALUES (");
        sb_quote(b, db, w->channel, 0);
        sb_add(b, ", sn_v) RETURNING id INTO sn_id;\n"
                  "      sn_p := '" OVERFLOW_REF "' || sn_id;\n"
                  "    EXCEPTION WHEN OTHERS THEN\n"
                  "      sn_p := NULL;\n"
                  "    END;\n"
                  "  END IF;\n"
                  "  IF sn_p IS NULL THEN\n");
    }
    sb_add(b, "    sn_p := pg_catalog.jsonb_build_object('id', sn_k, 't', true)::text;\n"
              "    IF pg_catalog.octet_length(sn_p) > " MAX_PAYLOAD_STR " THEN\n"
              "      sn_p := '{\"t\": true}';\n"
              "    END IF;\n"
              "  END IF;\n"
              "  PERFORM pg_catalog.pg_notify(");
    sb_quote(b, db, w->channel, 0);
    sb_add(b, ", sn_p);\n  RETURN NULL;\nEND");
}

/* BEGIN; [DROP TRIGGER]; function; trigger; comments; COMMIT */
static void sb_install_script(sbuf *b, PGconn *db, const sn_watch *w, const char *name, const char *mark,
                              int drop_first)
{
    static const char *const ops[] = {"INSERT", "UPDATE", "DELETE"};
    sbuf body = {0};
    sbuf tbl = {0}, fn = {0};

    sb_function_body(&body, db, w);
    sb_quote(&tbl, db, w->schema, 1);
    sb_add(&tbl, ".");
    sb_quote(&tbl, db, w->table, 1);
    sb_quote(&fn, db, w->schema, 1);
    sb_add(&fn, ".");
    sb_quote(&fn, db, name, 1);
    sb_add(&fn, "()");
    b->fail = body.fail ? body.fail : tbl.fail ? tbl.fail : fn.fail;

    sb_add(b, "BEGIN;\n");
    if (drop_first) {
        sb_add(b, "DROP TRIGGER IF EXISTS ");
        sb_quote(b, db, name, 1);
        sb_add(b, " ON ");
        sb_add(b, tbl.p);
        sb_add(b, ";\n");
    }
    sb_add(b, "CREATE OR REPLACE FUNCTION ");
    sb_add(b, fn.p);
    sb_add(b, " RETURNS trigger LANGUAGE plpgsql AS ");
    sb_quote(b, db, body.p, 0);
    sb_add(b, ";\nCREATE TRIGGER ");
    sb_quote(b, db, name, 1);
    sb_add(b, " AFTER ");
    sb_add(b, ops[w->op]);
    sb_add(b, " ON ");
    sb_add(b, tbl.p);
    sb_add(b, " FOR EACH ROW EXECUTE FUNCTION ");
    sb_add(b, fn.p);
    sb_add(b, ";\nCOMMENT ON FUNCTION ");
    sb_add(b, fn.p);
    sb_add(b, " IS ");
    sb_quote(b, db, mark, 0);
    sb_add(b, ";\nCOMMENT ON TRIGGER ");
    sb_quote(b, db, name, 1);
    sb_add(b, " ON ");
    sb_add(b, tbl.p);
    sb_add(b, " IS ");
    sb_quote(b, db, mark, 0);
    sb_add(b, ";\nCOMMIT");
    free(body.p);
    free(tbl.p);
    free(fn.p);
}

static void watch_name(const sn_watch *w, char name[32])
{
    char hex[17];
    sn_hash_hex(w->channel, strlen(w->channel), hex);
    snprintf(name, 32, "sqlnotify_%s", hex);
}

static int pg_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen)
{
    char name[32];
    int rc = SN_INSTALL_ERROR;
    if (w->op < SN_INSERT || w->op > SN_DELETE) {
        sn_seterr(err, errlen, "unknown operation %d", w->op);
        return SN_INSTALL_ERROR;
    }
    watch_name(w, name);
    size_t marklen = strlen(MARK_PREFIX SQL_VERSION ":") + strlen(w->marker) + 1;
    char *mark = malloc(marklen);
    if (mark == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return SN_INSTALL_ERROR;
    }
    snprintf(mark, marklen, "%s%s", MARK_PREFIX SQL_VERSION ":", w->marker);

    /* Two rounds at most: another process may create it between our lookup and our DDL. */
    for (int round = 0; round < 2; round++) {
        int found;
        char *cur;
        if (trigger_lookup(c, w, name, &found, &cur, err, errlen) < 0)
            break;
        int same = found && cur && strcmp(cur, mark) == 0;
        free(cur);
        if (same) {
            /* Catalog reads only: no lock on the user's table. */
            rc = w->overflow && overflow_ensure(c, err, errlen) < 0 ? SN_INSTALL_ERROR
                                                                    : SN_INSTALL_UNCHANGED;
            break;
        }
        if (found && !replace_changed) {
            rc = SN_INSTALL_KEPT;
            break;
        }
        if (w->overflow && overflow_ensure(c, err, errlen) < 0)
            break;
        sbuf b = {0};
        sb_install_script(&b, c->db, w, name, mark, found);
        if (b.fail) {
            sn_seterr(err, errlen, "%s", b.fail);
            free(b.p);
            break;
        }
        int ok = db_script(c, b.p, NULL, err, errlen) == 0;
        free(b.p);
        if (ok) {
            rc = found ? SN_INSTALL_REPLACED : SN_INSTALL_CREATED;
            break;
        }
        /* A concurrent installer fails us on the function or the trigger ("already
         * exists", duplicate key): look again, it may now be there. */
        if (found)
            break;
    }
    free(mark);
    return rc;
}

static int pg_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[32];
    sbuf b = {0};
    watch_name(w, name);
    sb_add(&b, "BEGIN;\nDROP TRIGGER IF EXISTS ");
    sb_quote(&b, c->db, name, 1);
    sb_add(&b, " ON ");
    sb_quote(&b, c->db, w->schema, 1);
    sb_add(&b, ".");
    sb_quote(&b, c->db, w->table, 1);
    sb_add(&b, ";\nDROP FUNCTION IF EXISTS ");
    sb_quote(&b, c->db, w->schema, 1);
    sb_add(&b, ".");
    sb_quote(&b, c->db, name, 1);
    sb_add(&b, "();\nCOMMIT");
    int rc = -1;
    if (b.fail)
        sn_seterr(err, errlen, "%s", b.fail);
    else
        rc = db_script(c, b.p, NULL, err, errlen);
    free(b.p);
    return rc;
}

static const char our_triggers_sql[] =
    "SELECT n.nspname::text, c.relname::text, t.tgname::text"
    " FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_description d ON d.objoid = t.oid AND d.objsubid = 0"
    "  AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass"
    " WHERE d.description LIKE '" MARK_PREFIX "%'";

static const char our_functions_sql[] =
    "SELECT n.nspname::text, p.proname::text"
    " FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.objsubid = 0"
    "  AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
    " WHERE d.description LIKE '" MARK_PREFIX "%' AND p.pronargs = 0";

/* Build "DROP ... IF EXISTS ...;" for every row of a lookup. */
static void sb_drops(sbuf *b, PGconn *db, const PGresult *res, int triggers)
{
    for (int i = 0; i < PQntuples(res); i++) {
        sb_add(b, triggers ? "DROP TRIGGER IF EXISTS " : "DROP FUNCTION IF EXISTS ");
        if (triggers) {
            sb_quote(b, db, PQgetvalue(res, i, 2), 1);
            sb_add(b, " ON ");
        }
        sb_quote(b, db, PQgetvalue(res, i, 0), 1);
        sb_add(b, ".");
        sb_quote(b, db, PQgetvalue(res, i, 1), 1);
        sb_add(b, triggers ? ";\n" : "();\n");
    }
}

/* Run sql (listing our triggers or functions) and drop what it found, in the open
 * transaction. How many were dropped, or -1 with err. */
static int drop_found(sn_conn *c, const char *sql, int triggers, char *err, size_t errlen)
{
    sbuf b = {0};
    PGresult *res = db_run(c, sql, 0, NULL, 0, NULL, err, errlen);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    sb_drops(&b, c->db, res, triggers);
    PQclear(res);
    if (b.fail) {
        sn_seterr(err, errlen, "%s", b.fail);
        n = -1;
    } else if (b.len > 0 && db_script(c, b.p, NULL, err, errlen) < 0) {
        n = -1;
    }
    free(b.p);
    return n;
}

static int pg_uninstall_all(sn_conn *c, char *err, size_t errlen)
{
    int dropped = -1;
    if (db_script(c, "BEGIN", NULL, err, errlen) < 0)
        return -1;
    /* Triggers first: a function cannot go while a trigger uses it. */
    int ntrig = drop_found(c, our_triggers_sql, 1, err, errlen);
    if (ntrig >= 0 && drop_found(c, our_functions_sql, 0, err, errlen) >= 0 &&
        db_script(c, "COMMIT", NULL, err, errlen) == 0)
        dropped = ntrig;
    if (PQstatus(c->db) == CONNECTION_OK && PQtransactionStatus(c->db) != PQTRANS_IDLE)
        PQclear(PQexec(c->db, "ROLLBACK"));
    return dropped;
}

/* ===== channels ===== */

static long chan_find(const sn_conn *c, const char *channel)
{
    for (size_t i = 0; i < c->nchans; i++)
        if (strcmp(c->chans[i], channel) == 0)
            return (long)i;
    return -1;
}

static int chan_add(sn_conn *c, const char *channel)
{
    if (c->nchans == c->capchans) {
        size_t cap = c->capchans ? c->capchans * 2 : 8;
        char **p = realloc(c->chans, cap * sizeof *p);
        if (p == NULL)
            return -1;
        c->chans = p;
        c->capchans = cap;
    }
    if ((c->chans[c->nchans] = strdup(channel)) == NULL)
        return -1;
    c->nchans++;
    return 0;
}

static void chan_remove(sn_conn *c, size_t i)
{
    free(c->chans[i]);
    memmove(c->chans + i, c->chans + i + 1, (c->nchans - i - 1) * sizeof *c->chans);
    c->nchans--;
}

static void chans_clear(sn_conn *c)
{
    for (size_t i = 0; i < c->nchans; i++)
        free(c->chans[i]);
    c->nchans = 0;
}

/* "LISTEN a" / "UNLISTEN a"; malloc'ed, NULL out of memory. */
static char *listen_sql(sn_conn *c, const char *verb, const char *channel)
{
    sbuf b = {0};
    sb_add(&b, verb);
    sb_add(&b, " ");
    sb_quote(&b, c->db, channel, 1);
    if (b.fail) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ===== delivering ===== */

static int batch_grow(sn_conn *c)
{
    size_t cap = c->cap ? c->cap * 2 : 64;
    PGnotify **notes = realloc(c->notes, cap * sizeof *notes);
    if (notes == NULL)
        return -1;
    c->notes = notes;
    sn_event *events = realloc(c->events, cap * sizeof *events);
    if (events == NULL)
        return -1;
    c->events = events;
    char **fetched = realloc(c->fetched, cap * sizeof *fetched);
    if (fetched == NULL)
        return -1;
    c->fetched = fetched;
    c->cap = cap;
    return 0;
}

/* Take every queued notification, resolve overflow references and hand the batch to the
 * sink in one call, in the order the server sent them (commit order). *got: how many were
 * taken. Returns 1 when some were left queued (out of memory) for another pass.
 * deliver() may re-enter the driver (a handler stopping or closing the notifier): nothing
 * of the listener is touched after it. */
static int ln_drain(sn_conn *c, size_t *got)
{
    size_t n = 0, k = 0;
    int more = 0;
    for (;;) {
        if (n == c->cap && batch_grow(c) < 0) {
            more = 1;
            break;
        }
        PGnotify *nt = PQnotifies(c->ln);
        if (nt == NULL)
            break;
        c->notes[n++] = nt;
    }
    *got = n;
    for (size_t i = 0; i < n; i++) {
        PGnotify *nt = c->notes[i];
        sn_event *ev = &c->events[k];
        c->fetched[i] = NULL;
        ev->channel = nt->relname;
        ev->payload = nt->extra;
        ev->payload_len = strlen(nt->extra);
        if (is_overflow_ref(nt->extra, ev->payload_len)) {
            size_t len = 0;
            char *p = overflow_fetch(c, nt->relname, nt->extra + sizeof OVERFLOW_REF - 1, &len);
            if (p == NULL)
                continue;
            c->fetched[i] = p;
            ev->payload = p;
            ev->payload_len = len;
        }
        k++;
    }
    if (k > 0) {
        c->depth++;
        c->sink.deliver(c->sink.ud, c->events, k);
        c->depth--;
    }
    for (size_t i = 0; i < n; i++) {
        free(c->fetched[i]);
        PQfreemem(c->notes[i]);
    }
    return more;
}

/* ===== listening: connection state machine ===== */

/* The socket can change between PQconnectPoll calls: always stop, set, start. */
static void ln_arm(sn_conn *c, int events)
{
    ev_io_stop(c->loop, &c->io);
    ev_io_set(&c->io, PQsocket(c->ln), events);
    ev_io_start(c->loop, &c->io);
}

static void listener_close(sn_conn *c)
{
    ev_io_stop(c->loop, &c->io); /* also drops a pending fed event */
    ev_timer_stop(c->loop, &c->retry);
    if (c->ln) {
        PQfinish(c->ln);
        c->ln = NULL;
    }
    c->gen++;
}

static double jitter(sn_conn *c)
{
    uint64_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return (double)(x >> 11) / 9007199254740992.0;
}

/* Capped exponential backoff with jitter: 50-100 ms, 100-200 ms, ... 5-10 s. */
static void ln_schedule(sn_conn *c)
{
    double base = BACKOFF_FIRST;
    for (int i = 0; i < c->attempt && base < BACKOFF_CAP; i++)
        base *= 2;
    if (base > BACKOFF_CAP)
        base = BACKOFF_CAP;
    c->attempt++;
    c->state = LN_WAITING;
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_set(&c->retry, base / 2 + jitter(c) * base / 2, 0.);
    ev_timer_start(c->loop, &c->retry);
}

static void ln_lost(sn_conn *c, const char *reason)
{
    char line[600];
    one_line(line, sizeof line, c->fatal[0] ? c->fatal : reason);
    c->fatal[0] = '\0';
    if (!*line)
        snprintf(line, sizeof line, "connection closed");
    if (c->state == LN_READY) {
        sn_logf(&c->sink, SN_LOG_ERROR, "lost connection to %s: %s; reconnecting", c->target, line);
        c->lost_at = ev_time();
        c->attempt = 0;
    } else {
        sn_logf(&c->sink, SN_LOG_DEBUG, "reconnecting to %s: %s", c->target, line);
    }
    listener_close(c);
    ln_schedule(c);
}

static void ln_ready(sn_conn *c)
{
    ev_timer_stop(c->loop, &c->retry);
    c->state = LN_READY;
    c->attempt = 0;
    ln_arm(c, EV_READ);
    sn_logf(&c->sink, SN_LOG_WARN,
            "reconnected to %s after %.1fs; events committed while disconnected were not received "
            "(NOTIFY does not keep them)",
            c->target, ev_time() - c->lost_at);
}

/* Connected again: LISTEN every channel in one round trip, answered in io_cb. */
static void ln_relisten(sn_conn *c)
{
    sbuf b = {0};
    PQsetnonblocking(c->ln, 1);
    PQsetNoticeReceiver(c->ln, on_listener_notice, c);
    c->fatal[0] = '\0';
    if (c->nchans == 0) {
        ln_ready(c);
        return;
    }
    for (size_t i = 0; i < c->nchans; i++) {
        sb_add(&b, i ? "; LISTEN " : "LISTEN ");
        sb_quote(&b, c->db, c->chans[i], 1);
    }
    if (b.fail) {
        free(b.p);
        ln_lost(c, b.fail);
        return;
    }
    int ok = PQsendQuery(c->ln, b.p);
    free(b.p);
    int f = ok ? PQflush(c->ln) : -1;
    if (f < 0) {
        ln_lost(c, PQerrorMessage(c->ln));
        return;
    }
    c->state = LN_BUSY;
    ln_arm(c, EV_READ | (f ? EV_WRITE : 0));
}

/* A reconnect attempt: never blocks; io_cb drives PQconnectPoll. */
static void ln_begin(sn_conn *c)
{
    c->ln = pg_connect(c, 1);
    if (c->ln == NULL) {
        ln_lost(c, "out of memory");
        return;
    }
    if (PQstatus(c->ln) == CONNECTION_BAD) {
        ln_lost(c, PQerrorMessage(c->ln));
        return;
    }
    c->state = LN_CONNECTING;
    ln_arm(c, EV_WRITE); /* as if PQconnectPoll had said PGRES_POLLING_WRITING */
    ev_timer_set(&c->retry, c->connect_timeout, 0.);
    ev_timer_start(c->loop, &c->retry);
}

static void ln_connect_step(sn_conn *c)
{
    switch (PQconnectPoll(c->ln)) {
    case PGRES_POLLING_READING:
        ln_arm(c, EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        ln_arm(c, EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        ln_relisten(c);
        break;
    default:
        ln_lost(c, PQerrorMessage(c->ln));
        break;
    }
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sn_conn *c = w->data;
    (void)loop;
    (void)revents;
    if (c->state == LN_WAITING)
        ln_begin(c);
    else if (c->state == LN_CONNECTING || c->state == LN_BUSY)
        ln_lost(c, "timed out");
}

/* Read the results of the re-LISTEN in flight; 1 once they are all in. */
static int ln_results(sn_conn *c)
{
    while (!PQisBusy(c->ln)) {
        PGresult *r = PQgetResult(c->ln);
        if (r == NULL)
            return c->state == LN_BUSY;
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            char line[600];
            result_err(c->ln, r, NULL, line, sizeof line);
            sn_logf(&c->sink, SN_LOG_WARN, "listener on %s: %s", c->target, line);
        }
        PQclear(r);
    }
    return 0;
}

/* Readable (or writable while a re-LISTEN is being flushed) listener. */
static void ln_input(sn_conn *c, int revents)
{
    unsigned gen = c->gen;
    if (revents & EV_WRITE) {
        int f = PQflush(c->ln);
        if (f < 0) {
            ln_lost(c, PQerrorMessage(c->ln));
            return;
        }
        if (f == 0)
            ln_arm(c, EV_READ);
    }
    for (int pass = 0; pass < 8; pass++) {
        int ok = PQconsumeInput(c->ln);
        if (ok && ln_results(c))
            ln_ready(c);
        /* Events read before a failure are still good: deliver them before reconnecting. */
        size_t got = 0;
        int more = ln_drain(c, &got);
        if (c->dead || gen != c->gen)
            return; /* closed or stopped by a handler */
        if (!ok || PQstatus(c->ln) == CONNECTION_BAD) {
            ln_lost(c, PQerrorMessage(c->ln));
            return;
        }
        if (more)
            break;
        /* TLS may hold decrypted bytes the socket no longer signals: read again while
         * reads keep yielding notifications. */
        if (got == 0 || !PQsslInUse(c->ln))
            return;
    }
    ev_feed_event(c->loop, &c->io, EV_READ); /* the rest on the next loop iteration */
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sn_conn *c = w->data;
    (void)loop;
    c->depth++;
    if (c->state == LN_CONNECTING)
        ln_connect_step(c);
    else if (c->state == LN_BUSY || c->state == LN_READY)
        ln_input(c, revents);
    c->depth--;
    if (c->dead && c->depth == 0)
        conn_free(c);
}

/* ===== listening: synchronous exchanges ===== */

/* Wait for the listener's socket. 0, or -1 when poll itself failed. */
static int ln_poll(sn_conn *c, short events)
{
    struct pollfd p = {.fd = PQsocket(c->ln), .events = events};
    for (;;) {
        int r = poll(&p, 1, -1);
        if (r >= 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Flush what was sent and read every result of it (blocking). 0 ok; -1 the server refused
 * it (err set); -2 the connection was lost (a reconnect has been scheduled). */
static int ln_finish(sn_conn *c, char *err, size_t errlen)
{
    int f, rc = 0;
    while ((f = PQflush(c->ln)) == 1)
        if (ln_poll(c, POLLIN | POLLOUT) < 0 || !PQconsumeInput(c->ln))
            goto lost;
    if (f < 0)
        goto lost;
    for (;;) {
        while (!PQisBusy(c->ln)) {
            PGresult *r = PQgetResult(c->ln);
            if (r == NULL)
                goto done;
            if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0) {
                result_err(c->ln, r, NULL, err, errlen);
                rc = -1;
            }
            PQclear(r);
        }
        /* Read before waiting: TLS may already hold the bytes the socket won't signal. */
        if (!PQconsumeInput(c->ln))
            goto lost;
        if (!PQisBusy(c->ln))
            continue;
        if (ln_poll(c, POLLIN) < 0 || !PQconsumeInput(c->ln))
            goto lost;
    }
done:
    if (PQstatus(c->ln) == CONNECTION_BAD)
        goto lost;
    /* Notifications read while we waited sit in libpq, where the io watcher cannot see
     * them: have io_cb drain them on the next loop iteration (not from inside this call). */
    ev_feed_event(c->loop, &c->io, EV_READ);
    return rc;
lost:
    ln_lost(c, PQerrorMessage(c->ln));
    return -2;
}

/* Run one command on the listener and wait for it. See ln_finish for the results. */
static int ln_exec(sn_conn *c, const char *sql, char *err, size_t errlen)
{
    if (c->state == LN_BUSY) {
        /* A re-LISTEN after a reconnect is still in flight: let it finish first. */
        int rc = ln_finish(c, NULL, 0);
        if (rc == -2)
            return -2;
        ln_ready(c);
    }
    if (c->state != LN_READY)
        return -2;
    if (!PQsendQuery(c->ln, sql)) {
        if (PQstatus(c->ln) == CONNECTION_BAD) {
            ln_lost(c, PQerrorMessage(c->ln));
            return -2;
        }
        result_err(c->ln, NULL, NULL, err, errlen);
        return -1;
    }
    return ln_finish(c, err, errlen);
}

/* The first listen(): connect the listener (blocking, within connect_timeout). */
static int ln_connect_blocking(sn_conn *c, char *err, size_t errlen)
{
    if (c->cap == 0 && batch_grow(c) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    c->ln = pg_connect(c, 1);
    if (c->ln == NULL || PQstatus(c->ln) == CONNECTION_BAD)
        goto fail;
    double deadline = ev_time() + c->connect_timeout;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED)
            goto fail;
        int ms = (int)((deadline - ev_time()) * 1000);
        if (ms <= 0) {
            sn_seterr(err, errlen, "cannot connect to %s: timed out", c->target);
            goto out;
        }
        struct pollfd p = {.fd = PQsocket(c->ln), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            sn_seterr(err, errlen, "cannot connect to %s: %s", c->target, strerror(errno));
            goto out;
        }
        if (r == 0)
            continue; /* the deadline check above reports it */
        st = PQconnectPoll(c->ln);
    }
    PQsetnonblocking(c->ln, 1);
    PQsetNoticeReceiver(c->ln, on_listener_notice, c);
    c->fatal[0] = '\0';
    ev_io_set(&c->io, PQsocket(c->ln), EV_READ);
    ev_io_start(c->loop, &c->io);
    c->state = LN_READY;
    c->attempt = 0;
    return 0;
fail:
    connect_err(c->ln, err, errlen);
out:
    PQfinish(c->ln);
    c->ln = NULL;
    return -1;
}

static int pg_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    if (chan_find(c, channel) >= 0)
        return 0;
    char *sql = listen_sql(c, "LISTEN", channel);
    if (sql == NULL) {
        sn_seterr(err, errlen, "cannot quote channel name (out of memory or invalid encoding)");
        return -1;
    }
    if (c->state == LN_OFF && ln_connect_blocking(c, err, errlen) < 0) {
        free(sql);
        return -1;
    }
    if (chan_add(c, channel) < 0) {
        free(sql);
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    /* During an outage the channel is kept: the reconnect LISTENs it with the others. */
    int rc = c->state == LN_READY || c->state == LN_BUSY ? ln_exec(c, sql, err, errlen) : 0;
    free(sql);
    if (rc == -1) {
        long i = chan_find(c, channel);
        if (i >= 0)
            chan_remove(c, (size_t)i);
        return -1;
    }
    return 0;
}

static void pg_unlisten(sn_conn *c, const char *channel)
{
    long i = chan_find(c, channel);
    char err[512];
    if (i < 0)
        return;
    chan_remove(c, (size_t)i);
    if (c->state != LN_READY && c->state != LN_BUSY)
        return;
    char *sql = listen_sql(c, "UNLISTEN", channel);
    if (sql && ln_exec(c, sql, err, sizeof err) == -1)
        sn_logf(&c->sink, SN_LOG_WARN, "cannot unlisten \"%s\" on %s: %s", channel, c->target, err);
    free(sql);
}

static void pg_stop(sn_conn *c)
{
    char err[512];
    if (c == NULL)
        return;
    if (c->state == LN_READY)
        ln_exec(c, "UNLISTEN *", err, sizeof err);
    listener_close(c);
    c->state = LN_OFF;
    chans_clear(c);
}

/* ===== notify and query ===== */

static int pg_notify(sn_conn *c, const char *channel, const char *payload, size_t len, int overflow,
                     char *err, size_t errlen)
{
    char state[6];
    if (len > MAX_PAYLOAD && !overflow) {
        sn_seterr(err, errlen, "payload of %zu bytes is over the %d-byte notification limit", len,
                  MAX_PAYLOAD);
        return -1;
    }
    if (memchr(payload, '\0', len)) {
        sn_seterr(err, errlen, "payload contains a NUL byte");
        return -1;
    }
    char *text = malloc(len + 1); /* libpq wants NUL-terminated text parameters */
    if (text == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    memcpy(text, payload, len);
    text[len] = '\0';
    const char *vals[2] = {channel, text};
    PGresult *res = NULL;
    if (len <= MAX_PAYLOAD) {
        res = db_run(c, "SELECT pg_catalog.pg_notify($1, $2)", 2, vals, 1, NULL, err, errlen);
    } else {
        /* Park it and send its id, in one statement (one transaction). */
        for (int round = 0; round < 2 && res == NULL; round++) {
            if (overflow_ensure(c, err, errlen) < 0)
                break;
            res = db_run(c,
                         "WITH r AS (INSERT INTO " OVERFLOW_TABLE " (channel, payload)"
                         " VALUES ($1::text, $2::text::jsonb) RETURNING id)"
                         " SELECT pg_catalog.pg_notify($1::text, '" OVERFLOW_REF "' || r.id) FROM r",
                         2, vals, 1, state, err, errlen);
            if (res == NULL && strcmp(state, "42P01") != 0)
                break;
            c->overflow_ready = 0; /* the table went away: create it again */
        }
        if (res)
            c->overflow_ready = 1;
    }
    free(text);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* Leave a COPY started by a user statement, so the connection is usable again. */
static void db_end_copy(PGconn *db, ExecStatusType st)
{
    PGresult *r;
    if (st == PGRES_COPY_IN)
        PQputCopyEnd(db, "COPY FROM STDIN is not supported here");
    else {
        char *buf;
        while (PQgetCopyData(db, &buf, 0) > 0)
            PQfreemem(buf);
    }
    while ((r = PQgetResult(db)) != NULL)
        PQclear(r);
}

static int pg_query(sn_conn *c, const char *sql, int nparams, const sn_value *params, sn_result **out,
                    char *err, size_t errlen)
{
    int rc = -1;
    size_t np = nparams > 0 ? (size_t)nparams : 0;
    const char **vals = calloc(np ? np : 1, sizeof *vals);
    char (*num)[40] = malloc((np ? np : 1) * sizeof *num);
    *out = NULL;
    if (vals == NULL || num == NULL) {
        sn_seterr(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        const sn_value *v = &params[i];
        switch (v->type) {
        case SN_INT:
            snprintf(num[i], sizeof num[i], "%lld", (long long)v->i);
            vals[i] = num[i];
            break;
        case SN_FLOAT:
            if (isnan(v->d))
                snprintf(num[i], sizeof num[i], "NaN");
            else if (isinf(v->d))
                snprintf(num[i], sizeof num[i], "%sInfinity", v->d < 0 ? "-" : "");
            else
                snprintf(num[i], sizeof num[i], "%.17g", v->d);
            vals[i] = num[i];
            break;
        case SN_BOOL:
            vals[i] = v->i ? "true" : "false";
            break;
        case SN_TEXT:
            vals[i] = v->s ? v->s : "";
            break;
        default:
            vals[i] = NULL;
            break;
        }
    }
    if (db_ensure(c, err, errlen) < 0)
        goto done;
    PGresult *res = PQexecParams(c->db, sql, nparams, NULL, vals, NULL, NULL, 0);
    if (PQstatus(c->db) == CONNECTION_BAD) {
        PQclear(res);
        if (db_ensure(c, err, errlen) < 0)
            goto done;
        res = PQexecParams(c->db, sql, nparams, NULL, vals, NULL, NULL, 0);
    }
    ExecStatusType st = PQresultStatus(res);
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE:
        *out = result_from_pg(res, 1);
        break;
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        *out = sn_result_new(0);
        break;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        db_end_copy(c->db, st);
        sn_seterr(err, errlen, "COPY is not supported by query()");
        PQclear(res);
        goto done;
    default:
        result_err(c->db, res, NULL, err, errlen);
        PQclear(res);
        goto done;
    }
    PQclear(res);
    if (*out == NULL)
        sn_seterr(err, errlen, "out of memory");
    else
        rc = 0;
done:
    free(vals);
    free(num);
    return rc;
}

/* ===== descriptor ===== */

static const char *const pg_schemes[] = {"postgresql", "postgres", NULL};

const sn_dialect sn_postgresql_dialect = {
    .name = "postgresql",
    .schemes = pg_schemes,
    .max_payload = MAX_PAYLOAD,
    .open = pg_open,
    .close = pg_close,
    .target = pg_target,
    .describe = pg_describe,
    .install = pg_install,
    .uninstall = pg_uninstall,
    .uninstall_all = pg_uninstall_all,
    .listen = pg_listen,
    .unlisten = pg_unlisten,
    .stop = pg_stop,
    .notify = pg_notify,
    .query = pg_query,
};
