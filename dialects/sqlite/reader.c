/*
 * dialects/sqlite/reader.c — the reader: batches past the cursor, handed to
 * sink->deliver; gaps in seq reported; file-change wake-ups.
 *
 * Wake-ups: commits made on the query connection schedule a check on the next loop
 * iteration; commits from other processes are noticed through inotify on the
 * database file and its -wal (ev_stat where inotify is missing), confirmed with
 * PRAGMA data_version, with a slow poll as the safety net. Every wake-up path ends
 * in check(), which also notices a replaced file and a changed schema first.
 */
#include "sqlite.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif

/* After a file event, look again a few times: the write that woke us comes before the
 * commit is visible (a WAL writer still has to fsync and then update the shared index
 * header, an mmap write that raises no inotify event; a rollback-journal writer still
 * holds its lock), and nothing signals that moment. Dense first, since fsync usually
 * takes a millisecond or two, then backing off; each look is one PRAGMA data_version.
 * Gaps between looks, in whole milliseconds: libev's epoll and poll backends cannot
 * wait for less. Looks at 1, 2, 3, 4, 6, 10, 18 ... 258 ms after the last event. */
static const double settle_delays[] = {0.001, 0.001, 0.001, 0.001, 0.002, 0.004,
                                       0.008, 0.016, 0.032, 0.064, 0.128};
#define NSETTLE (sizeof settle_delays / sizeof settle_delays[0])

/* ===== reading the log ===== */

static int find_chan(const sn_conn *c, const char *name, size_t len)
{
    for (int i = 0; i < c->nchans; i++)
        if (c->chans[i].len == len && memcmp(c->chans[i].name, name, len) == 0)
            return i;
    return -1;
}

/* Used for commits on our own connection (delay 0: next loop iteration, never from
 * inside the caller) and for retries. */
void sqd_kick(sn_conn *c, double delay)
{
    if (!c->rd)
        return;
    if (ev_is_active(&c->kick)) {
        if (ev_timer_remaining(c->loop, &c->kick) <= delay)
            return;
        ev_timer_stop(c->loop, &c->kick);
    }
    ev_timer_set(&c->kick, delay, 0.);
    ev_timer_start(c->loop, &c->kick);
}

/* A read failed. Busy (a writer holds the lock, rollback-journal mode): retry soon with
 * the cursor unchanged. Anything else: log once per outage, retry a little later. */
static void read_failed(sn_conn *c, int rc)
{
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
        if (c->busy_delay <= 0)
            sn_logf(&c->sink, SN_LOG_DEBUG, "%s is locked by a writer; retrying", c->target);
        c->busy_delay = c->busy_delay <= 0 ? BUSY_RETRY_MIN
                        : c->busy_delay * 2 > BUSY_RETRY_MAX ? BUSY_RETRY_MAX
                        : c->busy_delay * 2;
        sqd_kick(c, c->busy_delay);
        return;
    }
    const char *msg = sqlite3_errmsg(c->rd);
    if (!c->last_err || strcmp(c->last_err, msg) != 0) {
        sn_logf(&c->sink, SN_LOG_WARN, "reading the change log of %s failed: %s; retrying",
                c->target, msg);
        free(c->last_err);
        c->last_err = sqd_strdup(msg);
    }
    sqd_kick(c, ERROR_RETRY);
}

static void read_ok(sn_conn *c)
{
    c->busy_delay = 0;
    if (c->last_err) {
        sn_logf(&c->sink, SN_LOG_INFO, "reading the change log of %s works again", c->target);
        free(c->last_err);
        c->last_err = NULL;
    }
}

static int arena_reserve(sn_conn *c, size_t more)
{
    if (c->arena_len + more <= c->arena_cap)
        return 0;
    size_t cap = c->arena_cap ? c->arena_cap : 64 * 1024;
    while (cap < c->arena_len + more)
        cap *= 2;
    char *p = realloc(c->arena, cap);
    if (!p)
        return -1;
    c->arena = p;
    c->arena_cap = cap;
    return 0;
}

