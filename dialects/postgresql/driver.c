/*
 * driver.c — the PostgreSQL driver's descriptor: the one symbol the rest of the program
 * sees (registered in src/core.c). What each file does is listed in pg.h.
 */
#include "pg.h"

static const char *const pg_schemes[] = {"postgresql", "postgres", NULL};

/* A notifier with a consumer reads the journal (cursor.c) instead of listening live. */
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

#pragma GCC visibility push(default)
const sn_dialect sn_postgresql_dialect = {
    .name = "postgresql",
    .schemes = pg_schemes,
    .max_payload = PG_MAX_PAYLOAD,
    .open = pg_open,
    .close = pg_close,
    .target = pg_target,
    .describe = pg_describe,
    .install = pg_install,
    .uninstall = pg_uninstall,
    .uninstall_all = pg_uninstall_all,
    .drop = pg_drop,
    .list = pg_list,
    .verify = pg_verify,
    .listen = dr_listen,
    .unlisten = dr_unlisten,
    .stop = dr_stop,
    .notify = pg_notify,
    .ack = pg_jr_ack,
    .consumers = pg_consumers,
    .drop_consumer = pg_drop_consumer,
    .query = pg_query,
};
#pragma GCC visibility pop
