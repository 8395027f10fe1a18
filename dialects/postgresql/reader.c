/*
 * reader.c — durable mode's reader: one connection of its own, driven by libev with
 * libpq's asynchronous calls, that LISTENs on the journal's wake-up channel and pages
 * through the consumer's batches with sqlnotify.fetch() (journal.c). In durable mode it
 * stands in for the live listener (listen/unlisten/stop come here; see driver.c).
 *
 * Every reader is a member of its consumer's group (issue 13; alone, a group of one): it
 * reads only the shares it holds. A lease step (sqlnotify.lease) every third of the lease
 * renews them and balances the group; the member's own clock says when a lease it could not
 * renew has run out (it stops reading those shares and says so). Acknowledgements name the
 * shares, their epochs and the batch, so one the server refuses (the shares were taken) or
 * one sent twice (after a lost connection) changes nothing.
 *
 * One statement is in flight at a time: LISTEN after connecting, then lease, maintain or
 * fetch (carrying the ack of the page before). A read that finds the journal gone (schema
 * "sqlnotify" dropped) makes it again at once, with the triggers of the watches that went
 * with it (see jr_remake). The handlers' ack is written by the next
 * statement, sent as soon as the page was handled, so nothing waits on the loop. Wake-ups:
 * the NOTIFY, and a poll timer (10 ms after events flowed, doubling to 250 ms when idle).
 *
 * Held (hold(), durable only): the page's handlers finish after deliver returned. The reader
 * then fetches nothing; acks that come meanwhile are written by a lease step on the next tick
 * (and by every renewal), the page's ack set kept since they all ack that one page; the
 * lease step names the page's shares as kept, so balancing never gives them away while their
 * events are in flight (journal 9). A lost connection keeps the ack: the lease step after the
 * reconnect writes it. Release fetches from the last ack: what was not acked comes again.
 */
#include "pg.h"

#include <unistd.h>

#define JR_PAGE "500"
#define JR_PAGE_N 500
#define JR_POLL_MIN 0.01
/* Under load (a page of at least JR_BUSY_ROWS that was not full) the next fetch waits
 * JR_POLL_BUSY whatever the wake-ups say: each fetch costs the server about a millisecond and
 * writes the cursor, and on a small machine that is the writers' time. Fewer, larger pages;
 * a handful of rows at a time still go at the wake-up. */
#define JR_BUSY_ROWS 32
#define JR_POLL_BUSY 0.02
#define JR_POLL_MAX 0.25
#define JR_MAINTAIN_EVERY 5.0
#define JR_ROTATE_SECONDS "20"
/* a journal that is still gone right after the reader made it again: not before this (s) */
#define JR_REMAKE_EVERY 10.0
/* held: acks that came are written this long after the first of them at most (s) */
#define JR_HELD_SAVE 0.05

/* The other consumers not seen for $3 seconds that still hold rows back (seen within their
 * retention, or $1), oldest first, names JSON-quoted for the log. Read by a role that may (the
 * journal's owner); for another the query fails, which is let go. */
#define JR_ABSENT_SQL                                                                                                  \
    "SELECT pg_catalog.string_agg(pg_catalog.to_json(c.name)::text || ' (last seen ' ||"                              \
    " pg_catalog.to_char(c.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI\"Z\"') || ')', ', '"                \
    " ORDER BY c.last_seen) FROM sqlnotify.consumers c"                                                               \
    " WHERE c.name <> $2 AND c.last_seen < pg_catalog.now() - pg_catalog.make_interval(secs => $3)"                   \
    " AND c.last_seen >= pg_catalog.now() - pg_catalog.make_interval(secs => COALESCE(c.retention, $1))"

enum jr_state { JR_OFF, JR_WAITING, JR_CONNECTING, JR_IDLE, JR_BUSY };
enum jr_query { JQ_NONE, JQ_LISTEN, JQ_LEASE, JQ_FETCH, JQ_MAINTAIN, JQ_ABSENT };

struct pg_jr {
    sn_conn *c;
    PGconn *db;
    int state, query;
    ev_io io;
    ev_timer retry;    /* reconnect backoff, then the attempt's (or the statement's) deadline */
    ev_timer poll;     /* next fetch */
    ev_timer maint;
    ev_timer lease;    /* every third of the lease: renew, balance, and check it locally */
    double poll_every;
    double hold_until; /* under load: no fetch before this (ev_now, as the poll timer) */
    int want_fetch, want_maint, want_lease, want_absent;
    sn_backoff backoff;
    double lost_at;
    char member[160];  /* host:pid:random, this process's name in the group */
    int64_t *epoch;    /* per share: the epoch it is held with, or -1 */
    int nheld;
    double lease_sent, lease_ok; /* when the lease step in flight / the last one that worked was sent */
    double absent_asked, absent_said; /* consumers that stopped coming: last asked, last named (0: none now) */
    double maint_said;  /* when a maintenance failure was last logged (0: the last pass worked) */
    double cache_said;  /* when the sequence's wrong cache was last logged, maintenance failing */
    double read_ok;     /* when a fetch last worked (or the reader started) */
    double remade_at;   /* when the reader last made the journal again */
    /* the ack not yet written: the handlers finished every event up to `acked` of the page of
     * batch `batch` that covered these shares (held with these epochs) */
    int64_t acked;
    int *ack_share;
    int64_t *ack_epoch;
    int nack;
    char *batch;
    int64_t carried;   /* the ack the statement in flight carries (0: none) */
    int64_t saved;     /* held: the last ack a statement wrote */
    int held;          /* hold(1): the page's handlers are still running; no fetch */
    int keep_all;      /* keep(1): every share held is kept through the balancing */
    int keep_refused;  /* the 9-argument lease() may not be called (a grant of journal 8) */
    int at_refused;    /* fetch_at() may not be called (a grant of journal 9): fetch(), no written_at */
    int lease_keep;    /* the lease step in flight is that one */
    int chans_refused;  /* the 10-argument lease() may not be called (a grant of journal 11 or before) */
    int lease_chans;  /* the lease step in flight is that one */
    char *waits;       /* what this member waits for (another reads channels it does not), or NULL */
    char **chans;
    size_t nchans, cap;
    char *chan_array;  /* the channels as a text[] literal, for fetch */
    char *plain_array; /* their plain names (no capture's tag) once each, for the lease step (journal 12) */
    int reads_said;    /* said that its channels cannot be recorded */
};

static void jr_next(struct pg_jr *j);

/* Statements on the reader's connection: within the statement deadline, and within the
 * lease (a stalled server must not keep a member reading shares it may have lost). */
