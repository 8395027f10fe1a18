/*
 * sql.c — building SQL text for MySQL/MariaDB: identifiers in backticks (doubled inside),
 * literals escaped as the server reads them under our sql_mode (backslash escapes on,
 * ANSI_QUOTES off: every session of ours sets it), hex.
 */
#include "my.h"

static int grow(my_sbuf *b, size_t more)
{
    if (b->oom)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (s == NULL) {
        b->oom = 1;
        return -1;
    }
    b->s = s;
    b->cap = cap;
    return 0;
}

void my_sb_addn(my_sbuf *b, const char *s, size_t n)
{
    if (grow(b, n) < 0)
        return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void my_sb_add(my_sbuf *b, const char *s) { my_sb_addn(b, s, strlen(s)); }

void my_sb_addf(my_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || grow(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void my_sb_ident(my_sbuf *b, const char *name)
{
    my_sb_addn(b, "`", 1);
    for (const char *p = name; *p; p++) {
        if (*p == '`')
            my_sb_addn(b, "`", 1); /* doubled */
        my_sb_addn(b, p, 1);
    }
    my_sb_addn(b, "`", 1);
}

void my_sb_qname(my_sbuf *b, const char *schema, const char *name)
{
    my_sb_ident(b, schema);
    my_sb_addn(b, ".", 1);
    my_sb_ident(b, name);
}

void my_sb_lit(my_sbuf *b, const char *s, size_t n)
{
    if (grow(b, 2 * n + 2) < 0)
        return;
    char *o = b->s + b->len;
    *o++ = '\'';
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        switch (ch) {
        case '\0': *o++ = '\\'; *o++ = '0'; break;
        case '\'': *o++ = '\\'; *o++ = '\''; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\032': *o++ = '\\'; *o++ = 'Z'; break;
        default: *o++ = ch; break;
        }
    }
    *o++ = '\'';
    b->len = (size_t)(o - b->s);
    b->s[b->len] = '\0';
}

static const char hexdig[] = "0123456789abcdef";

void my_sb_hex(my_sbuf *b, const char *s, size_t n)
{
    if (grow(b, 2 * n) < 0)
        return;
    char *o = b->s + b->len;
    for (size_t i = 0; i < n; i++) {
        *o++ = hexdig[(unsigned char)s[i] >> 4];
        *o++ = hexdig[(unsigned char)s[i] & 15];
    }
    b->len += 2 * n;
    b->s[b->len] = '\0';
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

int my_unhex(const char *hex, size_t n, my_sbuf *out)
{
    if (n % 2)
        return -1;
    my_sb_addn(out, "", 0);
    for (size_t i = 0; i < n; i += 2) {
        int a = hexval((unsigned char)hex[i]), z = hexval((unsigned char)hex[i + 1]);
        if (a < 0 || z < 0)
            return -1;
        char ch = (char)(a << 4 | z);
        my_sb_addn(out, &ch, 1);
    }
    return out->oom ? -1 : 0;
}

void my_sb_free(my_sbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}
