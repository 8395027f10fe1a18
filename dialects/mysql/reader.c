/*
 * reader.c — the journal reader: a connection of its own, driven by Connector/C's
 * non-blocking calls (*_start / *_cont) on the libev loop; nothing here blocks the loop
 * except the final cursor save at stop, which has a deadline.
 *
 * One round: fetch the rows above `high` and the pending ids (consumers.c), deliver the
 * ones on our channels, advance the position (durable mode: up to what the runtime
 * acknowledged) and save it; then, now and then, probe an old gap and prune the journal.
 * Wake-up is an adaptive poll: the next fetch follows at once after a full batch, 1 ms
 * after a partial one, and backs off to 16 ms while the journal is idle.
 *
 * Gaps: an id below high that is not visible is pending. It is delivered when it
 * commits. After GAP_GRACE seconds a locking probe (SELECT ... FOR UPDATE NOWAIT, read
 * committed) asks whether a transaction still holds a row there: the inserting
 * transaction holds its row's lock until it ends, so "lock wait" means it may still
 * commit (it stays pending, however long), and nothing there means it rolled back (or
 * the value was never used): the id is dropped. The grace covers the instant between
 * a writer taking the value and inserting the row. A pending id never holds back rows
 * above it: they are delivered as they commit.
 *
 * Durable mode (a consumer name): the position lives in the consumer's row; one process
 * reads a consumer at a time (GET_LOCK on the reader's session), others stand by and
 * take over when its session ends.
 *
 * Durable triggers (once a second): a table made again has lost them (see check_triggers).
 *
 * Held (hold(), durable only): the batch's handlers finish after deliver returned. The
 * tick then reads nothing; it saves the position (acks outside deliver move st as they
 * come), keeps last_seen fresh, probes and prunes. The lock is the session's, so it stays
 * while the session does; after a lost session st is read back and the held batch's acks
 * applied again. Release reads on from st: what was not acked comes again.
 */
#include "my.h"

#include <poll.h>

#define BATCH 5000          /* rows per fetch */
#define MAX_RANGES 1000     /* pending ranges before new rows wait for old gaps to settle */
#define MIN_INTERVAL 0.001
#define MAX_INTERVAL 0.016
#define GAP_GRACE 2.0       /* seconds before a gap is probed */
#define PROBE_EVERY 1.0     /* seconds between two probes of one gap */
#define HEARTBEAT 30.0      /* seconds between two saves of an idle consumer (last_seen) */
#define PRUNE_EVERY 10.0
#define PRUNE_BATCH 5000
#define PRUNE_ROUNDS 20     /* batches per prune turn */
#define BACK_EVERY 1.0      /* seconds between two looks for ids that went back */
#define TRIGGERS_EVERY 1.0  /* seconds between two looks for the durable triggers (tables made again), */
#define TRIGGERS_SHARE 0.02 /* or more: the looks take at most this share of the reader's time */
#define TRIGGERS_MAX 30.0   /* (however slow the server) */
#define STANDBY_RETRY 1.0
#define SYNC_DEADLINE 2.0   /* the final save at stop */

enum { CALL_NONE, CALL_CONNECT, CALL_QUERY, CALL_STORE };
enum { NEXT_CONNECT, NEXT_LOCK, NEXT_POLL };

static void fetch(sn_conn *c);
static void after_round(sn_conn *c);
static void teardown(sn_conn *c);
static size_t apply(sn_conn *c);

static int durable(const sn_conn *c) { return c->consumer != NULL; }

/* ===== the connector's calls on the loop ===== */

static void arm(sn_conn *c, int status)
{
    my_reader *r = &c->r;
    ev_io_stop(c->loop, &r->io);
    ev_timer_stop(c->loop, &r->timeout);
    int events = (status & (MYSQL_WAIT_READ | MYSQL_WAIT_EXCEPT) ? EV_READ : 0) | (status & MYSQL_WAIT_WRITE ? EV_WRITE : 0);
    if (events) {
        ev_io_set(&r->io, mysql_get_socket(r->m), events);
        ev_io_start(c->loop, &r->io);
    }
    if (status & MYSQL_WAIT_TIMEOUT) {
        ev_timer_set(&r->timeout, mysql_get_timeout_value_ms(r->m) / 1000.0, 0.);
        ev_timer_start(c->loop, &r->timeout);
    }
}

/* The call in flight returned status: wait again, or go on to the next part, or finish. */
static void advance(sn_conn *c, int status)
{
    my_reader *r = &c->r;
    for (;;) {
        if (status != 0) {
            r->status = status;
            if (!r->syncing)
                arm(c, status);
            return;
        }
        int ok;
        if (r->call == CALL_CONNECT) {
            ok = r->ret_conn != NULL;
        } else if (r->call == CALL_QUERY && r->ret_int == 0 && mysql_field_count(r->m) > 0) {
            r->call = CALL_STORE;
            status = mysql_store_result_start(&r->res, r->m);
            continue;
        } else {
            ok = r->call == CALL_QUERY ? r->ret_int == 0 : r->res != NULL;
        }
        r->call = CALL_NONE;
        void (*done)(sn_conn *, int) = r->done;
        r->done = NULL;
        if (r->syncing) {
            r->sync_ok = ok;
            return;
        }
        done(c, ok);
        return;
    }
}

static void resume(sn_conn *c, int ready)
{
    my_reader *r = &c->r;
    int status = 0;
    switch (r->call) {
    case CALL_CONNECT: status = mysql_real_connect_cont(&r->ret_conn, r->m, ready); break;
    case CALL_QUERY: status = mysql_real_query_cont(&r->ret_int, r->m, ready); break;
    case CALL_STORE: status = mysql_store_result_cont(&r->res, r->m, ready); break;
    default: return;
    }
    advance(c, status);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    sn_conn *c = w->data;
    ev_io_stop(loop, w);
    ev_timer_stop(loop, &c->r.timeout);
    resume(c, (revents & EV_READ ? MYSQL_WAIT_READ : 0) | (revents & EV_WRITE ? MYSQL_WAIT_WRITE : 0));
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    sn_conn *c = w->data;
    ev_io_stop(loop, &c->r.io);
    resume(c, MYSQL_WAIT_TIMEOUT);
}

