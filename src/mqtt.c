/*
 * mqtt.c — sqlnotify.mqtt: MQTT publishing: libmosquitto, on our loop.
 *
 * libmosquitto runs without its own thread: an io watcher on mosquitto_socket() calls
 * mosquitto_loop_read (and mosquitto_loop_write while it wants to write), a one-second timer
 * calls mosquitto_loop_misc (keepalive). Its callbacks (connect, disconnect, publish) only
 * note what happened; the work (publishing what waited for the connection, failing what
 * was lost, reconnecting, re-arming the watcher) is done after the library call returned,
 * and every reply runs from a timer of its own, so Lua never runs inside libmosquitto.
 *
 * A publish waits for the connection (up to its deadline); QoS 0 answers once libmosquitto
 * wrote or queued it, QoS 1 once the PUBACK came. A QoS 1 message in flight when the
 * connection drops fails at once (the event is retried by the runtime), and each reconnect
 * is made on a fresh libmosquitto client, so libmosquitto never sends again a message whose
 * publish has already failed: the runtime's retry is the only resend.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_MOSQUITTO

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <netdb.h>
#include <sys/socket.h>

#include "dialect.h"

#define MQTT_META "sqlnotify.mqtt"

/* The shared backoff (sn_backoff) from 50-100 ms up to 2.5-5 s. */
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
/* A connection that lasted this long starts the backoff over when it is lost. */
#define STEADY 10.0

enum { REQ_WAITING, REQ_SENT, REQ_DONE };

typedef struct mq_req {
    struct mq_req *prev, *next;
    struct sn_mqtt *c;
    ev_timer timer; /* the deadline; once done, a zero timer that delivers the answer */
    sn_reply reply;
    int state;
    int mid;
    int qos, retain;
    double timeout;
    char *topic; /* kept until handed to libmosquitto (it copies) */
    char *payload;
    size_t len;
    char *err; /* the answer: NULL for true */
} mq_req;

/* What a libmosquitto client is made from, kept to make a fresh one for each reconnect. */
typedef struct mq_conf {
    char *host; /* the address (the name with TLS) */
    char *id, *user, *pass, *cafile, *capath;
    int port, keepalive, clean, tls, insecure;
} mq_conf;

typedef struct sn_mqtt {
    struct mosquitto *m; /* NULL: closed */
    mq_conf conf;
    ev_io io;
    int fd, events;    /* what io watches (-1: nothing) */
    ev_timer misc;     /* mosquitto_loop_misc each second */
    ev_timer retry;    /* reconnect after a backoff */
    sn_backoff backoff;
    int connected;     /* CONNACK accepted and not lost since */
    int lost;          /* the library reported a disconnect since the last settle */
    int fresh;         /* connected since the last settle: publish what waited */
    double up_at;      /* when the broker accepted the connection */
    int refused;       /* the broker refused a CONNECT, or none was made, since the last accepted one (logged) */
    int ever;          /* a CONNECT was accepted once: the next is "again" */
    char name[300];    /* host:port, for messages (never the password) */
    char last[256];    /* why the last connection failed */
    mq_req *head, *tail;
} sn_mqtt;

static int lib_ready;

static void settle(sn_mqtt *c);

/* What rc means, errno's words where it says so. libmosquitto 2.0 has no text for its
 * keepalive code (a broker silent through the keepalive and the ping after it): it would
 * say "Unknown error.". */
static const char *rc_text(const sn_mqtt *c, int rc, char *buf, size_t size)
{
    if (rc == MOSQ_ERR_ERRNO)
        return strerror(errno);
    if (rc == MOSQ_ERR_KEEPALIVE) {
        snprintf(buf, size, "the broker did not answer within the keepalive, %d s", c->conf.keepalive);
        return buf;
    }
    return mosquitto_strerror(rc);
}

/* ===== requests ===== */

