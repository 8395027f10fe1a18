/*
 * connection.c — the URL, connecting, and statements with deadlines.
 *
 * Each notifier has up to three libpq connections:
 *   - the control connection (blocking, with deadlines): catalog lookups, trigger DDL,
 *     notify(), overflow fetches and pruning — never inside a transaction of the user's;
 *   - the query connection (blocking, with deadlines, opened at the first query()): the
 *     user's statements and transactions, which nothing of ours shares;
 *   - the listener (listener.c), driven by libev.
 *
 * Nothing waits without a deadline: a connection attempt gets connect_timeout (the
 * URL's, default 10 s), a statement sqlnotify_statement_timeout (default 30 s). A
 * statement past its deadline closes its connection: PQcancel would itself block on
 * a server that does not answer. (A host name is resolved by the system's resolver, with
 * its own timeouts; connect_timeout=0 means our default here, not "forever".) Passwords
 * never reach a message: everything that came from the connection string is scrubbed.
 */
#include "pg.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <time.h>

double pg_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* libpq messages end with a newline and may span lines ("...\n\tIs the server running"):
 * fold them into one line for logs and errors. */
void pg_one_line(char *dst, size_t n, const char *src)
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

/* ===== passwords ===== */

/* Replace every password text we know of by "***", in place (msg holds n bytes). */
void pg_scrub(const sn_conn *c, char *msg, size_t n)
{
    size_t len = strlen(msg), k = 0;
    char *out = malloc(len + 1 > n ? len + 1 : n);
    if (out == NULL) {
        msg[0] = '\0'; /* better nothing than a password */
        return;
    }
    for (const char *p = msg; *p && k + 1 < n;) {
        size_t hit = 0;
        for (int i = 0; i < 4 && !hit; i++) {
            size_t sl = c->secrets[i] ? strlen(c->secrets[i]) : 0;
            /* a one-character "password" would mangle every message */
            if (sl >= 2 && strncmp(p, c->secrets[i], sl) == 0)
                hit = sl;
        }
        if (hit) {
            for (int s = 0; s < 3 && k + 1 < n; s++)
                out[k++] = '*';
            p += hit;
        } else {
            out[k++] = *p++;
        }
    }
    out[k] = '\0';
    memcpy(msg, out, k + 1);
    free(out);
}

static int add_secret(sn_conn *c, const char *s, size_t len)
{
    for (int i = 0; i < 4; i++)
        if (c->secrets[i] == NULL) {
            if (len == 0)
                return 0;
            c->secrets[i] = strndup(s, len);
            return c->secrets[i] ? 0 : -1;
        }
    return 0;
}

/* The password as written in the URL: user:PASSWORD@ and ?password=..., before libpq
 * decodes it (its parse errors quote the raw text). */
static int raw_secrets(sn_conn *c, const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *qm = strchr(p, '?');
    const char *end = qm ? qm : p + strlen(p), *at = NULL;
    for (const char *s = p; s < end; s++)
        if (*s == '@')
            at = s; /* the last one: a password may hold an unescaped '@' */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon && add_secret(c, colon + 1, (size_t)(at - colon - 1)) < 0)
            return -1;
    }
    for (const char *s = qm; s && *s;) {
        s++;
        size_t len = strcspn(s, "&");
        if (strncmp(s, "password=", 9) == 0 && add_secret(c, s + 9, len - 9) < 0)
            return -1;
        if (strncmp(s, "sslpassword=", 12) == 0 && add_secret(c, s + 12, len - 12) < 0)
            return -1;
        s += len;
    }
    return 0;
}

/* ===== the URL ===== */

/* Take our own parameters off the URL's query string (libpq refuses parameters it does not
 * know): *clean gets the rest. 0, or -1 with err. */