/* Run r->sql; done(c, ok) follows, with r->res holding rows when the statement has them. */
static void exec(sn_conn *c, void (*done)(sn_conn *, int))
{
    my_reader *r = &c->r;
    if (r->res) {
        mysql_free_result(r->res);
        r->res = NULL;
    }
    if (r->sql.fail) {
        sn_logf(&c->sink, SN_LOG_ERROR, "journal reader: out of memory");
        r->sql.fail = NULL;
        r->sql.len = 0;
        r->next = NEXT_POLL;
        ev_timer_set(&r->tick, 1.0, 0.);
        ev_timer_start(c->loop, &r->tick);
        return;
    }
    r->call = CALL_QUERY;
    r->done = done;
    advance(c, mysql_real_query_start(&r->ret_int, r->m, r->sql.p, r->sql.len));
}

/* The same, to completion, without the loop: poll() with a deadline. 0 or -1. */
static int exec_sync(sn_conn *c, double deadline)
{
    my_reader *r = &c->r;
    r->syncing = 1;
    r->sync_ok = 0;
    if (r->call == CALL_NONE) {
        r->call = CALL_QUERY;
        advance(c, mysql_real_query_start(&r->ret_int, r->m, r->sql.p, r->sql.len));
    }
    while (r->call != CALL_NONE) {
        double left = deadline - my_now();
        if (left <= 0)
            break;
        int ms = (int)(left * 1000) + 1;
        if (r->status & MYSQL_WAIT_TIMEOUT && (int)mysql_get_timeout_value_ms(r->m) < ms)
            ms = (int)mysql_get_timeout_value_ms(r->m);
        struct pollfd p = {mysql_get_socket(r->m),
                           (short)((r->status & (MYSQL_WAIT_READ | MYSQL_WAIT_EXCEPT) ? POLLIN : 0) |
                                   (r->status & MYSQL_WAIT_WRITE ? POLLOUT : 0)),
                           0};
        int n = poll(&p, 1, ms);
        if (n < 0)
            continue;
        resume(c, n == 0 ? MYSQL_WAIT_TIMEOUT
                         : (p.revents & (POLLIN | POLLHUP | POLLERR) ? MYSQL_WAIT_READ : 0) |
                               (p.revents & POLLOUT ? MYSQL_WAIT_WRITE : 0));
    }
    r->syncing = 0;
    int ok = r->call == CALL_NONE && r->sync_ok;
    if (r->res) {
        mysql_free_result(r->res);
        r->res = NULL;
    }
    return ok ? 0 : -1;
}

static void later(sn_conn *c, int next, double after)
{
    my_reader *r = &c->r;
    r->next = next;
    ev_timer_stop(c->loop, &r->tick);
    ev_timer_set(&r->tick, after, 0.);
    ev_timer_start(c->loop, &r->tick);
}

/* ===== failures ===== */

static void lost(sn_conn *c, const char *why)
{
    my_reader *r = &c->r;
    if (r->down_since == 0) {
        r->down_since = my_now();
        sn_logf(&c->sink, SN_LOG_WARN, "lost the journal reader's connection to %s: %s; reconnecting", c->target, why);
    }
    teardown(c);
    later(c, NEXT_CONNECT, sn_backoff_next(&r->backoff));
}

/* A statement failed: a lost connection reconnects; anything else is logged (once per 30 s)
 * and the round is tried again a second later. */
static void failed(sn_conn *c, const char *what)
{
    my_reader *r = &c->r;
    if (my_conn_lost(mysql_errno(r->m))) {
        lost(c, mysql_error(r->m));
        return;
    }
    double now = my_now();
    if (mysql_errno(r->m) == 1146) { /* a table of the journal was dropped: make it again */
        char err[512];
        c->journal_ok = 0;
        /* Its ids go on well above every position anyone could hold (ours, the consumers'),
         * or readers would wait above the rows the new table writes. */
        if (my_journal_make(c, r->st.high + 1000000, err, sizeof err) == 0) {
            sn_logf(&c->sink, SN_LOG_WARN, "the journal's tables in database \"%s\" were dropped; made them again"
                    " (changes written meanwhile are lost)", c->p.db);
            later(c, r->locked || !durable(c) ? NEXT_POLL : NEXT_LOCK, 0);
            return;
        }
    }
    if (now - r->err_logged >= 30) {
        if (r->err_suppressed)
            sn_logf(&c->sink, SN_LOG_ERROR, "%s failed: %s (and %d more failure(s) since the last report)", what,
                    mysql_error(r->m), r->err_suppressed);
        else
            sn_logf(&c->sink, SN_LOG_ERROR, "%s failed: %s", what, mysql_error(r->m));
        r->err_logged = now;
        r->err_suppressed = 0;
    } else {
        r->err_suppressed++;
    }
    later(c, r->locked || !durable(c) ? NEXT_POLL : NEXT_LOCK, 1.0);
}

/* ===== connecting, and the consumer's lock ===== */

/* After Lua ran (a delivery or a notice): close() or stop() from it were only noted, and are
 * done here. 1: done, the caller returns at once. */
static int closed_or_stopped(sn_conn *c)
{
    if (c->closing) {
        my_conn_free(c);
        return 1;
    }
    if (c->r.stop_pending) {
        c->r.stop_pending = 0;
        my_stop(c);
        return 1;
    }
    return 0;
}

static void lock(sn_conn *c);

static void connected(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        lost(c, mysql_error(r->m));
        return;
    }
    if (r->down_since > 0) {
        double outage = my_now() - r->down_since;
        r->down_since = 0;
        sn_logf(&c->sink, SN_LOG_INFO, "journal reader reconnected to %s after %.1f s", c->target, outage);
        if (c->sink.reconnected) { /* the journal kept what was written meanwhile */
            c->in_deliver = 1;      /* the notice may stop or close us: done once it returned */
            c->sink.reconnected(c->sink.ud, outage, 0);
            c->in_deliver = 0;
            if (closed_or_stopped(c))
                return;
        }
    }
    sn_backoff_reset(&r->backoff);
    if (durable(c))
        lock(c);
    else
        later(c, NEXT_POLL, 0);
}

