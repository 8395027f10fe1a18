/*
 * pg.h — private to the PostgreSQL driver (dialects/postgresql/): the connection
 * struct and what the driver's files share. Nothing here is seen outside the folder;
 * the rest of the program knows only `sn_postgresql_dialect` (driver.c).
 *
 * Files, one concern each:
 *   connection.c  URL handling and password scrubbing, connecting, open/close/target,
 *                 statements with deadlines on the blocking connections
 *   sql.c         growing SQL text and quoting
 *   catalog.c     describe()
 *   triggers.c    install/uninstall/drop/list/verify (triggers.h: what the three share)
 *   generator.c   the plpgsql trigger function's text
 *   extension.c   the C triggers of sqlnotify_capture: probed, chosen, their arguments
 *   listener.c    the non-blocking listener: state machine, queue, delivery
 *   overflow.c    the overflow tables: creating, fetching by id and channel, pruning
 *   query.c       notify() and query(), results
 *   journal.c     durable mode: the journal schema, consumers(), drop_consumer()
 *   reader.c      durable mode: the non-blocking journal reader and its cursor
 *   driver.c      the descriptor
 */
#ifndef SQLNOTIFY_PG_H
#define SQLNOTIFY_PG_H

#include "dialect.h"
#include "capture.h"

#include <libpq-fe.h>

/* Shared between the driver's files only: keep these out of core.so's symbol table. */
#pragma GCC visibility push(hidden)

#define PG_OVERFLOW_REF "sqlnotify:overflow:"
#define PG_OVERFLOW_TABLE "sqlnotify_overflow"

/* Our URL parameter (removed before libpq sees the URL, which refuses unknown ones). */
#define PG_URL_STATEMENT_TIMEOUT "sqlnotify_statement_timeout"
#define PG_DEFAULT_CONNECT_TIMEOUT 10.0   /* seconds; the URL's connect_timeout wins */
#define PG_LEAVE_TIMEOUT 5.0              /* seconds at most for a durable consumer's leave at stop */
#define PG_DEFAULT_STATEMENT_TIMEOUT 30.0 /* seconds; sqlnotify_statement_timeout wins */

enum pg_ln_state {
    LN_OFF,        /* no listener wanted */
    LN_WAITING,    /* lost; the retry timer starts the next attempt */
    LN_CONNECTING, /* PQconnectPoll in progress */
    LN_BUSY,       /* connected, the re-LISTEN of every channel in flight */
    LN_READY       /* connected and listening on every channel */
};

/* A blocking connection used with deadlines: the runtime's own ("control") or the
 * user's n:query one. Opened on first use, re-opened after it was lost. */
typedef struct pg_db {
    PGconn *conn;
    const char *what; /* for messages: "control connection", "query connection" */
    int up_before;    /* it was up once: say so when it comes back */
} pg_db;

/* query_start's statement in flight on the query connection (query.c). */
typedef struct pg_aq {
    ev_io io;
    ev_timer timer;
    void (*done)(void *ud, sn_result *r, int in_tx, const char *err); /* NULL: none in flight */
    void *ud;
    PGresult *keep;  /* the last result so far */
    int failed;      /* err holds the first failure */
    int in_tx;       /* a transaction was open when it was sent */
    int connecting;  /* the query connection is being opened (PQconnectPoll); then the statement */
    char *sql;       /* while connecting: the statement and its parameters, copies */
    char **vals;
    int nparams;
    char err[600];
} pg_aq;

/* One queued notification, or (nt == NULL) the notice that the listener is back. */
typedef struct pg_item {
    PGnotify *nt;
    double outage;
} pg_item;

/* channel -> schema of the overflow table its trigger writes to */
typedef struct pg_route {
    char *channel, *schema;
} pg_route;

/* An overflow table the runtime knows of (created, written, read or pruned by it). */
typedef struct pg_ovf {
    char *schema;
    int ready; /* known to exist */
} pg_ovf;

struct sn_conn {
    struct ev_loop *loop;
    sn_sink sink;
    char *url;               /* without our own parameters: what libpq gets */
    char *app;
    char *secrets[4];        /* password texts (raw and decoded) scrubbed from messages */
    char target[512];
    double connect_timeout;  /* seconds per connection attempt */
    double stmt_timeout;     /* seconds per statement on the blocking connections */
    char *overflow_schema;   /* sn_options.overflow_schema, or NULL */

