/*
 * cursor.c — durable mode's reader: one connection of its own, driven by libev with
 * libpq's asynchronous calls, that LISTENs on the journal's wake-up channel and pages
 * through the consumer's batches with sqlnotify.fetch() (journal.c). In durable mode it
 * stands in for the live listener (listen/unlisten/stop come here; see driver.c).
 *
 * One statement is in flight at a time: LISTEN after connecting, then fetch (carrying the
 * ack of the page before) or maintain. The handlers' ack is written by the next fetch,
 * sent as soon as the page was handled, so nothing waits on the loop. Wake-ups: the
 * NOTIFY, and a poll timer (10 ms after events flowed, doubling to 250 ms when idle).
 */
#include "pg.h"

#define JR_PAGE "500"
#define JR_PAGE_N 500
#define JR_POLL_MIN 0.01
#define JR_POLL_MAX 0.25
#define JR_MAINTAIN_EVERY 5.0
#define JR_ROTATE_SECONDS "20"

enum jr_state { JR_OFF, JR_WAITING, JR_CONNECTING, JR_IDLE, JR_BUSY };
enum jr_query { JQ_NONE, JQ_LISTEN, JQ_FETCH, JQ_MAINTAIN };

struct pg_jr {
    sn_conn *c;
    PGconn *db;
    int state, query;
    ev_io io;
    ev_timer retry;    /* reconnect backoff, then the attempt's (or the statement's) deadline */
    ev_timer poll;     /* next fetch */
    ev_timer maint;
    double poll_every;
    int want_fetch, want_maint;
    int attempt;
    double lost_at;
    int64_t acked;     /* last id the handlers finished, not yet written */
    char **chans;
    size_t nchans, cap;
    char *chan_array;  /* the channels as a text[] literal, for fetch */
};

static void jr_next(struct pg_jr *j);

static void jr_arm(struct pg_jr *j, int events)
{
    ev_io_stop(j->c->loop, &j->io);
    ev_io_set(&j->io, PQsocket(j->db), events);
    ev_io_start(j->c->loop, &j->io);
}

static void jr_deadline(struct pg_jr *j, double after)
{
    ev_timer_stop(j->c->loop, &j->retry);
    ev_timer_set(&j->retry, after, 0.);
    ev_timer_start(j->c->loop, &j->retry);
}

static void jr_disconnect(struct pg_jr *j)
{
    ev_io_stop(j->c->loop, &j->io);
    ev_timer_stop(j->c->loop, &j->retry);
    ev_timer_stop(j->c->loop, &j->poll);
    PQfinish(j->db);
    j->db = NULL;
    j->query = JQ_NONE;
}

/* Lost or failed: log once per outage, retry with capped exponential backoff. */
static void jr_lost(struct pg_jr *j, const char *why)
{
    char msg[512];
    pg_one_line(msg, sizeof msg, why && *why ? why : "connection lost");
    pg_scrub(j->c, msg, sizeof msg);
    if (j->lost_at == 0) {
        j->lost_at = pg_clock();
        sn_logf(&j->c->sink, SN_LOG_ERROR, "lost the journal reader's connection to %s: %s (reconnecting)",
                j->c->target, msg);
    }
    jr_disconnect(j);
    j->acked = 0; /* unwritten acks are redelivered: at least once */
    double delay = 0.1 * (1 << (j->attempt < 6 ? j->attempt : 6));
    j->attempt++;
    j->state = JR_WAITING;
    jr_deadline(j, delay > 5 ? 5 : delay);
}

static void jr_connect(struct pg_jr *j)
{
    j->db = pg_connect_start(j->c);
    if (j->db == NULL || PQstatus(j->db) == CONNECTION_BAD) {
        jr_lost(j, j->db ? PQerrorMessage(j->db) : "out of memory");
        return;
    }
    j->state = JR_CONNECTING;
    jr_arm(j, EV_WRITE);
    jr_deadline(j, j->c->connect_timeout);
}

