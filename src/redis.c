/*
 * redis.c — sqlnotify.redis: a Redis client: hiredis's asynchronous context, on our loop.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_HIREDIS

void sn_redis_open(lua_State *L)
{
    sn_client_missing(L, "redis_new", "sqlnotify.redis", "hiredis", "libhiredis-dev"); /* to be written */
}

#else

void sn_redis_open(lua_State *L)
{
    sn_client_missing(L, "redis_new", "sqlnotify.redis", "hiredis", "libhiredis-dev");
}

#endif
