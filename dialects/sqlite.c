/*
 * dialects/sqlite.c — the SQLite driver behind dialect.h.
 *
 * SQLite has no NOTIFY, so triggers append every change to a log table,
 * sqlnotify_changes (seq, channel, payload, created_at), and listeners read past a
 * cursor. Every process watching a file reads the same rows (broadcast); nobody
 * deletes a row before its retention has passed, and a pruning timer removes
 * older ones in small batches.
 *
 * Two connections per sn_conn: the query connection (open, describe, install,
 * notify, query, pruning; blocking with a busy timeout) and, once listen() is
 * called, the reader (never blocks: busy timeout 0, retried on a timer).
 *
 * Wake-ups: commits made on the query connection schedule a check on the next
 * loop iteration; commits from other processes are noticed through inotify on the
 * database file and its -wal (ev_stat where inotify is missing), confirmed with
 * PRAGMA data_version, with a slow poll as the safety net. Every wake-up path ends
 * in check(), which reads batches and hands them to sink->deliver.
 */
#include "dialect.h"

#include <sqlite3.h>
#include <ev.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif

/* Bump when the generated trigger SQL changes, so old triggers count as changed. */
#define SQL_VERSION 1

#define CHANGES_TABLE "sqlnotify_changes"
#define BUSY_TIMEOUT_MS 5000     /* query connection: blocking calls may wait this long */
#define FETCH_LIMIT 5000         /* rows per read of the change log */
#define PRUNE_BATCH 1000         /* rows per DELETE: keeps each write lock short */
#define PRUNE_STATEMENTS 4       /* DELETEs per prune tick */
#define PRUNE_HURRY 0.01         /* next tick when a tick ended with rows left to prune */
#define POLL_INTERVAL 1.0        /* safety-net poll when no file event arrives */
#define BUSY_RETRY_MIN 0.001     /* reader retry after SQLITE_BUSY, doubling... */
#define BUSY_RETRY_MAX 0.020     /* ...up to this */
#define ERROR_RETRY 0.25         /* reader retry after any other error */
#define ARENA_KEEP (8u << 20)    /* batch buffers larger than this are released after use */

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

struct chan {
    char *name;
    size_t len;
    sqlite3_int64 from;          /* rows at or below this seq predate the listen() */
};

struct sn_conn {
    struct ev_loop *loop;
    sn_sink sink;
    double retention;
    char *path;                  /* as written in the URL */
    char *target;
    sqlite3 *db;                 /* query connection */
    sqlite3_stmt *notify_stmt;
    ev_timer prune;

    /* listening; rd != NULL while listening */
    sqlite3 *rd;
    sqlite3_stmt *dv_stmt, *fetch_stmt;
    unsigned gen;                /* bumped each time a reader is opened */
    sqlite3_int64 cursor, dv;
    struct chan *chans;
    int nchans, capchans;
    char *file, *wal, *dir, *base, *walbase, *journalbase;
    int ifd, wd_dir, wd_db, wd_wal;
    ev_io iow;
    ev_stat st_db, st_wal;
    ev_timer poll, kick, settle;
    size_t settle_stage;
    double busy_delay;
    char *last_err;              /* last reader error logged, to log each outage once */

    /* the batch being delivered: strings copied out so the read transaction ends
     * before the handlers run */
    char *arena;
    size_t arena_len, arena_cap;
    sn_event *events;
    size_t *offs;
    size_t evcap;

    int depth;                   /* > 0 while inside sink->deliver */
    int dead;                    /* close() was called inside deliver: free on the way out */
};

static void stop_listening(sn_conn *c);

/* ===== small helpers ===== */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Run SQL without results on a connection; 0, or -1 and err. */
static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    sn_seterr(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

/* Start a write transaction, or a savepoint when the caller (through query()) already
 * has one open. BEGIN IMMEDIATE takes the write lock up front, so reading the catalog
 * and then writing cannot fail half way on a lock upgrade. */
static int txn_begin(sqlite3 *db, int *nested, char *err, size_t errlen)
{
    *nested = !sqlite3_get_autocommit(db);
    return exec_sql(db, *nested ? "SAVEPOINT sqlnotify" : "BEGIN IMMEDIATE", err, errlen);
}

static int txn_commit(sqlite3 *db, int nested, char *err, size_t errlen)
{
    return exec_sql(db, nested ? "RELEASE sqlnotify" : "COMMIT", err, errlen);
}

static void txn_rollback(sqlite3 *db, int nested)
{
    if (nested)
        sqlite3_exec(db, "ROLLBACK TO sqlnotify; RELEASE sqlnotify", NULL, NULL, NULL);
    else if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK)
        return 0;
    sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    *st = NULL;
    return -1;
}

/* Timers that must not keep the loop alive on their own. */
static void timer_start_unref(struct ev_loop *loop, ev_timer *t)
{
    ev_timer_start(loop, t);
    ev_unref(loop);
}

static void timer_stop_unref(struct ev_loop *loop, ev_timer *t)
{
    if (!ev_is_active(t))
        return;
    ev_ref(loop);
    ev_timer_stop(loop, t);
}