static void connect_reader(sn_conn *c)
{
    my_reader *r = &c->r;
    char err[256];
    if ((r->m = my_connect(c, 1, err, sizeof err)) == NULL) {
        lost(c, err);
        return;
    }
    const my_params *p = &c->p;
    r->call = CALL_CONNECT;
    r->done = connected;
    advance(c, mysql_real_connect_start(&r->ret_conn, r->m, p->host && *p->host ? p->host : NULL, p->user, p->pass,
                                        p->db, p->port, p->socket, 0));
}

static void load(sn_conn *c);

static void locked(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "taking the consumer's lock");
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(r->res);
    if (row == NULL || row[0] == NULL || strcmp(row[0], "1") != 0) {
        if (!r->standby_said)
            sn_logf(&c->sink, SN_LOG_INFO,
                    "consumer \"%s\" is being read by another process; this one stands by and takes over when it stops",
                    c->consumer);
        r->standby_said = 1;
        later(c, NEXT_LOCK, STANDBY_RETRY);
        return;
    }
    if (r->standby_said)
        sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\": took over from the process that was reading it", c->consumer);
    r->standby_said = 0;
    r->locked = 1;
    load(c);
}

static void members(sn_conn *c, void (*next)(sn_conn *));

/* Standing by: the lock only while our tables include every other live member's. */
static void lock_now(sn_conn *c)
{
    my_reader *r = &c->r;
    if (r->blocked) { /* said by the look */
        later(c, NEXT_LOCK, STANDBY_RETRY);
        return;
    }
    r->sql.len = 0;
    sn_sb_add(&r->sql, "SELECT GET_LOCK(");
    my_sb_lit(&r->sql, r->lockname, strlen(r->lockname));
    sn_sb_add(&r->sql, ", 0)");
    exec(c, locked);
}

static void lock(sn_conn *c) { members(c, lock_now); }

/* The consumer's row: where it stands, and whether pruning went past it while it was away. */
static void loaded(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "reading the consumer's position");
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(r->res);
    double now = my_now();
    if (row == NULL) { /* dropped while we read it: carry on from here and write it back */
        r->dirty = 1;
    } else {
        r->st.high = atoll(row[0]);
        if (my_state_parse_pending(&r->st, row[1] ? row[1] : "", now) < 0)
            sn_logf(&c->sink, SN_LOG_WARN, "consumer \"%s\": its pending ids \"%.200s\" do not read; ignored",
                    c->consumer, row[1] ? row[1] : "");
        r->dirty = 0;
    }
    r->started = 1;
    int64_t below = row && row[2] ? atoll(row[2]) : 0, low = my_state_low(&r->st);
    if (below > low) {
        sn_logf(&c->sink, SN_LOG_ERROR,
                "consumer \"%s\" was away longer than the journal kept its rows: ids %lld to %lld were pruned before it"
                " read them and are not delivered",
                c->consumer, (long long)low, (long long)below - 1);
        while (r->st.n > 0 && r->st.r[0].hi < below)
            my_state_drop(&r->st, 0);
        if (r->st.n > 0 && r->st.r[0].lo < below)
            r->st.r[0].lo = below;
        if (r->st.high < below - 1)
            r->st.high = below - 1;
        r->dirty = 1;
    }
    if (r->held) { /* the held batch's acks stand: the handlers did that work */
        r->applied = 0;
        apply(c);
    }
    r->last_save = now;
    later(c, NEXT_POLL, 0);
}

static void load(sn_conn *c)
{
    my_reader *r = &c->r;
    r->sql.len = 0;
    sn_sb_addf(&r->sql, "SELECT pos, pending, (SELECT below FROM %s WHERE id = 1) FROM %s WHERE name = ", c->pruned,
               c->consumers);
    my_sb_lit(&r->sql, c->consumer, strlen(c->consumer));
    exec(c, loaded);
}

/* ===== a round: fetch, deliver, advance ===== */

/* st sees the batch's rows up to what the runtime acknowledged (all of them in live mode,
 * or once its last event is acked), from where it stopped. Returns how many it has seen. */
static size_t apply(sn_conn *c)
{
    my_reader *r = &c->r;
    size_t upto = r->nrows, i;
    if (durable(c) && r->nev > 0 && r->acked < r->ev_row[r->nev - 1])
        upto = r->acked < 0 ? 0 : (size_t)r->acked + 1;
    double now = my_now();
    for (i = r->applied; i < upto; i++)
        if (my_state_see(&r->st, r->ids[i], now) < 0) {
            sn_logf(&c->sink, SN_LOG_ERROR, "journal reader: out of memory");
            break;
        }
    if (durable(c) && i > r->applied)
        r->dirty = r->dirty_late = 1;
    if (i > r->applied)
        r->applied = i;
    return r->applied;
}

static int reserve(my_reader *r, size_t n)
{
    if (n <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 256;
    while (cap < n)
        cap *= 2;
    int64_t *ids = realloc(r->ids, cap * sizeof *ids);
    if (ids)
        r->ids = ids;
    sn_event *ev = realloc(r->ev, cap * sizeof *ev);
    if (ev)
        r->ev = ev;
    int *rows = realloc(r->ev_row, cap * sizeof *rows);
    if (rows)
        r->ev_row = rows;
    if (!ids || !ev || !rows)
        return -1;
    r->cap = cap;
    return 0;
}

static void fetched(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "reading the journal");
        return;
    }
    MYSQL_RES *res = r->res;
    r->res = NULL;
    size_t n = (size_t)mysql_num_rows(res);
    if (reserve(r, n) < 0) {
        mysql_free_result(res);
        sn_logf(&c->sink, SN_LOG_ERROR, "journal reader: out of memory for %zu rows", n);
        later(c, NEXT_POLL, 1.0);
        return;
    }
    r->nrows = r->nev = 0;
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(res)) != NULL) {
        if (durable(c) && row[4] && strcmp(row[4], "1") == 0 && atoll(row[0]) > r->fence_ok) {
            /* a member's tables changed here: the rest waits for the look (check_members) */
            r->fence = atoll(row[0]);
            break;
        }
        r->ids[r->nrows] = atoll(row[0]);
        if (row[2]) { /* on one of our channels */
            unsigned long *len = mysql_fetch_lengths(res);
            r->ev[r->nev] = (sn_event){row[1], row[2], len[2], durable(c) ? r->ids[r->nrows] : 0,
                                       durable(c) && row[3] ? atof(row[3]) : 0};
            r->ev_row[r->nev++] = (int)r->nrows;
        }
        r->nrows++;
    }
    n = r->nrows;
    r->acked = -1;
    r->applied = 0;
    if (r->nev > 0) {
        c->in_deliver = 1;
        c->sink.deliver(c->sink.ud, r->ev, r->nev);
        c->in_deliver = 0;
    }
    /* Durable: advance up to what the handlers finished (all of it, unless held). r->ev
     * points into res: only ids outlive it, for the acks of a held batch. */
    size_t upto = apply(c);
    mysql_free_result(res);
    if (closed_or_stopped(c)) /* close() or stop() from a handler */
        return;
    if (n == BATCH && upto == n)
        r->interval = 0;
    else if (n > 0 && upto > 0)
        r->interval = MIN_INTERVAL;
    else if (upto == 0 && r->nev > 0) /* nothing was acknowledged: do not spin on it */
        r->interval = MAX_INTERVAL;
    else
        r->interval = r->interval < MIN_INTERVAL ? MIN_INTERVAL : r->interval * 2 > MAX_INTERVAL ? MAX_INTERVAL : r->interval * 2;
    after_round(c);
}

