/*
 * dialects/sqlite/sqlite.h — what the files of the SQLite driver share.
 *
 * SQLite has no NOTIFY, so triggers append every change to a log table,
 * sqlnotify_changes (seq, channel, payload, created_at), and listeners read past a
 * cursor. Every process watching a file reads the same rows (broadcast). Each
 * listening reader records its position and a heartbeat in sqlnotify_readers; rows
 * are pruned only past the retention and below every live reader's position.
 *
 *   connection.c  URL, open/close, reopening a replaced file, notify, query, descriptor
 *   journal.c     the log and readers tables, heartbeats, pruning, schema-change repair
 *   triggers.c    catalog (describe), trigger names, generation, install, drop, list, verify,
 *                 repair; a durable trigger made again at once when a schema change took it
 *   reader.c      the reader: reading batches, gaps, file-change wake-ups
 *   consumers.c   durable mode: consumers' positions and leases in sqlnotify_consumers
 *
 * Two connections per sn_conn: the query connection (blocking calls, busy timeout)
 * and, once listen() is called, the reader (never blocks: busy timeout 0, retried on
 * a timer). Nothing here is visible outside the driver but sn_sqlite_dialect.
 */
#ifndef SQLNOTIFY_SQLITE_H
#define SQLNOTIFY_SQLITE_H

#include "dialect.h"

#include <sqlite3.h>
#include <ev.h>
#include <sys/types.h>

#pragma GCC visibility push(hidden)

/* Bump when the generated trigger SQL changes, so old triggers count as changed. */
#define SQL_VERSION 2
#define MARKER_PREFIX "/* sqlnotify:"

#define CHANGES_TABLE "sqlnotify_changes"
#define READERS_TABLE "sqlnotify_readers"
#define CONSUMERS_TABLE "sqlnotify_consumers"
#define READS_TABLE "sqlnotify_reads" /* the channels each consumer reads, for its lag */
#define MEMBERS_TABLE "sqlnotify_members" /* each process of a consumer: its tables, a heartbeat */
#define MEMBERS_CHANNEL "sqlnotify:members" /* change log rows: a member's tables changed here */
#define NOW_SQL "((julianday('now') - 2440587.5) * 86400.0)"

#define BUSY_TIMEOUT_MS 5000     /* query connection: blocking calls may wait this long */
#define FETCH_LIMIT 5000         /* rows per read of the change log */
#define PRUNE_BATCH 1000         /* rows per DELETE: keeps each write lock short */
#define PRUNE_STATEMENTS 4       /* DELETEs per housekeeping tick */
#define HOUSE_HURRY 0.01         /* next tick when one was cut short (busy, rows left) */
#define READER_TIMEOUT 600.0     /* a reader silent this long no longer holds rows back */
#define POLL_INTERVAL 1.0        /* safety-net poll when no file event arrives */
#define BUSY_RETRY_MIN 0.001     /* reader retry after SQLITE_BUSY, doubling... */
#define BUSY_RETRY_MAX 0.020     /* ...up to this */
#define ERROR_RETRY 0.25         /* reader retry after any other error */
#define ARENA_KEEP (8u << 20)    /* batch buffers larger than this are released after use */
#define LEASE_BEAT 1.0           /* durable: the holder renews its lease, a standby looks */
#define LEASE_TIMEOUT 10.0       /* a lease not renewed this long may be taken over */
#define SAVE_BUSY_MS 50          /* longest wait for the lock when saving a position */
#define SLICE_SECONDS 0.01       /* durable: handler time per slice of a batch (lease checked between) */
#define HOLD_SAVE_DELAY 0.02     /* held: acks arriving this close together go in one write */
#define DEFAULT_CONSUMER_RETENTION (7 * 86400.0)

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
    ev_timer house;              /* heartbeat, pruning, schema and file checks */
    dev_t dev;                   /* the file the connections are on */
    ino_t ino;
    int replaced_logged;         /* a reopen failed: logged once until it works */
    sqlite3_int64 schema_seen;   /* PRAGMA schema_version last checked; -1: never */
    double schema_same_at;       /* ev_now() when the schema was last known still at schema_seen */
    sqlite3_int64 same_dv;       /* the reader's data_version when it last found it so; -1: none */
    struct made *made;           /* durable triggers this connection installed (triggers.c) */
    int nmade, capmade;

    /* listening; rd != NULL while listening */
    sqlite3 *rd;
    sqlite3_stmt *dv_stmt, *sv_stmt, *fetch_stmt;
    unsigned gen;                /* bumped each time a reader is opened */
    sqlite3_int64 cursor, dv;
    sqlite3_int64 reader_id;     /* our row in sqlnotify_readers */
    char *log_sql;               /* CREATE TABLE text of the log we read: its identity */
    struct chan *chans;
    int nchans, capchans;
    char *file, *wal, *dir, *base, *walbase, *journalbase;
    int ifd, wd_dir, wd_db, wd_wal;
    int file_suspect;            /* the directory saw the database file replaced */
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

    /* durable mode (consumers.c); consumer == NULL: live */
    char *consumer;
    int start_beginning;
    double consumer_retention;
    double absent_asked, absent_said; /* consumers that stopped coming: last asked, last named (0: none now) */
    char host[256];              /* gethostname(): a holder pid is only checked on its host */
    sqlite3_int64 holder_id;     /* random: our lease */
    int active;                  /* we hold the lease: read and deliver */
    sqlite3_int64 standby_pid;   /* != 0 while standing by (the holder, or -1) */
    sqlite3_int64 acked;         /* position saved in the file */
    sqlite3_int64 pos_pending;   /* handled up to here, saved or to be saved */
    int save_failed;             /* pos_pending not saved yet (busy): no new batch before */
    sqlite3_int64 batch_last;    /* seq of the last event of the batch being delivered */
    sqlite3_int64 batch_end;     /* the cursor after that batch */
    double beat_ok;              /* ev_time() of our last lease write that took */
    int held;                    /* hold(1): handlers of the last batch still run; read nothing */
    ev_timer lease;
    sn_tables tables;            /* what this process reads (installed, listened to): its member row */
    char *tables_said;           /* the tables as last recorded, one a line */
    char *blocked_said;          /* what other members watch that we do not, as last logged */
    int blocked;                 /* a live member watches a table we do not: read nothing */

    int depth;                   /* > 0 while inside a sink callback */
    int dead;                    /* close() was called inside one: free on the way out */
};