/* Copy one row into the batch. 0, or -1 out of memory. */
static int batch_add(sn_conn *c, size_t n, const char *ch, size_t chlen, const char *pl,
                     size_t pllen)
{
    if (n == c->evcap) {
        size_t cap = c->evcap ? c->evcap * 2 : 256;
        sn_event *e = realloc(c->events, cap * sizeof *e);
        if (!e)
            return -1;
        c->events = e;
        size_t *o = realloc(c->offs, cap * 2 * sizeof *o);
        if (!o)
            return -1;
        c->offs = o;
        c->evcap = cap;
    }
    if (arena_reserve(c, chlen + pllen + 2))
        return -1;
    /* offsets, not pointers: the arena may move while the batch grows */
    c->offs[2 * n] = c->arena_len;
    memcpy(c->arena + c->arena_len, ch, chlen);
    c->arena[c->arena_len + chlen] = '\0';
    c->arena_len += chlen + 1;
    c->offs[2 * n + 1] = c->arena_len;
    if (pllen)
        memcpy(c->arena + c->arena_len, pl, pllen);
    c->arena[c->arena_len + pllen] = '\0';
    c->arena_len += pllen + 1;
    c->events[n].payload_len = pllen;
    c->events[n].seq = 0;   /* live mode */
    c->events[n].written = 0;
    return 0;
}

/* seq has no holes: AUTOINCREMENT under SQLite's one writer at a time, rolled back
 * inserts give their numbers back. A hole is rows removed before we read them. */
static void report_gap(sn_conn *c, sqlite3_int64 from, sqlite3_int64 to)
{
    if (c->consumer) {
        sn_logf(&c->sink, SN_LOG_ERROR, "events lost: rows %lld to %lld of the change log of %s "
                "were removed before consumer \"%s\" read them", (long long)from, (long long)to,
                c->target, c->consumer);
        return;
    }
    if (from == to)
        sn_logf(&c->sink, SN_LOG_ERROR, "events lost: row %lld of the change log of %s was "
                "removed before this reader read it", (long long)from, c->target);
    else
        sn_logf(&c->sink, SN_LOG_ERROR, "events lost: rows %lld to %lld of the change log of "
                "%s were removed before this reader read them", (long long)from,
                (long long)to, c->target);
}

/* Read one batch past the cursor. Returns the number of rows read (kept or not), or -1
 * after a failed read (already handled). *kept receives the number of batch events; *fenced
 * is set when the batch stops before a member row of the consumer's that blocks it (or whose
 * members could not be read): the cursor stays before it. */
static int fetch_batch(sn_conn *c, size_t *kept, int *fenced)
{
    sqlite3_stmt *st = c->fetch_stmt;
    sqlite3_int64 last = c->cursor;
    size_t n = 0;
    int rows = 0, rc;

    *fenced = 0;

    c->arena_len = 0;
    sqlite3_bind_int64(st, 1, c->cursor);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sqlite3_int64 seq = sqlite3_column_int64(st, 0);
        const char *ch = (const char *)sqlite3_column_text(st, 1);
        size_t chlen = (size_t)sqlite3_column_bytes(st, 1);
        rows++;
        if (seq > last + 1)
            report_gap(c, last + 1, seq - 1);
        if (c->consumer && ch && chlen == sizeof MEMBERS_CHANNEL - 1 && memcmp(ch, MEMBERS_CHANNEL, chlen) == 0) {
            /* a member's tables changed here: look before passing anything they capture */
            const char *who = (const char *)sqlite3_column_text(st, 2);
            if (who && strcmp(who, c->consumer) == 0 && sqd_members_fence(c)) {
                rows--;
                *fenced = 1;
                break;
            }
        }
        last = seq;
        if (!ch)
            continue;
        int i = find_chan(c, ch, chlen);
        if (i < 0 || seq <= c->chans[i].from)
            continue;
        const char *pl = (const char *)sqlite3_column_text(st, 2);
        size_t pllen = (size_t)sqlite3_column_bytes(st, 2);
        if (!pl)
            pl = "";
        if (batch_add(c, n, ch, chlen, pl, pllen)) {
            sqlite3_reset(st);
            sn_logf(&c->sink, SN_LOG_ERROR, "out of memory reading the change log of %s",
                    c->target);
            sqd_kick(c, ERROR_RETRY);
            return -1;
        }
        c->events[n].seq = c->consumer ? seq : 0;
        c->events[n].written = c->consumer ? sqlite3_column_double(st, 3) : 0;
        c->batch_last = seq;
        n++;
    }
    if (rc != SQLITE_DONE && !*fenced) {
        /* nothing of a failed batch is delivered: it is read again from the same cursor */
        read_failed(c, rc);
        sqlite3_reset(st);
        return -1;
    }
    /* reset before delivering: ends the read transaction, so handlers running long
     * never hold off writers or checkpoints */
    sqlite3_reset(st);
    c->cursor = c->batch_end = last;
    *kept = n;
    return rows;
}

