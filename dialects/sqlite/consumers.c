/*
 * dialects/sqlite/consumers.c — durable consumers: a named cursor kept in the file
 * (sqlnotify_consumers), advanced only when the runtime acknowledges what the handlers
 * finished, and a lease in the same row so one process at a time reads a consumer.
 *
 * The lease is (holder, holder_pid, holder_host, heartbeat). The holder renews it every
 * LEASE_BEAT; a standby process takes it when it is free, when its heartbeat is older
 * than LEASE_TIMEOUT, or at once when the holder's pid is gone on this host (kill -9).
 * Every write of the holder is fenced by `holder = me`: a holder whose lease was taken
 * (stalled past the timeout) notices at its next write and stands by. A batch goes to the
 * handlers in slices, and before each the holder makes sure the lease is still its own
 * (sqd_consumer_holds): one stalled in the middle of a batch (SIGSTOP, a handler that
 * blocked) delivers no more of it once another process may have taken over.
 *
 * Held (hold(), from the runtime's handlers that finish after deliver returned): the page
 * being delivered is handed over to the end, then check() reads nothing until the release.
 * Acks arriving meanwhile move pos_pending and are written a moment later (one write for a
 * run of them); the lease timer keeps renewing. The release rewinds the cursor to the last
 * ack, so what was delivered and not acked comes again, in order.
 *
 * Every write here goes through the reader's own connection, never the query connection,
 * so it cannot join (or commit) a transaction the user opened with n:query(), and it waits
 * for the lock at most SAVE_BUSY_MS: a busy file is retried from the loop instead.
 */
#include "sqlite.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== small helpers ===== */

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* 1 when the lease's holder is a process of this host that no longer exists. */
static int holder_gone(const sn_conn *c, sqlite3_int64 pid, const char *host)
{
    if (pid <= 0 || !host || strcmp(host, c->host) != 0)
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Run with the short busy timeout on the reader's connection. */
static void short_wait(sn_conn *c, int on)
{
    sqlite3_busy_timeout(c->rd, on ? SAVE_BUSY_MS : 0);
}

/* ===== registering ===== */

/* Whether the file has table name: 1, 0, or -1 (could not tell). */
static int have_named(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st;
    int yes = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    yes = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return yes;
}

static int have_table(sqlite3 *db) { return have_named(db, CONSUMERS_TABLE); }

/* Each consumer's own retention, in a column that files made by earlier versions lack. */
static int ensure_retention(sqlite3 *db, char *err, size_t errlen)
{
    return sqd_has_retention(db) ? 0
                                 : sqd_exec(db, "ALTER TABLE " CONSUMERS_TABLE " ADD COLUMN retention REAL", err, errlen);
}

/* Made by the first durable notifier on a file: live-only files never get it. */
static int ensure_table(sqlite3 *db, char *err, size_t errlen)
{
    int have = have_table(db);
    if (have == 1)
        return ensure_retention(db, err, errlen);
    return sqd_exec(db, "CREATE TABLE IF NOT EXISTS " CONSUMERS_TABLE " ("
                    "name TEXT PRIMARY KEY, "        /* the consumer */
                    "position INTEGER NOT NULL, "    /* every seq at or below it was handled */
                    "last_seen REAL NOT NULL, "      /* unix time; away past its retention: rows go */
                    "holder INTEGER, "               /* lease: random id of the reading process, or NULL */
                    "holder_pid INTEGER, "
                    "holder_host TEXT, "
                    "heartbeat REAL, "               /* the lease's last renewal */
                    "since REAL NOT NULL DEFAULT " NOW_SQL ", "
                    "retention REAL)", err, errlen);  /* its consumer_retention (NULL: the pruner's) */
}

/* The channels each consumer reads (its captures', and the plain ones an older release's
 * triggers wrote), so that its lag counts its own tables' rows only. */
static int ensure_reads(sqlite3 *db, char *err, size_t errlen)
{
    return sqd_exec(db, "CREATE TABLE IF NOT EXISTS " READS_TABLE " (consumer TEXT NOT NULL, channel TEXT NOT NULL, "
                    "PRIMARY KEY (consumer, channel))", err, errlen);
}

/* A capture's channel no consumer reads any more (its consumer dropped, or its columns
 * changed): its triggers go, so writers stop paying for rows no one reads; logged. 0, or -1
 * (said why; tried again at the next start). */
static int capture_unused(sn_conn *c, const char *channel)
{
    char err[600];
    int n = sqd_drop_channel(c, channel, err, sizeof err);
    if (n < 0)
        sn_logf(&c->sink, SN_LOG_WARN, "cannot drop the trigger of capture %s, which no consumer reads any more: %s",
                channel, err);
    else if (n > 0)
        sn_logf(&c->sink, SN_LOG_INFO, "dropped %d trigger(s) of capture %s, which no consumer reads any more", n,
                channel);
    return n < 0 ? -1 : 0;
}

/* The rows of `sql` (one text column; ?1..?n bound to args) as a NULL-terminated list, or
 * NULL (read nothing). */
static char **texts_of(sqlite3 *db, const char *sql, int n, const char *const *args)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return NULL;
    for (int i = 0; i < n; i++)
        sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_TRANSIENT);
    char **v = calloc(1, sizeof *v);
    size_t k = 0;
    while (v && sqlite3_step(st) == SQLITE_ROW) {
        char **g = realloc(v, (k + 2) * sizeof *v);
        if (!g)
            break;
        v = g;
        v[k + 1] = NULL;
        if ((v[k] = sqd_strdup((const char *)sqlite3_column_text(st, 0))) != NULL)
            k++;
    }
    sqlite3_finalize(st);
    return v;
}