/* ===== URL ===== */

/* "sqlite:///rel.db" -> "rel.db", "sqlite:////abs.db" -> "/abs.db"; "?..." ignored.
 * A malloc'd path, or NULL and err. */
static char *parse_url(const char *url, char *err, size_t errlen)
{
    static const char prefix[] = "sqlite:///";
    const size_t plen = sizeof prefix - 1;

    if (!url || strncasecmp(url, prefix, plen) != 0) {
        sn_seterr(err, errlen,
                  "not a SQLite URL: \"%s\" (expected sqlite:///relative.db or "
                  "sqlite:////absolute/path.db)", url ? url : "");
        return NULL;
    }
    const char *p = url + plen;
    size_t n = strcspn(p, "?#");
    if (n == 0 || (n == 1 && p[0] == '/')) {
        sn_seterr(err, errlen, "no database path in SQLite URL \"%s\"", url);
        return NULL;
    }
    if (n == 8 && memcmp(p, ":memory:", 8) == 0) {
        sn_seterr(err, errlen, "an in-memory SQLite database cannot be watched: "
                  "the listener's own connection would not see it (use a file)");
        return NULL;
    }
    char *path = malloc(n + 1);
    if (!path) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(path, p, n);
    path[n] = '\0';
    return path;
}

/* ===== the change log and its pruning ===== */

/* Create the log if missing. The check first keeps an existing database from taking
 * a write lock (and bumping its schema) at every start. */
static int ensure_changes_table(sqlite3 *db, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (prepare(db, "SELECT count(*) FROM sqlite_master WHERE "
                    "(type = 'table' AND name = '" CHANGES_TABLE "') OR "
                    "(type = 'index' AND name = '" CHANGES_TABLE "_created_at')",
                &st, err, errlen))
        return -1;
    int rc = sqlite3_step(st);
    int have = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    if (have < 0)
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    if (have < 0)
        return -1;
    if (have == 2)
        return 0;

    int nested;
    if (txn_begin(db, &nested, err, errlen))
        return -1;
    /* AUTOINCREMENT: a seq is never handed out twice, even after pruning emptied the
     * table, so a reader's cursor cannot skip a new row. */
    if (exec_sql(db,
                 "CREATE TABLE IF NOT EXISTS " CHANGES_TABLE " ("
                 "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "channel TEXT NOT NULL, "
                 "payload TEXT NOT NULL, "
                 "created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0));"
                 "CREATE INDEX IF NOT EXISTS " CHANGES_TABLE "_created_at ON "
                 CHANGES_TABLE " (created_at);",
                 err, errlen) ||
        txn_commit(db, nested, err, errlen)) {
        txn_rollback(db, nested);
        return -1;
    }
    return 0;
}

static double prune_interval(const sn_conn *c)
{
    double t = c->retention / 4;
    return t < 0.05 ? 0.05 : t > 60 ? 60 : t;
}

/* Delete rows older than the retention, a few small batches per tick. Housekeeping
 * must not stall the loop: it gives up at once when someone holds the lock, and it
 * stays out of a transaction the user opened through query(). While listening, only
 * rows our reader has already read go: libev runs a due timer before the file event
 * of the same loop iteration, so after the loop was held up (a long handler, a
 * blocking call) rows past the retention may not have been delivered yet. */
static void prune_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sn_conn *c = t->data;
    int more = 0;
    (void)revents;

    if (c->db && sqlite3_get_autocommit(c->db)) {
        sqlite3_stmt *st = NULL;
        const char *sql =
            "DELETE FROM " CHANGES_TABLE " WHERE seq IN (SELECT seq FROM " CHANGES_TABLE
            " WHERE created_at < (julianday('now') - 2440587.5) * 86400.0 - ?1 AND seq <= ?3"
            " LIMIT ?2)";
        sqlite3_busy_timeout(c->db, 0);
        if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_double(st, 1, c->retention);
            sqlite3_bind_int(st, 2, PRUNE_BATCH);
            sqlite3_bind_int64(st, 3, c->rd ? c->cursor : INT64_MAX);
            for (int i = 0; i < PRUNE_STATEMENTS; i++) {
                int rc = sqlite3_step(st);
                int n = sqlite3_changes(c->db);
                sqlite3_reset(st);
                if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
                    more = 1;       /* someone else is writing: come back soon */
                    break;
                }
                if (rc != SQLITE_DONE) {
                    sn_logf(&c->sink, SN_LOG_WARN, "pruning %s failed: %s", c->target,
                            sqlite3_errmsg(c->db));
                    break;
                }
                more = n == PRUNE_BATCH;
                if (!more)
                    break;
            }
        } else {
            sn_logf(&c->sink, SN_LOG_WARN, "pruning %s failed: %s", c->target,
                    sqlite3_errmsg(c->db));
        }
        sqlite3_finalize(st);
        sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    }
    t->repeat = more ? PRUNE_HURRY : prune_interval(c);
    ev_timer_again(loop, t);
}

