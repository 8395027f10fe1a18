/*
 * nats.c — sqlnotify.nats: NATS and JetStream publishing: the NATS C client, on our loop.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_NATS

void sn_nats_open(lua_State *L)
{
    sn_client_missing(L, "nats_new", "sqlnotify.nats", "the NATS C client", "libnats-dev"); /* to be written */
}

#else

void sn_nats_open(lua_State *L)
{
    sn_client_missing(L, "nats_new", "sqlnotify.nats", "the NATS C client", "libnats-dev");
}

#endif
