/*
 * kafka.c — sqlnotify.kafka: a Kafka producer: librdkafka, its events served on our loop.
 *
 * librdkafka talks to the brokers from threads of its own; what it has for us (delivery
 * reports, errors, its log lines) waits in its main queue until rd_kafka_poll serves it on
 * the calling thread. That queue writes a byte to a pipe of ours when it stops being empty
 * (rd_kafka_queue_io_event_enable): an io watcher on the pipe, and a one-second timer in
 * case a wake-up is ever missed, call rd_kafka_poll(rk, 0) on the loop thread. Its callbacks
 * only note the answers; each reply runs from a timer of its own after the poll returned,
 * so Lua never runs inside librdkafka.
 *
 * A produce hands the message to librdkafka (which copies it) and waits for its delivery
 * report: librdkafka retries on its own up to the client's timeout (message.timeout.ms);
 * the idempotent producer (on by default) keeps those retries from duplicating or
 * reordering. A call's own timeout, shorter than the client's, answers at its deadline; the
 * record stays until librdkafka reports on the message, whose report names the record.
 * Secret config values (passwords) are masked in every text of librdkafka's we pass on.
 *
 * A fatal error (the idempotent producer lost its guarantees) makes the producer anew from
 * the same configuration: the messages it held fail, the next produce goes to the new one.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_RDKAFKA

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "dialect.h"

#define KAFKA_META "sqlnotify.kafka"

/* librdkafka's errors are logged at most once in this many seconds per client. */
#define LOG_EVERY 10.
/* How long after message.timeout.ms librdkafka's report may come (it checks each second). */
#define BACKSTOP 2.5

/* WAITING: no answer yet; DONE: answered, its timer delivers it; ANSWERED: delivered. */
enum { REQ_WAITING, REQ_DONE, REQ_ANSWERED };

typedef struct kf_req {
    struct kf_req *prev, *next;
    struct sn_kafka *c;
    ev_timer timer; /* the deadline; once done, a zero timer that delivers the answer */
    sn_reply reply;
    int state;
    int inflight;   /* librdkafka holds the message: its delivery report comes to this record */
    double timeout;
    char *topic;
    char *err;      /* the answer: NULL for true */
} kf_req;

typedef struct sn_kafka {
    rd_kafka_conf_t *tmpl; /* the configuration, for a producer made anew; NULL: closed */
    rd_kafka_t *rk;        /* NULL: closed, or none could be made after a fatal error */
    rd_kafka_queue_t *mainq;
    int wake[2];           /* the pipe the main queue writes to when it has something */
    ev_io io;
    ev_timer tick;         /* rd_kafka_poll each second, whatever the pipe says */
    const char *ending;    /* set while the held messages are purged: their answer */
    int fatal;             /* librdkafka reported a fatal error: make the producer anew */
    double timeout;        /* message.timeout.ms, in seconds */
    double logged_at;      /* when an error was last logged */
    int suppressed;        /* errors not logged since */
    char **secrets;        /* config values never shown (passwords): *** in every message */
    int nsecrets;
    char name[256];        /* the brokers, for messages */
    char last[512];        /* the last error librdkafka reported, until a delivery succeeds */
    kf_req *head, *tail;
} sn_kafka;

/* ===== secrets ===== */

/* in, with *** for each secret of the client, or for a tail of one (librdkafka may quote a
 * value from where it stopped making sense of it), into out. */
static void hide(const sn_kafka *c, const char *in, char *out, size_t size)
{
    size_t o = 0;
    while (*in != '\0' && o + 1 < size) {
        size_t skip = 0; /* the longest match here */
        for (int s = 0; s < c->nsecrets; s++) {
            size_t len = strlen(c->secrets[s]);
            size_t shortest = len < 6 ? len : 6;
            for (size_t j = 0; j + shortest <= len && len - j > skip; j++)
                if (strncmp(in, c->secrets[s] + j, len - j) == 0) {
                    skip = len - j;
                    break;
                }
        }
        if (skip > 0) {
            for (const char *m = "***"; *m != '\0' && o + 1 < size; m++)
                out[o++] = *m;
            in += skip;
        } else {
            out[o++] = *in++;
        }
    }
    out[o] = '\0';
}

/* ===== requests ===== */