static void req_unlink(mq_req *r)
{
    sn_mqtt *c = r->c;
    if (r->prev) r->prev->next = r->next; else c->head = r->next;
    if (r->next) r->next->prev = r->prev; else c->tail = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(mq_req *r)
{
    ev_timer_stop(sn_loop(), &r->timer);
    sn_reply_drop(&r->reply);
    free(r->topic);
    free(r->payload);
    free(r->err);
    free(r);
}

/* The request has its answer: deliver it from the loop (never from the call in progress). */
static void req_done(mq_req *r, const char *err)
{
    if (r->state == REQ_DONE)
        return;
    r->state = REQ_DONE;
    if (err != NULL)
        r->err = strdup(err);
    free(r->topic);
    free(r->payload);
    r->topic = r->payload = NULL;
    ev_timer_stop(sn_loop(), &r->timer);
    ev_timer_set(&r->timer, 0., 0.);
    ev_timer_start(sn_loop(), &r->timer);
}

static void req_failf(mq_req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void req_failf(mq_req *r, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req_done(r, msg);
}

static void on_req_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    mq_req *r = (mq_req *)((char *)w - offsetof(mq_req, timer));
    sn_mqtt *c = r->c;
    char msg[1024];
    const char *err = r->err;
    if (r->state == REQ_WAITING) {
        const char *why = c->last;
        if (why[0] == '\0' && c->m != NULL && mosquitto_socket(c->m) >= 0) {
            /* No failure yet: say how far the connection got (a broker stopped, or behind a
             * network that drops everything, is given up only after the keepalive). */
            struct sockaddr_storage sa;
            socklen_t len = sizeof sa;
            why = getpeername(mosquitto_socket(c->m), (struct sockaddr *)&sa, &len) == 0
                      ? "the broker took the connection but has not answered it"
                      : "the TCP connection is not made yet";
        }
        snprintf(msg, sizeof msg, "sqlnotify: mqtt: not connected to %s within %g s%s%s", c->name, r->timeout,
                 why[0] ? ": " : "", why);
        err = msg;
    } else if (r->state == REQ_SENT) {
        snprintf(msg, sizeof msg, "sqlnotify: mqtt: no PUBACK from %s within %g s", c->name, r->timeout);
        err = msg;
    }
    req_unlink(r);
    sn_reply reply = r->reply;
    r->reply.ref = LUA_NOREF;
    lua_State *L = sn_reply_push(&reply);
    if (L != NULL) {
        int n = 1;
        if (err == NULL) {
            lua_pushboolean(L, 1);
        } else {
            lua_pushnil(L);
            lua_pushstring(L, err);
            n = 2;
        }
        req_free(r); /* before the call: it may close the client */
        sn_reply_call(&reply, n, "mqtt publish reply");
    } else {
        req_free(r);
    }
}

static void req_publish(sn_mqtt *c, mq_req *r)
{
    int mid = 0;
    int rc = mosquitto_publish(c->m, &mid, r->topic, (int)r->len, r->payload, r->qos, r->retain != 0);
    if (rc == MOSQ_ERR_SUCCESS) {
        if (r->qos == 0) {
            req_done(r, NULL);
        } else {
            r->state = REQ_SENT;
            r->mid = mid;
            free(r->topic);
            free(r->payload);
            r->topic = r->payload = NULL;
        }
    } else if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST) {
        c->lost = 1; /* waits for the reconnect */
    } else {
        req_failf(r, "sqlnotify: mqtt: publish to %s failed: %s", c->name,
                  rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    }
}

/* ===== the connection ===== */

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    sn_mqtt *c = ud;
    if (rc == 0) {
        c->connected = 1;
        c->fresh = 1;
        c->up_at = ev_now(sn_loop());
        c->last[0] = '\0';
        sn_log(c->refused ? SN_LOG_INFO : SN_LOG_DEBUG, "mqtt: connected to %s%s", c->name, c->ever ? " again" : "");
        c->refused = 0;
        c->ever = 1;
    } else {
        snprintf(c->last, sizeof c->last, "the broker refused the connection: %s", mosquitto_connack_string(rc));
        /* Once a spell: the client tries again every few seconds (wrong credentials, an id
         * the broker does not take), and only publishes said why. */
        if (!c->refused)
            sn_log(SN_LOG_WARN, "mqtt: %s refused the connection (%s): tried again with backoff until it takes it",
                   c->name, mosquitto_connack_string(rc));
        c->refused = 1;
    }
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    sn_mqtt *c = ud;
    char buf[128];
    const char *why = rc_text(c, rc, buf, sizeof buf);
    if (c->connected) {
        /* Not at the CONNACK: a broker that closes each connection at once (another client
         * took the client_id over) would be reconnected to every 50-100 ms, for ever. */
        double lived = ev_now(sn_loop()) - c->up_at;
        if (lived >= STEADY)
            sn_backoff_reset(&c->backoff);
        if (lived < 1. && c->conf.id != NULL)
            sn_log(SN_LOG_WARN,
                   "mqtt: connection to %s lost (%s) %.1f s after the broker accepted it, reconnecting; a broker "
                   "closes a client when another connects with its client_id (\"%s\")",
                   c->name, why, lived, c->conf.id);
        else
            sn_log(SN_LOG_WARN, "mqtt: connection to %s lost (%s), reconnecting", c->name, why);
    }
    if (rc != 0 && c->last[0] == '\0')
        snprintf(c->last, sizeof c->last, "%s", why);
    c->connected = 0;
    c->lost = 1;
}

