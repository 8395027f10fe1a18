/*
 * log.c — the log: every line on stderr is formatted here, as text (the default: time,
 * level, "sqlnotify: ", message) or as one JSON object a line (--log-format json,
 * SQLNOTIFY_LOG_FORMAT=json) with the fields a caller knows (consumer, table, error,
 * traceback...). The level and format come from the host's options or, when the module is
 * loaded in plain lua5.4, from SQLNOTIFY_LOG_LEVEL and SQLNOTIFY_LOG_FORMAT.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "dialect.h"
#include "sqlnotify.h"

const char *const sn_log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const format_names[] = {"text", "json", NULL};

static int log_level = SN_LOG_INFO;
static int log_json;
static int env_read;

int sn_log_level_get(void) { return log_level; }
void sn_log_level_set(int level) { log_level = level; }
int sn_log_json(void) { return log_json; }

static int find(const char *const *names, const char *name)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

int sn_log_level_parse(const char *name) { return find(sn_log_level_names, name); }

int sn_log_format_set(const char *name)
{
    int f = find(format_names, name);
    if (f >= 0)
        log_json = f == 1;
    return f < 0 ? -1 : 0;
}

int sn_log_env(char *err, size_t errlen, int skip)
{
    static const struct { const char *var, *expect; int bit; } vars[] = {
        {"SQLNOTIFY_LOG_LEVEL", "error, warn, info or debug", SN_LOG_ENV_LEVEL},
        {"SQLNOTIFY_LOG_FORMAT", "text or json", SN_LOG_ENV_FORMAT},
    };
    int bad = 0; /* the first bad one is said; the others are taken (a JSON log says it in JSON) */
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i].var);
        if (v == NULL || *v == '\0' || (skip & vars[i].bit))
            continue;
        int level = -1;
        int ok = vars[i].bit == SN_LOG_ENV_LEVEL ? (level = sn_log_level_parse(v)) >= 0 : sn_log_format_set(v) == 0;
        if (!ok) {
            char shown[41];
            size_t k = 0;
            for (; v[k] && k < sizeof shown - 1; k++) /* anyone's bytes: printable ones only */
                shown[k] = v[k] >= 0x20 && v[k] < 0x7f && v[k] != '"' ? v[k] : '?';
            shown[k] = '\0';
            if (err && errlen && !bad)
                snprintf(err, errlen, "%s=\"%s\"%s is not a log %s: use %s", vars[i].var, shown, v[k] ? "..." : "",
                         vars[i].bit == SN_LOG_ENV_LEVEL ? "level" : "format", vars[i].expect);
            bad = 1;
            continue;
        }
        if (level >= 0)
            log_level = level;
    }
    if (bad)
        return -1;
    env_read = 1;
    return 0;
}

int sn_log_env_read(void) { return env_read; }

/* ===== a line in memory, written with one write ===== */

typedef struct {
    char *p;
    size_t n, cap;
    int fail;
    char small[2048];
} lbuf;

static void lb_put(lbuf *b, const char *s, size_t len)
{
    if (b->fail)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap * 2;
        while (cap < b->n + len + 1)
            cap *= 2;
        char *p = b->p == b->small ? malloc(cap) : realloc(b->p, cap);
        if (p == NULL) {
            b->fail = 1;
            return;
        }
        if (b->p == b->small)
            memcpy(p, b->small, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
}

static void lb_str(lbuf *b, const char *s) { lb_put(b, s, strlen(s)); }

/* The length of the valid UTF-8 sequence at s (at most n bytes), 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min, cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A JSON string: quotes, backslashes and control bytes escaped; a byte that is not part of
 * valid UTF-8 becomes U+FFFD, so that every line parses whatever a table name holds.
 * one_line: line breaks and tabs become spaces (the message; the fields keep theirs). */
static void lb_json(lbuf *b, const char *s, size_t n, int one_line)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    lb_put(b, "\"", 1);
    while (i < n) {
        unsigned c = u[i];
        size_t len = c >= 0x20 && c != '"' && c != '\\' && c != 0x7f ? utf8_len(u + i, n - i) : 0;
        if (len > 0) {
            i += len;
            run += len;
            continue;
        }
        lb_put(b, s + i - run, run);
        run = 0;
        char esc[8];
        if (one_line && (c == '\n' || c == '\r' || c == '\t'))
            strcpy(esc, " ");
        else if (c == '"' || c == '\\')
            esc[0] = '\\', esc[1] = (char)c, esc[2] = '\0';
        else if (c == '\n')
            strcpy(esc, "\\n");
        else if (c == '\t')
            strcpy(esc, "\\t");
        else if (c == '\r')
            strcpy(esc, "\\r");
        else if (c < 0x20 || c == 0x7f)
            snprintf(esc, sizeof esc, "\\u%04x", c);
        else
            strcpy(esc, "\\ufffd");
        lb_str(b, esc);
        i++;
    }
    lb_put(b, s + i - run, run);
    lb_put(b, "\"", 1);
}

/* ===== the one place lines are formatted ===== */

static const char tb_mark[] = "\nstack traceback:\n";

