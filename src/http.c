/*
 * http.c — sqlnotify.http: HTTP requests through libcurl's multi interface, on our loop.
 *
 * One multi handle per Lua state (http.lua keeps it), so connections are reused between
 * calls and HTTP/2 streams share one connection. curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION -> ev_io) and when to call it back (CURLMOPT_TIMERFUNCTION ->
 * ev_timer); both end in curl_multi_socket_action, after which finished transfers are read
 * (curl_multi_info_read) and their replies called. http.lua checks the options; this file
 * trusts their types but not their content (curl parses the URL again).
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_CURL

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define MULTI_META "sqlnotify.http"
#define IDLE_MAX 64   /* easy handles kept for reuse: a relay's transfers side by side */
#define MAX_CONNECTS 256 /* idle connections the multi handle keeps open for reuse */

typedef struct sn_http sn_http;

/* A socket curl asked us to watch. */
typedef struct sock {
    ev_io w;
    sn_http *m;
    struct sock *prev, *next;
} sock;

/* One transfer. */
typedef struct req {
    CURL *easy;
    sn_http *m;
    struct req *prev, *next;
    sn_reply reply;
    struct curl_slist *headers;
    char *what;            /* "POST http://host/x" (no password), for messages */
    char *body;            /* the response so far */
    size_t len, cap, max_body;
    int too_big;           /* the response passed max_body */
    char errbuf[CURL_ERROR_SIZE];
} req;

struct sn_http {
    CURLM *multi;          /* NULL: closed */
    ev_timer timer;
    lua_State *L;          /* main thread */
    int self_ref;          /* set while transfers run: they keep the handle alive */
    int dispatching;       /* inside done(): close must leave the freeing to it */
    req *reqs;
    sock *socks;
    CURL *idle[IDLE_MAX];  /* easy handles of finished transfers, reset, for the next ones */
    int nidle;
};

static CURLcode global_rc = CURLE_FAILED_INIT;

/* ===== transfers ===== */

static void req_free(req *r)
{
    sn_http *m = r->m;
    if (r->easy != NULL && m != NULL && m->multi != NULL && m->nidle < IDLE_MAX) {
        curl_easy_reset(r->easy); /* keeps its caches (DNS, TLS session): cheaper than a new one */
        m->idle[m->nidle++] = r->easy;
    } else if (r->easy != NULL) {
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    free(r->what);
    free(r->body);
    free(r);
}

static void req_unlink(sn_http *m, req *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        m->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static size_t on_write(char *data, size_t size, size_t n, void *ud)
{
    req *r = ud;
    size_t len = size * n;
    if (len > r->max_body - r->len) {
        r->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR: the transfer stops */
    }
    if (r->len + len > r->cap) {
        size_t cap = r->cap ? r->cap : 16384;
        while (cap < r->len + len)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (b == NULL)
            return 0;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    return len;
}

/* The response's headers (of the last response, after redirects) as a table of lowercase
 * names; a repeated header's values joined with ", ". */
static void push_headers(lua_State *L, CURL *easy)
{
    lua_newtable(L);
    struct curl_header *prev = NULL, *h;
    luaL_Buffer b;
    while ((h = curl_easy_nextheader(easy, CURLH_HEADER, -1, prev)) != NULL) {
        prev = h;
        luaL_buffinit(L, &b);
        for (const char *p = h->name; *p; p++)
            luaL_addchar(&b, (char)tolower((unsigned char)*p));
        luaL_pushresult(&b);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, h->value);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, h->value);
        }
        lua_rawset(L, -3);
    }
}

