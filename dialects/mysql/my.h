/*
 * my.h — private to the MySQL/MariaDB driver (dialects/mysql/): the connection, the
 * journal reader's state, and how the driver's files reach each other. Nothing here is
 * seen outside this folder; the dialect interface (src/dialect.h) is the only way in.
 *
 *   connection.c  URL, connections, n:notify, n:query, the dialect descriptor
 *   sql.c         building SQL text: identifiers, literals, hex
 *   catalog.c     describe, and the journal's tables
 *   triggers.c    trigger generation, install, uninstall, drop, list, verify
 *   reader.c      the non-blocking journal reader on the libev loop (its SQL: reader.sql)
 *   consumers.c   where a reader stands: pending ids, the start position, consumers
 */
#ifndef SQLNOTIFY_MY_H
#define SQLNOTIFY_MY_H

#include <mysql.h>

#include "dialect.h"

/* Seconds our sessions wait for a metadata lock; our DDL on a user's table waits only
 * SN_LOCK_TIMEOUT (whole seconds here: the server takes no fraction). */
#define MY_LOCK_WAIT "10"
#define MY_JOURNAL "sqlnotify_journal"
#define MY_CONSUMERS "sqlnotify_consumers"
#define MY_PRUNED "sqlnotify_pruned"
#define MY_READS "sqlnotify_reads" /* the channels each consumer reads, for its lag */
#define MY_MEMBERS "sqlnotify_members" /* each process of a consumer: its tables, a heartbeat */
#define MY_MEMBERS_CHANNEL "sqlnotify:members" /* journal rows: a member's tables changed here */
#define MY_MEMBER_BEAT 1.0     /* seconds between two writes of a member row (and looks at the others) */
#define MY_MEMBER_TIMEOUT "10" /* seconds: a member row not written for this long is no live member's */

/* ===== SQL text: MySQL's quoting into the kit's string (sn_sbuf, src/dialect.h) ===== */

void my_sb_ident(sn_sbuf *b, const char *name);                     /* `name`, backticks doubled */
void my_sb_qname(sn_sbuf *b, const char *schema, const char *name); /* `schema`.`name` */
void my_sb_lit(sn_sbuf *b, const char *s, size_t n);                /* 'text', escaped */
void my_sb_hex(sn_sbuf *b, const char *s, size_t n);                /* lower-case hex digits */
/* Statement name of a .sql text kept as data (reader.sql), each ? replaced by the next of
 * lits as a literal. 0, or -1: no such statement, or lits ran out. */
int my_sb_statement(sn_sbuf *b, const char *text, const char *name, const char *const *lits, int n);
/* Hex digits back into bytes: 0, or -1 when they are not hex. */
int my_unhex(const char *hex, size_t n, sn_sbuf *out);

/* ===== the journal reader's position ===== */

/* Ids below `high` not seen yet: an AUTO_INCREMENT value is taken at insert, not at
 * commit, so a row with a lower id can become visible after one with a higher id. */
typedef struct my_range {
    int64_t lo, hi;
    double seen;   /* when the gap was first seen (monotonic seconds) */
    double probed; /* when it was last probed for a holder, 0 never */
} my_range;

typedef struct my_state {
    int64_t high;  /* every id <= high was handled, except those in r */
    my_range *r;   /* ascending, disjoint, all below high */
    int n, cap;
} my_state;

/* 0, or -1 out of memory. */
int my_state_see(my_state *s, int64_t id, double now);
void my_state_drop(my_state *s, int i);
void my_state_free(my_state *s);
/* The lowest id the state still waits for: the first pending id, else high + 1. */
int64_t my_state_low(const my_state *s);
/* "lo-hi,id,..." */
void my_state_pending_text(const my_state *s, sn_sbuf *b);
int my_state_parse_pending(my_state *s, const char *text, double now);
/* The end of the journal: the last visible id, with the gaps among the last ids as
 * pending (rows that may still commit). 0, or -1 and err. */
int my_state_at_end(sn_conn *c, my_state *s, char *err, size_t errlen);

/* ===== the reader ===== */