/* A schema change first (one header read): a dropped log is made again, a durable trigger
 * gone with its table is made again, triggers naming renamed columns are regenerated, a log
 * made again is read from its start. dv: the data_version just read, or -1. */
static void schema_look(sn_conn *c, sqlite3_int64 dv)
{
    int rc = sqlite3_step(c->sv_stmt);
    sqlite3_int64 sv = rc == SQLITE_ROW ? sqlite3_column_int64(c->sv_stmt, 0) : -1;
    sqlite3_reset(c->sv_stmt);
    if (sv >= 0 && sv == c->schema_seen) {
        c->schema_same_at = ev_now(c->loop);
        c->same_dv = dv;
    } else if (sv >= 0 && sqd_schema_check(c)) {
        sqd_house_reschedule(c, 1);
    }
}

/* The one path every wake-up feeds: confirm a change with PRAGMA data_version, then
 * deliver batches until one comes back short. Returns 0 if c was freed inside a
 * handler (the caller must not touch it), else 1. */
static int check(sn_conn *c)
{
    if (!c->rd || c->depth)
        return 1;
    if (c->consumer && !c->active)
        return 1;   /* standing by: the lease timer takes over when it can */
    if (c->consumer && c->blocked && !c->held) {
        sqd_consumer_yield(c);   /* another member watches more: done with what was handed out */
        return 1;
    }
    if (c->consumer && c->held) {
        /* handlers of the last batch still run: write their acks, read nothing until
         * hold(0) (the changes wait in the log, the wake-ups that missed them do not matter:
         * the release reads at once) */
        if ((c->save_failed || c->pos_pending > c->acked) && sqd_consumer_flush(c))
            sqd_kick(c, BUSY_RETRY_MAX);
        /* but a trigger gone with its table is made again now, not after the handlers */
        schema_look(c, -1);
        return 1;
    }
    if (c->consumer && c->save_failed && sqd_consumer_flush(c)) {
        sqd_kick(c, BUSY_RETRY_MAX);   /* no new batch before the last one is saved */
        return 1;
    }
    if (c->file_suspect) {
        c->file_suspect = 0;
        if (sqd_file_replaced(c) && sqd_reopen(c) == 1)
            return 0;
        if (!c->rd)
            return 1;
    }

    int rc = sqlite3_step(c->dv_stmt);
    if (rc != SQLITE_ROW) {
        read_failed(c, rc);
        sqlite3_reset(c->dv_stmt);
        return 1;
    }
    sqlite3_int64 dv = sqlite3_column_int64(c->dv_stmt, 0);
    sqlite3_reset(c->dv_stmt);
    if (dv == c->dv && c->busy_delay <= 0 && !c->last_err) {
        if (dv == c->same_dv)
            c->schema_same_at = ev_now(c->loop);   /* no commit since the schema was found the same */
        return 1;
    }

    schema_look(c, dv);

    unsigned gen = c->gen;
    for (;;) {
        size_t n = 0;
        int fenced;
        int rows = fetch_batch(c, &n, &fenced);
        if (rows < 0)
            return 1;   /* dv not recorded: the retry reads again */
        if (c->consumer && !n && rows > 0 && c->pos_pending < c->batch_end)
            c->pos_pending = c->batch_end;   /* only other channels' rows: saved with the lease */
        if (n) {
            for (size_t i = 0; i < n; i++) {
                c->events[i].channel = c->arena + c->offs[2 * i];
                c->events[i].payload = c->arena + c->offs[2 * i + 1];
            }
            /* A durable batch goes in slices of about SLICE_SECONDS of handler time, the lease
             * looked at before each: a holder stalled in the middle (SIGSTOP, a handler that
             * blocked) past its lease must not deliver the rest after the process that took
             * over delivered it, and later changes of the same rows. */
            size_t done = 0, slice = c->consumer ? 1 : n;
            while (done < n) {
                if (c->consumer && !sqd_consumer_holds(c)) {
                    c->cursor = c->pos_pending;   /* the rest is read again, by whoever holds it */
                    if (c->active)
                        sqd_kick(c, BUSY_RETRY_MIN);
                    return 1;
                }
                size_t k = slice < n - done ? slice : n - done;
                double t0 = ev_time();
                c->depth++;
                c->sink.deliver(c->sink.ud, c->events + done, k);
                c->depth--;
                if (c->dead) {
                    sqd_free_conn(c);
                    return 0;
                }
                /* a handler stopped (or stopped and restarted) listening */
                if (!c->rd || c->gen != gen)
                    return 1;
                if (c->consumer) {
                    if (!c->active)
                        return 1;   /* lost the lease meanwhile: the new holder goes on */
                    /* held: the handlers took these and ack them later; go on with the page */
                    if (!c->held &&
                        c->pos_pending < (done + k == n ? c->batch_end : c->events[done + k - 1].seq)) {
                        /* not all handled (stopping): what was not is read again */
                        c->cursor = c->pos_pending;
                        if (c->pos_pending > c->acked)
                            sqd_consumer_flush(c);
                        return 1;
                    }
                }
                done += k;
                double per = (ev_time() - t0) / (double)k;
                slice = per <= 0 || SLICE_SECONDS / per >= (double)n ? n
                      : SLICE_SECONDS / per < 1                     ? 1
                                                                   : (size_t)(SLICE_SECONDS / per);
            }
            if (c->arena_cap > ARENA_KEEP) {
                free(c->arena);
                c->arena = NULL;
                c->arena_cap = 0;
            }
            if (c->consumer) {
                if (c->save_failed) {
                    sqd_kick(c, BUSY_RETRY_MIN);   /* saved by check() before the next batch */
                    return 1;
                }
                if (c->held)
                    return 1;   /* no next page until hold(0), which reads on from the last ack */
            }
        }
        if (fenced) {
            /* read again from the member row: at once by the next holder, or here a moment
             * later when its members could not be read */
            c->dv = -1;
            if (c->blocked)
                sqd_consumer_yield(c);
            else
                sqd_kick(c, ERROR_RETRY);
            return 1;
        }
        if (rows < FETCH_LIMIT)
            break;
    }
    /* Recorded only now: a commit after the PRAGMA either was in what we just read or
     * has changed data_version again, so the next wake-up cannot skip it. */
    c->dv = dv;
    read_ok(c);
    return 1;
}