static int jr_send(struct pg_jr *j, int query)
{
    int ok;
    if (query == JQ_LISTEN) {
        ok = PQsendQuery(j->db, "LISTEN \"" PG_JOURNAL_CHANNEL "\"");
    } else if (query == JQ_FETCH) {
        char acked[32];
        snprintf(acked, sizeof acked, "%lld", (long long)j->acked);
        const char *vals[3] = {j->c->consumer, acked, j->chan_array ? j->chan_array : "{}"};
        ok = PQsendQueryParams(j->db, "SELECT id, channel, payload FROM sqlnotify.fetch($1, $2, $3, " JR_PAGE ")",
                               3, NULL, vals, NULL, NULL, 0);
    } else {
        char ret[32];
        snprintf(ret, sizeof ret, "%.3f", j->c->consumer_retention);
        const char *vals[1] = {ret};
        ok = PQsendQueryParams(j->db, "SELECT sqlnotify.maintain($1, " JR_ROTATE_SECONDS ")", 1, NULL, vals, NULL,
                               NULL, 0);
    }
    if (!ok) {
        jr_lost(j, PQerrorMessage(j->db));
        return -1;
    }
    j->query = query;
    j->state = JR_BUSY;
    jr_deadline(j, j->c->stmt_timeout);
    jr_arm(j, PQflush(j->db) == 1 ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

/* Hand a page to the runtime; it acks (pg_jr_ack) what its handlers finished. 1 when the
 * connection was closed from a handler. */
static int jr_deliver(struct pg_jr *j, PGresult *res)
{
    sn_conn *c = j->c;
    int n = PQntuples(res);
    sn_event *ev = malloc((size_t)(n > 0 ? n : 1) * sizeof *ev);
    if (ev == NULL) {
        sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: a page of the journal is read again");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        ev[i].seq = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        ev[i].channel = PQgetvalue(res, i, 1);
        ev[i].payload = PQgetvalue(res, i, 2);
        ev[i].payload_len = (size_t)PQgetlength(res, i, 2);
    }
    c->depth++;
    c->sink.deliver(c->sink.ud, ev, (size_t)n);
    c->depth--;
    free(ev);
    if (c->dead) {
        if (c->depth == 0)
            pg_conn_free(c);
        return 1;
    }
    return 0;
}

static void jr_result(struct pg_jr *j)
{
    PGresult *res, *page = NULL;
    char why[512] = "";
    while ((res = PQgetResult(j->db)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !*why)
            snprintf(why, sizeof why, "%s", PQresultErrorMessage(res));
        if (st == PGRES_TUPLES_OK && j->query == JQ_FETCH && page == NULL)
            page = res;
        else
            PQclear(res);
    }
    int query = j->query;
    j->query = JQ_NONE;
    j->state = JR_IDLE;
    ev_timer_stop(j->c->loop, &j->retry);
    if (*why && query == JQ_MAINTAIN && PQstatus(j->db) == CONNECTION_OK) {
        /* housekeeping failed (a lock, a permission): say so, keep reading */
        char msg[512];
        pg_one_line(msg, sizeof msg, why);
        sn_logf(&j->c->sink, SN_LOG_ERROR, "journal maintenance failed on %s: %s", j->c->target, msg);
    } else if (*why) {
        PQclear(page);
        jr_lost(j, why);
        return;
    }
    if (query == JQ_LISTEN && j->lost_at > 0) {
        double outage = pg_clock() - j->lost_at;
        j->lost_at = 0;
        sn_logf(&j->c->sink, SN_LOG_WARN, "journal reader reconnected to %s after %.1f s; nothing was missed",
                j->c->target, outage);
        sn_conn *c = j->c;
        if (c->sink.reconnected) {
            c->depth++;
            c->sink.reconnected(c->sink.ud, outage, 0);
            c->depth--;
            if (c->dead) {
                if (c->depth == 0)
                    pg_conn_free(c);
                return;
            }
            if (c->jr != j)
                return;
        }
    }
    j->attempt = 0;
    if (query == JQ_LISTEN)
        j->want_fetch = 1;
    if (query == JQ_FETCH) {
        j->acked = 0; /* written by that fetch */
        int n = page ? PQntuples(page) : 0;
        if (n > 0) {
            sn_conn *c = j->c;
            int closed = jr_deliver(j, page);
            PQclear(page);
            if (closed || c->jr != j)
                return;
            j->poll_every = JR_POLL_MIN;
            if (n >= JR_PAGE_N) {
                j->want_fetch = 1; /* a full page: read on at once (the fetch writes the ack) */
            } else { /* caught up: the ack rides the next fetch, 10 ms on, with what came meanwhile */
                ev_timer_stop(j->c->loop, &j->poll);
                ev_timer_set(&j->poll, JR_POLL_MIN, 0.);
                ev_timer_start(j->c->loop, &j->poll);
            }
        } else {
            PQclear(page);
            ev_timer_stop(j->c->loop, &j->poll);
            ev_timer_set(&j->poll, j->poll_every, 0.);
            ev_timer_start(j->c->loop, &j->poll);
            j->poll_every = j->poll_every * 2 > JR_POLL_MAX ? JR_POLL_MAX : j->poll_every * 2;
        }
    }
    jr_next(j);
}

/* Nothing in flight: send what is wanted, maintenance first. */
static void jr_next(struct pg_jr *j)
{
    if (j->state != JR_IDLE)
        return;
    if (j->want_maint) {
        j->want_maint = 0;
        jr_send(j, JQ_MAINTAIN);
    } else if (j->want_fetch) {
        j->want_fetch = 0;
        ev_timer_stop(j->c->loop, &j->poll);
        jr_send(j, JQ_FETCH);
    } else {
        jr_arm(j, EV_READ); /* wake-ups */
    }
}

static void jr_notifies(struct pg_jr *j)
{
    PGnotify *nt;
    while ((nt = PQnotifies(j->db)) != NULL) {
        j->want_fetch = 1;
        PQfreemem(nt);
    }
}

static void jr_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct pg_jr *j = w->data;
    if (j->state == JR_CONNECTING) {
        PostgresPollingStatusType ps = PQconnectPoll(j->db);
        if (ps == PGRES_POLLING_FAILED) {
            jr_lost(j, PQerrorMessage(j->db));
        } else if (ps == PGRES_POLLING_OK) {
            PQsetnonblocking(j->db, 1);
            PQsetNoticeReceiver(j->db, pg_on_notice, j->c);
            ev_timer_stop(j->c->loop, &j->retry);
            jr_send(j, JQ_LISTEN);
        } else {
            jr_arm(j, ps == PGRES_POLLING_READING ? EV_READ : EV_WRITE);
        }
        return;
    }
    if ((revents & EV_WRITE) && PQflush(j->db) == 0)
        jr_arm(j, EV_READ);
    if (!(revents & EV_READ))
        return;
    if (!PQconsumeInput(j->db)) {
        jr_lost(j, PQerrorMessage(j->db));
        return;
    }
    jr_notifies(j);
    if (j->state == JR_BUSY) {
        if (PQisBusy(j->db))
            return;
        jr_result(j); /* may free j (closed from a handler) */
        return;
    }
    jr_next(j);
}

static void jr_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pg_jr *j = w->data;
    if (j->state == JR_WAITING)
        jr_connect(j);
    else /* an attempt or a statement past its deadline */
        jr_lost(j, j->state == JR_CONNECTING ? "timed out connecting" : "timed out waiting for the server");
}