static double jr_stmt_deadline(const struct pg_jr *j)
{
    return j->c->stmt_timeout < j->c->lease ? j->c->stmt_timeout : j->c->lease;
}

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
    j->carried = 0; /* the ack goes again: it is idempotent */
}

/* Lost or failed: log once per outage, retry after the shared backoff. */
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
    j->state = JR_WAITING;
    jr_deadline(j, sn_backoff_next(&j->backoff));
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

/* ===== shares ===== */

/* "{1,2,3}" of ints (or int64s): an array literal for a parameter */
static void sb_ints(sn_sbuf *b, const int *v, const int64_t *w, int n)
{
    sn_sb_add(b, "{");
    for (int i = 0; i < n; i++)
        sn_sb_addf(b, i ? ",%lld" : "%lld", v ? (long long)v[i] : (long long)w[i]);
    sn_sb_add(b, "}");
}

/* "3, 5, 8" */
static void sb_share_list(sn_sbuf *b, const int *v, int n)
{
    for (int i = 0; i < n; i++)
        sn_sb_addf(b, i ? ", %d" : "%d", v[i]);
}

static void jr_ack_clear(struct pg_jr *j)
{
    j->acked = 0;
    j->saved = 0;
    j->nack = 0;
    free(j->batch);
    j->batch = NULL;
    j->carried = 0;
}

