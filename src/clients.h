/*
 * clients.h — what the clients of the systems handlers feed (SPEC §8.2: http.c, redis.c,
 * nats.c, mqtt.c, kafka.c) share: a reply to the Lua side, and their openers.
 *
 * A client's call starts its request on our loop and returns at once; when the answer comes
 * (from a loop callback, never from inside the call that started it) the reply function
 * given with the call runs once, on the main thread, and is released. On the Lua side
 * delivery.await turns that into a yield of the calling handler.
 */
#ifndef SN_CLIENTS_H
#define SN_CLIENTS_H

#include <lua.h>

typedef struct sn_reply {
    lua_State *L; /* the main thread of the state the function lives in */
    int ref;      /* LUA_NOREF: none (called, dropped, or never taken) */
} sn_reply;

/* Keep the function at idx (raises when it is not one). */
void sn_reply_take(lua_State *L, int idx, sn_reply *r);
/* Push the reply function on its state's main thread and return that thread (NULL: none);
 * push the arguments, then sn_reply_call. */
lua_State *sn_reply_push(sn_reply *r);
/* Call what sn_reply_push pushed with nargs arguments (a failure is logged, naming what),
 * and release it. */
void sn_reply_call(sn_reply *r, int nargs, const char *what);
/* Release without calling (the client closed, the state is closing). */
void sn_reply_drop(sn_reply *r);

/* Each registers its functions in the core module's table (at the top of the stack). Built
 * without its library, a client's constructor raises naming the Debian package. */
void sn_http_open(lua_State *L);
void sn_redis_open(lua_State *L);
void sn_nats_open(lua_State *L);
void sn_mqtt_open(lua_State *L);
void sn_kafka_open(lua_State *L);
/* The host is leaving (every Lua state closed, the loop still there): release what a client
 * library keeps process-wide (cnats's threads). */
void sn_clients_shutdown(void);
void sn_nats_shutdown(void);

/* A client built without its library: core[name] raises "what needs lib: install package". */
void sn_client_missing(lua_State *L, const char *name, const char *what, const char *lib, const char *package);

#endif
