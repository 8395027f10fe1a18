/*
 * core.c — the Lua binding `sqlnotify.core`: database handles over the dialect
 * interface, the libev loop, timers, the log, and the one way events and
 * callbacks enter Lua. The public API, validation and dispatch are in lua/sqlnotify/
 * (init.lua, notifier.lua, dispatch.lua); this file only moves data between C and Lua.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "clients.h"
#include "dialect.h"
#include "binding.h"
#include "sqlnotify.h"

/* ===== dialects: adding a database is one line here ===== */

extern const sn_dialect sn_postgresql_dialect;
extern const sn_dialect sn_sqlite_dialect;
#ifdef SN_HAVE_MYSQL
extern const sn_dialect sn_mysql_dialect;
#endif
void sn_io_open(lua_State *L); /* io.c: sqlnotify.io, sqlnotify.cqueues, sqlnotify.step */

static const sn_dialect *const dialects[] = {
    &sn_postgresql_dialect,
    &sn_sqlite_dialect,
#ifdef SN_HAVE_MYSQL
    &sn_mysql_dialect,
#endif
    NULL,
};

/* ===== log (log.c) ===== */

#define level_names sn_log_level_names

/* ===== entering Lua ===== */

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int sn_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

/* The main thread of L's state: callbacks must never run on a coroutine that may be dead. */
static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* From a libev/driver callback: call and log a failure; the loop goes on. The depth
 * tells run() it was called from inside a handler or callback. */
static int callback_depth;

static void callback(lua_State *L, int nargs, const char *what)
{
    callback_depth++;
    int status = sn_pcall(L, nargs, 0);
    callback_depth--;
    if (status != LUA_OK) {
        sn_log(SN_LOG_ERROR, "%s failed: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

void sn_callback(lua_State *L, int nargs, const char *what)
{
    callback(L, nargs, what);
}

/* ===== loop ===== */

static int host_mode, host_loading;
static int stop_requested;
static volatile sig_atomic_t stop_signal;
static struct ev_loop *loop;
static ev_async stop_async;

static void on_stop_async(struct ev_loop *l, ev_async *w, int revents);

/* A loop of our own, not libev's default one: the default loop reaps every child
 * process (io.popen():close() would fail), and ours can be embedded elsewhere. */
struct ev_loop *sn_loop(void)
{
    if (loop == NULL) {
        loop = ev_loop_new(EVFLAG_AUTO);
        if (loop == NULL) {
            sn_log(SN_LOG_ERROR, "cannot create the event loop");
            abort();
        }
        ev_async_init(&stop_async, on_stop_async);
        ev_async_start(loop, &stop_async);
        ev_unref(loop); /* it must not keep the loop alive on its own */
    }
    return loop;
}

void sn_loop_destroy(void)
{
    if (loop == NULL)
        return;
    ev_ref(loop);
    ev_async_stop(loop, &stop_async);
    ev_loop_destroy(loop);
    loop = NULL;
}

void sn_set_host_mode(int on) { host_mode = on; }
void sn_set_loading(int on) { host_loading = on; }

/* SIGINT/SIGTERM are taken by our own handler, not an ev_signal watcher: libev sees a
 * signal only between callbacks, and dispatch must stop after the handler in progress,
 * not after the rest of a batch of thousands. The flag is read by dispatch (stopping()),
 * the async watcher breaks the loop. */
static void on_signal(int sig)
{
    stop_signal = sig;
    ev_async_send(loop, &stop_async);
}

/* The host's loop ended (a stop signal, or nothing left to wait on) and it tears down to
 * exit 0. A stop signal meanwhile, such as a TERM sent as the host was already stopping on its
 * own, ends it at once with that status: the signal's default action would make it look killed
 * (143). Nothing waits in a handler by then. */
static void on_late_signal(int sig)
{
    (void)sig;
    _exit(0);
}

/* The stop hook (core.set_stop_hook) of the newest Lua state: asked, when a stop signal
 * comes, how many seconds the handlers in flight get (0: none in flight). The state clears
 * it as it closes (a sentinel's __gc). */
static lua_State *hook_L;
static int hook_ref = LUA_NOREF;
static ev_timer grace_timer;

static void on_grace(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    sn_log(SN_LOG_WARN, "the shutdown grace ran out with handlers in flight: stopping (durable events not "
                        "acked are delivered again at the next start)");
    ev_break(l, EVBREAK_ALL);
}

static double ask_grace(void)
{
    if (hook_L == NULL || hook_ref == LUA_NOREF)
        return 0;
    lua_State *L = hook_L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, hook_ref);
    callback_depth++;
    int status = sn_pcall(L, 0, 1);
    callback_depth--;
    double grace = 0;
    if (status != LUA_OK)
        sn_log(SN_LOG_ERROR, "stop hook failed: %s", lua_tostring(L, -1));
    else
        grace = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return grace;
}

static void on_stop_async(struct ev_loop *l, ev_async *w, int revents)
{
    (void)w;
    (void)revents;
    if (stop_signal == 0)
        return;
    if (ev_is_active(&grace_timer)) { /* a second signal: at once */
        ev_timer_stop(l, &grace_timer);
        sn_log(SN_LOG_INFO, "%s received again, stopping now", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
        ev_break(l, EVBREAK_ALL);
        return;
    }
    sn_sd_stopping(stop_signal == SIGINT ? "SIGINT" : "SIGTERM"); /* before the grace */
    double grace = ask_grace();
    if (grace > 0) {
        sn_log(SN_LOG_INFO, "%s received, stopping: handlers in flight get up to %g s", stop_signal == SIGINT ?
               "SIGINT" : "SIGTERM", grace);
        ev_timer_init(&grace_timer, on_grace, grace, 0.);
        ev_timer_start(l, &grace_timer);
        return;
    }
    sn_log(SN_LOG_INFO, "%s received, stopping", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    ev_break(l, EVBREAK_ALL);
}

/* core.set_stop_hook(fn): fn() -> seconds to wait for the handlers in flight, or 0. */
static int l_set_stop_hook(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *M = main_thread(L);
    if (hook_L != NULL && hook_ref != LUA_NOREF)
        luaL_unref(hook_L, LUA_REGISTRYINDEX, hook_ref);
    lua_settop(L, 1);
    hook_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    hook_L = M;
    return 0;
}

/* core.in_grace(): a stop signal came and the handlers in flight are being waited for. */
static int l_in_grace(lua_State *L)
{
    lua_pushboolean(L, ev_is_active(&grace_timer));
    return 1;
}

void sn_at_close(lua_State *L, const char *key, lua_CFunction fn)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, key) == LUA_TNIL) {
        lua_newuserdatauv(L, 0, 0);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, fn);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, key);
    }
    lua_pop(L, 1);
}

