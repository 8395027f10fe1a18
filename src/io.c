/*
 * io.c — I/O beside the handlers: `sqlnotify.io` (a libev io watcher calling Lua),
 * `sqlnotify.cqueues` (a cqueues controller driven from our loop) and
 * `sqlnotify.step` (one non-blocking turn of our loop, for a foreign main loop).
 * Callbacks enter Lua only through sn_pcall, on the main thread.
 */
#include <fcntl.h>
#include <stddef.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "dialect.h"
#include "sqlnotify.h"

#define IO_META "sqlnotify.io"
#define BRIDGE_META "sqlnotify.cqueues"

/* A controller whose step or timeout raised is retried after this long, not at once:
 * a broken controller must not spin the loop writing the same error. */
#define BRIDGE_BACKOFF 1.0

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* Pushes obj[name] when it is a function, without raising on values that cannot be indexed. */
static int get_method(lua_State *L, int idx, const char *name)
{
    int t = lua_type(L, idx);
    if (t == LUA_TUSERDATA) {
        if (luaL_getmetafield(L, idx, "__index") == LUA_TNIL)
            return 0;
        lua_pop(L, 1);
    } else if (t != LUA_TTABLE) {
        return 0;
    }
    if (lua_getfield(L, idx, name) == LUA_TFUNCTION)
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* The fd of argument idx: an integer, or what its :pollfd() returns (cqueues objects). */
static int check_fd(lua_State *L, int idx, const char *what)
{
    lua_Integer fd;
    if (lua_isinteger(L, idx)) {
        fd = lua_tointeger(L, idx);
    } else if (get_method(L, idx, "pollfd")) {
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        if (!lua_isinteger(L, -1))
            return luaL_error(L, "sqlnotify: %s: pollfd() returned %s, not a file descriptor", what,
                              luaL_typename(L, -1));
        fd = lua_tointeger(L, -1);
        lua_pop(L, 1);
    } else {
        return luaL_error(L, "sqlnotify: %s needs a file descriptor (an integer, or an object with a pollfd method), got %s",
                          what, luaL_typename(L, idx));
    }
    if (fd < 0 || fd > 0x7fffffff || fcntl((int)fd, F_GETFD) < 0)
        return luaL_error(L, "sqlnotify: %s: file descriptor %I is not open", what, fd);
    return (int)fd;
}

/* ===== io watchers ===== */

typedef struct sn_io {
    ev_io w;
    lua_State *L; /* main thread; NULL once stopped */
    int fn_ref;
    int self_ref; /* an active watcher keeps its Lua object alive */
} sn_io;

/* The one cleanup: :stop(), __gc and __close; safe to call twice. */
static void io_release(sn_io *io)
{
    if (io->L == NULL)
        return;
    ev_io_stop(sn_loop(), &io->w);
    luaL_unref(io->L, LUA_REGISTRYINDEX, io->fn_ref);
    luaL_unref(io->L, LUA_REGISTRYINDEX, io->self_ref);
    io->fn_ref = io->self_ref = LUA_NOREF;
    io->L = NULL;
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    sn_io *io = (sn_io *)w;
    lua_State *L = io->L;
    /* Hold the watcher while its callback runs: the callback may stop it. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, io->self_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, io->fn_ref);
    int r = revents & EV_READ, wr = revents & EV_WRITE;
    lua_pushstring(L, r && wr ? "rw" : r ? "r" : "w");
    if (sn_pcall(L, 1, 0) != LUA_OK) {
        sn_log(SN_LOG_ERROR, "io callback failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    /* libev stops a watcher whose fd it found closed (EV_ERROR): let go of it too. */
    if (io->L != NULL && !ev_is_active(&io->w))
        io_release(io);
    lua_pop(L, 1);
}

/* sqlnotify.io(fd, "r" | "w" | "rw", fn) -> watcher; fn(revents) with revents "r", "w" or "rw". */
static int l_io(lua_State *L)
{
    int fd = check_fd(L, 1, "io");
    const char *mode = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    int events = !mode ? 0 : strcmp(mode, "r") == 0 ? EV_READ : strcmp(mode, "w") == 0 ? EV_WRITE
               : strcmp(mode, "rw") == 0 ? EV_READ | EV_WRITE : 0;
    if (events == 0) {
        if (mode)
            luaL_error(L, "sqlnotify: io mode must be \"r\", \"w\" or \"rw\", got %s",
                       lua_pushfstring(L, "\"%s\"", mode));
        luaL_error(L, "sqlnotify: io mode must be \"r\", \"w\" or \"rw\", got %s", luaL_typename(L, 2));
    }
    if (lua_type(L, 3) != LUA_TFUNCTION)
        luaL_error(L, "sqlnotify: io needs a function, got %s", luaL_typename(L, 3));

    sn_io *io = lua_newuserdatauv(L, sizeof *io, 0);
    memset(io, 0, sizeof *io);
    io->fn_ref = io->self_ref = LUA_NOREF;
    luaL_setmetatable(L, IO_META);
    io->L = main_thread(L);
    lua_pushvalue(L, 3);
    io->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    io->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_io_init(&io->w, on_io, fd, events);
    ev_io_start(sn_loop(), &io->w);
    return 1;
}

static int io_stop(lua_State *L)
{
    io_release(luaL_checkudata(L, 1, IO_META));
    return 0;
}

static const luaL_Reg io_meth[] = {
    {"stop", io_stop},
    {NULL, NULL},
};

static const luaL_Reg io_metameth[] = {
    {"__index", NULL},
    {"__gc", io_stop},
    {"__close", io_stop},
    {NULL, NULL},
};

static void createiometa(lua_State *L)
{
    luaL_newmetatable(L, IO_META);
    luaL_setfuncs(L, io_metameth, 0);
    luaL_newlibtable(L, io_meth);
    luaL_setfuncs(L, io_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ===== cqueues controllers =====
 * cqueues gives what a foreign loop needs: a pollable fd (readable when a socket or
 * timer inside it is ready) and the time until its next deadline. A handler that
 * signals a condition or wraps a coroutine makes the controller runnable without
 * touching that fd, so a prepare watcher (run before the loop blocks) asks again. */

typedef struct sn_bridge {
    ev_io io;
    ev_timer timer;
    ev_prepare prepare;
    lua_State *L; /* main thread; NULL once stopped */
    int cq_ref;
    int self_ref;
    int backing_off; /* the controller raised: io and prepare rest until the timer */
} sn_bridge;

static void bridge_release(sn_bridge *b)
{
    if (b->L == NULL)
        return;
    struct ev_loop *loop = sn_loop();
    ev_io_stop(loop, &b->io);
    ev_timer_stop(loop, &b->timer);
    ev_prepare_stop(loop, &b->prepare);
    luaL_unref(b->L, LUA_REGISTRYINDEX, b->cq_ref);
    luaL_unref(b->L, LUA_REGISTRYINDEX, b->self_ref);
    b->cq_ref = b->self_ref = LUA_NOREF;
    b->L = NULL;
}

/* cq:timeout() on top: a number of seconds, or nil when nothing waits on time. */
static void push_timeout(lua_State *L)
{
    lua_getfield(L, 1, "timeout");
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
}

/* cq:step(0); a coroutine that failed is logged with its own traceback, like a handler. */
static void step_controller(lua_State *L)
{
    lua_getfield(L, 1, "step");
    lua_pushvalue(L, 1);
    lua_pushnumber(L, 0);
    lua_call(L, 2, 4); /* ok, message, code, thread */
    if (!lua_toboolean(L, 2)) {
        const char *msg = luaL_tolstring(L, 3, NULL);
        lua_State *co = lua_tothread(L, 5);
        if (co) {
            luaL_traceback(L, co, msg, 0);
            msg = lua_tostring(L, -1);
        }
        sn_log(SN_LOG_ERROR, "cqueues coroutine failed: %s", msg);
    }
    lua_settop(L, 1);
}

/* Runs under sn_pcall with (cq, step): steps the controller (when step is true, or
 * else only when it is runnable now) and returns the seconds until its next deadline,
 * or nil. */
static int bridge_turn(lua_State *L)
{
    int step = lua_toboolean(L, 2);
    lua_settop(L, 1);
    if (!step) {
        push_timeout(L);
        if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) > 0)
            return 1;
        lua_pop(L, 1);
    }
    step_controller(L);
    push_timeout(L);
    return 1;
}

static void bridge_run(sn_bridge *b, int step)
{
    lua_State *L = b->L;
    struct ev_loop *loop = sn_loop();
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->self_ref); /* hold: a coroutine may stop the bridge */
    lua_pushcfunction(L, bridge_turn);
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->cq_ref);
    lua_pushboolean(L, step);
    int status = sn_pcall(L, 2, 1);
    if (status != LUA_OK)
        sn_log(SN_LOG_ERROR, "cqueues controller failed: %s", lua_tostring(L, -1));
    if (b->L != NULL) {
        ev_timer_stop(loop, &b->timer);
        if (status != LUA_OK) {
            ev_io_stop(loop, &b->io);
            ev_prepare_stop(loop, &b->prepare);
            b->backing_off = 1;
            ev_timer_set(&b->timer, BRIDGE_BACKOFF, 0.);
            ev_timer_start(loop, &b->timer);
        } else {
            if (b->backing_off) {
                b->backing_off = 0;
                ev_io_start(loop, &b->io);
                ev_prepare_start(loop, &b->prepare);
            }
            if (lua_type(L, -1) == LUA_TNUMBER) {
                double after = lua_tonumber(L, -1);
                ev_timer_set(&b->timer, after > 0 ? after : 0., 0.);
                ev_timer_start(loop, &b->timer);
            }
        }
    }
    lua_pop(L, 2);
}