/* The page just delivered covered these shares of this batch: its ack names them. */
static int jr_ack_set(struct pg_jr *j, const int *shares, int n, const char *batch)
{
    jr_ack_clear(j);
    if (n == 0 || batch == NULL)
        return 0;
    if ((j->batch = strdup(batch)) == NULL)
        return -1;
    for (int i = 0; i < n; i++) {
        if (shares[i] < 0 || shares[i] >= j->c->nshares || j->epoch[shares[i]] < 0)
            continue;
        j->ack_share[j->nack] = shares[i];
        j->ack_epoch[j->nack] = j->epoch[shares[i]];
        j->nack++;
    }
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* One line naming shares v (sorted here). */
static void jr_log_shares(struct pg_jr *j, int level, const char *what, int *v, int n, const char *why)
{
    sn_sbuf b = {0};
    qsort(v, (size_t)n, sizeof *v, cmp_int);
    sb_share_list(&b, v, n);
    if (!b.fail)
        sn_logf(&j->c->sink, level, "consumer \"%s\": member %s %s share%s %s%s%s", j->c->consumer, j->member, what,
                n == 1 ? "" : "s", b.p, why ? ": " : "", why ? why : "");
    free(b.p);
}

/* Shares refused on acknowledgement: another member holds them now. */
static void jr_refused(struct pg_jr *j, int *v, int n)
{
    if (n == 0)
        return;
    for (int i = 0; i < n; i++)
        if (v[i] >= 0 && v[i] < j->c->nshares && j->epoch[v[i]] >= 0) {
            j->epoch[v[i]] = -1;
            j->nheld--;
        }
    /* a held page's ack goes again at every renewal: not to the shares that refused it */
    for (int i = 0, k; i < j->nack;) {
        for (k = 0; k < n && v[k] != j->ack_share[i]; k++)
            ;
        if (k < n) {
            j->ack_share[i] = j->ack_share[--j->nack];
            j->ack_epoch[i] = j->ack_epoch[j->nack];
        } else {
            i++;
        }
    }
    jr_log_shares(j, SN_LOG_ERROR, "lost", v, n,
                  "its acknowledgement was refused, another member holds them now and delivers their last "
                  "page again");
}

/* The shares held, in order, into v (room for nshares): how many. */
static int jr_held_shares(const struct pg_jr *j, int *v)
{
    int k = 0;
    for (int s = 0; s < j->c->nshares; s++)
        if (j->epoch[s] >= 0)
            v[k++] = s;
    return k;
}

/* The member's clock: a lease it could not renew in time is gone. */
static void jr_check_lease(struct pg_jr *j)
{
    int n = j->c->nshares, k = 0;
    if (j->nheld == 0 || pg_clock() - j->lease_ok <= j->c->lease)
        return;
    int *v = malloc((size_t)n * sizeof *v);
    if (v)
        k = jr_held_shares(j, v);
    for (int s = 0; s < n; s++)
        j->epoch[s] = -1;
    j->nheld = 0;
    char why[160];
    snprintf(why, sizeof why, "no lease renewal for %.1f s (lease %g s): another member may take them",
             pg_clock() - j->lease_ok, j->c->lease);
    if (v)
        jr_log_shares(j, SN_LOG_ERROR, "lost", v, k, why);
    free(v);
}

/* Whether another live member reads a channel this one does not (journal 12): then this
 * one reads nothing (its shares would pass that channel's rows), said when it starts and
 * when what it waits for changes, and when it reads again. */
static void jr_waits(struct pg_jr *j, PGresult *res)
{
    const char *waits = NULL;
    for (int i = 0; i < PQntuples(res); i++)
        if (atoi(PQgetvalue(res, i, 0)) == -2 && !PQgetisnull(res, i, 2))
            waits = PQgetvalue(res, i, 2);
    if (waits != NULL && (j->waits == NULL || strcmp(j->waits, waits) != 0)) {
        sn_logf(&j->c->sink, SN_LOG_ERROR,
                "consumer \"%s\": member %s reads nothing while %s, which it does not: the members of a "
                "consumer must watch the same tables and events (give each script its own consumer name); it reads "
                "again when that member stops or watches no more than this one",
                j->c->consumer, j->member, waits);
        free(j->waits);
        j->waits = strdup(waits); /* without memory: said again at the next step */
    } else if (waits == NULL && j->waits != NULL) {
        sn_logf(&j->c->sink, SN_LOG_INFO, "consumer \"%s\": member %s reads again: no member watches a channel it "
                "does not", j->c->consumer, j->member);
        free(j->waits);
        j->waits = NULL;
        j->want_fetch = 1;
    }
}

/* The lease step's answer: the member's shares now, and what moved. */
static void jr_lease_result(struct pg_jr *j, PGresult *res)
{
    int n = j->c->nshares, rows = PQntuples(res), nref = 0, nrel = 0, nlost = 0, took = 0;
    int64_t *now = malloc((size_t)n * sizeof *now);
    int *ref = malloc((size_t)(n + 1) * sizeof *ref), *rel = malloc((size_t)(n + 1) * sizeof *rel);
    if (now == NULL || ref == NULL || rel == NULL) {
        free(now), free(ref), free(rel);
        sn_logf(&j->c->sink, SN_LOG_ERROR, "out of memory reading the lease of consumer \"%s\"", j->c->consumer);
        return;
    }
    for (int s = 0; s < n; s++)
        now[s] = -1;
    jr_waits(j, res);
    for (int i = 0; i < rows; i++) {
        int s = atoi(PQgetvalue(res, i, 0));
        if (s == -1) /* sqlnotify.lease() made the consumer again */
            sn_logf(&j->c->sink, SN_LOG_ERROR,
                    "consumer \"%s\" was dropped while member %s was reading it; it starts again at the end of "
                    "the journal (what was committed in between is not delivered)",
                    j->c->consumer, j->member);
        if (s < 0 || s >= n)
            continue;
        const char *note = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
        if (!PQgetisnull(res, i, 1))
            now[s] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        else if (note && strcmp(note, "refused") == 0)
            ref[nref++] = s;
        else if (note && strcmp(note, "released") == 0)
            rel[nrel++] = s;
    }
    jr_refused(j, ref, nref);
    /* claims, one line per reason */
    for (int i = 0; i < rows; i++) {
        int s = atoi(PQgetvalue(res, i, 0));
        if (s < 0 || s >= n || PQgetisnull(res, i, 1) || PQgetisnull(res, i, 2) || now[s] < 0 || j->epoch[s] >= 0)
            continue;
        const char *why = PQgetvalue(res, i, 2);
        int k = 0;
        for (int i2 = i; i2 < rows; i2++) {
            int s2 = atoi(PQgetvalue(res, i2, 0));
            if (s2 >= 0 && s2 < n && !PQgetisnull(res, i2, 1) && !PQgetisnull(res, i2, 2) && j->epoch[s2] < 0 &&
                strcmp(PQgetvalue(res, i2, 2), why) == 0) {
                ref[k++] = s2;
                j->epoch[s2] = now[s2]; /* marks it reported */
            }
        }
        jr_log_shares(j, SN_LOG_INFO, "took", ref, k, why);
        took += k;
    }
    if (nrel > 0)
        jr_log_shares(j, SN_LOG_INFO, "gave up", rel, nrel, "to balance the group");
    for (int s = 0; s < n; s++) /* held before, neither kept nor released: taken meanwhile */
        if (j->epoch[s] >= 0 && now[s] < 0) {
            int gone = 0;
            for (int i = 0; i < nrel; i++)
                gone |= rel[i] == s;
            if (!gone)
                ref[nlost++] = s;
        }
    if (nlost > 0)
        jr_log_shares(j, SN_LOG_ERROR, "lost", ref, nlost, "another member took them");
    int nback = 0; /* given up for lost by its own clock, but nobody took them */
    for (int i = 0; i < rows; i++) {
        int s = atoi(PQgetvalue(res, i, 0));
        if (s >= 0 && s < n && now[s] >= 0 && PQgetisnull(res, i, 2) && j->epoch[s] < 0)
            ref[nback++] = s;
    }
    if (nback > 0)
        jr_log_shares(j, SN_LOG_WARN, "holds again", ref, nback, "nobody took them meanwhile");
    j->nheld = 0;
    for (int s = 0; s < n; s++) {
        j->epoch[s] = now[s];
        j->nheld += now[s] >= 0;
    }
    free(now), free(ref), free(rel);
    if (took > 0 || j->nheld > 0)
        j->want_fetch = 1;
}

/* seconds unseen after which another consumer counts as having stopped coming: its lease
 * step (every third of a lease) would have been seen by then */
static double jr_absent_after(const struct pg_jr *j)
{
    return j->c->lease * 3 > SN_ABSENT_AFTER ? j->c->lease * 3 : SN_ABSENT_AFTER;
}

static int jr_send(struct pg_jr *j, int query)
{
    int ok;
    if (query == JQ_LISTEN) {
        /* The reader's commits (cursor, acks, leases, maintenance) need not wait for the
         * disk: one lost in a server crash only moves a cursor back, never forward, so it
         * costs a redelivery, never an event (WAL order keeps a TRUNCATE behind the cursor
         * writes it relied on). It spares the writers an fsync per page. The server gives up
         * a statement as the reader does, a little before: one the reader abandons must not
         * go on running there while the next connection starts it again. */
        char sql[200];
        snprintf(sql, sizeof sql,
                 "SET synchronous_commit = off; SET statement_timeout = %.0f; LISTEN \"" PG_JOURNAL_CHANNEL "\"",
                 jr_stmt_deadline(j) * 900);
        ok = PQsendQuery(j->db, sql);
    } else if (query == JQ_MAINTAIN) {
        char ret[32];
        snprintf(ret, sizeof ret, "%.3f", j->c->consumer_retention);
        const char *vals[1] = {ret};
        /* the sequence's guards first: maintain() reads it (and may move it to the next epoch) */
        ok = PQsendQueryParams(j->db,
                               "SELECT q.cache_was, q.moved, sqlnotify.maintain($1, " JR_ROTATE_SECONDS ")"
                               " FROM sqlnotify.sequence_check() q",
                               1, NULL, vals, NULL, NULL, 0);
    } else if (query == JQ_ABSENT) {
        char ret[32], absent[32];
        snprintf(ret, sizeof ret, "%.3f", j->c->consumer_retention);
        snprintf(absent, sizeof absent, "%.3f", jr_absent_after(j));
        const char *vals[3] = {ret, j->c->consumer, absent};
        ok = PQsendQueryParams(j->db, JR_ABSENT_SQL, 3, NULL, vals, NULL, NULL, 0);
        j->absent_asked = pg_clock();
    } else {
        char acked[32], lease[32], nshares[16];
        sn_sbuf sh = {0}, ep = {0};
        snprintf(acked, sizeof acked, "%lld", (long long)j->acked);
        snprintf(lease, sizeof lease, "%.3f", j->c->lease);
        snprintf(nshares, sizeof nshares, "%d", j->c->nshares);
        sb_ints(&sh, j->ack_share, NULL, j->nack);
        sb_ints(&ep, NULL, j->ack_epoch, j->nack);
        if (sh.fail || ep.fail) {
            ok = 0;
        } else if (query == JQ_LEASE) {
            /* held: the page's shares are kept through the balancing (journal 9); kept: all */
            int keep = ((j->held && j->nack > 0) || j->keep_all) && !j->keep_refused;
            sn_sbuf kp = {0};
            int *kv = keep && j->keep_all ? malloc((size_t)j->c->nshares * sizeof *kv) : NULL;
            if (kv != NULL) /* without memory: the page's shares only, as when held */
                sb_ints(&kp, kv, NULL, jr_held_shares(j, kv));
            free(kv);
            /* journal 12 says the member's channels too; its p_keep is empty when nothing is kept */
            int chans = !j->chans_refused && j->plain_array != NULL;
            const char *vals[10] = {j->c->consumer, j->member, lease, nshares, sh.p, ep.p, j->batch ? j->batch : "",
                                    acked, !keep && chans ? "{}" : kp.p != NULL && !kp.fail ? kp.p : sh.p,
                                    j->plain_array};
            ok = PQsendQueryParams(j->db,
                                   chans ? "SELECT * FROM sqlnotify.lease($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                                   : keep ? "SELECT * FROM sqlnotify.lease($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                                          : "SELECT * FROM sqlnotify.lease($1, $2, $3, $4, $5, $6, $7, $8)",
                                   chans ? 10 : keep ? 9 : 8, NULL, vals, NULL, NULL, 0);
            j->lease_sent = pg_clock();
            j->lease_keep = keep && !chans;
            j->lease_chans = chans;
            free(kp.p);
        } else {
            const char *vals[7] = {j->c->consumer, j->member, sh.p, ep.p, j->batch ? j->batch : "", acked,
                                   j->chan_array ? j->chan_array : "{}"};
            ok = PQsendQueryParams(j->db,
                                   j->at_refused ? "SELECT *, NULL FROM sqlnotify.fetch($1, $2, $3, $4, $5, $6, $7, "
                                                   JR_PAGE ")"
                                                 : "SELECT * FROM sqlnotify.fetch_at($1, $2, $3, $4, $5, $6, $7, "
                                                   JR_PAGE ")",
                                   7, NULL, vals, NULL, NULL, 0);
        }
        free(sh.p);
        free(ep.p);
        j->carried = ok ? j->acked : 0;
    }
    if (!ok) {
        jr_lost(j, PQerrorMessage(j->db));
        return -1;
    }
    j->query = query;
    j->state = JR_BUSY;
    jr_deadline(j, query == JQ_LISTEN ? j->c->stmt_timeout : jr_stmt_deadline(j));
    jr_arm(j, PQflush(j->db) == 1 ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

/* The journal's id sequence was moved back (sqlnotify.sequence_moved's note: "<value>
 * <position> <moved to> <consumer as JSON>"). */
static void jr_seq_moved(struct pg_jr *j, const char *note)
{
    long long lv, hw, nv;
    int at = 0;
    if (sscanf(note, "%lld %lld %lld %n", &lv, &hw, &nv, &at) < 3 || at == 0)
        return;
    sn_logf(&j->c->sink, SN_LOG_ERROR,
            "the journal's id sequence sqlnotify.journal_id was moved back (to %lld, below the position %lld of a "
            "consumer, %s; ALTER SEQUENCE ... RESTART, setval() or a restore does that): moved it on to %lld; the "
            "rows written since are read, in id order within their batch (before the older rows of that batch), and "
            "their event.seq may repeat an older event's",
            lv, hw, note + at, nv);
}

/* Hand a page to the runtime; it acks (pg_jr_ack) what its handlers finished. The page's
 * rows without an id say which shares it covered ('G', with the batch), which acks were
 * refused ('R'), and what the sequence's guards found ('S': moved back, 'C': the cache it
 * has). 1 when the connection was closed from a handler. */
static int jr_deliver(struct pg_jr *j, PGresult *res)
{
    sn_conn *c = j->c;
    int rows = PQntuples(res), n = 0, ng = 0, nr = 0;
    const char *batch = NULL;
    sn_event *ev = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *ev);
    int *group = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *group);
    int *ref = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *ref);
    if (ev == NULL || group == NULL || ref == NULL) {
        free(ev), free(group), free(ref);
        sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: a page of the journal is read again");
        return 0;
    }
    for (int i = 0; i < rows; i++) {
        if (PQgetisnull(res, i, 1)) {
            const char *kind = PQgetvalue(res, i, 2);
            if (kind[0] == 'G') {
                group[ng++] = atoi(PQgetvalue(res, i, 0));
                batch = PQgetvalue(res, i, 3);
            } else if (kind[0] == 'S') {
                jr_seq_moved(j, PQgetvalue(res, i, 3));
            } else if (kind[0] == 'C') { /* read without bounds until maintenance sets CACHE 1 */
                j->want_maint = 1;
                if (j->maint_said > 0 && sn_say_due(&j->cache_said, pg_clock()))
                    sn_logf(&c->sink, SN_LOG_WARN,
                            "the journal's id sequence sqlnotify.journal_id has CACHE %s (it must be 1); only the "
                            "journal's owner may set it back (ALTER SEQUENCE sqlnotify.journal_id CACHE 1): "
                            "until then every fetch reads the journal from its first row (said once an hour while "
                            "it lasts)",
                            PQgetvalue(res, i, 3));
            } else {
                ref[nr++] = atoi(PQgetvalue(res, i, 0));
            }
            continue;
        }
        ev[n].seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        ev[n].channel = PQgetvalue(res, i, 2);
        ev[n].payload = PQgetvalue(res, i, 3);
        ev[n].payload_len = (size_t)PQgetlength(res, i, 3);
        ev[n].written = PQgetisnull(res, i, 4) ? 0 : strtod(PQgetvalue(res, i, 4), NULL);
        n++;
    }
    jr_refused(j, ref, nr);
    int closed = 0;
    if (jr_ack_set(j, group, ng, batch) < 0) {
        sn_logf(&c->sink, SN_LOG_ERROR, "out of memory: a page of the journal is read again");
        n = 0;
    }
    /* The loop renews no lease while handlers run: the page goes in slices, sized by how long
     * the handlers took so far, and stops once two thirds of the lease went by since the last
     * renewal; the rest is read again after the lease step (never delivered after another
     * member may have taken the shares, which would put one row's changes out of order). */
    double budget = c->lease * 2 / 3;
    int done = 0, slice = 1;
    while (done < n) {
        if (pg_clock() - j->lease_ok > budget) {
            sn_logf(&c->sink, SN_LOG_DEBUG, "consumer \"%s\": %d of a page of %d events delivered, the rest after "
                    "renewing the lease", c->consumer, done, n);
            j->want_lease = 1;
            j->want_fetch = 1;
            jr_check_lease(j);
            break;
        }
        int k = slice < n - done ? slice : n - done;
        double t0 = pg_clock();
        c->depth++;
        c->sink.deliver(c->sink.ud, ev + done, (size_t)k);
        c->depth--;
        if (c->dead) {
            if (c->depth == 0)
                pg_conn_free(c);
            closed = 1;
            break;
        }
        if (c->jr != j)
            break; /* stopped from a handler: j is gone */
        done += k;
        double per = (pg_clock() - t0) / k, left = budget - (pg_clock() - j->lease_ok);
        slice = per <= 0 || left / per / 2 >= n ? n : left / per / 2 < 1 ? 1 : (int)(left / per / 2);
    }
    free(ev), free(group), free(ref);
    return closed;
}

/* Consumers that stopped coming: see sn_say_absent(). */
static void jr_absent(struct pg_jr *j, PGresult *res)
{
    int none = res == NULL || PQntuples(res) != 1 || PQgetisnull(res, 0, 0);
    sn_say_absent(&j->c->sink, &j->absent_said, pg_clock(), none ? NULL : PQgetvalue(res, 0, 0),
                  "the journal's rows on", j->c->target, jr_absent_after(j), j->c->consumer_retention);
}

/* Housekeeping failed (a lock, a permission): said when it starts failing, then once an hour
 * while it goes on; reading goes on. */
static void jr_maint_failed(struct pg_jr *j, const char *why, const char *state)
{
    if (!sn_say_due(&j->maint_said, pg_clock()))
        return;
    char msg[512];
    pg_one_line(msg, sizeof msg, why);
    sn_logf(&j->c->sink, SN_LOG_ERROR, "journal maintenance failed on %s: %s%s (said once an hour while it lasts)",
            j->c->target, msg,
            strcmp(state, "42501") == 0 ? "; only the journal's owner may maintain it: rows are removed while a "
                                          "reader of that role runs"
                                        : "");
}

/* ===== the journal dropped under the reader ===== */

/* What a read that failed because the journal is gone says: schema "sqlnotify", or a table or
 * function of it, does not exist. */
static int jr_journal_gone(const char *state)
{
    return strcmp(state, "3F000") == 0 || strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0;
}

/* The journal went from under the reader (DROP SCHEMA sqlnotify, or a part of it): its setup
 * runs again, this consumer starts at the new journal's beginning (nothing older is left),
 * and the watches whose triggers went with it are installed again. Writes to durably watched
 * tables failed meanwhile: a durable trigger fails a write it cannot journal (docs/design.md).
 * 0, or -1 with the failure said (the reader retries as after a lost connection). */
static int jr_remake(struct pg_jr *j, const char *why)
{
    sn_conn *c = j->c;
    char err[512], msg[512];
    pg_one_line(msg, sizeof msg, why);
    pg_scrub(c, msg, sizeof msg);
    j->remade_at = pg_clock();
    if (pg_journal_remake(c, err, sizeof err) < 0 || pg_journal_register(c, 1, err, sizeof err) < 0) {
        sn_logf(&c->sink, SN_LOG_ERROR,
                "the durable journal (schema \"sqlnotify\") on %s is gone (%s) and could not be made again: %s; "
                "writes to durably watched tables fail until it is",
                c->target, msg, err);
        return -1;
    }
    sn_logf(&c->sink, SN_LOG_ERROR,
            "the durable journal (schema \"sqlnotify\") on %s was dropped (%s): made it again; writes to durably "
            "watched tables failed while it was missing (at most the last %.1f s), and the rows it held that no "
            "consumer had read are gone with it; consumer \"%s\" reads the new journal from its beginning",
            c->target, msg, pg_clock() - j->read_ok, c->consumer);
    for (size_t i = 0; i < c->nkept; i++) {
        const sn_watch *w = &c->kept[i];
        int listened = 0;
        for (size_t k = 0; k < j->nchans && !listened; k++)
            listened = strcmp(j->chans[k], w->channel) == 0;
        if (!listened)
            continue;
        int rc = pg_install(c, w, 0, err, sizeof err);
        if (rc == SN_INSTALL_CREATED || rc == SN_INSTALL_ERROR) {
            sn_sbuf b = {0};
            pg_sb_luaq(&b, w->schema);
            sn_sb_add(&b, ".");
            pg_sb_luaq(&b, w->table);
            static const char *const ops[] = {"insert", "update", "delete"};
            if (!b.fail)
                sn_logf(&c->sink, SN_LOG_ERROR, "trigger for %s on %s was gone with the journal: %s%s", ops[w->op],
                        b.p, rc == SN_INSTALL_CREATED ? "made it again" : "could not make it again: ",
                        rc == SN_INSTALL_CREATED ? "" : err);
            free(b.p);
        }
    }
    /* the shares, their epochs and the ack were the old journal's */
    for (int s = 0; s < c->nshares; s++)
        j->epoch[s] = -1;
    j->nheld = 0;
    jr_ack_clear(j);
    j->want_lease = 1;
    return 0;
}

/* The role may not call this journal's form of a step: *refused on, the step wanted again
 * (it goes the earlier way), and what that costs said once at warning level. */
static void jr_fall_back(struct pg_jr *j, PGresult *page, int *refused, int *want, const char *what)
{
    PQclear(page);
    *refused = 1;
    j->carried = 0;
    sn_logf(&j->c->sink, SN_LOG_WARN,
            "consumer \"%s\": this role may not call %s (the journal's owner may let it: GRANT EXECUTE ON ALL "
            "FUNCTIONS IN SCHEMA sqlnotify TO <role>)",
            j->c->consumer, what);
    *want = 1;
    jr_next(j);
}

static void jr_result(struct pg_jr *j)
{
    PGresult *res, *page = NULL;
    char why[512] = "", state[6] = "", primary[256] = "";
    while ((res = PQgetResult(j->db)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !*why) {
            const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            snprintf(why, sizeof why, "%s", PQresultErrorMessage(res));
            snprintf(state, sizeof state, "%s", code ? code : "");
            snprintf(primary, sizeof primary, "%s", m ? m : why);
        }
        if (st == PGRES_TUPLES_OK && j->query != JQ_LISTEN && page == NULL)
            page = res;
        else
            PQclear(res);
    }
    int query = j->query;
    j->query = JQ_NONE;
    j->state = JR_IDLE;
    ev_timer_stop(j->c->loop, &j->retry);
    /* A role granted only an earlier journal's functions: the step goes again the earlier way,
     * said once. lease(..., p_keep) of journal 9: the held shares unkept; fetch_at() of 10:
     * no row times. */
    int refused = *why && strcmp(state, "42501") == 0 && PQstatus(j->db) == CONNECTION_OK;
    if (refused && query == JQ_LEASE && j->lease_chans) {
        jr_fall_back(j, page, &j->chans_refused, &j->want_lease,
                     "sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint, int[], text[]) (journal "
                     "12), so its members are not told apart by the tables they watch (one that watches fewer "
                     "passes the others' rows)");
        return;
    }
    if (refused && query == JQ_LEASE && j->lease_keep) {
        jr_fall_back(j, page, &j->keep_refused, &j->want_lease,
                     "sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint, int[]) (journal 9), so "
                     "the shares whose events are in flight may go to another member while held");
        return;
    }
    if (refused && query == JQ_FETCH && !j->at_refused && strstr(primary, "fetch_at") != NULL) {
        jr_fall_back(j, page, &j->at_refused, &j->want_fetch,
                     "sqlnotify.fetch_at (journal 10), so its events have no written_at and the handler-start "
                     "histogram counts from their receipt");
        return;
    }
    if (*why && jr_journal_gone(state) && PQstatus(j->db) == CONNECTION_OK &&
        pg_clock() - j->remade_at >= JR_REMAKE_EVERY) {
        PQclear(page);
        if (jr_remake(j, primary) < 0)
            jr_lost(j, why);
        else
            jr_next(j);
        return;
    }
    if (*why && (query == JQ_MAINTAIN || query == JQ_ABSENT) && PQstatus(j->db) == CONNECTION_OK) {
        if (query == JQ_MAINTAIN)
            jr_maint_failed(j, why, state);
    } else if (*why) {
        PQclear(page);
        jr_lost(j, why);
        return;
    }
    if (j->carried && (query == JQ_FETCH || query == JQ_LEASE)) {
        /* written, or refused (reported below); a held page's acks keep coming, and each goes
         * again with the same shares and batch (an ack written twice changes nothing) */
        if (j->held || j->acked > j->carried)
            j->saved = j->carried;
        else
            jr_ack_clear(j);
        j->carried = 0;
    }
    /* the outage ends when the reader reads, or, held, when its lease step works */
    int reads = query == JQ_FETCH || (query == JQ_LEASE && j->held);
    if (reads && j->lost_at > 0) {
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
    if (reads) {
        sn_backoff_reset(&j->backoff); /* the backoff (and the outage) ends when the reader reads, not when it connects */
        j->read_ok = pg_clock();
    }
    if (query == JQ_LISTEN)
        j->want_lease = 1; /* the first thing after (re)connecting: which shares are ours */
    if (query == JQ_MAINTAIN && !*why) {
        j->maint_said = 0;
        if (page && PQntuples(page) == 1 && !PQgetisnull(page, 0, 0))
            sn_logf(&j->c->sink, SN_LOG_WARN,
                    "the journal's id sequence sqlnotify.journal_id had CACHE %s (it must be 1: a session hands out "
                    "the ids it cached after the sequence has moved past them, out of the order the reader pages "
                    "in); set it back to CACHE 1",
                    PQgetvalue(page, 0, 0));
        if (page && PQntuples(page) == 1 && !PQgetisnull(page, 0, 1))
            jr_seq_moved(j, PQgetvalue(page, 0, 1));
        if (j->absent_asked == 0 || pg_clock() - j->absent_asked >= SN_ABSENT_EVERY)
            j->want_absent = 1;
    }
    if (query == JQ_ABSENT && !*why)
        jr_absent(j, page);
    if (query == JQ_MAINTAIN || query == JQ_ABSENT)
        PQclear(page);
    if (query == JQ_LEASE) {
        j->lease_ok = j->lease_sent;
        jr_lease_result(j, page);
        PQclear(page);
    }
    if (query == JQ_FETCH) {
        int n = 0;
        for (int i = 0; page && i < PQntuples(page); i++)
            n += !PQgetisnull(page, i, 1);
        if (n > 0 || (page && PQntuples(page) > 0)) {
            sn_conn *c = j->c;
            int closed = jr_deliver(j, page);
            PQclear(page);
            if (closed || c->jr != j)
                return;
        } else {
            PQclear(page);
        }
        if (n > 0) {
            j->poll_every = JR_POLL_MIN;
            if (n >= JR_PAGE_N) {
                j->want_fetch = 1; /* a full page: read on at once (the fetch writes the ack) */
            } else { /* caught up: the ack rides the next fetch, 10 ms on (20 under load), with
                      * what came meanwhile */
                double gap = n >= JR_BUSY_ROWS ? JR_POLL_BUSY : JR_POLL_MIN;
                j->hold_until = n >= JR_BUSY_ROWS ? ev_now(j->c->loop) + gap : 0; /* the timer's clock */
                ev_timer_stop(j->c->loop, &j->poll);
                ev_timer_set(&j->poll, gap, 0.);
                ev_timer_start(j->c->loop, &j->poll);
            }
        } else {
            ev_timer_stop(j->c->loop, &j->poll);
            ev_timer_set(&j->poll, j->poll_every, 0.);
            ev_timer_start(j->c->loop, &j->poll);
            j->poll_every = j->poll_every * 2 > JR_POLL_MAX ? JR_POLL_MAX : j->poll_every * 2;
        }
    }
    jr_next(j);
}

/* Nothing in flight: send what is wanted, the lease first. A member without shares only
 * renews (its acknowledgement, if one is left, rides the lease step). */
static void jr_next(struct pg_jr *j)
{
    if (j->state != JR_IDLE)
        return;
    if (j->want_lease) {
        j->want_lease = 0;
        jr_send(j, JQ_LEASE);
    } else if (j->want_maint) {
        j->want_maint = 0;
        jr_send(j, JQ_MAINTAIN);
    } else if (j->want_absent) {
        j->want_absent = 0;
        jr_send(j, JQ_ABSENT);
    } else if (j->want_fetch && !j->held && !j->waits && j->nheld > 0 && (j->hold_until == 0 || ev_now(j->c->loop) >= j->hold_until)) {
        j->want_fetch = 0;
        j->hold_until = 0;
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
    if (j->held) /* the tick writes what was acked meanwhile, with a renewal */
        j->want_lease |= j->acked > j->saved;
    else
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

static void jr_lease_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pg_jr *j = w->data;
    jr_check_lease(j);
    if (j->state == JR_OFF || j->state == JR_WAITING || j->state == JR_CONNECTING)
        return; /* the reconnect asks for the lease first thing */
    j->want_lease = 1;
    jr_next(j);
}

/* '{"a","b"}' with every channel quoted for an array literal */
static void jr_array_add(sn_sbuf *b, const char *p, size_t n)
{
    sn_sb_add(b, b->len > 1 ? ",\"" : "\"");
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\')
            sn_sb_add(b, "\\");
        sn_sb_addn(b, p + i, 1);
    }
    sn_sb_add(b, "\"");
}

/* The channels as text[] literals: all of them (fetch), and their plain names once each (lease) */
static int jr_chan_array(struct pg_jr *j)
{
    sn_sbuf b = {0}, t = {0};
    sn_sb_add(&b, "{");
    sn_sb_add(&t, "{");
    for (size_t i = 0; i < j->nchans; i++) {
        jr_array_add(&b, j->chans[i], strlen(j->chans[i]));
        size_t n = (size_t)sn_plain_len(j->chans[i]), k = 0;
        while (k < i && !((size_t)sn_plain_len(j->chans[k]) == n && memcmp(j->chans[k], j->chans[i], n) == 0))
            k++;
        if (k == i)
            jr_array_add(&t, j->chans[i], n);
    }
    sn_sb_add(&b, "}");
    sn_sb_add(&t, "}");
    if (b.fail || t.fail) {
        free(b.p);
        free(t.p);
        return -1;
    }
    free(j->chan_array);
    free(j->plain_array);
    j->chan_array = b.p;
    j->plain_array = t.p;
    return 0;
}

static void jr_free(struct pg_jr *j)
{
    for (size_t i = 0; i < j->nchans; i++)
        free(j->chans[i]);
    free(j->chans);
    free(j->chan_array);
    free(j->plain_array);
    free(j->waits);
    free(j->epoch);
    free(j->ack_share);
    free(j->ack_epoch);
    free(j->batch);
    free(j);
}

static struct pg_jr *jr_new(sn_conn *c)
{
    struct pg_jr *j = calloc(1, sizeof *j);
    int n = c->nshares;
    if (j == NULL)
        return NULL;
    j->epoch = malloc((size_t)n * sizeof *j->epoch);
    j->ack_share = malloc((size_t)n * sizeof *j->ack_share);
    j->ack_epoch = malloc((size_t)n * sizeof *j->ack_epoch);
    if (j->epoch == NULL || j->ack_share == NULL || j->ack_epoch == NULL) {
        jr_free(j);
        return NULL;
    }
    for (int s = 0; s < n; s++)
        j->epoch[s] = -1;
    char host[64] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !*host)
        snprintf(host, sizeof host, "localhost");
    for (char *p = host; *p; p++) /* the member list's separators never appear in a name */
        if (*p == '=' || *p == ';' || *p == ',')
            *p = '_';
    snprintf(j->member, sizeof j->member, "%s:%d:%04x", host, (int)getpid(),
             (unsigned)((uint64_t)(pg_clock() * 1e6) ^ (uint64_t)(uintptr_t)j) & 0xffffu);
    j->c = c;
    j->poll_every = JR_POLL_MIN;
    j->read_ok = pg_clock();
    ev_init(&j->io, jr_io_cb);
    j->io.data = j;
    ev_init(&j->retry, jr_retry_cb);
    j->retry.data = j;
    ev_init(&j->poll, jr_poll_cb);
    j->poll.data = j;
    ev_timer_init(&j->maint, jr_maint_cb, 1., JR_MAINTAIN_EVERY);
    j->maint.data = j;
    ev_timer_init(&j->lease, jr_lease_cb, c->lease / 3, c->lease / 3);
    j->lease.data = j;
    return j;
}

/* ===== the driver's entry points in durable mode ===== */

int pg_jr_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    struct pg_jr *j = c->jr;
    if (j == NULL) {
        if (pg_journal_register(c, c->start_beginning, err, errlen) < 0)
            return -1;
        if ((j = jr_new(c)) == NULL)
            goto oom;
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
    /* recorded, so that the consumer's lag counts this channel's rows (journal 8); a role let
     * read the journal by a grant older than that function reads on, its lag counted on
     * every table */
    char why[512], *plain = strndup(channel, (size_t)sn_plain_len(channel));
    if (plain == NULL)
        goto oom;
    /* an untagged channel (the previous release's) replaces no capture */
    const char *vals[3] = {c->consumer, channel, strlen(plain) < strlen(channel) ? plain : NULL};
    PGresult *res = pg_exec(c, &c->ctl, "SELECT * FROM sqlnotify.reads_channel($1, $2, $3)", 3, vals, PG_RETRY, NULL,
                            why, sizeof why);
    free(plain);
    if (res == NULL && !j->reads_said) {
        j->reads_said = 1;
        sn_logf(&c->sink, SN_LOG_WARN,
                "consumer \"%s\": cannot record which channels it reads (%s); its lag counts every table's rows",
                c->consumer, why);
    }
    /* the captures of this channel's columns before they changed, read by no one now */
    for (int i = 0; res && i < PQntuples(res); i++)
        if (pg_capture_unused(c, PQgetvalue(res, i, 0)) >= 0) {
            const char *forget[2] = {c->consumer, PQgetvalue(res, i, 0)};
            PQclear(pg_exec(c, &c->ctl, "SELECT sqlnotify.reads_forget($1, $2)", 2, forget, PG_RETRY, NULL, why,
                            sizeof why));
        }
    PQclear(res);
    if ((j->chans[j->nchans] = strdup(channel)) == NULL)
        goto oom;
    j->nchans++;
    if (jr_chan_array(j) < 0)
        goto oom;
    if (j->state == JR_OFF) {
        ev_timer_start(c->loop, &j->maint);
        ev_timer_start(c->loop, &j->lease);
        ev_unref(c->loop); /* housekeeping must not keep the loop alive */
        ev_unref(c->loop);
        jr_connect(j);
    } else {
        j->want_fetch = 1;
        j->want_lease = 1; /* the other members see its tables at their next step */
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
            j->want_lease = 1;
            jr_next(j);
            return;
        }
    }
}

