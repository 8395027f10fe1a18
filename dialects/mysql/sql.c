/*
 * sql.c — building SQL text for MySQL/MariaDB: identifiers in backticks (doubled inside),
 * literals escaped as the server reads them under our sql_mode (backslash escapes on,
 * ANSI_QUOTES off: every session of ours sets it), hex.
 */
#include "my.h"

void my_sb_ident(sn_sbuf *b, const char *name)
{
    sn_sb_addn(b, "`", 1);
    for (const char *p = name; *p; p++) {
        if (*p == '`')
            sn_sb_addn(b, "`", 1); /* doubled */
        sn_sb_addn(b, p, 1);
    }
    sn_sb_addn(b, "`", 1);
}

void my_sb_qname(sn_sbuf *b, const char *schema, const char *name)
{
    my_sb_ident(b, schema);
    sn_sb_addn(b, ".", 1);
    my_sb_ident(b, name);
}

void my_sb_lit(sn_sbuf *b, const char *s, size_t n)
{
    if (sn_sb_reserve(b, 2 * n + 2) < 0)
        return;
    char *o = b->p + b->len;
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
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

static const char hexdig[] = "0123456789abcdef";

void my_sb_hex(sn_sbuf *b, const char *s, size_t n)
{
    if (sn_sb_reserve(b, 2 * n) < 0)
        return;
    char *o = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        *o++ = hexdig[(unsigned char)s[i] >> 4];
        *o++ = hexdig[(unsigned char)s[i] & 15];
    }
    b->len += 2 * n;
    b->p[b->len] = '\0';
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

int my_unhex(const char *hex, size_t n, sn_sbuf *out)
{
    if (n % 2)
        return -1;
    sn_sb_addn(out, "", 0);
    for (size_t i = 0; i < n; i += 2) {
        int a = hexval((unsigned char)hex[i]), z = hexval((unsigned char)hex[i + 1]);
        if (a < 0 || z < 0)
            return -1;
        char ch = (char)(a << 4 | z);
        sn_sb_addn(out, &ch, 1);
    }
    return out->fail ? -1 : 0;
}