static void req_unlink(kf_req *r)
{
    sn_kafka *c = r->c;
    if (r->prev) r->prev->next = r->next; else c->head = r->next;
    if (r->next) r->next->prev = r->prev; else c->tail = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(kf_req *r)
{
    ev_timer_stop(sn_loop(), &r->timer);
    sn_reply_drop(&r->reply);
    free(r->topic);
    free(r->err);
    free(r);
}

/* The request has its answer: deliver it from the loop (never from the call in progress). */
static void req_done(kf_req *r, const char *err)
{
    if (r->state != REQ_WAITING)
        return;
    r->state = REQ_DONE;
    if (err != NULL)
        r->err = strdup(err);
    ev_timer_stop(sn_loop(), &r->timer);
    ev_timer_set(&r->timer, 0., 0.);
    ev_timer_start(sn_loop(), &r->timer);
}

static void req_failf(kf_req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void req_failf(kf_req *r, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req_done(r, msg);
}

/* Not delivered within the request's timeout: the same words whether our deadline or
 * librdkafka's message timeout came first. */
static void timeout_text(kf_req *r, char *buf, size_t size)
{
    sn_kafka *c = r->c;
    snprintf(buf, size, "sqlnotify: kafka: not delivered to %s within %g s%s%s", c->name, r->timeout,
             c->last[0] ? ": " : "", c->last);
}

static void on_req_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    kf_req *r = (kf_req *)((char *)w - offsetof(kf_req, timer));
    char msg[1024];
    const char *err = r->err;
    if (r->state == REQ_WAITING) {
        timeout_text(r, msg, sizeof msg);
        err = msg;
    }
    r->state = REQ_ANSWERED;
    sn_reply reply = r->reply;
    r->reply.ref = LUA_NOREF;
    lua_State *L = sn_reply_push(&reply);
    int n = 1;
    if (L != NULL) {
        if (err == NULL) {
            lua_pushboolean(L, 1);
        } else {
            lua_pushnil(L);
            lua_pushstring(L, err);
            n = 2;
        }
    }
    /* Before the call (it may close the client); a message librdkafka still holds keeps
     * its record for the report. */
    if (!r->inflight) {
        req_unlink(r);
        req_free(r);
    }
    if (L != NULL)
        sn_reply_call(&reply, n, "kafka produce reply");
}

/* ===== librdkafka's callbacks (inside rd_kafka_poll, on the loop thread): they only note ===== */

static int fatal_reason(sn_kafka *c, rd_kafka_t *rk, char *why, size_t size)
{
    char text[512] = "";
    int fatal = rd_kafka_fatal_error(rk, text, sizeof text) != RD_KAFKA_RESP_ERR_NO_ERROR;
    hide(c, text, why, size);
    return fatal;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    sn_kafka *c = opaque;
    char why[512];
    kf_req *r = m->_private;
    if (r == NULL)
        return;
    r->inflight = 0;
    if (r->state == REQ_ANSWERED) { /* its deadline answered it already */
        req_unlink(r);
        req_free(r);
        return;
    }
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        c->last[0] = '\0';
        req_done(r, NULL);
    } else if (c->ending != NULL) {
        req_done(r, c->ending);
    } else if (fatal_reason(c, rk, why, sizeof why)) {
        /* failed for it (purged, or the error that was fatal): the producer is made anew
         * after this poll, whether or not its error event came in it */
        c->fatal = 1;
        req_failf(r, "sqlnotify: kafka: fatal producer error: %s", why);
    } else if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT) {
        char msg[1024];
        timeout_text(r, msg, sizeof msg);
        req_done(r, msg);
    } else {
        req_failf(r, "sqlnotify: kafka: produce to \"%s\" failed: %s", r->topic, rd_kafka_err2str(m->err));
    }
}

static void on_error(rd_kafka_t *rk, int err, const char *text, void *opaque)
{
    (void)rk;
    sn_kafka *c = opaque;
    char reason[sizeof c->last];
    hide(c, text, reason, sizeof reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        c->fatal = 1; /* settle() acts on it, after the poll */
        return;
    }
    /* "1/1 brokers are down" says less than the connection error before it; the timings
     * ("(after 0ms in state CONNECT, 2 identical error(s) suppressed)") are for the log. */
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || c->last[0] == '\0') {
        snprintf(c->last, sizeof c->last, "%s", reason);
        char *after = strstr(c->last, " (after ");
        if (after != NULL && after[strlen(after) - 1] == ')')
            *after = '\0';
    }
    double now = ev_now(sn_loop());
    if (c->logged_at == 0. || now - c->logged_at >= LOG_EVERY) {
        if (c->suppressed > 0)
            sn_log(SN_LOG_WARN, "kafka: %s: %s (%d more in the last %g s)", c->name, reason, c->suppressed,
                   now - c->logged_at);
        else
            sn_log(SN_LOG_WARN, "kafka: %s: %s", c->name, reason);
        c->logged_at = now;
        c->suppressed = 0;
    } else {
        c->suppressed++;
    }
}