static int url_own_params(sn_conn *c, const char *url, char **clean, char *err, size_t errlen)
{
    static const char key[] = PG_URL_STATEMENT_TIMEOUT;
    const char *qm = strchr(url, '?');
    sn_sbuf b = {0};
    sn_sb_addn(&b, url, qm ? (size_t)(qm - url) : strlen(url));
    int first = 1;
    for (const char *p = qm; p && *p;) {
        p++;
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        if (klen == sizeof key - 1 && memcmp(p, key, klen) == 0) {
            char val[64] = "", *endp;
            size_t vlen = eq ? len - klen - 1 : 0;
            if (vlen < sizeof val)
                memcpy(val, eq + 1, vlen), val[vlen] = '\0';
            double v = vlen < sizeof val ? strtod(val, &endp) : 0;
            if (vlen == 0 || vlen >= sizeof val || *endp != '\0' || !isfinite(v) || v <= 0) {
                sn_seterr(err, errlen, "invalid %s \"%.*s\" in the URL (a number of seconds above zero)", key,
                          (int)(vlen < 40 ? vlen : 40), eq ? eq + 1 : "");
                free(b.p);
                return -1;
            }
            c->stmt_timeout = v;
        } else if (len > 0) {
            sn_sb_add(&b, first ? "?" : "&");
            sn_sb_addn(&b, p, len);
            first = 0;
        }
        p += len;
    }
    if (b.fail) {
        sn_seterr(err, errlen, "%s", b.fail);
        free(b.p);
        return -1;
    }
    *clean = b.p;
    return 0;
}

/* libpq's view of the URL: the password (to scrub) and connect_timeout. A URL libpq
 * cannot parse is reported without its password and without libpq's quotation of it. */
static int url_check(sn_conn *c, char *err, size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(c->url, &msg);
    if (opts == NULL) {
        char why[512], shown[512];
        pg_one_line(why, sizeof why, msg ? msg : "out of memory");
        PQfreemem(msg);
        /* libpq ends with ': "<the URI or the token it stopped at>"': never echo it */
        char *quote = strstr(why, ": \"");
        for (char *q = quote; q; q = strstr(q + 1, ": \""))
            quote = q;
        if (quote && why[strlen(why) - 1] == '"')
            *quote = '\0';
        pg_scrub(c, why, sizeof why);
        snprintf(shown, sizeof shown, "%s", c->url);
        pg_scrub(c, shown, sizeof shown);
        sn_seterr(err, errlen, "invalid PostgreSQL URL \"%s\": %s", shown, why);
        return -1;
    }
    int rc = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val == NULL || *o->val == '\0')
            continue;
        if (strcmp(o->keyword, "password") == 0 || strcmp(o->keyword, "sslpassword") == 0)
            rc |= add_secret(c, o->val, strlen(o->val));
        else if (strcmp(o->keyword, "connect_timeout") == 0 && atoi(o->val) > 0)
            c->connect_timeout = atoi(o->val);
    }
    PQconninfoFree(opts);
    if (rc < 0)
        sn_seterr(err, errlen, "out of memory");
    return rc;
}

/* ===== connecting ===== */

/* Our defaults, then the URL, then what must hold whatever the URL says. */
PGconn *pg_connect_start(const sn_conn *c)
{
    char timeout[32];
    const char *kw[10], *val[10];
    int n = 0;
    snprintf(timeout, sizeof timeout, "%d", (int)ceil(c->connect_timeout));
    kw[n] = "connect_timeout";
    val[n++] = timeout;
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
    kw[n] = "dbname"; /* expanded here: the URL's parameters override the ones above */
    val[n++] = c->url;
    kw[n] = "client_encoding"; /* names and payloads cross the interface as UTF-8 */
    val[n++] = "UTF8";
    kw[n] = NULL;
    val[n] = NULL;
    return PQconnectStartParams(kw, val, 1);
}

void pg_connect_err(const sn_conn *c, PGconn *conn, const char *why, char *err, size_t errlen)
{
    char line[700];
    const char *db = conn ? PQdb(conn) : NULL, *host = conn ? PQhost(conn) : NULL;
    const char *port = conn ? PQport(conn) : NULL;
    pg_one_line(line, sizeof line, why ? why : conn ? PQerrorMessage(conn) : "out of memory");
    if (c->target[0])
        sn_seterr(err, errlen, "cannot connect to %s: %s", c->target, *line ? line : "unknown error");
    else
        sn_seterr(err, errlen, "cannot connect to database \"%s\" on %s:%s: %s", db ? db : "",
                  host && *host ? host : "localhost", port && *port ? port : "5432",
                  *line ? line : "unknown error");
    pg_scrub(c, err, errlen);
}