typedef struct my_reader {
    int on;              /* listen() was called and stop() was not */
    MYSQL *m;            /* its own connection, non-blocking */
    int call;            /* the connector call in flight (enum in reader.c) */
    int status;          /* the connector's wait status for it */
    int syncing;         /* driven by poll() at stop, not by the loop */
    int sync_ok;
    void (*done)(sn_conn *c, int ok); /* what runs when the statement finished */
    MYSQL_RES *res;      /* the result of the last statement */
    MYSQL *ret_conn;     /* result slots of the connector's calls */
    int ret_int;
    ev_io io;
    ev_timer timeout;    /* the connector's own timeouts */
    ev_timer tick;       /* the next poll, lock attempt or reconnect */
    int next;            /* which of them */
    sn_sbuf sql;         /* the statement in flight */

    my_state st;         /* where we stand (durable: also what is saved) */
    int started;         /* st holds a start position */
    char **chans;        /* channels listened on */
    int nchan;
    double interval;     /* the adaptive poll interval */
    double down_since;   /* when the connection was lost, 0 while up */
    sn_backoff backoff;  /* between reconnect attempts */
    int locked;          /* durable: this process holds the consumer's lock */
    int standby_said;
    int dirty;           /* durable: st changed since it was saved */
    int dirty_late;      /* ... and since the text of the save in flight was made */
    int held;            /* durable: hold(): read nothing more, apply acks to st as they come */
    int stop_pending;    /* stop() from inside deliver */
    double last_save;
    int64_t probe_lo;    /* the gap being probed */
    double next_prune;
    double back_checked; /* the last look for ids that went back (a truncated journal) */
    int prune_lock;      /* this session prunes for the database */
    int prune_off;       /* pruning failed for a reason that will not pass (rights) */
    int prune_rounds;
    long long prune_last, prune_cut;
    double trig_looked;  /* durable: the last look for the triggers it reads (their tables made again) */
    double trig_every;   /* seconds from one look to the next (0: TRIGGERS_EVERY) */
    int trig_said;       /* that look failed, and it was said: not again until one works */
    double err_logged;   /* rate limit of repeated statement errors */
    int err_suppressed;
    /* the batch being delivered */
    int64_t *ids;        /* every row fetched, ascending */
    sn_event *ev;        /* those on our channels */
    int *ev_row;         /* the row of each event */
    size_t nrows, nev, cap;
    long acked;          /* the last row the runtime acknowledged, -1 none */
    size_t applied;      /* rows of the batch st has seen (the held batch: up to the last ack) */
    /* durable: the other members (consumers.c) */
    int blocked;         /* a live member watches a table we do not: read nothing */
    char *blocked_said;  /* what it watches that we do not, as last logged */
    double members_looked;
    int64_t fence;       /* a member row of ours met in the journal: the round looks at the members */
    int64_t fence_ok;    /* the last one looked at and not blocking: read past it */
    void (*members_next)(sn_conn *c); /* what follows a look at the members */
    char lockname[65];
} my_reader;

/* A durable trigger this connection installed, which the reader looks for on its table. */
typedef struct my_kept {
    char *schema, *table, *channel;
    char name[64];
    int gone; /* seen gone, its table there, and the runtime told: not again until seen or installed */
} my_kept;

/* ===== connections ===== */

typedef struct my_params {
    char *host, *user, *pass, *db, *socket, *ssl_ca, *ssl_cert, *ssl_key;
    unsigned port, connect_timeout, read_timeout;
    int ssl, ssl_verify;
} my_params;

struct sn_conn {
    struct ev_loop *loop;
    sn_sink sink;
    my_params p;
    char target[320];
    char *consumer;          /* durable mode, or NULL */
    int start_beginning;
    double retention, consumer_retention;
    MYSQL *q;                /* our own statements (blocking, with deadlines) */
    MYSQL *uq;               /* n:query: a session of the user's own, opened on first use */
    int mariadb;             /* the server is MariaDB (else MySQL) */
    int journal_ok;          /* the journal's tables exist */
    char *journal, *consumers, *pruned; /* quoted `db`.`table` names */
    int in_deliver, closing; /* close() from inside deliver waits for it to return */
    my_kept *kept;           /* durable: the triggers installed (reader.c looks for them) */
    int nkept;
    sn_tables tables;        /* durable: what this process reads (installed, listened to) */
    char *tables_said;       /* the tables as last recorded with a journal row, one a line */
    int64_t member;          /* durable: this process's id among the consumer's members */
    char host[256];          /* gethostname(): a member's pid is only checked on its host */
    my_reader r;
};