static void jr_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pg_jr *j = w->data;
    j->want_fetch = 1;
    jr_next(j);
}

static void jr_maint_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pg_jr *j = w->data;
    j->want_maint = 1;
    jr_next(j);
}

/* '{"a","b"}' with every channel quoted for an array literal */
static int jr_chan_array(struct pg_jr *j)
{
    pg_sbuf b = {0};
    pg_sb_add(&b, "{");
    for (size_t i = 0; i < j->nchans; i++) {
        pg_sb_add(&b, i ? ",\"" : "\"");
        for (const char *p = j->chans[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                pg_sb_add(&b, "\\");
            pg_sb_addn(&b, p, 1);
        }
        pg_sb_add(&b, "\"");
    }
    pg_sb_add(&b, "}");
    if (b.fail) {
        free(b.p);
        return -1;
    }
    free(j->chan_array);
    j->chan_array = b.p;
    return 0;
}

/* ===== the driver's entry points in durable mode ===== */

int pg_jr_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    struct pg_jr *j = c->jr;
    if (j == NULL) {
        if (pg_journal_register(c, err, errlen) < 0)
            return -1;
        if ((j = calloc(1, sizeof *j)) == NULL)
            goto oom;
        j->c = c;
        j->poll_every = JR_POLL_MIN;
        ev_init(&j->io, jr_io_cb);
        j->io.data = j;
        ev_init(&j->retry, jr_retry_cb);
        j->retry.data = j;
        ev_init(&j->poll, jr_poll_cb);
        j->poll.data = j;
        ev_timer_init(&j->maint, jr_maint_cb, 1., JR_MAINTAIN_EVERY);
        j->maint.data = j;
        c->jr = j;
    }
    for (size_t i = 0; i < j->nchans; i++)
        if (strcmp(j->chans[i], channel) == 0)
            return 0;
    if (j->nchans == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 8;
        char **p = realloc(j->chans, cap * sizeof *p);
        if (p == NULL)
            goto oom;
        j->chans = p;
        j->cap = cap;
    }
    if ((j->chans[j->nchans] = strdup(channel)) == NULL)
        goto oom;
    j->nchans++;
    if (jr_chan_array(j) < 0)
        goto oom;
    if (j->state == JR_OFF) {
        ev_timer_start(c->loop, &j->maint);
        ev_unref(c->loop); /* housekeeping must not keep the loop alive */
        jr_connect(j);
    } else {
        j->want_fetch = 1;
        jr_next(j);
    }
    return 0;
oom:
    sn_seterr(err, errlen, "out of memory");
    return -1;
}

