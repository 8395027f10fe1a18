/*
 * decode.c — the one decoder of trigger payloads, following the wire format in
 * dialect.h: strict (any malformed payload is refused with a reason, never half
 * read) and straight into the event table a handler receives.
 *
 *   core.plan(watch, info, nulls) -> plan   once per watch: its key, extra and old
 *                                           columns with their classes (from describe)
 *   core.decode(plan, payload, channel, ts) -> event [, nil, true: its columns are not the
 *                                                   plan's] | nil, reason
 *   core.null                                       SQL NULL when a notifier asks for it
 *
 * lua-cjson stays for every other JSON (notify's encoder, the user's own).
 */
#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "binding.h"

#define PLAN_META "sqlnotify.plan"
#define MAX_DEPTH 64    /* nesting inside a column value (json, arrays) */
#define MAX_COLS 4096   /* per list; PostgreSQL allows 1600 columns, SQLite 2000 by default */

/* ===== the plan: what a watch's payloads carry ===== */

typedef struct pcol {
    const char *name;  /* anchored by the plan's name table */
    size_t len;
    int cls;           /* enum sn_class */
    int gone;          /* an extra or old column the table no longer has: its absence is no news */
} pcol;

/* Columns in one array: key, then extra, then old. The plan's user value is a table of
 * their names as Lua strings at 1..ncols, then schema, table and operation. */
typedef struct sn_plan {
    int npk, nextra, nold, ncols;
    int xlive, olive; /* extra and old columns not gone */
    int has_old; /* the watch has old_columns: event.old is a table */
    int nulls;   /* SQL NULL arrives as core.null instead of being absent */
    int follow;  /* extra_columns = "*": a column in "x" the plan does not know is news too,
                    and goes in the event by its JSON type until the plan knows it */
    pcol cols[];
} sn_plan;

/* The decoder's class of a class name from describe ("decimal(2)" is a decimal). */
static int class_of(const char *name)
{
    size_t n = strcspn(name, "(");
    for (int cls = SN_CLASS_OTHER; cls <= SN_CLASS_JSON; cls++) {
        const char *known = sn_class_name(cls);
        if (strlen(known) == n && memcmp(name, known, n) == 0)
            return cls;
    }
    return SN_CLASS_OTHER;
}

/* The number of strings in the list at t[field] (absent: 0), checked. */
static int list_len(lua_State *L, int t, const char *field)
{
    lua_getfield(L, t, field);
    int n = 0;
    if (!lua_isnil(L, -1)) {
        luaL_argexpected(L, lua_istable(L, -1), t, "a watch whose lists are tables");
        lua_Integer len = luaL_len(L, -1);
        if (len > MAX_COLS)
            luaL_error(L, "sqlnotify: more than %d columns in %s", MAX_COLS, field);
        n = (int)len;
    }
    lua_pop(L, 1);
    return n;
}

/* core.plan(watch, info, nulls): watch.schema, .table, .op, .pk, .extra, .old (lists of
 * names), .all (extra_columns = "*"), .gone (a set of the names of columns the table no
 * longer has), info.class_of (column name -> describe's class name). */