/* Forget that consumer name reads channel. */
static void reads_forget(sqlite3 *db, const char *name, const char *channel)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "DELETE FROM " READS_TABLE " WHERE consumer = ?1 AND channel = ?2", -1, &st, NULL) !=
        SQLITE_OK)
        return;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_TRANSIENT);
    step_done(st);
}

static void texts_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* A tagged channel ("<plain>#<12 hex>") of the consumer ?1 that no other consumer reads. */
#define ONLY_MINE "r.consumer = ?1 AND r.channel GLOB '*#[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]" \
                  "[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' AND NOT EXISTS (SELECT 1 FROM " READS_TABLE \
                  " o WHERE o.channel = r.channel AND o.consumer <> ?1)"

/* Whether this connection's consumer read the capture of channel before: 1, 0 (or unknown). */
int sqd_consumer_read_before(sn_conn *c, const char *channel)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, "SELECT 1 FROM " READS_TABLE " WHERE consumer = ?1 AND channel = ?2", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
    int yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

/* Record that this consumer reads channel (a blocking call of listen()); the captures it
 * read for the same declared channel before its columns changed go when no one else reads them. */
int sqd_consumer_reads(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    int bad = ensure_reads(c->rd, err, errlen) ||
              sqd_prepare(c->rd, "INSERT OR IGNORE INTO " READS_TABLE " (consumer, channel) VALUES (?1, ?2)", &st,
                          err, errlen);
    if (!bad) {
        sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, channel, -1, SQLITE_TRANSIENT);
        if (step_done(st) != SQLITE_OK) {
            sn_seterr(err, errlen, "cannot record the channels of consumer \"%s\": %s", c->consumer,
                      sqlite3_errmsg(c->rd));
            bad = 1;
        }
    }
    size_t plain = (size_t)sn_plain_len(channel);
    if (!bad && plain < strlen(channel)) {
        char *prefix = sqlite3_mprintf("%.*s#", (int)plain, channel);
        const char *args[3] = {c->consumer, channel, prefix};
        char **old = prefix ? texts_of(c->rd, "SELECT r.channel FROM " READS_TABLE " r WHERE " ONLY_MINE
                                              " AND r.channel <> ?2 AND length(r.channel) = length(?3) + 12"
                                              " AND substr(r.channel, 1, length(?3)) = ?3", 3, args)
                                 : NULL;
        for (size_t i = 0; old && old[i]; i++)
            if (capture_unused(c, old[i]) == 0)
                reads_forget(c->rd, c->consumer, old[i]);
        texts_free(old);
        sqlite3_free(prefix);
    }
    sqlite3_busy_timeout(c->rd, 0);
    return bad ? -1 : 0;
}

int sqd_consumer_register(sn_conn *c, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    /* Start at the end: the last seq handed out. At the beginning: before the oldest row. */
    const char *sql =
        "INSERT INTO " CONSUMERS_TABLE " (name, position, last_seen) VALUES (?1, "
        "CASE WHEN ?2 THEN coalesce((SELECT min(seq) - 1 FROM " CHANGES_TABLE "), ?3) ELSE ?3 END, "
        NOW_SQL ") ON CONFLICT (name) DO NOTHING";
    sqlite3_int64 end = 0;
    sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);   /* listen() is a blocking call */
    int bad = ensure_table(c->rd, err, errlen) || sqd_log_end(c->rd, &end, err, errlen) || sqd_prepare(c->rd, sql, &st, err, errlen);
    if (!bad) {
        sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, c->start_beginning);
        sqlite3_bind_int64(st, 3, end);
        if (step_done(st) != SQLITE_OK) {
            sn_seterr(err, errlen, "cannot record consumer \"%s\": %s", c->consumer,
                      sqlite3_errmsg(c->rd));
            bad = 1;
        } else if (sqlite3_changes(c->rd) == 1) {
            sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\" is new: it starts at the %s of the "
                    "change log of %s", c->consumer, c->start_beginning ? "beginning" : "end",
                    c->target);
        }
        /* its rows are kept for its own retention, whichever process prunes */
        if (!bad && sqd_prepare(c->rd, "UPDATE " CONSUMERS_TABLE " SET retention = ?2 WHERE name = ?1", &st, err,
                                errlen) != 0) {
            bad = 1;
        } else if (!bad) {
            sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
            sqlite3_bind_double(st, 2, c->consumer_retention);
            if (step_done(st) != SQLITE_OK) {
                sn_seterr(err, errlen, "cannot record consumer \"%s\": %s", c->consumer, sqlite3_errmsg(c->rd));
                bad = 1;
            }
        }
    }
    sqlite3_busy_timeout(c->rd, 0);
    return bad ? -1 : 0;
}

