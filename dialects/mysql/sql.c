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


/* Statement name of a .sql text kept as data (a line "-- name: <name>" up to the next one,
 * comment lines left out, as lua/sqlnotify/statements.lua reads them) appended to b, each ?
 * replaced by the next of lits as a literal. 0, or -1: no such statement, or lits ran out. */
int my_sb_statement(sn_sbuf *b, const char *text, const char *name, const char *const *lits, int n)
{
    size_t nlen = strlen(name);
    const char *p = text;
    for (;;) {
        p = strstr(p, "-- name: ");
        if (p == NULL)
            return -1;
        if ((p == text || p[-1] == '\n') && strncmp(p + 9, name, nlen) == 0 && (p[9 + nlen] == '\n' || !p[9 + nlen]))
            break;
        p += 9;
    }
    p = strchr(p, '\n');
    int used = 0;
    while (p && *++p && strncmp(p, "-- name: ", 9) != 0) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (s < p + len && (*s == ' ' || *s == '\t'))
            s++;
        if (!(s + 1 < p + len && s[0] == '-' && s[1] == '-') && s < p + len) {
            for (const char *q = p; q < p + len; q++) {
                if (*q != '?') {
                    sn_sb_addn(b, q, 1);
                } else if (used < n) {
                    my_sb_lit(b, lits[used], strlen(lits[used]));
                    used++;
                } else {
                    return -1;
                }
            }
            sn_sb_addn(b, " ", 1);
        }
        p = end;
    }
    return 0;
}
