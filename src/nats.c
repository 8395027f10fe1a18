/*
 * nats.c — sqlnotify.nats: NATS and JetStream publishing: the NATS C client, on our loop.
 *
 * cnats reads and writes the socket only when our loop says so (natsOptions_SetEventLoop: the
 * adapter below, an ev_io per connection driving natsConnection_ProcessReadEvent and
 * ProcessWriteEvent). cnats also calls into us from threads of its own: the adapter's
 * callbacks from its reconnect and ping-timer threads, the JetStream publish-ack handler and
 * the request replies from its message-delivery threads, the disconnect and reconnect
 * notices from its callback thread. None of those touch Lua or libev: they post to one
 * process-wide mailbox (a mutex-protected queue and an ev_async) that the loop thread
 * drains. A post names its client by number, never by pointer, so one that arrives after
 * the client closed finds nothing and is dropped.
 *
 * Connecting: natsOptions_SetRetryOnFailedConnect(true, ...), on the loop thread. The
 * constructor makes one attempt bounded by connect_timeout (a refused port fails at once);
 * when it fails cnats goes on trying from its reconnect thread, forever, and the calls made
 * meanwhile are buffered by cnats and answered by their deadline. Connecting from a thread
 * instead would leave calls with no connection object to buffer them in.
 *
 * cnats gives a connection up for good in one case: a server that refuses the credentials
 * twice in a row (an authorization violation closes it whatever the reconnect limit). Then
 * (its closed callback, or a call that finds it closed first) we make a new one, at once and
 * then after the shared backoff (sn_backoff), each attempt on the loop thread like the first
 * but without cnats's retry, so that it says why it failed. Meanwhile calls, and the ones
 * waiting on the closed connection, fail at once with that cause. Each connection gets a new
 * client number, so what the old one still posts finds nothing.
 */
#include <lauxlib.h>

#include "clients.h"
#include "dialect.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_NATS

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#define NATS_META "sqlnotify.nats_conn"

/* The shared backoff (sn_backoff) between connections cnats closed: 50-100 ms up to 2.5-5 s. */
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0

/* K_HELD: a publish made before the first connection, keyed by its own address: cnats
 * refuses headers (Nats-Msg-Id) until the server said it takes them, so it waits here.
 * K_LOST: a call on a connection cnats closed, keyed likewise, answered from the loop. */
enum { K_PUB = 1, K_REQ = 2, K_HELD = 3, K_LOST = 4 };

struct client;

/* A call waiting for its answer: a JetStream publish (keyed by its natsMsg's address, which
 * cnats hands back with the ack, and which cannot be reused before we destroy the message)
 * or a request (keyed by the last token of its reply subject). */
typedef struct pend {
    struct pend *next; /* hash chain */
    struct client *c;
    int kind;
    uintptr_t key;
    char *subject;     /* for messages */
    natsMsg *held;     /* K_HELD: the message, and its options */
    char *msg_id, *stream;
    const char *why;   /* set: answer this instead of the timeout (the client closed) */
    char *lost;        /* K_LOST: the whole answer ("<url>: not connected (<cause>)") */
    sn_reply reply;
    ev_timer timer;
} pend;

typedef struct client {
    uint64_t id;
    struct client *next; /* the registry, loop thread only */
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *rsub; /* request replies: <inbox>.* */
    char *inbox;            /* "<inbox>." */
    uint64_t token;
    ev_io io;
    int fd, events, io_on;
    pend **buckets;
    size_t nbuckets, count;
    double timeout, ctimeout;
    char *url;   /* with the credentials: handed to cnats only, never shown */
    char *name;  /* the client name, or NULL */
    char *where; /* the URL without the password: for messages */
    int closed;  /* 1: closed by close(); the pendings are being answered */
    int up;      /* this connection connected: cnats knows the server takes headers */
    int lost;    /* a connection was closed by cnats since the last one up: log the next up */
    int freed;   /* the cleanup ran */
    ev_timer retry;     /* a new connection once cnats closed the last one (nc is NULL then) */
    sn_backoff backoff;
    char cause[256];    /* why it is not connected: the calls made meanwhile say it */
    char logged[256];   /* the last cause logged at warn since it was up: repeats are not */
    char err_logged[256]; /* likewise for cnats's asynchronous errors */
    char hint[256];       /* cnats's last asynchronous error: why it may close the connection */
} client;

/* ===== the mailbox: from cnats's threads to the loop thread ===== */

enum { P_ATTACH, P_READ, P_WRITE, P_DETACH, P_ACK, P_REPLY, P_DOWN, P_UP, P_ERROR, P_CLOSED };

typedef struct post {
    struct post *next;
    int type;
    uint64_t id;
    int fd, add;
    natsMsg *msg;
    natsStatus status;
    int errcode;
    char *text, *stream;
    uint64_t seq;
    int dup;
} post;

static pthread_mutex_t mb_mu = PTHREAD_MUTEX_INITIALIZER;
static post *mb_head, *mb_tail;
static ev_async mb_async;
static struct ev_loop *mb_loop;
static pthread_t loop_thread;
static client *registry;
static uint64_t next_id = 1;

