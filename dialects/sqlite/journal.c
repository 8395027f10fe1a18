/*
 * dialects/sqlite/journal.c — the change log and the readers table, and the one
 * housekeeping timer that keeps them: heartbeats, pruning, forgetting dead readers,
 * noticing a replaced file and schema changes (a dropped log, renamed columns, a durable
 * trigger gone with its table).
 *
 * Pruning never removes a row a live reader has not read: each listening reader
 * keeps (id, position, heartbeat, timeout) in sqlnotify_readers, and rows go only
 * when they are past this process's retention AND at or below the lowest position
 * of the readers whose heartbeat is younger than their timeout, and of the durable
 * consumers seen within the consumer retention. A reader that stops
 * sending heartbeats (killed, stopped) holds rows back for its timeout, then not.
 */
#include "sqlite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== the tables ===== */

/* The integer in the first column of sql's first row into *out (left as it was when that is
 * NULL or there is no row); 0, or -1 and err. */
static int query_int(sqlite3 *db, const char *sql, sqlite3_int64 *out, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqd_prepare(db, sql, &st, err, errlen))
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        *out = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* query_int's value, or dflt when it failed or had none. */
static sqlite3_int64 one_int(sqlite3 *db, const char *sql, sqlite3_int64 dflt)
{
    sqlite3_int64 v = dflt;
    return query_int(db, sql, &v, NULL, 0) == 0 ? v : dflt;
}

static int count_log_objects(sqlite3 *db, sqlite3_int64 *have, char *err, size_t errlen)
{
    return query_int(db, "SELECT count(*) FROM main.sqlite_master WHERE "
                         "(type = 'table' AND name IN ('" CHANGES_TABLE "', '" READERS_TABLE "')) OR "
                         "(type = 'index' AND name = '" CHANGES_TABLE "_created_at')",
                     have, err, errlen);
}

static int table_exists(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st;
    int yes = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}