/* Stop reading: write the last ack and leave the group, so the other members take the
 * shares at once (on the control connection, within PG_LEAVE_TIMEOUT). The cursor stays in the
 * database; when that fails, the lease runs out and an unwritten ack is redelivered. */
void pg_jr_stop(sn_conn *c)
{
    struct pg_jr *j = c->jr;
    if (j == NULL)
        return;
    if (j->state != JR_OFF) {
        jr_disconnect(j);
        ev_ref(c->loop);
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &j->maint);
        ev_timer_stop(c->loop, &j->lease);
        char acked[32], state[6] = "", err[600];
        sn_sbuf sh = {0}, ep = {0};
        snprintf(acked, sizeof acked, "%lld", (long long)j->acked);
        sb_ints(&sh, j->ack_share, NULL, j->nack);
        sb_ints(&ep, NULL, j->ack_epoch, j->nack);
        const char *vals[6] = {c->consumer, j->member, sh.p, ep.p, j->batch ? j->batch : "", acked};
        /* the loop waits here (stop, close, exit): a server that does not answer gets less
         * time than a statement does; what is not written is delivered again */
        double ct = c->connect_timeout, st = c->stmt_timeout;
        c->connect_timeout = ct < PG_LEAVE_TIMEOUT ? ct : PG_LEAVE_TIMEOUT;
        c->stmt_timeout = st > 0 && st < PG_LEAVE_TIMEOUT ? st : PG_LEAVE_TIMEOUT;
        PGresult *res = sh.fail || ep.fail ? NULL
                                           : pg_exec(c, &c->ctl, "SELECT sqlnotify.leave($1, $2, $3, $4, $5, $6)",
                                                     6, vals, 0, state, err, sizeof err);
        c->connect_timeout = ct;
        c->stmt_timeout = st;
        if (res == NULL)
            sn_logf(&c->sink, SN_LOG_WARN,
                    "consumer \"%s\" could not leave its group: %s; its shares pass to the others when its lease "
                    "runs out, and what it acknowledged since the last save is delivered again",
                    c->consumer, sh.fail || ep.fail ? "out of memory" : err);
        PQclear(res);
        free(sh.p);
        free(ep.p);
    }
    jr_free(j);
    c->jr = NULL;
}