static client *find(uint64_t id)
{
    for (client *c = registry; c != NULL; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void post_free(post *p)
{
    if (p->msg != NULL)
        natsMsg_Destroy(p->msg);
    free(p->text);
    free(p->stream);
    free(p);
}

static void post_put(post *p)
{
    pthread_mutex_lock(&mb_mu);
    if (mb_tail != NULL)
        mb_tail->next = p;
    else
        mb_head = p;
    mb_tail = p;
    struct ev_loop *l = mb_loop;
    pthread_mutex_unlock(&mb_mu);
    if (l != NULL)
        ev_async_send(l, &mb_async);
}

static post *post_take(void)
{
    pthread_mutex_lock(&mb_mu);
    post *p = mb_head;
    if (p != NULL) {
        mb_head = p->next;
        if (mb_head == NULL)
            mb_tail = NULL;
    }
    pthread_mutex_unlock(&mb_mu);
    return p;
}

static int mailbox_empty(void)
{
    pthread_mutex_lock(&mb_mu);
    int empty = mb_head == NULL;
    pthread_mutex_unlock(&mb_mu);
    return empty;
}

/* ===== the event-loop adapter (cnats's natsOptions_SetEventLoop) ===== */

static void on_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    client *c = w->data;
    if (revents & EV_ERROR) /* the fd went away under the watcher: cnats notices on its own */
        return;
    if ((revents & EV_READ) && c->nc != NULL)
        natsConnection_ProcessReadEvent(c->nc);
    if ((revents & EV_WRITE) && c->nc != NULL && c->io_on)
        natsConnection_ProcessWriteEvent(c->nc);
}

static void io_update(client *c)
{
    struct ev_loop *l = sn_loop();
    if (c->io_on) {
        ev_io_stop(l, &c->io);
        c->io_on = 0;
    }
    if (c->fd >= 0 && c->events != 0 && !c->freed) {
        ev_io_set(&c->io, c->fd, c->events);
        ev_io_start(l, &c->io);
        c->io_on = 1;
    }
}

static void adapter_apply(uint64_t id, int type, int fd, int add)
{
    client *c = find(id);
    if (c == NULL)
        return;
    switch (type) {
    case P_ATTACH: /* connected or reconnected: a new socket */
        c->fd = fd;
        c->events = EV_READ;
        break;
    case P_READ:
        c->events = add ? (c->events | EV_READ) : (c->events & ~EV_READ);
        break;
    case P_WRITE:
        c->events = add ? (c->events | EV_WRITE) : (c->events & ~EV_WRITE);
        break;
    case P_DETACH:
        c->fd = -1;
        c->events = 0;
        break;
    }
    io_update(c);
}

/* On the loop thread with nothing queued before it: at once; else behind what is queued,
 * so the order cnats asked in is kept. */
static natsStatus adapter(uint64_t id, int type, int fd, int add)
{
    if (pthread_equal(pthread_self(), loop_thread) && mailbox_empty()) {
        adapter_apply(id, type, fd, add);
        return NATS_OK;
    }
    post *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NATS_NO_MEMORY;
    p->type = type;
    p->id = id;
    p->fd = fd;
    p->add = add;
    post_put(p);
    return NATS_OK;
}

/* "loop" is the client's number: attach's userData becomes it too. */
static natsStatus ad_attach(void **userData, void *loop, natsConnection *nc, natsSock fd)
{
    (void)nc;
    *userData = loop;
    return adapter((uint64_t)(uintptr_t)loop, P_ATTACH, (int)fd, 1);
}

static natsStatus ad_read(void *userData, bool add)
{
    return adapter((uint64_t)(uintptr_t)userData, P_READ, -1, add);
}

static natsStatus ad_write(void *userData, bool add)
{
    return adapter((uint64_t)(uintptr_t)userData, P_WRITE, -1, add);
}

static natsStatus ad_detach(void *userData)
{
    return adapter((uint64_t)(uintptr_t)userData, P_DETACH, -1, 0);
}

/* ===== cnats's threads: acks, replies, notices ===== */

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    post *p = calloc(1, sizeof *p);
    if (p == NULL) { /* the call's deadline answers it */
        natsMsg_Destroy(msg);
        return;
    }
    p->type = P_ACK;
    p->id = (uint64_t)(uintptr_t)closure;
    p->msg = msg; /* destroyed on the loop thread, after the match: its address is the key */
    if (pa != NULL) {
        p->stream = strdup(pa->Stream != NULL ? pa->Stream : "");
        p->seq = pa->Sequence;
        p->dup = pa->Duplicate;
    } else {
        p->status = pae != NULL ? pae->Err : NATS_ERR;
        p->errcode = pae != NULL ? (int)pae->ErrCode : 0;
        p->text = strdup(pae != NULL && pae->ErrText != NULL ? pae->ErrText : natsStatus_GetText(p->status));
    }
    post_put(p);
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    post *p = calloc(1, sizeof *p);
    if (p == NULL) {
        natsMsg_Destroy(msg);
        return;
    }
    p->type = P_REPLY;
    p->id = (uint64_t)(uintptr_t)closure;
    p->msg = msg;
    post_put(p);
}

static void notice(uint64_t id, int type, const char *text)
{
    post *p = calloc(1, sizeof *p);
    if (p == NULL)
        return;
    p->type = type;
    p->id = id;
    p->text = text != NULL ? strdup(text) : NULL;
    post_put(p);
}

static void on_down(natsConnection *nc, void *closure)
{
    (void)nc;
    notice((uint64_t)(uintptr_t)closure, P_DOWN, NULL);
}