void sqd_reader_rewind(sn_conn *c)
{
    sqlite3_int64 start = c->cursor;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, "SELECT min(seq) - 1 FROM " CHANGES_TABLE, -1, &st,
                           NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            start = sqlite3_column_int64(st, 0);
        else
            sqd_log_end(c->db, &start, NULL, 0);
        sqlite3_finalize(st);
    }
    sn_logf(&c->sink, SN_LOG_WARN, "the change log of %s was dropped and made again by "
            "another process; reading the new one from its start", c->target);
    /* Only ever back: rows between our cursor and a higher start were in the old log,
     * unread by us, and the gap check reports them. */
    if (start < c->cursor)
        c->cursor = start;
    for (int i = 0; i < c->nchans; i++)
        if (c->chans[i].from > start)
            c->chans[i].from = start;
}

static void kick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    check(t->data);
}

static void poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sn_conn *c = t->data;
    (void)loop;
    (void)revents;
    c->file_suspect = 1;   /* one stat() a second: a replaced file is noticed here at the latest */
    check(c);
}

static void settle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sn_conn *c = t->data;
    (void)revents;
    if (++c->settle_stage < NSETTLE) {
        ev_timer_set(t, settle_delays[c->settle_stage], 0.);
        ev_timer_start(loop, t);
    }
    check(c);
}

/* A file event: look now, and a few more times as the writer finishes. */
static void file_changed(sn_conn *c)
{
    ev_timer_stop(c->loop, &c->settle);
    c->settle_stage = 0;
    ev_timer_set(&c->settle, settle_delays[0], 0.);
    ev_timer_start(c->loop, &c->settle);
    check(c);
}

/* ===== file-change wake-ups ===== */

/*
 * On Linux inotify is used directly rather than through ev_stat: libev's ev_stat
 * decides whether a file changed by comparing stat() data, whose mtime it sees at
 * one-second resolution, and a WAL being rewritten in place keeps its size, so
 * back-to-back commits go unnoticed. inotify reports every write.
 */
#ifdef __linux__
static void watch_wal(sn_conn *c)
{
    c->wd_wal = inotify_add_watch(c->ifd, c->wal, IN_MODIFY | IN_CLOSE_WRITE);
}