int sqd_ensure_tables(sn_conn *c, int *created, char *err, size_t errlen)
{
    sqlite3 *db = c->db;
    sqlite3_int64 have = 0;
    int nested;

    *created = 0;
    /* The check first keeps an existing database from taking a write lock (and bumping
     * its schema) at every start. */
    if (count_log_objects(db, &have, err, errlen))
        return -1;
    if (have == 3)
        return 0;
    if (sqd_txn_begin(db, &nested, err, errlen))
        return -1;
    int missing = !table_exists(db, CHANGES_TABLE);
    /* AUTOINCREMENT: a seq is never handed out twice, even after pruning emptied the
     * table, so a reader's cursor cannot skip a new row. The comment makes each log's
     * CREATE text unique: a reader tells a log made again after a DROP by it. */
    unsigned char rnd[8];
    sqlite3_randomness(sizeof rnd, rnd);
    char *ddl = sqlite3_mprintf(
        "CREATE TABLE IF NOT EXISTS " CHANGES_TABLE " ("
        "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "channel TEXT NOT NULL, "
        "payload TEXT NOT NULL, "
        "created_at REAL NOT NULL DEFAULT " NOW_SQL " "
        "/* sqlnotify change log %02x%02x%02x%02x%02x%02x%02x%02x */);"
        "CREATE INDEX IF NOT EXISTS " CHANGES_TABLE "_created_at ON " CHANGES_TABLE " (created_at);"
        "CREATE TABLE IF NOT EXISTS " READERS_TABLE " ("
        "id INTEGER PRIMARY KEY, "       /* random, per listening connection */
        "position INTEGER NOT NULL, "    /* every seq at or below it was read */
        "heartbeat REAL NOT NULL, "      /* unix time of its last sign of life */
        "timeout REAL NOT NULL, "        /* silent longer than this: no longer holds rows back */
        "pid INTEGER, "
        "since REAL NOT NULL DEFAULT " NOW_SQL ");",
        rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    if (!ddl) {
        sn_seterr(err, errlen, "out of memory");
        goto fail;
    }
    int bad = sqd_exec(db, ddl, err, errlen);
    sqlite3_free(ddl);
    if (bad)
        goto fail;
    if (missing) {
        /* A log made again after a DROP continues past every position known, so the
         * readers' cursors stay below the new rows. */
        sqlite3_int64 floor = one_int(db, "SELECT max(position) FROM " READERS_TABLE, 0);
        sqlite3_int64 kept = table_exists(db, CONSUMERS_TABLE)
            ? one_int(db, "SELECT max(position) FROM " CONSUMERS_TABLE, 0) : 0;
        if (kept > floor)
            floor = kept;
        if (c->rd && c->cursor > floor)
            floor = c->cursor;
        if (floor > 0) {
            char *seed = sqlite3_mprintf("INSERT INTO sqlite_sequence (name, seq) "
                                         "VALUES ('" CHANGES_TABLE "', %lld)", (long long)floor);
            bad = !seed || sqd_exec(db, seed, err, errlen);
            sqlite3_free(seed);
            if (bad)
                goto fail;
        }
    }
    if (sqd_txn_commit(db, nested, err, errlen))
        goto fail;
    *created = missing;
    return 0;

fail:
    sqd_txn_rollback(db, nested);
    return -1;
}

int sqd_log_end(sqlite3 *db, sqlite3_int64 *out, char *err, size_t errlen)
{
    *out = 0;
    return query_int(db, "SELECT max(coalesce((SELECT max(seq) FROM " CHANGES_TABLE "), 0), "
                         "coalesce((SELECT seq FROM sqlite_sequence WHERE name = '" CHANGES_TABLE "'), 0))",
                     out, err, errlen);
}

char *sqd_log_sql(sqlite3 *db)
{
    sqlite3_stmt *st;
    char *sql = NULL;
    if (sqlite3_prepare_v2(db, "SELECT sql FROM main.sqlite_master WHERE type = 'table' "
                               "AND name = '" CHANGES_TABLE "'", -1, &st, NULL) != SQLITE_OK)
        return NULL;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        sql = sqd_strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return sql;
}

/* ===== readers ===== */

int sqd_heartbeat(sn_conn *c)
{
    sqlite3_stmt *st;
    if (!c->rd)
        return SQLITE_OK;
    if (!sqlite3_get_autocommit(c->db))
        return SQLITE_BUSY;   /* stay out of the caller's transaction: later */
    if (sqlite3_prepare_v2(c->db,
                           "INSERT INTO " READERS_TABLE " (id, position, heartbeat, timeout, pid) "
                           "VALUES (?1, ?2, " NOW_SQL ", ?3, ?4) ON CONFLICT (id) DO UPDATE SET "
                           "position = excluded.position, heartbeat = excluded.heartbeat",
                           -1, &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    sqlite3_bind_int64(st, 1, c->reader_id);
    sqlite3_bind_int64(st, 2, sqd_held(c));
    sqlite3_bind_double(st, 3, READER_TIMEOUT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)getpid());
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void sqd_reader_forget(sn_conn *c)
{
    sqlite3_stmt *st;
    if (!c->db || !c->reader_id || !sqlite3_get_autocommit(c->db))
        return;   /* left behind: it stops holding rows back after its timeout */
    if (sqlite3_prepare_v2(c->db, "DELETE FROM " READERS_TABLE " WHERE id = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, c->reader_id);
    sqlite3_busy_timeout(c->db, 200);
    sqlite3_step(st);
    sqlite3_finalize(st);
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
}

/* Readers silent past their timeout: say so once, and let the rows they held go. */
static int forget_dead_readers(sn_conn *c)
{
    sqlite3_stmt *st;
    int rc;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT id, pid, " NOW_SQL " - heartbeat FROM " READERS_TABLE
                           " WHERE heartbeat < " NOW_SQL " - timeout AND id <> ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    sqlite3_bind_int64(st, 1, c->reader_id);
    sqlite3_int64 ids[16];
    int n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < 16) {
        ids[n++] = sqlite3_column_int64(st, 0);
        sn_logf(&c->sink, SN_LOG_INFO, "reader %lld (pid %lld) of %s sent no heartbeat for "
                "%.0f s: it no longer holds back the change log",
                (long long)sqlite3_column_int64(st, 0), (long long)sqlite3_column_int64(st, 1),
                c->target, sqlite3_column_double(st, 2));
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return rc;
    if (sqlite3_prepare_v2(c->db, "DELETE FROM " READERS_TABLE " WHERE id = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    rc = SQLITE_DONE;
    for (int i = 0; i < n && rc == SQLITE_DONE; i++) {
        sqlite3_bind_int64(st, 1, ids[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Whether the consumers' table has its retention column (files of earlier versions lack it
 * until a consumer registers). */
int sqd_has_retention(sqlite3 *db)
{
    return one_int(db, "SELECT count(*) FROM pragma_table_info('" CONSUMERS_TABLE "') WHERE name = 'retention'",
                   0) == 1;
}

/* Delete rows past the retention that every live reader has read, a few small batches.
 * *more: rows are left (or the lock was taken): come back soon. */
static int prune(sn_conn *c, int *more)
{
    sqlite3_stmt *st = NULL;
#define PRUNE_SQL(consumers) \
        "DELETE FROM " CHANGES_TABLE " WHERE seq IN (SELECT seq FROM " CHANGES_TABLE \
        " WHERE created_at < " NOW_SQL " - ?1 AND seq <= ?3 AND seq <= " \
        "(SELECT coalesce(min(position), ?3) FROM " READERS_TABLE \
        "  WHERE heartbeat >= " NOW_SQL " - timeout) " consumers "LIMIT ?2)"
#define HELD_FOR(retention) PRUNE_SQL("AND seq <= (SELECT coalesce(min(position), ?3) FROM " CONSUMERS_TABLE \
                                      " WHERE last_seen >= " NOW_SQL " - " retention ") ")
    /* made by the first durable notifier on the file; each consumer's own retention since
     * this version (a file of an earlier one has no column for it until a consumer registers) */
    const char *sql = sqd_has_retention(c->db) ? HELD_FOR("coalesce(retention, ?4)")
                      : table_exists(c->db, CONSUMERS_TABLE) ? HELD_FOR("?4")
                      : PRUNE_SQL("AND ?4 IS NOT NULL ");
#undef HELD_FOR
#undef PRUNE_SQL
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    sqlite3_bind_double(st, 1, c->retention);
    sqlite3_bind_int(st, 2, PRUNE_BATCH);
    /* Our own reader counts even if its row is missing (written at the next tick). */
    sqlite3_bind_int64(st, 3, c->rd ? sqd_held(c) : INT64_MAX);
    /* consumers not seen for their retention stop holding rows back */
    sqlite3_bind_double(st, 4, c->consumer_retention);
    int rc = SQLITE_DONE;
    for (int i = 0; i < PRUNE_STATEMENTS; i++) {
        rc = sqlite3_step(st);
        int n = sqlite3_changes(c->db);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            break;
        *more = n == PRUNE_BATCH;
        if (!*more)
            break;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Consumers that stopped coming: see sn_say_absent(). */
static void absent_check(sn_conn *c)
{
    double now = ev_now(c->loop);
    if (c->absent_asked > 0 && now - c->absent_asked < SN_ABSENT_EVERY)
        return;
    c->absent_asked = now;
    sqlite3_stmt *st = NULL;
    if (!sqd_has_retention(c->db) ||
        sqlite3_prepare_v2(c->db,
                           "SELECT group_concat(json_quote(name) || ' (last seen ' || strftime('%Y-%m-%dT%H:%MZ',"
                           " last_seen, 'unixepoch') || ')', ', ') FROM (SELECT name, last_seen FROM " CONSUMERS_TABLE
                           " WHERE name IS NOT ?1 AND last_seen < " NOW_SQL " - ?2 AND last_seen >= " NOW_SQL
                           " - coalesce(retention, ?3) ORDER BY last_seen, name)",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_text(st, 1, c->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, SN_ABSENT_AFTER);
    sqlite3_bind_double(st, 3, c->consumer_retention);
    const unsigned char *names = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    sn_say_absent(&c->sink, &c->absent_said, now, (const char *)names, "the change log's rows in", c->target,
                  SN_ABSENT_AFTER, c->consumer_retention);
    sqlite3_finalize(st);
}

/* ===== schema changes ===== */

/* The caller has set the busy timeout to 0: a locked file means "again soon". */
static int schema_check(sn_conn *c)
{
    char why[512];
    int created = 0, rc;

    sqlite3_int64 v = one_int(c->db, "PRAGMA schema_version", -1);
    if (v < 0)
        return -1;   /* locked by a writer */
    if (v == c->schema_seen) {
        c->schema_same_at = ev_now(c->loop);
        return 0;
    }
    if (sqd_ensure_tables(c, &created, why, sizeof why)) {
        rc = sqlite3_errcode(c->db);
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
            sn_logf(&c->sink, SN_LOG_ERROR, "cannot create the change log of %s again: %s",
                    c->target, why);
        return -1;
    }
    if (created)
        sn_logf(&c->sink, SN_LOG_WARN, "the change log table " CHANGES_TABLE " of %s was "
                "dropped; created it again (writes to watched tables failed while it was "
                "missing)", c->target);
    /* before the repair: a durable trigger gone with its table captures nothing meanwhile */
    rc = sqd_remake_triggers(c);
    if (rc != SQLITE_OK)
        return -1;
    rc = sqd_repair_triggers(c);
    if (rc != SQLITE_OK)
        return -1;
    if (c->rd) {
        char *sql = sqd_log_sql(c->db);
        /* made again by another process: its seq may restart below our cursor (when we
         * made it, it continues past our cursor) */
        if (sql && c->log_sql && strcmp(sql, c->log_sql) != 0 && !created)
            sqd_reader_rewind(c);
        if (sql) {
            free(c->log_sql);
            c->log_sql = sql;
        }
    }
    /* The version we started from, not a fresh read: a change committed while we looked
     * (by another process, or our own repair) is looked at by the next check. */
    c->schema_seen = v;
    return 0;
}

int sqd_schema_check(sn_conn *c)
{
    if (!c->db || !sqlite3_get_autocommit(c->db))
        return 0;   /* the caller's transaction is open: the next check does it */
    sqlite3_busy_timeout(c->db, 0);   /* never stall the loop: retried soon instead */
    int rc = schema_check(c);
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    return rc;
}

/* ===== housekeeping ===== */

static double house_interval(const sn_conn *c)
{
    double t = c->retention / 4;
    t = t < 0.05 ? 0.05 : t > 60 ? 60 : t;
    if (c->rd) {
        double hb = READER_TIMEOUT / 20;
        t = t < hb ? t : hb;
    }
    return t;
}

/* Housekeeping must not stall the loop: every write gives up at once when someone
 * holds the lock (and comes back soon), and it stays out of a transaction the user
 * opened through query(). */
static void house_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sn_conn *c = t->data;
    int more = 0, rc;
    (void)loop;
    (void)revents;

    if (sqd_file_replaced(c)) {
        rc = sqd_reopen(c);
        if (rc == 1)
            return;   /* c was closed by a callback */
        more = rc < 0 && !c->replaced_logged;
    }
    if (c->db && sqlite3_get_autocommit(c->db)) {
        sqlite3_busy_timeout(c->db, 0);
        if (schema_check(c))
            more = 1;
        rc = sqd_heartbeat(c);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
            more = 1;
        rc = prune(c, &more);
        if (rc == SQLITE_OK)
            rc = forget_dead_readers(c);
        if (rc == SQLITE_OK)
            absent_check(c);
        sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
            more = 1;
        else if (rc != SQLITE_OK)
            sn_logf(&c->sink, SN_LOG_WARN, "pruning %s failed: %s", c->target,
                    sqlite3_errmsg(c->db));
    }
    t->repeat = more ? HOUSE_HURRY : house_interval(c);
    ev_timer_again(c->loop, t);
}

void sqd_house_start(sn_conn *c)
{
    double t = house_interval(c);
    ev_timer_init(&c->house, house_cb, t, t);
    c->house.data = c;
    sqd_timer_start_unref(c->loop, &c->house);
}

/* After listening started or stopped (the interval depends on it), or to retry soon. */
void sqd_house_reschedule(sn_conn *c, int hurry)
{
    if (!ev_is_active(&c->house))
        return;
    double t = hurry ? HOUSE_HURRY : house_interval(c);
    if (ev_timer_remaining(c->loop, &c->house) > t) {
        c->house.repeat = t;
        ev_timer_again(c->loop, &c->house);
    }
}