static int l_plan(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    int nulls = lua_toboolean(L, 3);
    lua_settop(L, 4); /* 4 unused: the plan is at 5 */
    int npk = list_len(L, 1, "pk"), nextra = list_len(L, 1, "extra"), nold = list_len(L, 1, "old");
    int ncols = npk + nextra + nold;
    sn_plan *p = lua_newuserdatauv(L, sizeof *p + sizeof(pcol) * (size_t)ncols, 1); /* 5 */
    memset(p, 0, sizeof *p);
    p->npk = npk;
    p->nextra = nextra;
    p->nold = nold;
    p->ncols = ncols;
    p->nulls = nulls;
    p->has_old = nold > 0;
    lua_getfield(L, 1, "all");
    p->follow = lua_toboolean(L, -1);
    lua_pop(L, 1);
    luaL_setmetatable(L, PLAN_META);

    lua_getfield(L, 2, "class_of"); /* 6: name -> class, from describe */
    luaL_argexpected(L, lua_istable(L, 6), 2, "table info with class_of");

    lua_createtable(L, ncols + 3, 0); /* 7: the names */
    lua_getfield(L, 1, "gone");       /* 8 */
    int gone = lua_istable(L, 8);
    static const char *const lists[] = {"pk", "extra", "old"};
    int at = 0;
    for (int l = 0; l < 3; l++) {
        lua_getfield(L, 1, lists[l]);
        int n = l == 0 ? npk : l == 1 ? nextra : nold;
        for (int i = 1; i <= n; i++) {
            lua_geti(L, -1, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "sqlnotify: %s[%d] must be a column name", lists[l], i);
            lua_pushvalue(L, -1);
            lua_rawseti(L, 7, at + 1);
            pcol *c = &p->cols[at++];
            c->name = lua_tolstring(L, -1, &c->len);
            c->gone = 0;
            if (l > 0 && gone) {
                lua_pushvalue(L, -1);
                c->gone = lua_rawget(L, 8) != LUA_TNIL;
                lua_pop(L, 1);
            }
            if (l == 1)
                p->xlive += !c->gone;
            if (l == 2)
                p->olive += !c->gone;
            lua_rawget(L, 6);
            c->cls = lua_type(L, -1) == LUA_TSTRING ? class_of(lua_tostring(L, -1)) : SN_CLASS_OTHER; /* gone since */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* the gone set */
    static const char *const fields[] = {"schema", "table", "op"};
    for (int f = 0; f < 3; f++) {
        lua_getfield(L, 1, fields[f]);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "sqlnotify: watch field '%s' must be a string", fields[f]);
        lua_rawseti(L, 7, ncols + 1 + f);
    }
    lua_setiuservalue(L, 5, 1);
    lua_settop(L, 5);
    return 1;
}

/* ===== JSON reading ===== */

typedef struct dec {
    lua_State *L;
    const char *start, *p, *end;
    const sn_plan *pl;
    int names;        /* stack index of the plan's name table */
    int seen;         /* top-level keys read (K_*) */
    int found, unknown; /* the last column object: its plan columns present, other keys */
    int drift;        /* the columns carried are not the plan's: the table changed? */
    int newer;        /* refused for a wire version newer than SN_WIRE_VERSION */
    char why[200];    /* the reason a payload is refused */
} dec;

/* Refuse the payload: returns 0 for the caller to pass up. */
static int bad(dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(dec *d, const char *fmt, ...)
{
    if (d->why[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->why, sizeof d->why, fmt, ap);
        va_end(ap);
    }
    return 0;
}

static int bad_syntax(dec *d, const char *what)
{
    if (d->p >= d->end)
        return bad(d, "%s at the end of the payload", what);
    return bad(d, "%s at byte %ld", what, (long)(d->p - d->start) + 1);
}

/* A name for a log line: printable, at most 40 bytes, control bytes as \xNN. */
static const char *shown(char *out, size_t outlen, const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < outlen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i == 40) {
            o += (size_t)snprintf(out + o, outlen - o, "...");
            break;
        }
        if (ch < 0x20 || ch == 0x7f || ch == '\\' || ch == '"')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
        else
            out[o++] = (char)ch;
    }
    out[o] = '\0';
    return out;
}

/* JSON whitespace: space, \n, \r, \t. Bytes above ' ' never are, so one compare ends
 * the common case (the next byte is what we want). */
