/*
 * listener.c — the listener connection: LISTEN/NOTIFY traffic driven by libev.
 *
 * States: OFF -> (first listen, blocking within the deadlines) READY; on a loss
 * WAITING -> CONNECTING -> BUSY (re-LISTEN of every channel) -> READY, each step
 * non-blocking and bounded by a timer, with capped exponential backoff between attempts.
 *
 * Notifications are moved from libpq into our queue as soon as they are parsed, and
 * always before the connection is closed, so those read just before a loss are
 * delivered, not freed. The queue is delivered from the loop (the io watcher or a
 * zero-delay timer), never from inside a call the user made; the notice that the
 * listener is back (sink.reconnected) sits in the queue where it happened.
 */
#include "pg.h"

#include <poll.h>


static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents);

void pg_ln_init(sn_conn *c)
{
    ev_init(&c->io, io_cb);
    c->io.data = c;
    ev_init(&c->retry, retry_cb);
    c->retry.data = c;
    ev_init(&c->kick, kick_cb);
    c->kick.data = c;
    c->state = LN_OFF;
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

static void chan_remove(sn_conn *c, const char *channel)
{
    long i = chan_find(c, channel);
    if (i < 0)
        return;
    free(c->chans[i]);
    memmove(c->chans + i, c->chans + i + 1, (c->nchans - (size_t)i - 1) * sizeof *c->chans);
    c->nchans--;
}

static void chans_clear(sn_conn *c)
{
    for (size_t i = 0; i < c->nchans; i++)
        free(c->chans[i]);
    c->nchans = 0;
}

/* "LISTEN a" / "UNLISTEN a; ..." for one channel, or every channel (channel NULL). */
static char *listen_sql(sn_conn *c, const char *verb, const char *channel)
{
    sn_sbuf b = {0};
    for (size_t i = 0; channel ? i == 0 : i < c->nchans; i++) {
        sn_sb_add(&b, i ? "; " : "");
        sn_sb_add(&b, verb);
        sn_sb_add(&b, " ");
        pg_sb_quote(&b, c->ln ? c->ln : c->ctl.conn, channel ? channel : c->chans[i], 1);
    }
    if (b.fail) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ===== the queue ===== */

static int q_push(sn_conn *c, PGnotify *nt, double outage)
{
    if (c->nq == c->capq) {
        size_t cap = c->capq ? c->capq * 2 : 64;
        pg_item *q = realloc(c->q, cap * sizeof *q);
        if (q == NULL)
            return -1;
        c->q = q;
        c->capq = cap;
    }
    c->q[c->nq].nt = nt;
    c->q[c->nq].outage = outage;
    c->nq++;
    return 0;
}

static void q_clear(sn_conn *c)
{
    for (size_t i = 0; i < c->nq; i++)
        if (c->q[i].nt)
            PQfreemem(c->q[i].nt);
    c->nq = 0;
}

/* Move every notification libpq has parsed into the queue. How many. */
static size_t ln_take(sn_conn *c)
{
    PGnotify *nt;
    size_t n = 0;
    while (c->ln && (nt = PQnotifies(c->ln)) != NULL) {
        if (q_push(c, nt, 0) < 0) {
            sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: a notification on channel \"%s\" was dropped",
                    nt->relname);
            PQfreemem(nt);
        }
        n++;
    }
    return n;
}

/* Have the loop deliver the queue soon. */
static void kick_start(sn_conn *c)
{
    if (c->nq > 0 && !ev_is_active(&c->kick)) {
        ev_timer_set(&c->kick, 0., 0.);
        ev_timer_start(c->loop, &c->kick);
    }
}

/* Deliver the queue in order: the events in batches, the reconnect notice where it
 * happened. The batch is this call's own: a handler may call back into the driver, stop,
 * close, or run the loop (a nested flush delivers what came after). */
static void ln_flush(sn_conn *c)
{
    if (c->nq == 0)
        return;
    pg_item *items = c->q;
    size_t total = c->nq, n = total, cap = c->capq;
    c->q = NULL;
    c->nq = c->capq = 0;
    sn_event *ev = malloc(n * sizeof *ev);
    char **fetched = calloc(n, sizeof *fetched);
    if (ev == NULL || fetched == NULL) {
        sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: %zu notifications were dropped", n);
        n = 0;
    }
    c->depth++;
    for (size_t i = 0; i < n && !c->dead;) {
        size_t k = 0;
        for (; i < n && items[i].nt; i++) {
            PGnotify *nt = items[i].nt;
            sn_event *e = &ev[k];
            e->channel = nt->relname;
            e->payload = nt->extra;
            e->payload_len = strlen(nt->extra);
            e->seq = 0;
            e->written = 0;
            if (pg_is_overflow_ref(nt->extra, e->payload_len)) {
                size_t len = 0;
                char *p = pg_overflow_fetch(c, nt->relname, nt->extra + sizeof PG_OVERFLOW_REF - 1, &len);
                if (p == NULL)
                    continue; /* logged */
                fetched[i] = p;
                e->payload = p;
                e->payload_len = len;
            }
            k++;
        }
        if (k > 0)
            c->sink.deliver(c->sink.ud, ev, k);
        if (i < n && !c->dead) { /* the notice: the listener came back here */
            if (c->sink.reconnected)
                c->sink.reconnected(c->sink.ud, items[i].outage, 1);
            i++;
        }
    }
    c->depth--;
    for (size_t i = 0; i < total; i++) {
        if (fetched)
            free(fetched[i]);
        if (items[i].nt)
            PQfreemem(items[i].nt);
    }
    free(ev);
    free(fetched);
    if (c->q == NULL && !c->dead) {
        c->q = items; /* keep the array for the next batch */
        c->capq = cap;
    } else {
        free(items);
    }
}

/* ===== the connection's states ===== */

/* The socket can change between PQconnectPoll calls: always stop, set, start. */
static void ln_arm(sn_conn *c, int events)
{
    ev_io_stop(c->loop, &c->io);
    ev_io_set(&c->io, PQsocket(c->ln), events);
    ev_io_start(c->loop, &c->io);
}

/* Close the listener connection, keeping what it had received. */
static void listener_close(sn_conn *c)
{
    ev_io_stop(c->loop, &c->io); /* also drops a pending fed event */
    ev_timer_stop(c->loop, &c->retry);
    if (c->ln) {
        ln_take(c);
        PQfinish(c->ln);
        c->ln = NULL;
    }
    c->gen++;
}

/* The next attempt after the shared backoff (sn_backoff: 50-100 ms, 100-200 ms, ... 5-10 s). */
static void ln_schedule(sn_conn *c)
{
    c->state = LN_WAITING;
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_set(&c->retry, sn_backoff_next(&c->backoff), 0.);
    ev_timer_start(c->loop, &c->retry);
}

static void ln_lost(sn_conn *c, const char *reason)
{
    char line[600];
    pg_one_line(line, sizeof line, c->fatal[0] ? c->fatal : reason);
    pg_scrub(c, line, sizeof line);
    c->fatal[0] = '\0';
    if (!*line)
        snprintf(line, sizeof line, "connection closed");
    if (c->state == LN_READY) {
        sn_logf(&c->sink, SN_LOG_ERROR, "lost connection to %s: %s; reconnecting", c->target, line);
        c->lost_at = pg_clock();
        sn_backoff_reset(&c->backoff);
    } else {
        sn_logf(&c->sink, SN_LOG_DEBUG, "reconnecting to %s: %s", c->target, line);
    }
    listener_close(c);
    ln_schedule(c);
    kick_start(c);
}

/* Listening on every channel. After an outage: say so, and queue the notice. */
static void ln_ready(sn_conn *c)
{
    ev_timer_stop(c->loop, &c->retry);
    c->state = LN_READY;
    sn_backoff_reset(&c->backoff);
    ln_arm(c, EV_READ);
    if (c->lost_at > 0) {
        double outage = pg_clock() - c->lost_at;
        c->lost_at = 0;
        sn_logf(&c->sink, SN_LOG_WARN,
                "reconnected to %s after %.1fs; events committed while disconnected were not received "
                "(NOTIFY does not keep them)",
                c->target, outage);
        if (q_push(c, NULL, outage) < 0)
            sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: the reconnect notice was dropped");
        kick_start(c);
    }
}

/* The server says why it drops a connection ("terminating connection due to administrator
 * command") as an unsolicited FATAL that libpq hands to the notice hook: keep it. */
static void on_listener_notice(void *arg, const PGresult *res)
{
    sn_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (sev && msg && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        pg_one_line(c->fatal, sizeof c->fatal, msg);
    else
        pg_on_notice(arg, res);
}

static void ln_setup(sn_conn *c)
{
    PQsetnonblocking(c->ln, 1);
    PQsetNoticeReceiver(c->ln, on_listener_notice, c);
    c->fatal[0] = '\0';
}

/* Connected again: LISTEN every channel in one round trip, answered in io_cb. */
static void ln_relisten(sn_conn *c)
{
    ln_setup(c);
    if (c->nchans == 0) {
        ln_ready(c);
        return;
    }
    char *sql = listen_sql(c, "LISTEN", NULL);
    if (sql == NULL) {
        ln_lost(c, "cannot quote a channel name");
        return;
    }
    int ok = PQsendQuery(c->ln, sql);
    free(sql);
    int f = ok ? PQflush(c->ln) : -1;
    if (f < 0) {
        ln_lost(c, PQerrorMessage(c->ln));
        return;
    }
    c->state = LN_BUSY;
    ln_arm(c, EV_READ | (f ? EV_WRITE : 0));
    ev_timer_stop(c->loop, &c->retry);
    ev_timer_set(&c->retry, c->stmt_timeout, 0.);
    ev_timer_start(c->loop, &c->retry);
}

/* A reconnect attempt: never blocks on the server; io_cb drives PQconnectPoll. */
static void ln_begin(sn_conn *c)
{
    c->ln = pg_connect_start(c);
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
            return 1;
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            char line[600];
            pg_result_err(c, c->ln, r, NULL, line, sizeof line);
            sn_logf(&c->sink, SN_LOG_WARN, "listener on %s: %s", c->target, line);
        }
        PQclear(r);
    }
    return 0;
}

