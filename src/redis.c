/*
 * redis.c — sqlnotify.redis: a Redis client: hiredis's asynchronous context, on our loop.
 *
 * One connection per client, driven by hiredis's libev adapter on sn_loop(). Calls are
 * pipelined by hiredis (several handlers' calls in flight at once); a call made while the
 * connection is down (connecting, AUTH/SELECT, backoff after a loss) waits in our queue up to
 * its deadline and is sent once the connection is ready again. Replies for commands in flight
 * when the connection died answer "connection lost": the caller decides (assert: a retry).
 *
 * Lifetimes: the client's state (struct rclient) is malloc'd, not the userdata, and counted:
 * hiredis may call a command's callback after the Lua object is gone (a free asked for from
 * inside a callback is deferred by hiredis), so every request and every handshake command
 * holds a reference, the userdata one more until close/__gc.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "clients.h"
#include "dialect.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_HIREDIS

#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define REDIS_META "sqlnotify.redis"

/* The shared backoff (sn_backoff) from 25-50 ms up to 1-2 s: calls wait in the queue
 * meanwhile, so a short Redis restart should cost them little. */
#define BACKOFF_MIN 0.05
#define BACKOFF_MAX 2.0

enum { DOWN, CONNECTING, HANDSHAKE, READY, CLOSED };

struct rclient;

typedef struct rcmd {
    char *buf; /* formatted by redisFormatCommandArgv, until sent */
    int len;
} rcmd;

typedef struct rreq {
    struct rclient *c;
    struct rreq *prev, *next;   /* the client's queue while waiting for a connection */
    struct rreq *lprev, *lnext; /* every request not freed yet */
    sn_reply reply;
    ev_timer timer;   /* the deadline */
    int queued;       /* in the queue (not sent) */
    int done;         /* answered (reply, timeout, lost) or dropped */
    int closed;       /* r:close(): answered "closed" by its timer */
    int busy;         /* its reply is running Lua (which may close the client): not freed */
    int pipeline;     /* r:pipeline: the replies go in a list */
    int ncmd;         /* commands */
    int outstanding;  /* hiredis callbacks still to come */
    int got;          /* replies so far (pipeline) */
    int list;         /* pipeline: registry ref of the replies so far */
    int failed;       /* pipeline: the first command that got an error reply (0: none) */
    rcmd *cmd;
} rreq;

typedef struct rclient {
    lua_State *L;    /* main thread; NULL once closed */
    redisAsyncContext *ac;
    int state;
    int refs;        /* the userdata, requests, handshake commands */
    char *host, *user, *password;
    int port, db;
    double timeout;
    int null_ref;    /* sqlnotify.null: the nil reply */
    ev_timer retry;    /* reconnect after the backoff */
    ev_timer deadline; /* connect + AUTH + SELECT */
    sn_backoff backoff;
    int handshake;   /* handshake replies still to come */
    int lost;        /* a connection was lost, or could not be made (said): log when it is up */
    int ever;        /* it was connected once: the next connection is "again" */
    char why[256];   /* why the connection is not ready (for a call's timeout) */
    char *fatal;     /* AUTH or SELECT refused: calls fail at once until a connection is ready */
    rreq *qh, *qt;   /* calls waiting for a connection, in call order */
    rreq *live;      /* every request not freed yet (close drops their replies) */
} rclient;

typedef struct rhandle {
    rclient *c; /* NULL: closed */
} rhandle;

static void connect_now(rclient *c);
static void drop_connection(rclient *c, const char *why);

/* ===== lifetimes ===== */

static void client_unref(rclient *c)
{
    if (--c->refs > 0)
        return;
    free(c->host);
    free(c->user);
    if (c->password != NULL) {
        memset(c->password, 0, strlen(c->password));
        free(c->password);
    }
    free(c->fatal);
    free(c);
}

static void unqueue(rclient *c, rreq *q)
{
    if (!q->queued)
        return;
    if (q->prev) q->prev->next = q->next; else c->qh = q->next;
    if (q->next) q->next->prev = q->prev; else c->qt = q->prev;
    q->prev = q->next = NULL;
    q->queued = 0;
}