/* connection.c */
/* A connection: ours (our session settings; nonblocking: configured, not yet connected, for the
 * reader) or, with user set, a plain session for n:query. */
MYSQL *my_connect(sn_conn *c, int nonblocking, char *err, size_t errlen);
MYSQL *my_connect_user(sn_conn *c, char *err, size_t errlen);
int my_exec(sn_conn *c, MYSQL *m, const char *sql, size_t len, MYSQL_RES **res, char *err, size_t errlen);
int my_query(sn_conn *c, const char *sql, int n, const char *const *texts, sn_result **out, char *err, size_t errlen);
double my_now(void); /* monotonic seconds */
int my_conn_lost(unsigned err); /* the error means the connection is gone */
void my_conn_free(sn_conn *c);  /* finish a close asked for from inside deliver */

/* catalog.c */
int my_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err, size_t errlen);
int my_journal_ensure(sn_conn *c, char *err, size_t errlen);
/* The same; a journal made anew starts its ids at first_id (when above 1). */
int my_journal_make(sn_conn *c, int64_t first_id, char *err, size_t errlen);
const char *my_schema(sn_conn *c, const char *schema); /* NULL: the URL's database */

/* triggers.c */
int my_install(sn_conn *c, const sn_watch *w, int replace, char *err, size_t errlen);
int my_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
int my_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen);
int my_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen);
void my_capture_unused(sn_conn *c, const char *channel, const char *forget_for);
int my_read_before(sn_conn *c, const char *channel);
int my_list(sn_conn *c, sn_result **out, char *err, size_t errlen);
int my_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen);
int my_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen);

/* reader.c */
int my_listen(sn_conn *c, const char *channel, char *err, size_t errlen);
void my_unlisten(sn_conn *c, const char *channel);
void my_stop(sn_conn *c);
void my_ack(sn_conn *c, int64_t seq);
int my_hold(sn_conn *c, int on);
void my_reader_close(sn_conn *c);
/* Durable: w's trigger is in (installed or found there): the reader looks for it. 0, or -1 out of memory. */
int my_keep(sn_conn *c, const sn_watch *w);
/* The trigger schema.name was dropped by us: the reader no longer looks for it. */
void my_forget(sn_conn *c, const char *schema, const char *name);
void my_forget_all(sn_conn *c);

/* consumers.c */
int my_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen);
int my_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen);
/* Durable: make the consumer's row if it has none (start_at), on the blocking connection. */
int my_consumer_register(sn_conn *c, char *err, size_t errlen);
/* The server-wide lock a consumer's reader holds: one process reads a consumer at a time. */
void my_lock_name(sn_conn *c, const char *consumer, char out[65]);
/* Members (a process reads its consumer only while its tables include every other live
 * member's, src/dialect.h): channel's table joins ours, recorded at once (a blocking call:
 * install, listen) with a journal row after when they changed. 0, or -1 and err. */
int my_members_add(sn_conn *c, const char *channel, char *err, size_t errlen);
/* Channel no longer listened to: its table leaves ours (recorded at the next beat). */
void my_members_remove(sn_conn *c, const char *channel);
/* Statement name of reader.sql's members for this process (tables: for member_write). */
void my_member_sql(sn_conn *c, sn_sbuf *b, const char *name, const char *tables);
/* Our member row goes (a clean stop) and what we kept about members. */
void my_members_leave(sn_conn *c);
/* 1 when pid on host is a process of this host that is gone. */
int my_pid_gone(const sn_conn *c, long long pid, const char *host);

/* statements.sql and reader.sql, compiled in by tools/embed.sh. */
extern const char mysql_statements_sql[];
extern const char mysql_reader_sql[];

#endif