    pg_db ctl;               /* catalog, DDL, overflow, notify(), pruning */
    pg_db user;              /* query(): the user's statements and transactions */
    pg_aq aq;                /* query_start(): the statement in flight on user */

    ev_timer prune;
    double retention;
    pg_route *routes;
    size_t nroutes, caproutes;
    pg_ovf *ovfs;
    size_t novfs, capovfs;

    PGconn *ln;              /* listener connection */
    int state;               /* enum pg_ln_state */
    ev_io io;
    ev_timer retry;          /* backoff delay, then the attempt's timeout */
    ev_timer kick;           /* delivers the queue from the loop, not from inside a call */
    unsigned gen;            /* bumped whenever ln is closed */
    sn_backoff backoff;      /* between reconnect attempts */
    double lost_at;          /* when the current outage began; 0: none */
    char fatal[256];         /* the server's last FATAL on the listener: why it went */

    char **chans;            /* channels listened to */
    size_t nchans, capchans;

    pg_item *q;              /* notifications taken from libpq, not yet delivered */
    size_t nq, capq;

    /* durable mode (journal.c, reader.c): NULL consumer is live mode */
    char *consumer;
    int start_beginning;
    double consumer_retention;
    int shares;              /* asked for (0: the consumer's own, 16 for a new one) */
    int nshares;             /* the consumer's, once registered */
    double lease;            /* seconds a member's shares stay its own without a renewal */
    int journal_ready;
    int capture;             /* the C triggers usable here (triggers.c: CAP_*), 0 unknown, -1 none */
    int capture_broken;      /* the C triggers that cannot run on this server (CAP_*): never kept */
    struct pg_jr *jr;        /* the journal reader, once listening */
    sn_watch *kept;          /* the durable watches installed (pg_jr_keep), copies */
    size_t nkept;

    int depth;               /* > 0 while inside a callback that may deliver */
    int dead;                /* closed from within a callback: freed when it unwinds */
};

/* ===== sql.c: libpq's quoting into the kit's string (sn_sbuf, src/dialect.h) ===== */

/* s quoted by libpq's rules for db: an identifier (ident) or a string literal */
void pg_sb_quote(sn_sbuf *b, PGconn *db, const char *s, int ident);
/* "schema"."name" */
void pg_sb_qname(sn_sbuf *b, PGconn *db, const char *schema, const char *name);
/* A name as Lua's %q writes it, for messages that must match the Lua side's */
void pg_sb_luaq(sn_sbuf *b, const char *s);

/* ===== connection.c ===== */

double pg_clock(void);
void pg_one_line(char *dst, size_t n, const char *src);
void pg_scrub(const sn_conn *c, char *msg, size_t n);
void pg_result_err(const sn_conn *c, PGconn *conn, const PGresult *res, char state[6], char *err,
                   size_t errlen);
/* Wait for fd (POLLIN, POLLOUT): the revents, 0 when the deadline passed, -1 when poll
 * failed (errno). */
int pg_wait(int fd, short events, double deadline);
/* Start a connection attempt with our defaults and the URL's parameters (never blocks
 * on the server; may resolve a host name). */
PGconn *pg_connect_start(const sn_conn *c);
/* Drive an attempt to the end within the connect deadline. 0, or -1 with err (and the
 * attempt finished and freed). */
int pg_connect_finish(sn_conn *c, PGconn **conn, char *err, size_t errlen);
/* "cannot connect to <target>: <why, or libpq's message>", scrubbed. */
void pg_connect_err(const sn_conn *c, PGconn *conn, const char *why, char *err, size_t errlen);
void pg_on_notice(void *arg, const PGresult *res);

enum { PG_RETRY = 1, PG_SCRIPT = 2 };
/* One statement (or with PG_SCRIPT several, without parameters) on d, within the
 * statement deadline. The last result when it succeeded; else NULL with err and the
 * SQLSTATE. PG_RETRY: run it again once on a fresh connection when the old one turned
 * out to be lost (only for statements that are safe to repeat). */
PGresult *pg_exec(sn_conn *c, pg_db *d, const char *sql, int n, const char *const *vals, int flags,
                  char state[6], char *err, size_t errlen);
/* Our own transaction script: rolled back when it fails. 0, or -1 with err. */
int pg_script(sn_conn *c, const char *sql, char state[6], char *err, size_t errlen);