/* ===== members: the tables of each process of a consumer ===== */

/* A process reads its consumer only while its tables include every other live member's
 * (src/dialect.h). Each process, holder or standby, keeps a row in MEMBERS_TABLE: its tables
 * and a heartbeat, written each LEASE_BEAT; a row not written for LEASE_TIMEOUT, or whose pid
 * is gone on this host, is no live member's. Tables that grow (a watch installed or listened
 * to) are recorded at once, and then a change log row on MEMBERS_CHANNEL says so: the holder
 * meets it before any row the new tables' triggers capture, and looks at the members there
 * (sqd_members_fence) instead of at its next beat, so it never passes one of those rows
 * unseen. A holder that finds itself blocked gives the lease up (sqd_consumer_yield). */

static int ensure_members(sqlite3 *db, char *err, size_t errlen)
{
    return sqd_exec(db, "CREATE TABLE IF NOT EXISTS " MEMBERS_TABLE " ("
                    "consumer TEXT NOT NULL, "
                    "member INTEGER NOT NULL, "      /* the process's lease id (holder) */
                    "pid INTEGER NOT NULL, "
                    "host TEXT NOT NULL, "
                    "tables TEXT NOT NULL, "         /* its plain channels, one a line */
                    "heartbeat REAL NOT NULL, "
                    "PRIMARY KEY (consumer, member))", err, errlen);
}

/* Our row, and with mark then a change log row saying our tables changed. SQLITE_OK or not. */
static int members_write(sn_conn *c, sqlite3 *db, const char *text, int mark)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "INSERT INTO " MEMBERS_TABLE " (consumer, member, pid, host, tables, heartbeat) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, " NOW_SQL ") ON CONFLICT (consumer, member) DO UPDATE SET "
                           "pid = excluded.pid, host = excluded.host, tables = excluded.tables, "
                           "heartbeat = excluded.heartbeat", -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->holder_id);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
    sqlite3_bind_text(st, 4, c->host, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, text, -1, SQLITE_STATIC);
    int rc = step_done(st);
    if (rc != SQLITE_OK || !mark)
        return rc;
    /* only where another member lives: a process alone has no reader to warn (one that comes
     * later reads our row before it reads the log) */
    if (sqlite3_prepare_v2(db, "INSERT INTO " CHANGES_TABLE " (channel, payload) SELECT '" MEMBERS_CHANNEL "', ?1 "
                           "WHERE EXISTS (SELECT 1 FROM " MEMBERS_TABLE " WHERE consumer = ?1 AND member <> ?2 AND "
                           "heartbeat >= " NOW_SQL " - ?3)", -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->holder_id);
    sqlite3_bind_double(st, 3, LEASE_TIMEOUT);
    return step_done(st);
}

/* Write our tables when they changed (or always, with beat: the heartbeat). On db, waiting
 * as its busy timeout says. SQLITE_OK or not. */
static int members_record(sn_conn *c, sqlite3 *db, int beat)
{
    sn_sbuf b = {0};
    sn_tables_text(&c->tables, &b);
    if (b.fail) {
        sn_sb_free(&b);
        return SQLITE_NOMEM;
    }
    int changed = !c->tables_said || strcmp(b.p, c->tables_said) != 0, rc = SQLITE_OK;
    if (changed || beat) {
        rc = members_write(c, db, b.p, changed);
        if (rc != SQLITE_OK && ensure_members(db, NULL, 0) == 0)
            rc = members_write(c, db, b.p, changed);
    }
    if (rc == SQLITE_OK && changed) {
        free(c->tables_said);
        c->tables_said = b.p;
        b.p = NULL;
    }
    sn_sb_free(&b);
    return rc;
}