int pg_wait(int fd, short events, double deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        double left = deadline - pg_clock();
        if (left <= 0)
            return 0;
        int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
        int r = poll(&p, 1, ms);
        if (r > 0)
            return p.revents ? p.revents : events;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

int pg_connect_finish(sn_conn *c, PGconn **conn, char *err, size_t errlen)
{
    PGconn *pc = *conn;
    if (pc == NULL || PQstatus(pc) == CONNECTION_BAD)
        goto fail;
    double deadline = pg_clock() + c->connect_timeout;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED)
            goto fail;
        int r = pg_wait(PQsocket(pc), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (r == 0) {
            char why[96];
            snprintf(why, sizeof why, "timed out after %g s (connect_timeout)", c->connect_timeout);
            pg_connect_err(c, pc, why, err, errlen);
            goto out;
        }
        if (r < 0) {
            pg_connect_err(c, pc, strerror(errno), err, errlen);
            goto out;
        }
        st = PQconnectPoll(pc);
    }
    return 0;
fail:
    pg_connect_err(c, pc, NULL, err, errlen);
out:
    PQfinish(pc);
    *conn = NULL;
    return -1;
}

/* Notices ("... does not exist, skipping") would go to stderr by default: route them. */
void pg_on_notice(void *arg, const PGresult *res)
{
    sn_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    char line[900];
    pg_one_line(line, sizeof line, msg ? msg : PQresultErrorMessage(res));
    int level = sev && strcmp(sev, "WARNING") == 0 ? SN_LOG_WARN : SN_LOG_DEBUG;
    sn_logf(&c->sink, level, "%s: %s", c->target, line);
}

/* ===== statements with deadlines ===== */

/* The best message for a failed result: the server's primary text, else libpq's. */
void pg_result_err(const sn_conn *c, PGconn *conn, const PGresult *res, char state[6], char *err,
                   size_t errlen)
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
    pg_one_line(line, sizeof line, m);
    sn_seterr(err, errlen, "%s", *line ? line : "out of memory");
    if (c)
        pg_scrub(c, err, errlen);
}

/* Make sure d is connected, opening it (within connect_timeout) when it is not. */
int pg_db_ensure(sn_conn *c, pg_db *d, char *err, size_t errlen)
{
    if (d->conn && PQstatus(d->conn) == CONNECTION_OK)
        return 0;
    PQfinish(d->conn);
    d->conn = pg_connect_start(c);
    if (pg_connect_finish(c, &d->conn, err, errlen) < 0)
        return -1;
    pg_db_opened(c, d);
    return 0;
}

/* d->conn has just connected: set it up, and say so when it is back. */
void pg_db_opened(sn_conn *c, pg_db *d)
{
    PQsetNoticeReceiver(d->conn, pg_on_notice, c);
    PQsetnonblocking(d->conn, 1); /* sends never block: we wait with poll and a deadline */
    if (d->up_before)
        sn_logf(&c->sink, SN_LOG_INFO, "%s to %s re-established", d->what, c->target);
    d->up_before = 1;
}

enum { EX_DONE = 0, EX_FAILED = -1, EX_LOST = -2, EX_TIMEOUT = -3 };

/* Read a COPY OUT the user started to its end, so the connection stays usable. */
static int copy_drain(PGconn *db, double deadline)
{
    for (;;) {
        char *buf;
        int n = PQgetCopyData(db, &buf, 1);
        if (n > 0) {
            PQfreemem(buf);
            continue;
        }
        if (n < 0)
            return EX_DONE;
        int r = pg_wait(PQsocket(db), POLLIN, deadline);
        if (r == 0)
            return EX_TIMEOUT;
        if (r < 0 || !PQconsumeInput(db))
            return EX_LOST;
    }
}

/* Send what is queued and read every result, within the deadline. *out: the last result
 * when all succeeded. */
