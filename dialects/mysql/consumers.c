/*
 * consumers.c — where a journal reader stands, and the durable consumers' rows.
 *
 * An AUTO_INCREMENT value is taken when a row is inserted, not when its transaction
 * commits, so a reader can see id 11 while id 10 is still uncommitted (or rolled back, and
 * never coming). A reader therefore stands at `high`, the highest id it handled, plus the
 * list of ids below it it has not seen yet ("pending", as ranges). Each fetch asks for
 * ids above high and for the pending ones; a pending id is handled when it shows up, and
 * dropped once it is certain it never will (see reader.c: a locking probe finds no
 * transaction holding it, after a grace time). A durable consumer's row keeps both:
 * pos = high and pending as text ("lo-hi,id,..."), and low, the lowest id it still waits
 * for, by which pruning knows what it may remove.
 */
#include "my.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#define START_WINDOW 10000 /* ids below the end in which a starting reader looks for open gaps */

/* ===== the state ===== */

static int reserve(my_state *s, int n)
{
    if (n <= s->cap)
        return 0;
    int cap = s->cap ? s->cap * 2 : 16;
    while (cap < n)
        cap *= 2;
    my_range *r = realloc(s->r, (size_t)cap * sizeof *r);
    if (r == NULL)
        return -1;
    s->r = r;
    s->cap = cap;
    return 0;
}

static int insert_at(my_state *s, int i, my_range v)
{
    if (reserve(s, s->n + 1) < 0)
        return -1;
    memmove(&s->r[i + 1], &s->r[i], (size_t)(s->n - i) * sizeof *s->r);
    s->r[i] = v;
    s->n++;
    return 0;
}

void my_state_drop(my_state *s, int i)
{
    memmove(&s->r[i], &s->r[i + 1], (size_t)(s->n - i - 1) * sizeof *s->r);
    s->n--;
}

int my_state_see(my_state *s, int64_t id, double now)
{
    if (id > s->high) {
        if (id > s->high + 1 && insert_at(s, s->n, (my_range){s->high + 1, id - 1, now, 0}) < 0)
            return -1;
        s->high = id;
        return 0;
    }
    int lo = 0, hi = s->n - 1; /* the range holding id, by bisection */
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        my_range *r = &s->r[mid];
        if (id < r->lo) {
            hi = mid - 1;
        } else if (id > r->hi) {
            lo = mid + 1;
        } else {
            if (r->lo == r->hi)
                my_state_drop(s, mid);
            else if (id == r->lo)
                r->lo++;
            else if (id == r->hi)
                r->hi--;
            else {
                my_range upper = *r;
                upper.lo = id + 1;
                r->hi = id - 1;
                return insert_at(s, mid + 1, upper);
            }
            return 0;
        }
    }
    return 0; /* seen already */
}

void my_state_free(my_state *s)
{
    free(s->r);
    memset(s, 0, sizeof *s);
}

int64_t my_state_low(const my_state *s) { return s->n > 0 ? s->r[0].lo : s->high + 1; }

void my_state_pending_text(const my_state *s, sn_sbuf *b)
{
    sn_sb_addn(b, "", 0);
    for (int i = 0; i < s->n; i++) {
        if (s->r[i].lo == s->r[i].hi)
            sn_sb_addf(b, "%s%lld", i ? "," : "", (long long)s->r[i].lo);
        else
            sn_sb_addf(b, "%s%lld-%lld", i ? "," : "", (long long)s->r[i].lo, (long long)s->r[i].hi);
    }
}

/* Ranges ascending, disjoint and below high, or -1 (the caller then waits for nothing). */
int my_state_parse_pending(my_state *s, const char *text, double now)
{
    s->n = 0;
    const char *p = text;
    int64_t last = 0;
    while (*p) {
        char *end;
        errno = 0;
        long long lo = strtoll(p, &end, 10), hi = lo;
        if (end == p || errno)
            goto bad;
        p = end;
        if (*p == '-') {
            hi = strtoll(p + 1, &end, 10);
            if (end == p + 1 || errno)
                goto bad;
            p = end;
        }
        if (lo <= last || hi < lo || hi >= s->high || insert_at(s, s->n, (my_range){lo, hi, now, 0}) < 0)
            goto bad;
        last = hi;
        if (*p == ',')
            p++;
        else if (*p)
            goto bad;
    }
    return 0;
bad:
    s->n = 0;
    return -1;
}

