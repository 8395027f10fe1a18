/*
 * sql.c — a growing string for generated SQL and messages, with libpq's quoting.
 * The first failure (out of memory, a name libpq cannot quote) sticks and is
 * reported once by whoever built the text.
 */
#include "pg.h"

void pg_sb_addn(pg_sbuf *b, const char *s, size_t n)
{
    if (b->fail)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->fail = "out of memory";
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void pg_sb_add(pg_sbuf *b, const char *s)
{
    if (s) /* NULL: a part that already failed (its failure is reported instead) */
        pg_sb_addn(b, s, strlen(s));
}

void pg_sb_addf(pg_sbuf *b, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) {
        if (!b->fail)
            b->fail = "text too long";
        return;
    }
    pg_sb_addn(b, buf, (size_t)n);
}

void pg_sb_quote(pg_sbuf *b, PGconn *db, const char *s, int ident)
{
    if (b->fail)
        return;
    char *q = ident ? PQescapeIdentifier(db, s, strlen(s)) : PQescapeLiteral(db, s, strlen(s));
    if (q == NULL) {
        b->fail = "cannot quote a name (out of memory or not valid in the client encoding)";
        return;
    }
    pg_sb_add(b, q);
    PQfreemem(q);
}

void pg_sb_qname(pg_sbuf *b, PGconn *db, const char *schema, const char *name)
{
    pg_sb_quote(b, db, schema, 1);
    pg_sb_add(b, ".");
    pg_sb_quote(b, db, name, 1);
}

/* As string.format("%q", s) does, so a table named in an error reads as init.lua names it. */
void pg_sb_luaq(pg_sbuf *b, const char *s)
{
    pg_sb_add(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\' || *p == '\n') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            pg_sb_addn(b, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            int digit_next = p[1] >= '0' && p[1] <= '9';
            snprintf(esc, sizeof esc, digit_next ? "\\%03d" : "\\%d", *p);
            pg_sb_add(b, esc);
        } else {
            pg_sb_addn(b, (const char *)p, 1);
        }
    }
    pg_sb_add(b, "\"");
}