static int hook_sentinel_gc(lua_State *L)
{
    if (hook_L == main_thread(L)) {
        hook_L = NULL;
        hook_ref = LUA_NOREF;
    }
    return 0;
}

void sn_run_loop(void)
{
    struct ev_loop *l = sn_loop();
    if (stop_requested) {
        stop_requested = 0;
        return;
    }
    if (ev_depth(l) > 0) /* never nested: run() refuses before this */
        return;
    stop_signal = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    ev_run(l, 0);
    ev_timer_stop(l, &grace_timer);
    if (host_mode) { /* the host exits next: see on_late_signal */
        sa.sa_handler = on_late_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    } else {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    stop_requested = 0;
}

/* core.stopping(): a stop signal arrived; dispatch delivers nothing more. */
static int l_stopping(lua_State *L)
{
    lua_pushboolean(L, stop_signal != 0);
    return 1;
}

/* Running the loop from inside one of its callbacks would re-enter a driver's drain
 * of a batch the outer call still holds: refuse it. The host runs the loop itself, so
 * a script's run() returns at once there (also while a reload loads it, inside the loop). */
static int l_run(lua_State *L)
{
    if (callback_depth > 0 || (ev_depth(sn_loop()) > 0 && !host_loading))
        return luaL_error(L, "sqlnotify: run() called from inside a handler or callback; the loop is already running");
    if (!host_mode)
        sn_run_loop();
    return 0;
}

static int l_stop(lua_State *L)
{
    (void)L;
    struct ev_loop *l = sn_loop();
    ev_timer_stop(l, &grace_timer);
    if (ev_depth(l) > 0)
        ev_break(l, EVBREAK_ALL);
    else
        stop_requested = 1; /* stop before run: the next run returns at once */
    return 0;
}

static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* Microsecond resolution, as the API promises. */
    lua_pushnumber(L, (double)ts.tv_sec + (double)(ts.tv_nsec / 1000) / 1e6);
    return 1;
}

/* ===== timers ===== */

#define TIMER_META "sqlnotify.timer"

typedef struct sn_timer {
    ev_timer w;
    lua_State *L;
    int fn_ref;
    int self_ref; /* set while active: an active timer keeps its Lua object alive */
    int repeat;
} sn_timer;

static void timer_release(sn_timer *t)
{
    if (t->L == NULL)
        return;
    ev_timer_stop(sn_loop(), &t->w);
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->fn_ref);
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->self_ref);
    t->fn_ref = t->self_ref = LUA_NOREF;
    t->L = NULL;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_timer *t = (sn_timer *)w;
    lua_State *L = t->L;
    int self_ref = t->self_ref;
    /* Hold the timer while its callback runs: the callback may stop it. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, self_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    callback(L, 0, "timer callback");
    if (!t->repeat)
        timer_release(t);
    lua_pop(L, 1);
}

static int new_timer(lua_State *L, int repeat)
{
    double after = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_argcheck(L, after >= 0, 1, "sqlnotify: seconds must not be negative");
    if (repeat)
        luaL_argcheck(L, after > 0, 1, "sqlnotify: every() needs a period above zero");
    sn_timer *t = lua_newuserdatauv(L, sizeof *t, 0);
    memset(t, 0, sizeof *t);
    t->fn_ref = t->self_ref = LUA_NOREF;
    luaL_setmetatable(L, TIMER_META);
    t->L = main_thread(L);
    t->repeat = repeat;
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* From the real now: the loop's cached time is stale after blocking work in Lua. */
    ev_now_update(sn_loop());
    ev_timer_init(&t->w, on_timer, after, repeat ? after : 0.);
    ev_timer_start(sn_loop(), &t->w);
    return 1;
}

static int l_after(lua_State *L) { return new_timer(L, 0); }
static int l_every(lua_State *L) { return new_timer(L, 1); }

static int timer_stop(lua_State *L)
{
    timer_release(luaL_checkudata(L, 1, TIMER_META));
    return 0;
}

static const luaL_Reg timer_meth[] = {
    {"stop", timer_stop},
    {NULL, NULL},
};

static const luaL_Reg timer_metameth[] = {
    {"__index", NULL},
    {"__gc", timer_stop},
    {"__close", timer_stop},
    {NULL, NULL},
};

static void createtimermeta(lua_State *L)
{
    luaL_newmetatable(L, TIMER_META);
    luaL_setfuncs(L, timer_metameth, 0);
    luaL_newlibtable(L, timer_meth);
    luaL_setfuncs(L, timer_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ===== database handles ===== */

#define CONN_META "sqlnotify.conn"

/* The Lua functions a handle calls live in its user values, not in the registry: a
 * notifier whose dispatch function refers back to it (handle -> function -> notifier ->
 * handle) is then an ordinary cycle the collector frees. Only a listening handle is
 * anchored (self_ref), and with it what it calls. */
enum { UV_DISPATCH = 1, UV_RECONNECTED = 2, UV_BATCH = 3, UV_ERROR = 4, UV_TRIGGERS_GONE = 5, HANDLE_NUV = 5 };

typedef struct sn_handle {
    sn_link *link;     /* NULL once closed */
    lua_State *L;      /* main thread */
    int self_ref;      /* set while listening */
    int want_errors;   /* an error function is set (UV_ERROR) */
} sn_handle;

static int call_error(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_ERROR) != LUA_TFUNCTION)
        return 0;
    lua_pushvalue(L, 2);
    lua_call(L, 1, 0);
    return 0;
}