/* ===== connection.c ===== */
char *sqd_strdup(const char *s);
int sqd_exec(sqlite3 *db, const char *sql, char *err, size_t errlen);
int sqd_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen);
int sqd_txn_begin(sqlite3 *db, int *nested, char *err, size_t errlen);
int sqd_txn_commit(sqlite3 *db, int nested, char *err, size_t errlen);
void sqd_txn_rollback(sqlite3 *db, int nested);
void sqd_timer_start_unref(struct ev_loop *loop, ev_timer *t);
void sqd_timer_stop_unref(struct ev_loop *loop, ev_timer *t);
/* 1 if the path now names another file than the one the connections are on. */
int sqd_file_replaced(sn_conn *c);
/* Append to out who holds a write lock on the file (Linux: "pid 1234 (sqlite3)"), if it can tell. */
void sqd_lock_holders(sn_conn *c, char *out, size_t n);
/* Reopen both connections on the file now at the path. 0, or -1 (logged; retried later). */
int sqd_reopen(sn_conn *c);
void sqd_free_conn(sn_conn *c);

/* ===== journal.c ===== */
/* Create the log and readers tables if missing (a log recreated after a DROP continues
 * its seq past every known position). *recreated is set when the log had to be made
 * again. 0, or -1 and err. */
int sqd_ensure_tables(sn_conn *c, int *recreated, char *err, size_t errlen);
/* The seq the next reader starts after: the log's end (MAX(seq), or the AUTOINCREMENT
 * counter when pruning emptied it). 0, or -1 and err. */
int sqd_log_end(sqlite3 *db, sqlite3_int64 *out, char *err, size_t errlen);
/* Whether the consumers' table has its retention column (1) or not (0, also on error). */
int sqd_has_retention(sqlite3 *db);
/* The CREATE TABLE text of the log (malloc'd), NULL if missing or on error. */
char *sqd_log_sql(sqlite3 *db);
/* Write our reader row (position, heartbeat), waiting as long as the connection's busy
 * timeout says (0 in the loop). 0, or an
 * SQLite result code. */
int sqd_heartbeat(sn_conn *c);
void sqd_reader_forget(sn_conn *c);
void sqd_house_start(sn_conn *c);
void sqd_house_reschedule(sn_conn *c, int hurry);
/* Look at the schema: recreate a dropped log, repair triggers after renames, notice a
 * recreated log under a reader. Cheap when nothing changed. 0, or -1 to be retried. */
int sqd_schema_check(sn_conn *c);