static void yield(sn_conn *c);

static void fetch(sn_conn *c)
{
    my_reader *r = &c->r;
    if (durable(c) && r->locked && r->blocked && !r->held) {
        yield(c); /* another member watches more: the round that found it was done */
        return;
    }
    sn_sbuf *b = &r->sql;
    b->len = 0;
    sn_sb_add(b, "SELECT id, channel, ");
    if (r->nchan == 0) {
        sn_sb_add(b, "NULL");
    } else {
        sn_sb_add(b, "IF(channel IN (");
        for (int i = 0; i < r->nchan; i++) {
            sn_sb_add(b, i ? ", " : "");
            my_sb_lit(b, r->chans[i], strlen(r->chans[i]));
        }
        sn_sb_add(b, "), payload, NULL)");
    }
    /* created_at is UTC: seconds since the epoch without the session's time_zone */
    sn_sb_add(b, durable(c) ? ", TIMESTAMPDIFF(MICROSECOND, '1970-01-01', created_at) / 1e6" : ", NULL");
    if (durable(c)) { /* a member row of this consumer's (consumers.c) */
        sn_sb_add(b, ", channel = ");
        my_sb_lit(b, MY_MEMBERS_CHANNEL, strlen(MY_MEMBERS_CHANNEL));
        sn_sb_add(b, " AND payload = ");
        my_sb_lit(b, c->consumer, strlen(c->consumer));
    }
    sn_sb_addf(b, " FROM %s WHERE ", c->journal);
    int above = r->st.n < MAX_RANGES; /* too many open gaps: let them settle first */
    if (above)
        sn_sb_addf(b, "id > %lld", (long long)r->st.high);
    for (int i = 0; i < r->st.n; i++) {
        const char *sep = i || above ? " OR " : "";
        if (r->st.r[i].lo == r->st.r[i].hi)
            sn_sb_addf(b, "%sid = %lld", sep, (long long)r->st.r[i].lo);
        else
            sn_sb_addf(b, "%sid BETWEEN %lld AND %lld", sep, (long long)r->st.r[i].lo, (long long)r->st.r[i].hi);
    }
    sn_sb_addf(b, " ORDER BY id LIMIT %d", BATCH);
    exec(c, fetched);
}

/* ===== after a round: save, probe a gap, prune ===== */

static void probe(sn_conn *c);
static void check_back(sn_conn *c);
static void check_members(sn_conn *c);
static void check_triggers(sn_conn *c);
static void prune(sn_conn *c);

static void saved(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "saving the consumer's position");
        return;
    }
    r->dirty = r->dirty_late; /* an ack while it was in flight: saved next round */
    r->last_save = my_now();
    probe(c);
}

static void save_sql(sn_conn *c)
{
    my_reader *r = &c->r;
    sn_sbuf *b = &r->sql;
    r->dirty_late = 0;
    b->len = 0;
    sn_sb_addf(b, "INSERT INTO %s (name, pos, pending, low, last_seen, retention) VALUES (", c->consumers);
    my_sb_lit(b, c->consumer, strlen(c->consumer));
    sn_sb_addf(b, ", %lld, '", (long long)r->st.high);
    my_state_pending_text(&r->st, b);
    sn_sb_addf(b, "', %lld, UTC_TIMESTAMP(6), %.3f) ON DUPLICATE KEY UPDATE pos = VALUES(pos),"
                  " pending = VALUES(pending), low = VALUES(low), last_seen = VALUES(last_seen),"
                  " retention = VALUES(retention)",
               (long long)my_state_low(&r->st), c->consumer_retention);
}

static void after_round(sn_conn *c)
{
    my_reader *r = &c->r;
    if (durable(c) && (r->dirty || my_now() - r->last_save >= HEARTBEAT)) {
        save_sql(c);
        exec(c, saved);
        return;
    }
    probe(c);
}

static void probed(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    unsigned e = ok ? 0 : mysql_errno(r->m);
    if (!ok && e != 1205 && e != 3572) { /* 1205 (MariaDB), 3572 (MySQL): NOWAIT met a lock */
        failed(c, "probing a gap in the journal");
        return;
    }
    double now = my_now();
    for (int i = 0; i < r->st.n; i++)
        if (r->st.r[i].lo == r->probe_lo) {
            if (ok && mysql_num_rows(r->res) == 0) { /* nobody holds it: rolled back, never coming */
                my_state_drop(&r->st, i);
                r->dirty |= durable(c);
            } else {
                r->st.r[i].probed = now;
            }
            break;
        }
    check_back(c);
}