static void on_up(natsConnection *nc, void *closure)
{
    (void)nc;
    notice((uint64_t)(uintptr_t)closure, P_UP, NULL);
}

/* cnats's texts start with where in its sources they were made: "(conn.c:3041): ". */
static const char *plain(const char *text)
{
    if (text == NULL || text[0] != '(')
        return text;
    const char *end = strstr(text, "): ");
    return end != NULL && memchr(text, ' ', (size_t)(end - text)) == NULL ? end + 3 : text;
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)sub;
    const char *last = NULL;
    natsConnection_GetLastError(nc, &last);
    notice((uint64_t)(uintptr_t)closure, P_ERROR, last != NULL && *last ? plain(last) : natsStatus_GetText(err));
}

/* cnats gave the connection up (or close() closed it): its last error says why. */
static void on_closed(natsConnection *nc, void *closure)
{
    const char *last = NULL;
    natsStatus s = natsConnection_GetLastError(nc, &last);
    notice((uint64_t)(uintptr_t)closure, P_CLOSED,
           last != NULL && *last ? plain(last) : s != NATS_OK ? natsStatus_GetText(s) : NULL);
}

/* ===== pending calls ===== */

static size_t slot(client *c, int kind, uintptr_t key)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull + (uint64_t)kind;
    return (size_t)(h >> 32) & (c->nbuckets - 1);
}

static void pend_insert(client *c, pend *p)
{
    if (c->count >= c->nbuckets * 2) { /* grow */
        size_t n = c->nbuckets * 4;
        pend **b = calloc(n, sizeof *b);
        if (b != NULL) {
            pend **old = c->buckets;
            size_t on = c->nbuckets;
            c->buckets = b;
            c->nbuckets = n;
            for (size_t i = 0; i < on; i++)
                for (pend *q = old[i], *nx; q != NULL; q = nx) {
                    nx = q->next;
                    size_t s = slot(c, q->kind, q->key);
                    q->next = b[s];
                    b[s] = q;
                }
            free(old);
        }
    }
    size_t s = slot(c, p->kind, p->key);
    p->next = c->buckets[s];
    c->buckets[s] = p;
    c->count++;
}

static pend *pend_unlink(client *c, int kind, uintptr_t key)
{
    for (pend **pp = &c->buckets[slot(c, kind, key)]; *pp != NULL; pp = &(*pp)->next) {
        pend *p = *pp;
        if (p->kind == kind && p->key == key) {
            *pp = p->next;
            c->count--;
            return p;
        }
    }
    return NULL;
}

static pend *pend_take(client *c, int kind, uintptr_t key)
{
    pend *p = pend_unlink(c, kind, key);
    if (p != NULL)
        ev_timer_stop(sn_loop(), &p->timer);
    return p;
}

static void pend_free(pend *p)
{
    sn_reply_drop(&p->reply);
    if (p->held != NULL)
        natsMsg_Destroy(p->held);
    free(p->msg_id);
    free(p->stream);
    free(p->subject);
    free(p->lost);
    free(p);
}

/* Answer nil, "sqlnotify: nats: <what>" and free. */
static void pend_fail(pend *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pend_fail(pend *p, const char *fmt, ...)
{
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    lua_State *L = sn_reply_push(&p->reply);
    if (L != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: nats: %s", buf);
        sn_reply_call(&p->reply, 2, p->kind == K_REQ ? "nats request" : "nats publish");
    }
    pend_free(p);
}

static const char *status_word(natsConnStatus s)
{
    switch (s) {
    case NATS_CONN_STATUS_CONNECTED: return "connected";
    case NATS_CONN_STATUS_CONNECTING: return "connecting";
    case NATS_CONN_STATUS_RECONNECTING: return "reconnecting";
    case NATS_CONN_STATUS_CLOSED: return "closed";
    default: return "not connected";
    }
}

/* status() and the messages: a connection cnats closed is one we are replacing. */
static natsConnStatus status_of(client *c)
{
    if (c->closed || c->freed)
        return NATS_CONN_STATUS_CLOSED;
    if (c->nc == NULL)
        return NATS_CONN_STATUS_RECONNECTING;
    natsConnStatus s = natsConnection_Status(c->nc);
    return s == NATS_CONN_STATUS_CLOSED ? NATS_CONN_STATUS_RECONNECTING : s;
}

static void on_deadline(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    pend *p = w->data;
    client *c = p->c;
    pend *q = pend_take(c, p->kind, p->key);
    (void)q; /* == p */
    const char *what = p->kind == K_REQ ? "request to" : "publish to";
    if (p->why != NULL) {
        pend_fail(p, "%s '%s': %s", what, p->subject, p->why);
        return;
    }
    if (p->lost != NULL) {
        pend_fail(p, "%s", p->lost);
        return;
    }
    natsConnStatus st = status_of(c);
    if (st == NATS_CONN_STATUS_CONNECTED)
        pend_fail(p, "%s '%s': no answer within %g s%s", what, p->subject, c->timeout,
                  p->kind != K_REQ ? " (no JetStream acknowledgement)" : "");
    else
        pend_fail(p, "%s '%s': no answer within %g s: the connection to %s is down (%s)", what, p->subject,
                  c->timeout, c->where, status_word(st));
}

static pend *pend_new(lua_State *L, client *c, int kind, uintptr_t key, const char *subject, int reply_idx,
                      double timeout)
{
    pend *p = calloc(1, sizeof *p);
    char *s = strdup(subject);
    if (p == NULL || s == NULL) {
        free(p);
        free(s);
        return NULL;
    }
    p->c = c;
    p->kind = kind;
    p->key = kind == K_HELD || kind == K_LOST ? (uintptr_t)p : key;
    p->subject = s;
    p->reply.ref = LUA_NOREF;
    sn_reply_take(L, reply_idx, &p->reply);
    ev_timer_init(&p->timer, on_deadline, timeout, 0);
    p->timer.data = p;
    ev_timer_start(sn_loop(), &p->timer);
    pend_insert(c, p);
    return p;
}

static void release_held(client *c);

/* ===== connections ===== */

/* The options of a connection, its callbacks tagged with the client's current number. retry:
 * a first attempt that fails goes on in cnats's reconnect thread (else Connect says why). */
static natsStatus make_opts(client *c, int retry, natsOptions **out)
{
    void *tag = (void *)(uintptr_t)c->id;
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, c->url);
    if (s == NATS_OK && c->name != NULL) s = natsOptions_SetName(opts, c->name);
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, (int64_t)(c->ctimeout * 1000));
    if (s == NATS_OK) s = natsOptions_SetEventLoop(opts, tag, ad_attach, ad_read, ad_write, ad_detach);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts, true);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1); /* forever */
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK) s = natsOptions_SetReconnectJitter(opts, 100, 1000);
    if (s == NATS_OK && retry) s = natsOptions_SetRetryOnFailedConnect(opts, true, on_up, tag);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_down, tag);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_up, tag);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, on_closed, tag);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, on_error, tag);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        opts = NULL;
    }
    *out = opts;
    return s;
}