/* The runtime's ack: inside deliver, or outside while held (then written on the next tick;
 * later, when a statement is in flight or the connection is away). */
void pg_jr_ack(sn_conn *c, int64_t seq)
{
    struct pg_jr *j = c->jr;
    if (j == NULL || seq <= j->acked || (!j->held && c->depth == 0))
        return;
    j->acked = seq;
    if (j->held && c->depth == 0 && !ev_is_active(&j->poll) && j->state != JR_OFF) {
        ev_timer_set(&j->poll, JR_HELD_SAVE, 0.);
        ev_timer_start(c->loop, &j->poll);
    }
}

void pg_jr_status(sn_conn *c, double *down, int *shares)
{
    struct pg_jr *j = c->jr;
    *down = j && j->lost_at > 0 ? pg_clock() - j->lost_at : 0;
    *shares = j ? j->nheld : -1;
}

/* keep(1): the lease steps keep every share held (journal 9's p_keep), keep(0): as before. */
int pg_jr_keep_shares(sn_conn *c, int on)
{
    if (c->consumer == NULL || c->jr == NULL)
        return 0;
    c->jr->keep_all = on;
    return 1;
}

/* hold(1) inside deliver: the rest of the page goes on, then nothing is fetched. hold(0)
 * outside: a zero timer fetches from the last ack (the ack rides that fetch). */