#define BRIDGE_OF(w, member) ((sn_bridge *)((char *)(w) - offsetof(sn_bridge, member)))

static void on_bridge_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    bridge_run(BRIDGE_OF(w, io), 1);
}

static void on_bridge_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bridge_run(BRIDGE_OF(w, timer), 1);
}

static void on_bridge_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    bridge_run(BRIDGE_OF(w, prepare), 0);
}

/* sqlnotify.cqueues(cq) -> bridge with :stop(). Any object with pollfd, timeout and
 * step methods of cqueues' meaning is accepted (an adapter for another loop works too). */
static int l_cqueues(lua_State *L)
{
    static const char *const needed[] = {"pollfd", "timeout", "step", NULL};
    int t = lua_type(L, 1);
    for (int i = 0; needed[i]; i++) {
        if (!get_method(L, 1, needed[i]))
            luaL_error(L, "sqlnotify: cqueues needs a controller (from cqueues.new()), got %s%s", luaL_typename(L, 1),
                       t == LUA_TTABLE || t == LUA_TUSERDATA ? lua_pushfstring(L, " without a %s method", needed[i]) : "");
        lua_pop(L, 1);
    }
    int fd = check_fd(L, 1, "cqueues");

    sn_bridge *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    b->cq_ref = b->self_ref = LUA_NOREF;
    luaL_setmetatable(L, BRIDGE_META);
    b->L = main_thread(L);
    lua_pushvalue(L, 1);
    b->cq_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    b->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    struct ev_loop *loop = sn_loop();
    ev_io_init(&b->io, on_bridge_io, fd, EV_READ);
    ev_io_start(loop, &b->io);
    ev_init(&b->timer, on_bridge_timer);
    ev_prepare_init(&b->prepare, on_bridge_prepare);
    ev_prepare_start(loop, &b->prepare);
    return 1;
}