/* Close and free the connection and what hangs on it; the watcher lets its socket go. */
static void drop_conn(client *c)
{
    if (c->io_on) {
        ev_io_stop(sn_loop(), &c->io);
        c->io_on = 0;
    }
    c->fd = -1;
    c->events = 0;
    if (c->nc == NULL)
        return;
    /* the closing runs detach on this thread, or queued: either way it finds no socket */
    natsConnection_Close(c->nc);
    if (c->rsub != NULL)
        natsSubscription_Destroy(c->rsub);
    c->rsub = NULL;
    jsCtx_Destroy(c->js);
    c->js = NULL;
    natsConnection_Destroy(c->nc);
    c->nc = NULL;
}

/* At warn, once per cause until a connection is up again: a server that keeps refusing is
 * retried every few seconds, and says the same each time. */
static void log_cause(client *c)
{
    if (strcmp(c->cause, c->logged) == 0)
        return;
    snprintf(c->logged, sizeof c->logged, "%s", c->cause);
    sn_log(SN_LOG_WARN, "nats: %s: not connected (%s); connecting again with backoff", c->where, c->cause);
}

/* Connected (at once, or later through cnats's connected or reconnected callback). */
static void became_up(client *c, int from_cnats)
{
    if (c->lost || from_cnats)
        sn_log(SN_LOG_INFO, "nats: %s %s", c->lost ? "connected again to" : c->up ? "reconnected to" : "connected to",
               c->where);
    c->lost = 0;
    sn_backoff_reset(&c->backoff);
    c->cause[0] = c->logged[0] = c->err_logged[0] = c->hint[0] = '\0';
    if (!c->up)
        release_held(c);
}

/* A connection under a new client number (what the old one still posts finds nothing): one
 * attempt bounded by connect_timeout. The first (retry): when it fails, cnats's reconnect
 * thread goes on and the calls are buffered meanwhile. One after cnats closed the last: no
 * connection unless it connects, and cnats's own words for why not (its closed callback only
 * has "No server available"). NATS_OK: connected or connecting; else c->cause says why. */
static natsStatus connect_now(client *c, int retry)
{
    c->id = next_id++;
    c->up = 0;
    natsOptions *opts = NULL;
    natsStatus s = make_opts(c, retry, &opts);
    if (s == NATS_OK)
        s = natsConnection_Connect(&c->nc, opts);
    if (s == NATS_NOT_YET_CONNECTED) { /* cnats's reconnect thread goes on; calls are buffered meanwhile */
        /* a wrong address is said now, not when the first call times out (cnats keeps no
         * cause here: its error is "Not Yet Connected") */
        snprintf(c->cause, sizeof c->cause, "the first attempt failed");
        log_cause(c);
        s = NATS_OK;
    }
    if (s == NATS_OK) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = (int64_t)(c->timeout * 1000);
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = (void *)(uintptr_t)c->id;
        s = natsConnection_JetStream(&c->js, c->nc, &jo);
    }
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        snprintf(c->cause, sizeof c->cause, "%s", last != NULL && *last ? plain(last) : natsStatus_GetText(s));
        drop_conn(c);
        return s;
    }
    if (natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED)
        became_up(c, 0);
    return NATS_OK;
}

static void schedule_retry(client *c)
{
    ev_timer_stop(sn_loop(), &c->retry);
    ev_timer_set(&c->retry, sn_backoff_next(&c->backoff), 0.);
    ev_timer_start(sn_loop(), &c->retry);
}

static void on_retry(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    client *c = w->data;
    if (c->closed || c->freed || c->nc != NULL)
        return;
    if (connect_now(c, 0) != NATS_OK) {
        log_cause(c);
        schedule_retry(c);
    }
}

