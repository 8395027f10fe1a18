/*
 * decode.c — the binding's decoder of trigger payloads (core.decode).
 */
#include <errno.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "binding.h"

/* ===== payload decoding: the fast path ===== */

/* Our triggers send {"id": {<pk>: v, ...}, "x": {<extra>: v, ...}} (with "t": true when
 * truncated). Decoding that one shape here, straight into presized tables and with
 * integers kept integers, takes about a third off the cost of an event. Anything else
 * (a nested value, an unknown key, bad syntax, a hostile payload) makes decode()
 * return false, and the caller takes the general path through lua-cjson. */

typedef struct jcur {
    const char *p, *end;
} jcur;

static void jskip(jcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int jexpect(jcur *c, char ch)
{
    jskip(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int jhex4(jcur *c, unsigned *out)
{
    if (c->end - c->p < 4)
        return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)c->p[i]);
        if (h < 0)
            return 0;
        v = v << 4 | (unsigned)h;
    }
    c->p += 4;
    *out = v;
    return 1;
}

static void put_utf8(luaL_Buffer *b, unsigned cp)
{
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | (cp >> 6 & 0x3F)); u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    luaL_addlstring(b, u, (size_t)n);
}

/* A JSON string (after its opening quote) pushed as a Lua string. 0: not ours. */
static int jstring(lua_State *L, jcur *c)
{
    const char *start = c->p;
    while (c->p < c->end && *c->p != '"' && *c->p != '\\' && (unsigned char)*c->p >= 0x20)
        c->p++;
    if (c->p < c->end && *c->p == '"') { /* no escapes: the common case */
        lua_pushlstring(L, start, (size_t)(c->p - start));
        c->p++;
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, start, (size_t)(c->p - start));
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"') {
            luaL_pushresult(&b);
            return 1;
        }
        if (ch < 0x20)
            break;
        if (ch != '\\') {
            luaL_addchar(&b, (char)ch);
            continue;
        }
        if (c->p >= c->end)
            break;
        unsigned cp;
        switch (*c->p++) {
        case '"': luaL_addchar(&b, '"'); break;
        case '\\': luaL_addchar(&b, '\\'); break;
        case '/': luaL_addchar(&b, '/'); break;
        case 'b': luaL_addchar(&b, '\b'); break;
        case 'f': luaL_addchar(&b, '\f'); break;
        case 'n': luaL_addchar(&b, '\n'); break;
        case 'r': luaL_addchar(&b, '\r'); break;
        case 't': luaL_addchar(&b, '\t'); break;
        case 'u':
            if (!jhex4(c, &cp))
                goto bad;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                unsigned lo;
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u')
                    goto bad;
                c->p += 2;
                if (!jhex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto bad;
            }
            put_utf8(&b, cp);
            break;
        default: goto bad;
        }
    }
bad:
    luaL_pushresult(&b);
    lua_pop(L, 1);
    return 0;
}

/* A JSON number pushed as cjson plus our normalisation would give it: integral values
 * as integers (exactly, up to 64 bits), others as floats. 0: not a number. */
static int jnumber(lua_State *L, jcur *c)
{
    const char *start = c->p;
    int integral = 1;
    if (c->p < c->end && *c->p == '-')
        c->p++;
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return 0;
    while (c->p < c->end && ((*c->p >= '0' && *c->p <= '9') || *c->p == '.' || *c->p == 'e' || *c->p == 'E' ||
                             *c->p == '+' || *c->p == '-')) {
        if (*c->p == '.' || *c->p == 'e' || *c->p == 'E')
            integral = 0;
        c->p++;
    }
    char buf[64];
    size_t len = (size_t)(c->p - start);
    if (len >= sizeof buf)
        return 0;
    memcpy(buf, start, len);
    buf[len] = '\0';
    char *stop;
    if (integral) {
        errno = 0;
        long long v = strtoll(buf, &stop, 10);
        if (*stop == '\0' && errno == 0) {
            lua_pushinteger(L, (lua_Integer)v);
            return 1;
        }
    }
    double d = strtod(buf, &stop);
    if (*stop != '\0')
        return 0;
    if (d > -9007199254740992.0 && d < 9007199254740992.0 && d == (double)(long long)d)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
    return 1;
}