static void on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m;
    sn_mqtt *c = ud;
    for (mq_req *r = c->head; r != NULL; r = r->next)
        if (r->state == REQ_SENT && r->mid == mid) {
            req_done(r, NULL);
            return;
        }
}

static void watch(sn_mqtt *c)
{
    int fd = c->m ? mosquitto_socket(c->m) : -1;
    int events = fd < 0 ? 0 : EV_READ | (mosquitto_want_write(c->m) ? EV_WRITE : 0);
    if (fd == c->fd && events == c->events)
        return;
    ev_io_stop(sn_loop(), &c->io);
    c->fd = fd;
    c->events = events;
    if (fd >= 0) {
        ev_io_set(&c->io, fd, events);
        ev_io_start(sn_loop(), &c->io);
    }
}

static void retry_later(sn_mqtt *c)
{
    if (ev_is_active(&c->retry))
        return;
    ev_timer_set(&c->retry, sn_backoff_next(&c->backoff), 0.);
    ev_timer_start(sn_loop(), &c->retry);
}

/* After every call into libmosquitto: act on what its callbacks noted. */
static void settle(sn_mqtt *c)
{
    if (c->m == NULL)
        return;
    if (c->lost) {
        c->lost = 0;
        for (mq_req *r = c->head; r != NULL; r = r->next)
            if (r->state == REQ_SENT)
                req_failf(r, "sqlnotify: mqtt: connection to %s lost before the PUBACK", c->name);
    }
    if (mosquitto_socket(c->m) < 0) {
        if (!c->ever && !c->refused && c->last[0] != '\0') { /* a wrong address: said now, once */
            sn_log(SN_LOG_WARN, "mqtt: cannot connect to %s (%s): tried again with backoff until it does", c->name,
                   c->last);
            c->refused = 1;
        }
        c->connected = 0;
        watch(c);
        ev_timer_stop(sn_loop(), &c->misc);
        retry_later(c);
        return;
    }
    if (c->fresh && c->connected) {
        c->fresh = 0;
        for (mq_req *r = c->head; r != NULL && c->connected; r = r->next)
            if (r->state == REQ_WAITING)
                req_publish(c, r);
    }
    if (c->lost) { /* a publish just found the connection gone */
        settle(c);
        return;
    }
    watch(c);
}

static void set_errno_reason(sn_mqtt *c, int rc)
{
    char buf[128];
    snprintf(c->last, sizeof c->last, "%s", rc_text(c, rc, buf, sizeof buf));
}

static void misc_start(sn_mqtt *c)
{
    if (!ev_is_active(&c->misc)) {
        ev_timer_set(&c->misc, 1., 1.);
        ev_timer_start(sn_loop(), &c->misc);
    }
}

static void on_connect(struct mosquitto *m, void *ud, int rc);
static void on_disconnect(struct mosquitto *m, void *ud, int rc);
static void on_publish(struct mosquitto *m, void *ud, int mid);

