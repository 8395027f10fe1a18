/*
 * sbuf.c — the drivers' growing string, for generated SQL and messages (src/dialect.h).
 * The first failure sticks (out of memory, or a part its builder could not make) and every
 * later addition is a no-op, so a builder checks once, at the end; no length is capped.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dialect.h"

int sn_sb_reserve(sn_sbuf *b, size_t more)
{
    if (b->fail)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->fail = "out of memory";
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void sn_sb_addn(sn_sbuf *b, const char *s, size_t n)
{
    if (sn_sb_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void sn_sb_add(sn_sbuf *b, const char *s)
{
    if (s) /* NULL: a part that already failed (its failure is reported instead) */
        sn_sb_addn(b, s, strlen(s));
}

void sn_sb_addf(sn_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sn_sb_fail(b, "cannot format text");
        return;
    }
    if (sn_sb_reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sn_sb_fail(sn_sbuf *b, const char *why)
{
    if (!b->fail && why)
        b->fail = why;
}

void sn_sb_free(sn_sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