/* cnats closed the connection for good (its closed callback came, or a call found it so).
 * The calls waiting on it cannot be answered (their replies would come to its subscription,
 * their acknowledgements to its JetStream context): they become K_LOST, answered from the
 * loop with why, so that this runs no Lua and a call may run it. A new connection is tried at
 * once, then after the backoff. */
static void lost(client *c, const char *why)
{
    drop_conn(c);
    c->lost = 1;
    pend *list = NULL;
    for (size_t i = 0; i < c->nbuckets; i++)
        for (pend *p = c->buckets[i], *nx; p != NULL; p = nx) {
            nx = p->next;
            if (p->why == NULL && p->kind != K_LOST) {
                pend_unlink(c, p->kind, p->key);
                p->next = list;
                list = p;
            }
        }
    /* "No server available" is all cnats keeps; its asynchronous error said more */
    if (why == NULL || strcmp(why, natsStatus_GetText(NATS_NO_SERVER)) == 0)
        why = c->hint[0] != '\0' ? c->hint : why;
    char cause[256];
    snprintf(cause, sizeof cause, "%s", why != NULL ? why : "closed by the NATS client");
    if (connect_now(c, 0) != NATS_OK) {
        snprintf(cause, sizeof cause, "%s", c->cause);
        log_cause(c);
        schedule_retry(c);
    }
    char *text = NULL;
    for (pend *p = list, *nx; p != NULL; p = nx) {
        nx = p->next;
        if (text == NULL && asprintf(&text, "%s: not connected (%s)", c->where, cause) < 0)
            text = NULL;
        p->lost = text != NULL ? strdup(text) : NULL; /* else: the timeout's words */
        p->kind = K_LOST;
        p->key = (uintptr_t)p;
        pend_insert(c, p);
        ev_timer_stop(sn_loop(), &p->timer);
        ev_timer_set(&p->timer, 0, 0);
        ev_timer_start(sn_loop(), &p->timer);
    }
    free(text);
}

/* A call finds the connection closed by cnats before its closed callback came. */
static void check_lost(client *c)
{
    if (c->nc != NULL && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CLOSED)
        lost(c, NULL);
}

/* ===== the loop thread's side of the mailbox ===== */

static void deliver_ack(client *c, post *m)
{
    pend *p = pend_take(c, K_PUB, (uintptr_t)m->msg);
    if (p == NULL) /* answered by its deadline already */
        return;
    if (m->stream != NULL) {
        lua_State *L = sn_reply_push(&p->reply);
        if (L != NULL) {
            lua_createtable(L, 0, 3);
            lua_pushstring(L, m->stream);
            lua_setfield(L, -2, "stream");
            lua_pushinteger(L, (lua_Integer)m->seq);
            lua_setfield(L, -2, "seq");
            lua_pushboolean(L, m->dup);
            lua_setfield(L, -2, "duplicate");
            sn_reply_call(&p->reply, 1, "nats publish");
        }
        pend_free(p);
    } else if (m->status == NATS_NO_RESPONDERS) {
        pend_fail(p, "publish to '%s': no stream takes this subject (no responders)", p->subject);
    } else if (m->status == NATS_TIMEOUT) {
        pend_fail(p, "publish to '%s': no JetStream acknowledgement within %g s", p->subject, c->timeout);
    } else if (m->errcode != 0) {
        pend_fail(p, "publish to '%s': JetStream error %d: %s", p->subject, m->errcode,
                  m->text != NULL ? m->text : "?");
    } else {
        pend_fail(p, "publish to '%s': %s", p->subject, m->text != NULL ? m->text : natsStatus_GetText(m->status));
    }
}

static void deliver_reply(client *c, post *m)
{
    const char *subj = natsMsg_GetSubject(m->msg);
    size_t n = c->inbox != NULL ? strlen(c->inbox) : 0;
    if (subj == NULL || n == 0 || strncmp(subj, c->inbox, n) != 0)
        return;
    char *end = NULL;
    unsigned long long token = strtoull(subj + n, &end, 10);
    if (end == subj + n || *end != '\0')
        return;
    pend *p = pend_take(c, K_REQ, (uintptr_t)token);
    if (p == NULL)
        return;
    if (natsMsg_IsNoResponders(m->msg)) {
        pend_fail(p, "request to '%s': no responders", p->subject);
        return;
    }
    lua_State *L = sn_reply_push(&p->reply);
    if (L != NULL) {
        lua_pushlstring(L, natsMsg_GetData(m->msg), (size_t)natsMsg_GetDataLength(m->msg));
        sn_reply_call(&p->reply, 1, "nats request");
    }
    pend_free(p);
}

/* Posts handled, freed together: natsMsg_Destroy hands each message to cnats's collector
 * thread, waking it only when it sleeps; freed one by one between handlers, every ack paid a
 * futex wake and a context switch on the loop thread (bench/RESULTS.md, Clients). */
enum { DONE_BATCH = 256 };

static void free_done(post **done, int *ndone)
{
    for (int i = 0; i < *ndone; i++)
        post_free(done[i]);
    *ndone = 0;
}

/* One post at a time: what the replies start meanwhile queues behind the rest (adapter).
 * A message is destroyed only after the drain's matching, so its address, the key of a
 * publish, cannot be reused by a publish made meanwhile: it stays unique until then. */
