/*
 * members.c — what the SQLite and MySQL drivers share about a durable consumer's members
 * (src/dialect.h): the set of tables a process reads, its text as the member row keeps it,
 * what another member's text has that ours lacks, and the log lines about it. Where the rows
 * live, and when they are written and read, is each driver's (consumers.c, reader.c).
 */
#include <stdlib.h>
#include <string.h>

#include "dialect.h"

/* The index of name[0..len) in t, or where it would go (*at); 1 when found. */
static int find(const sn_tables *t, const char *name, size_t len, int *at)
{
    int lo = 0, hi = t->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int d = strncmp(t->v[mid], name, len);
        if (d == 0 && t->v[mid][len] != '\0')
            d = 1; /* longer, with name as its start */
        if (d < 0)
            lo = mid + 1;
        else if (d > 0)
            hi = mid;
        else {
            *at = mid;
            return 1;
        }
    }
    *at = lo;
    return 0;
}

int sn_tables_add(sn_tables *t, const char *channel)
{
    size_t len = (size_t)sn_plain_len(channel);
    int at;
    if (find(t, channel, len, &at))
        return 0;
    char **v = realloc(t->v, (size_t)(t->n + 1) * sizeof *v);
    if (v == NULL)
        return -1;
    t->v = v;
    char *s = malloc(len + 1);
    if (s == NULL)
        return -1;
    memcpy(s, channel, len);
    s[len] = '\0';
    memmove(&v[at + 1], &v[at], (size_t)(t->n - at) * sizeof *v);
    v[at] = s;
    t->n++;
    return 1;
}

void sn_tables_remove(sn_tables *t, const char *channel)
{
    int at;
    if (!find(t, channel, (size_t)sn_plain_len(channel), &at))
        return;
    free(t->v[at]);
    memmove(&t->v[at], &t->v[at + 1], (size_t)(t->n - at - 1) * sizeof *t->v);
    t->n--;
}

void sn_tables_text(const sn_tables *t, sn_sbuf *b)
{
    sn_sb_addn(b, "", 0);
    for (int i = 0; i < t->n; i++) {
        if (i)
            sn_sb_addn(b, "\n", 1);
        sn_sb_add(b, t->v[i]);
    }
}

void sn_tables_free(sn_tables *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->v[i]);
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

int sn_tables_lacking(const sn_tables *t, long long pid, const char *host, const char *text, sn_sbuf *b)
{
    int any = 0;
    for (const char *p = text ? text : ""; *p;) {
        size_t len = strcspn(p, "\n");
        int at;
        if (len > 0 && !find(t, p, len, &at)) {
            if (!any)
                sn_sb_addf(b, "%spid %lld on %s: ", b->len ? "; " : "", pid, host ? host : "?");
            else
                sn_sb_addn(b, ", ", 2);
            sn_sb_addn(b, p, len);
            any = 1;
        }
        p += len;
        if (*p == '\n')
            p++;
    }
    return any;
}

void sn_members_say(const sn_sink *sink, const char *consumer, char **said, const char *lacking, int members)
{
    if (lacking == NULL) {
        if (*said)
            sn_logf(sink, SN_LOG_INFO,
                    "consumer \"%s\": no other member watches a table this process does not any more; it may read"
                    " again",
                    consumer);
        free(*said);
        *said = NULL;
        return;
    }
    if (*said && strcmp(*said, lacking) == 0)
        return;
    char *copy = strdup(lacking);
    if (copy == NULL)
        return;
    free(*said);
    *said = copy;
    if (members == 1)
        sn_logf(sink, SN_LOG_ERROR,
                "consumer \"%s\": another member watches tables this process does not (%s); this one reads nothing"
                " while that member runs, or it would skip their rows: a consumer's members must watch the same"
                " tables (give each script its own consumer name)",
                consumer, lacking);
    else
        sn_logf(sink, SN_LOG_ERROR,
                "consumer \"%s\": other members watch tables this process does not (%s); this one reads nothing"
                " while they run, or it would skip their rows: a consumer's members must watch the same tables"
                " (give each script its own consumer name)",
                consumer, lacking);
}
