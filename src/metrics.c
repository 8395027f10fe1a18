/*
 * metrics.c — the operator's HTTP endpoint (SPEC §8.4): a small HTTP/1.1 server on our loop
 * serving /health itself and /metrics, /ready (and any other path) through a hook of the
 * newest Lua state (lua/sqlnotify/metrics.lua renders them). One server per process, opened
 * by the host's --metrics ADDR or by sqlnotify.metrics{listen = ADDR}.
 *
 * Every socket is non-blocking; a connection reads one request (up to MX_REQ_MAX bytes),
 * answers it with "Connection: close" and closes. A client that sends nothing, sends too
 * slowly or never reads its answer is dropped at its deadline: it never holds the loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "dialect.h"
#include "sqlnotify.h"

#define MX_REQ_MAX 8192   /* bytes of request line and headers */
#define MX_DEADLINE 10.0  /* seconds a connection may take from accept to its last byte written */
#define MX_PAUSE 0.5      /* seconds without accepting after running out of descriptors */
#define MX_PAUSE_LOG 60.0 /* seconds between two warnings of that */
#define MX_CONNS 64       /* connections at once; then the oldest idle one makes room */
#define MX_HOOKS 4        /* Lua states alive at once (a reload: the old one and the new one) */

typedef struct mx_conn {
    ev_io io;
    ev_timer deadline;
    int fd;
    char req[MX_REQ_MAX];
    size_t nreq;
    char *out;            /* the answer, once made */
    size_t nout, sent;
    struct mx_conn *next;
} mx_conn;

static struct {
    int fd;               /* -1: not serving */
    ev_io accept;
    ev_timer pause;       /* out of descriptors: accept is stopped until it fires */
    double paused_said;   /* ev_now of the last warning of that */
    char addr[256];       /* as given, for messages */
    mx_conn *conns;
    int nconns;
    struct { lua_State *L; int ref; } hooks[MX_HOOKS]; /* the newest last */
    int nhooks;
} mx = {.fd = -1};

/* ===== answers ===== */