static void free_cmds(rreq *q)
{
    if (q->cmd == NULL)
        return;
    for (int i = 0; i < q->ncmd; i++)
        if (q->cmd[i].buf != NULL)
            redisFreeCommand(q->cmd[i].buf);
    free(q->cmd);
    q->cmd = NULL;
}

/* The request is answered or dropped: release what Lua held. */
static void req_finish(rreq *q)
{
    q->done = 1;
    ev_timer_stop(sn_loop(), &q->timer);
    if (q->list != LUA_NOREF && q->reply.L != NULL)
        luaL_unref(q->reply.L, LUA_REGISTRYINDEX, q->list);
    q->list = LUA_NOREF;
}

/* Free it once answered, out of the queue and with no hiredis callback to come. */
static void req_maybe_free(rreq *q)
{
    if (!q->done || q->queued || q->outstanding > 0 || q->busy)
        return;
    rclient *c = q->c;
    if (q->lprev) q->lprev->lnext = q->lnext; else c->live = q->lnext;
    if (q->lnext) q->lnext->lprev = q->lprev;
    free_cmds(q);
    free(q);
    client_unref(c);
}

/* ===== answers ===== */

/* Push a reply as Lua values (in a protected call: a memory error must not jump across
 * hiredis's frames). */
static void push_value(lua_State *L, redisReply *r, int null_ref, int top)
{
    if (!lua_checkstack(L, 4))
        luaL_error(L, "reply nested too deeply");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_NIL:
        lua_rawgeti(L, LUA_REGISTRYINDEX, null_ref);
        break;
    case REDIS_REPLY_ERROR:
        if (top) { /* the caller turns it into nil, message */
            lua_pushlstring(L, r->str, r->len);
        } else { /* inside an array (EXEC): { err = "ERR ..." } */
            lua_createtable(L, 0, 1);
            lua_pushlstring(L, r->str, r->len);
            lua_setfield(L, -2, "err");
        }
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_value(L, r->element[i], null_ref, 0);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

static int push_protected(lua_State *L)
{
    redisReply *r = lua_touserdata(L, 1);
    int null_ref = (int)lua_tointeger(L, 2);
    int top = lua_toboolean(L, 3);
    push_value(L, r, null_ref, top);
    return 1;
}

/* Push the reply on L; 0 when it could not be converted (the message is pushed instead). */
static int push_reply(lua_State *L, rclient *c, redisReply *r, int top)
{
    lua_pushcfunction(L, push_protected);
    lua_pushlightuserdata(L, r);
    lua_pushinteger(L, c->null_ref);
    lua_pushboolean(L, top);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        lua_pushfstring(L, "sqlnotify: redis: cannot convert the reply: %s", m ? m : "?");
        lua_remove(L, -2);
        return 0;
    }
    return 1;
}

/* Answer nil, message. */
static void answer_error(rreq *q, const char *msg)
{
    lua_State *L = sn_reply_push(&q->reply);
    req_finish(q);
    if (L == NULL)
        return;
    lua_pushnil(L);
    lua_pushstring(L, msg);
    sn_reply_call(&q->reply, 2, "a redis call's reply");
}

/* A call that will not be sent (its deadline passed, the handshake was refused): out of the
 * queue, answered nil and msg, freed unless hiredis still owes it a callback. */
static void fail_request(rclient *c, rreq *q, const char *msg)
{
    unqueue(c, q);
    free_cmds(q);
    q->busy = 1;
    answer_error(q, msg);
    q->busy = 0;
    req_maybe_free(q);
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    rreq *q = w->data;
    rclient *c = q->c;
    char msg[400];
    if (q->closed)
        snprintf(msg, sizeof msg, "sqlnotify: redis: the client was closed (r:close())");
    else if (q->queued)
        snprintf(msg, sizeof msg, "sqlnotify: redis: timeout after %g s waiting for a connection to %s:%d (%s)",
                 c->timeout, c->host, c->port, c->why[0] ? c->why : "connecting");
    else
        snprintf(msg, sizeof msg, "sqlnotify: redis: timeout after %g s waiting for the reply from %s:%d",
                 c->timeout, c->host, c->port);
    fail_request(c, q, msg);
}