static int collect(sn_conn *c, PGconn *db, double deadline, PGresult **out, char state[6], char *err,
                   size_t errlen)
{
    PGresult *keep = NULL;
    int failed = 0, rc = EX_DONE, f;
    *out = NULL;
    while ((f = PQflush(db)) == 1) {
        int r = pg_wait(PQsocket(db), POLLIN | POLLOUT, deadline);
        if (r == 0)
            return EX_TIMEOUT;
        if (r < 0 || ((r & POLLIN) && !PQconsumeInput(db)))
            return EX_LOST;
    }
    if (f < 0)
        return EX_LOST;
    for (;;) {
        while (PQisBusy(db)) {
            int r = pg_wait(PQsocket(db), POLLIN, deadline);
            if (r == 0) {
                rc = EX_TIMEOUT;
                goto done;
            }
            if (r < 0 || !PQconsumeInput(db)) {
                rc = EX_LOST;
                goto done;
            }
        }
        PGresult *r = PQgetResult(db);
        if (r == NULL)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(r);
            if (st == PGRES_COPY_IN)
                PQputCopyEnd(db, "COPY FROM STDIN is not supported here");
            else if ((rc = copy_drain(db, deadline)) != EX_DONE)
                goto done;
            if (!failed)
                sn_seterr(err, errlen, "COPY is not supported by query()");
            failed = 1;
            continue;
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY &&
            st != PGRES_SINGLE_TUPLE) {
            if (!failed)
                pg_result_err(c, db, r, state, err, errlen);
            failed = 1;
            PQclear(r);
            continue;
        }
        if (failed) {
            PQclear(r);
        } else {
            PQclear(keep);
            keep = r;
        }
    }
    if (PQstatus(db) == CONNECTION_BAD)
        rc = EX_LOST;
    else if (failed)
        rc = EX_FAILED;
done:
    if (rc == EX_DONE)
        *out = keep;
    else
        PQclear(keep);
    return rc;
}

PGresult *pg_exec(sn_conn *c, pg_db *d, const char *sql, int n, const char *const *vals, int flags,
                  char state[6], char *err, size_t errlen)
{
    char why[600] = "";
    if (state)
        state[0] = '\0';
    for (int attempt = 0;; attempt++) {
        why[0] = '\0';
        if (pg_db_ensure(c, d, err, errlen) < 0)
            return NULL;
        PGconn *db = d->conn;
        int in_tx = PQtransactionStatus(db) != PQTRANS_IDLE;
        double deadline = pg_clock() + c->stmt_timeout;
        int sent = flags & PG_SCRIPT ? PQsendQuery(db, sql)
                                     : PQsendQueryParams(db, sql, n, NULL, vals, NULL, NULL, 0);
        PGresult *res = NULL;
        int rc = sent ? collect(c, db, deadline, &res, state, why, sizeof why)
                      : PQstatus(db) == CONNECTION_BAD ? EX_LOST : EX_FAILED;
        if (rc == EX_DONE)
            return res;
        if (rc == EX_FAILED) {
            if (!sent)
                pg_result_err(c, db, NULL, state, why, sizeof why);
            sn_seterr(err, errlen, "%s", why);
            return NULL;
        }
        if (rc == EX_TIMEOUT) {
            sn_seterr(err, errlen,
                      "statement on %s timed out after %g s (%s in the URL); the %s was closed%s", c->target,
                      c->stmt_timeout, PG_URL_STATEMENT_TIMEOUT, d->what,
                      in_tx ? " and its open transaction rolled back" : "");
            PQfinish(d->conn);
            d->conn = NULL;
            return NULL;
        }
        /* lost: the server is gone, or went while we were idle */
        if (!why[0])
            pg_one_line(why, sizeof why, PQerrorMessage(db));
        pg_scrub(c, why, sizeof why);
        PQfinish(d->conn);
        d->conn = NULL;
        if ((flags & PG_RETRY) && attempt == 0 && !in_tx)
            continue;
        sn_seterr(err, errlen, "lost connection to %s: %s%s", c->target, *why ? why : "connection closed",
                  in_tx ? " (the open transaction was rolled back)" : "");
        return NULL;
    }
}