/* A scalar value pushed (nil for null). 0: not ours (nested, or bad). */
static int jvalue(lua_State *L, jcur *c)
{
    jskip(c);
    if (c->p >= c->end)
        return 0;
    switch (*c->p) {
    case '"': c->p++; return jstring(L, c);
    case 't':
        if (c->end - c->p >= 4 && memcmp(c->p, "true", 4) == 0) { c->p += 4; lua_pushboolean(L, 1); return 1; }
        return 0;
    case 'f':
        if (c->end - c->p >= 5 && memcmp(c->p, "false", 5) == 0) { c->p += 5; lua_pushboolean(L, 0); return 1; }
        return 0;
    case 'n':
        if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) { c->p += 4; lua_pushnil(L); return 1; }
        return 0;
    default: return jnumber(L, c);
    }
}

/* Position (1-based) of the key on top of the stack in the name list at index names, or 0. */
static int name_index(lua_State *L, int names, lua_Integer n)
{
    size_t klen;
    const char *k = lua_tolstring(L, -1, &klen);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, names, i);
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        lua_pop(L, 1);
        if (name && len == klen && memcmp(name, k, len) == 0)
            return (int)i;
    }
    return 0;
}

/* {"col": scalar, ...} into the table at dest: by position in names (array) or by name.
 * Returns how many of the names were present (null counts), or -1: not ours. */
static int jobject(lua_State *L, jcur *c, int names, lua_Integer n, int dest, int by_position)
{
    int base = lua_gettop(L), seen = 0;
    if (!jexpect(c, '{'))
        return -1;
    if (jexpect(c, '}'))
        return 0;
    do {
        if (!jexpect(c, '"') || !jstring(L, c))
            return -1;
        if (!jexpect(c, ':'))
            return -1;
        int at = name_index(L, names, n);
        if (!jvalue(L, c))
            return -1;
        seen += at > 0;
        if (at > 0 && by_position)
            lua_rawseti(L, dest, at);
        else if (at > 0)
            lua_rawset(L, dest);
        lua_settop(L, base); /* drop what was not stored */
    } while (jexpect(c, ','));
    return jexpect(c, '}') ? seen : -1;
}

/* core.decode(payload, pk, extra) -> true, id, extra_columns, truncated, has_id, keys_complete
 * | false. keys_complete: every primary key column is present (a NULL unique key counts). */
static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer npk = luaL_len(L, 2), nextra = luaL_len(L, 3);
    lua_settop(L, 3);
    lua_createtable(L, (int)npk, 0);        /* 4: the key values, by position */
    lua_createtable(L, 0, (int)nextra);     /* 5: extra_columns */
    int truncated = 0, has_id = 0, keys = 0;
    jcur c = {s, s + len};
    if (!jexpect(&c, '{'))
        goto general;
    if (!jexpect(&c, '}')) {
        do {
            if (!jexpect(&c, '"') || !jstring(L, &c))
                goto general;
            size_t klen;
            const char *k = lua_tolstring(L, -1, &klen);
            int which = klen == 2 && memcmp(k, "id", 2) == 0 ? 1 : klen == 1 && *k == 'x' ? 2 : klen == 1 && *k == 't' ? 3 : 0;
            lua_settop(L, 5);
            if (which == 0 || !jexpect(&c, ':'))
                goto general;
            if (which == 1) {
                has_id = 1;
                if ((keys = jobject(L, &c, 2, npk, 4, 1)) < 0)
                    goto general;
            } else if (which == 2) {
                jskip(&c);
                if (c.end - c.p >= 4 && memcmp(c.p, "null", 4) == 0)
                    c.p += 4;
                else if (jobject(L, &c, 3, nextra, 5, 0) < 0)
                    goto general;
            } else {
                if (!jvalue(L, &c))
                    goto general;
                truncated = lua_toboolean(L, -1);
                lua_settop(L, 5);
            }
        } while (jexpect(&c, ','));
        if (!jexpect(&c, '}'))
            goto general;
    }
    jskip(&c);
    if (c.p != c.end)
        goto general;
    lua_pushboolean(L, 1);
    if (!has_id)
        lua_pushnil(L);
    else if (npk == 1)
        lua_rawgeti(L, 4, 1);
    else
        lua_pushvalue(L, 4);
    lua_pushvalue(L, 5);
    lua_pushboolean(L, truncated);
    lua_pushboolean(L, has_id);
    lua_pushboolean(L, keys == npk);
    return 6;
general:
    lua_pushboolean(L, 0);
    return 1;
}

void sn_decode_open(lua_State *L)
{
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
}