/* A command's reply (NULL: the connection is gone, or the client closed). */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rreq *q = privdata;
    rclient *c = q->c;
    redisReply *r = reply;
    q->outstanding--;
    if (r == NULL && c->ac == ac && c->state == READY) {
        /* the connection died: calls made from the replies below must wait for the next one */
        c->state = DOWN;
        snprintf(c->why, sizeof c->why, "connection lost: %s", ac->c.errstr[0] ? ac->c.errstr : "closed");
    }
    if (q->done || q->closed) { /* timed out, or the client closed */
        req_maybe_free(q);
        return;
    }
    lua_State *L = q->reply.L;
    q->busy = 1;
    if (r == NULL) {
        char msg[400];
        snprintf(msg, sizeof msg, "sqlnotify: redis: connection lost to %s:%d (%s)", c->host, c->port,
                 ac->c.errstr[0] ? ac->c.errstr : "closed");
        answer_error(q, msg);
    } else if (!q->pipeline) {
        if (sn_reply_push(&q->reply) == NULL) {
            req_finish(q);
        } else if (r->type == REDIS_REPLY_ERROR) {
            req_finish(q);
            lua_pushnil(L);
            lua_pushfstring(L, "sqlnotify: redis: %s", r->str);
            sn_reply_call(&q->reply, 2, "a redis call's reply");
        } else {
            int ok = push_reply(L, c, r, 1);
            req_finish(q);
            if (!ok)
                lua_pushnil(L), lua_insert(L, -2);
            sn_reply_call(&q->reply, ok ? 1 : 2, "a redis call's reply");
        }
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, q->list);
        int i = ++q->got;
        if (push_reply(L, c, r, 0)) {
            lua_rawseti(L, -2, i);
            if (r->type == REDIS_REPLY_ERROR && q->failed == 0)
                q->failed = i;
            lua_pop(L, 1);
        } else {
            lua_pop(L, 2);
            q->failed = q->failed ? q->failed : -i;
        }
        if (q->got == q->ncmd) {
            int list = q->list, failed = q->failed;
            q->list = LUA_NOREF;
            req_finish(q);
            if (sn_reply_push(&q->reply) == NULL) {
                luaL_unref(L, LUA_REGISTRYINDEX, list);
            } else if (failed == 0) {
                lua_rawgeti(L, LUA_REGISTRYINDEX, list);
                luaL_unref(L, LUA_REGISTRYINDEX, list);
                sn_reply_call(&q->reply, 1, "a redis pipeline's reply");
            } else {
                lua_pushnil(L);
                if (failed > 0) {
                    lua_rawgeti(L, LUA_REGISTRYINDEX, list);
                    lua_rawgeti(L, -1, failed);
                    lua_getfield(L, -1, "err");
                    lua_pushfstring(L, "sqlnotify: redis: pipeline command %d of %d failed: %s", failed, q->ncmd,
                                    lua_tostring(L, -1));
                    lua_replace(L, -4);
                    lua_pop(L, 2);
                } else {
                    lua_pushfstring(L, "sqlnotify: redis: pipeline command %d of %d: cannot convert the reply",
                                    -failed, q->ncmd);
                }
                lua_rawgeti(L, LUA_REGISTRYINDEX, list);
                luaL_unref(L, LUA_REGISTRYINDEX, list);
                sn_reply_call(&q->reply, 3, "a redis pipeline's reply");
            }
        }
    }
    q->busy = 0;
    req_maybe_free(q);
}

/* Hand the request's commands to hiredis (state READY). */
static void send_req(rclient *c, rreq *q)
{
    for (int i = 0; i < q->ncmd; i++) {
        /* cannot fail on a ready context: hiredis appends to its output buffer */
        if (redisAsyncFormattedCommand(c->ac, on_reply, q, q->cmd[i].buf, (size_t)q->cmd[i].len) == REDIS_OK)
            q->outstanding++;
        else
            q->got++, q->failed = q->failed ? q->failed : -(i + 1);
    }
    free_cmds(q);
}