int pg_jr_hold(sn_conn *c, int on)
{
    struct pg_jr *j = c->jr;
    if (c->consumer == NULL)
        return 0;
    if (j == NULL || on || !j->held) {
        if (j)
            j->held |= on;
        return 1;
    }
    j->held = 0;
    if (c->depth > 0 || j->state == JR_OFF) /* released inside deliver: the fetch comes as usual */
        return 1;
    j->want_fetch = 1;
    j->hold_until = 0;
    j->poll_every = JR_POLL_MIN;
    ev_timer_stop(c->loop, &j->poll);
    ev_timer_set(&j->poll, 0., 0.);
    ev_timer_start(c->loop, &j->poll);
    return 1;
}

/* ===== captures no consumer reads ===== */

/* A durable capture's channel that no consumer reads any more (its consumer dropped, or its
 * columns changed): its triggers go, so writers stop paying for rows no one reads. Logged;
 * 0 done, -1 not (said why; tried again at the next start). */
int pg_capture_unused(sn_conn *c, const char *channel)
{
    char err[512];
    int n = pg_drop_channel(c, channel, err, sizeof err);
    if (n < 0)
        sn_logf(&c->sink, SN_LOG_WARN,
                "cannot drop the trigger of capture %s, which no consumer reads any more: %s (sqlnotify-lua --drop "
                "URL table drops it by hand)",
                channel, err);
    else if (n > 0)
        sn_logf(&c->sink, SN_LOG_INFO, "dropped %d trigger(s) of capture %s, which no consumer reads any more", n,
                channel);
    return n < 0 ? -1 : 0;
}

