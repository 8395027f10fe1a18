/*
 * sql.c — libpq's quoting, and Lua's %q for messages, into the kit's growing string
 * (sn_sbuf, src/sbuf.c): a name libpq cannot quote is the string's sticking failure.
 */
#include "pg.h"

void pg_sb_quote(sn_sbuf *b, PGconn *db, const char *s, int ident)
{
    if (b->fail)
        return;
    char *q = ident ? PQescapeIdentifier(db, s, strlen(s)) : PQescapeLiteral(db, s, strlen(s));
    if (q == NULL) {
        sn_sb_fail(b, "cannot quote a name (out of memory or not valid in the client encoding)");
        return;
    }
    sn_sb_add(b, q);
    PQfreemem(q);
}

void pg_sb_qname(sn_sbuf *b, PGconn *db, const char *schema, const char *name)
{
    pg_sb_quote(b, db, schema, 1);
    sn_sb_add(b, ".");
    pg_sb_quote(b, db, name, 1);
}

/* As string.format("%q", s) does, so a table named in an error reads as init.lua names it. */
void pg_sb_luaq(sn_sbuf *b, const char *s)
{
    sn_sb_add(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\' || *p == '\n') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sn_sb_addn(b, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            int digit_next = p[1] >= '0' && p[1] <= '9';
            snprintf(esc, sizeof esc, digit_next ? "\\%03d" : "\\%d", *p);
            sn_sb_add(b, esc);
        } else {
            sn_sb_addn(b, (const char *)p, 1);
        }
    }
    sn_sb_add(b, "\"");
}