/* The zero timer: hand the queued error lines to the receiving handle's error function. */
static void on_errq(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_link *k = w->data;
    char *q[SN_ERRQ];
    int n = k->nerrq, dropped = k->errdropped;
    memcpy(q, k->errq, sizeof q);
    k->nerrq = k->errdropped = 0;
    for (int i = 0; i < n; i++) {
        sn_handle *h = k->receiver; /* looked up each time: a hook may close the notifier */
        if (h != NULL && h->self_ref != LUA_NOREF && h->link == k) {
            lua_State *L = h->L;
            lua_pushcfunction(L, call_error);
            lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
            if (i == n - 1 && dropped > 0)
                lua_pushfstring(L, "%s (and %d more error(s) before it)", q[i], dropped);
            else
                lua_pushstring(L, q[i]);
            callback(L, 2, "error hook");
        }
        free(q[i]);
    }
}

static void link_log(void *ud, int level, const char *msg)
{
    sn_link *k = ud;
    if (k->logger || level == SN_LOG_ERROR)
        sn_log(level, "%s", msg);
    if (level != SN_LOG_ERROR || k->receiver == NULL || !k->receiver->want_errors)
        return;
    if (k->nerrq == SN_ERRQ) {
        k->errdropped++;
        return;
    }
    size_t len = strlen(msg) + 1;
    char *copy = malloc(len + 11);
    if (copy == NULL)
        return;
    snprintf(copy, len + 11, "sqlnotify: %s", msg);
    k->errq[k->nerrq++] = copy;
    if (!ev_is_active(&k->errt)) {
        ev_timer_init(&k->errt, on_errq, 0., 0.);
        k->errt.data = k;
        ev_timer_start(sn_loop(), &k->errt);
    }
}

static void free_handed(sn_link *k)
{
    ev_timer_stop(sn_loop(), &k->handt);
    for (size_t i = 0; i < k->nhand; i++) {
        free((char *)k->hand[i].channel);
        free((char *)k->hand[i].payload);
    }
    free(k->hand);
    k->hand = NULL;
    k->nhand = 0;
}

void sn_link_release_hooks(sn_link *k)
{
    ev_timer_stop(sn_loop(), &k->errt);
    for (int i = 0; i < k->nerrq; i++)
        free(k->errq[i]);
    k->nerrq = 0;
    free_handed(k);
}

/* Runs under sn_pcall with the handle at 1: fills its batch table and calls its
 * dispatch function once, storing how many events it handled through the pointer at 5.
 * A small table is reused from batch to batch (entries past 2n are stale and ignored),
 * and a channel repeated by consecutive events is pushed once. */
static int deliver_batch(lua_State *L)
{
    const sn_event *ev = lua_touserdata(L, 2);
    lua_Integer n = lua_tointeger(L, 3);
    lua_Number ts = lua_tonumber(L, 4);
    if (lua_getiuservalue(L, 1, UV_DISPATCH) != LUA_TFUNCTION)
        return 0;
    if (lua_getiuservalue(L, 1, UV_BATCH) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, (int)(2 * n), 0);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, 1, UV_BATCH);
    }
    int batch = lua_gettop(L);
    const char *prev = NULL;
    lua_pushnil(L); /* slot of the previous channel string */
    for (lua_Integer i = 0; i < n; i++) {
        if (prev == NULL || strcmp(prev, ev[i].channel) != 0) {
            lua_pushstring(L, ev[i].channel);
            lua_replace(L, batch + 1);
            prev = ev[i].channel;
        }
        lua_pushvalue(L, batch + 1);
        lua_rawseti(L, batch, 2 * i + 1);
        lua_pushlstring(L, ev[i].payload, ev[i].payload_len);
        lua_rawseti(L, batch, 2 * i + 2);
    }
    lua_settop(L, batch);
    lua_pushinteger(L, n);
    lua_pushnumber(L, ts);
    if (n > 0 && ev[0].seq > 0) { /* durable mode: the journal positions, for event.seq */
        lua_createtable(L, (int)n, 0);
        for (lua_Integer i = 0; i < n; i++) {
            lua_pushinteger(L, (lua_Integer)ev[i].seq);
            lua_rawseti(L, -2, i + 1);
        }
    } else {
        lua_pushnil(L);
    }
    if (n > 0 && ev[0].written > 0) { /* when the rows were written, for event.written_at */
        lua_createtable(L, (int)n, 0);
        for (lua_Integer i = 0; i < n; i++) {
            lua_pushnumber(L, ev[i].written);
            lua_rawseti(L, -2, i + 1);
        }
    } else {
        lua_pushnil(L);
    }
    lua_call(L, 5, 1);
    *(lua_Integer *)lua_touserdata(L, 5) = lua_tointeger(L, -1); /* how many it handled */
    if (n > 256) { /* do not keep a big batch's payloads alive until the next one */
        lua_pushnil(L);
        lua_setiuservalue(L, 1, UV_BATCH);
    }
    return 0;
}

/* Events reach a handle only while it listens (and is thereby anchored). */
static void link_deliver(void *ud, const sn_event *events, size_t n)
{
    sn_link *k = ud;
    sn_handle *h = k->receiver;
    if (h == NULL || h->self_ref == LUA_NOREF || n == 0)
        return;
    lua_State *L = h->L;
    lua_Integer handled = 0;
    lua_pushcfunction(L, deliver_batch);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_pushlightuserdata(L, (void *)events);
    lua_pushinteger(L, (lua_Integer)n);
    l_now(L);
    lua_pushlightuserdata(L, &handled);
    k->refs++; /* a handler may close the handle: the link stays until the ack is sent */
    callback(L, 5, "event dispatch");
    /* Durable mode: the cursor moves past what the handlers finished, and no further. */
    if (k->d->ack && handled > 0 && (size_t)handled <= n && events[handled - 1].seq > 0)
        k->d->ack(k->conn, events[handled - 1].seq);
    sn_link_unref(k, NULL);
}

static sn_handle *check_handle(lua_State *L);

static void on_handed(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    sn_link *k = w->data;
    sn_event *ev = k->hand;
    size_t n = k->nhand;
    k->hand = NULL; /* taken: the dispatch may hand over again (another reload) */
    k->nhand = 0;
    k->refs++;
    link_deliver(k, ev, n);
    for (size_t i = 0; i < n; i++) {
        free((char *)ev[i].channel);
        free((char *)ev[i].payload);
    }
    free(ev);
    sn_link_unref(k, NULL);
}