/* Read finished transfers and call their replies. */
static void done(sn_http *m)
{
    CURLMsg *msg;
    int left;
    m->dispatching = 1;
    while (m->multi != NULL && (msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = msg->data.result;
        curl_multi_remove_handle(m->multi, r->easy);
        req_unlink(m, r);
        lua_State *L = sn_reply_push(&r->reply);
        if (L == NULL) {
            req_free(r);
            continue;
        }
        int nargs;
        if (rc == CURLE_OK) {
            long status = 0;
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
            lua_pushinteger(L, status);
            lua_pushlstring(L, r->body ? r->body : "", r->len);
            push_headers(L, r->easy);
            nargs = 3;
        } else {
            lua_pushnil(L);
            if (r->too_big)
                lua_pushfstring(L, "sqlnotify: http %s: the response body is over max_body (%I bytes)", r->what,
                                (lua_Integer)r->max_body);
            else if (rc == CURLE_OPERATION_TIMEDOUT)
                lua_pushfstring(L, "sqlnotify: http %s: timed out (%s)", r->what,
                                r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
            else
                lua_pushfstring(L, "sqlnotify: http %s: %s", r->what, r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
            nargs = 2;
        }
        /* freed before the call: the reply may start the next request, or close the handle */
        sn_reply reply = r->reply;
        req_free(r);
        sn_reply_call(&reply, nargs, "http reply");
    }
    m->dispatching = 0;
    if (m->reqs == NULL && m->self_ref != LUA_NOREF && m->L != NULL) {
        luaL_unref(m->L, LUA_REGISTRYINDEX, m->self_ref);
        m->self_ref = LUA_NOREF;
    }
}

/* ===== curl on our loop ===== */

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    sock *s = (sock *)w;
    sn_http *m = s->m;
    int running, action = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(m->multi, w->fd, action, &running);
    done(m);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sn_http *m = (sn_http *)((char *)w - offsetof(sn_http, timer));
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    done(m);
}

static void sock_free(sn_http *m, sock *s)
{
    ev_io_stop(sn_loop(), &s->w);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        m->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    free(s);
}

/* curl: watch fd for what (or stop). The watcher is re-set each time: the socket changes. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *ud, void *sockp)
{
    (void)easy;
    sn_http *m = ud;
    sock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL)
            sock_free(m, s);
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return -1;
        s->m = m;
        s->next = m->socks;
        if (m->socks != NULL)
            m->socks->prev = s;
        m->socks = s;
        curl_multi_assign(m->multi, fd, s);
    } else {
        ev_io_stop(sn_loop(), &s->w);
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    ev_io_init(&s->w, on_io, fd, ev);
    ev_io_start(sn_loop(), &s->w);
    return 0;
}

/* curl: call us back in ms (-1: never). Never at once: curl may not be re-entered here. */
static int on_curl_timer(CURLM *multi, long ms, void *ud)
{
    (void)multi;
    sn_http *m = ud;
    ev_timer_stop(sn_loop(), &m->timer);
    if (ms >= 0) {
        ev_timer_set(&m->timer, (double)ms / 1000.0, 0.);
        ev_timer_start(sn_loop(), &m->timer);
    }
    return 0;
}

/* ===== the handle ===== */

static sn_http *check_http(lua_State *L)
{
    sn_http *m = luaL_checkudata(L, 1, MULTI_META);
    if (m->multi == NULL)
        luaL_error(L, "sqlnotify: this http client is closed");
    return m;
}

/* Stop every transfer (their replies dropped: the state is closing or a reload replaced it),
 * every watcher, and the multi handle. Safe twice. */
static int http_close(lua_State *L)
{
    sn_http *m = luaL_checkudata(L, 1, MULTI_META);
    if (m->multi == NULL)
        return 0;
    for (req *r = m->reqs, *next; r != NULL; r = next) {
        next = r->next;
        curl_multi_remove_handle(m->multi, r->easy);
        sn_reply_drop(&r->reply);
        req_free(r);
    }
    m->reqs = NULL;
    while (m->nidle > 0)
        curl_easy_cleanup(m->idle[--m->nidle]);
    curl_multi_cleanup(m->multi); /* may still call on_socket: the list is intact */
    m->multi = NULL;
    while (m->socks != NULL)
        sock_free(m, m->socks);
    ev_timer_stop(sn_loop(), &m->timer);
    /* inside done() the handle must live until it returns: done() lets go of it */
    if (m->self_ref != LUA_NOREF && !m->dispatching) {
        luaL_unref(L, LUA_REGISTRYINDEX, m->self_ref);
        m->self_ref = LUA_NOREF;
    }
    return 0;
}

/* core.http_new() -> a client: one multi handle. */
static int http_new(lua_State *L)
{
    if (global_rc != CURLE_OK)
        global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (global_rc != CURLE_OK)
        return luaL_error(L, "sqlnotify: libcurl failed to start: %s", curl_easy_strerror(global_rc));
    sn_http *m = lua_newuserdatauv(L, sizeof *m, 0);
    memset(m, 0, sizeof *m);
    m->self_ref = LUA_NOREF;
    luaL_setmetatable(L, MULTI_META);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    m->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    ev_timer_init(&m->timer, on_timer, 0., 0.);
    m->multi = curl_multi_init();
    if (m->multi == NULL)
        return luaL_error(L, "sqlnotify: libcurl could not make a multi handle");
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)MAX_CONNECTS);
    return 1;
}