/* ===== listening: reading the log ===== */

static int find_chan(const sn_conn *c, const char *name, size_t len)
{
    for (int i = 0; i < c->nchans; i++)
        if (c->chans[i].len == len && memcmp(c->chans[i].name, name, len) == 0)
            return i;
    return -1;
}

/* Schedule a check after delay seconds unless one is due sooner. Used for commits on
 * our own connection (delay 0: next loop iteration, never from inside the caller) and
 * for retries. */
static void kick(sn_conn *c, double delay)
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
        kick(c, c->busy_delay);
        return;
    }
    const char *msg = sqlite3_errmsg(c->rd);
    if (!c->last_err || strcmp(c->last_err, msg) != 0) {
        sn_logf(&c->sink, SN_LOG_WARN, "reading the change log of %s failed: %s; retrying",
                c->target, msg);
        free(c->last_err);
        c->last_err = xstrdup(msg);
    }
    kick(c, ERROR_RETRY);
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
    return 0;
}

static void free_conn(sn_conn *c)
{
    free(c->arena);
    free(c->events);
    free(c->offs);
    free(c->path);
    free(c->target);
    free(c);
}

/* Read one batch past the cursor. Returns the number of rows read (kept or not), or -1
 * after a failed read (already handled). *kept receives the number of batch events. */
static int fetch_batch(sn_conn *c, size_t *kept)
{
    sqlite3_stmt *st = c->fetch_stmt;
    sqlite3_int64 last = c->cursor;
    size_t n = 0;
    int rows = 0, rc;

    c->arena_len = 0;
    sqlite3_bind_int64(st, 1, c->cursor);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sqlite3_int64 seq = sqlite3_column_int64(st, 0);
        const char *ch = (const char *)sqlite3_column_text(st, 1);
        size_t chlen = (size_t)sqlite3_column_bytes(st, 1);
        rows++;
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
            kick(c, ERROR_RETRY);
            return -1;
        }
        n++;
    }
    if (rc != SQLITE_DONE) {
        /* nothing of a failed batch is delivered: it is read again from the same cursor */
        read_failed(c, rc);
        sqlite3_reset(st);
        return -1;
    }
    /* reset before delivering: ends the read transaction, so handlers running long
     * never hold off writers or checkpoints */
    sqlite3_reset(st);
    c->cursor = last;
    *kept = n;
    return rows;
}

/* The one path every wake-up feeds: confirm a change with PRAGMA data_version, then
 * deliver batches until one comes back short. Returns 0 if c was freed inside a
 * handler (the caller must not touch it), else 1. */
static int check(sn_conn *c)
{
    if (!c->rd || c->depth)
        return 1;

    int rc = sqlite3_step(c->dv_stmt);
    if (rc != SQLITE_ROW) {
        read_failed(c, rc);
        sqlite3_reset(c->dv_stmt);
        return 1;
    }
    sqlite3_int64 dv = sqlite3_column_int64(c->dv_stmt, 0);
    sqlite3_reset(c->dv_stmt);
    if (dv == c->dv && c->busy_delay <= 0 && !c->last_err)
        return 1;

    unsigned gen = c->gen;
    for (;;) {
        size_t n = 0;
        int rows = fetch_batch(c, &n);
        if (rows < 0)
            return 1;   /* dv not recorded: the retry reads again */
        if (n) {
            for (size_t i = 0; i < n; i++) {
                c->events[i].channel = c->arena + c->offs[2 * i];
                c->events[i].payload = c->arena + c->offs[2 * i + 1];
            }
            c->depth++;
            c->sink.deliver(c->sink.ud, c->events, n);
            c->depth--;
            if (c->dead) {
                free_conn(c);
                return 0;
            }
            if (c->arena_cap > ARENA_KEEP) {
                free(c->arena);
                c->arena = NULL;
                c->arena_cap = 0;
            }
            /* a handler stopped (or stopped and restarted) listening */
            if (!c->rd || c->gen != gen)
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

static void kick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    check(t->data);
}

static void poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    check(t->data);
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

/* ===== listening: file-change wake-ups ===== */

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
            if (ev->mask & (IN_CREATE | IN_MOVED_TO))
                c->wd_db = inotify_add_watch(c->ifd, c->file, IN_MODIFY | IN_CLOSE_WRITE);
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
    c->wd_db = inotify_add_watch(c->ifd, c->file, IN_MODIFY | IN_CLOSE_WRITE);
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
    (void)loop;
    (void)revents;
    file_changed(w->data);
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
    ev_stat_stop(c->loop, &c->st_db);
    ev_stat_stop(c->loop, &c->st_wal);
}

/* ===== listening: the reader ===== */

/* The absolute paths of the database, its -wal, its directory and the base names. */
static int set_paths(sn_conn *c)
{
    const char *f = sqlite3_db_filename(c->db, "main");
    if (!f || !*f)
        return -1;
    const char *slash = strrchr(f, '/');
    const char *base = slash ? slash + 1 : f;
    size_t dirlen = slash ? (size_t)(slash - f) : 0;

    c->file = xstrdup(f);
    c->wal = malloc(strlen(f) + 5);
    c->dir = malloc(dirlen + 2);
    c->base = xstrdup(base);
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

/* MAX(seq) now, waiting for a writer if needed (listen() is a blocking call). */
static int read_max_seq(sn_conn *c, sqlite3_int64 *out, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    int ok = -1;
    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    if (prepare(c->rd, "SELECT coalesce(max(seq), 0) FROM " CHANGES_TABLE, &st, err, errlen) == 0) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            ok = 0;
        } else
            sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->rd));
        sqlite3_finalize(st);
    }
    sqlite3_busy_timeout(c->rd, 0);
    return ok;
}