int sqd_members_add(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    if (!c->consumer)
        return 0;
    if (sn_tables_add(&c->tables, channel) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    sqlite3 *db = c->rd ? c->rd : c->db;   /* the reader's before it listens: never a user's transaction */
    if (c->rd)
        sqlite3_busy_timeout(c->rd, BUSY_TIMEOUT_MS);
    int rc = members_record(c, db, 0);
    if (c->rd)
        sqlite3_busy_timeout(c->rd, 0);
    if (rc != SQLITE_OK) {
        sn_seterr(err, errlen, "cannot record the tables of this member of consumer \"%s\": %s", c->consumer,
                  sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

void sqd_members_remove(sn_conn *c, const char *channel)
{
    size_t plain = (size_t)sn_plain_len(channel);
    for (int i = 0; i < c->nchans; i++)   /* another capture of its table is still read */
        if ((size_t)sn_plain_len(c->chans[i].name) == plain && strncmp(c->chans[i].name, channel, plain) == 0)
            return;
    sn_tables_remove(&c->tables, channel);   /* recorded at the next beat */
}

/* Look at the other live members: 0 (c->blocked and the log say what), or -1 (unknown). */
static int members_look(sn_conn *c, int quiet)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->rd, "SELECT pid, host, tables FROM " MEMBERS_TABLE " WHERE consumer = ?1 AND "
                           "member <> ?2 AND heartbeat >= " NOW_SQL " - ?3 ORDER BY pid", -1, &st, NULL) != SQLITE_OK) {
        if (have_named(c->rd, MEMBERS_TABLE) != 0)
            return -1;
        st = NULL;   /* no member ever wrote its row */
    }
    sn_sbuf lacking = {0};
    int members = 0, rc = SQLITE_DONE;
    if (st) {
        sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, c->holder_id);
        sqlite3_bind_double(st, 3, LEASE_TIMEOUT);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            sqlite3_int64 pid = sqlite3_column_int64(st, 0);
            const char *host = (const char *)sqlite3_column_text(st, 1);
            if (!holder_gone(c, pid, host))
                members += sn_tables_lacking(&c->tables, (long long)pid, host,
                                             (const char *)sqlite3_column_text(st, 2), &lacking);
        }
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_DONE || lacking.fail) {
        sn_sb_free(&lacking);
        return -1;
    }
    c->blocked = members > 0;
    if (!quiet)
        sn_members_say(&c->sink, c->consumer, &c->blocked_said, members ? lacking.p : NULL, members);
    sn_sb_free(&lacking);
    return 0;
}

void sqd_members_beat(sn_conn *c, int quiet)
{
    if (!c->rd || !c->consumer)
        return;
    short_wait(c, 1);
    members_record(c, c->rd, 1);
    members_look(c, quiet);
    short_wait(c, 0);
}

int sqd_members_fence(sn_conn *c)
{
    /* inside the fetch's read: the member row written before this one is there */
    return members_look(c, 0) < 0 || c->blocked;
}

/* Our row goes at a clean stop: a standby that watches less need not wait for it to age. */
void sqd_members_leave(sn_conn *c)
{
    sqlite3_stmt *st;
    sqlite3 *db = c->rd ? c->rd : c->db;
    if (c->rd)
        sqlite3_busy_timeout(c->rd, 200);
    if (db && c->consumer && c->tables_said &&
        sqlite3_prepare_v2(db, "DELETE FROM " MEMBERS_TABLE " WHERE consumer = ?1 AND member = ?2", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, c->holder_id);
        step_done(st);
    }
    if (c->rd)
        sqlite3_busy_timeout(c->rd, 0);
    sqd_members_free(c);
}

void sqd_members_free(sn_conn *c)
{
    sn_tables_free(&c->tables);
    free(c->tables_said);
    free(c->blocked_said);
    c->tables_said = c->blocked_said = NULL;
    c->blocked = 0;
}

/* ===== the lease ===== */

/* We hold the lease now: read from the consumer's position; say loudly what pruning
 * removed while it was away. */