/* The URL without its password, or NULL (and *err) when curl cannot parse it or it is not
 * http(s). Free with curl_free. */
static char *clean_url(const char *url, const char **err)
{
    CURLU *u = curl_url();
    char *out = NULL, *scheme = NULL;
    if (u == NULL) {
        *err = "out of memory";
        return NULL;
    }
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc != CURLUE_OK) {
        *err = curl_url_strerror(rc);
    } else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK
               || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        *err = "not an http:// or https:// URL";
    } else {
        curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
        if (curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
            *err = "out of memory";
    }
    curl_free(scheme);
    curl_url_cleanup(u);
    return out;
}

/* core.http_check_url(url) -> the URL without its password | nil, why it is refused. */
static int http_check_url(lua_State *L)
{
    const char *err = NULL;
    char *clean = clean_url(luaL_checkstring(L, 1), &err);
    if (clean == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushstring(L, clean);
    curl_free(clean);
    return 1;
}

static int opt_int(lua_State *L, const char *k, lua_Integer dflt)
{
    lua_Integer v = lua_getfield(L, 2, k) == LUA_TNIL ? dflt : lua_tointeger(L, -1);
    lua_pop(L, 1);
    return (int)v;
}

static double opt_num(lua_State *L, const char *k, double dflt)
{
    double v = lua_getfield(L, 2, k) == LUA_TNIL ? dflt : lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, const char *k)
{
    int v = lua_getfield(L, 2, k) != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* Pushes the string option k (NULL when absent; popped by the caller's settop). */
static const char *opt_str(lua_State *L, const char *k, size_t *len)
{
    lua_getfield(L, 2, k);
    return lua_isnil(L, -1) ? NULL : lua_tolstring(L, -1, len);
}

#define SET(opt, v)                                                                                                   \
    do {                                                                                                              \
        if ((rc = curl_easy_setopt(r->easy, opt, v)) != CURLE_OK)                                                     \
            goto fail;                                                                                                \
    } while (0)

/* m:start(opts, reply) -> true | nil, message. opts checked by http.lua: method (upper
 * case), url, headers (a list of "Name: value"), body, timeout, connect_timeout, insecure,
 * cainfo, follow, max_redirects, max_body. */
static int http_start(lua_State *L)
{
    sn_http *m = check_http(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    int top = lua_gettop(L);
    CURLcode rc = CURLE_OK;
    const char *err = NULL;
    const char *url = opt_str(L, "url", NULL);
    const char *method = opt_str(L, "method", NULL);
    luaL_argcheck(L, url != NULL && method != NULL, 2, "url and method are needed");
    /* "METHOD url-without-password" for messages: the Lua side made it already (what) */
    const char *what = opt_str(L, "what", NULL);
    char *clean = what ? NULL : clean_url(url, &err);
    if (what == NULL && clean == NULL)
        return luaL_error(L, "sqlnotify: http: bad url: %s", err);
    req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        curl_free(clean);
        return luaL_error(L, "sqlnotify: out of memory");
    }
    r->reply.ref = LUA_NOREF;
    r->m = m;
    if (what != NULL) {
        r->what = strdup(what);
    } else {
        size_t wlen = strlen(method) + 1 + strlen(clean) + 1;
        r->what = malloc(wlen);
        if (r->what != NULL)
            snprintf(r->what, wlen, "%s %s", method, clean);
        curl_free(clean);
    }
    r->easy = m->nidle > 0 ? m->idle[--m->nidle] : curl_easy_init();
    if (r->easy == NULL || r->what == NULL) {
        rc = CURLE_OUT_OF_MEMORY;
        goto fail;
    }
    r->max_body = (size_t)opt_num(L, "max_body", 64.0 * 1024 * 1024);
    SET(CURLOPT_PRIVATE, (char *)r);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_ACCEPT_ENCODING, ""); /* every encoding curl decodes */
    SET(CURLOPT_TIMEOUT_MS, (long)(opt_num(L, "timeout", 30) * 1000));
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(opt_num(L, "connect_timeout", 10) * 1000));
    if (opt_bool(L, "insecure")) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    const char *cainfo = opt_str(L, "cainfo", NULL);
    if (cainfo != NULL)
        SET(CURLOPT_CAINFO, cainfo);
    if (opt_bool(L, "follow")) {
        SET(CURLOPT_FOLLOWLOCATION, 1L);
        SET(CURLOPT_MAXREDIRS, (long)opt_int(L, "max_redirects", 10));
    }
    size_t blen = 0;
    const char *body = opt_str(L, "body", &blen);
    if (body != NULL) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        SET(CURLOPT_COPYPOSTFIELDS, body);
        if (strcmp(method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0) {
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
    if (lua_getfield(L, 2, "headers") == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            struct curl_slist *l = curl_slist_append(r->headers, lua_tostring(L, -1));
            lua_pop(L, 1);
            if (l == NULL) {
                rc = CURLE_OUT_OF_MEMORY;
                goto fail;
            }
            r->headers = l;
        }
        SET(CURLOPT_HTTPHEADER, r->headers);
    }
    lua_settop(L, top);
    CURLMcode mrc = curl_multi_add_handle(m->multi, r->easy);
    if (mrc != CURLM_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "sqlnotify: http %s: %s", r->what, curl_multi_strerror(mrc));
        req_free(r);
        return 2;
    }
    sn_reply_take(L, 3, &r->reply);
    r->next = m->reqs;
    if (m->reqs != NULL)
        m->reqs->prev = r;
    m->reqs = r;
    if (m->self_ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        m->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushboolean(L, 1);
    return 1;
fail:
    lua_settop(L, top);
    lua_pushnil(L);
    lua_pushfstring(L, "sqlnotify: http %s: %s", r->what ? r->what : url, curl_easy_strerror(rc));
    req_free(r);
    return 2;
}

static int http_tostring(lua_State *L)
{
    sn_http *m = luaL_checkudata(L, 1, MULTI_META);
    int n = 0;
    for (req *r = m->reqs; r != NULL; r = r->next)
        n++;
    lua_pushfstring(L, "sqlnotify.http (%s, %d in flight)", m->multi ? "open" : "closed", n);
    return 1;
}

static const luaL_Reg http_meth[] = {
    {"start", http_start},
    {"close", http_close},
    {NULL, NULL},
};

static const luaL_Reg http_metameth[] = {
    {"__index", NULL},
    {"__gc", http_close},
    {"__close", http_close},
    {"__tostring", http_tostring},
    {NULL, NULL},
};

static void createhttpmeta(lua_State *L)
{
    luaL_newmetatable(L, MULTI_META);
    luaL_setfuncs(L, http_metameth, 0);
    luaL_newlibtable(L, http_meth);
    luaL_setfuncs(L, http_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sn_http_open(lua_State *L)
{
    createhttpmeta(L);
    lua_pushcfunction(L, http_new);
    lua_setfield(L, -2, "http_new");
    lua_pushcfunction(L, http_check_url);
    lua_setfield(L, -2, "http_check_url");
    lua_pushstring(L, curl_version());
    lua_setfield(L, -2, "http_version");
}

#else

void sn_http_open(lua_State *L)
{
    sn_client_missing(L, "http_new", "sqlnotify.http", "libcurl", "libcurl4-openssl-dev");
}

#endif