static void probe(sn_conn *c)
{
    my_reader *r = &c->r;
    double now = my_now();
    for (int i = 0; i < r->st.n; i++) {
        my_range *g = &r->st.r[i];
        if (now - g->seen >= GAP_GRACE && now - g->probed >= PROBE_EVERY) {
            r->probe_lo = g->lo;
            r->sql.len = 0;
            sn_sb_addf(&r->sql, "SELECT id FROM %s WHERE id BETWEEN %lld AND %lld LIMIT 1 FOR UPDATE NOWAIT",
                       c->journal, (long long)g->lo, (long long)g->hi);
            exec(c, probed);
            return;
        }
    }
    check_back(c);
}

static void idle(sn_conn *c) { later(c, NEXT_POLL, c->r.held ? MAX_INTERVAL : c->r.interval); }

/* ===== ids that went back ===== */

/* TRUNCATE of the journal, an ALTER TABLE ... AUTO_INCREMENT, or a restart of a server that
 * does not keep the counter (MySQL before 8.0, MariaDB before 10.2.4) with a journal pruning
 * had emptied, hands ids out again from the bottom. The fetch reads above high only, so the
 * rows written since were skipped without a word. Rows at or below high never go before the
 * ones above them, so a newest row below high says it. Then the journal is read again from
 * its first row: the rows written since, and any older one still there once more (at least
 * once). The pruned mark goes too, or a start would take the new rows for pruned ones. */
static void back_marked(sn_conn *c, int ok)
{
    if (!ok) {
        failed(c, "recording that the journal's ids went back");
        return;
    }
    check_members(c);
}

static void back_read(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "reading the journal's newest id");
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(r->res);
    int64_t top = row && row[0] ? atoll(row[0]) : -1;
    if (top < 0 || top >= r->st.high || r->held) {
        check_members(c);
        return;
    }
    sn_logf(&c->sink, SN_LOG_ERROR,
            "the journal's ids in database \"%s\" went back: its newest row is id %lld, below %lld where %s stands"
            " (the journal was truncated or its AUTO_INCREMENT reset); reading it again from its first row: the"
            " rows written since are delivered, and rows older than that still there again",
            c->p.db, (long long)top, (long long)r->st.high, durable(c) ? "this consumer" : "this reader");
    while (r->st.n > 0)
        my_state_drop(&r->st, 0);
    r->st.high = 0;
    r->dirty = durable(c);
    r->interval = 0;
    r->sql.len = 0;
    sn_sb_addf(&r->sql, "UPDATE %s SET below = 0 WHERE id = 1", c->pruned);
    exec(c, back_marked);
}

static void check_back(sn_conn *c)
{
    my_reader *r = &c->r;
    double now = my_now();
    if (!r->started || r->held || now - r->back_checked < BACK_EVERY) {
        check_members(c);
        return;
    }
    r->back_checked = now;
    r->sql.len = 0;
    sn_sb_addf(&r->sql, "SELECT MAX(id) FROM %s", c->journal);
    exec(c, back_read);
}

/* ===== the other members of a durable consumer ===== */

/* Once a MY_MEMBER_BEAT, and at once when a round met a member row of ours in the journal
 * (fence): our member row is written, the others' read (consumers.c). Reading, a process that
 * finds a live member watching a table it does not gives the consumer up (yield); standing
 * by, it takes the lock only while none does (lock_now). */
static void members_read(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "looking at the consumer's other members");
        return;
    }
    sn_sbuf lacking = {0};
    int members = 0;
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(r->res)) != NULL) {
        long long pid = row[0] ? atoll(row[0]) : 0;
        if (!my_pid_gone(c, pid, row[1]))
            members += sn_tables_lacking(&c->tables, pid, row[1], row[2], &lacking);
    }
    if (lacking.fail) {
        sn_logf(&c->sink, SN_LOG_ERROR, "journal reader: out of memory");
        members = 0;
    }
    r->blocked = members > 0;
    sn_members_say(&c->sink, c->consumer, &r->blocked_said, members ? lacking.p : NULL, members);
    sn_sb_free(&lacking);
    r->members_looked = my_now();
    if (r->fence && !r->blocked) /* read past it from now on */
        r->fence_ok = r->fence;
    r->fence = 0;
    void (*next)(sn_conn *) = r->members_next;
    r->members_next = NULL;
    next(c);
}

static void member_written(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "recording this member's tables");
        return;
    }
    r->sql.len = 0;
    my_member_sql(c, &r->sql, "members_live", NULL);
    exec(c, members_read);
}

/* Write our member row, look at the others, then next(c). */
static void members(sn_conn *c, void (*next)(sn_conn *))
{
    my_reader *r = &c->r;
    sn_sbuf text = {0};
    sn_tables_text(&c->tables, &text);
    r->members_next = next;
    r->sql.len = 0;
    my_member_sql(c, &r->sql, "member_write", text.p);
    sn_sb_fail(&r->sql, text.fail);
    sn_sb_free(&text);
    exec(c, member_written);
}

static void given_up(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "giving the consumer's lock up");
        return;
    }
    r->locked = 0;
    sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\": stopped reading after id %lld; this process stands by", c->consumer,
            (long long)r->st.high);
    later(c, NEXT_LOCK, STANDBY_RETRY);
}

static void yield_saved(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "saving the consumer's position");
        return;
    }
    r->dirty = r->dirty_late;
    r->last_save = my_now();
    r->sql.len = 0;
    sn_sb_add(&r->sql, "SELECT RELEASE_LOCK(");
    my_sb_lit(&r->sql, r->lockname, strlen(r->lockname));
    sn_sb_add(&r->sql, ")");
    exec(c, given_up);
}

/* Blocked while holding the lock: what the last round handed out is done (not held), so save
 * where the handlers got and give the lock up; the member whose tables include ours takes it,
 * or no one until one of us stops. Held: the release reads on, and fetch() gives it up then. */
static void yield(sn_conn *c)
{
    my_reader *r = &c->r;
    if (r->held) {
        check_triggers(c);
        return;
    }
    r->nrows = r->nev = r->applied = 0;
    r->acked = -1;
    save_sql(c);
    exec(c, yield_saved);
}

static void members_judged(sn_conn *c)
{
    if (c->r.blocked)
        yield(c);
    else
        check_triggers(c);
}

static void check_members(sn_conn *c)
{
    my_reader *r = &c->r;
    if (!durable(c) || !r->locked || (!r->fence && my_now() - r->members_looked < MY_MEMBER_BEAT)) {
        check_triggers(c);
        return;
    }
    members(c, members_judged);
}