/* ===== the connection ===== */

/* The connection is ready: the calls that waited go, in call order. */
static void became_ready(rclient *c)
{
    c->state = READY;
    ev_timer_stop(sn_loop(), &c->deadline);
    sn_backoff_reset(&c->backoff);
    c->why[0] = '\0';
    free(c->fatal);
    c->fatal = NULL;
    if (c->lost) {
        sn_log(SN_LOG_INFO, "redis %s:%d: connected%s", c->host, c->port, c->ever ? " again" : "");
        c->lost = 0;
    }
    c->ever = 1;
    while (c->qh != NULL && c->state == READY) {
        rreq *q = c->qh;
        unqueue(c, q);
        send_req(c, q);
        req_maybe_free(q);
    }
}

static void schedule_retry(rclient *c)
{
    c->state = DOWN;
    ev_timer_stop(sn_loop(), &c->deadline);
    double d = sn_backoff_next(&c->backoff);
    ev_timer_stop(sn_loop(), &c->retry);
    ev_timer_set(&c->retry, d, 0.);
    ev_timer_start(sn_loop(), &c->retry);
}

/* The server refused AUTH or SELECT: the waiting calls get its answer now; later calls get it
 * at once until a connection is ready (the server's configuration may change: we retry). The
 * refusal is logged when its answer is new: retried every 1-2 s, the same one is said once. */