int my_state_at_end(sn_conn *c, my_state *s, char *err, size_t errlen)
{
    sn_sbuf b = {0};
    MYSQL_RES *res = NULL;
    sn_sb_addf(&b, "SELECT id FROM %s WHERE id > (SELECT COALESCE(MAX(id), 0) - %d FROM %s) ORDER BY id", c->journal,
               START_WINDOW, c->journal);
    int rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, &res, err, errlen);
    sn_sb_free(&b);
    if (rc < 0)
        return -1;
    my_state_free(s);
    MYSQL_ROW row;
    double now = my_now();
    int first = 1;
    while ((row = mysql_fetch_row(res)) != NULL) {
        int64_t id = atoll(row[0]);
        if (first) /* the gaps below the first id are not ours to wait for */
            s->high = id - 1;
        first = 0;
        if (my_state_see(s, id, now) < 0) {
            mysql_free_result(res);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    }
    mysql_free_result(res);
    return 0;
}

/* ===== consumers ===== */

void my_lock_name(sn_conn *c, const char *consumer, char out[65])
{
    sn_sbuf b = {0};
    sn_sb_add(&b, c->p.db);
    sn_sb_addn(&b, "", 1);
    sn_sb_add(&b, consumer);
    snprintf(out, 65, "sqlnotify:consumer:%016llx",
             (unsigned long long)sn_hash64(b.p ? b.p : "", b.p ? b.len : 0, 0));
    sn_sb_free(&b);
}

int my_consumer_register(sn_conn *c, char *err, size_t errlen)
{
    sn_result *r = NULL;
    const char *args[4] = {c->consumer};
    if (my_journal_ensure(c, err, errlen) < 0)
        return -1;
    sn_sbuf sql = {0};
    sn_sb_addf(&sql, "SELECT pos FROM %s WHERE name = ?", c->consumers);
    int rc = sql.fail ? -1 : my_query(c, sql.p, 1, args, &r, err, errlen);
    int exists = rc == 0 && r->nrows > 0;
    sn_result_free(r);
    r = NULL;
    if (rc < 0 || exists) {
        sn_sb_free(&sql);
        return rc;
    }
    my_state s = {0};
    if (!c->start_beginning && my_state_at_end(c, &s, err, errlen) < 0) {
        sn_sb_free(&sql);
        return -1;
    }
    char pos[24], low[24];
    sn_sbuf pending = {0};
    my_state_pending_text(&s, &pending);
    snprintf(pos, sizeof pos, "%lld", (long long)s.high);
    snprintf(low, sizeof low, "%lld", (long long)my_state_low(&s));
    args[1] = pos;
    args[2] = pending.p ? pending.p : "";
    args[3] = low;
    sql.len = 0;
    sn_sb_addf(&sql, "INSERT IGNORE INTO %s (name, pos, pending, low, retention) VALUES (?, ?, ?, ?, %.3f)",
               c->consumers, c->consumer_retention);
    rc = sql.fail || pending.fail ? -1 : my_query(c, sql.p, 4, args, &r, err, errlen);
    if (rc == 0)
        sn_logf(&c->sink, SN_LOG_INFO, "consumer \"%s\" is new: it starts at the %s of the journal (id %lld)",
                c->consumer, c->start_beginning ? "beginning" : "end", (long long)s.high);
    sn_result_free(r);
    sn_sb_free(&sql);
    sn_sb_free(&pending);
    my_state_free(&s);
    return rc;
}

static int text_cell(sn_value *v, const char *s) { return s ? sn_value_text(v, s, strlen(s)) : 0; }