/* ===== the durable triggers, gone with their table ===== */

/* MySQL has no DDL hook: a watched table dropped and made again, or a copy renamed into its
 * place (gh-ost's swap), has lost its triggers (they went with the old table), and nothing
 * written to it was captured until the notifier's check (verify_interval, 60 s by default)
 * made them again. So once a second the reader looks for the triggers it reads, on the tables
 * they were made on (one statement, reader.sql, between two rounds), and when one is gone
 * while its table is there, tells the runtime (sink.triggers_gone), which runs that check at
 * once: it makes them again through the one repair path and says what could not be captured.
 * About a second of changes is lost instead of a minute.
 *
 * Told once each time one goes: until it is seen again (or installed again) it is the check's
 * to retry, and to say once a verify_interval when it cannot. One whose table is not there is
 * not told about (nothing to make it on): a table dropped and not made again costs nothing
 * more. Only triggers installed are looked for, so the session sees them (information_schema
 * shows a trigger to whoever may make it), and the reader's session is the same user's. A
 * failed look is said once and does not hold the reading up. */
static int reads(const my_reader *r, const char *channel)
{
    for (int i = 0; i < r->nchan; i++)
        if (strcmp(r->chans[i], channel) == 0)
            return 1;
    return 0;
}

static void triggers_read(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        if (my_conn_lost(mysql_errno(r->m))) {
            failed(c, "looking for the durable triggers");
            return;
        }
        if (!r->trig_said)
            sn_logf(&c->sink, SN_LOG_WARN, "cannot look for the durable triggers of %s: %s; a table made again is found"
                    " by the notifier's check (verify_interval)", c->target, mysql_error(r->m));
        r->trig_said = 1;
        prune(c);
        return;
    }
    r->trig_said = 0;
    /* about 1.3 ms a table (MariaDB parses its triggers' text): a consumer of many tables, or a
     * slow server, looks less often rather than spending more than its share of the reader */
    double every = (my_now() - r->trig_looked) / TRIGGERS_SHARE;
    r->trig_every = every < TRIGGERS_EVERY ? TRIGGERS_EVERY : every > TRIGGERS_MAX ? TRIGGERS_MAX : every;
    int tell = 0;
    for (int i = 0; i < c->nkept; i++) {
        my_kept *k = &c->kept[i];
        if (!reads(r, k->channel))
            continue;
        int table = 0, in = 0;
        MYSQL_ROW row;
        mysql_data_seek(r->res, 0);
        /* information_schema compares names without case: exact matches only */
        while ((row = mysql_fetch_row(r->res)) != NULL)
            if (row[0] && row[1] && strcmp(row[0], k->schema) == 0 && strcmp(row[1], k->table) == 0) {
                table |= row[2] == NULL;
                in |= row[2] != NULL && strcmp(row[2], k->name) == 0;
            }
        if (in) {
            k->gone = 0;
        } else if (table && !k->gone) {
            k->gone = 1;
            tell = 1;
        }
    }
    if (tell && c->sink.triggers_gone) {
        c->in_deliver = 1; /* the notice may stop or close us: done once it returned */
        c->sink.triggers_gone(c->sink.ud);
        c->in_deliver = 0;
        if (closed_or_stopped(c))
            return;
    }
    prune(c);
}

/* Bounded as every statement of the reader is: by read_timeout (the connection is then lost
 * and made again, and the notifier checks its triggers at the reconnect). */
static void check_triggers(sn_conn *c)
{
    my_reader *r = &c->r;
    double now = my_now();
    if (!durable(c) || !r->started || now - r->trig_looked < (r->trig_every > 0 ? r->trig_every : TRIGGERS_EVERY)) {
        prune(c);
        return;
    }
    r->trig_looked = now;
    r->sql.len = 0;
    int parts = 0;
    for (int i = 0; i < c->nkept; i++) {
        const my_kept *k = &c->kept[i];
        int dup = !reads(r, k->channel);
        for (int j = 0; j < i && !dup; j++) /* one part a table */
            dup = reads(r, c->kept[j].channel) && strcmp(c->kept[j].schema, k->schema) == 0 &&
                  strcmp(c->kept[j].table, k->table) == 0;
        if (dup)
            continue;
        const char *lits[4] = {k->schema, k->table, k->schema, k->table};
        if (parts++)
            sn_sb_add(&r->sql, " UNION ALL ");
        if (my_sb_statement(&r->sql, mysql_reader_sql, "triggers_of_table", lits, 4) < 0) {
            sn_logf(&c->sink, SN_LOG_ERROR, "journal reader: reader.sql has no statement triggers_of_table");
            parts = 0;
            break;
        }
    }
    if (parts == 0) {
        prune(c);
        return;
    }
    exec(c, triggers_read);
}

/* A copy of w's trigger, the one kept for its name replaced. */
int my_keep(sn_conn *c, const sn_watch *w)
{
    char name[64];
    sn_trigger_name(w, name);
    my_forget(c, w->schema, name);
    my_kept k = {.schema = strdup(w->schema), .table = strdup(w->table), .channel = strdup(w->channel)};
    snprintf(k.name, sizeof k.name, "%s", name);
    my_kept *grown = k.schema && k.table && k.channel ? realloc(c->kept, (size_t)(c->nkept + 1) * sizeof *grown) : NULL;
    if (grown == NULL) {
        free(k.schema), free(k.table), free(k.channel);
        return -1;
    }
    c->kept = grown;
    c->kept[c->nkept++] = k;
    return 0;
}

void my_forget(sn_conn *c, const char *schema, const char *name)
{
    for (int i = 0; i < c->nkept; i++)
        if (strcmp(c->kept[i].schema, schema) == 0 && strcmp(c->kept[i].name, name) == 0) {
            my_kept *k = &c->kept[i];
            free(k->schema), free(k->table), free(k->channel);
            *k = c->kept[--c->nkept];
            return;
        }
}

void my_forget_all(sn_conn *c)
{
    for (int i = 0; i < c->nkept; i++)
        free(c->kept[i].schema), free(c->kept[i].table), free(c->kept[i].channel);
    free(c->kept);
    c->kept = NULL;
    c->nkept = 0;
}