static void refuse_waiting(rclient *c, const char *what, const char *err)
{
    char msg[400];
    snprintf(msg, sizeof msg, "sqlnotify: redis: %s refused by %s:%d: %s", what, c->host, c->port, err);
    if (c->fatal == NULL || strcmp(c->fatal, msg) != 0)
        sn_log(SN_LOG_WARN, "redis %s:%d: %s refused: %s; trying again (said again when the answer changes)",
               c->host, c->port, what, err);
    free(c->fatal);
    c->fatal = strdup(msg);
    snprintf(c->why, sizeof c->why, "%s refused: %s", what, err);
    while (c->qh != NULL)
        fail_request(c, c->qh, msg);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata)
{
    rclient *c = privdata;
    redisReply *r = reply;
    c->handshake--;
    if (c->ac == ac && c->state == HANDSHAKE) {
        if (r == NULL) {
            snprintf(c->why, sizeof c->why, "connection lost during AUTH/SELECT: %s",
                     ac->c.errstr[0] ? ac->c.errstr : "closed");
        } else if (r->type == REDIS_REPLY_ERROR) {
            int select = c->handshake == 0 && c->db != 0; /* SELECT is sent last */
            refuse_waiting(c, select ? "SELECT" : "AUTH", r->str);
            if (c->state != CLOSED) { /* the replies ran Lua: it may have closed the client */
                drop_connection(c, NULL); /* deferred by hiredis: we are in its callback */
                schedule_retry(c);
            }
        } else if (c->handshake == 0) {
            became_ready(c);
        }
    }
    client_unref(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rclient *c = ac->data;
    if (c == NULL || c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this */
        snprintf(c->why, sizeof c->why, "%s", ac->c.errstr[0] ? ac->c.errstr : "cannot connect");
        if (!c->lost) /* once an outage (a wrong address too): the loss said it already */
            sn_log(SN_LOG_WARN, "redis %s:%d: cannot connect (%s); trying again with backoff", c->host, c->port,
                   c->why);
        c->lost = 1;
        c->ac = NULL;
        schedule_retry(c);
        return;
    }
    redisAsyncContext *w = (redisAsyncContext *)ac;
    c->state = HANDSHAKE;
    if (c->password != NULL) {
        int rc = c->user != NULL
                     ? redisAsyncCommand(w, on_handshake, c, "AUTH %s %s", c->user, c->password)
                     : redisAsyncCommand(w, on_handshake, c, "AUTH %s", c->password);
        if (rc == REDIS_OK)
            c->handshake++, c->refs++;
    }
    if (c->db != 0 && redisAsyncCommand(w, on_handshake, c, "SELECT %d", c->db) == REDIS_OK)
        c->handshake++, c->refs++;
    if (c->handshake == 0)
        became_ready(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    rclient *c = ac->data;
    if (c == NULL || c->ac != ac)
        return;
    snprintf(c->why, sizeof c->why, "connection lost: %s", ac->c.errstr[0] ? ac->c.errstr : "closed by the server");
    sn_log(SN_LOG_WARN, "redis %s:%d: %s; reconnecting", c->host, c->port, c->why);
    c->lost = 1;
    c->ac = NULL; /* hiredis frees it after this */
    schedule_retry(c);
}

/* Forget the context and free it (hiredis defers the free when called from its callback);
 * its pending commands' callbacks run with NULL. why: the reason to keep for the calls. */
static void drop_connection(rclient *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    if (why != NULL)
        snprintf(c->why, sizeof c->why, "%s", why);
    if (ac == NULL)
        return;
    c->ac = NULL;
    ac->data = NULL;
    ac->onConnect = NULL;
    ac->onDisconnect = NULL;
    if (c->state != CLOSED)
        c->state = DOWN;
    redisAsyncFree(ac);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    rclient *c = w->data;
    char why[64];
    snprintf(why, sizeof why, "no answer within %g s while %s", c->timeout,
             c->state == CONNECTING ? "connecting" : "sending AUTH/SELECT");
    drop_connection(c, why);
    schedule_retry(c);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    connect_now(w->data);
}

static void connect_now(rclient *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (ac == NULL) {
        snprintf(c->why, sizeof c->why, "out of memory");
        schedule_retry(c);
        return;
    }
    if (ac->err) {
        snprintf(c->why, sizeof c->why, "%s", ac->c.errstr);
        redisAsyncFree(ac);
        schedule_retry(c);
        return;
    }
    ac->data = c;
    redisLibevAttach(sn_loop(), ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = CONNECTING;
    ev_timer_stop(sn_loop(), &c->deadline);
    ev_timer_set(&c->deadline, c->timeout, 0.);
    ev_timer_start(sn_loop(), &c->deadline);
}

/* ===== the Lua object ===== */

static rclient *check_client(lua_State *L)
{
    rhandle *h = luaL_checkudata(L, 1, REDIS_META);
    if (h->c == NULL || h->c->state == CLOSED)
        luaL_error(L, "sqlnotify: this redis client is closed");
    return h->c;
}

/* Stop everything. answer: the calls not answered get "closed" from a timer at 0 s (r:close();
 * never from inside the call that closes); else their replies are dropped (__gc, the state is
 * closing). Safe twice. */
static void shut(rclient *c, int answer)
{
    ev_timer_stop(sn_loop(), &c->retry);
    ev_timer_stop(sn_loop(), &c->deadline);
    for (rreq *q = c->live, *next; q != NULL; q = next) {
        next = q->lnext;
        unqueue(c, q);
        free_cmds(q);
        if (!q->done && answer) {
            q->closed = 1;
            ev_timer_stop(sn_loop(), &q->timer);
            ev_timer_set(&q->timer, 0., 0.);
            ev_timer_start(sn_loop(), &q->timer);
        } else if (!q->done) {
            sn_reply_drop(&q->reply);
            req_finish(q);
        }
        req_maybe_free(q);
    }
    c->state = CLOSED;
    drop_connection(c, NULL); /* the callbacks of the commands in flight only count down */
}

/* r:close(): the connection goes; calls in flight or waiting return nil, "closed". */
static int redis_close(lua_State *L)
{
    rhandle *h = luaL_checkudata(L, 1, REDIS_META);
    if (h->c != NULL && h->c->state != CLOSED)
        shut(h->c, 1);
    return 0;
}

/* __gc: release everything; replies not given are dropped. Safe twice. */
static int redis_gc(lua_State *L)
{
    rhandle *h = luaL_checkudata(L, 1, REDIS_META);
    rclient *c = h->c;
    if (c == NULL)
        return 0;
    h->c = NULL;
    shut(c, 0);
    luaL_unref(c->L, LUA_REGISTRYINDEX, c->null_ref);
    c->null_ref = LUA_NOREF;
    c->L = NULL;
    client_unref(c);
    return 0;
}

/* redis_new(host, port, user, password, db, timeout, null) */
static int redis_new(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    const char *user = luaL_optstring(L, 3, NULL);
    const char *password = luaL_optstring(L, 4, NULL);
    lua_Integer db = luaL_checkinteger(L, 5);
    double timeout = luaL_checknumber(L, 6);
    luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
    luaL_argcheck(L, db >= 0 && db <= 1000000, 5, "database number out of range");
    luaL_argcheck(L, timeout > 0, 6, "timeout must be positive");
    luaL_checkany(L, 7);

    rhandle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->c = NULL;
    luaL_setmetatable(L, REDIS_META);
    rclient *c = calloc(1, sizeof *c);
    if (c == NULL)
        return luaL_error(L, "sqlnotify: out of memory");
    c->refs = 1;
    c->backoff = (sn_backoff){.first = BACKOFF_MIN, .cap = BACKOFF_MAX};
    h->c = c;
    c->host = strdup(host);
    c->user = user ? strdup(user) : NULL;
    c->password = password ? strdup(password) : NULL;
    if (c->host == NULL || (user && !c->user) || (password && !c->password))
        return luaL_error(L, "sqlnotify: out of memory"); /* __gc frees what was made */
    c->port = (int)port;
    c->db = (int)db;
    c->timeout = timeout;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    c->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, 7);
    c->null_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_timer_init(&c->retry, on_retry, 0., 0.);
    c->retry.data = c;
    ev_timer_init(&c->deadline, on_deadline, 0., 0.);
    c->deadline.data = c;
    c->state = DOWN;
    snprintf(c->why, sizeof c->why, "connecting");
    connect_now(c);
    return 1;
}

/* Format one command from the values at from..to (strings or numbers). */
static int format_cmd(lua_State *L, int from, int to, rcmd *out)
{
    int argc = to - from + 1;
    const char *sv[16] = { 0 };
    size_t lv[16] = { 0 };
    const char **argv = sv;
    size_t *argvlen = lv;
    if (argc > 16) {
        argv = malloc(sizeof *argv * (size_t)argc);
        argvlen = malloc(sizeof *argvlen * (size_t)argc);
        if (argv == NULL || argvlen == NULL) {
            free(argv);
            free(argvlen);
            return 0;
        }
    }
    for (int i = 0; i < argc; i++)
        argv[i] = lua_tolstring(L, from + i, &argvlen[i]); /* types checked in redis.lua */
    out->len = redisFormatCommandArgv(&out->buf, argc, argv, argvlen);
    if (argv != sv) {
        free(argv);
        free(argvlen);
    }
    if (out->len < 0)
        out->buf = NULL;
    return out->buf != NULL;
}

static rreq *new_req(lua_State *L, rclient *c, int ncmd, int reply_idx)
{
    luaL_checktype(L, reply_idx, LUA_TFUNCTION); /* before anything is allocated */
    rreq *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->cmd = calloc((size_t)ncmd, sizeof *q->cmd);
    if (q->cmd == NULL) {
        free(q);
        return NULL;
    }
    q->c = c;
    q->ncmd = ncmd;
    q->list = LUA_NOREF;
    q->reply.ref = LUA_NOREF;
    ev_timer_init(&q->timer, on_timeout, c->timeout, 0.);
    q->timer.data = q;
    sn_reply_take(L, reply_idx, &q->reply);
    c->refs++;
    q->lnext = c->live;
    if (c->live) c->live->lprev = q;
    c->live = q;
    return q;
}

/* Start it: now when the connection is ready, else in the queue. Returns 1 (true). */
static int start_req(lua_State *L, rclient *c, rreq *q)
{
    ev_timer_start(sn_loop(), &q->timer);
    if (c->state == READY) {
        send_req(c, q);
    } else {
        q->queued = 1;
        q->prev = c->qt;
        if (c->qt) c->qt->next = q; else c->qh = q;
        c->qt = q;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* An immediate failure: nil, message (the request was never started). */
static int refuse(lua_State *L, rreq *q, const char *msg)
{
    if (q != NULL) {
        sn_reply_drop(&q->reply);
        q->done = 1;
        req_maybe_free(q);
    }
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

/* h:call(arg1, ..., reply): start one command. */
static int redis_call(lua_State *L)
{
    rclient *c = check_client(L);
    int top = lua_gettop(L);
    luaL_argcheck(L, top >= 3, 2, "a command needed");
    if (c->fatal != NULL && c->state != READY)
        return refuse(L, NULL, c->fatal);
    rreq *q = new_req(L, c, 1, top);
    if (q == NULL || !format_cmd(L, 2, top - 1, &q->cmd[0]))
        return refuse(L, q, "sqlnotify: redis: out of memory");
    return start_req(L, c, q);
}

/* h:pipeline(cmds, reply): start the commands of the list (lists of strings), one wait. */
static int redis_pipeline(lua_State *L)
{
    rclient *c = check_client(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    luaL_argcheck(L, n > 0, 2, "at least one command needed");
    int most = 0; /* checked before anything is allocated (redis.lua checked the values) */
    for (int i = 1; i <= n; i++) {
        luaL_argcheck(L, lua_rawgeti(L, 2, i) == LUA_TTABLE, 2, "a list of commands (lists) needed");
        int argc = (int)lua_rawlen(L, -1);
        luaL_argcheck(L, argc > 0, 2, "an empty command");
        most = argc > most ? argc : most;
        lua_pop(L, 1);
    }
    luaL_checkstack(L, most + 4, "too many arguments");
    if (c->fatal != NULL && c->state != READY)
        return refuse(L, NULL, c->fatal);
    rreq *q = new_req(L, c, n, 3);
    if (q == NULL)
        return refuse(L, q, "sqlnotify: redis: out of memory");
    q->pipeline = 1;
    lua_createtable(L, n, 0);
    q->list = luaL_ref(L, LUA_REGISTRYINDEX);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        int base = lua_gettop(L), argc = (int)lua_rawlen(L, base);
        for (int j = 1; j <= argc; j++)
            lua_rawgeti(L, base, j);
        int ok = format_cmd(L, base + 1, base + argc, &q->cmd[i]);
        lua_settop(L, base - 1);
        if (!ok) {
            luaL_unref(L, LUA_REGISTRYINDEX, q->list);
            q->list = LUA_NOREF;
            return refuse(L, q, "sqlnotify: redis: out of memory");
        }
    }
    return start_req(L, c, q);
}

/* h:connected() -> true while the connection is ready. */
static int redis_connected(lua_State *L)
{
    rclient *c = check_client(L);
    lua_pushboolean(L, c->state == READY);
    return 1;
}

static const luaL_Reg redis_meth[] = {
    { "call", redis_call },
    { "pipeline", redis_pipeline },
    { "connected", redis_connected },
    { "close", redis_close },
    { NULL, NULL },
};

static const luaL_Reg redis_metameth[] = {
    { "__index", NULL },
    { "__gc", redis_gc },
    { "__close", redis_close },
    { NULL, NULL },
};

static void createredismeta(lua_State *L)
{
    luaL_newmetatable(L, REDIS_META);
    luaL_setfuncs(L, redis_metameth, 0);
    luaL_newlibtable(L, redis_meth);
    luaL_setfuncs(L, redis_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sn_redis_open(lua_State *L)
{
    createredismeta(L);
    lua_pushcfunction(L, redis_new);
    lua_setfield(L, -2, "redis_new");
}

#else

void sn_redis_open(lua_State *L)
{
    sn_client_missing(L, "redis_new", "sqlnotify.redis", "hiredis", "libhiredis-dev");
}

#endif