static void on_mailbox(struct ev_loop *l, ev_async *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    post *m, *done[DONE_BATCH];
    int ndone = 0;
    while ((m = post_take()) != NULL) {
        client *c;
        switch (m->type) {
        case P_ATTACH:
        case P_READ:
        case P_WRITE:
        case P_DETACH:
            adapter_apply(m->id, m->type, m->fd, m->add);
            break;
        case P_ACK:
            if ((c = find(m->id)) != NULL)
                deliver_ack(c, m);
            break;
        case P_REPLY:
            if ((c = find(m->id)) != NULL)
                deliver_reply(c, m);
            break;
        case P_DOWN:
            if ((c = find(m->id)) != NULL && !c->closed && !c->lost)
                sn_log(SN_LOG_WARN, "nats: disconnected from %s; reconnecting", c->where);
            break;
        case P_UP:
            if ((c = find(m->id)) != NULL && !c->closed && c->nc != NULL)
                became_up(c, 1);
            break;
        case P_ERROR: /* once per text until it is up again: cnats repeats them on each attempt */
            if ((c = find(m->id)) == NULL || c->closed || m->text == NULL)
                break;
            snprintf(c->hint, sizeof c->hint, "%s", m->text);
            if (strcmp(m->text, c->err_logged) != 0) {
                snprintf(c->err_logged, sizeof c->err_logged, "%s", m->text);
                sn_log(SN_LOG_WARN, "nats: %s: %s", c->where, m->text);
            }
            break;
        case P_CLOSED: /* by cnats (by close(): c->closed; a failed connect_now: nc is NULL) */
            if ((c = find(m->id)) != NULL && !c->closed && c->nc != NULL)
                lost(c, m->text);
            break;
        }
        done[ndone++] = m;
        if (ndone == DONE_BATCH)
            free_done(done, &ndone);
    }
    free_done(done, &ndone);
}

/* cnats keeps threads of its own (timers, callbacks) past the last connection. Loaded as a
 * Lua module, core.so and libnats would be unloaded at lua_close under those threads: keep
 * both mapped for the life of the process. */
static void pin(void *symbol)
{
    Dl_info info;
    if (dladdr(symbol, &info) != 0 && info.dli_fname != NULL)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* The mailbox lives on the current loop (a new one after sn_loop_destroy). */
static void mailbox_start(void)
{
    static int pinned;
    if (!pinned) {
        pinned = 1;
        pin((void *)nats_Open);
        pin((void *)sn_nats_open);
    }
    struct ev_loop *l = sn_loop();
    if (mb_loop == l)
        return;
    pthread_mutex_lock(&mb_mu);
    mb_loop = l;
    pthread_mutex_unlock(&mb_mu);
    loop_thread = pthread_self();
    ev_async_init(&mb_async, on_mailbox);
    ev_async_start(l, &mb_async);
    ev_unref(l); /* the mailbox alone must not keep the loop alive */
}

/* ===== the Lua type ===== */

static client *check_client(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, NATS_META);
    if (c->closed || c->freed)
        luaL_error(L, "sqlnotify: nats: this client is closed");
    return c;
}

static void unregister(client *c)
{
    for (client **pp = &registry; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
}

/* Close the connection. answer: the waiting calls get nil, "client closed" from the loop
 * (close()); else they are dropped (__gc: the state is going). Safe to call twice. */
static void client_cleanup(client *c, int answer)
{
    ev_timer_stop(sn_loop(), &c->retry);
    drop_conn(c);
    c->closed = 1;
    if (answer) {
        for (size_t i = 0; i < c->nbuckets; i++)
            for (pend *p = c->buckets[i]; p != NULL; p = p->next) {
                p->why = "the client was closed";
                ev_timer_stop(sn_loop(), &p->timer);
                ev_timer_set(&p->timer, 0, 0);
                ev_timer_start(sn_loop(), &p->timer);
            }
        return; /* registered until __gc: the answers find the client */
    }
    if (c->buckets != NULL) {
        for (size_t i = 0; i < c->nbuckets; i++)
            for (pend *p = c->buckets[i], *nx; p != NULL; p = nx) {
                nx = p->next;
                ev_timer_stop(sn_loop(), &p->timer);
                pend_free(p);
            }
        free(c->buckets);
        c->buckets = NULL;
        c->nbuckets = c->count = 0;
    }
    unregister(c);
    free(c->inbox);
    c->inbox = NULL;
    free(c->where);
    c->where = NULL;
    free(c->url);
    c->url = NULL;
    free(c->name);
    c->name = NULL;
    c->freed = 1;
}

static int nc_gc(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, NATS_META);
    client_cleanup(c, 0);
    return 0;
}

static int nc_close(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, NATS_META);
    if (!c->freed)
        client_cleanup(c, 1);
    return 0;
}

/* nil, "sqlnotify: nats: publish to 's': nats://host:port: <cnats's last error>" */
static int fail_now(lua_State *L, client *c, const char *what, const char *subject, natsStatus s)
{
    const char *last = nats_GetLastError(NULL);
    lua_pushnil(L);
    lua_pushfstring(L, "sqlnotify: nats: %s '%s': %s: %s", what, subject, c->where,
                    last != NULL && *last ? plain(last) : natsStatus_GetText(s));
    return 2;
}

