/*
 * dialects/sqlite/connection.c — the SQLite driver's connection: the URL, opening and
 * closing, reopening when the database file was replaced under us, notify, query,
 * and the descriptor that registers the driver.
 */
#include "sqlite.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* ===== small helpers ===== */

char *sqd_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Run SQL without results on a connection; 0, or -1 and err. */
int sqd_exec(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    sn_seterr(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

int sqd_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK)
        return 0;
    sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    *st = NULL;
    return -1;
}

/* Start a write transaction, or a savepoint when the caller (through query()) already
 * has one open. BEGIN IMMEDIATE takes the write lock up front, so reading the catalog
 * and then writing cannot fail half way on a lock upgrade. */
int sqd_txn_begin(sqlite3 *db, int *nested, char *err, size_t errlen)
{
    *nested = !sqlite3_get_autocommit(db);
    return sqd_exec(db, *nested ? "SAVEPOINT sqlnotify" : "BEGIN IMMEDIATE", err, errlen);
}

int sqd_txn_commit(sqlite3 *db, int nested, char *err, size_t errlen)
{
    return sqd_exec(db, nested ? "RELEASE sqlnotify" : "COMMIT", err, errlen);
}

void sqd_txn_rollback(sqlite3 *db, int nested)
{
    if (nested)
        sqlite3_exec(db, "ROLLBACK TO sqlnotify; RELEASE sqlnotify", NULL, NULL, NULL);
    else if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Timers that must not keep the loop alive on their own. */
void sqd_timer_start_unref(struct ev_loop *loop, ev_timer *t)
{
    ev_timer_start(loop, t);
    ev_unref(loop);
}

void sqd_timer_stop_unref(struct ev_loop *loop, ev_timer *t)
{
    if (!ev_is_active(t))
        return;
    ev_ref(loop);
    ev_timer_stop(loop, t);
}

/* ===== URL ===== */

static int hex_digit(char ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0'
         : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* Decode %XX escapes of s[0..n) into out (room for n + 1 bytes); a '%' not followed by two
 * hex digits stays as it is, as Python's unquote leaves it. -1 for %00: no file name holds a
 * NUL byte. Returns the decoded length. */
static int pct_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = i + 2 < n && s[i] == '%' ? hex_digit(s[i + 1]) : -1;
        int lo = hi >= 0 ? hex_digit(s[i + 2]) : -1;
        if (lo < 0) {
            out[o++] = s[i];
            continue;
        }
        if (hi == 0 && lo == 0)
            return -1;
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[o] = '\0';
    return (int)o;
}

/* "sqlite:///rel.db" -> "rel.db", "sqlite:////abs.db" -> "/abs.db". As in SQLAlchemy, the
 * path is everything up to '?' ('#' included: there is no fragment); unlike SQLAlchemy,
 * %XX escapes are decoded, so "%3F" names a file with a '?' and "%23" one with a '#'.
 * Query parameters (decoded too): mode=rw (the default: the file must exist) or mode=rwc
 * (create it if missing), as in SQLite's own URIs; anything else is refused. A malloc'd
 * path, or NULL and err. */
static char *parse_url(const char *url, int *create, char *err, size_t errlen)
{
    static const char prefix[] = "sqlite:///";
    const size_t plen = sizeof prefix - 1;

    *create = 0;
    if (!url || strncasecmp(url, prefix, plen) != 0) {
        sn_seterr(err, errlen,
                  "not a SQLite URL: \"%s\" (expected sqlite:///relative.db or "
                  "sqlite:////absolute/path.db)", url ? url : "");
        return NULL;
    }
    const char *p = url + plen;
    size_t n = strcspn(p, "?");
    char *path = malloc(strlen(p) + 1); /* room for the path and, after it, each parameter */
    if (!path) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    int len = pct_decode(p, n, path);
    if (len < 0) {
        sn_seterr(err, errlen, "SQLite URL \"%s\" has %%00 in its path: a file name cannot hold a NUL byte", url);
        goto fail;
    }
    if (len == 0 || strcmp(path, "/") == 0) {
        sn_seterr(err, errlen, "no database path in SQLite URL \"%s\"", url);
        goto fail;
    }
    if (strcmp(path, ":memory:") == 0) {
        sn_seterr(err, errlen, "an in-memory SQLite database cannot be watched: "
                  "the listener's own connection would not see it (use a file)");
        goto fail;
    }
    for (const char *q = p[n] == '?' ? p + n + 1 : p + n; *q;) {
        size_t qlen = strcspn(q, "&");
        char *param = path + len + 1;
        if (pct_decode(q, qlen, param) < 0)
            param[0] = '\0'; /* refused below as an unknown parameter */
        if (strcmp(param, "mode=rwc") == 0)
            *create = 1;
        else if (strcmp(param, "mode=rw") == 0)
            *create = 0;
        else if (strncmp(param, "mode=", 5) == 0) {
            sn_seterr(err, errlen, "unsupported mode \"%s\" in SQLite URL \"%s\" "
                      "(use mode=rw or mode=rwc: sqlnotify writes its change log and "
                      "triggers to the file)", param + 5, url);
            goto fail;
        } else if (qlen > 0) {
            sn_seterr(err, errlen, "unknown parameter \"%.*s\" in SQLite URL \"%s\" "
                      "(known: mode=rw, mode=rwc)", (int)qlen, q, url);
            goto fail;
        }
        q += qlen + (q[qlen] == '&');
    }
    return path;

fail:
    free(path);
    return NULL;
}

/* ===== the file under the connections ===== */

static int file_id(sqlite3 *db, dev_t *dev, ino_t *ino)
{
    const char *f = sqlite3_db_filename(db, "main");
    struct stat sb;
    if (!f || !*f || stat(f, &sb) != 0)
        return -1;
    *dev = sb.st_dev;
    *ino = sb.st_ino;
    return 0;
}

/* Who holds a write lock on the database file or its WAL index: SQLite's locks are POSIX
 * record locks, which Linux lists in /proc/locks with the holder's pid and the file's device
 * and inode. Appends "pid 1234 (sqlite3)" for each (at most 3) to out, or nothing where that
 * cannot be told. */
void sqd_lock_holders(sn_conn *c, char *out, size_t n)
{
    const char *f = sqlite3_db_filename(c->db, "main");
    struct stat files[2];
    int nfiles = 0, npids = 0;
    long pids[3];
    char shm[4096];
    if (f && *f && stat(f, &files[0]) == 0) {
        snprintf(shm, sizeof shm, "%s-shm", f);
        nfiles = stat(shm, &files[1]) == 0 ? 2 : 1;
    }
    FILE *locks = nfiles ? fopen("/proc/locks", "r") : NULL;
    char line[256];
    while (locks && npids < 3 && fgets(line, sizeof line, locks)) {
        char kind[16], mode[16], access[16];
        long pid;
        unsigned maj, min;
        unsigned long ino;
        /* "1: POSIX  ADVISORY  WRITE 1234 fe:00:2146687 1073741825 1073741825"; a waiter's line has "->" */
        if (sscanf(line, "%*d: %15s %15s %15s %ld %x:%x:%lu", kind, mode, access, &pid, &maj, &min, &ino) != 7 ||
            strcmp(access, "WRITE") != 0 || pid <= 0)
            continue;
        int ours = 0;
        for (int i = 0; i < nfiles; i++)
            ours |= files[i].st_ino == ino && major(files[i].st_dev) == maj && minor(files[i].st_dev) == min;
        for (int i = 0; i < npids; i++)
            ours &= pids[i] != pid;
        if (!ours)
            continue;
        pids[npids++] = pid;
        char path[64], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%ld/comm", pid);
        FILE *cf = fopen(path, "r");
        if (cf && fgets(comm, sizeof comm, cf))
            comm[strcspn(comm, "\n")] = '\0';
        if (cf)
            fclose(cf);
        size_t len = strlen(out);
        snprintf(out + len, n > len ? n - len : 0, "%spid %ld (%s)", npids > 1 ? ", " : "", pid,
                 pid == (long)getpid() ? "this process: another connection of it" : *comm ? comm : "?");
    }
    if (locks)
        fclose(locks);
}

int sqd_file_replaced(sn_conn *c)
{
    dev_t dev;
    ino_t ino;
    if (!c->db || file_id(c->db, &dev, &ino) != 0)
        return 0;   /* gone (for now): nothing to reopen on */
    return dev != c->dev || ino != c->ino;
}

/* Open a query connection on path. 0, or -1 and err. */
static int open_db(const char *path, int create, sqlite3 **out, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        sn_seterr(err, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    *out = db;
    return 0;
}

/* `cp db db.new && mv db.new db` leaves our connections on the old inode, where nobody
 * writes any more: open the new file and go on there. The triggers and the log are
 * whatever the new file holds; the notifier is told (reconnected) so it can check its
 * triggers. Returns 0, -1 (failed: logged once, retried at the next check) or 1 when a
 * callback closed c (freed: the caller must not touch it). */
int sqd_reopen(sn_conn *c)
{
    char why[512];
    sqlite3 *db = NULL;
    int created = 0;

    if (c->depth)
        return -1;   /* not inside a handler: the batch being delivered lives in c */
    char *file = sqd_strdup(sqlite3_db_filename(c->db, "main"));
    if (!file)
        return -1;
    if (open_db(file, 0, &db, why, sizeof why) == 0) {
        sqlite3 *old = c->db;
        c->db = db;     /* ensure_tables works on c->db */
        sqlite3_busy_timeout(db, 0);
        int bad = sqd_ensure_tables(c, &created, why, sizeof why);
        sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
        c->db = old;
        if (bad) {
            sqlite3_close(db);
            db = NULL;
        }
    }
    free(file);
    if (!db) {
        if (!c->replaced_logged)
            sn_logf(&c->sink, SN_LOG_ERROR, "%s was replaced by another file, which cannot be "
                    "opened: %s; retrying", c->target, why);
        c->replaced_logged = 1;
        return -1;
    }
    sn_logf(&c->sink, SN_LOG_WARN, "%s was replaced by another file (its inode changed); "
            "reopening it", c->target);
    c->replaced_logged = 0;
    sqlite3_finalize(c->notify_stmt);
    c->notify_stmt = NULL;
    sqlite3_close(c->db);
    c->db = db;
    file_id(db, &c->dev, &c->ino);
    c->schema_seen = -1;

    if (!c->rd)
        return 0;
    sqd_reader_close(c);
    if (sqd_reader_reopen(c, why, sizeof why)) {
        sn_logf(&c->sink, SN_LOG_ERROR, "cannot listen on %s again after it was replaced: %s; "
                "no more events are delivered", c->target, why);
        sqd_stop_listening(c);
        return -1;
    }
    if (c->sink.reconnected) {
        c->depth++;
        c->sink.reconnected(c->sink.ud, 0, 1);
        c->depth--;
        if (c->dead) {
            sqd_free_conn(c);
            return 1;
        }
    }
    sqd_kick(c, 0);
    return 0;
}

/* ===== dialect: connection ===== */

void sqd_free_conn(sn_conn *c)
{
    sqd_members_leave(c);
    sqd_made_free(c);
    free(c->consumer);
    free(c->arena);
    free(c->events);
    free(c->offs);
    free(c->path);
    free(c->target);
    free(c);
}

static sn_conn *sq_open(const char *url, struct ev_loop *loop, const sn_sink *sink,
                        const sn_options *opt, char *err, size_t errlen)
{
    int create;
    char *path = parse_url(url, &create, err, errlen);
    if (!path)
        return NULL;
    struct stat sb;
    if (!create && stat(path, &sb) != 0 && errno == ENOENT) {
        sn_seterr(err, errlen, "SQLite database file \"%s\" does not exist "
                  "(add ?mode=rwc to the URL to create it)", path);
        free(path);
        return NULL;
    }
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
    c->consumer_retention = opt && opt->consumer_retention > 0 ? opt->consumer_retention
                                                               : DEFAULT_CONSUMER_RETENTION;
    if (opt && opt->consumer) {
        c->consumer = sqd_strdup(opt->consumer);
        if (!c->consumer) {
            free(target);
            free(path);
            free(c);
            sn_seterr(err, errlen, "out of memory");
            return NULL;
        }
        c->start_beginning = opt->start_at_beginning;
        if (gethostname(c->host, sizeof c->host - 1) != 0)
            strcpy(c->host, "?");
        sqlite3_randomness(sizeof c->holder_id, &c->holder_id);
        c->holder_id &= INT64_MAX;
    }
    c->ifd = c->wd_dir = c->wd_db = c->wd_wal = -1;
    c->schema_seen = -1;

    char why[512];
    int created;
    if (open_db(path, create, &c->db, why, sizeof why) ||
        sqd_ensure_tables(c, &created, why, sizeof why))
        goto fail;
    file_id(c->db, &c->dev, &c->ino);
    sqd_house_start(c);
    return c;

fail:
    sn_seterr(err, errlen, "cannot open SQLite database \"%s\": %s", path, why);
    sqlite3_close(c->db);
    sqd_free_conn(c);
    return NULL;
}

static void sq_close(sn_conn *c)
{
    if (!c || c->dead)
        return;
    sqd_stop_listening(c);
    sqd_timer_stop_unref(c->loop, &c->house);
    sqlite3_finalize(c->notify_stmt);
    c->notify_stmt = NULL;
    sqlite3_close(c->db);
    c->db = NULL;
    if (c->depth) {
        c->dead = 1;    /* the batch being delivered lives in c: freed on the way out */
        return;
    }
    sqd_free_conn(c);
}

static const char *sq_target(sn_conn *c)
{
    return c ? c->target : "SQLite database";
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
    sqd_kick(c, 0);
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
        sqd_kick(c, 0);
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

static int sq_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    return sqd_listen(c, channel, err, errlen);
}

static void sq_unlisten(sn_conn *c, const char *channel)
{
    sqd_unlisten(c, channel);
}

static void sq_stop(sn_conn *c)
{
    sqd_stop_listening(c);
}

static void sq_ack(sn_conn *c, int64_t seq)
{
    sqd_consumer_ack(c, seq);
}

static int sq_hold(sn_conn *c, int on)
{
    return sqd_consumer_hold(c, on);
}

static const char *const sqlite_schemes[] = {"sqlite", NULL};

#pragma GCC visibility push(default)
const sn_dialect sn_sqlite_dialect = {
    .name = "sqlite",
    .schemes = sqlite_schemes,
    .max_payload = 0,
    .quote = '"',
    .statements = sqlite_statements_sql,
    .open = sq_open,
    .close = sq_close,
    .target = sq_target,
    .describe = sqd_describe,
    .install = sqd_install,
    .uninstall = sqd_uninstall,
    .drop = sqd_drop,
    .list = sqd_list,
    .verify = sqd_verify,
    .row_sql = sqd_row_sql,
    .listen = sq_listen,
    .unlisten = sq_unlisten,
    .stop = sq_stop,
    .notify = sq_notify,
    .ack = sq_ack,
    .hold = sq_hold,
    .consumers = sqd_consumers,
    .drop_consumer = sqd_drop_consumer,
    .query = sq_query,
};
#pragma GCC visibility pop