sn_conn *pg_open(const char *url, struct ev_loop *loop, const sn_sink *sink, const sn_options *opt,
                 char *err, size_t errlen);
void pg_close(sn_conn *c);
void pg_conn_free(sn_conn *c);
const char *pg_target(sn_conn *c);

/* ===== catalog.c ===== */

int pg_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err,
                size_t errlen);

/* ===== triggers.c ===== */

int pg_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen);
int pg_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
int pg_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen);
int pg_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen);
int pg_capture_unused(sn_conn *c, const char *channel);
int pg_list(sn_conn *c, sn_result **out, char *err, size_t errlen);
int pg_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
/* generator.c: sn_dialect.row_sql */
int pg_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen);

/* ===== overflow.c ===== */

/* The overflow schema for a watch on `schema`: the configured one, else the watched table's. */
const char *pg_overflow_schema_for(const sn_conn *c, const char *schema);
int pg_route_set(sn_conn *c, const char *channel, const char *schema);
const char *pg_route_get(const sn_conn *c, const char *channel);
int pg_overflow_ensure(sn_conn *c, const char *schema, char *err, size_t errlen);
void pg_overflow_forget(sn_conn *c, const char *schema);
int pg_is_overflow_ref(const char *s, size_t len);
/* The parked payload (malloc'ed), or NULL after logging why the event is skipped. */
char *pg_overflow_fetch(sn_conn *c, const char *channel, const char *id, size_t *len);
void pg_prune_cb(struct ev_loop *loop, ev_timer *w, int revents);
void pg_overflow_free(sn_conn *c);

/* ===== listener.c ===== */

void pg_ln_init(sn_conn *c);
void pg_ln_shutdown(sn_conn *c);
int pg_listen(sn_conn *c, const char *channel, char *err, size_t errlen);
void pg_unlisten(sn_conn *c, const char *channel);
void pg_stop(sn_conn *c);

/* ===== journal.c, reader.c (durable mode) ===== */

int pg_journal_ensure(sn_conn *c, char *err, size_t errlen);
/* the journal's setup run again whatever its version mark says (a part of it was dropped) */
int pg_journal_remake(sn_conn *c, char *err, size_t errlen);
/* journal.c: the plpgsql statements that append one row to the journal (see there) */
void pg_journal_append_sql(sn_sbuf *b, const char *channel, const char *payload, const char *hash);
int pg_journal_register(sn_conn *c, int beginning, char *err, size_t errlen);
int pg_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen);
int pg_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen);
int pg_journal_read_before(sn_conn *c, const char *channel);
int pg_jr_listen(sn_conn *c, const char *channel, char *err, size_t errlen);
void pg_jr_unlisten(sn_conn *c, const char *channel);
void pg_jr_stop(sn_conn *c);
void pg_jr_ack(sn_conn *c, int64_t seq);
int pg_jr_hold(sn_conn *c, int on);
int pg_jr_keep_shares(sn_conn *c, int on);
void pg_jr_status(sn_conn *c, double *down, int *shares); /* sn_dialect.status */
/* the durable watches installed, kept to install again when the journal was dropped */
int pg_jr_keep(sn_conn *c, const sn_watch *w);
void pg_jr_forget(sn_conn *c, const char *channel);
void pg_jr_forget_all(sn_conn *c);

/* ===== query.c ===== */

sn_result *pg_result_copy(const PGresult *res, int typed);
int pg_notify(sn_conn *c, const char *channel, const char *payload, size_t len, int overflow, char *err,
              size_t errlen);
int pg_query(sn_conn *c, const char *sql, int nparams, const sn_value *params, sn_result **out, char *err,
             size_t errlen);
int pg_query_start(sn_conn *c, const char *sql, int nparams, const sn_value *params,
                   void (*done)(void *ud, sn_result *r, int in_tx, const char *err), void *ud, char *err,
                   size_t errlen);
void *pg_query_cancel(sn_conn *c);
int pg_db_ensure(sn_conn *c, pg_db *d, char *err, size_t errlen);
void pg_db_opened(sn_conn *c, pg_db *d);

#pragma GCC visibility pop

/* The driver's .sql files, compiled in by tools/embed.sh. */
extern const char pg_journal_sql[];
extern const char pg_statements_sql[];

#endif