/* h:handover({channel, payload, ...}) -> true when the state a reload made takes these live
 * events over (they reach its handlers from the loop), false when no other state receives
 * from this connection. */
static int h_handover(lua_State *L)
{
    sn_handle *h = check_handle(L);
    sn_link *k = h->link;
    luaL_checktype(L, 2, LUA_TTABLE);
    if (k->receiver == NULL || k->receiver == h) {
        lua_pushboolean(L, 0);
        return 1;
    }
    size_t n = (size_t)luaL_len(L, 2) / 2;
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    sn_event *ev = realloc(k->hand, (k->nhand + n) * sizeof *ev);
    if (ev == NULL)
        return luaL_error(L, "sqlnotify: out of memory");
    k->hand = ev;
    for (size_t i = 0; i < n; i++) {
        size_t clen = 0, plen = 0;
        lua_rawgeti(L, 2, (lua_Integer)(2 * i + 1));
        lua_rawgeti(L, 2, (lua_Integer)(2 * i + 2));
        const char *ch = lua_tolstring(L, -2, &clen), *pl = lua_tolstring(L, -1, &plen);
        sn_event *e = &ev[k->nhand];
        e->channel = ch ? strndup(ch, clen) : NULL;
        e->payload = pl ? malloc(plen + 1) : NULL;
        e->payload_len = plen;
        e->seq = 0;
        e->written = 0;
        if (e->channel == NULL || e->payload == NULL) {
            free((char *)e->channel);
            free((char *)e->payload);
            lua_pop(L, 2);
            continue; /* not a string pair, or out of memory: that one stays the old state's (logged) */
        }
        memcpy((char *)e->payload, pl, plen);
        ((char *)e->payload)[plen] = '\0';
        k->nhand++;
        lua_pop(L, 2);
    }
    if (!ev_is_active(&k->handt)) {
        ev_timer_init(&k->handt, on_handed, 0., 0.);
        k->handt.data = k;
        ev_timer_start(sn_loop(), &k->handt);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int call_reconnected(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_RECONNECTED) != LUA_TFUNCTION)
        return 0;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_call(L, 2, 0);
    return 0;
}

static void link_reconnected(void *ud, double outage, int may_have_missed)
{
    sn_link *k = ud;
    sn_handle *h = k->receiver;
    if (h == NULL || h->self_ref == LUA_NOREF)
        return;
    lua_State *L = h->L;
    lua_pushcfunction(L, call_reconnected);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_pushnumber(L, outage);
    lua_pushboolean(L, may_have_missed);
    callback(L, 3, "reconnect notice");
}

static int call_triggers_gone(lua_State *L)
{
    if (lua_getiuservalue(L, 1, UV_TRIGGERS_GONE) != LUA_TFUNCTION)
        return 0;
    lua_call(L, 0, 0);
    return 0;
}

static void link_triggers_gone(void *ud)
{
    sn_link *k = ud;
    sn_handle *h = k->receiver;
    if (h == NULL || h->self_ref == LUA_NOREF)
        return;
    lua_State *L = h->L;
    lua_pushcfunction(L, call_triggers_gone);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    callback(L, 1, "trigger check notice");
}

/* close, __gc and __close: release the link and everything the handle holds. */
static void handle_release(lua_State *L, int idx)
{
    sn_handle *h = lua_touserdata(L, idx);
    if (h->link == NULL)
        return;
    sn_link *k = h->link;
    h->link = NULL;
    if (k->querier == h) { /* its answer would reach a state that is going */
        void *ud = k->d->query_cancel(k->conn);
        if (ud) {
            sn_reply_drop(ud);
            free(ud);
        }
        k->querier = NULL;
    }
    sn_link_unref(k, h);
    luaL_unref(L, LUA_REGISTRYINDEX, h->self_ref);
    h->self_ref = LUA_NOREF;
    h->want_errors = 0;
    for (int i = 1; i <= HANDLE_NUV; i++) {
        lua_pushnil(L);
        lua_setiuservalue(L, idx, i);
    }
}

static sn_handle *check_handle(lua_State *L)
{
    sn_handle *h = luaL_checkudata(L, 1, CONN_META);
    if (h->link == NULL)
        luaL_error(L, "sqlnotify: this notifier's connection is closed");
    return h;
}

/* Outside-world failure: nil, "sqlnotify: ..." */
static int fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushfstring(L, "sqlnotify: %s", err);
    return 2;
}

/* "postgresql+asyncpg://..." -> dialect "postgresql", url "postgresql://..." */
static const sn_dialect *find_dialect(const char *url, luaL_Buffer *b)
{
    const char *sep = strstr(url, "://");
    if (sep == NULL)
        return NULL;
    const char *plus = memchr(url, '+', (size_t)(sep - url));
    size_t schemelen = (size_t)((plus ? plus : sep) - url);
    for (int i = 0; dialects[i]; i++)
        for (const char *const *s = dialects[i]->schemes; *s; s++)
            if (strlen(*s) == schemelen && strncmp(*s, url, schemelen) == 0) {
                luaL_addlstring(b, url, schemelen);
                luaL_addstring(b, sep);
                return dialects[i];
            }
    return NULL;
}

/* core.open(url, {use_logger=, retention=, overflow_schema=, consumer=, start_at=, consumer_retention=,
 *                  shares=, lease=})
 * -> handle | nil, err */