static void watch_db(sn_conn *c)
{
    if (c->wd_db >= 0)
        inotify_rm_watch(c->ifd, c->wd_db);
    c->wd_db = inotify_add_watch(c->ifd, c->file, IN_MODIFY | IN_CLOSE_WRITE);
}

/* 1 if the event may mean a commit. */
static int inotify_event_seen(sn_conn *c, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW)
        return 1;
    if (ev->wd == c->wd_dir) {
        if (!ev->len)
            return 0;
        if (strcmp(ev->name, c->walbase) == 0) {
            if (ev->mask & (IN_CREATE | IN_MOVED_TO))
                watch_wal(c);   /* the -wal appeared after listen() */
            return (ev->mask & IN_DELETE) == 0;
        }
        if (strcmp(ev->name, c->base) == 0) {
            if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
                watch_db(c);    /* another file has the name now */
                c->file_suspect = 1;
            }
            return 1;
        }
        /* a rollback-journal commit ends by deleting the journal */
        return strcmp(ev->name, c->journalbase) == 0 && (ev->mask & IN_DELETE);
    }
    if (ev->mask & IN_IGNORED) {   /* the file went away; the directory watch brings it back */
        if (ev->wd == c->wd_wal)
            c->wd_wal = -1;
        if (ev->wd == c->wd_db)
            c->wd_db = -1;
        return 0;
    }
    return ev->wd == c->wd_db || ev->wd == c->wd_wal;
}

static void inotify_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sn_conn *c = w->data;
    _Alignas(struct inotify_event) char buf[4096];
    int wake = 0;
    (void)loop;
    (void)revents;

    for (;;) {
        ssize_t n = read(c->ifd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
            wake |= inotify_event_seen(c, ev);
            p += sizeof *ev + ev->len;
        }
    }
    if (wake)
        file_changed(c);
}

static int inotify_start(sn_conn *c)
{
    c->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (c->ifd < 0)
        return -1;
    c->wd_dir = inotify_add_watch(c->ifd, c->dir, IN_CREATE | IN_MOVED_TO | IN_DELETE);
    c->wd_db = -1;
    watch_db(c);
    watch_wal(c);   /* may not exist yet (rollback-journal mode): that is fine */
    if (c->wd_dir < 0 || c->wd_db < 0) {
        close(c->ifd);
        c->ifd = -1;
        return -1;
    }
    ev_io_init(&c->iow, inotify_cb, c->ifd, EV_READ);
    c->iow.data = c;
    ev_io_start(c->loop, &c->iow);
    return 0;
}
#endif

static void stat_cb(struct ev_loop *loop, ev_stat *w, int revents)
{
    sn_conn *c = w->data;
    (void)loop;
    (void)revents;
    if (w == &c->st_db)
        c->file_suspect = 1;
    file_changed(c);
}

static void watch_files_start(sn_conn *c)
{
#ifdef __linux__
    if (inotify_start(c) == 0)
        return;
    sn_logf(&c->sink, SN_LOG_DEBUG, "inotify unavailable (%s); watching %s with stat()",
            strerror(errno), c->target);
#endif
    /* libev's smallest stat() polling interval; the slow poll still backs it up */
    ev_stat_init(&c->st_db, stat_cb, c->file, 0.1);
    ev_stat_init(&c->st_wal, stat_cb, c->wal, 0.1);
    c->st_db.data = c->st_wal.data = c;
    ev_stat_start(c->loop, &c->st_db);
    ev_stat_start(c->loop, &c->st_wal);
}

static void watch_files_stop(sn_conn *c)
{
    if (c->ifd >= 0) {
        ev_io_stop(c->loop, &c->iow);
        close(c->ifd);
        c->ifd = -1;
    }
    c->wd_dir = c->wd_db = c->wd_wal = -1;
    ev_stat_stop(c->loop, &c->st_db);
    ev_stat_stop(c->loop, &c->st_wal);
}

/* ===== the reader ===== */