static void prune_delete(sn_conn *c);

static void pruned_mark(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "recording what the journal pruned");
        return;
    }
    if (r->prune_last == PRUNE_BATCH && ++r->prune_rounds < PRUNE_ROUNDS) {
        prune_delete(c);
        return;
    }
    r->next_prune = my_now() + (r->prune_rounds >= PRUNE_ROUNDS ? 1.0 : PRUNE_EVERY);
    idle(c);
}

static void pruned_rows(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        unsigned e = mysql_errno(r->m);
        if (e == 1142 || e == 1044 || e == 1045) { /* no right to delete: it will not pass */
            sn_logf(&c->sink, SN_LOG_WARN, "cannot prune the journal: %s; old rows stay (GRANT DELETE ON %s)",
                    mysql_error(r->m), c->journal);
            r->prune_off = 1;
            idle(c);
            return;
        }
        failed(c, "pruning the journal");
        return;
    }
    r->prune_last = (long long)mysql_affected_rows(r->m);
    r->sql.len = 0;
    sn_sb_addf(&r->sql,
               "INSERT INTO %s (id, below) VALUES (1, %lld) ON DUPLICATE KEY UPDATE below = GREATEST(below, VALUES(below))",
               c->pruned, (long long)r->prune_cut + 1);
    exec(c, pruned_mark);
}

static void prune_cut(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "pruning the journal");
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(r->res);
    if (row == NULL || row[0] == NULL) { /* nothing old enough */
        r->next_prune = my_now() + PRUNE_EVERY;
        idle(c);
        return;
    }
    r->prune_cut = atoll(row[0]);
    r->sql.len = 0;
    sn_sb_addf(&r->sql, "DELETE FROM %s WHERE id <= %lld AND created_at < UTC_TIMESTAMP(6) - INTERVAL %.6f SECOND",
               c->journal, (long long)r->prune_cut, c->retention);
    exec(c, pruned_rows);
}

/* The next batch: among the oldest rows, those older than the retention and below every
 * live consumer's lowest wanted id (and this reader's own). */
static void prune_delete(sn_conn *c)
{
    my_reader *r = &c->r;
    long long own = (long long)my_state_low(&r->st);
    r->sql.len = 0;
    sn_sb_addf(&r->sql,
               "SELECT MAX(id) FROM (SELECT id, created_at FROM %s WHERE id < LEAST(%lld, COALESCE((SELECT MIN(low) FROM %s"
               " WHERE last_seen > UTC_TIMESTAMP(6) - INTERVAL COALESCE(retention, %.6f) SECOND), %lld))"
               " ORDER BY id LIMIT %d) s"
               " WHERE created_at < UTC_TIMESTAMP(6) - INTERVAL %.6f SECOND",
               c->journal, own, c->consumers, c->consumer_retention, own, PRUNE_BATCH, c->retention);
    exec(c, prune_cut);
}

/* One reader per database prunes: the one holding the prune lock (kept for the session). */
static void prune_locked(sn_conn *c, int ok)
{
    my_reader *r = &c->r;
    if (!ok) {
        failed(c, "taking the prune lock");
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(r->res);
    r->prune_lock = row && row[0] && strcmp(row[0], "1") == 0;
    if (!r->prune_lock) {
        r->next_prune = my_now() + PRUNE_EVERY;
        idle(c);
        return;
    }
    r->prune_rounds = 0;
    prune_delete(c);
}

static void prune(sn_conn *c)
{
    my_reader *r = &c->r;
    if (r->prune_off || my_now() < r->next_prune || !r->started) {
        idle(c);
        return;
    }
    if (r->prune_lock) {
        r->prune_rounds = 0;
        prune_delete(c);
        return;
    }
    char name[65];
    snprintf(name, sizeof name, "sqlnotify:prune:%016llx", (unsigned long long)sn_hash64(c->p.db, strlen(c->p.db), 0));
    r->sql.len = 0;
    sn_sb_add(&r->sql, "SELECT GET_LOCK(");
    my_sb_lit(&r->sql, name, strlen(name));
    sn_sb_add(&r->sql, ", 0)");
    exec(c, prune_locked);
}

/* ===== the tick ===== */

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_conn *c = w->data;
    my_reader *r = &c->r;
    if (!r->on)
        return;
    switch (r->next) {
    case NEXT_CONNECT: connect_reader(c); break;
    case NEXT_LOCK: lock(c); break;
    default:
        if (r->held) /* save the acks, keep last_seen fresh; read nothing */
            after_round(c);
        else
            fetch(c);
        break;
    }
}

/* ===== the interface ===== */

static void teardown(sn_conn *c)
{
    my_reader *r = &c->r;
    ev_io_stop(c->loop, &r->io);
    ev_timer_stop(c->loop, &r->timeout);
    ev_timer_stop(c->loop, &r->tick);
    if (r->res) {
        mysql_free_result(r->res);
        r->res = NULL;
    }
    if (r->m) {
        mysql_close(r->m);
        r->m = NULL;
    }
    r->call = CALL_NONE;
    r->done = NULL;
    r->locked = 0;
    r->prune_lock = 0;
}

