/*
 * dialect.h — the one interface between the sqlnotify runtime and a database driver.
 *
 * A driver (dialects/<name>.c) includes only this header, its database's client
 * library and libev. It is `static` everywhere except its descriptor, a
 * `const sn_dialect sn_<name>_dialect`, registered by one line in src/core.c.
 * All SQL lives in the driver. Lua is never touched here.
 *
 * Threading: everything runs on the one libev loop thread. Blocking calls (open,
 * describe, install, notify, query) are made from Lua at the caller's request;
 * listening is driven by libev watchers the driver owns.
 */
#ifndef SQLNOTIFY_DIALECT_H
#define SQLNOTIFY_DIALECT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ev.h>

enum sn_op { SN_INSERT = 0, SN_UPDATE = 1, SN_DELETE = 2 };
enum sn_level { SN_LOG_ERROR = 0, SN_LOG_WARN = 1, SN_LOG_INFO = 2, SN_LOG_DEBUG = 3 };
enum sn_type { SN_NULL = 0, SN_BOOL, SN_INT, SN_FLOAT, SN_TEXT };

/* The wire format version this release writes and reads (and every one before it). */
#define SN_WIRE_VERSION 1

/* ===== the wire format: the one description every part follows =====
 *
 * Trigger payload (every dialect; the PostgreSQL and SQLite trigger generators, the
 * binding's decoder and n:notify's encoder all follow this). One JSON object, UTF-8:
 *
 *   "id":  {pk_col: value, ...}   the key of NEW (OLD for DELETE), in any key order.
 *                                 Absent only in a truncated payload that could not
 *                                 carry even the key.
 *   "x":   {col: value, ...}      extra_columns: NEW values (OLD for DELETE). Omitted
 *                                 or {} when the watch has none.
 *   "o":   {col: value, ...}      UPDATE with old_columns: the OLD values. Omitted otherwise.
 *   "oid": {pk_col: value, ...}   UPDATE that changed the key: the OLD key. Omitted when
 *                                 the key did not change.
 *   "t":   true                   truncated: the row did not fit the notification limit
 *                                 (or the trigger could not encode it); only "id" (and
 *                                 "oid") is sent. Omitted otherwise.
 *   "v":   2                      the wire version, a whole number: absent means 1, and
 *                                 nothing sends it while the format is version 1 (no byte
 *                                 on the wire). A writer that changes the format sends the
 *                                 new number, as the first key; a reader refuses a number
 *                                 above its own
 *                                 SN_WIRE_VERSION, naming the upgrade (a durable consumer
 *                                 dead-letters the event, so an upgraded reader replays it).
 *
 * Any other top-level key, a duplicate key, a non-object where an object is due, or a
 * key column missing from "id" makes the payload malformed: logged and skipped.
 *
 * One payload on a durable read watch's channel is no row (PostgreSQL): a backfill's mark,
 * "mark <process> <chunk> <share>" (hex, decimal, decimal), written by backfill_read
 * (statements.sql) once per share after a chunk read into memory. backfill.lua takes it
 * before decoding (it is no JSON object); an older release logs it as malformed and skips it.
 *
 * Values inside "id", "x", "o", "oid":
 *   SQL NULL            null. A key present with null is a carried column that is NULL;
 *                       a key absent is a column not carried (or dropped since).
 *   boolean             true / false
 *   integer types       a JSON integer, exact (PostgreSQL int2/int4/int8, SQLite INTEGER);
 *                       decoded to a Lua integer whatever the column is called; one
 *                       past 64 bits (MySQL's BIGINT UNSIGNED) to the Lua string of its
 *                       digits, as a decimal is, never to a rounded float.
 *   float types         a JSON number that reads back to the same double (PostgreSQL
 *                       float4/float8; SQLite REAL, printed with 17 significant digits).
 *                       Infinities and NaN: the strings "Infinity", "-Infinity", "NaN".
 *   PostgreSQL numeric  a JSON number with every digit (or "NaN", "Infinity", "-Infinity").
 *   bytes               PostgreSQL bytea and SQLite BLOB values: the string "\x" followed
 *                       by lower-case hex.
 *   anything else       PostgreSQL: what to_jsonb() gives (text, json, arrays, timestamps
 *                       as ISO 8601 text); SQLite: TEXT as a string.
 * The decoder knows each carried column's class (sn_class below, from describe) and turns,
 * for a float column, "Infinity"/"-Infinity"/"NaN" into the float; for a bytes column,
 * "\x<hex>" into the raw bytes; for a decimal column, any value into a Lua string of its
 * exact text. Everything else decodes by its JSON type.
 *
 * PostgreSQL overflow reference: a notification whose payload is exactly
 * "sqlnotify:overflow:<decimal id>" names a row of the overflow table holding the whole
 * payload; it is fetched by id AND channel.
 */