/* The absolute paths of the database, its -wal, its directory and the base names. */
static int set_paths(sn_conn *c)
{
    const char *f = sqlite3_db_filename(c->db, "main");
    if (!f || !*f)
        return -1;
    const char *slash = strrchr(f, '/');
    const char *base = slash ? slash + 1 : f;
    size_t dirlen = slash ? (size_t)(slash - f) : 0;

    c->file = sqd_strdup(f);
    c->wal = malloc(strlen(f) + 5);
    c->dir = malloc(dirlen + 2);
    c->base = sqd_strdup(base);
    c->walbase = malloc(strlen(base) + 5);
    c->journalbase = malloc(strlen(base) + 9);
    if (!c->file || !c->wal || !c->dir || !c->base || !c->walbase || !c->journalbase)
        return -1;
    sprintf(c->wal, "%s-wal", f);
    if (slash && dirlen == 0)
        strcpy(c->dir, "/");
    else if (slash) {
        memcpy(c->dir, f, dirlen);
        c->dir[dirlen] = '\0';
    } else
        strcpy(c->dir, ".");
    sprintf(c->walbase, "%s-wal", base);
    sprintf(c->journalbase, "%s-journal", base);
    return 0;
}

static void free_paths(sn_conn *c)
{
    free(c->file);
    free(c->wal);
    free(c->dir);
    free(c->base);
    free(c->walbase);
    free(c->journalbase);
    c->file = c->wal = c->dir = c->base = c->walbase = c->journalbase = NULL;
}

/* Open the reader and every watcher. fresh: start at the log's end; else go on from
 * the cursor, or from the log's end when that is lower (a replaced file). Order
 * matters: files are watched before the position is read, so a commit racing with
 * listen() is either below it or wakes us up. */
static int reader_open(sn_conn *c, int fresh, char *err, size_t errlen)
{
    sqlite3_int64 end = 0;
    if (set_paths(c)) {
        sn_seterr(err, errlen, "cannot listen on %s: no file name (or out of memory)",
                  c->target);
        free_paths(c);
        return -1;
    }
    int rc = sqlite3_open_v2(c->file, &c->rd, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK) {
        sn_seterr(err, errlen, "cannot listen on %s: %s", c->target,
                  c->rd ? sqlite3_errmsg(c->rd) : sqlite3_errstr(rc));
        goto fail;
    }
    if (sqd_prepare(c->rd, "PRAGMA data_version", &c->dv_stmt, err, errlen) ||
        sqd_prepare(c->rd, "PRAGMA schema_version", &c->sv_stmt, err, errlen) ||
        sqd_prepare(c->rd, "SELECT seq, channel, payload, created_at FROM " CHANGES_TABLE
                           " WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    &c->fetch_stmt, err, errlen))
        goto fail;
    sqlite3_bind_int(c->fetch_stmt, 2, FETCH_LIMIT);   /* bindings survive resets */
    c->gen++;
    c->same_dv = -1;
    watch_files_start(c);

    /* listen() is a blocking call: wait for a writer here if needed */
    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    rc = sqlite3_step(c->dv_stmt);
    if (rc == SQLITE_ROW)
        c->dv = sqlite3_column_int64(c->dv_stmt, 0);
    else
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->rd));
    sqlite3_reset(c->dv_stmt);
    rc = rc == SQLITE_ROW && sqd_log_end(c->rd, &end, err, errlen) == 0 ? SQLITE_OK : SQLITE_ERROR;
    free(c->log_sql);
    c->log_sql = rc == SQLITE_OK ? sqd_log_sql(c->rd) : NULL;
    sqlite3_busy_timeout(c->rd, 0);
    if (rc != SQLITE_OK)
        goto fail;
    if (fresh || end < c->cursor)
        c->cursor = end;
    if (!fresh)
        c->dv = -1;   /* a new file may hold rows past the cursor already: read at once */
    for (int i = 0; i < c->nchans; i++)
        if (c->chans[i].from > c->cursor)
            c->chans[i].from = c->cursor;

    return 0;

fail:
    sqd_reader_close(c);
    return -1;
}

void sqd_reader_close(sn_conn *c)
{
    watch_files_stop(c);
    if (c->rd) {
        ev_timer_stop(c->loop, &c->kick);
        ev_timer_stop(c->loop, &c->settle);
        sqd_timer_stop_unref(c->loop, &c->poll);
    }
    sqlite3_finalize(c->dv_stmt);
    sqlite3_finalize(c->sv_stmt);
    sqlite3_finalize(c->fetch_stmt);
    c->dv_stmt = c->sv_stmt = c->fetch_stmt = NULL;
    sqlite3_close(c->rd);
    c->rd = NULL;
    free(c->log_sql);
    c->log_sql = NULL;
    free_paths(c);
}

