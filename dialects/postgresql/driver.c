/*
 * driver.c — the PostgreSQL driver's descriptor: the one symbol the rest of the program
 * sees (registered in src/core.c). What each file does is listed in pg.h.
 */
#include "pg.h"

static const char *const pg_schemes[] = {"postgresql", "postgres", NULL};

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
    .listen = pg_listen,
    .unlisten = pg_unlisten,
    .stop = pg_stop,
    .notify = pg_notify,
    .query = pg_query,
};
#pragma GCC visibility pop