/* A call while cnats's closed connection waits for its replacement: at once, with the cause. */
static int not_connected(lua_State *L, client *c)
{
    lua_pushnil(L);
    lua_pushfstring(L, "sqlnotify: nats: %s: not connected (%s)", c->where,
                    c->cause[0] != '\0' ? c->cause : "connecting again");
    return 2;
}

/* Hand the message to cnats; *msg stays ours on failure. A pending publish already keyed by
 * this address is one cnats dropped without a word: answered as lost. */
static natsStatus js_send(client *c, natsMsg **msg, const char *msg_id, const char *stream, double left)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = (int64_t)(left * 1000);
    if (po.MaxWait < 1)
        po.MaxWait = 1;
    po.MsgId = msg_id;
    po.ExpectStream = stream;
    uintptr_t key = (uintptr_t)*msg;
    pend *stale = pend_take(c, K_PUB, key);
    if (stale != NULL)
        pend_fail(stale, "publish to '%s': the acknowledgement was lost", stale->subject);
    return js_PublishMsgAsync(c->js, msg, &po);
}

/* The first connection: the held publishes go, with what is left of their deadlines. They
 * are gathered first: answering one runs Lua, which may publish and grow the table. */
static void release_held(client *c)
{
    c->up = 1;
    pend *list = NULL;
    for (size_t i = 0; i < c->nbuckets; i++)
        for (pend *p = c->buckets[i], *nx; p != NULL; p = nx) {
            nx = p->next;
            if (p->kind == K_HELD && p->why == NULL) {
                pend_unlink(c, K_HELD, p->key);
                p->next = list;
                list = p;
            }
        }
    for (pend *p = list, *nx; p != NULL; p = nx) {
        nx = p->next;
        natsMsg *msg = p->held;
        p->held = NULL;
        uintptr_t key = (uintptr_t)msg;
        natsStatus s = js_send(c, &msg, p->msg_id, p->stream, ev_timer_remaining(sn_loop(), &p->timer));
        if (s != NATS_OK) {
            const char *last = nats_GetLastError(NULL);
            natsMsg_Destroy(msg);
            ev_timer_stop(sn_loop(), &p->timer);
            pend_fail(p, "publish to '%s': %s: %s", p->subject, c->where,
                      last != NULL && *last ? plain(last) : natsStatus_GetText(s));
            continue;
        }
        p->kind = K_PUB;
        p->key = key;
        pend_insert(c, p);
    }
}

/* h:publish(subject, data, msg_id|nil, stream|nil, reply) -> true | nil, err (the answer
 * comes through reply). Arguments are checked in nats.lua. */
static int nc_publish(lua_State *L)
{
    client *c = check_client(L);
    const char *subject = luaL_checkstring(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    const char *msg_id = luaL_optstring(L, 4, NULL);
    const char *stream = luaL_optstring(L, 5, NULL);
    luaL_checktype(L, 6, LUA_TFUNCTION);
    if (len > INT32_MAX)
        return luaL_error(L, "sqlnotify: nats: message too large (%zu bytes)", len);
    check_lost(c);
    if (c->nc == NULL)
        return not_connected(L, c);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, data, (int)len);
    if (s != NATS_OK)
        return fail_now(L, c, "publish to", subject, s);
    if (!c->up) { /* held until the first connection (K_HELD) */
        pend *p = pend_new(L, c, K_HELD, 0, subject, 6, c->timeout);
        if (p == NULL || (msg_id != NULL && (p->msg_id = strdup(msg_id)) == NULL)
            || (stream != NULL && (p->stream = strdup(stream)) == NULL)) {
            natsMsg_Destroy(msg);
            return luaL_error(L, "sqlnotify: nats: out of memory");
        }
        p->held = msg;
        lua_pushboolean(L, 1);
        return 1;
    }
    uintptr_t key = (uintptr_t)msg; /* cnats clears msg when it takes it */
    s = js_send(c, &msg, msg_id, stream, c->timeout);
    if (s != NATS_OK) {
        natsMsg_Destroy(msg);
        return fail_now(L, c, "publish to", subject, s);
    }
    if (pend_new(L, c, K_PUB, key, subject, 6, c->timeout) == NULL)
        return luaL_error(L, "sqlnotify: nats: out of memory");
    lua_pushboolean(L, 1);
    return 1;
}