static int bridge_stop(lua_State *L)
{
    bridge_release(luaL_checkudata(L, 1, BRIDGE_META));
    return 0;
}

static const luaL_Reg bridge_meth[] = {
    {"stop", bridge_stop},
    {NULL, NULL},
};

static const luaL_Reg bridge_metameth[] = {
    {"__index", NULL},
    {"__gc", bridge_stop},
    {"__close", bridge_stop},
    {NULL, NULL},
};

static void createbridgemeta(lua_State *L)
{
    luaL_newmetatable(L, BRIDGE_META);
    luaL_setfuncs(L, bridge_metameth, 0);
    luaL_newlibtable(L, bridge_meth);
    luaL_setfuncs(L, bridge_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ===== a foreign main loop =====
 * libev keeps its backend fd and its next timer's deadline to itself (ev.h has no
 * ev_backend_fd), so another loop cannot wait on ours exactly: it calls step() often,
 * or better, our loop is the main one and drives the other (cqueues above). */

/* sqlnotify.step(): run what is ready now (events, timers, io) without waiting. */
static int l_step(lua_State *L)
{
    struct ev_loop *loop = sn_loop();
    if (ev_depth(loop) > 0)
        luaL_error(L, "sqlnotify: step() cannot run inside the loop (from a handler or callback)");
    ev_run(loop, EVRUN_NOWAIT);
    return 0;
}

static const luaL_Reg iolib[] = {
    {"io", l_io},
    {"cqueues", l_cqueues},
    {"step", l_step},
    {NULL, NULL},
};

/* Called by luaopen_sqlnotify_core with the module table on top: adds io, cqueues, step. */
void sn_io_open(lua_State *L)
{
    createiometa(L);
    createbridgemeta(L);
    luaL_setfuncs(L, iolib, 0);
}
