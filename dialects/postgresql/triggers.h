/*
 * triggers.h — what the PostgreSQL trigger files share: generator.c (the plpgsql function),
 * extension.c (the C functions of sqlnotify_capture) and triggers.c (install, uninstall,
 * drop, list, verify). Private to them.
 */
#ifndef SQLNOTIFY_PG_TRIGGERS_H
#define SQLNOTIFY_PG_TRIGGERS_H

#include "pg.h"

#pragma GCC visibility push(hidden)

/* What the catalog says about the watched table. */
typedef struct tinfo {
    PGresult *res; /* rows: relid, relkind, namespace oid, column, is bytea, is float, is simple */
    const char *relid, *nspid;
    char relkind;
} tinfo;

/* ===== generator.c ===== */
int pg_table_info(sn_conn *c, const sn_watch *w, tinfo *t, char *err, size_t errlen);
int pg_is_float(const tinfo *t, const char *const *cols, int n);
int pg_is_simple(const tinfo *t, const char *const *cols, int n);
int pg_watch_now(const sn_watch *w, const tinfo *t, sn_watch *now, const char ***cols);
void pg_sb_body(sn_sbuf *b, PGconn *db, const sn_watch *w, const tinfo *t, const char *ovf_table, int durable,
                int fl);

/* ===== extension.c ===== */
#define CAPTURE_FN "sqlnotify_capture.capture" /* durable watches */
#define NOTIFY_FN "sqlnotify_capture.notify"   /* live watches, from version 2 */
#define CAPTURE_VERSION "2"
enum { CAP_CAPTURE = 1, CAP_NOTIFY = 2 };
/* p (pg_proc) is the extension's own C function, not one put in its place by hand */
#define CAPTURE_ITSELF                                                                                             \
    "(p.prolang = (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'c')"                              \
    " AND p.prosrc = CASE p.proname WHEN 'capture' THEN 'capture' ELSE 'capture_notify' END)"
void pg_capture_broken(sn_conn *c, int need, const char *why);
int pg_cap_need(const sn_conn *c);
int pg_cap_of(const char *fn);
void pg_capture_replaced(sn_conn *c, int need);
const char *pg_capture_form(sn_conn *c, const sn_watch *w, const tinfo *t);
const char *pg_capture_fits(sn_conn *c, const sn_watch *w, const tinfo *t);
void pg_capture_counts(const sn_watch *w, char out[64], int *nold, int *ntrig);
void pg_sb_capture_args(sn_sbuf *b, PGconn *db, const sn_watch *w);

#pragma GCC visibility pop

#endif