static int l_open(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    int logger = 1;
    sn_options opt = {.retention = 3600, .application = "sqlnotify"};
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "use_logger");
        logger = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_getfield(L, 2, "retention");
        if (lua_isnumber(L, -1))
            opt.retention = lua_tonumber(L, -1);
        lua_getfield(L, 2, "overflow_schema"); /* stays on the stack: opt points into it */
        opt.overflow_schema = lua_tostring(L, -1);
        lua_getfield(L, 2, "consumer"); /* durable mode; stays on the stack too */
        opt.consumer = lua_tostring(L, -1);
        lua_getfield(L, 2, "start_at");
        opt.start_at_beginning = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "beginning") == 0;
        lua_getfield(L, 2, "consumer_retention");
        if (lua_isnumber(L, -1))
            opt.consumer_retention = lua_tonumber(L, -1);
        lua_getfield(L, 2, "shares");
        if (lua_isinteger(L, -1))
            opt.shares = (int)lua_tointeger(L, -1);
        lua_getfield(L, 2, "lease");
        if (lua_isnumber(L, -1))
            opt.lease = lua_tonumber(L, -1);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const sn_dialect *d = find_dialect(url, &b);
    luaL_pushresult(&b);
    if (d == NULL) {
        const char *sep = strstr(url, "://");
#ifndef SN_HAVE_MYSQL
        size_t n = strcspn(url, "+:");
        if ((n == 5 && strncmp(url, "mysql", 5) == 0) || (n == 7 && strncmp(url, "mariadb", 7) == 0))
            return luaL_error(L, "sqlnotify: this build has no MySQL/MariaDB support (install libmariadb-dev and rebuild)");
#endif
        return luaL_error(L, "sqlnotify: unsupported database URL scheme \"%s\" (expected postgresql://, mysql:// or sqlite://)",
                          sep ? lua_pushlstring(L, url, (size_t)(sep - url)) : "none");
    }
    const char *clean = lua_tostring(L, -1);

    /* Closed first, then the resource: an error half way leaves nothing behind. */
    sn_handle *h = lua_newuserdatauv(L, sizeof *h, HANDLE_NUV);
    h->link = NULL;
    h->L = main_thread(L);
    h->self_ref = LUA_NOREF;
    h->want_errors = 0;
    luaL_setmetatable(L, CONN_META);
    /* A reloaded script's n-th notifier on a URL takes over the old script's n-th:
     * same connections, same LISTENs, nothing missed in between. */
    sn_link *old = sn_link_adopt(url, h, logger);
    if (old) {
        h->link = old;
        return 1;
    }

    sn_link *k = calloc(1, sizeof *k);
    if (k == NULL || (k->url = strdup(url)) == NULL) {
        free(k);
        return luaL_error(L, "sqlnotify: out of memory");
    }
    k->d = d;
    k->logger = logger;
    k->sink.ud = k;
    k->sink.deliver = link_deliver;
    k->sink.log = link_log;
    k->sink.reconnected = link_reconnected;
    k->sink.triggers_gone = link_triggers_gone;
    char err[1024] = "";
    k->conn = d->open(clean, sn_loop(), &k->sink, &opt, err, sizeof err);
    if (k->conn == NULL) {
        free(k->url);
        free(k);
        return fail(L, err);
    }
    sn_link_add(k, h);
    h->link = k;
    return 1;
}

static int h_dialect(lua_State *L)
{
    lua_pushstring(L, check_handle(L)->link->d->name);
    return 1;
}

static int h_target(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    lua_pushstring(L, k->d->target(k->conn));
    return 1;
}

/* h:capabilities() -> { groups, search_path, plain_live = true | nil, quote = '"' | '`' } */
static int h_capabilities(lua_State *L)
{
    const sn_dialect *d = check_handle(L)->link->d;
    static const struct { unsigned bit; const char *name; } caps[] = {
        {SN_CAP_GROUPS, "groups"}, {SN_CAP_SEARCH_PATH, "search_path"}, {SN_CAP_PLAIN_LIVE, "plain_live"}};
    lua_createtable(L, 0, 4);
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (d->caps & caps[i].bit) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, caps[i].name);
        }
    lua_pushlstring(L, &d->quote, 1);
    lua_setfield(L, -2, "quote");
    return 1;
}

/* h:statements() -> the text of the driver's statements.sql */
static int h_statements(lua_State *L)
{
    lua_pushstring(L, check_handle(L)->link->d->statements);
    return 1;
}

static int h_max_payload(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_handle(L)->link->d->max_payload);
    return 1;
}

static void push_value(lua_State *L, const sn_value *v)
{
    switch (v->type) {
    case SN_BOOL: lua_pushboolean(L, (int)v->i); break;
    case SN_INT: lua_pushinteger(L, (lua_Integer)v->i); break;
    case SN_FLOAT: lua_pushnumber(L, v->d); break;
    case SN_TEXT: lua_pushlstring(L, v->s, v->len); break;
    default: lua_pushnil(L); break;
    }
}