/* ===== the durable watches, kept to install again ===== */

static void watch_free(sn_watch *w)
{
    free((char *)w->schema), free((char *)w->table), free((char *)w->label), free((char *)w->channel);
    free((char *)w->marker), free((char *)w->capture), free((char *)w->plain_channel);
    const char *const *lists[4] = {w->pk, w->extra, w->trigger_cols, w->old_cols};
    int ns[4] = {w->npk, w->nextra, w->ntrigger, w->nold};
    for (int l = 0; l < 4; l++) {
        for (int i = 0; lists[l] && i < ns[l]; i++)
            free((char *)lists[l][i]);
        free((void *)lists[l]);
    }
    memset(w, 0, sizeof *w);
}

static char *dup_or_null(const char *s, int *fail)
{
    char *d = s ? strdup(s) : NULL;
    *fail |= s && !d;
    return d;
}

static const char *const *dup_list(const char *const *v, int n, int *fail)
{
    if (v == NULL || n <= 0)
        return NULL;
    char **d = calloc((size_t)n, sizeof *d);
    if (d == NULL) {
        *fail = 1;
        return NULL;
    }
    for (int i = 0; i < n; i++)
        d[i] = dup_or_null(v[i], fail);
    return (const char *const *)d;
}

/* A copy of w replaces the one kept for its channel. */
int pg_jr_keep(sn_conn *c, const sn_watch *w)
{
    sn_watch d = *w;
    int fail = 0;
    d.schema = dup_or_null(w->schema, &fail);
    d.table = dup_or_null(w->table, &fail);
    d.label = dup_or_null(w->label, &fail);
    d.channel = dup_or_null(w->channel, &fail);
    d.marker = dup_or_null(w->marker, &fail);
    d.capture = dup_or_null(w->capture, &fail);
    d.plain_channel = dup_or_null(w->plain_channel, &fail);
    d.pk = dup_list(w->pk, w->npk, &fail);
    d.extra = dup_list(w->extra, w->nextra, &fail);
    d.trigger_cols = dup_list(w->trigger_cols, w->ntrigger, &fail);
    d.old_cols = dup_list(w->old_cols, w->nold, &fail);
    sn_watch *grown = fail ? NULL : realloc(c->kept, (c->nkept + 1) * sizeof *grown);
    if (grown == NULL) {
        watch_free(&d);
        return -1;
    }
    c->kept = grown;
    pg_jr_forget(c, w->channel);
    c->kept[c->nkept++] = d;
    return 0;
}

void pg_jr_forget(sn_conn *c, const char *channel)
{
    for (size_t i = 0; i < c->nkept; i++)
        if (strcmp(c->kept[i].channel, channel) == 0) {
            watch_free(&c->kept[i]);
            c->kept[i] = c->kept[--c->nkept];
            return;
        }
}

void pg_jr_forget_all(sn_conn *c)
{
    for (size_t i = 0; i < c->nkept; i++)
        watch_free(&c->kept[i]);
    free(c->kept);
    c->kept = NULL;
    c->nkept = 0;
}