/* librdkafka's own log lines (log.queue: served by rd_kafka_poll too): mostly the errors
 * on_error has, in more detail. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)level;
    sn_kafka *c = rd_kafka_opaque(rk);
    char line[1024];
    hide(c, buf, line, sizeof line);
    sn_log(SN_LOG_DEBUG, "kafka: librdkafka %s: %s", fac, line);
}

/* ===== the producer ===== */

static int producer_start(sn_kafka *c, char *err, size_t errlen);
static void producer_stop(sn_kafka *c, const char *why);

static void drain(sn_kafka *c)
{
    char buf[64];
    while (read(c->wake[0], buf, sizeof buf) > 0)
        ;
}

/* After every rd_kafka_poll, and before a produce: a producer with a fatal error is made
 * anew (it would refuse every message from now on). */
static void settle(sn_kafka *c)
{
    char why[512], msg[700];
    if (c->rk == NULL || !(fatal_reason(c, c->rk, why, sizeof why) || c->fatal))
        return;
    c->fatal = 0;
    sn_log(SN_LOG_ERROR, "kafka: %s: fatal error, making the producer anew: %s", c->name, why);
    snprintf(msg, sizeof msg, "sqlnotify: kafka: fatal producer error: %s", why);
    producer_stop(c, msg);
    char err[512];
    if (producer_start(c, err, sizeof err) != 0)
        sn_log(SN_LOG_ERROR, "kafka: %s: cannot make the producer anew (tried again each second): %s", c->name, err);
}