/* A libmosquitto client from c->conf, not connected: NULL and *what, *rc on failure. */
static struct mosquitto *client_make(sn_mqtt *c, const char **what, int *rc)
{
    const mq_conf *f = &c->conf;
    struct mosquitto *m = mosquitto_new(f->id, f->clean != 0, c);
    if (m == NULL) {
        *what = "cannot create the client";
        *rc = MOSQ_ERR_ERRNO;
        return NULL;
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_disconnect_callback_set(m, on_disconnect);
    mosquitto_publish_callback_set(m, on_publish);
    *rc = 0;
    if ((f->user != NULL || f->pass != NULL) &&
        (*rc = mosquitto_username_pw_set(m, f->user ? f->user : "", f->pass)) != 0) {
        *what = "username";
    } else if (f->tls) {
        if (f->cafile == NULL && f->capath == NULL)
            *rc = mosquitto_int_option(m, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
        else
            *rc = mosquitto_tls_set(m, f->cafile, f->capath, NULL, NULL, NULL);
        if (*rc != 0)
            *what = "TLS (cafile, capath)";
        else if (f->insecure)
            mosquitto_tls_insecure_set(m, true);
    }
    if (*rc != 0) {
        mosquitto_destroy(m);
        return NULL;
    }
    return m;
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_mqtt *c = (sn_mqtt *)((char *)w - offsetof(sn_mqtt, retry));
    /* The old socket is gone: the new one may get its number, so the watcher starts over. */
    ev_io_stop(sn_loop(), &c->io);
    c->fd = -1;
    c->events = 0;
    /* A fresh client, not mosquitto_reconnect_async: the old one still holds the messages
     * of the lost connection and would send them again once connected. Their publishes have
     * failed (the runtime retries them), and one the broker drops the connection for (above
     * its max_packet_size) would end every new connection at once, for good. */
    const char *what = NULL;
    int rc;
    struct mosquitto *m = client_make(c, &what, &rc);
    if (m == NULL) {
        snprintf(c->last, sizeof c->last, "%s: %s", what, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        retry_later(c);
        return;
    }
    mosquitto_destroy(c->m);
    c->m = m;
    rc = mosquitto_connect_async(c->m, c->conf.host, c->conf.port, c->conf.keepalive);
    if (rc != MOSQ_ERR_SUCCESS)
        set_errno_reason(c, rc);
    else
        misc_start(c);
    settle(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    sn_mqtt *c = (sn_mqtt *)((char *)w - offsetof(sn_mqtt, io));
    if (revents & EV_READ)
        mosquitto_loop_read(c->m, 1);
    if ((revents & EV_WRITE) && mosquitto_socket(c->m) >= 0)
        mosquitto_loop_write(c->m, 1);
    settle(c);
}

static void on_misc(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_mqtt *c = (sn_mqtt *)((char *)w - offsetof(sn_mqtt, misc));
    if (mosquitto_socket(c->m) >= 0)
        mosquitto_loop_misc(c->m);
    settle(c);
}

/* ===== the Lua object ===== */

static sn_mqtt *check_mqtt(lua_State *L)
{
    sn_mqtt *c = luaL_checkudata(L, 1, MQTT_META);
    if (c->m == NULL)
        luaL_error(L, "sqlnotify: mqtt: the client is closed");
    return c;
}

/* Stop the connection; pending requests get err (delivered from the loop), or are dropped
 * with their replies when err is NULL (the state is closing). Safe to call twice. */
static void mqtt_release(sn_mqtt *c, const char *err)
{
    if (c->m != NULL) {
        ev_io_stop(sn_loop(), &c->io);
        ev_timer_stop(sn_loop(), &c->misc);
        ev_timer_stop(sn_loop(), &c->retry);
        if (c->connected) {
            c->connected = 0; /* a close is no loss to report */
            mosquitto_disconnect(c->m);
        }
        mosquitto_destroy(c->m);
        c->m = NULL;
        c->fd = -1;
        c->connected = 0;
    }
    char **confs[] = {&c->conf.host, &c->conf.id, &c->conf.user, &c->conf.pass, &c->conf.cafile, &c->conf.capath};
    for (size_t i = 0; i < sizeof confs / sizeof confs[0]; i++) {
        free(*confs[i]);
        *confs[i] = NULL;
    }
    for (mq_req *r = c->head, *next; r != NULL; r = next) {
        next = r->next;
        if (err != NULL) {
            req_done(r, err);
        } else {
            req_unlink(r);
            req_free(r);
        }
    }
}

static int mqtt_close(lua_State *L)
{
    sn_mqtt *c = luaL_checkudata(L, 1, MQTT_META);
    mqtt_release(c, "sqlnotify: mqtt: the client was closed before the answer");
    return 0;
}

static int mqtt_gc(lua_State *L)
{
    mqtt_release(luaL_checkudata(L, 1, MQTT_META), NULL);
    return 0;
}

static const char *opt_string(lua_State *L, const char *key)
{
    lua_getfield(L, 1, key);
    const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the table still holds the string */
    return s;
}

static lua_Integer opt_integer(lua_State *L, const char *key, lua_Integer def)
{
    lua_getfield(L, 1, key);
    lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, const char *key, int def)
{
    lua_getfield(L, 1, key);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A copy of s (NULL stays NULL) into *to; 0, or -1 out of memory. */
static int conf_dup(char **to, const char *s)
{
    *to = s ? strdup(s) : NULL;
    return s != NULL && *to == NULL ? -1 : 0;
}

static int mqtt_fail_new(lua_State *L, sn_mqtt *c, const char *what, int rc)
{
    mqtt_release(c, NULL);
    return luaL_error(L, "sqlnotify: mqtt: %s: %s", what,
                      rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
}

/* core.mqtt_new{host =, port =, name =, username =, password =, client_id =, keepalive =,
 * clean_session =, tls =, cafile =, capath =, insecure =} -> client. The Lua side checked
 * the options; this connects in the background. */
static int l_mqtt_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *host = opt_string(L, "host");
    const char *name = opt_string(L, "name");
    const char *user = opt_string(L, "username");
    const char *pass = opt_string(L, "password");
    const char *id = opt_string(L, "client_id");
    const char *cafile = opt_string(L, "cafile");
    const char *capath = opt_string(L, "capath");
    int port = (int)opt_integer(L, "port", 1883);
    int keepalive = (int)opt_integer(L, "keepalive", 30);
    int clean = opt_bool(L, "clean_session", 1);
    int tls = opt_bool(L, "tls", 0);
    int insecure = opt_bool(L, "insecure", 0);
    luaL_argcheck(L, host != NULL, 1, "sqlnotify: mqtt: host missing");

    if (!lib_ready) {
        mosquitto_lib_init();
        lib_ready = 1;
    }
    sn_mqtt *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->backoff = (sn_backoff){.first = BACKOFF_MIN, .cap = BACKOFF_MAX};
    luaL_setmetatable(L, MQTT_META);
    snprintf(c->name, sizeof c->name, "%s", name ? name : host);
    ev_init(&c->io, on_io);
    ev_init(&c->misc, on_misc);
    ev_init(&c->retry, on_retry);

    c->conf = (mq_conf){.port = port, .keepalive = keepalive, .clean = clean, .tls = tls, .insecure = insecure};
    if (conf_dup(&c->conf.id, id) || conf_dup(&c->conf.user, user) || conf_dup(&c->conf.pass, pass) ||
        conf_dup(&c->conf.cafile, cafile) || conf_dup(&c->conf.capath, capath)) {
        mqtt_release(c, NULL);
        return luaL_error(L, "sqlnotify: mqtt: out of memory");
    }
    const char *what = NULL;
    int rc;
    c->m = client_make(c, &what, &rc);
    if (c->m == NULL)
        return mqtt_fail_new(L, c, what, rc);
    /* libmosquitto resolves the host on every (re)connect, blocking: a name is resolved once
     * here (a constructor runs at load time) and the address used from then on. With TLS the
     * name stays: the certificate is checked against it. */
    char addr[NI_MAXHOST];
    if (!tls) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
        int e = getaddrinfo(host, NULL, &hints, &ai);
        if (e != 0) {
            mqtt_release(c, NULL);
            return luaL_error(L, "sqlnotify: mqtt: cannot resolve %s: %s", host, gai_strerror(e));
        }
        e = getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof addr, NULL, 0, NI_NUMERICHOST);
        freeaddrinfo(ai);
        if (e == 0)
            host = addr;
    }
    if (conf_dup(&c->conf.host, host)) {
        mqtt_release(c, NULL);
        return luaL_error(L, "sqlnotify: mqtt: out of memory");
    }
    /* A refused or unreachable broker is no error here: publish waits for the reconnect. */
    rc = mosquitto_connect_async(c->m, c->conf.host, port, keepalive);
    if (rc == MOSQ_ERR_INVAL)
        return mqtt_fail_new(L, c, "connect", rc);
    if (rc != MOSQ_ERR_SUCCESS)
        set_errno_reason(c, rc);
    else
        misc_start(c);
    settle(c);
    return 1;
}

/* c:publish(topic, payload, qos, retain, timeout, reply) -> true (reply called later with true
 * or nil, err). */
static int mqtt_publish(lua_State *L)
{
    sn_mqtt *c = check_mqtt(L);
    size_t tlen, plen;
    const char *topic = luaL_checklstring(L, 2, &tlen);
    const char *payload = luaL_checklstring(L, 3, &plen);
    int qos = (int)luaL_checkinteger(L, 4);
    int retain = lua_toboolean(L, 5);
    double timeout = luaL_checknumber(L, 6);
    luaL_checktype(L, 7, LUA_TFUNCTION);
    if (plen > 268435455)
        return luaL_error(L, "sqlnotify: mqtt: payload of %zu bytes is above MQTT's limit", plen);
    mq_req *r = calloc(1, sizeof *r);
    if (r == NULL || (r->topic = malloc(tlen + 1)) == NULL || (r->payload = malloc(plen ? plen : 1)) == NULL) {
        if (r) free(r->topic);
        free(r);
        return luaL_error(L, "sqlnotify: mqtt: out of memory");
    }
    memcpy(r->topic, topic, tlen + 1);
    memcpy(r->payload, payload, plen);
    r->len = plen;
    r->qos = qos;
    r->retain = retain;
    r->timeout = timeout;
    r->c = c;
    r->state = REQ_WAITING;
    r->reply.ref = LUA_NOREF;
    sn_reply_take(L, 7, &r->reply);
    r->prev = c->tail;
    if (c->tail) c->tail->next = r; else c->head = r;
    c->tail = r;
    ev_timer_init(&r->timer, on_req_timer, timeout, 0.);
    ev_now_update(sn_loop());
    ev_timer_start(sn_loop(), &r->timer);
    if (c->connected) {
        req_publish(c, r);
        settle(c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int mqtt_connected(lua_State *L)
{
    sn_mqtt *c = luaL_checkudata(L, 1, MQTT_META);
    lua_pushboolean(L, c->m != NULL && c->connected);
    return 1;
}

static const luaL_Reg mqtt_meth[] = {
    {"publish", mqtt_publish},
    {"connected", mqtt_connected},
    {"close", mqtt_close},
    {NULL, NULL},
};

static const luaL_Reg mqtt_metameth[] = {
    {"__index", NULL},
    {"__gc", mqtt_gc},
    {"__close", mqtt_close},
    {NULL, NULL},
};

static void createmqttmeta(lua_State *L)
{
    luaL_newmetatable(L, MQTT_META);
    luaL_setfuncs(L, mqtt_metameth, 0);
    luaL_newlibtable(L, mqtt_meth);
    luaL_setfuncs(L, mqtt_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sn_mqtt_open(lua_State *L)
{
    createmqttmeta(L);
    lua_pushcfunction(L, l_mqtt_new);
    lua_setfield(L, -2, "mqtt_new");
}

#else

void sn_mqtt_open(lua_State *L)
{
    sn_client_missing(L, "mqtt_new", "sqlnotify.mqtt", "libmosquitto", "libmosquitto-dev");
}

#endif