static void became_active(sn_conn *c, sqlite3_int64 position)
{
    sqlite3_stmt *st;
    sqlite3_int64 first = -1, end = position;
    if (sqlite3_prepare_v2(c->rd, "SELECT min(seq) FROM " CHANGES_TABLE, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            first = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    if (sqd_log_end(c->rd, &end, NULL, 0) != 0)
        end = position;
    if (first < 0)
        first = end + 1;   /* empty: everything up to the end was removed or read */
    c->active = 1;
    if (position > end) {
        /* an older copy of the file: rows past the end would be skipped below the position */
        sn_logf(&c->sink, SN_LOG_WARN, "consumer \"%s\" stands at row %lld, past the end of the "
                "change log of %s (row %lld): the file was restored from an older copy; reading "
                "from the log's end", c->consumer, (long long)position, c->target, (long long)end);
        position = end;
        c->save_failed = 1;
    }
    c->acked = c->pos_pending = c->cursor = position;
    if (first > position + 1) {
        sn_logf(&c->sink, SN_LOG_ERROR, "consumer \"%s\" was away longer than the change log of "
                "%s kept its rows: rows %lld to %lld (%lld changes) were pruned before it read "
                "them and are not delivered", c->consumer, c->target, (long long)position + 1,
                (long long)first - 1, (long long)(first - 1 - position));
        c->cursor = c->pos_pending = first - 1;
        c->save_failed = 1;   /* written with the next save */
    }
    for (int i = 0; i < c->nchans; i++)
        c->chans[i].from = 0;   /* a durable consumer reads everything past its position */
    c->dv = -1;               /* read at once: rows may be waiting (catch-up) */
    sqd_kick(c, 0);
}

/* Take the lease if it is free, expired or its holder died. Never waits long. */
void sqd_consumer_try_lease(sn_conn *c)
{
    sqlite3_stmt *st;
    if (!c->rd || !c->consumer || c->active)
        return;
    short_wait(c, 1);
    if (sqlite3_prepare_v2(c->rd, "SELECT holder, holder_pid, holder_host, " NOW_SQL
                           " - heartbeat, position FROM " CONSUMERS_TABLE " WHERE name = ?1",
                           -1, &st, NULL) != SQLITE_OK) {
        /* the table dropped: make it, and the next tick records us in it (below) */
        if (have_table(c->rd) == 0)
            ensure_table(c->rd, NULL, 0);
        goto out;
    }
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {   /* dropped since: record it again where we stand */
        sqlite3_finalize(st);
        st = NULL;
        if (sqlite3_prepare_v2(c->rd, "INSERT INTO " CONSUMERS_TABLE " (name, position, "
                               "last_seen) VALUES (?1, ?2, " NOW_SQL ") ON CONFLICT (name) DO "
                               "NOTHING", -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, c->pos_pending);
            if (step_done(st) == SQLITE_OK)
                sqd_kick_lease(c, 0);
        }
        goto out;
    }
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        goto out;
    }
    int free_ = sqlite3_column_type(st, 0) == SQLITE_NULL;
    sqlite3_int64 holder = sqlite3_column_int64(st, 0);
    sqlite3_int64 pid = sqlite3_column_int64(st, 1);
    const char *host = (const char *)sqlite3_column_text(st, 2);
    double age = sqlite3_column_double(st, 3);
    sqlite3_int64 position = sqlite3_column_int64(st, 4);
    int expired = !free_ && (holder == c->holder_id || age > LEASE_TIMEOUT);
    int dead = !free_ && !expired && holder_gone(c, pid, host);
    sqlite3_finalize(st);
    if (c->blocked) {   /* another member watches a table we do not: said by the beat */
        c->acked = c->pos_pending = position;   /* what we hold back meanwhile */
        goto out;
    }
    if (!free_ && !expired && !dead) {
        if (!c->standby_pid)
            sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\" is being read by another process "
                    "(pid %lld); this one stands by and takes over when it stops", c->consumer,
                    (long long)pid);
        c->standby_pid = pid ? pid : -1;
        c->acked = c->pos_pending = position;   /* what we hold back meanwhile */
        goto out;
    }
    /* compare and swap: only if nobody took it since we looked */
    if (sqlite3_prepare_v2(c->rd, "UPDATE " CONSUMERS_TABLE " SET holder = ?2, holder_pid = ?3, "
                           "holder_host = ?4, heartbeat = " NOW_SQL ", last_seen = " NOW_SQL
                           " WHERE name = ?1 AND holder IS ?5", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->holder_id);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
    sqlite3_bind_text(st, 4, c->host, -1, SQLITE_STATIC);
    if (free_)
        sqlite3_bind_null(st, 5);
    else
        sqlite3_bind_int64(st, 5, holder);
    if (step_done(st) != SQLITE_OK || sqlite3_changes(c->rd) != 1)
        goto out;
    if (c->standby_pid)
        sn_logf(&c->sink, SN_LOG_WARN, "consumer \"%s\": took over from the process that was "
                "reading it (pid %lld, %s); continuing after row %lld", c->consumer,
                (long long)(free_ && c->standby_pid > 0 ? c->standby_pid : pid),
                dead ? "gone" : expired ? "its lease ran out" : "it stopped",
                (long long)position);
    c->standby_pid = 0;
    c->beat_ok = ev_time();
    became_active(c, position);
out:
    short_wait(c, 0);
}

/* Our lease is gone (taken over, or the row changed hands): stop delivering. */
static void lost_lease(sn_conn *c)
{
    c->active = 0;
    c->save_failed = 0;
    c->standby_pid = -1;
    sn_logf(&c->sink, SN_LOG_WARN, "consumer \"%s\": another process took it over (this one "
            "did not renew its lease in time); this one stands by", c->consumer);
}

/* Our row is gone (n:drop_consumer() while we read): we go on, so record it again where
 * we stand, holding the lease. SQLITE_OK, or anything else when the row is there (then
 * someone else holds it). */
static int record_again(sn_conn *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->rd, "INSERT INTO " CONSUMERS_TABLE " (name, position, last_seen, "
                           "holder, holder_pid, holder_host, heartbeat) VALUES (?1, ?2, " NOW_SQL
                           ", ?3, ?4, ?5, " NOW_SQL ") ON CONFLICT (name) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->pos_pending);
    sqlite3_bind_int64(st, 3, c->holder_id);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)getpid());
    sqlite3_bind_text(st, 5, c->host, -1, SQLITE_STATIC);
    int rc = step_done(st);
    if (rc != SQLITE_OK || sqlite3_changes(c->rd) != 1)
        return SQLITE_ERROR;
    sn_logf(&c->sink, SN_LOG_WARN, "consumer \"%s\" was dropped while this process read it; "
            "recorded it again after row %lld", c->consumer, (long long)c->pos_pending);
    c->beat_ok = ev_time();
    c->acked = c->pos_pending;
    c->save_failed = 0;
    return SQLITE_OK;
}