int pg_script(sn_conn *c, const char *sql, char state[6], char *err, size_t errlen)
{
    PGresult *res = pg_exec(c, &c->ctl, sql, 0, NULL, PG_SCRIPT, state, err, errlen);
    if (res) {
        PQclear(res);
        return 0;
    }
    if (c->ctl.conn && PQtransactionStatus(c->ctl.conn) != PQTRANS_IDLE) {
        char e2[256];
        PQclear(pg_exec(c, &c->ctl, "ROLLBACK", 0, NULL, 0, NULL, e2, sizeof e2));
    }
    return -1;
}

/* ===== open, close, target ===== */

sn_conn *pg_open(const char *url, struct ev_loop *loop, const sn_sink *sink, const sn_options *opt,
                 char *err, size_t errlen)
{
    sn_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->sink = *sink;
    c->connect_timeout = PG_DEFAULT_CONNECT_TIMEOUT;
    c->stmt_timeout = PG_DEFAULT_STATEMENT_TIMEOUT;
    c->ctl.what = "control connection";
    c->user.what = "query connection";
    c->retention = opt && opt->retention > 0 ? opt->retention : 3600;
    c->consumer_retention = opt && opt->consumer_retention > 0 ? opt->consumer_retention : 7 * 86400.;
    c->start_beginning = opt && opt->start_at_beginning;
    c->shares = opt && opt->shares > 0 ? opt->shares : 0;
    c->lease = opt && opt->lease > 0 ? opt->lease : 10.;
    if (opt && opt->consumer && *opt->consumer && (c->consumer = strdup(opt->consumer)) == NULL)
        goto oom;
    if (raw_secrets(c, url) < 0 || url_own_params(c, url, &c->url, err, errlen) < 0)
        goto fail;
    if (url_check(c, err, errlen) < 0)
        goto fail;
    if (opt && opt->application && *opt->application && (c->app = strdup(opt->application)) == NULL)
        goto oom;
    if (opt && opt->overflow_schema && *opt->overflow_schema &&
        (c->overflow_schema = strdup(opt->overflow_schema)) == NULL)
        goto oom;
    if (pg_db_ensure(c, &c->ctl, err, errlen) < 0)
        goto fail;
    const char *host = PQhost(c->ctl.conn), *port = PQport(c->ctl.conn);
    snprintf(c->target, sizeof c->target, "database \"%s\" on %s:%s", PQdb(c->ctl.conn),
             host && *host ? host : "localhost", port && *port ? port : "5432");
    pg_scrub(c, c->target, sizeof c->target);

    double every = c->retention < 60 ? c->retention : 60;
    if (every < 1)
        every = 1;
    ev_timer_init(&c->prune, pg_prune_cb, every, every);
    c->prune.data = c;
    ev_timer_start(loop, &c->prune);
    ev_unref(loop); /* housekeeping must not keep the loop alive */
    pg_ln_init(c);
    return c;
oom:
    sn_seterr(err, errlen, "out of memory");
fail:
    PQfinish(c->ctl.conn);
    c->ctl.conn = NULL;
    pg_conn_free(c);
    return NULL;
}

void pg_conn_free(sn_conn *c)
{
    for (size_t i = 0; i < c->nchans; i++)
        free(c->chans[i]);
    free(c->chans);
    free(c->q);
    pg_overflow_free(c);
    pg_jr_forget_all(c);
    for (int i = 0; i < 4; i++)
        free(c->secrets[i]);
    free(c->overflow_schema);
    free(c->consumer);
    free(c->url);
    free(c->app);
    free(c);
}

void pg_close(sn_conn *c)
{
    if (c == NULL || c->dead)
        return;
    pg_ln_shutdown(c);
    pg_jr_stop(c);
    pg_query_cancel(c); /* the runtime took its ud back first */
    if (ev_is_active(&c->prune)) {
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &c->prune);
    }
    PQfinish(c->ctl.conn);
    PQfinish(c->user.conn);
    c->ctl.conn = c->user.conn = NULL;
    if (c->depth > 0)
        c->dead = 1; /* closed from a callback: freed when it unwinds */
    else
        pg_conn_free(c);
}

const char *pg_target(sn_conn *c)
{
    return c ? c->target : "";
}