static void conn_close(mx_conn *c)
{
    struct ev_loop *loop = sn_loop();
    ev_ref(loop); /* both watchers were unreferenced at accept */
    ev_ref(loop);
    ev_io_stop(loop, &c->io);
    ev_timer_stop(loop, &c->deadline);
    close(c->fd);
    for (mx_conn **p = &mx.conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    mx.nconns--;
    free(c->out);
    free(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

static void answer(mx_conn *c, int status, const char *type, const char *body, size_t len, int head)
{
    char top[256];
    int n = snprintf(top, sizeof top,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, reason(status), type, len);
    if (head)
        len = 0;
    c->out = malloc((size_t)n + len);
    if (c->out == NULL) {
        conn_close(c);
        return;
    }
    memcpy(c->out, top, (size_t)n);
    if (len)
        memcpy(c->out + n, body, len);
    c->nout = (size_t)n + len;
    c->sent = 0;
    struct ev_loop *loop = sn_loop();
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(loop, &c->io);
}

static void answer_text(mx_conn *c, int status, const char *text, int head)
{
    answer(c, status, "text/plain; charset=utf-8", text, strlen(text), head);
}

/* The newest state's hook: hook(path) -> status, body[, content type]. */
static void answer_from_lua(mx_conn *c, const char *path, int head)
{
    if (mx.nhooks == 0) {
        answer_text(c, 503, "no script is loaded\n", head);
        return;
    }
    lua_State *L = mx.hooks[mx.nhooks - 1].L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, mx.hooks[mx.nhooks - 1].ref);
    lua_pushstring(L, path);
    if (sn_pcall(L, 1, 3) != LUA_OK) {
        sn_log(SN_LOG_ERROR, "--metrics: rendering %s failed: %s", path, lua_tostring(L, -1));
        lua_settop(L, top);
        answer_text(c, 500, "internal error (logged)\n", head);
        return;
    }
    int status = (int)lua_tointeger(L, -3);
    size_t len = 0;
    const char *body = lua_tolstring(L, -2, &len);
    const char *type = lua_tostring(L, -1);
    if (status < 100 || status > 599 || body == NULL)
        answer_text(c, 500, "internal error\n", head);
    else
        answer(c, status, type ? type : "text/plain; charset=utf-8", body, len, head);
    lua_settop(L, top);
}

/* A whole request head is in: route it. */
static void route(mx_conn *c)
{
    char *sp1 = memchr(c->req, ' ', c->nreq);
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', c->nreq - (size_t)(sp1 + 1 - c->req)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1[1] != '/') {
        answer_text(c, 400, "bad request\n", 0);
        return;
    }
    *sp1 = *sp2 = '\0';
    int head = strcmp(c->req, "HEAD") == 0;
    if (!head && strcmp(c->req, "GET") != 0) {
        answer_text(c, 405, "only GET and HEAD\n", 0);
        return;
    }
    char *path = sp1 + 1;
    path[strcspn(path, "?#")] = '\0';
    if (strcmp(path, "/health") == 0)
        answer_text(c, 200, "ok\n", head);
    else
        answer_from_lua(c, path, head);
}

/* ===== connections ===== */

static void on_conn(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    mx_conn *c = (mx_conn *)w;
    if (revents & EV_WRITE) {
        while (c->sent < c->nout) {
            ssize_t n = send(c->fd, c->out + c->sent, c->nout - c->sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0) {
                conn_close(c);
                return;
            }
            c->sent += (size_t)n;
        }
        conn_close(c);
        return;
    }
    for (;;) {
        if (c->nreq == sizeof c->req) {
            answer_text(c, 431, "request too large\n", 0);
            return;
        }
        ssize_t n = recv(c->fd, c->req + c->nreq, sizeof c->req - c->nreq, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) { /* closed or failed before a whole request */
            conn_close(c);
            return;
        }
        size_t from = c->nreq >= 3 ? c->nreq - 3 : 0;
        c->nreq += (size_t)n;
        for (size_t i = from; i + 1 < c->nreq; i++) /* the head ends at an empty line */
            if (c->req[i] == '\n' && (c->req[i + 1] == '\n' ||
                                      (i + 2 < c->nreq && c->req[i + 1] == '\r' && c->req[i + 2] == '\n'))) {
                c->req[i] = '\0';
                route(c);
                return;
            }
    }
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_close((mx_conn *)((char *)w - offsetof(mx_conn, deadline)));
}

/* Accepting again after a pause. Exactly one of accept and pause is active, unreferenced. */
static void on_pause(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w, (void)revents;
    ev_ref(loop); /* the timer stopped on its own */
    ev_io_start(loop, &mx.accept);
    ev_unref(loop);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    for (int i = 0; i < 64; i++) { /* a burst, then the loop's other watchers get their turn */
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
            /* the connection stays queued and the socket readable: accepting again at once
             * would spin the loop until a descriptor is free, so wait a little */
            if (mx.paused_said == 0 || ev_now(loop) - mx.paused_said >= MX_PAUSE_LOG) {
                mx.paused_said = ev_now(loop);
                sn_log(SN_LOG_WARN, "metrics on %s: cannot accept a connection: %s; trying again every %.1f s",
                       mx.addr, strerror(errno), MX_PAUSE);
            }
            ev_ref(loop);
            ev_io_stop(loop, &mx.accept);
            ev_timer_set(&mx.pause, MX_PAUSE, 0.);
            ev_timer_start(loop, &mx.pause);
            ev_unref(loop);
            return;
        }
        if (fd < 0)
            return; /* EAGAIN, or a failure of one connection */
        if (mx.nconns == MX_CONNS) { /* full: the oldest that sent no whole request goes */
            mx_conn *idle = NULL;
            for (mx_conn *o = mx.conns; o; o = o->next)
                if (o->out == NULL)
                    idle = o;
            if (idle)
                conn_close(idle);
        }
        mx_conn *c = mx.nconns < MX_CONNS ? calloc(1, sizeof *c) : NULL;
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->next = mx.conns;
        mx.conns = c;
        mx.nconns++;
        ev_io_init(&c->io, on_conn, fd, EV_READ);
        ev_io_start(loop, &c->io);
        ev_timer_init(&c->deadline, on_deadline, MX_DEADLINE, 0.);
        ev_timer_start(loop, &c->deadline);
        ev_unref(loop); /* neither keeps the loop running on its own */
        ev_unref(loop);
    }
}

/* ===== the server ===== */

/* "host:port", ":port" (every interface) or "[v6]:port". 0, or -1 and err. */
int sn_metrics_listen(const char *addr, char *err, size_t errlen)
{
    if (mx.fd >= 0) {
        snprintf(err, errlen, "already serving on %s", mx.addr);
        return -1;
    }
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof host) {
        snprintf(err, errlen, "expected HOST:PORT or :PORT");
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    const char *port = colon + 1;
    char *end;
    long pn = strtol(port, &end, 10);
    if (*port == '\0' || *end != '\0' || pn < 1 || pn > 65535) {
        snprintf(err, errlen, "the port must be a number from 1 to 65535");
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
                    *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            e = errno;
            close(fd);
            fd = -1;
            if (e == EADDRINUSE)
                break;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen: %s", strerror(e));
        return -1;
    }
    mx.fd = fd;
    snprintf(mx.addr, sizeof mx.addr, "%s", addr);
    struct ev_loop *loop = sn_loop();
    ev_io_init(&mx.accept, on_accept, fd, EV_READ);
    ev_timer_init(&mx.pause, on_pause, MX_PAUSE, 0.);
    ev_io_start(loop, &mx.accept);
    ev_unref(loop); /* serving alone does not keep the program running */
    sn_log(SN_LOG_INFO, "serving /metrics, /health and /ready on %s", addr);
    return 0;
}

/* Stop serving and drop every connection (before the loop goes). */
void sn_metrics_close(void)
{
    if (mx.fd < 0)
        return;
    struct ev_loop *loop = sn_loop();
    while (mx.conns)
        conn_close(mx.conns);
    ev_ref(loop);
    ev_io_stop(loop, &mx.accept);
    ev_timer_stop(loop, &mx.pause);
    close(mx.fd);
    mx.fd = -1;
}