static int save(sn_conn *c, int release);

/* The position cannot be written: the consumers' table was dropped, or the file replaced by
 * one without it. Said nothing and went on delivering, so a kill -9 meanwhile lost what came
 * since. Make the table and record us again where we stand; else say so once and hold (no new
 * batch before it is saved). 0, or -1. */
static int save_unprepared(sn_conn *c, int release)
{
    char why[256];
    snprintf(why, sizeof why, "%s", sqlite3_errmsg(c->rd));
    if (have_table(c->rd) == 0 && ensure_table(c->rd, why, sizeof why) == 0 && record_again(c) == SQLITE_OK)
        return release ? save(c, 1) : 0;
    if (!c->save_failed)
        sn_logf(&c->sink, SN_LOG_WARN, "saving the position of consumer \"%s\" in %s failed: "
                "%s; retrying", c->consumer, c->target, why);
    c->save_failed = 1;
    return -1;
}

/* Write the position (and renew the lease). 0, or -1: busy, retried later. */
static int save(sn_conn *c, int release)
{
    sqlite3_stmt *st;
    const char *sql = release
        ? "UPDATE " CONSUMERS_TABLE " SET position = ?2, last_seen = " NOW_SQL
          ", holder = NULL, holder_pid = NULL, holder_host = NULL, heartbeat = NULL "
          "WHERE name = ?1 AND holder = ?3"
        : "UPDATE " CONSUMERS_TABLE " SET position = ?2, last_seen = " NOW_SQL
          ", heartbeat = " NOW_SQL " WHERE name = ?1 AND holder = ?3";
    if (sqlite3_prepare_v2(c->rd, sql, -1, &st, NULL) != SQLITE_OK)
        return save_unprepared(c, release);
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->pos_pending);
    sqlite3_bind_int64(st, 3, c->holder_id);
    int rc = step_done(st);
    if (rc != SQLITE_OK) {
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED && !c->save_failed)
            sn_logf(&c->sink, SN_LOG_WARN, "saving the position of consumer \"%s\" in %s failed: "
                    "%s; retrying", c->consumer, c->target, sqlite3_errmsg(c->rd));
        c->save_failed = 1;
        return -1;
    }
    if (sqlite3_changes(c->rd) != 1) {
        if (!release && record_again(c) != SQLITE_OK)
            lost_lease(c);
        return 0;
    }
    c->beat_ok = ev_time();
    c->acked = c->pos_pending;
    c->save_failed = 0;
    return 0;
}

int sqd_consumer_flush(sn_conn *c)
{
    if (!c->rd || !c->active)
        return 0;
    short_wait(c, 1);
    int rc = save(c, 0);
    short_wait(c, 0);
    return rc;
}

void sqd_consumer_ack(sn_conn *c, sqlite3_int64 seq)
{
    if (!c || c->dead || !c->rd || !c->consumer || !c->active)
        return;
    if (!c->depth && !c->held)
        return;   /* outside deliver only while held: a late ack of a released batch is stale */
    /* The last event of the batch: the rows after it (other channels) were read too. */
    sqlite3_int64 pos = seq == c->batch_last ? c->batch_end : seq;
    if (pos <= c->pos_pending)
        return;
    c->pos_pending = pos;
    if (!c->depth) {
        /* held, from a handler that finished late: written by check() shortly, so acks
         * coming one after another cost one write, never from inside the caller */
        sqd_kick(c, HOLD_SAVE_DELAY);
        return;
    }
    /* inside a batch the position is written with the lease's renewals (sqd_consumer_holds) */
    if (seq == c->batch_last || ev_time() - c->beat_ok > LEASE_BEAT)
        sqd_consumer_flush(c);
}

/* hold(1) comes from inside deliver: check() finishes the page it is handing over, then
 * reads nothing until hold(0); meanwhile it writes the acks, and the lease timer renews the
 * lease as always (it only skips a tick inside a handler). hold(0) rewinds the cursor to the
 * last ack, so what was delivered and not acked comes again, and lets a timer read on. */