/* Runs under lua_pcall so a memory error cannot leak the result. */
static int push_result(lua_State *L)
{
    const sn_result *r = lua_touserdata(L, 1);
    int keyed = lua_toboolean(L, 2);
    lua_createtable(L, r->nrows, 0);
    for (int i = 0; i < r->nrows; i++) {
        const sn_value *row = r->cells + (size_t)i * (size_t)r->ncols;
        lua_createtable(L, keyed ? 0 : r->ncols, keyed ? r->ncols : 0);
        for (int c = 0; c < r->ncols; c++) {
            if (row[c].type == SN_NULL)
                continue;
            push_value(L, &row[c]);
            if (keyed)
                lua_setfield(L, -2, r->names[c]);
            else
                lua_rawseti(L, -2, c + 1);
        }
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* Replace r by its Lua rows on top of L (or raise after freeing it). */
static int return_result(lua_State *L, sn_result *r, int keyed)
{
    lua_pushcfunction(L, push_result);
    lua_pushlightuserdata(L, r);
    lua_pushboolean(L, keyed);
    int status = lua_pcall(L, 2, 1, 0);
    sn_result_free(r);
    if (status != LUA_OK)
        return lua_error(L);
    return 1;
}

/* h:describe(schema|nil, table) -> rows of {kind, a, b, n} | nil, err */
static int h_describe(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *schema = luaL_optstring(L, 2, NULL);
    const char *table = luaL_checkstring(L, 3);
    sn_result *r = NULL;
    char err[1024] = "";
    if (k->d->describe(k->conn, schema, table, &r, err, sizeof err) != 0)
        return fail(L, err);
    return return_result(L, r, 0);
}

/* An array field of strings as a C array living in a userdata on the stack. */
static const char *const *string_array(lua_State *L, int t, const char *field, int *n)
{
    lua_getfield(L, t, field);
    int len = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
    const char **a = lua_newuserdatauv(L, sizeof *a * (size_t)(len + 1), 0);
    for (int i = 0; i < len; i++) {
        lua_geti(L, -2, i + 1);
        a[i] = lua_tostring(L, -1);
        if (a[i] == NULL)
            luaL_error(L, "sqlnotify: %s[%d] must be a string", field, i + 1);
        lua_pop(L, 1); /* still referenced by the table below */
    }
    a[len] = NULL;
    *n = len;
    return a;
}

static const char *string_field(lua_State *L, int t, const char *field)
{
    lua_getfield(L, t, field);
    const char *s = lua_tostring(L, -1);
    if (s == NULL)
        luaL_error(L, "sqlnotify: watch field '%s' must be a string", field);
    return s; /* kept alive on the stack */
}

/* The watch table built by notifier.lua, read into an sn_watch valid while it is on the stack. */
static void check_watch(lua_State *L, int t, sn_watch *w)
{
    luaL_checktype(L, t, LUA_TTABLE);
    memset(w, 0, sizeof *w);
    w->schema = string_field(L, t, "schema");
    w->table = string_field(L, t, "table");
    w->plain_channel = string_field(L, t, "channel");
    w->marker = string_field(L, t, "marker");
    /* the capture's own channel and name (notifier.lua); a watch without them is a live one on
     * its plain channel */
    lua_getfield(L, t, "wire");
    w->channel = lua_isnil(L, -1) ? w->plain_channel : string_field(L, t, "wire");
    lua_getfield(L, t, "capture");
    w->capture = lua_isnil(L, -1) ? "live" : string_field(L, t, "capture");
    lua_getfield(L, t, "label");
    w->label = lua_tostring(L, -1); /* NULL when absent; kept alive on the stack */
    lua_getfield(L, t, "opcode");
    w->op = (int)lua_tointeger(L, -1);
    lua_getfield(L, t, "overflow");
    w->overflow = lua_toboolean(L, -1);
    lua_getfield(L, t, "all");
    w->extra_all = lua_toboolean(L, -1);
    w->pk = string_array(L, t, "pk", &w->npk);
    w->extra = string_array(L, t, "extra", &w->nextra);
    w->trigger_cols = string_array(L, t, "trigger", &w->ntrigger);
    w->old_cols = string_array(L, t, "old", &w->nold);
}

/* h:install(watch, replace) -> "unchanged" | "created" | "replaced" | "kept" | "restored" | "busy", why
 * | nil, err */
static int h_install(lua_State *L)
{
    static const char *const status_names[] = {"unchanged", "created", "replaced", "kept", "restored", "busy"};
    sn_link *k = check_handle(L)->link;
    sn_watch w;
    check_watch(L, 2, &w);
    int replace = lua_toboolean(L, 3);
    char err[1024] = "";
    int st = k->d->install(k->conn, &w, replace, err, sizeof err);
    if (st < 0 || st > SN_INSTALL_BUSY)
        return fail(L, err);
    lua_pushstring(L, status_names[st]);
    if (st != SN_INSTALL_BUSY)
        return 1;
    lua_pushstring(L, err);
    return 2;
}

/* h:row_sql(watch) -> payload SQL, hash SQL or nil | nil, err: expressions over one row of
 * the watch's table aliased r (sn_dialect.row_sql), for a backfill */
static int h_row_sql(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    sn_watch w;
    check_watch(L, 2, &w);
    if (k->d->row_sql == NULL)
        return luaL_error(L, "sqlnotify: the %s dialect cannot backfill", k->d->name);
    sn_sbuf p = {0}, h = {0};
    char err[1024] = "";
    int rc = k->d->row_sql(k->conn, &w, &p, &h, err, sizeof err);
    if (rc == 0 && (p.fail || h.fail))
        rc = -1, sn_seterr(err, sizeof err, "out of memory");
    if (rc == 0) {
        lua_pushlstring(L, p.p, p.len);
        if (h.len > 0)
            lua_pushlstring(L, h.p, h.len);
        else
            lua_pushnil(L);
    }
    sn_sb_free(&p);
    sn_sb_free(&h);
    return rc == 0 ? 2 : fail(L, err);
}

static int h_uninstall(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    sn_watch w;
    check_watch(L, 2, &w);
    char err[1024] = "";
    if (k->d->uninstall(k->conn, &w, err, sizeof err) != 0)
        return fail(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* h:drop([schema], [table]) -> count | nil, err: every sqlnotify trigger on one table, or all */
static int h_drop(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *schema = luaL_optstring(L, 2, NULL);
    const char *table = luaL_optstring(L, 3, NULL);
    char err[1024] = "";
    if (k->d->drop == NULL)
        return luaL_error(L, "sqlnotify: the %s dialect cannot drop triggers by table", k->d->name);
    int n = k->d->drop(k->conn, schema, table, err, sizeof err);
    if (n < 0)
        return fail(L, err);
    lua_pushinteger(L, n);
    return 1;
}

/* h:list() -> rows | nil, err: every sqlnotify trigger in the database */
static int h_list(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    sn_result *r = NULL;
    char err[1024] = "";
    if (k->d->list == NULL)
        return luaL_error(L, "sqlnotify: the %s dialect cannot list its triggers", k->d->name);
    if (k->d->list(k->conn, &r, err, sizeof err) != 0)
        return fail(L, err);
    return return_result(L, r, 0);
}

/* h:verify(watch) -> true | false | nil, err: is our trigger there, with this watch's marker */
static int h_verify(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    sn_watch w;
    check_watch(L, 2, &w);
    char err[1024] = "";
    if (k->d->verify == NULL) {
        lua_pushboolean(L, 1);
        return 1;
    }
    int st = k->d->verify(k->conn, &w, err, sizeof err);
    if (st < 0)
        return fail(L, err);
    lua_pushboolean(L, st);
    return 1;
}

/* h:consumers() -> rows of {name, lag_events, lag_seconds, members, last_seen} | nil, err */
static int h_consumers(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    sn_result *r = NULL;
    char err[1024] = "";
    if (k->d->consumers == NULL)
        return luaL_error(L, "sqlnotify: the %s dialect has no durable consumers", k->d->name);
    if (k->d->consumers(k->conn, &r, err, sizeof err) != 0)
        return fail(L, err);
    return return_result(L, r, 0);
}

/* h:drop_consumer(name) -> true (dropped) | false (no such consumer) | nil, err */
static int h_drop_consumer(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *name = luaL_checkstring(L, 2);
    char err[1024] = "";
    if (k->d->drop_consumer == NULL)
        return luaL_error(L, "sqlnotify: the %s dialect has no durable consumers", k->d->name);
    int st = k->d->drop_consumer(k->conn, name, err, sizeof err);
    if (st < 0)
        return fail(L, err);
    lua_pushboolean(L, st);
    return 1;
}

/* h:status() -> seconds the listener or reader has been lost (0: receiving), shares held | nil */
static int h_status(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    double down = 0;
    int shares = -1;
    if (k->d->status)
        k->d->status(k->conn, &down, &shares);
    lua_pushnumber(L, down);
    if (shares < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, shares);
    return 2;
}

/* h:set_error(fn | nil): fn(message) for each error line this connection logs, from the loop */
static int h_set_error(lua_State *L)
{
    sn_handle *h = check_handle(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    h->want_errors = !lua_isnoneornil(L, 2);
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, UV_ERROR); /* pops the function */
    return 0;
}

/* h:set_reconnected(fn | nil): fn(outage_seconds, may_have_missed) after a listener outage */
static int h_set_reconnected(lua_State *L)
{
    check_handle(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, UV_RECONNECTED);
    return 0;
}

/* h:set_triggers_gone(fn | nil): fn() when the durable reader saw one of its triggers gone from
 * a table that is there (sn_sink.triggers_gone) */
static int h_set_triggers_gone(lua_State *L)
{
    check_handle(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, UV_TRIGGERS_GONE);
    return 0;
}

/* h:set_dispatch(fn): fn(batch, n, timestamp, seqs, written) -> handled, for every batch of events
 * (seqs: the journal positions in durable mode, else nil; written: when each journal row was written,
 * seconds since the epoch, where the driver read it, else nil; handled: how many events it went
 * through) */
static int h_set_dispatch(lua_State *L)
{
    check_handle(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, UV_DISPATCH);
    return 0;
}

static int h_listen(lua_State *L)
{
    sn_handle *h = check_handle(L);
    const char *channel = luaL_checkstring(L, 2);
    char err[1024] = "";
    if (h->link->d->listen(h->link->conn, channel, err, sizeof err) != 0)
        return fail(L, err);
    if (h->self_ref == LUA_NOREF) { /* a listening handle stays alive */
        lua_pushvalue(L, 1);
        h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int h_unlisten(lua_State *L)
{
    sn_handle *h = check_handle(L);
    h->link->d->unlisten(h->link->conn, luaL_checkstring(L, 2));
    return 0;
}

static int h_stop(lua_State *L)
{
    sn_handle *h = check_handle(L);
    h->link->d->stop(h->link->conn);
    h->link->held = 0;
    luaL_unref(L, LUA_REGISTRYINDEX, h->self_ref);
    h->self_ref = LUA_NOREF;
    return 0;
}

/* h:ack(seq): the handlers of every delivered event up to this journal position are done
 * (durable mode; outside deliver only while held). */
static int h_ack(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    lua_Integer seq = luaL_checkinteger(L, 2);
    if (k->d->ack && seq > 0)
        k->d->ack(k->conn, (int64_t)seq);
    return 0;
}

/* h:hold(on) -> true when the driver can hold (durable mode), else false: see sn_dialect.hold. */
static int h_hold(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    int on = lua_toboolean(L, 2);
    if (k->d->hold == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (on == k->held) {
        lua_pushboolean(L, 1);
        return 1;
    }
    int held = k->d->hold(k->conn, on);
    k->held = on && held;
    lua_pushboolean(L, held);
    return 1;
}

/* h:keep(on) -> whether the driver keeps every share it holds (dialect.h, keep). */
static int h_keep(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    int on = lua_toboolean(L, 2);
    lua_pushboolean(L, k->d->keep != NULL && k->d->keep(k->conn, on));
    return 1;
}

static int h_notify(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *channel = luaL_checkstring(L, 2);
    size_t len;
    const char *payload = luaL_checklstring(L, 3, &len);
    int overflow = lua_toboolean(L, 4);
    char err[1024] = "";
    if (k->d->notify(k->conn, channel, payload, len, overflow, err, sizeof err) != 0)
        return fail(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* h:query(sql, ...) -> rows | nil, err */
/* Arguments first..last as statement parameters, in a userdata on the stack. */
static sn_value *check_params(lua_State *L, int first, int last)
{
    int nparams = last - first + 1;
    sn_value *params = lua_newuserdatauv(L, sizeof *params * (size_t)(nparams > 0 ? nparams + 1 : 1), 0);
    for (int i = 0; i < nparams; i++) {
        int idx = i + first;
        sn_value *v = &params[i];
        memset(v, 0, sizeof *v);
        switch (lua_type(L, idx)) {
        case LUA_TNIL: v->type = SN_NULL; break;
        case LUA_TBOOLEAN: v->type = SN_BOOL; v->i = lua_toboolean(L, idx); break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, idx)) {
                v->type = SN_INT;
                v->i = (int64_t)lua_tointeger(L, idx);
            } else {
                v->type = SN_FLOAT;
                v->d = (double)lua_tonumber(L, idx);
            }
            break;
        case LUA_TSTRING:
            v->type = SN_TEXT;
            v->s = (char *)lua_tolstring(L, idx, &v->len);
            break;
        default:
            luaL_error(L, "sqlnotify: query parameter %d is a %s; use nil, a boolean, a number or a string", i + 1,
                       luaL_typename(L, idx));
        }
    }
    return params;
}

static int h_query(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *sql = luaL_checkstring(L, 2);
    int top = lua_gettop(L);
    sn_value *params = check_params(L, 3, top);
    sn_result *r = NULL;
    char err[1024] = "";
    if (k->d->query(k->conn, sql, top - 2, params, &r, err, sizeof err) != 0)
        return fail(L, err);
    return return_result(L, r, 1);
}

/* A query_start in flight: the reply first (query_cancel's ud is freed as an sn_reply). */
typedef struct query_wait {
    sn_reply reply;
    sn_link *k;
} query_wait;

/* query_start's answer: reply(rows, nil, in_tx) or reply(nil, err, in_tx), from the loop. */
static void query_done(void *ud, sn_result *r, int in_tx, const char *err)
{
    query_wait *q = ud;
    sn_reply *reply = &q->reply;
    q->k->querier = NULL;
    lua_State *L = sn_reply_push(reply);
    if (L == NULL) {
        sn_result_free(r);
        free(q);
        return;
    }
    if (r) {
        lua_pushcfunction(L, push_result);
        lua_pushlightuserdata(L, r);
        lua_pushboolean(L, 1);
        int status = lua_pcall(L, 2, 1, 0);
        sn_result_free(r);
        if (status != LUA_OK) { /* out of memory: the message is the answer */
            lua_pushnil(L);
            lua_insert(L, -2);
        } else {
            lua_pushnil(L);
        }
    } else {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: %s", err && *err ? err : "the statement failed");
    }
    lua_pushboolean(L, in_tx);
    sn_reply_call(reply, 3, "query reply");
    free(q);
}

/* h:query_start(sql, params..., reply) -> true | nil, err | false, false (the dialect has no
 * query_start: use h:query). reply(rows | nil, err, in_tx) follows from the loop. */
static int h_query_start(lua_State *L)
{
    sn_link *k = check_handle(L)->link;
    const char *sql = luaL_checkstring(L, 2);
    int top = lua_gettop(L);
    luaL_checktype(L, top, LUA_TFUNCTION);
    if (k->d->query_start == NULL) { /* false, false: not a failure, use h:query */
        lua_pushboolean(L, 0);
        lua_pushboolean(L, 0);
        return 2;
    }
    sn_value *params = check_params(L, 3, top - 1);
    query_wait *q = malloc(sizeof *q);
    if (q == NULL)
        return luaL_error(L, "sqlnotify: out of memory");
    q->k = k;
    sn_reply_take(L, top, &q->reply);
    char err[1024] = "";
    if (k->d->query_start(k->conn, sql, top - 3, params, query_done, q, err, sizeof err) != 0) {
        sn_reply_drop(&q->reply);
        free(q);
        return fail(L, err);
    }
    k->querier = check_handle(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* h:log(level, message[, fields]): through this connection's logger setting. */
static int h_log(lua_State *L)
{
    sn_handle *h = check_handle(L);
    int level = luaL_checkoption(L, 2, NULL, level_names);
    /* printed only: the Lua side tells its own error hooks itself */
    sn_log_lua(L, level, 3, 4, h->link->logger || level == SN_LOG_ERROR);
    return 0;
}

/* core.log(level, message[, fields]): a line of the runtime's own (spawned coroutines, the stop). */
static int l_log(lua_State *L)
{
    int level = luaL_checkoption(L, 1, NULL, level_names);
    sn_log_lua(L, level, 2, 3, 1);
    return 0;
}

static int h_close(lua_State *L)
{
    luaL_checkudata(L, 1, CONN_META);
    handle_release(L, 1);
    return 0;
}

static const luaL_Reg conn_meth[] = {
    {"dialect", h_dialect},
    {"capabilities", h_capabilities},
    {"statements", h_statements},
    {"target", h_target},
    {"max_payload", h_max_payload},
    {"describe", h_describe},
    {"install", h_install},
    {"row_sql", h_row_sql},
    {"uninstall", h_uninstall},
    {"drop", h_drop},
    {"list", h_list},
    {"verify", h_verify},
    {"consumers", h_consumers},
    {"drop_consumer", h_drop_consumer},
    {"status", h_status},
    {"set_dispatch", h_set_dispatch},
    {"set_reconnected", h_set_reconnected},
    {"set_triggers_gone", h_set_triggers_gone},
    {"set_error", h_set_error},
    {"listen", h_listen},
    {"unlisten", h_unlisten},
    {"stop", h_stop},
    {"notify", h_notify},
    {"ack", h_ack},
    {"hold", h_hold},
    {"keep", h_keep},
    {"query", h_query},
    {"query_start", h_query_start},
    {"handover", h_handover},
    {"log", h_log},
    {"close", h_close},
    {NULL, NULL},
};

static const luaL_Reg conn_metameth[] = {
    {"__index", NULL},
    {"__gc", h_close},
    {"__close", h_close},
    {NULL, NULL},
};

static void createconnmeta(lua_State *L)
{
    luaL_newmetatable(L, CONN_META);
    luaL_setfuncs(L, conn_metameth, 0);
    luaL_newlibtable(L, conn_meth);
    luaL_setfuncs(L, conn_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ===== module ===== */

static int l_hash(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char hex[17];
    sn_hash_hex(s, len, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* log_json() -> true when the log is one JSON object a line (--log-format json) */
static int l_log_json(lua_State *L)
{
    lua_pushboolean(L, sn_log_json());
    return 1;
}

/* log_level([name]) -> current name */
static int l_log_level(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        sn_log_level_set(luaL_checkoption(L, 1, NULL, level_names));
    lua_pushstring(L, level_names[sn_log_level_get()]);
    return 1;
}

static const luaL_Reg corelib[] = {
    {"open", l_open},
    {"run", l_run},
    {"stop", l_stop},
    {"set_stop_hook", l_set_stop_hook},
    {"in_grace", l_in_grace},
    {"now", l_now},
    {"after", l_after},
    {"every", l_every},
    {"hash", l_hash},

    {"stopping", l_stopping},
    {"log_level", l_log_level},
    {"log_json", l_log_json},
    {"log", l_log},
    {NULL, NULL},
};

int luaopen_sqlnotify_core(lua_State *L)
{
    char err[160];
    /* plain lua5.4: the environment sets the log (the host read it with its options) */
    if (!sn_log_env_read() && sn_log_env(err, sizeof err, 0) < 0)
        return luaL_error(L, "sqlnotify: %s", err);
    createtimermeta(L);
    createconnmeta(L);
    sn_at_close(L, "sqlnotify.stop_hook_sentinel", hook_sentinel_gc); /* clears the stop hook */
    luaL_newlib(L, corelib);
    sn_io_open(L);
    sn_decode_open(L);
    sn_metrics_open(L);
    sn_http_open(L);
    sn_redis_open(L);
    sn_nats_open(L);
    sn_mqtt_open(L);
    sn_kafka_open(L);
    lua_pushstring(L, SQLNOTIFY_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