/* What a column's values are, whatever the dialect calls its type: the decoder and the
 * filters go by it. Named in describe's rows by sn_class_name(). */
enum sn_class {
    SN_CLASS_OTHER = 0, /* dates, arrays, enums, ...: decoded by JSON type, filters not judged */
    SN_CLASS_INTEGER,   /* a JSON integer (MySQL's BOOLEAN, tinyint(1), is one: it holds 0/1) */
    SN_CLASS_FLOAT,     /* "Infinity", "-Infinity", "NaN" strings are floats */
    SN_CLASS_DECIMAL,   /* exact decimal: a Lua string of the value's text */
    SN_CLASS_BOOLEAN,   /* JSON true / false */
    SN_CLASS_TEXT,      /* a JSON string */
    SN_CLASS_BYTES,     /* "\x<hex>" is raw bytes */
    SN_CLASS_JSON       /* any JSON: objects and arrays become tables */
};

static inline const char *sn_class_name(int cls)
{
    static const char *const names[] = {"other", "integer", "float", "decimal", "boolean", "text", "bytes", "json"};
    return cls >= 0 && cls <= SN_CLASS_JSON ? names[cls] : names[0];
}

/* Result of install(). */
enum sn_install {
    SN_INSTALL_ERROR = -1,
    SN_INSTALL_UNCHANGED = 0, /* marker matched: no DDL issued, no lock taken */
    SN_INSTALL_CREATED = 1,   /* nothing was there */
    SN_INSTALL_REPLACED = 2,  /* marker differed and replace was asked */
    SN_INSTALL_KEPT = 3,      /* marker differed, replace not asked: left as it was */
    SN_INSTALL_RESTORED = 4,  /* durable: nothing was there, but the consumer had read this capture
                                 before (its trigger was dropped while it was away): created again */
    SN_INSTALL_BUSY = 5       /* a lock it needs was not had within SN_LOCK_TIMEOUT (another
                                 session's, or one the connection's own query() transaction
                                 holds: err says whose); nothing changed: try again later */
};

/* Seconds our DDL on a user's table (CREATE/DROP TRIGGER) waits for the table's lock. While
 * it waits, every writer of the table queues behind it and the loop waits too, so it is
 * short; an install that does not get the lock in time is tried again later (SN_INSTALL_BUSY). */
#define SN_LOCK_TIMEOUT 1.0

/* A value crossing the interface: query parameters and result cells. */
typedef struct sn_value {
    int type;          /* enum sn_type */
    int64_t i;         /* SN_INT, SN_BOOL (0/1) */
    double d;          /* SN_FLOAT */
    char *s;           /* SN_TEXT: NUL-terminated, len bytes (may hold NULs) */
    size_t len;
} sn_value;

/* A query result: nrows x ncols cells, row-major. Owned by whoever receives it;
 * free with sn_result_free. Built with the helpers below. */
typedef struct sn_result {
    int nrows, ncols, cap;
    char **names;      /* ncols column names */
    sn_value *cells;   /* nrows * ncols */
} sn_result;

/* One raw notification: copied by the receiver before deliver() returns. */
typedef struct sn_event {
    const char *channel;
    const char *payload;
    size_t payload_len;
    int64_t seq;       /* durable mode: the journal position; 0 in live mode */
    double written;    /* durable mode: when the journal row was written, by the database's clock
                          (seconds since the epoch: its created_at); 0 when not known */
} sn_event;