static void serve(sn_kafka *c)
{
    if (c->rk == NULL)
        return;
    drain(c);
    rd_kafka_poll(c->rk, 0);
    settle(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    serve((sn_kafka *)((char *)w - offsetof(sn_kafka, io)));
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_kafka *c = (sn_kafka *)((char *)w - offsetof(sn_kafka, tick));
    if (c->rk == NULL && c->tmpl != NULL) {
        char err[512];
        if (producer_start(c, err, sizeof err) == 0)
            sn_log(SN_LOG_INFO, "kafka: %s: the producer was made anew", c->name);
        return;
    }
    serve(c);
}

/* A producer from the configuration (librdkafka takes a copy of it). 0, or -1 and err. */
static int producer_start(sn_kafka *c, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(c->tmpl);
    c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
    if (c->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_set_log_queue(c->rk, NULL); /* its log lines into the main queue */
    c->mainq = rd_kafka_queue_get_main(c->rk);
    rd_kafka_queue_io_event_enable(c->mainq, c->wake[1], "1", 1);
    if (!ev_is_active(&c->io)) {
        ev_io_set(&c->io, c->wake[0], EV_READ);
        ev_io_start(sn_loop(), &c->io);
    }
    /* The queue writes to the pipe only when it stops being empty: what came before it was
     * enabled (rd_kafka_new logs) is served on the loop's next turn, or the next events
     * would wait for the tick. */
    ev_feed_event(sn_loop(), &c->io, EV_READ);
    return 0;
}

/* Purge what librdkafka holds (each request answered why) and destroy the producer: no
 * flush, so a broker that is gone does not hold the caller. */
static void producer_stop(sn_kafka *c, const char *why)
{
    if (c->rk == NULL)
        return;
    c->ending = why;
    rd_kafka_purge(c->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(c->rk, 0); /* the purged messages' reports */
    c->ending = NULL;
    rd_kafka_queue_io_event_enable(c->mainq, -1, NULL, 0);
    rd_kafka_queue_destroy(c->mainq);
    c->mainq = NULL;
    rd_kafka_destroy(c->rk);
    c->rk = NULL;
    c->fatal = 0;
    drain(c);
    /* A report librdkafka dropped with the producer will not come. */
    for (kf_req *r = c->head, *next; r != NULL; r = next) {
        next = r->next;
        if (!r->inflight)
            continue;
        r->inflight = 0;
        if (r->state == REQ_ANSWERED) {
            req_unlink(r);
            req_free(r);
        } else {
            req_done(r, why);
        }
    }
}

/* ===== the Lua object ===== */

static sn_kafka *check_kafka(lua_State *L)
{
    sn_kafka *c = luaL_checkudata(L, 1, KAFKA_META);
    if (c->tmpl == NULL)
        luaL_error(L, "sqlnotify: kafka: the client is closed");
    return c;
}

/* Stop the producer; requests not answered get err (delivered from the loop), or are
 * dropped with their replies when err is NULL (the state is closing). Safe to call twice. */
static void kafka_release(sn_kafka *c, const char *err)
{
    producer_stop(c, err != NULL ? err : "sqlnotify: kafka: the client was collected");
    ev_io_stop(sn_loop(), &c->io);
    ev_timer_stop(sn_loop(), &c->tick);
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0) {
            close(c->wake[i]);
            c->wake[i] = -1;
        }
    if (c->tmpl != NULL) {
        rd_kafka_conf_destroy(c->tmpl);
        c->tmpl = NULL;
    }
    for (int i = 0; i < c->nsecrets; i++)
        free(c->secrets[i]);
    free(c->secrets);
    c->secrets = NULL;
    c->nsecrets = 0;
    for (kf_req *r = c->head, *next; r != NULL; r = next) {
        next = r->next;
        if (err != NULL && r->state != REQ_ANSWERED) {
            req_done(r, err);
        } else if (err == NULL) {
            req_unlink(r);
            req_free(r);
        }
    }
}

static int kafka_close(lua_State *L)
{
    sn_kafka *c = luaL_checkudata(L, 1, KAFKA_META);
    kafka_release(c, "sqlnotify: kafka: the client was closed before the delivery report");
    return 0;
}

static int kafka_gc(lua_State *L)
{
    kafka_release(luaL_checkudata(L, 1, KAFKA_META), NULL);
    return 0;
}

static int fail_new(lua_State *L, sn_kafka *c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_new(lua_State *L, sn_kafka *c, const char *fmt, ...)
{
    char text[1024], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    hide(c, text, msg, sizeof msg);
    kafka_release(c, NULL);
    return luaL_error(L, "sqlnotify: kafka: %s", msg);
}

/* core.kafka_new(name, timeout, {key, value, key, value, ...}, {secret, ...}) -> client: the
 * configuration (every librdkafka property, as strings) was checked and made by the Lua side. */
static int l_kafka_new(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    double timeout = luaL_checknumber(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TTABLE);
    sn_kafka *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->wake[0] = c->wake[1] = -1;
    c->timeout = timeout;
    luaL_setmetatable(L, KAFKA_META);
    snprintf(c->name, sizeof c->name, "%s", name);
    ev_init(&c->io, on_io);
    ev_init(&c->tick, on_tick);

    c->tmpl = rd_kafka_conf_new();
    lua_Integer ns = luaL_len(L, 4);
    if (ns > 0 && (c->secrets = calloc((size_t)ns, sizeof *c->secrets)) == NULL)
        return fail_new(L, c, "out of memory");
    for (lua_Integer i = 1; i <= ns; i++) {
        lua_geti(L, 4, i);
        const char *v = lua_tostring(L, -1);
        if (v != NULL && *v != '\0' && (c->secrets[c->nsecrets] = strdup(v)) != NULL)
            c->nsecrets++;
        lua_pop(L, 1);
    }
    char err[512];
    lua_Integer n = luaL_len(L, 3);
    for (lua_Integer i = 1; i + 1 <= n; i += 2) {
        lua_geti(L, 3, i);
        lua_geti(L, 3, i + 1);
        const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
        if (k == NULL || v == NULL)
            return fail_new(L, c, "config: a key or value that is not a string");
        if (rd_kafka_conf_set(c->tmpl, k, v, err, sizeof err) != RD_KAFKA_CONF_OK)
            return fail_new(L, c, "config: %s", err);
        lua_pop(L, 2);
    }
    rd_kafka_conf_set_opaque(c->tmpl, c);
    rd_kafka_conf_set_dr_msg_cb(c->tmpl, on_delivery);
    rd_kafka_conf_set_error_cb(c->tmpl, on_error);
    rd_kafka_conf_set_log_cb(c->tmpl, on_log);
    if (rd_kafka_conf_set(c->tmpl, "log.queue", "true", err, sizeof err) != RD_KAFKA_CONF_OK)
        return fail_new(L, c, "config: %s", err);
    if (pipe2(c->wake, O_NONBLOCK | O_CLOEXEC) != 0)
        return fail_new(L, c, "pipe: %s", strerror(errno));
    if (producer_start(c, err, sizeof err) != 0)
        return fail_new(L, c, "%s", err);
    ev_timer_set(&c->tick, 1., 1.);
    ev_timer_start(sn_loop(), &c->tick);
    return 1;
}

/* c:produce(topic, value|nil, key|nil, {name, value, ...}|nil, partition|-1, timeout, reply)
 * -> true (reply called later with true or nil, err), or nil, err at once (librdkafka
 * refused the message: its queue is full, the message too large, ...). */
static int kafka_produce(lua_State *L)
{
    sn_kafka *c = check_kafka(L);
    size_t tlen, vlen = 0, klen = 0;
    const char *topic = luaL_checklstring(L, 2, &tlen);
    const char *value = lua_isnil(L, 3) ? NULL : luaL_checklstring(L, 3, &vlen);
    const char *key = lua_isnil(L, 4) ? NULL : luaL_checklstring(L, 4, &klen);
    lua_Integer nh = lua_isnil(L, 5) ? 0 : (luaL_checktype(L, 5, LUA_TTABLE), luaL_len(L, 5) / 2);
    lua_Integer partition = luaL_checkinteger(L, 6);
    double timeout = luaL_checknumber(L, 7);
    luaL_checktype(L, 8, LUA_TFUNCTION);
    settle(c);
    if (c->rk == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: kafka: no producer for %s (it is made anew after a fatal error)", c->name);
        return 2;
    }
    rd_kafka_vu_t *vu = calloc((size_t)(6 + nh), sizeof *vu);
    kf_req *r = calloc(1, sizeof *r);
    if (vu == NULL || r == NULL || (r->topic = strdup(topic)) == NULL) {
        free(vu);
        free(r);
        return luaL_error(L, "sqlnotify: kafka: out of memory");
    }
    size_t i = 0;
    vu[i].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[i++].u.cstr = topic;
    vu[i].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[i].u.mem.ptr = (void *)value;
    vu[i++].u.mem.size = vlen;
    if (key != NULL) {
        vu[i].vtype = RD_KAFKA_VTYPE_KEY;
        vu[i].u.mem.ptr = (void *)key;
        vu[i++].u.mem.size = klen;
    }
    vu[i].vtype = RD_KAFKA_VTYPE_PARTITION;
    vu[i++].u.i32 = partition < 0 ? RD_KAFKA_PARTITION_UA : (int32_t)partition;
    vu[i].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[i++].u.i = RD_KAFKA_MSG_F_COPY;
    vu[i].vtype = RD_KAFKA_VTYPE_OPAQUE;
    vu[i++].u.ptr = r;
    for (lua_Integer h = 0; h < nh; h++) {
        size_t hl;
        lua_geti(L, 5, 2 * h + 1);
        lua_geti(L, 5, 2 * h + 2);
        vu[i].vtype = RD_KAFKA_VTYPE_HEADER;
        vu[i].u.header.name = lua_tostring(L, -2);
        vu[i].u.header.val = lua_tolstring(L, -1, &hl);
        vu[i++].u.header.size = (ssize_t)hl;
        lua_pop(L, 2); /* the table still holds them */
    }
    r->c = c;
    r->timeout = timeout;
    r->state = REQ_WAITING;
    r->reply.ref = LUA_NOREF;
    rd_kafka_error_t *e = rd_kafka_produceva(c->rk, vu, i);
    free(vu);
    if (e != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: kafka: produce to \"%s\" failed: %s", topic,
                        rd_kafka_err2str(rd_kafka_error_code(e)));
        rd_kafka_error_destroy(e);
        free(r->topic);
        free(r);
        return 2;
    }
    r->inflight = 1;
    sn_reply_take(L, 8, &r->reply);
    r->prev = c->tail;
    if (c->tail) c->tail->next = r; else c->head = r;
    c->tail = r;
    /* At the client's timeout librdkafka's own report answers (its checks run each second):
     * then the message is given up, and a retry cannot deliver it twice. The timer is a
     * backstop. A shorter timeout of the call's own is answered at once. */
    ev_timer_init(&r->timer, on_req_timer, timeout < c->timeout ? timeout : timeout + BACKSTOP, 0.);
    ev_now_update(sn_loop());
    ev_timer_start(sn_loop(), &r->timer);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg kafka_meth[] = {
    {"produce", kafka_produce},
    {"close", kafka_close},
    {NULL, NULL},
};

static const luaL_Reg kafka_metameth[] = {
    {"__index", NULL},
    {"__gc", kafka_gc},
    {"__close", kafka_close},
    {NULL, NULL},
};

static void createkafkameta(lua_State *L)
{
    luaL_newmetatable(L, KAFKA_META);
    luaL_setfuncs(L, kafka_metameth, 0);
    luaL_newlibtable(L, kafka_meth);
    luaL_setfuncs(L, kafka_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sn_kafka_open(lua_State *L)
{
    createkafkameta(L);
    lua_pushcfunction(L, l_kafka_new);
    lua_setfield(L, -2, "kafka_new");
    lua_pushstring(L, rd_kafka_version_str());
    lua_setfield(L, -2, "kafka_version");
}

#else

void sn_kafka_open(lua_State *L)
{
    sn_client_missing(L, "kafka_new", "sqlnotify.kafka", "librdkafka", "librdkafka-dev");
}

#endif