static void reader_timers_start(sn_conn *c)
{
    ev_timer_init(&c->kick, kick_cb, 0., 0.);
    ev_timer_init(&c->settle, settle_cb, 0., 0.);
    ev_timer_init(&c->poll, poll_cb, POLL_INTERVAL, POLL_INTERVAL);
    c->kick.data = c->settle.data = c->poll.data = c;
    sqd_timer_start_unref(c->loop, &c->poll);
    c->busy_delay = 0;
}

int sqd_reader_reopen(sn_conn *c, char *err, size_t errlen)
{
    if (reader_open(c, 0, err, errlen))
        return -1;
    reader_timers_start(c);
    sqd_heartbeat(c);
    if (c->consumer)
        sqd_consumer_reopened(c);
    return 0;
}

static int start_listening(sn_conn *c, char *err, size_t errlen)
{
    if (reader_open(c, 1, err, errlen))
        return -1;
    if (c->consumer && sqd_consumer_register(c, err, errlen)) {
        sqd_reader_close(c);
        return -1;
    }
    reader_timers_start(c);
    sqlite3_randomness(sizeof c->reader_id, &c->reader_id);
    c->reader_id &= INT64_MAX;
    if (c->reader_id == 0)
        c->reader_id = 1;
    /* Registered at once, so others prune nothing past us from now on; if the lock
     * cannot be had (a transaction of the caller's is open), the next tick does it. */
    if (sqd_heartbeat(c) != SQLITE_OK)
        sn_logf(&c->sink, SN_LOG_DEBUG, "%s: reader position not written yet: %s", c->target,
                sqlite3_errmsg(c->db));
    if (c->consumer) {
        /* quiet: the tables of the listens still to come are not ours yet, and what is
         * missing then is said at the next beat */
        sqd_members_beat(c, 1);
        sqd_consumer_try_lease(c);   /* holder now, or standing by (said so) */
        sqd_kick_lease(c, LEASE_BEAT);
    }
    c->schema_seen = -1;
    sqd_house_reschedule(c, 0);
    return 0;
}

/* Safe in any state, also half way through start_listening. */
void sqd_stop_listening(sn_conn *c)
{
    if (c->rd)
        sqd_consumer_stop(c);
    if (c->rd)
        sqd_reader_forget(c);
    sqd_reader_close(c);
    c->reader_id = 0;
    for (int i = 0; i < c->nchans; i++)
        free(c->chans[i].name);
    free(c->chans);
    c->chans = NULL;
    c->nchans = c->capchans = 0;
    free(c->last_err);
    c->last_err = NULL;
}

/* ===== dialect: listening ===== */

int sqd_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    if (!c->rd && start_listening(c, err, errlen))
        return -1;
    if (find_chan(c, channel, strlen(channel)) >= 0)
        return 0;

    struct chan ch = {sqd_strdup(channel), strlen(channel), 0};
    if (!ch.name)
        goto oom;
    /* A channel added later starts at the log's end too, as a LISTEN would. */
    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    /* A durable consumer reads everything past its position. */
    int bad = c->consumer ? 0 : sqd_log_end(c->rd, &ch.from, err, errlen);
    sqlite3_busy_timeout(c->rd, 0);
    if (bad) {
        free(ch.name);
        return -1;
    }
    if (c->nchans == c->capchans) {
        int cap = c->capchans ? c->capchans * 2 : 8;
        struct chan *p = realloc(c->chans, (size_t)cap * sizeof *p);
        if (!p) {
            free(ch.name);
            goto oom;
        }
        c->chans = p;
        c->capchans = cap;
    }
    if (c->consumer && (sqd_consumer_reads(c, channel, err, errlen) || sqd_members_add(c, channel, err, errlen))) {
        free(ch.name);
        return -1;
    }
    c->chans[c->nchans++] = ch;
    return 0;

oom:
    sn_seterr(err, errlen, "out of memory");
    return -1;
}

void sqd_unlisten(sn_conn *c, const char *channel)
{
    int i = find_chan(c, channel, strlen(channel));
    if (i < 0)
        return;
    free(c->chans[i].name);
    memmove(&c->chans[i], &c->chans[i + 1], (size_t)(c->nchans - i - 1) * sizeof c->chans[0]);
    c->nchans--;
    if (c->consumer)
        sqd_members_remove(c, channel);
}