static inline int is_ws(unsigned char ch)
{
    return ch <= ' ' && (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t');
}

static inline void ws(dec *d)
{
    const char *p = d->p, *e = d->end;
    while (p < e && is_ws((unsigned char)*p))
        p++;
    d->p = p;
}

/* Inlined, the expected byte first: PostgreSQL's jsonb text has no space before ':',
 * ',' or '}' and one after ':' and ',', so most calls end at the first compare. */
static inline int expect(dec *d, char ch)
{
    if (d->p < d->end && *d->p == ch) {
        d->p++;
        return 1;
    }
    ws(d);
    if (d->p < d->end && *d->p == ch) {
        d->p++;
        return 1;
    }
    return 0;
}

/* Bytes that end the plain run of a string: '"', '\\' and control characters. A table
 * is one load and one test per byte instead of three compares. */
static const unsigned char str_stop[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1, [0x07] = 1,
    [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1,
    [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1,
    [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1,
    ['"'] = 1, ['\\'] = 1,
};

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int hex4(dec *d, unsigned *out)
{
    if (d->end - d->p < 4)
        return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)d->p[i]);
        if (h < 0)
            return 0;
        v = v << 4 | (unsigned)h;
    }
    d->p += 4;
    *out = v;
    return 1;
}

static void put_utf8(luaL_Buffer *b, unsigned cp)
{
    if (cp < 0x80) {
        luaL_addchar(b, (char)cp);
    } else if (cp < 0x800) {
        luaL_addchar(b, (char)(0xC0 | cp >> 6));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        luaL_addchar(b, (char)(0xE0 | cp >> 12));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    } else {
        luaL_addchar(b, (char)(0xF0 | cp >> 18));
        luaL_addchar(b, (char)(0x80 | (cp >> 12 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    }
}

/* A JSON string, its opening quote read. Without escapes (the common case) it is a span
 * of the payload: *s, *len, returns 1. With escapes it is unescaped into a Lua string
 * pushed on the stack: returns 2 (*s, *len point into it). 0: malformed. */
static int string_slow(dec *d, const char *begin, const char **s, size_t *len);

static inline int string(dec *d, const char **s, size_t *len)
{
    const char *begin = d->p, *p = d->p, *e = d->end;
    while (p < e && !str_stop[(unsigned char)*p])
        p++;
    d->p = p;
    if (p < e && *p == '"') {
        *s = begin;
        *len = (size_t)(p - begin);
        d->p++;
        return 1;
    }
    return string_slow(d, begin, s, len);
}

/* Escapes, control characters, the end of the payload: out of line, so that the common
 * case above is inlined without this one's frame (a luaL_Buffer). d->p is at the stop. */
static __attribute__((noinline)) int string_slow(dec *d, const char *begin, const char **s, size_t *len)
{
    const char *escape = d->p;
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, begin, (size_t)(d->p - begin));
    while (d->p < d->end) {
        unsigned char ch = (unsigned char)*d->p++;
        if (ch == '"') {
            luaL_pushresult(&b);
            *s = lua_tolstring(d->L, -1, len);
            return 2;
        }
        if (ch < 0x20) {
            d->p--;
            luaL_pushresult(&b);
            lua_pop(d->L, 1);
            return bad_syntax(d, "a control character in a string");
        }
        if (ch != '\\') {
            luaL_addchar(&b, (char)ch);
            continue;
        }
        if (d->p >= d->end)
            break;
        escape = d->p - 1;
        unsigned cp;
        switch (*d->p++) {
        case '"': luaL_addchar(&b, '"'); break;
        case '\\': luaL_addchar(&b, '\\'); break;
        case '/': luaL_addchar(&b, '/'); break;
        case 'b': luaL_addchar(&b, '\b'); break;
        case 'f': luaL_addchar(&b, '\f'); break;
        case 'n': luaL_addchar(&b, '\n'); break;
        case 'r': luaL_addchar(&b, '\r'); break;
        case 't': luaL_addchar(&b, '\t'); break;
        case 'u':
            if (!hex4(d, &cp))
                goto bad_escape;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                unsigned lo;
                if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u')
                    goto bad_escape;
                d->p += 2;
                if (!hex4(d, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    goto bad_escape;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad_escape;
            }
            put_utf8(&b, cp);
            break;
        default:
            goto bad_escape;
        }
    }
    luaL_pushresult(&b);
    lua_pop(d->L, 1);
    return bad_syntax(d, "an unterminated string");
bad_escape:
    d->p = escape;
    luaL_pushresult(&b);
    lua_pop(d->L, 1);
    return bad_syntax(d, "a bad escape in a string");
}

/* The extent of a JSON number at d->p; *integral when it has no fraction or exponent. */
static int number_span(dec *d, size_t *len, int *integral)
{
    const char *p = d->p, *e = d->end;
    *integral = 1;
    if (p < e && *p == '-')
        p++;
    if (p < e && *p == '0') {
        p++;
        if (p < e && *p >= '0' && *p <= '9')
            return bad_syntax(d, "a number with a leading zero");
    }
    else if (p < e && *p >= '1' && *p <= '9')
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    else
        return bad_syntax(d, "a bad value");
    if (p < e && *p == '.') {
        *integral = 0;
        p++;
        if (p >= e || *p < '0' || *p > '9')
            return bad_syntax(d, "a bad number");
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || *p < '0' || *p > '9')
            return bad_syntax(d, "a bad number");
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    *len = (size_t)(p - d->p);
    return 1;
}

/* Push the number text s[0..len) (valid JSON): integers exactly as integers when they
 * fit 64 bits, else floats (as_float: always a float). Lua's own conversion reads it,
 * whatever the C locale's decimal point is. */
static void push_number(lua_State *L, const char *s, size_t len, int integral, int as_float)
{
    if (integral && len < 19) { /* 18 digits always fit: the common case, no copy */
        const char *p = s;
        int neg = *p == '-';
        lua_Integer v = 0;
        for (p += neg; p < s + len; p++)
            v = v * 10 + (*p - '0');
        v = neg ? -v : v;
        if (as_float)
            lua_pushnumber(L, neg && v == 0 ? -0.0 : (lua_Number)v);
        else
            lua_pushinteger(L, v);
        return;
    }
    char small[64];
    const char *text = small;
    if (len < sizeof small) {
        memcpy(small, s, len);
        small[len] = '\0';
    } else {
        text = lua_pushlstring(L, s, len); /* a long one (numeric text): rare */
    }
    size_t ok = lua_stringtonumber(L, text);
    if (text != small)
        lua_remove(L, -2);
    if (ok == 0)
        lua_pushnumber(L, (lua_Number)NAN); /* unreachable: the text is valid JSON */
    if (as_float && lua_isinteger(L, -1)) {
        lua_Number f = (lua_Number)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_pushnumber(L, f);
    }
}

static int bytes_value(lua_State *L, const char *s, size_t len)
{
    if (len < 2 || s[0] != '\\' || s[1] != 'x' || (len & 1))
        return 0;
    for (size_t i = 2; i < len; i++)
        if (hexval((unsigned char)s[i]) < 0)
            return 0;
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (len - 2) / 2);
    for (size_t i = 2, o = 0; i < len; i += 2, o++)
        out[o] = (char)(hexval((unsigned char)s[i]) << 4 | hexval((unsigned char)s[i + 1]));
    luaL_pushresultsize(&b, (len - 2) / 2);
    return 1;
}

/* The null of a nested value: the sentinel when asked for, else nil. */
static void push_null(dec *d)
{
    if (d->pl->nulls)
        lua_pushlightuserdata(d->L, NULL);
    else
        lua_pushnil(d->L);
}

static int value(dec *d, int cls, int skip, int depth);

/* A nested array: a table 1..n; nulls are core.null, or holes with the length in .n. */
static int array(dec *d, int skip, int depth)
{
    lua_State *L = d->L;
    if (!skip)
        lua_createtable(L, 4, 0);
    lua_Integer n = 0;
    if (!expect(d, ']')) {
        do {
            int r = value(d, SN_CLASS_OTHER, skip, depth + 1);
            if (r < 0)
                return -1;
            n++;
            if (skip)
                continue;
            if (r == 0)
                push_null(d);
            lua_rawseti(L, -2, n);
        } while (expect(d, ','));
        if (!expect(d, ']'))
            return bad_syntax(d, "a missing ',' or ']'"), -1;
    }
    if (!skip && !d->pl->nulls) {
        lua_pushinteger(L, n);
        lua_setfield(L, -2, "n");
    }
    return 1;
}

/* A nested object: a table by key; a duplicate key makes the payload malformed. */
static int object(dec *d, int skip, int depth)
{
    lua_State *L = d->L;
    int had_null = 0;
    if (!skip)
        lua_createtable(L, 0, 4);
    if (expect(d, '}'))
        return 1;
    do {
        const char *k;
        size_t klen;
        if (!expect(d, '"'))
            return bad_syntax(d, "a missing object key"), -1;
        int r = string(d, &k, &klen);
        if (r == 0)
            return -1;
        if (r == 1 && !skip)
            lua_pushlstring(L, k, klen);
        else if (r == 2 && skip)
            lua_pop(L, 1);
        if (!expect(d, ':'))
            return bad_syntax(d, "a missing ':'"), -1;
        if (!skip) {
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) != LUA_TNIL) {
                char name[200];
                return bad(d, "a duplicate key \"%s\" in a nested object", shown(name, sizeof name, k, klen)), -1;
            }
            lua_pop(L, 1);
        }
        r = value(d, SN_CLASS_OTHER, skip, depth + 1);
        if (r < 0)
            return -1;
        if (skip)
            continue;
        if (r == 0) { /* a placeholder until the end, so that a duplicate is still seen */
            lua_pushlightuserdata(L, NULL);
            had_null = !d->pl->nulls;
        }
        lua_rawset(L, -3);
    } while (expect(d, ','));
    if (!expect(d, '}'))
        return bad_syntax(d, "a missing ',' or '}'"), -1;
    if (had_null) { /* nulls are absent unless asked for */
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_islightuserdata(L, -1) && lua_touserdata(L, -1) == NULL) {
                lua_pushvalue(L, -2);
                lua_pushnil(L);
                lua_rawset(L, -5);
            }
            lua_pop(L, 1);
        }
    }
    return 1;
}