/* Open the reader and every watcher. Order matters: files are watched before the
 * cursor is read, so a commit racing with listen() is either below the cursor or
 * wakes us up. */
static int start_listening(sn_conn *c, char *err, size_t errlen)
{
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
    if (prepare(c->rd, "PRAGMA data_version", &c->dv_stmt, err, errlen) ||
        prepare(c->rd, "SELECT seq, channel, payload FROM " CHANGES_TABLE
                       " WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                &c->fetch_stmt, err, errlen))
        goto fail;
    sqlite3_bind_int(c->fetch_stmt, 2, FETCH_LIMIT);   /* bindings survive resets */
    c->gen++;
    watch_files_start(c);

    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    rc = sqlite3_step(c->dv_stmt);
    if (rc == SQLITE_ROW)
        c->dv = sqlite3_column_int64(c->dv_stmt, 0);
    else
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->rd));
    sqlite3_reset(c->dv_stmt);
    sqlite3_busy_timeout(c->rd, 0);
    if (rc != SQLITE_ROW || read_max_seq(c, &c->cursor, err, errlen))
        goto fail;

    ev_timer_init(&c->kick, kick_cb, 0., 0.);
    ev_timer_init(&c->settle, settle_cb, 0., 0.);
    ev_timer_init(&c->poll, poll_cb, POLL_INTERVAL, POLL_INTERVAL);
    c->kick.data = c->settle.data = c->poll.data = c;
    timer_start_unref(c->loop, &c->poll);
    c->busy_delay = 0;
    return 0;

fail:
    stop_listening(c);
    return -1;
}

/* Safe in any state, also half way through start_listening. */
static void stop_listening(sn_conn *c)
{
    watch_files_stop(c);
    if (c->rd) {
        ev_timer_stop(c->loop, &c->kick);
        ev_timer_stop(c->loop, &c->settle);
        timer_stop_unref(c->loop, &c->poll);
    }
    sqlite3_finalize(c->dv_stmt);
    sqlite3_finalize(c->fetch_stmt);
    c->dv_stmt = c->fetch_stmt = NULL;
    sqlite3_close(c->rd);
    c->rd = NULL;
    for (int i = 0; i < c->nchans; i++)
        free(c->chans[i].name);
    free(c->chans);
    c->chans = NULL;
    c->nchans = c->capchans = 0;
    free(c->last_err);
    c->last_err = NULL;
    free_paths(c);
}

/* ===== dialect: connection ===== */