/* h:publish_core(subject, data) -> true | nil, err */
static int nc_publish_core(lua_State *L)
{
    client *c = check_client(L);
    const char *subject = luaL_checkstring(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    if (len > INT32_MAX)
        return luaL_error(L, "sqlnotify: nats: message too large (%zu bytes)", len);
    check_lost(c);
    if (c->nc == NULL)
        return not_connected(L, c);
    natsStatus s = natsConnection_Publish(c->nc, subject, data, (int)len);
    if (s != NATS_OK)
        return fail_now(L, c, "publish to", subject, s);
    lua_pushboolean(L, 1);
    return 1;
}

/* h:request(subject, data, timeout, reply) -> true | nil, err. Replies come to <inbox>.<token>
 * through one subscription, made on the first request. */
static int nc_request(lua_State *L)
{
    client *c = check_client(L);
    const char *subject = luaL_checkstring(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    double timeout = luaL_optnumber(L, 4, c->timeout);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    if (len > INT32_MAX)
        return luaL_error(L, "sqlnotify: nats: message too large (%zu bytes)", len);
    check_lost(c);
    if (c->nc == NULL)
        return not_connected(L, c);
    natsStatus s;
    if (c->rsub == NULL) {
        natsInbox *inbox = NULL;
        s = natsInbox_Create(&inbox);
        if (s != NATS_OK)
            return fail_now(L, c, "request to", subject, s);
        size_t n = strlen(inbox);
        char *prefix = malloc(n + 2), *wild = malloc(n + 3);
        if (prefix == NULL || wild == NULL) {
            free(prefix);
            free(wild);
            natsInbox_Destroy(inbox);
            return luaL_error(L, "sqlnotify: nats: out of memory");
        }
        memcpy(prefix, inbox, n);
        memcpy(prefix + n, ".", 2);
        memcpy(wild, prefix, n + 1);
        memcpy(wild + n + 1, "*", 2);
        natsInbox_Destroy(inbox);
        s = natsConnection_Subscribe(&c->rsub, c->nc, wild, on_reply, (void *)(uintptr_t)c->id);
        free(wild);
        if (s != NATS_OK) {
            free(prefix);
            c->rsub = NULL;
            return fail_now(L, c, "request to", subject, s);
        }
        free(c->inbox);
        c->inbox = prefix;
    }
    char reply[256];
    uint64_t token = ++c->token;
    snprintf(reply, sizeof reply, "%s%llu", c->inbox, (unsigned long long)token);
    s = natsConnection_PublishRequest(c->nc, subject, reply, data, (int)len);
    if (s != NATS_OK)
        return fail_now(L, c, "request to", subject, s);
    if (pend_new(L, c, K_REQ, (uintptr_t)token, subject, 5, timeout) == NULL)
        return luaL_error(L, "sqlnotify: nats: out of memory");
    lua_pushboolean(L, 1);
    return 1;
}

/* h:status() -> "connected" | "reconnecting" | ... | "closed" */
static int nc_status(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, NATS_META);
    lua_pushstring(L, status_word(status_of(c)));
    return 1;
}

static const luaL_Reg nc_meth[] = {
    {"publish", nc_publish},
    {"publish_core", nc_publish_core},
    {"request", nc_request},
    {"status", nc_status},
    {"close", nc_close},
    {NULL, NULL},
};

static const luaL_Reg nc_metameth[] = {
    {"__gc", nc_gc},
    {"__close", nc_gc},
    {"__index", NULL},
    {NULL, NULL},
};

static void createnatsmeta(lua_State *L)
{
    luaL_newmetatable(L, NATS_META);
    luaL_setfuncs(L, nc_metameth, 0);
    luaL_newlibtable(L, nc_meth);
    luaL_setfuncs(L, nc_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* core.nats_new(url, where, timeout, connect_timeout, name|nil) -> handle. The options were
 * checked in nats.lua; where is the URL without the password. A server that cannot be
 * reached or refuses is no error: cnats, then we, keep trying (the calls say why meanwhile). */
static int nats_new(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    const char *where = luaL_checkstring(L, 2);
    double timeout = luaL_checknumber(L, 3);
    double ctimeout = luaL_checknumber(L, 4);
    const char *name = luaL_optstring(L, 5, NULL);

    client *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->freed = 1; /* nothing to release until it is registered */
    ev_init(&c->io, on_io);
    c->io.data = c;
    ev_init(&c->retry, on_retry);
    c->retry.data = c;
    luaL_setmetatable(L, NATS_META);

    mailbox_start();
    c->timeout = timeout;
    c->ctimeout = ctimeout;
    c->backoff = (sn_backoff){.first = BACKOFF_MIN, .cap = BACKOFF_MAX};
    c->where = strdup(where);
    c->url = strdup(url);
    c->name = name != NULL ? strdup(name) : NULL;
    c->nbuckets = 64;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (c->where == NULL || c->url == NULL || (name != NULL && c->name == NULL) || c->buckets == NULL) {
        free(c->where);
        free(c->url);
        free(c->name);
        free(c->buckets);
        c->where = c->url = c->name = NULL;
        c->buckets = NULL;
        return luaL_error(L, "sqlnotify: nats: out of memory");
    }
    c->id = next_id++;
    c->next = registry;
    registry = c;
    c->freed = 0;

    natsOptions *opts = NULL;
    natsStatus s = make_opts(c, 1, &opts); /* a bad option raises; connect_now makes them anew */
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        const char *last = nats_GetLastError(NULL);
        client_cleanup(c, 0);
        return luaL_error(L, "sqlnotify: nats: bad option for %s: %s", where,
                          last != NULL && *last ? plain(last) : natsStatus_GetText(s));
    }
    if (connect_now(c, 1) != NATS_OK) {
        c->lost = 1;
        log_cause(c);
        schedule_retry(c);
    }
    return 1;
}

/* The host is leaving, its states closed: cnats's own threads are joined and its memory
 * freed, so that nothing of it is left running (or reported by a leak checker). */
void sn_nats_shutdown(void)
{
    if (mb_loop == NULL)
        return; /* never used */
    nats_CloseAndWait(2000);
}

void sn_nats_open(lua_State *L)
{
    createnatsmeta(L);
    lua_pushcfunction(L, nats_new);
    lua_setfield(L, -2, "nats_new");
}

#else

void sn_nats_shutdown(void) {}

void sn_nats_open(lua_State *L)
{
    sn_client_missing(L, "nats_new", "sqlnotify.nats", "the NATS C client", "libnats-dev");
}

#endif