/* ===== the Lua side ===== */

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* core.metrics_listen(addr) -> true | nil, message */
static int l_metrics_listen(lua_State *L)
{
    const char *addr = luaL_checkstring(L, 1);
    char err[512];
    if (sn_metrics_listen(addr, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: metrics: %s: %s", addr, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.metrics_serving() -> the address served, or nil */
static int l_metrics_serving(lua_State *L)
{
    if (mx.fd < 0)
        return 0;
    lua_pushstring(L, mx.addr);
    return 1;
}

/* ===== the handler-start histogram: the hot path's one C call =====
 * Measured by callgrind on a live SQLite watcher (bench/RESULTS.md): 3-4% of an event's
 * instructions, about as much as the Lua version it replaced (clock(), a walk of the bounds,
 * four field updates); kept in C so the bounds are written once and a handler's event table
 * is never touched by the count. */

static const double mx_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define MX_NB (sizeof mx_bounds / sizeof mx_bounds[0])

typedef struct {
    double sum;
    lua_Integer count;
    lua_Integer n[MX_NB + 1]; /* per bucket, not cumulative; [MX_NB]: above the last bound */
} mx_hist;

/* A histogram is the upvalue of its own observe function, so the hot path's call checks no
 * metatable (luaL_checkudata was a third of its cost) and no other userdata can reach it. */
static int observe(lua_State *L)
{
    mx_hist *h = lua_touserdata(L, lua_upvalueindex(1));
    int isnum;
    double since = lua_tonumberx(L, 1, &isnum), now;
    if (!isnum)
        return 0;
    if (lua_isnoneornil(L, 2)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    } else
        now = luaL_checknumber(L, 2);
    double d = now - since;
    if (!(d > 0))
        d = 0; /* and NaN */
    size_t i = 0;
    while (i < MX_NB && d > mx_bounds[i])
        i++;
    h->n[i]++;
    h->count++;
    h->sum += d;
    return 0;
}

/* core.histogram() -> observe, a new histogram of seconds, every count 0. observe(since[, now])
 * counts now - since (now: this machine's clock, as core.now() reads it; a negative difference
 * as 0). A since that is not a number (a handler may have changed the event) is not counted:
 * the call runs outside the handler's pcall. */
static int l_histogram(lua_State *L)
{
    mx_hist *h = lua_newuserdatauv(L, sizeof *h, 0);
    memset(h, 0, sizeof *h);
    lua_pushcclosure(L, observe, 1);
    return 1;
}

/* core.histogram_read(observe) -> sum, count, { cumulative count at each bound } */
static int l_histogram_read(lua_State *L)
{
    luaL_argexpected(L, lua_tocfunction(L, 1) == observe, 1, "a histogram's observe function");
    lua_getupvalue(L, 1, 1);
    mx_hist *h = lua_touserdata(L, -1);
    lua_pushnumber(L, h->sum);
    lua_pushinteger(L, h->count);
    lua_createtable(L, (int)MX_NB, 0);
    lua_Integer cum = 0;
    for (size_t i = 0; i < MX_NB; i++) {
        cum += h->n[i];
        lua_pushinteger(L, cum);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 3;
}

/* core.histogram_bounds() -> { upper bound of each bucket, in seconds } */
static int l_histogram_bounds(lua_State *L)
{
    lua_createtable(L, (int)MX_NB, 0);
    for (size_t i = 0; i < MX_NB; i++) {
        lua_pushnumber(L, mx_bounds[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* The state's entry goes as the state closes (its sentinel's __gc). */
static int hook_sentinel_gc(lua_State *L)
{
    lua_State *M = main_thread(L);
    for (int i = 0; i < mx.nhooks; i++)
        if (mx.hooks[i].L == M) {
            memmove(&mx.hooks[i], &mx.hooks[i + 1], (size_t)(mx.nhooks - i - 1) * sizeof mx.hooks[0]);
            mx.nhooks--;
            break;
        }
    return 0;
}

/* core.metrics_hook(fn): fn(path) -> status, body[, content type] answers every path but
 * /health, from this state until it closes or a newer state sets its own. */
static int l_metrics_hook(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *M = main_thread(L);
    hook_sentinel_gc(L); /* set again: the newest */
    if (mx.nhooks == MX_HOOKS) /* never more than two states at once: the oldest is stale */
        hook_sentinel_gc(mx.hooks[0].L);
    lua_settop(L, 1);
    mx.hooks[mx.nhooks].L = M;
    mx.hooks[mx.nhooks].ref = luaL_ref(L, LUA_REGISTRYINDEX);
    mx.nhooks++;
    sn_at_close(L, "sqlnotify.metrics_sentinel", hook_sentinel_gc);
    return 0;
}

void sn_metrics_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"metrics_listen", l_metrics_listen},
        {"metrics_serving", l_metrics_serving},
        {"metrics_hook", l_metrics_hook},
        {"histogram", l_histogram},
        {"histogram_read", l_histogram_read},
        {"histogram_bounds", l_histogram_bounds},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