/* ===== consumers.c ===== */
/* Where pruning must stop for this reader: a consumer's saved position, else the cursor. */
static inline sqlite3_int64 sqd_held(const sn_conn *c)
{
    return c->consumer ? c->acked : c->cursor;
}
/* Make the consumer's row if it has none (start_at); blocking, on the reader. */
int sqd_consumer_register(sn_conn *c, char *err, size_t errlen);
int sqd_consumer_reads(sn_conn *c, const char *channel, char *err, size_t errlen);
int sqd_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen);
int sqd_consumer_read_before(sn_conn *c, const char *channel);
/* Take the lease when free, expired or its holder is gone; else stand by (logged once). */
void sqd_consumer_try_lease(sn_conn *c);
/* (Re)start the lease timer: first run after delay seconds. */
void sqd_kick_lease(sn_conn *c, double delay);
/* Save pos_pending and renew the lease. 0, or -1 (busy: retried). */
int sqd_consumer_flush(sn_conn *c);
void sqd_consumer_ack(sn_conn *c, sqlite3_int64 seq);
/* The dialect's hold: 1, or 0 in live mode. Released, the next check reads from the last ack. */
int sqd_consumer_hold(sn_conn *c, int on);
/* Between slices of a batch: whether the lease is still surely ours (renewed when due). */
int sqd_consumer_holds(sn_conn *c);
/* Save and give the lease up; stop the timer. */
void sqd_consumer_release(sn_conn *c);
void sqd_consumer_stop(sn_conn *c);
/* The file was replaced: record the consumer in the new one and take its lease there. */
void sqd_consumer_reopened(sn_conn *c);
/* Members (a process reads its consumer only while its tables include every other live
 * member's): add channel's table to ours and record them at once (a blocking call: install,
 * listen), with a change log row when they changed. 0, or -1 and err. */
int sqd_members_add(sn_conn *c, const char *channel, char *err, size_t errlen);
/* Channel no longer listened to: its table leaves ours (recorded at the next beat). */
void sqd_members_remove(sn_conn *c, const char *channel);
/* Our member row was seen in the change log (fetch_batch, inside its read): look at the
 * members now. 1: blocked, stop before this row. */
int sqd_members_fence(sn_conn *c);
/* Each LEASE_BEAT, and before the first lease attempt (quiet: nothing said yet): write our
 * member row, look at the others. */
void sqd_members_beat(sn_conn *c, int quiet);
/* Blocked while holding the lease: save, give the lease up, stand by (not while held). */
void sqd_consumer_yield(sn_conn *c);
/* Our row goes (a clean stop, a close), and what we kept about members. */
void sqd_members_leave(sn_conn *c);
void sqd_members_free(sn_conn *c);
int sqd_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen);
int sqd_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen);

/* ===== triggers.c ===== */
int sqd_describe(sn_conn *c, const char *schema, const char *table, sn_result **out,
                 char *err, size_t errlen);
int sqd_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen);
int sqd_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
int sqd_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen);
int sqd_list(sn_conn *c, sn_result **out, char *err, size_t errlen);
int sqd_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
int sqd_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen);
/* Regenerate our triggers whose table lost a column they name (renamed or dropped).
 * 0, or an SQLite result code (SQLITE_BUSY: try again later). */
int sqd_repair_triggers(sn_conn *c);
/* While reading as a durable consumer: make again at once each durable trigger this connection
 * installed that a schema change took away from its table (the table dropped and made again,
 * a copy renamed into its place), as it was made. Cheap when none is missing: one catalog
 * lookup each. 0, or an SQLite result code (SQLITE_BUSY: try again later). */
int sqd_remake_triggers(sn_conn *c);
/* Forget every kept trigger (close). */
void sqd_made_free(sn_conn *c);

/* ===== reader.c ===== */
int sqd_listen(sn_conn *c, const char *channel, char *err, size_t errlen);
void sqd_unlisten(sn_conn *c, const char *channel);
void sqd_stop_listening(sn_conn *c);
/* Schedule a check of the log after delay seconds unless one is due sooner. */
void sqd_kick(sn_conn *c, double delay);
/* Close the reader's connection and file watches, keeping cursor and channels. */
void sqd_reader_close(sn_conn *c);
/* Open them again on the file now at the path, continuing from the cursor (or the new
 * log's end when that is lower). 0, or -1 and err. */
int sqd_reader_reopen(sn_conn *c, char *err, size_t errlen);
/* The log under the reader was made again by another process: read it from its start. */
void sqd_reader_rewind(sn_conn *c);

#pragma GCC visibility pop

/* statements.sql, compiled in by tools/embed.sh. */
extern const char sqlite_statements_sql[];

#endif
