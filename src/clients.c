/*
 * clients.c — the reply of a client's call to the Lua side (clients.h).
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

void sn_reply_take(lua_State *L, int idx, sn_reply *r)
{
    luaL_checktype(L, idx, LUA_TFUNCTION);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    r->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

lua_State *sn_reply_push(sn_reply *r)
{
    if (r->L == NULL || r->ref == LUA_NOREF || r->ref == LUA_REFNIL)
        return NULL;
    lua_rawgeti(r->L, LUA_REGISTRYINDEX, r->ref);
    return r->L;
}

void sn_reply_call(sn_reply *r, int nargs, const char *what)
{
    lua_State *L = r->L;
    int ref = r->ref;
    r->ref = LUA_NOREF; /* released before the call: the function may start another request */
    sn_callback(L, nargs, what);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

void sn_reply_drop(sn_reply *r)
{
    if (r->L != NULL && r->ref != LUA_NOREF && r->ref != LUA_REFNIL)
        luaL_unref(r->L, LUA_REGISTRYINDEX, r->ref);
    r->ref = LUA_NOREF;
}

static int missing(lua_State *L)
{
    return luaL_error(L, "sqlnotify: %s needs %s: install the Debian package %s, then rebuild (make)",
                      lua_tostring(L, lua_upvalueindex(1)), lua_tostring(L, lua_upvalueindex(2)),
                      lua_tostring(L, lua_upvalueindex(3)));
}

void sn_client_missing(lua_State *L, const char *name, const char *what, const char *lib, const char *package)
{
    lua_pushstring(L, what);
    lua_pushstring(L, lib);
    lua_pushstring(L, package);
    lua_pushcclosure(L, missing, 3);
    lua_setfield(L, -2, name);
}

void sn_clients_shutdown(void)
{
    sn_nats_shutdown();
}