/* Readable (or writable while a re-LISTEN is being flushed) listener. */
static void ln_input(sn_conn *c, int revents)
{
    if (revents & EV_WRITE) {
        int f = PQflush(c->ln);
        if (f < 0) {
            ln_lost(c, PQerrorMessage(c->ln));
            return;
        }
        if (f == 0)
            ln_arm(c, EV_READ);
    }
    int ok = PQconsumeInput(c->ln);
    if (ok && c->state == LN_BUSY && ln_results(c))
        ln_ready(c);
    size_t got = ln_take(c);
    if (!ok || PQstatus(c->ln) == CONNECTION_BAD)
        ln_lost(c, PQerrorMessage(c->ln)); /* what was read before is in the queue */
    else if (got > 0 && PQsslInUse(c->ln))
        ev_feed_event(c->loop, &c->io, EV_READ); /* TLS may hold bytes the socket won't signal */
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
    ln_flush(c);
    c->depth--;
    if (c->dead && c->depth == 0)
        pg_conn_free(c);
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    sn_conn *c = w->data;
    (void)loop;
    (void)revents;
    c->depth++;
    ln_flush(c);
    c->depth--;
    if (c->dead && c->depth == 0)
        pg_conn_free(c);
}

/* ===== synchronous exchanges (listen, unlisten: calls the user made) ===== */