int my_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    my_reader *r = &c->r;
    for (int i = 0; i < r->nchan; i++)
        if (strcmp(r->chans[i], channel) == 0)
            return 0;
    if (!r->on) {
        if (my_journal_ensure(c, err, errlen) < 0)
            return -1;
        /* Fixed here, before listen returns: whatever commits from now on is read. */
        if (durable(c)) {
            if (my_consumer_register(c, err, errlen) < 0)
                return -1;
            my_lock_name(c, c->consumer, r->lockname);
        } else if (!r->started) {
            if (my_state_at_end(c, &r->st, err, errlen) < 0)
                return -1;
            r->started = 1;
        }
    }
    if (durable(c)) { /* recorded, so that the consumer's lag counts this channel's rows */
        sn_sbuf b = {0};
        sn_result *res = NULL;
        const char *args[2] = {c->consumer, channel};
        sn_sb_add(&b, "INSERT IGNORE INTO ");
        my_sb_qname(&b, c->p.db, MY_READS);
        sn_sb_add(&b, " (consumer, channel) VALUES (?, ?)");
        int rc = b.fail ? (sn_seterr(err, errlen, "out of memory"), -1) : my_query(c, b.p, 2, args, &res, err, errlen);
        sn_result_free(res);
        res = NULL;
        sn_sb_free(&b);
        if (rc < 0)
            return -1;
        if (my_members_add(c, channel, err, errlen) < 0)
            return -1;
        /* the captures it read for this declared channel before its columns changed, which no
         * other consumer reads: they go */
        size_t plain = (size_t)sn_plain_len(channel);
        if (plain < strlen(channel)) {
            char prefix[300];
            snprintf(prefix, sizeof prefix, "%.*s#", (int)plain, channel);
            const char *q[3] = {c->consumer, channel, prefix};
            sn_sb_add(&b, "SELECT r.channel FROM ");
            my_sb_qname(&b, c->p.db, MY_READS);
            sn_sb_add(&b, " r WHERE r.consumer = ? AND r.channel <> ? AND LEFT(r.channel, CHAR_LENGTH(?)) = ");
            sn_sb_add(&b, "CAST(? AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin");
            sn_sb_add(&b, " AND r.channel REGEXP '#[0-9a-f]{12}$' AND CHAR_LENGTH(r.channel) = CHAR_LENGTH(?) + 12"
                          " AND NOT EXISTS (SELECT 1 FROM ");
            my_sb_qname(&b, c->p.db, MY_READS);
            sn_sb_add(&b, " o WHERE o.channel = r.channel AND o.consumer <> r.consumer)");
            const char *q5[5] = {q[0], q[1], q[2], q[2], q[2]};
            if (!b.fail && my_query(c, b.p, 5, q5, &res, err, errlen) == 0)
                for (int i = 0; i < res->nrows; i++)
                    if (res->cells[i].type == SN_TEXT)
                        my_capture_unused(c, res->cells[i].s, c->consumer);
            sn_result_free(res);
            sn_sb_free(&b);
        }
    }
    char **chans = realloc(r->chans, (size_t)(r->nchan + 1) * sizeof *chans);
    if (chans == NULL || (chans[r->nchan] = strdup(channel)) == NULL) {
        if (chans)
            r->chans = chans;
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    r->chans = chans;
    r->nchan++;
    if (!r->on) {
        r->on = 1;
        r->interval = MIN_INTERVAL;
        r->next_prune = my_now() + 1.0;
        ev_init(&r->io, on_io);
        r->io.data = c;
        ev_init(&r->timeout, on_timeout);
        r->timeout.data = c;
        ev_init(&r->tick, on_tick);
        r->tick.data = c;
        connect_reader(c);
    }
    return 0;
}

void my_unlisten(sn_conn *c, const char *channel)
{
    my_reader *r = &c->r;
    for (int i = 0; i < r->nchan; i++)
        if (strcmp(r->chans[i], channel) == 0) {
            free(r->chans[i]);
            r->chans[i] = r->chans[--r->nchan];
            if (durable(c))
                my_members_remove(c, channel);
            return;
        }
}

void my_ack(sn_conn *c, int64_t seq)
{
    my_reader *r = &c->r;
    if (!c->in_deliver && !r->held)
        return;
    size_t lo = 0, hi = r->nrows;
    while (lo < hi) { /* the row of this id */
        size_t mid = (lo + hi) / 2;
        if (r->ids[mid] < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < r->nrows && r->ids[lo] == seq && (long)lo > r->acked) {
        r->acked = (long)lo;
        if (r->held) /* st moves now; the tick saves it */
            apply(c);
    }
}

int my_hold(sn_conn *c, int on)
{
    my_reader *r = &c->r;
    if (!durable(c))
        return 0;
    if (on || !r->held) {
        r->held |= on;
        return 1;
    }
    r->held = 0;
    if (c->in_deliver) /* released before deliver returned: fetched() goes on as usual */
        return 1;
    r->nrows = r->nev = r->applied = 0; /* late acks of the batch no longer count */
    r->acked = -1;
    r->interval = MIN_INTERVAL;
    /* idle: read on soon, from the tick (never from here); else the round in flight, the
     * reconnect or the lock attempt gets there */
    if (r->on && r->call == CALL_NONE && r->next == NEXT_POLL && ev_is_active(&r->tick))
        later(c, NEXT_POLL, 0);
    return 1;
}

/* Stop reading; a durable consumer's position is saved first (with a deadline). */
void my_stop(sn_conn *c)
{
    my_reader *r = &c->r;
    if (c->in_deliver) {
        r->stop_pending = 1;
        return;
    }
    if (r->on && r->m && durable(c) && r->locked) {
        double deadline = my_now() + SYNC_DEADLINE;
        int busy = r->call != CALL_NONE;
        if (busy) /* let the statement in flight end (it may be the save itself) */
            exec_sync(c, deadline);
        if (r->dirty && r->call == CALL_NONE) {
            save_sql(c);
            if (exec_sync(c, deadline) == 0)
                r->dirty = 0;
        }
    }
    if (durable(c)) { /* our member row goes: a standby that watches less need not wait for it to age */
        my_members_leave(c);
        free(r->blocked_said);
        r->blocked_said = NULL;
        r->blocked = 0;
        r->fence = r->fence_ok = 0;
        r->members_looked = 0;
    }
    teardown(c);
    r->on = 0;
    r->started = 0;
    r->down_since = 0;
    sn_backoff_reset(&r->backoff);
    r->standby_said = 0;
    r->prune_off = 0;
    r->held = 0; /* what was in flight comes again after a new listen */
    r->nrows = r->nev = r->applied = 0;
    r->acked = -1;
    my_state_free(&r->st);
    for (int i = 0; i < r->nchan; i++)
        free(r->chans[i]);
    free(r->chans);
    r->chans = NULL;
    r->nchan = 0;
}

void my_reader_close(sn_conn *c)
{
    my_reader *r = &c->r;
    my_stop(c);
    sn_sb_free(&r->sql);
    free(r->ids);
    free(r->ev);
    free(r->ev_row);
    r->ids = NULL;
    r->ev = NULL;
    r->ev_row = NULL;
    r->cap = 0;
}