/* One JSON value of a column of class cls: pushed (1), null (0, nothing pushed), or
 * malformed (-1, nothing pushed). With skip, only checked: nothing is pushed. */
static int value(dec *d, int cls, int skip, int depth)
{
    lua_State *L = d->L;
    ws(d);
    if (d->p >= d->end)
        return bad_syntax(d, "a missing value"), -1;
    switch (*d->p) {
    case '"': {
        d->p++;
        const char *s;
        size_t len;
        int r = string(d, &s, &len);
        if (r == 0)
            return -1;
        if (skip) {
            if (r == 2)
                lua_pop(L, 1);
            return 1;
        }
        if (cls == SN_CLASS_FLOAT && ((len == 3 && memcmp(s, "NaN", 3) == 0) ||
                                      (len == 8 && memcmp(s, "Infinity", 8) == 0) ||
                                      (len == 9 && memcmp(s, "-Infinity", 9) == 0))) {
            double f = len == 3 ? (double)NAN : s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
            if (r == 2)
                lua_pop(L, 1);
            lua_pushnumber(L, f);
            return 1;
        } else if (cls == SN_CLASS_BYTES && bytes_value(L, s, len)) {
            if (r == 2)
                lua_remove(L, -2);
            return 1;
        }
        if (r == 1)
            lua_pushlstring(L, s, len);
        return 1;
    }
    case 't':
        if (d->end - d->p >= 4 && memcmp(d->p, "true", 4) == 0) {
            d->p += 4;
            if (!skip)
                lua_pushboolean(L, 1);
            return 1;
        }
        break;
    case 'f':
        if (d->end - d->p >= 5 && memcmp(d->p, "false", 5) == 0) {
            d->p += 5;
            if (!skip)
                lua_pushboolean(L, 0);
            return 1;
        }
        break;
    case 'n':
        if (d->end - d->p >= 4 && memcmp(d->p, "null", 4) == 0) {
            d->p += 4;
            return 0;
        }
        break;
    case '[':
        if (depth >= MAX_DEPTH)
            return bad_syntax(d, "nesting deeper than 64"), -1;
        d->p++;
        luaL_checkstack(L, 4, "payload nesting");
        return array(d, skip, depth);
    case '{':
        if (depth >= MAX_DEPTH)
            return bad_syntax(d, "nesting deeper than 64"), -1;
        d->p++;
        luaL_checkstack(L, 4, "payload nesting");
        return object(d, skip, depth);
    default: {
        /* a plain integer of up to 18 digits (keys, counters): read in one pass. Anything
         * else (fractions, exponents, leading zeros, long ones, errors) takes the full path */
        if (cls != SN_CLASS_FLOAT && cls != SN_CLASS_DECIMAL && !skip) {
            const char *p = d->p, *e = d->end;
            int neg = p < e && *p == '-';
            p += neg;
            if (p < e && *p >= '1' && *p <= '9') {
                const char *digits = p;
                lua_Integer v = 0;
                while (p < e && *p >= '0' && *p <= '9' && p - digits < 18) /* no overflow */
                    v = v * 10 + (*p++ - '0');
                if (p >= e || ((*p < '0' || *p > '9') && *p != '.' && *p != 'e' && *p != 'E')) {
                    lua_pushinteger(L, neg ? -v : v);
                    d->p = p;
                    return 1;
                }
            }
        }
        size_t len = 0;
        int integral = 0;
        if (!number_span(d, &len, &integral))
            return -1;
        if (!skip) {
            if (cls == SN_CLASS_DECIMAL) {
                lua_pushlstring(L, d->p, len); /* every digit, as the database sent it */
            } else {
                push_number(L, d->p, len, integral, cls == SN_CLASS_FLOAT);
                if (cls == SN_CLASS_INTEGER && integral && !lua_isinteger(L, -1)) {
                    lua_pop(L, 1); /* past 64 bits (MySQL's BIGINT UNSIGNED): exact, as text */
                    lua_pushlstring(L, d->p, len);
                }
            }
        }
        d->p += len;
        return 1;
    }
    }
    return bad_syntax(d, "a bad value"), -1;
}