/* Where a connection sends what it receives. Set at open, valid until close. */
typedef struct sn_sink {
    void *ud;
    /* A batch of events in commit order. The one path every mode of a driver feeds.
     * The receiver may call back into the driver from inside it (query, notify, listen,
     * unlisten, stop, even close): drivers must allow that. */
    void (*deliver)(void *ud, const sn_event *events, size_t n);
    /* A log line (no trailing newline, no "sqlnotify:" prefix, never a password). */
    void (*log)(void *ud, int level, const char *msg);
    /* The listener is back after an outage of `outage` seconds and listens on every
     * channel again; may_have_missed is 1 when events committed meanwhile may be lost
     * (live mode). NULL: not wanted. */
    void (*reconnected)(void *ud, double outage, int may_have_missed);
    /* Durable mode: a trigger the reader reads is gone from a table that is there (dropped and
     * made again, or a copy renamed into its place, where the database has no DDL hook to keep
     * it: MySQL). The runtime runs its trigger check now rather than at its next turn: it makes
     * the trigger again and says what was not captured. Called once each time one is seen gone,
     * from the loop, outside deliver. NULL: not wanted. */
    void (*triggers_gone)(void *ud);
} sn_sink;

/* What one watch asks for. All names are literal catalog names; the driver quotes. A watch
 * may name columns its table no longer has (renamed or dropped since it was declared): the
 * trigger that install makes leaves those extra and old columns out, a trigger column gone
 * counts as unchanged, a key column gone sends {"t": true}. */
/* (A driver that keeps a copy of a watch past the call copies every string field: see
 * postgresql/reader.c pg_jr_keep.) */
typedef struct sn_watch {
    const char *schema;          /* resolved schema ("main" on SQLite) */
    const char *table;
    int op;                      /* enum sn_op */
    const char *label;           /* channel_label, or NULL */
    const char *channel;         /* at most 63 bytes, computed by the runtime */
    const char *const *pk;       /* primary key columns, in key order */
    int npk;
    const char *const *extra;    /* extra columns */
    int nextra;
    int extra_all;               /* extra_columns = "*": every column but the key ones, as the table
                                    has them when the row changes (extra is then empty); a name
                                    made from the watch counts it as "*", not as those columns */
    const char *const *trigger_cols; /* UPDATE only: fire only when one really changed */
    int ntrigger;
    const char *const *old_cols; /* UPDATE only: columns whose OLD values go in "o" */
    int nold;
    int overflow;                /* payloads over max_payload go through the overflow table */
    const char *marker;          /* hash of the watch and the table's columns (hex) */
    /* The capture this watch rides: "live" for a live watch (one per table, operation and
     * label), or for a durable one a hex hash of its shape (key, extra, trigger and old
     * columns, overflow), so that consumers asking for other columns never share, replace or
     * narrow one another's trigger (SPEC §8.5). It is in the trigger's name; channel is the
     * capture's own (the runtime tags it: see init.lua's wire channel). */
    const char *capture;
    const char *plain_channel;   /* the channel without the capture's tag: the previous
                                    releases' channel, which their trigger names hashed */
} sn_watch;

/* Per-connection options from the notifier. */
typedef struct sn_options {
    double retention;            /* seconds: overflow rows / change-log rows older than this are
                                    pruned by a timer the driver runs (default 3600) */
    const char *application;     /* a name for the database's view of the session ("sqlnotify") */
    const char *overflow_schema; /* PostgreSQL: schema of the overflow table; NULL: the driver's default */
    /* Durable mode (SPEC §3): a consumer name makes every watch of this connection durable:
     * triggers append to the journal, the reader delivers from the consumer's cursor (kept in
     * the database) and events carry seq. NULL: live mode (start at the end, no cursor). */
    const char *consumer;
    int start_at_beginning;      /* a consumer seen for the first time starts at the journal's
                                    beginning (1) or its end (0, the default) */
    double consumer_retention;   /* seconds a consumer that stopped coming holds journal rows
                                    back (default 7 days) */
    /* Groups (PostgreSQL): processes with one consumer name share its work. */
    int shares;                  /* shares a new consumer is split into (0: 16); an existing
                                    consumer refuses another number */
    double lease;                /* seconds a member holds its shares without renewing (0: 10) */
} sn_options;

