/*
 * driver.c — the PostgreSQL driver's descriptor: the one symbol the rest of the program
 * sees (registered in src/core.c). What each file does is listed in pg.h.
 */
#include "pg.h"

static const char *const pg_schemes[] = {"postgresql", "postgres", NULL};

/* A durable watch is kept, to be installed again if the journal goes (reader.c). */
static int dr_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen)
{
    int rc = pg_install(c, w, replace_changed, err, errlen);
    if (rc != SN_INSTALL_ERROR && c->consumer && pg_jr_keep(c, w) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return SN_INSTALL_ERROR;
    }
    return rc;
}

static int dr_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    int rc = pg_uninstall(c, w, err, errlen);
    if (rc == 0)
        pg_jr_forget(c, w->channel);
    return rc;
}

/* A notifier with a consumer reads the journal (reader.c) instead of listening live. */
static int dr_listen(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    return c->consumer ? pg_jr_listen(c, channel, err, errlen) : pg_listen(c, channel, err, errlen);
}

static void dr_unlisten(sn_conn *c, const char *channel)
{
    if (c->consumer)
        pg_jr_unlisten(c, channel);
    else
        pg_unlisten(c, channel);
}

static void dr_stop(sn_conn *c)
{
    if (c->consumer)
        pg_jr_stop(c);
    else
        pg_stop(c);
}

static void dr_status(sn_conn *c, double *down, int *shares)
{
    if (c->consumer) {
        pg_jr_status(c, down, shares);
        return;
    }
    *down = c->lost_at > 0 ? pg_clock() - c->lost_at : 0;
    *shares = -1;
}

#pragma GCC visibility push(default)
const sn_dialect sn_postgresql_dialect = {
    .name = "postgresql",
    .schemes = pg_schemes,
    .max_payload = PG_MAX_PAYLOAD,
    .caps = SN_CAP_GROUPS | SN_CAP_SEARCH_PATH | SN_CAP_PLAIN_LIVE,
    .quote = '"',
    .statements = pg_statements_sql,
    .open = pg_open,
    .close = pg_close,
    .target = pg_target,
    .describe = pg_describe,
    .install = dr_install,
    .uninstall = dr_uninstall,
    .drop = pg_drop,
    .list = pg_list,
    .verify = pg_verify,
    .row_sql = pg_row_sql,
    .listen = dr_listen,
    .unlisten = dr_unlisten,
    .stop = dr_stop,
    .notify = pg_notify,
    .ack = pg_jr_ack,
    .hold = pg_jr_hold,
    .keep = pg_jr_keep_shares,
    .consumers = pg_consumers,
    .drop_consumer = pg_drop_consumer,
    .query = pg_query,
    .query_start = pg_query_start,
    .query_cancel = pg_query_cancel,
    .status = dr_status,
};
#pragma GCC visibility pop