static sn_conn *sq_open(const char *url, struct ev_loop *loop, const sn_sink *sink,
                        const sn_options *opt, char *err, size_t errlen)
{
    char *path = parse_url(url, err, errlen);
    if (!path)
        return NULL;
    sn_conn *c = calloc(1, sizeof *c);
    char *target = malloc(strlen(path) + 32);
    if (!c || !target) {
        free(c);
        free(target);
        free(path);
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    sprintf(target, "SQLite database \"%s\"", path);
    c->loop = loop;
    c->sink = *sink;
    c->path = path;
    c->target = target;
    c->retention = opt && opt->retention > 0 ? opt->retention : 3600;
    c->ifd = c->wd_dir = c->wd_db = c->wd_wal = -1;

    char why[512];
    int rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, sizeof why, "%s", c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    if (ensure_changes_table(c->db, why, sizeof why))
        goto fail;

    ev_timer_init(&c->prune, prune_cb, prune_interval(c), prune_interval(c));
    c->prune.data = c;
    timer_start_unref(loop, &c->prune);
    return c;

fail:
    sn_seterr(err, errlen, "cannot open SQLite database \"%s\": %s", path, why);
    sqlite3_close(c->db);
    free_conn(c);
    return NULL;
}

static void sq_close(sn_conn *c)
{
    if (!c || c->dead)
        return;
    stop_listening(c);
    timer_stop_unref(c->loop, &c->prune);
    sqlite3_finalize(c->notify_stmt);
    c->notify_stmt = NULL;
    sqlite3_close(c->db);
    c->db = NULL;
    if (c->depth) {
        c->dead = 1;    /* the batch being delivered lives in c: freed by check() */
        return;
    }
    free_conn(c);
}

static const char *sq_target(sn_conn *c)
{
    return c ? c->target : "SQLite database";
}

/* ===== dialect: catalog ===== */

static int add_row(sn_result *r, const char *kind, const char *a, const char *b,
                   sqlite3_int64 n)
{
    sn_value *row = sn_result_row(r);
    if (!row)
        return -1;
    const char *cells[3] = {kind, a, b};
    for (int i = 0; i < 3; i++)
        if (cells[i] && sn_value_text(&row[i], cells[i], strlen(cells[i])))
            return -1;
    if (n > 0) {
        char num[24];
        int len = snprintf(num, sizeof num, "%lld", (long long)n);
        if (sn_value_text(&row[3], num, (size_t)len))
            return -1;
    }
    return 0;
}

/* Run a catalog query bound to the table name; each row is (a, b, n) added as kind.
 * 0, or -1 with err. */
static int describe_rows(sqlite3 *db, sn_result *r, const char *kind, const char *sql,
                         const char *table, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (prepare(db, sql, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (add_row(r, kind, (const char *)sqlite3_column_text(st, 0),
                    (const char *)sqlite3_column_text(st, 1), sqlite3_column_int64(st, 2))) {
            sqlite3_finalize(st);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    }
    if (rc != SQLITE_DONE)
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int sq_describe(sn_conn *c, const char *schema, const char *table, sn_result **out,
                       char *err, size_t errlen)
{
    static const char *const names[4] = {"kind", "a", "b", "n"};
    /* Real tables only, the kinds a trigger can be put on: not views, not virtual
     * tables, not SQLite's own tables, not our change log. */
    static const char table_sql[] =
        "SELECT 'main', name, NULL FROM main.sqlite_master WHERE type = 'table' AND name = ?1 "
        "AND name <> '" CHANGES_TABLE "' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND sql NOT LIKE 'CREATE VIRTUAL TABLE%'";
    /* table_xinfo rather than table_info: generated columns are readable in triggers */
    static const char column_sql[] =
        "SELECT name, type, cid + 1 FROM pragma_table_xinfo(?1, 'main') "
        "WHERE hidden <> 1 ORDER BY cid";
    static const char pk_sql[] =
        "SELECT name, NULL, pk FROM pragma_table_xinfo(?1, 'main') WHERE pk > 0 ORDER BY pk";
    /* Whole-table unique indexes whose columns are all plain columns: a partial or
     * expression index says nothing about a row's identity. */
    static const char unique_sql[] =
        "SELECT ii.name, il.name, ii.seqno + 1 "
        "FROM pragma_index_list(?1, 'main') AS il, pragma_index_info(il.name, 'main') AS ii "
        "WHERE il.\"unique\" = 1 AND il.partial = 0 AND NOT EXISTS ("
        "  SELECT 1 FROM pragma_index_info(il.name, 'main') AS x WHERE x.name IS NULL) "
        "ORDER BY il.seq, ii.seqno";

    *out = NULL;
    sn_result *r = sn_result_new(4);
    if (!r) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < 4; i++)
        if (sn_result_name(r, i, names[i])) {
            sn_result_free(r);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    if (schema && strcmp(schema, "main") != 0) {
        *out = r;   /* attached databases are not watched: no such table */
        return 0;
    }
    if (describe_rows(c->db, r, "table", table_sql, table, err, errlen))
        goto fail;
    if (r->nrows == 0) {
        *out = r;
        return 0;
    }
    if (describe_rows(c->db, r, "column", column_sql, table, err, errlen) ||
        describe_rows(c->db, r, "pk", pk_sql, table, err, errlen) ||
        describe_rows(c->db, r, "unique", unique_sql, table, err, errlen))
        goto fail;
    *out = r;
    return 0;

fail:
    sn_result_free(r);
    return -1;
}

/* ===== dialect: triggers ===== */

static void trigger_name(const char *channel, char out[10 + 17])
{
    char hex[17];
    sn_hash_hex(channel, strlen(channel), hex);
    snprintf(out, 10 + 17, "sqlnotify_%s", hex);
}

/* The SQL of trigger `name`, malloc'd; *found = 0 if there is none. 0, or -1 and err. */
static int trigger_sql(sqlite3 *db, const char *name, char **sql, int *found, char *err,
                       size_t errlen)
{
    sqlite3_stmt *st;
    *sql = NULL;
    *found = 0;
    if (prepare(db, "SELECT coalesce(sql, '') FROM main.sqlite_master "
                    "WHERE type = 'trigger' AND name = ?1", &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *found = 1;
        *sql = xstrdup((const char *)sqlite3_column_text(st, 0));
        if (!*sql) {
            sqlite3_finalize(st);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    } else if (rc != SQLITE_DONE) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* `'col', <value of rec.col>` pairs for json_object. json_object refuses BLOBs, which
 * would make the user's write fail, so a BLOB travels as its hex text. */
static void append_pairs(sqlite3_str *s, const char *rec, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++)
        sqlite3_str_appendf(s, "%s'%q', CASE WHEN typeof(%s.\"%w\") = 'blob' "
                               "THEN hex(%s.\"%w\") ELSE %s.\"%w\" END",
                            i ? ", " : "", cols[i], rec, cols[i], rec, cols[i], rec, cols[i]);
}

/* The CREATE TRIGGER statement for a watch (sqlite3_malloc'd), or NULL. */
static char *build_trigger(const sn_watch *w, const char *name, const char *marker_comment)
{
    static const char *const ops[] = {"INSERT", "UPDATE", "DELETE"};
    const char *rec = w->op == SN_DELETE ? "OLD" : "NEW";
    sqlite3_str *s = sqlite3_str_new(NULL);

    sqlite3_str_appendf(s, "CREATE TRIGGER \"%w\" AFTER %s ON \"%w\" FOR EACH ROW",
                        name, ops[w->op], w->table);
    if (w->op == SN_UPDATE && w->ntrigger > 0) {
        /* fire only on a real change; BINARY so a NOCASE column's 'a' -> 'A' counts */
        sqlite3_str_appendall(s, " WHEN ");
        for (int i = 0; i < w->ntrigger; i++)
            sqlite3_str_appendf(s, "%sOLD.\"%w\" IS NOT NEW.\"%w\" COLLATE BINARY",
                                i ? " OR " : "", w->trigger_cols[i], w->trigger_cols[i]);
    }
    sqlite3_str_appendf(s, " BEGIN %s INSERT INTO " CHANGES_TABLE " (channel, payload) "
                           "VALUES ('%q', json_object('id', json_object(",
                        marker_comment, w->channel);
    append_pairs(s, rec, w->pk, w->npk);
    sqlite3_str_appendall(s, "), 'x', json_object(");
    append_pairs(s, rec, w->extra, w->nextra);
    sqlite3_str_appendall(s, "))); END");
    if (sqlite3_str_errcode(s) != SQLITE_OK) {
        sqlite3_free(sqlite3_str_finish(s));
        return NULL;
    }
    return sqlite3_str_finish(s);
}

static int sq_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err,
                      size_t errlen)
{
    char name[27], comment[256], why[512];
    char *old = NULL, *ddl = NULL;
    int found, nested = 0, result;

    if (w->op < SN_INSERT || w->op > SN_DELETE) {
        sn_seterr(err, errlen, "unknown operation %d", w->op);
        return SN_INSTALL_ERROR;
    }
    if (!w->marker || strstr(w->marker, "*/") ||
        snprintf(comment, sizeof comment, "/* sqlnotify:%d:%s */", SQL_VERSION, w->marker) >=
            (int)sizeof comment) {
        sn_seterr(err, errlen, "invalid trigger marker");
        return SN_INSTALL_ERROR;
    }
    trigger_name(w->channel, name);

    /* The common case, nothing changed, takes no write lock. */
    if (trigger_sql(c->db, name, &old, &found, why, sizeof why))
        goto fail;
    if (found && strstr(old, comment)) {
        free(old);
        return SN_INSTALL_UNCHANGED;
    }
    free(old);
    old = NULL;
    if (found && !replace_changed)
        return SN_INSTALL_KEPT;

    ddl = build_trigger(w, name, comment);
    if (!ddl) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    if (txn_begin(c->db, &nested, why, sizeof why))
        goto fail;
    /* Look again under the write lock: another process may have installed it since. */
    if (trigger_sql(c->db, name, &old, &found, why, sizeof why))
        goto fail_txn;
    if (found && strstr(old, comment))
        result = SN_INSTALL_UNCHANGED;
    else if (found && !replace_changed)
        result = SN_INSTALL_KEPT;
    else {
        result = found ? SN_INSTALL_REPLACED : SN_INSTALL_CREATED;
        if (found) {
            char *drop = sqlite3_mprintf("DROP TRIGGER \"%w\"", name);
            if (!drop) {
                snprintf(why, sizeof why, "out of memory");
                goto fail_txn;
            }
            int bad = exec_sql(c->db, drop, why, sizeof why);
            sqlite3_free(drop);
            if (bad)
                goto fail_txn;
        }
        if (exec_sql(c->db, ddl, why, sizeof why))
            goto fail_txn;
    }
    if (txn_commit(c->db, nested, why, sizeof why))
        goto fail_txn;
    free(old);
    sqlite3_free(ddl);
    kick(c, 0);
    return result;

fail_txn:
    txn_rollback(c->db, nested);
fail:
    sn_seterr(err, errlen, "cannot install the %s trigger on table \"%s\" in %s: %s",
              w->op == SN_INSERT ? "insert" : w->op == SN_UPDATE ? "update" : "delete",
              w->table, c->target, why);
    free(old);
    sqlite3_free(ddl);
    return SN_INSTALL_ERROR;
}

static int sq_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[27], why[512];
    char *old;
    int found;

    trigger_name(w->channel, name);
    if (trigger_sql(c->db, name, &old, &found, why, sizeof why))
        goto fail;
    /* only ever drop a trigger that carries our marker */
    int ours = found && strstr(old, "sqlnotify:");
    free(old);
    if (!ours)
        return 0;
    char *drop = sqlite3_mprintf("DROP TRIGGER IF EXISTS \"%w\"", name);
    if (!drop) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    int bad = exec_sql(c->db, drop, why, sizeof why);
    sqlite3_free(drop);
    if (!bad)
        return 0;
fail:
    sn_seterr(err, errlen, "cannot drop trigger %s on table \"%s\" in %s: %s", name,
              w->table, c->target, why);
    return -1;
}

static int sq_uninstall_all(sn_conn *c, char *err, size_t errlen)
{
    char why[512];
    sqlite3_stmt *st = NULL;
    sqlite3_str *drops;
    char *sql;
    int nested = 0, count = 0, rc, oom;

    if (txn_begin(c->db, &nested, why, sizeof why))
        goto fail;
    if (prepare(c->db, "SELECT name FROM main.sqlite_master WHERE type = 'trigger' "
                       "AND instr(sql, 'sqlnotify:') > 0", &st, why, sizeof why))
        goto fail_txn;
    /* Dropping while stepping over sqlite_master is not allowed: collect, then drop. */
    drops = sqlite3_str_new(c->db);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sqlite3_str_appendf(drops, "DROP TRIGGER IF EXISTS \"%w\";",
                            (const char *)sqlite3_column_text(st, 0));
        count++;
    }
    if (rc != SQLITE_DONE)
        snprintf(why, sizeof why, "%s", sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    oom = sqlite3_str_errcode(drops) != SQLITE_OK;
    sql = sqlite3_str_finish(drops);
    if (rc != SQLITE_DONE || oom) {
        if (oom)
            snprintf(why, sizeof why, "out of memory");
        sqlite3_free(sql);
        goto fail_txn;
    }
    rc = sql ? exec_sql(c->db, sql, why, sizeof why) : 0;
    sqlite3_free(sql);
    if (rc || txn_commit(c->db, nested, why, sizeof why))
        goto fail_txn;
    return count;

fail_txn:
    txn_rollback(c->db, nested);
fail:
    sn_seterr(err, errlen, "cannot drop the sqlnotify triggers in %s: %s", c->target, why);
    return -1;
}

/* ===== dialect: listening ===== */

static int sq_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    if (!c->rd && start_listening(c, err, errlen))
        return -1;
    if (find_chan(c, channel, strlen(channel)) >= 0)
        return 0;

    struct chan ch = {xstrdup(channel), strlen(channel), 0};
    if (!ch.name)
        goto oom;
    /* A channel added later starts at the log's end too, as a LISTEN would. */
    if (read_max_seq(c, &ch.from, err, errlen)) {
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
    c->chans[c->nchans++] = ch;
    return 0;

oom:
    sn_seterr(err, errlen, "out of memory");
    return -1;
}

static void sq_unlisten(sn_conn *c, const char *channel)
{
    int i = find_chan(c, channel, strlen(channel));
    if (i < 0)
        return;
    free(c->chans[i].name);
    memmove(&c->chans[i], &c->chans[i + 1], (size_t)(c->nchans - i - 1) * sizeof c->chans[0]);
    c->nchans--;
}

static void sq_stop(sn_conn *c)
{
    stop_listening(c);
}

/* ===== dialect: notify and query ===== */

static int sq_notify(sn_conn *c, const char *channel, const char *payload, size_t len,
                     int overflow, char *err, size_t errlen)
{
    (void)overflow;   /* no payload limit: everything travels whole */
    if (!c->notify_stmt &&
        sqlite3_prepare_v3(c->db, "INSERT INTO " CHANGES_TABLE " (channel, payload) VALUES (?1, ?2)",
                           -1, SQLITE_PREPARE_PERSISTENT, &c->notify_stmt, NULL) != SQLITE_OK) {
        sn_seterr(err, errlen, "cannot notify in %s: %s", c->target, sqlite3_errmsg(c->db));
        c->notify_stmt = NULL;
        return -1;
    }
    sqlite3_stmt *st = c->notify_stmt;
    sqlite3_bind_text(st, 1, channel, -1, SQLITE_STATIC);
    sqlite3_bind_text64(st, 2, payload ? payload : "", payload ? len : 0, SQLITE_STATIC,
                        SQLITE_UTF8);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        sn_seterr(err, errlen, "cannot notify in %s: %s", c->target, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return -1;
    kick(c, 0);
    return 0;
}

/* Which argument a parameter takes: `?` and `?NNN` by position, `$N` (PostgreSQL
 * style), `:N` and `@N` by number. 0 for a named parameter we cannot map. */
static int param_number(sqlite3_stmt *st, int i)
{
    const char *name = sqlite3_bind_parameter_name(st, i);
    if (!name || name[0] == '?')
        return i;
    if (!name[1] || strspn(name + 1, "0123456789") != strlen(name + 1) || strlen(name) > 7)
        return 0;
    return atoi(name + 1);
}

static int bind_params(sqlite3_stmt *st, int nparams, const sn_value *params, char *err,
                       size_t errlen)
{
    int np = sqlite3_bind_parameter_count(st), used = 0;
    for (int i = 1; i <= np; i++) {
        int k = param_number(st, i);
        if (k < 1) {
            sn_seterr(err, errlen, "named parameter %s is not supported (use ?, ?NNN or $N)",
                      sqlite3_bind_parameter_name(st, i));
            return -1;
        }
        if (k > nparams) {
            sn_seterr(err, errlen, "no value for parameter %s (%d given)",
                      sqlite3_bind_parameter_name(st, i) ? sqlite3_bind_parameter_name(st, i) : "?",
                      nparams);
            return -1;
        }
        used = k > used ? k : used;
        const sn_value *v = &params[k - 1];
        int rc;
        switch (v->type) {
        case SN_NULL: rc = sqlite3_bind_null(st, i); break;
        case SN_BOOL: rc = sqlite3_bind_int(st, i, v->i != 0); break;
        case SN_INT: rc = sqlite3_bind_int64(st, i, v->i); break;
        case SN_FLOAT: rc = sqlite3_bind_double(st, i, v->d); break;
        case SN_TEXT:
            rc = sqlite3_bind_text64(st, i, v->s ? v->s : "", v->s ? v->len : 0,
                                     SQLITE_STATIC, SQLITE_UTF8);
            break;
        default:
            sn_seterr(err, errlen, "parameter %d has an unknown type", k);
            return -1;
        }
        if (rc != SQLITE_OK) {
            sn_seterr(err, errlen, "%s", sqlite3_errstr(rc));
            return -1;
        }
    }
    if (nparams > used) {
        sn_seterr(err, errlen, "%d parameters given, the statement takes %d", nparams, used);
        return -1;
    }
    return 0;
}

/* One result cell from the current row. 0, or -1 out of memory. */
static int read_cell(sqlite3_stmt *st, int col, sn_value *v)
{
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
        v->type = SN_INT;
        v->i = sqlite3_column_int64(st, col);
        return 0;
    case SQLITE_FLOAT:
        v->type = SN_FLOAT;
        v->d = sqlite3_column_double(st, col);
        return 0;
    case SQLITE_TEXT: {
        const char *s = (const char *)sqlite3_column_text(st, col);
        size_t n = (size_t)sqlite3_column_bytes(st, col);
        return s ? sn_value_text(v, s, n) : -1;
    }
    case SQLITE_BLOB: {
        const void *b = sqlite3_column_blob(st, col);
        size_t n = (size_t)sqlite3_column_bytes(st, col);
        return sn_value_text(v, b ? b : "", b ? n : 0);
    }
    default:
        v->type = SN_NULL;
        return 0;
    }
}

static int sq_query(sn_conn *c, const char *sql, int nparams, const sn_value *params,
                    sn_result **out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL, *next = NULL;
    const char *tail = NULL;
    sn_result *r = NULL;

    *out = NULL;
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, &tail) != SQLITE_OK) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->db));
        return -1;
    }
    if (!st) {
        sn_seterr(err, errlen, "no statement to run");
        return -1;
    }
    /* Whatever follows must be only blanks, comments and semicolons. */
    if (tail && *tail &&
        (sqlite3_prepare_v2(c->db, tail, -1, &next, NULL) != SQLITE_OK || next)) {
        sqlite3_finalize(next);
        sqlite3_finalize(st);
        sn_seterr(err, errlen, "only one statement is allowed");
        return -1;
    }
    if (bind_params(st, nparams, params, err, errlen))
        goto fail;

    int ncols = sqlite3_column_count(st);
    r = sn_result_new(ncols);
    if (!r)
        goto oom;
    for (int i = 0; i < ncols; i++)
        if (sn_result_name(r, i, sqlite3_column_name(st, i)))
            goto oom;

    /* A write, or a COMMIT ending the caller's transaction, may carry events. */
    int was_auto = sqlite3_get_autocommit(c->db);
    int writes = !sqlite3_stmt_readonly(st);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sn_value *row = sn_result_row(r);
        if (!row)
            goto oom;
        for (int i = 0; i < ncols; i++)
            if (read_cell(st, i, &row[i]))
                goto oom;
    }
    if (writes || (!was_auto && sqlite3_get_autocommit(c->db)))
        kick(c, 0);
    if (rc != SQLITE_DONE) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->db));
        goto fail;
    }
    sqlite3_finalize(st);
    *out = r;
    return 0;

oom:
    sn_seterr(err, errlen, "out of memory");
fail:
    sqlite3_finalize(st);
    sn_result_free(r);
    return -1;
}

/* ===== descriptor ===== */

static const char *const sqlite_schemes[] = {"sqlite", NULL};

const sn_dialect sn_sqlite_dialect = {
    .name = "sqlite",
    .schemes = sqlite_schemes,
    .max_payload = 0,
    .open = sq_open,
    .close = sq_close,
    .target = sq_target,
    .describe = sq_describe,
    .install = sq_install,
    .uninstall = sq_uninstall,
    .uninstall_all = sq_uninstall_all,
    .listen = sq_listen,
    .unlisten = sq_unlisten,
    .stop = sq_stop,
    .notify = sq_notify,
    .query = sq_query,
};