/* ===== the payload ===== */

/* Position of the name k in cols[0..n), trying *hint first (triggers send one order). */
static int find(const pcol *cols, int n, const char *k, size_t klen, int *hint)
{
    int h = *hint;
    if (h < n && cols[h].len == klen && memcmp(cols[h].name, k, klen) == 0) {
        *hint = h + 1;
        return h;
    }
    for (int i = 0; i < n; i++)
        if (cols[i].len == klen && memcmp(cols[i].name, k, klen) == 0) {
            *hint = i + 1;
            return i;
        }
    return -1;
}

/* Where one column object's values go. */
typedef struct target {
    const char *what;  /* "id", "x", "o", "oid": for messages */
    int first, n;      /* its columns: cols[first .. first+n) */
    int byname;        /* stack index of a table by column name, or 0 */
    int id;            /* key objects: stack index of the id slot (value, or array when n > 1) */
    int required;      /* key objects: every column present, each a scalar or null */
    int follow;        /* keep the columns the plan does not know, by their JSON type */
    int live;          /* its columns not gone: fewer present is news */
} target;

/* {"col": value, ...}: known columns into the target, others checked and skipped. */
static int columns(dec *d, const target *t)
{
    lua_State *L = d->L;
    const pcol *cols = d->pl->cols + t->first;
    unsigned char seen[MAX_COLS / 8];
    memset(seen, 0, (size_t)(t->n + 7) / 8);
    int hint = 0, found = 0;
    d->unknown = 0;
    ws(d);
    if (!expect(d, '{'))
        return bad(d, "\"%s\" is not an object", t->what);
    if (!expect(d, '}')) {
        do {
            const char *k;
            size_t klen;
            if (!expect(d, '"'))
                return bad_syntax(d, "a missing object key");
            int r = string(d, &k, &klen);
            if (r == 0)
                return 0;
            int at = find(cols, t->n, k, klen, &hint);
            int keep = at < 0 && t->follow;
            if (keep) { /* its own name, under the value */
                lua_pushlstring(L, k, klen);
                if (r == 2)
                    lua_remove(L, -2);
            } else if (r == 2) {
                lua_pop(L, 1); /* the unescaped key: from here on the name is the plan's */
            }
            if (at >= 0) {
                k = cols[at].name;
                if (seen[at / 8] & (1u << (at % 8))) {
                    char name[200];
                    return bad(d, "a duplicate key \"%s\" in \"%s\"", shown(name, sizeof name, k, klen), t->what);
                }
                seen[at / 8] |= (unsigned char)(1u << (at % 8));
                found += !cols[at].gone;
            }
            if (!expect(d, ':'))
                return bad_syntax(d, "a missing ':'");
            ws(d);
            if (at >= 0 && t->required && d->p < d->end && (*d->p == '{' || *d->p == '[')) {
                char name[200];
                return bad(d, "key column \"%s\" in \"%s\" is not a scalar", shown(name, sizeof name, k, klen), t->what);
            }
            if (at < 0) {
                d->unknown++;
                r = value(d, SN_CLASS_OTHER, !keep, 0);
                if (r < 0)
                    return 0;
                if (!keep)
                    continue;
                if (r == 0 && !d->pl->nulls) {
                    lua_pop(L, 1); /* NULL: absent */
                    continue;
                }
                if (r == 0)
                    lua_pushlightuserdata(L, NULL);
                lua_rawset(L, t->byname);
                continue;
            }
            /* the plan's name under the value, for one lua_rawset without copies */
            if (t->byname)
                lua_rawgeti(L, d->names, t->first + at + 1);
            r = value(d, cols[at].cls, 0, 0);
            if (r < 0)
                return 0;
            if (r == 0) {
                if (!d->pl->nulls) { /* NULL: absent */
                    if (t->byname)
                        lua_pop(L, 1);
                    continue;
                }
                lua_pushlightuserdata(L, NULL);
            }
            if (t->id) {
                if (t->byname)
                    lua_pushvalue(L, -1);
                if (t->n == 1)
                    lua_replace(L, t->id);
                else
                    lua_rawseti(L, t->id, at + 1);
            }
            if (t->byname)
                lua_rawset(L, t->byname);
        } while (expect(d, ','));
        if (!expect(d, '}'))
            return bad_syntax(d, "a missing ',' or '}'");
    }
    if (t->required && found < t->n)
        for (int i = 0; i < t->n; i++)
            if (!(seen[i / 8] & (1u << (i % 8)))) {
                char name[200];
                return bad(d, "\"%s\" lacks key column \"%s\"", t->what, shown(name, sizeof name, cols[i].name, cols[i].len));
            }
    d->found = found;
    return 1;
}