typedef struct sn_conn sn_conn;  /* defined by each driver */

/* What a dialect can do, for the shared Lua to ask instead of testing the dialect's name. */
enum sn_cap {
    SN_CAP_GROUPS = 1 << 0,      /* processes with one consumer name share its work: shares, lease */
    SN_CAP_SEARCH_PATH = 1 << 1, /* an unqualified table is looked up along a search path */
    SN_CAP_PLAIN_LIVE = 1 << 2   /* a live watch's channel is the database's own, as declared, so
                                    that others may LISTEN on it (else it carries "#live") */
};

struct sn_sbuf; /* below: a growing string */

typedef struct sn_dialect {
    const char *name;              /* "postgresql", "sqlite" */
    const char *const *schemes;    /* URL schemes, NULL-terminated: {"postgresql", "postgres", NULL} */
    size_t max_payload;            /* largest notification payload in bytes; 0: no limit */
    unsigned caps;                 /* enum sn_cap, or-ed */
    char quote;                    /* what quotes an identifier: '"' or '`' */
    /* The text of the driver's statements.sql (compiled in by tools/embed.sh): the statements
     * the shared Lua runs by name (catalog.lua, dead_letters.lua; lua/sqlnotify/statements.lua
     * reads the format). */
    const char *statements;

    /* Connect (blocking). url has any "+driver" suffix already removed from its scheme.
     * The sink receives events and logs until close. NULL and err on failure; err names
     * the database and host, never the password. */
    sn_conn *(*open)(const char *url, struct ev_loop *loop, const sn_sink *sink,
                     const sn_options *opt, char *err, size_t errlen);
    /* Stop every watcher, close every connection, free. Safe with NULL. */
    void (*close)(sn_conn *c);
    /* "database \"test\" on 127.0.0.1:5432" — for messages; no password. */
    const char *(*target)(sn_conn *c);

    /* Catalog. schema may be NULL (PostgreSQL: search_path; SQLite: main).
     * Rows of 5 text columns (kind, a, b, n, class), n in decimal text:
     *   ("table",  schema, table, NULL, NULL)   exactly one row when the table exists, first;
     *                                           n "view" for a view, class "loose" when a column
     *                                           may hold values of any class (SQLite without STRICT)
     *   ("column", name,   type,  ordinal, class) every column, in table order (the ordinal may
     *                                           have gaps where columns were dropped); class is
     *                                           sn_class_name(), "decimal(S)" for a fixed scale S
     *   ("pk",     name,   NULL,  position, NULL) primary key columns, in key order
     *   ("unique", name,   index, position, NULL) columns of each unique index/constraint
     * No rows at all: the table does not exist. -1 and err on failure. */
    int (*describe)(sn_conn *c, const char *schema, const char *table,
                    sn_result **out, char *err, size_t errlen);

    /* Triggers. install returns enum sn_install. */
    int (*install)(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen);
    int (*uninstall)(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
    /* Drop every sqlnotify trigger and function (found by marker) on one table, or in the
     * whole database when table is NULL (schema NULL: search_path / main). Returns how
     * many triggers were dropped, or -1. NULL: not supported. */
    int (*drop)(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen);
    /* Every sqlnotify trigger in the database, rows of text columns
     *   (schema, table, operation, channel, trigger, function, columns, installed)
     * columns: a human-readable summary ("id | x: email, name | when: plan"), installed: the
     * install time as ISO 8601 text when known, else NULL. -1 and err on failure. NULL: not
     * supported. */
    int (*list)(sn_conn *c, sn_result **out, char *err, size_t errlen);
    /* Whether the watch's trigger (and function) is installed with this watch's marker:
     * 1 yes, 0 missing or replaced by someone else, -1 and err on failure. NULL: not supported. */
    int (*verify)(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
    /* Backfill (SPEC §8.3): SQL expressions over one row of w's table, aliased r in the
     * caller's SELECT, into payload: the payload w's INSERT trigger would send for it (w's key
     * and its extra columns as listed: the caller lists the columns the table has); into
     * hash: the row's share hash as the journal takes it, left empty where the journal has
     * no shares. 0, or -1 and err. NULL: no backfill. */
    int (*row_sql)(sn_conn *c, const sn_watch *w, struct sn_sbuf *payload, struct sn_sbuf *hash, char *err,
                   size_t errlen);

    /* Listening. listen adds a channel; the first call brings the listener up. It returns
     * only once the channel is really being listened on, so every commit after it is seen.
     * 0, or -1 and err. */
    int (*listen)(sn_conn *c, const char *channel, char *err, size_t errlen);
    void (*unlisten)(sn_conn *c, const char *channel);
    /* Stop listening to everything and release the listener; triggers stay. */
    void (*stop)(sn_conn *c);

    /* Send a payload on a channel as the triggers would (blocking). A payload over
     * max_payload goes through the overflow table when overflow is set; else -1. */
    int (*notify)(sn_conn *c, const char *channel, const char *payload, size_t len,
                  int overflow, char *err, size_t errlen);
    /* Durable mode. The runtime calls ack after the handlers of every delivered event up to
     * and including the one with this seq returned; the driver advances the consumer's cursor
     * (without blocking the loop) and may then deliver more. Events delivered but never acked
     * (a crash, a stop mid-batch) are delivered again. NULL or never called in live mode. */
    void (*ack)(sn_conn *c, int64_t seq);
    /* Durable mode: handlers that finish after deliver returned (they wait, or are retried).
     * hold(c, 1), called from inside deliver: the driver finishes the deliver in progress (it
     * may go on handing over the rest of the page it is delivering), then delivers nothing
     * more; ack may now be called outside deliver too, and what it acks is written with the
     * lease's renewals (a group member keeps renewing its leases and shares meanwhile).
     * hold(c, 0), called outside deliver: the driver reads on from the last ack, so events
     * delivered and not acked (the handlers of a state closed by a reload) are delivered
     * again. hold never delivers from inside itself (a zero timer does), and stop while held
     * writes the last ack as it always does. Returns 1, or 0 when the connection has no
     * durable reader (live mode: nothing to hold, the runtime keeps what is in flight). */
    int (*hold)(sn_conn *c, int on);
    /* Durable groups: keep(c, 1) keeps every share this member holds through the balancing
     * (no other member takes one) until keep(c, 0): what it delivers outside the journal (a
     * backfill's chunk read into memory) must not meet a change of the same key delivered by
     * another member meanwhile. A lease that lapses loses them all the same. Returns 1, or 0
     * (NULL: no groups). */
    int (*keep)(sn_conn *c, int on);
    /* Every consumer of the database's journal: rows of
     *   (name, lag_events, lag_seconds, members, last_seen)   (numbers as decimal text,
     *   last_seen ISO 8601). -1 and err on failure. NULL: no durable mode. */
    int (*consumers)(sn_conn *c, sn_result **out, char *err, size_t errlen);
    /* Forget a consumer and release the journal rows only it held. 1 dropped, 0 no such
     * consumer, -1 and err. */
    int (*drop_consumer)(sn_conn *c, const char *name, char *err, size_t errlen);

    /* One statement with parameters ($1.. or ?), on the query connection (blocking). */
    int (*query)(sn_conn *c, const char *sql, int nparams, const sn_value *params,
                  sn_result **out, char *err, size_t errlen);
    /* The same without blocking the loop (NULL: the dialect has only the blocking one). It
     * starts the statement on the query connection and returns 0, or -1 and err; done(ud, r,
     * in_tx, err) follows from the loop, never from inside query_start: r (the caller's to
     * free) or NULL and err, and in_tx when a transaction is open on the connection after it.
     * One at a time: query_start and query refuse while one is in flight. */
    int (*query_start)(sn_conn *c, const char *sql, int nparams, const sn_value *params,
                       void (*done)(void *ud, sn_result *r, int in_tx, const char *err), void *ud,
                       char *err, size_t errlen);
    /* Forget the statement in flight (its done never comes; the connection is closed and
     * opened again when next used). Returns its ud, or NULL when none was. */
    void *(*query_cancel)(sn_conn *c);
    /* For /ready and the metrics: *down the seconds since the listener (live) or journal
     * reader (durable) was lost, 0 while it receives (or does not listen); *shares the
     * shares this process holds of its consumer (PostgreSQL groups), else -1. NULL: never
     * lost, no shares. */
    void (*status)(sn_conn *c, double *down, int *shares);
} sn_dialect;

/* ===== helpers shared by drivers and the runtime ===== */

/* The one reconnect policy (database readers and listeners, the Redis and MQTT clients):
 * capped exponential backoff with jitter. The n-th wait after a loss is drawn from [d/2, d],
 * d = first * 2^n up to cap (50-100 ms, 100-200 ms, ... 5-10 s), so that processes that lost
 * one server together do not all come back in the same millisecond. Zeroed, it takes the
 * defaults below; sn_backoff_reset once connected again. */
#define SN_BACKOFF_FIRST 0.1
#define SN_BACKOFF_CAP 10.0
typedef struct sn_backoff {
    double first, cap; /* seconds; 0: SN_BACKOFF_FIRST, SN_BACKOFF_CAP */
    int attempt;
    uint64_t rng;      /* xorshift64 state, seeded at the first draw */
} sn_backoff;

static inline double sn_backoff_next(sn_backoff *b)
{
    double cap = b->cap > 0 ? b->cap : SN_BACKOFF_CAP;
    double d = b->first > 0 ? b->first : SN_BACKOFF_FIRST;
    for (int i = 0; i < b->attempt && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    if (d < cap)
        b->attempt++; /* stops growing at the cap */
    if (b->rng == 0)
        b->rng = ((uint64_t)(ev_time() * 1e6) ^ (uint64_t)(uintptr_t)b) | 1;
    uint64_t x = b->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b->rng = x;
    return d / 2 + (double)(x >> 11) / 9007199254740992.0 * d / 2;
}

static inline void sn_backoff_reset(sn_backoff *b)
{
    b->attempt = 0;
}

/* FNV-1a, 64 bit: stable names and markers across runs and machines. */
static inline uint64_t sn_hash64(const void *data, size_t len, uint64_t h)
{
    const unsigned char *p = data;
    if (h == 0)
        h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* 16 lower-case hex digits and a NUL into out[17]. */
static inline void sn_hash_hex(const void *data, size_t len, char out[17])
{
    snprintf(out, 17, "%016llx", (unsigned long long)sn_hash64(data, len, 0));
}

/* The name of a watch's trigger (and PostgreSQL function), the same on every dialect:
 * sqlnotify_<table prefix>_<op>_<12 hex>, at most 63 bytes. The hash covers (schema, table,
 * op, label, capture) as a tuple, each field with its length and whether it is there, so no
 * two watches share a name by joining differently, and a live watch and durable consumers of
 * other shapes each have their own trigger. legacy = 1: the name of the previous release,
 * without the capture (one trigger per table, operation and label, which any watcher
 * replaced): found and dropped by the install that takes its place. The prefix keeps the
 * table's letters, digits, '_' and non-ASCII bytes (others become '_'), cut on a UTF-8
 * character boundary. */
static inline void sn_trigger_name_of(const sn_watch *w, int legacy, char name[64])
{
    static const char *const ops[] = {"insert", "update", "delete"};
    const char *parts[5] = {w->schema, w->table, ops[w->op], w->label, w->capture};
    uint64_t h = 0;
    for (int i = 0; i < (legacy ? 4 : 5); i++) {
        char head[32];
        size_t n = parts[i] ? strlen(parts[i]) : 0;
        int k = snprintf(head, sizeof head, "%c%zu:", parts[i] ? '+' : '-', n);
        h = sn_hash64(head, (size_t)k, h);
        h = sn_hash64(parts[i] ? parts[i] : "", n, h);
    }
    char prefix[34];
    size_t k = 0, max = 63 - strlen("sqlnotify_") - 1 - strlen(ops[w->op]) - 1 - 12;
    for (const unsigned char *p = (const unsigned char *)w->table; *p && k < max; p++) {
        unsigned char ch = *p;
        int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                   ch == '_' || ch >= 0x80;
        prefix[k++] = keep ? (char)ch : '_';
    }
    while (k > 0 && ((unsigned char)w->table[k] & 0xC0) == 0x80)
        k--; /* never end inside a UTF-8 sequence */
    prefix[k] = '\0';
    snprintf(name, 64, "sqlnotify_%s_%s_%012llx", prefix, ops[w->op], (unsigned long long)(h >> 16));
}

static inline void sn_trigger_name(const sn_watch *w, char name[64])
{
    sn_trigger_name_of(w, 0, name);
}

/* The length of a wire channel without its capture's tag ("#live" or "#<12 hex>"), for what
 * people read: messages and lists name the channel a watch was declared with. */
static inline int sn_plain_len(const char *wire)
{
    const char *tag = strrchr(wire, '#');
    size_t n = tag ? strlen(tag + 1) : 0;
    int hex = n == 12;
    for (size_t i = 0; hex && i < n; i++)
        hex = (tag[1 + i] >= '0' && tag[1 + i] <= '9') || (tag[1 + i] >= 'a' && tag[1 + i] <= 'f');
    return tag && (hex || strcmp(tag + 1, "live") == 0) ? (int)(tag - wire) : (int)strlen(wire);
}

/* Whether a watch is durable (its capture is a shape hash, not "live"). */
static inline int sn_watch_durable(const sn_watch *w)
{
    return w->capture != NULL && strcmp(w->capture, "live") != 0;
}

/* ===== the driver kit: what every driver uses, written once ===== */

/* A growing string for generated SQL and messages (src/sbuf.c). {0} is empty; p is NUL
 * terminated once anything was added. The first failure sticks in fail (out of memory, or
 * what sn_sb_fail was told) and makes every later call a no-op: check it once, at the end.
 * No length is capped. sn_sb_free releases p and empties it. */
typedef struct sn_sbuf {
    char *p;
    size_t len, cap;
    const char *fail;
} sn_sbuf;

void sn_sb_addn(sn_sbuf *b, const char *s, size_t n);
void sn_sb_add(sn_sbuf *b, const char *s); /* s NULL: nothing (a part that failed says so itself) */
void sn_sb_addf(sn_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sn_sb_fail(sn_sbuf *b, const char *why); /* a static reason, kept when it is the first; NULL: none */
/* Room for more bytes and a NUL after len, for a writer that fills p itself (then moves len
 * and writes the NUL): 0, or -1 when the string has failed. */
int sn_sb_reserve(sn_sbuf *b, size_t more);
void sn_sb_free(sn_sbuf *b);

/* ===== a durable consumer's members (SQLite, MySQL: src/members.c) =====
 *
 * One process at a time reads a consumer there, and the journal holds every capture's rows:
 * the reader delivers its own tables' and its cursor passes the rest. So a process reads its
 * consumer only while its tables include every other live member's; each keeps its tables
 * (plain channels, sn_tables_text) beside a heartbeat where the others see them. */

/* The tables a process reads: plain channel names, sorted, each once. {0} is empty. */
typedef struct sn_tables {
    char **v;
    int n;
} sn_tables;

/* channel's plain name among them: 1 added, 0 there already, -1 out of memory. */
int sn_tables_add(sn_tables *t, const char *channel);
/* The plain name of channel out of them. */
void sn_tables_remove(sn_tables *t, const char *channel);
/* One a line, in order ("" for none). */
void sn_tables_text(const sn_tables *t, sn_sbuf *b);
void sn_tables_free(sn_tables *t);
/* What a live member (pid on host) reads, text as sn_tables_text made it, and t does not:
 * appended to b as "pid 12 on host: a, b" ("; " before when b has one). 1 when any. */
int sn_tables_lacking(const sn_tables *t, long long pid, const char *host, const char *text, sn_sbuf *b);
/* Say it once per change: lacking (what sn_tables_lacking appended for `members` members;
 * NULL: nothing, the consumer may be read) against *said, the last said (freed, replaced). */
void sn_members_say(const sn_sink *sink, const char *consumer, char **said, const char *lacking, int members);

static inline void sn_logf(const sn_sink *sink, int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sink->log(sink->ud, level, buf);
}

/* Consumers that stopped coming (not seen for SN_ABSENT_AFTER s, or longer for a long
 * lease) keep every row written since until their retention runs out. A durable reader asks
 * which every SN_ABSENT_EVERY s and names them (`names`, NULL: none now) at warning level, at
 * most once per SN_SAY_AGAIN s while it lasts (*said: when it last did, 0: not now), so that
 * one left behind by a trial run is found before the disk fills. rows: "the journal's rows
 * on", "the change log's rows in". */
#define SN_ABSENT_AFTER 600.0
#define SN_ABSENT_EVERY 60.0
#define SN_SAY_AGAIN 3600.0

/* A condition is said when it starts and then once per SN_SAY_AGAIN s while it lasts: whether
 * to say it now (*said: when it last was, 0: not since it last ended; set when due). */
static inline int sn_say_due(double *said, double now)
{
    if (*said > 0 && now - *said < SN_SAY_AGAIN)
        return 0;
    *said = now;
    return 1;
}

static inline void sn_say_absent(const sn_sink *sink, double *said, double now, const char *names, const char *rows,
                                 const char *target, double after, double retention)
{
    if (names == NULL) {
        *said = 0;
        return;
    }
    if (!sn_say_due(said, now))
        return;
    sn_logf(sink, SN_LOG_WARN,
            "consumers not seen for over %.0f minutes still hold %s %s: %s; they keep every row written since until "
            "they return or consumer_retention (%.0f s) runs out: n:drop_consumer(name) releases one that is gone "
            "for good",
            after / 60, rows, target, names, retention);
}

static inline void sn_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline sn_result *sn_result_new(int ncols)
{
    sn_result *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ncols = ncols;
    r->names = calloc(ncols > 0 ? (size_t)ncols : 1, sizeof *r->names);
    if (!r->names) {
        free(r);
        return NULL;
    }
    return r;
}

/* Set a copy of a column name. 0, or -1 out of memory. */
static inline int sn_result_name(sn_result *r, int col, const char *name)
{
    free(r->names[col]);
    r->names[col] = strdup(name ? name : "");
    return r->names[col] ? 0 : -1;
}

/* Append a row of SN_NULL cells; NULL out of memory. */
static inline sn_value *sn_result_row(sn_result *r)
{
    if (r->nrows == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        size_t cells = (size_t)cap * (size_t)(r->ncols > 0 ? r->ncols : 1);
        sn_value *v = realloc(r->cells, cells * sizeof *v);
        if (!v)
            return NULL;
        r->cells = v;
        r->cap = cap;
    }
    sn_value *row = r->cells + (size_t)r->nrows * (size_t)r->ncols;
    memset(row, 0, (size_t)r->ncols * sizeof *row);
    r->nrows++;
    return row;
}

/* Make v a copy of len bytes of text. 0, or -1 out of memory. */
static inline int sn_value_text(sn_value *v, const char *s, size_t len)
{
    v->s = malloc(len + 1);
    if (!v->s) {
        v->type = SN_NULL;
        return -1;
    }
    memcpy(v->s, s, len);
    v->s[len] = '\0';
    v->len = len;
    v->type = SN_TEXT;
    return 0;
}

static inline void sn_result_free(sn_result *r)
{
    if (!r)
        return;
    for (int c = 0; c < r->ncols; c++)
        free(r->names[c]);
    for (size_t i = 0; i < (size_t)r->nrows * (size_t)r->ncols; i++)
        if (r->cells[i].type == SN_TEXT)
            free(r->cells[i].s);
    free(r->names);
    free(r->cells);
    free(r);
}

#endif
