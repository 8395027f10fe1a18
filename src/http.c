/*
 * http.c — sqlnotify.http: HTTP requests through libcurl's multi interface, on our loop.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_CURL

void sn_http_open(lua_State *L)
{
    sn_client_missing(L, "http_new", "sqlnotify.http", "libcurl", "libcurl4-openssl-dev"); /* to be written */
}

#else

void sn_http_open(lua_State *L)
{
    sn_client_missing(L, "http_new", "sqlnotify.http", "libcurl", "libcurl4-openssl-dev");
}

#endif