int my_consumers(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    static const char *const names[] = {"name", "lag_events", "lag_seconds", "members", "last_seen"};
    *out = NULL;
    if (my_journal_ensure(c, err, errlen) < 0)
        return -1;
    sn_sbuf sql = {0};
    MYSQL_RES *res = NULL;
    /* a consumer's own rows: on the channels it recorded (one of a release that recorded none:
     * every row) */
    sn_sbuf own = {0}, reads = {0};
    my_sb_qname(&reads, c->p.db, MY_READS);
    sn_sb_addf(&own,
               "j.id > c.pos AND (j.channel IN (SELECT r.channel FROM %s r WHERE r.consumer = c.name)"
               " OR NOT EXISTS (SELECT 1 FROM %s r WHERE r.consumer = c.name))",
               reads.p ? reads.p : "", reads.p ? reads.p : "");
    sn_sb_addf(&sql,
               "SELECT c.name, (SELECT COUNT(*) FROM %s j WHERE %s),"
               " COALESCE(TIMESTAMPDIFF(MICROSECOND, (SELECT MIN(j.created_at) FROM %s j WHERE %s),"
               " UTC_TIMESTAMP(6)) / 1e6, 0),"
               " DATE_FORMAT(c.last_seen, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ') FROM %s c ORDER BY c.name",
               c->journal, own.p ? own.p : "", c->journal, own.p ? own.p : "", c->consumers);
    sn_sb_fail(&sql, own.fail ? own.fail : reads.fail);
    sn_sb_free(&own);
    sn_sb_free(&reads);
    int rc = sql.fail ? -1 : my_exec(c, c->q, sql.p, sql.len, &res, err, errlen);
    sn_sb_free(&sql);
    if (rc < 0)
        return -1;
    sn_result *r = sn_result_new(5);
    int ok = r != NULL;
    for (int i = 0; ok && i < 5; i++)
        ok = sn_result_name(r, i, names[i]) == 0;
    MYSQL_ROW row;
    while (ok && (row = mysql_fetch_row(res)) != NULL) {
        char lock[65], members[4] = "0", lag[48];
        my_lock_name(c, row[0], lock);
        MYSQL_RES *lr = NULL;
        sn_sbuf q = {0};
        sn_sb_add(&q, "SELECT IS_USED_LOCK(");
        my_sb_lit(&q, lock, strlen(lock));
        sn_sb_add(&q, ")");
        if (!q.fail && my_exec(c, c->q, q.p, q.len, &lr, err, errlen) == 0) {
            MYSQL_ROW l = mysql_fetch_row(lr);
            if (l && l[0])
                members[0] = '1';
            mysql_free_result(lr);
        }
        sn_sb_free(&q);
        snprintf(lag, sizeof lag, "%.3f", row[2] ? atof(row[2]) : 0.0);
        sn_value *cells = sn_result_row(r);
        ok = cells && text_cell(&cells[0], row[0]) == 0 && text_cell(&cells[1], row[1]) == 0 &&
             text_cell(&cells[2], lag) == 0 && text_cell(&cells[3], members) == 0 && text_cell(&cells[4], row[3]) == 0;
    }
    mysql_free_result(res);
    if (!ok) {
        sn_result_free(r);
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    *out = r;
    return 0;
}

/* Whether this connection's consumer read the capture of channel before: 1, 0 (or unknown). */
int my_read_before(sn_conn *c, const char *channel)
{
    char err[256];
    sn_sbuf b = {0};
    sn_result *r = NULL;
    const char *args[2] = {c->consumer, channel};
    sn_sb_add(&b, "SELECT 1 FROM ");
    my_sb_qname(&b, c->p.db, MY_READS);
    sn_sb_add(&b, " WHERE consumer = ? AND channel = ?");
    int yes = !b.fail && my_query(c, b.p, 2, args, &r, err, sizeof err) == 0 && r->nrows > 0;
    sn_result_free(r);
    sn_sb_free(&b);
    return yes;
}

/* A capture's channel no consumer reads any more (its consumer dropped, or its columns
 * changed): its triggers go, so writers stop paying for rows no one reads; logged. With
 * forget_for, that consumer's record of reading it goes too once they went (else it is tried
 * again at its next start). */
void my_capture_unused(sn_conn *c, const char *channel, const char *forget_for)
{
    char err[600];
    int n = my_drop_channel(c, channel, err, sizeof err);
    if (n < 0) {
        sn_logf(&c->sink, SN_LOG_WARN, "cannot drop the trigger of capture %s, which no consumer reads any more: %s",
                channel, err);
        return;
    }
    if (n > 0)
        sn_logf(&c->sink, SN_LOG_INFO, "dropped %d trigger(s) of capture %s, which no consumer reads any more", n,
                channel);
    if (forget_for) {
        sn_sbuf b = {0};
        sn_result *r = NULL;
        const char *args[2] = {forget_for, channel};
        sn_sb_add(&b, "DELETE FROM ");
        my_sb_qname(&b, c->p.db, MY_READS);
        sn_sb_add(&b, " WHERE consumer = ? AND channel = ?");
        if (!b.fail)
            my_query(c, b.p, 2, args, &r, err, sizeof err);
        sn_result_free(r);
        sn_sb_free(&b);
    }
}

int my_drop_consumer(sn_conn *c, const char *name, char *err, size_t errlen)
{
    if (my_journal_ensure(c, err, errlen) < 0)
        return -1;
    sn_sbuf sql = {0};
    sn_result *r = NULL;
    const char *args[1] = {name};
    sn_sb_addf(&sql, "SELECT name FROM %s WHERE name = ?", c->consumers);
    int rc = sql.fail ? -1 : my_query(c, sql.p, 1, args, &r, err, errlen);
    int found = rc == 0 && r->nrows > 0;
    sn_result_free(r);
    r = NULL;
    sn_result *only = NULL; /* the captures only it read go with it, unless a process still reads it */
    char lock[65];
    my_lock_name(c, name, lock);
    const char *lockarg[1] = {lock};
    if (rc == 0 && found) {
        rc = my_query(c, "SELECT IS_USED_LOCK(?) IS NOT NULL", 1, lockarg, &r, err, errlen);
        int live = rc == 0 && r->nrows > 0 && r->cells[0].type != SN_NULL &&
                   ((r->cells[0].type == SN_INT && r->cells[0].i != 0) ||
                    (r->cells[0].type == SN_TEXT && strcmp(r->cells[0].s, "1") == 0));
        sn_result_free(r);
        r = NULL;
        if (live)
            found = 2;
    }
    if (rc == 0 && found == 1) {
        sql.len = 0;
        sn_sb_add(&sql, "SELECT r.channel FROM ");
        my_sb_qname(&sql, c->p.db, MY_READS);
        sn_sb_add(&sql, " r WHERE r.consumer = ? AND r.channel REGEXP '#[0-9a-f]{12}$' AND NOT EXISTS (SELECT 1 FROM ");
        my_sb_qname(&sql, c->p.db, MY_READS);
        sn_sb_add(&sql, " o WHERE o.channel = r.channel AND o.consumer <> r.consumer)");
        rc = sql.fail ? -1 : my_query(c, sql.p, 1, args, &only, err, errlen);
    }
    if (rc == 0 && found) {
        found = 1;
        sql.len = 0;
        sn_sb_addf(&sql, "DELETE FROM %s WHERE name = ?", c->consumers);
        rc = sql.fail ? -1 : my_query(c, sql.p, 1, args, &r, err, errlen);
        sn_result_free(r);
        r = NULL;
        sql.len = 0;
        sn_sb_add(&sql, "DELETE FROM ");
        my_sb_qname(&sql, c->p.db, MY_READS);
        sn_sb_add(&sql, " WHERE consumer = ?");
        if (rc == 0)
            rc = sql.fail ? -1 : my_query(c, sql.p, 1, args, &r, err, errlen);
        sn_result_free(r);
    }
    for (int i = 0; rc == 0 && only && i < only->nrows; i++)
        if (only->cells[i].type == SN_TEXT)
            my_capture_unused(c, only->cells[i].s, NULL);
    sn_result_free(only);
    if (sql.fail)
        sn_seterr(err, errlen, "out of memory");
    sn_sb_free(&sql);
    return rc < 0 ? -1 : found;
}

/* ===== members: the tables of each process of a consumer ===== */

/* A process reads its consumer only while its tables include every other live member's
 * (src/dialect.h). Each process, holder or standby, keeps a row in MY_MEMBERS: its tables and
 * a heartbeat, written each MY_MEMBER_BEAT by the reader; a row not written for
 * MY_MEMBER_TIMEOUT, or whose pid is gone on this host, is no live member's. Tables that grow
 * (a watch installed or listened to) are recorded at once, and then a journal row on
 * MY_MEMBERS_CHANNEL says so: the holder meets it before any row the new tables' triggers
 * capture (their ids are taken after it), and looks at the members there instead of at its
 * next beat (reader.c), so it never passes one of those rows unseen. */

void my_member_sql(sn_conn *c, sn_sbuf *b, const char *name, const char *tables)
{
    char member[24], pid[24];
    snprintf(member, sizeof member, "%lld", (long long)c->member);
    snprintf(pid, sizeof pid, "%lld", (long long)getpid());
    const char *lits[5] = {c->consumer, member, pid, c->host, tables ? tables : ""};
    const char *mark[3] = {c->consumer, c->consumer, member};
    int is_mark = strcmp(name, "member_mark") == 0, n = strcmp(name, "member_write") == 0 ? 5 : is_mark ? 3 : 2;
    if (my_sb_statement(b, mysql_reader_sql, name, is_mark ? mark : lits, n) < 0)
        sn_sb_fail(b, "reader.sql lacks a statement of the members");
}

int my_pid_gone(const sn_conn *c, long long pid, const char *host)
{
    if (pid <= 0 || !host || strcmp(host, c->host) != 0)
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int my_members_add(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    if (!c->consumer)
        return 0;
    sn_sbuf text = {0}, b = {0};
    if (sn_tables_add(&c->tables, channel) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    sn_tables_text(&c->tables, &text);
    int rc = 0;
    if (text.fail) {
        sn_seterr(err, errlen, "out of memory");
        rc = -1;
    } else if (!c->tables_said || strcmp(text.p, c->tables_said) != 0) {
        rc = my_journal_ensure(c, err, errlen);
        my_member_sql(c, &b, "member_write", text.p);
        if (rc == 0)
            rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
        b.len = 0;
        my_member_sql(c, &b, "member_mark", NULL);
        if (rc == 0)
            rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
        if (b.fail) {
            sn_seterr(err, errlen, "%s", b.fail);
        } else if (rc < 0) {
            char why[512];
            snprintf(why, sizeof why, "%s", err);
            sn_seterr(err, errlen, "cannot record the tables of this member of consumer \"%s\": %s", c->consumer, why);
        } else {
            free(c->tables_said);
            c->tables_said = text.p;
            text.p = NULL;
        }
    }
    sn_sb_free(&b);
    sn_sb_free(&text);
    return rc;
}

void my_members_remove(sn_conn *c, const char *channel)
{
    size_t plain = (size_t)sn_plain_len(channel);
    for (int i = 0; i < c->r.nchan; i++) /* another capture of its table is still read */
        if ((size_t)sn_plain_len(c->r.chans[i]) == plain && strncmp(c->r.chans[i], channel, plain) == 0)
            return;
    sn_tables_remove(&c->tables, channel); /* recorded at the next beat */
}

void my_members_leave(sn_conn *c)
{
    if (c->consumer && c->tables_said && c->q) {
        char err[256];
        sn_sbuf b = {0};
        my_member_sql(c, &b, "member_leave", NULL);
        if (!b.fail)
            my_exec(c, c->q, b.p, b.len, NULL, err, sizeof err);
        sn_sb_free(&b);
    }
    sn_tables_free(&c->tables);
    free(c->tables_said);
    c->tables_said = NULL;
}