/* Stack slots of l_decode. */
enum { A_PLAN = 1, A_PAYLOAD, A_CHANNEL, A_TS, S_NAMES, S_EVENT, S_KEY, S_ID, S_EXTRA, S_OLD, S_OLDID, S_SCRATCH };

enum { K_ID = 1, K_X = 2, K_O = 4, K_OID = 8, K_T = 16, K_V = 32 };

/* "v": the wire version, a whole number from 1 (absent: 1). A newer one is refused with a
 * reason that names the upgrade, and d->newer set. */
static int version(dec *d)
{
    ws(d);
    long long v = 0;
    const char *from = d->p;
    while (d->p < d->end && *d->p >= '0' && *d->p <= '9' && v < 1000000000)
        v = v * 10 + (*d->p++ - '0');
    if (d->p == from || (d->p < d->end && (*d->p == '.' || *d->p == 'e' || *d->p == 'E' ||
                                           (*d->p >= '0' && *d->p <= '9'))) || v < 1)
        return bad(d, "\"v\" is not a wire format version (a whole number from 1)");
    if (v > SN_WIRE_VERSION) {
        d->newer = 1;
        return bad(d, "it is in wire format version %lld, and this sqlnotify-lua reads up to version %d: upgrade "
                      "sqlnotify-lua to the release of the writers' triggers",
                   v, SN_WIRE_VERSION);
    }
    return 1;
}