int sqd_consumer_hold(sn_conn *c, int on)
{
    if (!c || !c->consumer)
        return 0;   /* live: nothing to hold */
    if (on || !c->held) {
        c->held |= on;
        return 1;
    }
    c->held = 0;
    /* Released inside deliver (not the runtime's way): check() sees what the handlers did
     * not finish and reads it again itself. */
    if (!c->depth && c->pos_pending < c->cursor)
        c->cursor = c->pos_pending;
    c->dv = -1;   /* read even if the file did not change */
    sqd_kick(c, 0);
    return 1;
}

/* Go on delivering only while the lease is surely ours: written within LEASE_BEAT, or renewed
 * now with the position so far. A lease found taken (the holder stalled past LEASE_TIMEOUT)
 * stops the batch; one that cannot be written (busy) stops it once half the timeout went by
 * (the rest is read again). */
int sqd_consumer_holds(sn_conn *c)
{
    double age = ev_time() - c->beat_ok;
    if (!c->active || age <= LEASE_BEAT)
        return c->active;
    sqd_consumer_flush(c);
    return c->active && (ev_time() - c->beat_ok <= LEASE_BEAT || age < LEASE_TIMEOUT / 2);
}

/* Stop reading: save where we are and give the lease up, so a standby takes over at once. */
void sqd_consumer_release(sn_conn *c)
{
    if (!c->rd || !c->consumer || !c->active)
        return;
    sqlite3_busy_timeout(c->rd, 200);
    save(c, 1);
    sqlite3_busy_timeout(c->rd, 0);
    c->active = 0;
}

/* Blocked (sqd_members_fence, the beat) while holding the lease: what was handed to the
 * handlers is done (not held, not inside deliver), so save where they got and give the lease
 * up; the member whose tables include ours takes it, or no one until one of us stops. */
void sqd_consumer_yield(sn_conn *c)
{
    if (!c->active || c->held || c->depth)
        return;
    sqd_consumer_release(c);
    c->standby_pid = 0;
    sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\": stopped reading after row %lld; this process stands by",
            c->consumer, (long long)c->acked);
}

static void lease_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sn_conn *c = t->data;
    (void)loop;
    (void)revents;
    if (c->depth)
        return;   /* inside a handler: the batch is ours until it is acked */
    sqd_members_beat(c, 0);
    if (c->active && c->blocked && !c->held) {
        sqd_consumer_yield(c);   /* held: the release reads on, and check() gives it up then */
        return;
    }
    if (c->active) {
        if (sqd_consumer_flush(c) == 0 && !c->active)
            sqd_consumer_try_lease(c);   /* the row was dropped: make it again */
        else if (c->save_failed)
            sqd_kick(c, BUSY_RETRY_MAX);
    } else {
        sqd_consumer_try_lease(c);
    }
}

void sqd_kick_lease(sn_conn *c, double delay)
{
    if (!c->consumer)
        return;
    if (ev_is_active(&c->lease))
        sqd_timer_stop_unref(c->loop, &c->lease);
    ev_timer_init(&c->lease, lease_cb, delay, LEASE_BEAT);
    c->lease.data = c;
    sqd_timer_start_unref(c->loop, &c->lease);
}

/* The file was replaced and the reader reopened on the new one: the position in memory and
 * the acks of what the old file delivered mean nothing there. Record the consumer and what it
 * reads where the new file lacks them (start_at), and take the lease there as at a start, which
 * reads from the new file's position. Before, nothing was recorded: every save failed unsaid,
 * and a kill -9 lost what was committed to the new file until the next start. */
void sqd_consumer_reopened(sn_conn *c)
{
    char why[256];
    int bad = sqd_consumer_register(c, why, sizeof why);
    for (int i = 0; !bad && i < c->nchans; i++)
        bad = sqd_consumer_reads(c, c->chans[i].name, why, sizeof why);
    if (bad)
        sn_logf(&c->sink, SN_LOG_ERROR, "consumer \"%s\" cannot be recorded in %s after it was "
                "replaced: %s; nothing is delivered until it is (retried)", c->consumer, c->target, why);
    c->active = 0;
    c->held = 0;
    c->save_failed = 0;
    c->standby_pid = 0;
    sqd_consumer_try_lease(c);
    sqd_kick_lease(c, LEASE_BEAT);
}

void sqd_consumer_stop(sn_conn *c)
{
    sqd_consumer_release(c);   /* writes the last ack, held or not */
    sqd_members_leave(c);
    c->held = 0;               /* what was in flight comes again after a new listen */
    sqd_timer_stop_unref(c->loop, &c->lease);
    c->standby_pid = 0;
}

/* ===== dialect: consumers, drop_consumer ===== */