/* Flush what was sent and read every result of it, within the statement deadline.
 * 0 ok; -1 the server refused it (err); -2 lost or timed out (err; a reconnect is
 * scheduled). */
static int ln_finish(sn_conn *c, char *err, size_t errlen)
{
    double deadline = pg_clock() + c->stmt_timeout;
    char why[600];
    int f, rc = 0, r;
    while ((f = PQflush(c->ln)) == 1) {
        if ((r = pg_wait(PQsocket(c->ln), POLLIN | POLLOUT, deadline)) == 0)
            goto timeout;
        if (r < 0 || ((r & POLLIN) && !PQconsumeInput(c->ln)))
            goto lost;
    }
    if (f < 0)
        goto lost;
    for (;;) {
        while (!PQisBusy(c->ln)) {
            PGresult *res = PQgetResult(c->ln);
            if (res == NULL)
                goto done;
            if (PQresultStatus(res) != PGRES_COMMAND_OK && rc == 0) {
                pg_result_err(c, c->ln, res, NULL, err, errlen);
                rc = -1;
            }
            PQclear(res);
        }
        /* Read before waiting: TLS may already hold the bytes the socket won't signal. */
        if (!PQconsumeInput(c->ln))
            goto lost;
        if (!PQisBusy(c->ln))
            continue;
        if ((r = pg_wait(PQsocket(c->ln), POLLIN, deadline)) == 0)
            goto timeout;
        if (r < 0 || !PQconsumeInput(c->ln))
            goto lost;
    }
done:
    if (PQstatus(c->ln) == CONNECTION_BAD)
        goto lost;
    ln_take(c);
    kick_start(c);
    return rc;
timeout:
    snprintf(why, sizeof why, "timed out after %g s (%s in the URL)", c->stmt_timeout, PG_URL_STATEMENT_TIMEOUT);
    sn_seterr(err, errlen, "listener on %s: %s; reconnecting", c->target, why);
    ln_lost(c, why);
    return -2;
lost:
    pg_one_line(why, sizeof why, c->fatal[0] ? c->fatal : PQerrorMessage(c->ln));
    pg_scrub(c, why, sizeof why);
    sn_seterr(err, errlen, "lost connection to %s: %s", c->target, *why ? why : "connection closed");
    ln_lost(c, why);
    return -2;
}