/* The top-level object: 1, 2 when truncated, 0 malformed. */
static int payload(dec *d)
{
    lua_State *L = d->L;
    const sn_plan *pl = d->pl;
    int seen = 0, truncated = 0;
    if (!expect(d, '{'))
        return bad(d, "not a JSON object");
    if (!expect(d, '}')) {
        do {
            const char *k;
            size_t klen;
            if (!expect(d, '"'))
                return bad_syntax(d, "a missing object key");
            int r = string(d, &k, &klen);
            if (r == 0)
                return 0;
            int which = klen == 2 && memcmp(k, "id", 2) == 0    ? K_ID
                        : klen == 1 && *k == 'x'                 ? K_X
                        : klen == 1 && *k == 'o'                 ? K_O
                        : klen == 3 && memcmp(k, "oid", 3) == 0 ? K_OID
                        : klen == 1 && *k == 't'                 ? K_T
                        : klen == 1 && *k == 'v'                 ? K_V
                                                                 : 0;
            if (which == 0) {
                char name[200];
                bad(d, "an unknown key \"%s\"", shown(name, sizeof name, k, klen));
            }
            if (r == 2)
                lua_pop(L, 1);
            if (which == 0)
                return 0;
            if (seen & which)
                return bad(d, "a duplicate key \"%s\"", which == K_ID ? "id" : which == K_X ? "x" : which == K_O ? "o"
                                                        : which == K_OID ? "oid" : which == K_T ? "t" : "v");
            seen |= which;
            if (!expect(d, ':'))
                return bad_syntax(d, "a missing ':'");
            target t = {0};
            switch (which) {
            case K_ID:
                t = (target){"id", 0, pl->npk, S_KEY, S_ID, 1, 0, pl->npk};
                break;
            case K_X:
                t = (target){"x", pl->npk, pl->nextra, S_EXTRA, 0, 0, pl->follow, pl->xlive};
                break;
            case K_O: /* a watch without old_columns: checked, not kept */
                t = (target){"o", pl->npk + pl->nextra, pl->nold, pl->has_old ? S_OLD : 0, 0, 0, 0, pl->olive};
                break;
            case K_OID:
                if (pl->npk > 1) {
                    lua_createtable(L, pl->npk, 0);
                    lua_replace(L, S_OLDID);
                }
                t = (target){"oid", 0, pl->npk, 0, S_OLDID, 1, 0, pl->npk};
                break;
            case K_V:
                if (!version(d))
                    return 0;
                continue;
            case K_T:
                ws(d);
                if (d->end - d->p >= 4 && memcmp(d->p, "true", 4) == 0) {
                    d->p += 4;
                    truncated = 1;
                } else if (d->end - d->p >= 5 && memcmp(d->p, "false", 5) == 0) {
                    d->p += 5;
                } else {
                    return bad(d, "\"t\" is not true or false");
                }
                continue;
            }
            if (!columns(d, &t))
                return 0;
            /* a column of the plan absent (renamed or dropped since?), or one it does not know
             * in a watch of every column (added since?) */
            if ((which == K_X || which == K_O) && (d->found < t.live || (which == K_X && pl->follow && d->unknown > 0)))
                d->drift = 1;
        } while (expect(d, ','));
        if (!expect(d, '}'))
            return bad_syntax(d, "a missing ',' or '}'");
    }
    ws(d);
    if (d->p != d->end)
        return bad_syntax(d, "trailing text");
    d->seen = seen;
    if (!(seen & K_ID) && !truncated)
        return bad(d, "no \"id\" object");
    if (!truncated && ((!(seen & K_X) && pl->xlive > 0) || (!(seen & K_O) && pl->olive > 0)))
        d->drift = 1;
    return 1 + truncated;
}

/* Upvalues of core.decode: the plan metatable, then the event's field names, interned
 * once so that each event sets its fields with lua_rawset instead of lua_setfield
 * (which hashes or looks up each C string again). */