int sqd_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    static const char *const names[] = {"name", "lag_events", "lag_seconds", "members", "last_seen"};
    sqlite3_stmt *st;
    *out = NULL;
    if (have_table(c->db) == 0) {   /* no durable notifier ever ran on this file */
        sn_result *r = sn_result_new(5);
        for (int i = 0; r && i < 5; i++)
            if (sn_result_name(r, i, names[i])) {
                sn_result_free(r);
                r = NULL;
            }
        if (!r)
            sn_seterr(err, errlen, "out of memory");
        *out = r;
        return r ? 0 : -1;
    }
    /* a consumer's own rows: on the channels it recorded (one of a release that recorded none:
     * every row) */
#define OWN_ROW "l.seq > k.position AND (l.channel IN (SELECT r.channel FROM " READS_TABLE " r WHERE r.consumer = " \
                "k.name) OR NOT EXISTS (SELECT 1 FROM " READS_TABLE " r WHERE r.consumer = k.name))"
    if (ensure_reads(c->db, err, errlen) ||
        sqd_prepare(c->db,
                    "SELECT k.name, (SELECT count(*) FROM " CHANGES_TABLE " l WHERE " OWN_ROW "), "
                    "coalesce(" NOW_SQL " - (SELECT min(created_at) FROM " CHANGES_TABLE
                    " l WHERE " OWN_ROW "), 0), "
                    "k.holder IS NOT NULL AND k.heartbeat >= " NOW_SQL " - ?1, k.holder_pid, k.holder_host, "
                    "strftime('%Y-%m-%dT%H:%M:%fZ', k.last_seen, 'unixepoch') "
                    "FROM " CONSUMERS_TABLE " k ORDER BY k.name", &st, err, errlen))
        return -1;
    sqlite3_bind_double(st, 1, LEASE_TIMEOUT);
    sn_result *r = sn_result_new(5);
    int ok = r != NULL, rc;
    for (int i = 0; ok && i < 5; i++)
        ok = sn_result_name(r, i, names[i]) == 0;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        char lag[48], members[4];
        const char *host = (const char *)sqlite3_column_text(st, 5);
        int live = sqlite3_column_int(st, 3) && !holder_gone(c, sqlite3_column_int64(st, 4), host);
        snprintf(lag, sizeof lag, "%.3f", sqlite3_column_double(st, 2));
        snprintf(members, sizeof members, "%d", live);
        sn_value *row = sn_result_row(r);
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *events = (const char *)sqlite3_column_text(st, 1);
        const char *seen = (const char *)sqlite3_column_text(st, 6);
        ok = row && name && events && seen &&
             sn_value_text(&row[0], name, strlen(name)) == 0 &&
             sn_value_text(&row[1], events, strlen(events)) == 0 &&
             sn_value_text(&row[2], lag, strlen(lag)) == 0 &&
             sn_value_text(&row[3], members, strlen(members)) == 0 &&
             sn_value_text(&row[4], seen, strlen(seen)) == 0;
    }
    if (!ok) {
        sn_seterr(err, errlen, "out of memory");
    } else if (rc != SQLITE_DONE) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(c->db));
        ok = 0;
    }
    sqlite3_finalize(st);
    if (!ok) {
        sn_result_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

/* On the query connection: a blocking call of the user's, inside their transaction if
 * they opened one (then it goes or stays with it). */
int sqd_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (have_table(c->db) == 0)
        return 0;
    int live = 0;
    if (sqd_prepare(c->db, "SELECT 1 FROM " CONSUMERS_TABLE " WHERE name = ?1 AND holder IS NOT NULL AND heartbeat >= "
                           NOW_SQL " - ?2", &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 2, LEASE_TIMEOUT);
    live = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (sqd_prepare(c->db, "DELETE FROM " CONSUMERS_TABLE " WHERE name = ?1", &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if (step_done(st) != SQLITE_OK) {
        sn_seterr(err, errlen, "cannot drop consumer \"%s\": %s", name, sqlite3_errmsg(c->db));
        return -1;
    }
    int n = sqlite3_changes(c->db);
    /* the captures only it read go with it (the table may be missing: nothing recorded), unless
     * a process still holds its lease: that one records the consumer again and reads on */
    const char *args[1] = {name};
    char **only = n > 0 && !live ? texts_of(c->db, "SELECT r.channel FROM " READS_TABLE " r WHERE " ONLY_MINE, 1, args)
                                 : NULL;
    if (sqd_prepare(c->db, "DELETE FROM " READS_TABLE " WHERE consumer = ?1", &st, err, errlen) == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        step_done(st);
    }
    for (size_t i = 0; only && only[i]; i++)
        capture_unused(c, only[i]);
    texts_free(only);
    sqd_house_reschedule(c, 1);   /* prune what it held back soon */
    return n > 0;
}
