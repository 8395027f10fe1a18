/*
 * query.c — notify() on the control connection (sent at once, outside any transaction
 * the user opened with query()) and query() on the user's own connection.
 */
#include "pg.h"

#include <math.h>
#include <stddef.h>

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

/* A PGresult as an sn_result: typed by column OID, or every cell as text. */
sn_result *pg_result_copy(const PGresult *res, int typed)
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

int pg_notify(sn_conn *c, const char *channel, const char *payload, size_t len, int overflow, char *err,
              size_t errlen)
{
    char state[6] = "";
    if (len > PG_MAX_PAYLOAD && !overflow) {
        sn_seterr(err, errlen, "payload of %zu bytes is over the %d-byte notification limit", len, PG_MAX_PAYLOAD);
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
    if (len <= PG_MAX_PAYLOAD) {
        res = pg_exec(c, &c->ctl, "SELECT pg_catalog.pg_notify($1, $2)", 2, vals, PG_RETRY, NULL, err, errlen);
    } else {
        /* Park it where the channel's listeners fetch from, and send its id: one statement. */
        const char *schema = pg_route_get(c, channel);
        for (int round = 0; round < 2 && res == NULL; round++) {
            sn_sbuf b = {0};
            if (pg_overflow_ensure(c, schema, err, errlen) < 0)
                break;
            sn_sb_add(&b, "WITH r AS (INSERT INTO ");
            pg_sb_qname(&b, c->ctl.conn, schema, PG_OVERFLOW_TABLE);
            sn_sb_add(&b, " (channel, payload) VALUES ($1::text, $2::text::jsonb) RETURNING id)"
                          " SELECT pg_catalog.pg_notify($1::text, '" PG_OVERFLOW_REF "' || r.id) FROM r");
            if (b.fail) {
                sn_seterr(err, errlen, "%s", b.fail);
                free(b.p);
                break;
            }
            res = pg_exec(c, &c->ctl, b.p, 2, vals, 0, state, err, errlen);
            free(b.p);
            if (res == NULL && strcmp(state, "42P01") != 0)
                break;
            pg_overflow_forget(c, schema); /* the table went away: create it again */
        }
    }
    free(text);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* The parameters as libpq's text values: *vals and *num (the numbers' text) to free. */
static int text_params(int nparams, const sn_value *params, const char ***vals, char (**num)[40], char *err,
                       size_t errlen)
{
    size_t np = nparams > 0 ? (size_t)nparams : 0;
    *vals = calloc(np ? np : 1, sizeof **vals);
    *num = malloc((np ? np : 1) * sizeof **num);
    if (*vals == NULL || *num == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < np; i++) {
        const sn_value *v = &params[i];
        char *t = (*num)[i];
        switch (v->type) {
        case SN_INT:
            snprintf(t, sizeof (*num)[i], "%lld", (long long)v->i);
            (*vals)[i] = t;
            break;
        case SN_FLOAT:
            if (isnan(v->d))
                snprintf(t, sizeof (*num)[i], "NaN");
            else if (isinf(v->d))
                snprintf(t, sizeof (*num)[i], "%sInfinity", v->d < 0 ? "-" : "");
            else
                snprintf(t, sizeof (*num)[i], "%.17g", v->d);
            (*vals)[i] = t;
            break;
        case SN_BOOL:
            (*vals)[i] = v->i ? "true" : "false";
            break;
        case SN_TEXT:
            (*vals)[i] = v->s ? v->s : "";
            break;
        default:
            (*vals)[i] = NULL;
            break;
        }
    }
    return 0;
}

/* A result the user gets: rows (typed), or none for a command. */
static sn_result *user_result(PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_TUPLES_OK || st == PGRES_SINGLE_TUPLE ? pg_result_copy(res, 1) : sn_result_new(0);
}

int pg_query(sn_conn *c, const char *sql, int nparams, const sn_value *params, sn_result **out, char *err,
             size_t errlen)
{
    int rc = -1;
    const char **vals = NULL;
    char(*num)[40] = NULL;
    *out = NULL;
    if (c->aq.done) {
        sn_seterr(err, errlen, "the query connection is busy with a statement a handler is waiting for");
        return -1;
    }
    if (text_params(nparams, params, &vals, &num, err, errlen) < 0)
        goto done;
    /* Repeated once on a fresh connection when the old one was found lost, unless the user
     * had a transaction open on it (that transaction is gone: say so instead). */
    PGresult *res = pg_exec(c, &c->user, sql, nparams, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        goto done;
    *out = user_result(res);
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

/* ===== query_start: the same on the loop ===== */

/* The copies kept while the connection opens. */
static void aq_unkeep(pg_aq *a)
{
    for (int i = 0; a->vals && i < a->nparams; i++)
        free(a->vals[i]);
    free(a->vals);
    free(a->sql);
    a->vals = NULL;
    a->sql = NULL;
    a->nparams = 0;
}

static int aq_keep(pg_aq *a, const char *sql, int nparams, const char *const *vals)
{
    a->sql = strdup(sql);
    a->vals = calloc(nparams > 0 ? (size_t)nparams : 1, sizeof *a->vals);
    a->nparams = nparams;
    if (a->sql == NULL || a->vals == NULL)
        return -1;
    for (int i = 0; i < nparams; i++)
        if (vals[i] && (a->vals[i] = strdup(vals[i])) == NULL)
            return -1;
    return 0;
}

/* The statement is over: r, or NULL and a->err. The connection is closed when lost. */
static void aq_end(sn_conn *c, sn_result *r, int lost)
{
    pg_aq *a = &c->aq;
    ev_io_stop(c->loop, &a->io);
    ev_timer_stop(c->loop, &a->timer);
    PQclear(a->keep);
    a->keep = NULL;
    aq_unkeep(a);
    a->connecting = 0;
    if (lost) {
        PQfinish(c->user.conn);
        c->user.conn = NULL;
    }
    int in_tx = c->user.conn && PQtransactionStatus(c->user.conn) != PQTRANS_IDLE;
    void (*done)(void *, sn_result *, int, const char *) = a->done;
    void *ud = a->ud;
    a->done = NULL; /* before the call: done may start the next statement */
    a->ud = NULL;
    done(ud, r, in_tx, r ? NULL : a->err);
}

static void aq_lost(sn_conn *c)
{
    pg_aq *a = &c->aq;
    char why[400] = "";
    pg_one_line(why, sizeof why, c->user.conn ? PQerrorMessage(c->user.conn) : "");
    pg_scrub(c, why, sizeof why);
    sn_seterr(a->err, sizeof a->err, "lost connection to %s: %s%s", c->target, *why ? why : "connection closed",
              a->in_tx ? " (the open transaction was rolled back)" : "");
    aq_end(c, NULL, 1);
}

/* Read what came; end the statement once every result is in. */
static void aq_read(sn_conn *c)
{
    pg_aq *a = &c->aq;
    PGconn *db = c->user.conn;
    if (!PQconsumeInput(db))
        return aq_lost(c);
    while (!PQisBusy(db)) {
        PGresult *r = PQgetResult(db);
        if (r == NULL) {
            if (PQstatus(db) == CONNECTION_BAD)
                return aq_lost(c);
            if (a->failed)
                return aq_end(c, NULL, 0);
            sn_result *out = user_result(a->keep);
            if (out == NULL)
                sn_seterr(a->err, sizeof a->err, "out of memory");
            return aq_end(c, out, 0);
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* nothing to copy with here: the connection goes, and is opened again when used */
            PQclear(r);
            sn_seterr(a->err, sizeof a->err, "COPY is not supported by query()");
            return aq_end(c, NULL, 1);
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY && st != PGRES_SINGLE_TUPLE) {
            if (!a->failed)
                pg_result_err(c, db, r, NULL, a->err, sizeof a->err);
            a->failed = 1;
            PQclear(r);
        } else if (a->failed) {
            PQclear(r);
        } else {
            PQclear(a->keep);
            a->keep = r;
        }
    }
}

/* Watch the query connection's socket for events (it may change while connecting). */
static void aq_arm(sn_conn *c, int events)
{
    pg_aq *a = &c->aq;
    ev_io_stop(c->loop, &a->io);
    ev_io_set(&a->io, PQsocket(c->user.conn), events);
    ev_io_start(c->loop, &a->io);
}

/* Send the statement on the connected query connection; its deadline starts. */
static int aq_send(sn_conn *c, const char *sql, int nparams, const char *const *vals, char *err, size_t errlen)
{
    pg_aq *a = &c->aq;
    PGconn *db = c->user.conn;
    a->in_tx = PQtransactionStatus(db) != PQTRANS_IDLE;
    if (!PQsendQueryParams(db, sql, nparams, NULL, vals, NULL, NULL, 0)) { /* libpq copied the values */
        char why[400];
        pg_one_line(why, sizeof why, PQerrorMessage(db));
        pg_scrub(c, why, sizeof why);
        sn_seterr(err, errlen, "%s", why);
        if (PQstatus(db) == CONNECTION_BAD) {
            PQfinish(c->user.conn);
            c->user.conn = NULL;
        }
        return -1;
    }
    aq_arm(c, EV_READ | EV_WRITE);
    ev_timer_stop(c->loop, &a->timer);
    ev_timer_set(&a->timer, c->stmt_timeout > 0 ? c->stmt_timeout : 1e9, 0.);
    ev_timer_start(c->loop, &a->timer);
    return 0;
}

/* One step of opening the query connection; once it is up, the statement goes. */
static void aq_connect_step(sn_conn *c)
{
    pg_aq *a = &c->aq;
    switch (PQconnectPoll(c->user.conn)) {
    case PGRES_POLLING_READING:
        aq_arm(c, EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        aq_arm(c, EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        a->connecting = 0;
        pg_db_opened(c, &c->user);
        if (aq_send(c, a->sql, a->nparams, (const char *const *)a->vals, a->err, sizeof a->err) < 0)
            return aq_end(c, NULL, 1);
        aq_unkeep(a);
        return;
    default:
        pg_connect_err(c, c->user.conn, NULL, a->err, sizeof a->err);
        return aq_end(c, NULL, 1);
    }
}

static void aq_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    sn_conn *c = (sn_conn *)((char *)w - offsetof(sn_conn, aq.io));
    if (c->aq.connecting)
        return aq_connect_step(c);
    if (revents & EV_WRITE) {
        int f = PQflush(c->user.conn);
        if (f < 0)
            return aq_lost(c);
        if (f == 0) { /* all sent: wait for the answer only */
            ev_io_stop(loop, w);
            ev_io_set(w, PQsocket(c->user.conn), EV_READ);
            ev_io_start(loop, w);
        }
    }
    if (revents & EV_READ)
        aq_read(c);
}

static void aq_on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_conn *c = (sn_conn *)((char *)w - offsetof(sn_conn, aq.timer));
    pg_aq *a = &c->aq;
    if (a->connecting) {
        char why[96];
        snprintf(why, sizeof why, "timed out after %g s (connect_timeout)", c->connect_timeout);
        pg_connect_err(c, c->user.conn, why, a->err, sizeof a->err);
    } else {
        sn_seterr(a->err, sizeof a->err,
                  "statement on %s timed out after %g s (%s in the URL); the query connection was closed%s",
                  c->target, c->stmt_timeout, PG_URL_STATEMENT_TIMEOUT,
                  a->in_tx ? " and its open transaction rolled back" : "");
    }
    aq_end(c, NULL, 1);
}

/* The query connection is opened (or opened again) on the loop too: a server that does not
 * answer holds the statement, not the loop, for connect_timeout. */
int pg_query_start(sn_conn *c, const char *sql, int nparams, const sn_value *params,
                   void (*done)(void *ud, sn_result *r, int in_tx, const char *err), void *ud, char *err,
                   size_t errlen)
{
    pg_aq *a = &c->aq;
    if (a->done) {
        sn_seterr(err, errlen, "the query connection is busy with another statement");
        return -1;
    }
    const char **vals = NULL;
    char(*num)[40] = NULL;
    int rc = -1;
    if (text_params(nparams, params, &vals, &num, err, errlen) < 0)
        goto done;
    if (c->user.conn && PQstatus(c->user.conn) == CONNECTION_OK && PQtransactionStatus(c->user.conn) == PQTRANS_IDLE
        && !PQconsumeInput(c->user.conn)) { /* found lost while idle: opened again */
        PQfinish(c->user.conn);
        c->user.conn = NULL;
    }
    ev_init(&a->io, aq_on_io);
    ev_init(&a->timer, aq_on_timeout);
    if (c->user.conn && PQstatus(c->user.conn) == CONNECTION_OK) {
        if (aq_send(c, sql, nparams, vals, err, errlen) < 0)
            goto done;
    } else {
        PQfinish(c->user.conn);
        c->user.conn = pg_connect_start(c);
        if (c->user.conn == NULL || PQstatus(c->user.conn) == CONNECTION_BAD) {
            pg_connect_err(c, c->user.conn, NULL, err, errlen);
            PQfinish(c->user.conn);
            c->user.conn = NULL;
            goto done;
        }
        if (aq_keep(a, sql, nparams, vals) < 0) {
            aq_unkeep(a);
            PQfinish(c->user.conn);
            c->user.conn = NULL;
            sn_seterr(err, errlen, "out of memory");
            goto done;
        }
        a->connecting = 1;
        a->in_tx = 0;
        aq_arm(c, EV_WRITE); /* as if PQconnectPoll had said PGRES_POLLING_WRITING */
        ev_timer_set(&a->timer, c->connect_timeout, 0.);
        ev_timer_start(c->loop, &a->timer);
    }
    a->done = done;
    a->ud = ud;
    a->failed = 0;
    a->err[0] = '\0';
    rc = 0;
done:
    free(vals);
    free(num);
    return rc;
}

void *pg_query_cancel(sn_conn *c)
{
    pg_aq *a = &c->aq;
    if (a->done == NULL)
        return NULL;
    void *ud = a->ud;
    ev_io_stop(c->loop, &a->io);
    ev_timer_stop(c->loop, &a->timer);
    PQclear(a->keep);
    a->keep = NULL;
    aq_unkeep(a);
    a->connecting = 0;
    a->done = NULL;
    a->ud = NULL;
    PQfinish(c->user.conn); /* the statement's answer would come to whoever asks next */
    c->user.conn = NULL;
    return ud;
}