enum { U_META = 1, U_SCHEMA, U_TABLE, U_OPERATION, U_ID, U_KEY, U_EXTRA, U_OLD, U_OLD_ID, U_CHANNEL,
       U_TIMESTAMP, U_TRUNCATED, U_N = U_TRUNCATED };
static const char *const event_fields[] = {"schema", "table", "operation", "id", "key", "extra_columns", "old",
                                           "old_id", "channel", "timestamp", "truncated"};

/* event[upvalue u] = the value at stack index v */
static void set_field(lua_State *L, int ev, int u, int v)
{
    lua_pushvalue(L, lua_upvalueindex(u));
    lua_pushvalue(L, v);
    lua_rawset(L, ev);
}

/* core.decode(plan, payload, channel, timestamp) -> event | nil, reason, newer (true: refused for a
 * wire version newer than this release's) */
static int l_decode(lua_State *L)
{
    /* luaL_checkudata's registry lookup by name, without the lookup: same check */
    sn_plan *pl = lua_touserdata(L, A_PLAN);
    if (pl == NULL || !lua_getmetatable(L, A_PLAN) || !lua_rawequal(L, -1, lua_upvalueindex(U_META)))
        luaL_typeerror(L, A_PLAN, PLAN_META);
    lua_pop(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, A_PAYLOAD, &len);
    luaL_checktype(L, A_CHANNEL, LUA_TSTRING);
    luaL_checktype(L, A_TS, LUA_TNUMBER);
    lua_settop(L, A_TS);
    lua_getiuservalue(L, A_PLAN, 1);              /* S_NAMES */
    lua_createtable(L, 0, 11);                    /* S_EVENT */
    lua_createtable(L, 0, pl->npk);               /* S_KEY */
    if (pl->npk > 1)
        lua_createtable(L, pl->npk, 0);           /* S_ID */
    else
        lua_pushnil(L);
    lua_createtable(L, 0, pl->nextra);            /* S_EXTRA */
    if (pl->has_old)
        lua_createtable(L, 0, pl->nold);          /* S_OLD */
    else
        lua_pushnil(L);
    lua_pushnil(L);                               /* S_OLDID */
    dec d; /* field by field: an initializer would clear all of why[] on every event */
    d.L = L;
    d.start = d.p = s;
    d.end = s + len;
    d.pl = pl;
    d.names = S_NAMES;
    d.seen = 0;
    d.drift = 0;
    d.why[0] = '\0';
    d.newer = 0;
    int r = payload(&d);
    if (r == 0) {
        lua_pushnil(L);
        lua_pushstring(L, d.why);
        lua_pushboolean(L, d.newer);
        return 3;
    }
    lua_settop(L, S_OLDID);
    int truncated = r == 2;
    int ev = S_EVENT;
    for (int f = 0; f < 3; f++) { /* schema, table, operation */
        lua_pushvalue(L, lua_upvalueindex(U_SCHEMA + f));
        lua_rawgeti(L, S_NAMES, pl->ncols + 1 + f);
        lua_rawset(L, ev);
    }
    if (pl->npk > 0 && (d.seen & K_ID))
        set_field(L, ev, U_ID, S_ID);
    set_field(L, ev, U_KEY, S_KEY);
    set_field(L, ev, U_EXTRA, S_EXTRA);
    if (pl->has_old)
        set_field(L, ev, U_OLD, S_OLD);
    if (pl->npk > 0 && (d.seen & K_OID))
        set_field(L, ev, U_OLD_ID, S_OLDID);
    set_field(L, ev, U_CHANNEL, A_CHANNEL);
    set_field(L, ev, U_TIMESTAMP, A_TS);
    lua_pushvalue(L, lua_upvalueindex(U_TRUNCATED));
    lua_pushboolean(L, truncated);
    lua_rawset(L, ev);
    lua_pushvalue(L, ev);
    if (!d.drift)
        return 1;
    lua_pushnil(L);
    lua_pushboolean(L, 1);
    return 3;
}

/* ===== registration ===== */

static const luaL_Reg decodelib[] = {
    {"plan", l_plan},
    {NULL, NULL},
};

void sn_decode_open(lua_State *L)
{
    luaL_newmetatable(L, PLAN_META);
    for (int u = U_SCHEMA; u <= U_N; u++)
        lua_pushstring(L, event_fields[u - U_SCHEMA]);
    lua_pushcclosure(L, l_decode, U_N);
    lua_setfield(L, -2, "decode");
    luaL_setfuncs(L, decodelib, 0);
    lua_pushlightuserdata(L, NULL); /* equal to lua-cjson's null: one sentinel for both */
    lua_setfield(L, -2, "null");
}