/* Run one command on the listener and wait for it (see ln_finish). sql NULL: only finish
 * the re-LISTEN in flight. */
static int ln_exec(sn_conn *c, const char *sql, char *err, size_t errlen)
{
    if (c->state == LN_BUSY) {
        char e2[300];
        int rc = ln_finish(c, e2, sizeof e2);
        if (rc == -2) {
            sn_seterr(err, errlen, "%s", e2);
            return -2;
        }
        if (rc == -1)
            sn_logf(&c->sink, SN_LOG_WARN, "listener on %s: %s", c->target, e2);
        ln_ready(c);
    }
    if (c->state != LN_READY) {
        sn_seterr(err, errlen, "the listener on %s is reconnecting", c->target);
        return -2;
    }
    if (sql == NULL)
        return 0;
    if (!PQsendQuery(c->ln, sql)) {
        if (PQstatus(c->ln) == CONNECTION_BAD) {
            char why[600];
            pg_one_line(why, sizeof why, PQerrorMessage(c->ln));
            sn_seterr(err, errlen, "lost connection to %s: %s", c->target, why);
            ln_lost(c, why);
            return -2;
        }
        pg_result_err(c, c->ln, NULL, NULL, err, errlen);
        return -1;
    }
    return ln_finish(c, err, errlen);
}

/* Bring the listener up now, blocking within the deadlines: connect and LISTEN every
 * channel. During an outage the background attempts go on when this one fails. */
static int ln_up_now(sn_conn *c, char *err, size_t errlen)
{
    int outage = c->state != LN_OFF;
    listener_close(c);
    c->ln = pg_connect_start(c);
    if (pg_connect_finish(c, &c->ln, err, errlen) < 0) {
        if (outage)
            ln_schedule(c);
        else
            c->state = LN_OFF;
        return -1;
    }
    ln_setup(c);
    ln_arm(c, EV_READ);
    c->state = LN_BUSY;
    int rc = 0;
    if (c->nchans > 0) {
        char *sql = listen_sql(c, "LISTEN", NULL);
        if (sql == NULL) {
            sn_seterr(err, errlen, "cannot quote a channel name");
            rc = -1;
        } else if (!PQsendQuery(c->ln, sql)) {
            pg_result_err(c, c->ln, NULL, NULL, err, errlen);
            rc = -1;
        } else {
            rc = ln_finish(c, err, errlen);
        }
        free(sql);
    }
    if (rc == -2)
        return -1; /* lost again: ln_finish scheduled the next attempt */
    if (rc == -1) {
        if (!outage)
            c->lost_at = 0;
        ln_lost(c, err);
        return -1;
    }
    ln_ready(c);
    return 0;
}

int pg_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    int known = chan_find(c, channel) >= 0, rc;
    if (known && c->state == LN_READY)
        return 0;
    if (!known && chan_add(c, channel) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    if (c->state == LN_READY || c->state == LN_BUSY) {
        char *sql = known ? NULL : listen_sql(c, "LISTEN", channel);
        if (!known && sql == NULL) {
            sn_seterr(err, errlen, "cannot quote the channel name (out of memory or invalid encoding)");
            rc = -1;
        } else {
            rc = ln_exec(c, sql, err, errlen);
        }
        free(sql);
        if (rc == -2) /* found lost on the way: one attempt to come back at once */
            rc = ln_up_now(c, err, errlen);
    } else {
        rc = ln_up_now(c, err, errlen); /* LISTENs the new channel with the others */
    }
    if (rc != 0 && !known)
        chan_remove(c, channel);
    return rc == 0 ? 0 : -1;
}

void pg_unlisten(sn_conn *c, const char *channel)
{
    char err[512];
    if (chan_find(c, channel) < 0)
        return;
    chan_remove(c, channel);
    if (c->state != LN_READY && c->state != LN_BUSY)
        return;
    char *sql = listen_sql(c, "UNLISTEN", channel);
    if (sql && ln_exec(c, sql, err, sizeof err) == -1)
        sn_logf(&c->sink, SN_LOG_WARN, "cannot unlisten \"%s\" on %s: %s", channel, c->target, err);
    free(sql);
}

/* Closing the connection ends every LISTEN: no UNLISTEN round trip to wait for. */
void pg_stop(sn_conn *c)
{
    if (c == NULL)
        return;
    listener_close(c);
    ev_timer_stop(c->loop, &c->kick);
    q_clear(c);
    c->state = LN_OFF;
    c->lost_at = 0;
    chans_clear(c);
}

void pg_ln_shutdown(sn_conn *c)
{
    pg_stop(c);
}