void sn_log_fields(int level, const char *msg, size_t len, const sn_log_field *fields, int nfields)
{
    if (level > log_level)
        return;
    struct timespec ts;
    struct tm tm;
    char when[48];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03ldZ", ts.tv_nsec / 1000000L);

    const sn_log_field *tb = NULL;
    for (int i = 0; i < nfields; i++)
        if (strcmp(fields[i].key, "traceback") == 0)
            tb = &fields[i];

    lbuf b = {.cap = sizeof b.small};
    b.p = b.small;
    if (!log_json) {
        /* as it always was; a traceback given as a field follows the message on its lines */
        char head[96];
        snprintf(head, sizeof head, "%s %-5s sqlnotify: ", when, sn_log_level_names[level]);
        lb_str(&b, head);
        lb_put(&b, msg, strnlen(msg, len));
        if (tb) {
            lb_put(&b, "\n", 1);
            lb_put(&b, tb->value, tb->len);
        }
    } else {
        /* a traceback inside the message (a callback's error from C) becomes the field */
        sn_log_field split;
        if (tb == NULL) {
            const char *m = memmem(msg, len, tb_mark, sizeof tb_mark - 1);
            if (m) {
                split = (sn_log_field){"traceback", m + 1, len - (size_t)(m + 1 - msg)};
                tb = &split;
                len = (size_t)(m - msg);
            }
        }
        lb_str(&b, "{\"time\":\"");
        lb_str(&b, when);
        lb_str(&b, "\",\"level\":\"");
        lb_str(&b, sn_log_level_names[level]);
        lb_str(&b, "\",\"message\":");
        lb_json(&b, msg, len, 1);
        for (int i = 0; i < nfields; i++) {
            const sn_log_field *f = &fields[i];
            if (f == tb || strcmp(f->key, "time") == 0 || strcmp(f->key, "level") == 0 ||
                strcmp(f->key, "message") == 0)
                continue;
            lb_put(&b, ",", 1);
            lb_json(&b, f->key, strlen(f->key), 0);
            lb_put(&b, ":", 1);
            lb_json(&b, f->value, f->len, 0);
        }
        if (tb) {
            lb_str(&b, ",\"traceback\":");
            lb_json(&b, tb->value, tb->len, 0);
        }
        lb_put(&b, "}", 1);
    }
    lb_put(&b, "\n", 1);
    if (b.fail) {
        fprintf(stderr, "%s %s sqlnotify: out of memory for a log line of %zu bytes\n", when,
                sn_log_level_names[SN_LOG_ERROR], len);
    } else {
        flockfile(stderr);
        fwrite(b.p, 1, b.n, stderr);
        fflush(stderr);
        funlockfile(stderr);
    }
    if (b.p != b.small)
        free(b.p);
}

void sn_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char small[1024], *msg = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof small && (msg = malloc((size_t)n + 1)) != NULL) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (msg == NULL) /* out of memory: the first part of it */
        msg = small, n = (int)sizeof small - 1;
    sn_log_fields(level, msg, (size_t)n, NULL, 0);
    if (msg != small)
        free(msg);
}

/* ===== from Lua: (level, message[, fields]) ===== */

/* Known fields first, in this order; others after them, by name. */
static const char *const field_order[] = {"consumer", "table", "operation", "channel", "error", NULL};

static int field_rank(const char *key)
{
    int r = find(field_order, key);
    return r < 0 ? (int)(sizeof field_order / sizeof field_order[0]) : r;
}

static int cmp_field(const void *a, const void *b)
{
    const sn_log_field *x = a, *y = b;
    int rx = field_rank(x->key), ry = field_rank(y->key);
    return rx != ry ? (rx > ry) - (rx < ry) : strcmp(x->key, y->key);
}

#define MAX_FIELDS 16

void sn_log_lua(lua_State *L, int level, int msg_idx, int fields_idx, int print)
{
    size_t len;
    const char *msg = luaL_checklstring(L, msg_idx, &len);
    if (!lua_isnoneornil(L, fields_idx))
        luaL_checktype(L, fields_idx, LUA_TTABLE);
    if (!print || level > log_level)
        return;
    sn_log_field f[MAX_FIELDS];
    int n = 0;
    if (lua_istable(L, fields_idx)) {
        fields_idx = lua_absindex(L, fields_idx);
        /* the values stay in the table (strings) or on the stack (numbers made strings) */
        luaL_checkstack(L, MAX_FIELDS + 4, "log fields");
        lua_pushnil(L);
        while (lua_next(L, fields_idx)) {
            int t = lua_type(L, -1);
            if (n < MAX_FIELDS && lua_type(L, -2) == LUA_TSTRING && (t == LUA_TSTRING || t == LUA_TNUMBER ||
                                                                      t == LUA_TBOOLEAN)) {
                f[n].key = lua_tostring(L, -2);
                if (t == LUA_TSTRING) {
                    f[n].value = lua_tolstring(L, -1, &f[n].len);
                } else {
                    f[n].value = luaL_tolstring(L, -1, &f[n].len);
                    lua_insert(L, -3); /* kept below the key: alive until the line is written */
                }
                n++;
            }
            lua_pop(L, 1);
        }
        qsort(f, (size_t)n, sizeof f[0], cmp_field);
    }
    sn_log_fields(level, msg, len, f, n);
}
