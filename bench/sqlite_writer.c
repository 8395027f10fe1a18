/*
 * bench/sqlite_writer.c — the other process that writes for the SQLite half of `make bench`.
 *
 *   sqlite_writer DB init          WAL mode; tables lat and bulk (id, t0, note)
 *   sqlite_writer DB lat N GAP_US  N single-row commits, GAP_US apart, then an end-of-run row
 *   sqlite_writer DB bulk N        one commit of N rows, then an end-of-run row
 *   sqlite_writer DB quit          a row that tells the watcher to stop
 *   sqlite_writer DB version       print the SQLite library version
 *
 * t0 is the time the row is written, in microseconds since the epoch (SQLite's own clock
 * functions stop at milliseconds). The protocol is bench/watch.lua's: t0 > 0 measured,
 * 0 end of a run, -1 stop. synchronous=NORMAL, the usual WAL setting: a commit does not
 * wait for fsync, so the latency measured is the notification path's, not the disk's.
 */
#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static sqlite3 *db;

static void die(const char *what)
{
    fprintf(stderr, "sqlite_writer: %s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
}

static void exec(const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        die(sql);
}

static void insert(sqlite3_stmt *st, long long t0, const char *note)
{
    sqlite3_bind_int64(st, 1, t0);
    sqlite3_bind_text(st, 2, note, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        die("insert");
    sqlite3_reset(st);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DB init|lat N GAP_US|bulk N|quit\n", argv[0]);
        return 2;
    }
    const char *mode = argv[2];
    if (strcmp(mode, "version") == 0) {
        printf("%s\n", sqlite3_libversion());
        return 0;
    }
    if (sqlite3_open(argv[1], &db) != SQLITE_OK)
        die("open");
    sqlite3_busy_timeout(db, 5000);
    if (strcmp(mode, "init") == 0) {
        exec("PRAGMA journal_mode = WAL");
        exec("DROP TABLE IF EXISTS lat; DROP TABLE IF EXISTS bulk;"
             "CREATE TABLE lat (id INTEGER PRIMARY KEY, t0 INTEGER NOT NULL, note TEXT NOT NULL);"
             "CREATE TABLE bulk (id INTEGER PRIMARY KEY, t0 INTEGER NOT NULL, note TEXT NOT NULL)");
        sqlite3_close(db);
        return 0;
    }
    exec("PRAGMA synchronous = NORMAL");
    const char *table = strcmp(mode, "bulk") == 0 ? "bulk" : "lat";
    char sql[128], note[32];
    snprintf(sql, sizeof sql, "INSERT INTO %s (t0, note) VALUES (?1, ?2)", table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        die("prepare");
    long n = argc > 3 ? atol(argv[3]) : 0;
    if (strcmp(mode, "lat") == 0) {
        long gap = argc > 4 ? atol(argv[4]) : 1000;
        for (long i = 1; i <= n; i++) {
            snprintf(note, sizeof note, "row %ld", i);
            insert(st, now_us(), note);
            sleep_us(gap);
        }
        insert(st, 0, "end");
    } else if (strcmp(mode, "bulk") == 0) {
        exec("BEGIN");
        for (long i = 1; i <= n; i++) {
            snprintf(note, sizeof note, "row %ld", i);
            insert(st, now_us(), note);
        }
        exec("COMMIT");
        insert(st, 0, "end");
    } else if (strcmp(mode, "quit") == 0) {
        insert(st, -1, "quit");
    } else {
        fprintf(stderr, "sqlite_writer: unknown mode %s\n", mode);
        return 2;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