void pg_jr_unlisten(sn_conn *c, const char *channel)
{
    struct pg_jr *j = c->jr;
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->nchans; i++) {
        if (strcmp(j->chans[i], channel) == 0) {
            free(j->chans[i]);
            j->chans[i] = j->chans[--j->nchans];
            jr_chan_array(j);
            return;
        }
    }
}

/* Stop reading; the cursor stays in the database (an unwritten ack is redelivered). */
void pg_jr_stop(sn_conn *c)
{
    struct pg_jr *j = c->jr;
    if (j == NULL)
        return;
    if (j->acked > 0 && j->state != JR_BUSY) {
        /* a clean stop writes the last ack (on the control connection, within its deadline)
         * so a restart does not redeliver the page the handlers finished */
        char seq[32], state[6] = "", err[256];
        snprintf(seq, sizeof seq, "%lld", (long long)j->acked);
        const char *vals[2] = {c->consumer, seq};
        PQclear(pg_exec(c, &c->ctl,
                        "UPDATE sqlnotify.consumers SET pos = $2, last_seen = now() WHERE name = $1"
                        " AND snap_hi IS NOT NULL AND pos < $2",
                        2, vals, 0, state, err, sizeof err));
    }
    if (j->state != JR_OFF) {
        jr_disconnect(j);
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &j->maint);
    }
    for (size_t i = 0; i < j->nchans; i++)
        free(j->chans[i]);
    free(j->chans);
    free(j->chan_array);
    free(j);
    c->jr = NULL;
}

void pg_jr_ack(sn_conn *c, int64_t seq)
{
    if (c->jr && seq > c->jr->acked)
        c->jr->acked = seq;
}
