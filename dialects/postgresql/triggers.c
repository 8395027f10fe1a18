/*
 * triggers.c — one AFTER ... FOR EACH ROW trigger per watch, calling a plpgsql function of
 * its own or, where the server has the extension sqlnotify_capture (pgext/) and every column
 * the watch sends is of a type it renders, one of the extension's C functions with the watch
 * in its arguments (capture() for durable watches, notify() for live ones without overflow):
 * install, uninstall, drop, list and verify. The plpgsql function's text is generator.c's,
 * the choice of the C function extension.c's; triggers.h is what the three share.
 *
 * Names come from the tuple (schema, table, operation, label), each part hashed with its
 * length, never from a joined string: `sqlnotify_<table prefix>_<op>_<12 hex>`, at most
 * 63 bytes, the function beside the table in its schema. Trigger and function carry the
 * same comment, our marker:
 *
 *   sqlnotify:2 marker=<watch marker>.<hash of the function body>
 *   installed=<ISO 8601 UTC>
 *   channel=<byte length>:<channel>
 *   columns=<id | x: ... | when: ... | old: ...>
 *
 * A trigger counts as ours, unchanged, only when both comments carry this watch's marker
 * line, the function's source is the one we would generate and the trigger calls it
 * (CREATE OR REPLACE FUNCTION by hand keeps the comment: the source catches it).
 * Installs of the first naming (`sqlnotify_<16 hex of the channel>`, comment
 * "sqlnotify:1:<marker>") are found and replaced.
 */
#include "triggers.h"

#include <time.h>

#define MARK_ANY "sqlnotify:"
#define MARK_V1 "sqlnotify:1:"
#define MARK_V2 "sqlnotify:2 "
/* The triggers that call t's function, and one more for a function that is not one of ours
 * (no marker: sqlnotify_capture.capture() above all): a count of 1 means the function may
 * go with its trigger. */
#define FN_USERS                                                                                                   \
    "((SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger u WHERE u.tgfoid = t.tgfoid) +"                        \
    " CASE WHEN COALESCE(pg_catalog.obj_description(t.tgfoid, 'pg_proc'), '') LIKE '" MARK_ANY "%' THEN 0"        \
    " ELSE 1 END)"

static const char *const op_names[] = {"insert", "update", "delete"};
static const char *const op_sql[] = {"INSERT", "UPDATE", "DELETE"};

/* pg_trigger.tgtype bits */
#define TGT_ROW 1
#define TGT_BEFORE 2
#define TGT_INSERT 4
#define TGT_DELETE 8
#define TGT_UPDATE 16
#define TGT_TRUNCATE 32
#define TGT_INSTEAD 64
static const int op_bits[] = {TGT_INSERT, TGT_UPDATE, TGT_DELETE};

static const char *tgtype_op(int t)
{
    return t & TGT_INSERT ? "insert" : t & TGT_UPDATE ? "update" : t & TGT_DELETE ? "delete" : "truncate";
}

/* ===== names ===== */

/* The first naming: a hash of the channel alone. */
static void old_name(const sn_watch *w, char name[32])
{
    char hex[17];
    sn_hash_hex(w->plain_channel, strlen(w->plain_channel), hex);
    snprintf(name, 32, "sqlnotify_%s", hex);
}

static void quote_table(sn_sbuf *b, const char *schema, const char *table)
{
    pg_sb_luaq(b, schema);
    sn_sb_add(b, ".");
    pg_sb_luaq(b, table);
}



static void sb_list(sn_sbuf *b, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++) {
        if (i > 0)
            sn_sb_add(b, ", ");
        sn_sb_add(b, cols[i]);
    }
}

/* "id | x: email, name | when: plan | old: plan | overflow" */
static void sb_summary(sn_sbuf *b, const sn_watch *w)
{
    if (w->npk > 0)
        sb_list(b, w->pk, w->npk);
    else
        sn_sb_add(b, "(no key)");
    if (w->extra_all) {
        sn_sb_add(b, " | x: *");
    } else if (w->nextra > 0) {
        sn_sb_add(b, " | x: ");
        sb_list(b, w->extra, w->nextra);
    }
    if (w->op == SN_UPDATE && w->ntrigger > 0) {
        sn_sb_add(b, " | when: ");
        sb_list(b, w->trigger_cols, w->ntrigger);
    }
    if (w->op == SN_UPDATE && w->nold > 0) {
        sn_sb_add(b, " | old: ");
        sb_list(b, w->old_cols, w->nold);
    }
    if (w->overflow)
        sn_sb_add(b, " | overflow");
}

/* What a watch's trigger is made of: its name, function body and marker line. */
typedef struct plan {
    char name[64], old[32];
    const char *capture; /* the C trigger (CAPTURE_FN, NOTIFY_FN) it calls with body, instead of a function of its own */
    int leftover;     /* capture: this watch's plpgsql function is still there, used by no other trigger */
    sn_sbuf body;     /* the function's body, or the C trigger's arguments */
    sn_sbuf markline; /* "sqlnotify:2 marker=<marker>.<body hash>" */
    sn_sbuf chanline; /* "\nchannel=<len>:<channel>\n" */
    const char *ovf_schema;
    sn_watch now;      /* the watch as the table is now (pg_watch_now): what the trigger reads */
    const char **cols; /* its lists */
    sn_watch asked;    /* the watch as declared: the C trigger's columns, gone ones too (it looks
                        * them up at each call, so one renamed back is sent again at once) */
} plan;

/* form: the C trigger to call, "" for the plpgsql one, NULL to choose (pg_capture_fits) */
static int plan_make(sn_conn *c, const sn_watch *w, const tinfo *t, plan *p, const char *form, char *err,
                     size_t errlen)
{
    char hex[17];
    sn_sbuf ovf = {0};
    memset(p, 0, sizeof *p);
    sn_trigger_name(w, p->name);
    old_name(w, p->old);
    if (pg_watch_now(w, t, &p->now, &p->cols) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    p->asked = *w;
    w = &p->now;
    p->ovf_schema = pg_overflow_schema_for(c, w->schema);
    int ovf_on = w->overflow && !c->consumer; /* the journal takes any size */
    if (ovf_on)
        pg_sb_qname(&ovf, c->ctl.conn, p->ovf_schema, PG_OVERFLOW_TABLE);
    int fl = pg_is_float(t, w->pk, w->npk) || pg_is_float(t, w->extra, w->nextra) ||
             (w->op == SN_UPDATE && (pg_is_float(t, w->old_cols, w->nold) || pg_is_float(t, w->trigger_cols, w->ntrigger)));
    p->capture = form == NULL ? pg_capture_fits(c, w, t) : *form ? form : NULL;
    if (p->capture)
        pg_sb_capture_args(&p->body, c->ctl.conn, &p->asked);
    else
        pg_sb_body(&p->body, c->ctl.conn, w, t, ovf_on ? ovf.p : NULL, c->consumer != NULL, fl);
    const char *fail = ovf.fail ? ovf.fail : p->body.fail;
    free(ovf.p);
    if (fail) {
        sn_seterr(err, errlen, "%s", fail);
        return -1;
    }
    /* notify() in the hash: it takes the arguments capture() takes (capture()'s hash is as
     * it was before notify(), so that its triggers stay as they are) */
    uint64_t seed = p->capture && strcmp(p->capture, NOTIFY_FN) == 0 ? sn_hash64(NOTIFY_FN, strlen(NOTIFY_FN), 0) : 0;
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)sn_hash64(p->body.p, p->body.len, seed));
    sn_sb_add(&p->markline, MARK_V2 "marker=");
    sn_sb_add(&p->markline, w->marker);
    sn_sb_add(&p->markline, ".");
    sn_sb_add(&p->markline, hex);
    sn_sb_addf(&p->chanline, "\nchannel=%zu:", strlen(w->channel));
    sn_sb_add(&p->chanline, w->channel);
    sn_sb_add(&p->chanline, "\n");
    if (p->markline.fail || p->chanline.fail) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void plan_free(plan *p)
{
    free(p->cols);
    free(p->body.p);
    free(p->markline.p);
    free(p->chanline.p);
}

/* The comment on both: the marker line, then what list() shows. */
static void sb_comment(sn_sbuf *b, const sn_watch *w, const plan *p)
{
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    sn_sb_add(b, p->markline.p);
    sn_sb_add(b, "\ninstalled=");
    sn_sb_add(b, when);
    sn_sb_add(b, p->chanline.p); /* "\nchannel=...\n" */
    sn_sb_add(b, "columns=");
    sb_summary(b, w);
}

/* ===== the state of what is installed ===== */

static const char state_sql[] =
    "SELECT t.oid IS NOT NULL, pg_catalog.obj_description(t.oid, 'pg_trigger'),"
    " p.oid IS NOT NULL, pg_catalog.obj_description(p.oid, 'pg_proc'), p.prosrc,"
    " t.tgfoid = p.oid, t.tgtype::int, t.tgenabled::text,"
    " COALESCE(pg_catalog.array_to_string(p.proconfig, ','), '')"
    " FROM (SELECT 1) x"
    " LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = $1::pg_catalog.oid AND t.tgname::text = $3"
    " LEFT JOIN pg_catalog.pg_proc p ON p.pronamespace = $2::pg_catalog.oid"
    "  AND p.proname = $3::text::name AND p.pronargs = 0";

enum { ST_NONE, ST_SAME, ST_DAMAGED, ST_OTHER };

/* The same for a trigger calling a C function ($4): its comment, function, type, state and
 * arguments (tgargs: each argument and a NUL), whether this watch's plpgsql function of
 * before is still there for no other trigger, and whether the function is still the
 * extension's C one (not replaced by hand). */
static const char capture_state_sql[] =
    "SELECT t.oid IS NOT NULL, pg_catalog.obj_description(t.oid, 'pg_trigger'),"
    " t.tgfoid = pg_catalog.to_regprocedure(pg_catalog.concat($4::text, '()')), t.tgtype::int, t.tgenabled::text,"
    " pg_catalog.encode(t.tgargs, 'hex'),"
    " EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace = $2::pg_catalog.oid"
    "  AND p.proname = $3::text::name AND p.pronargs = 0 AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger u"
    "   WHERE u.tgfoid = p.oid AND NOT (u.tgrelid = $1::pg_catalog.oid AND u.tgname::text = $3))),"
    " COALESCE((SELECT " CAPTURE_ITSELF " FROM pg_catalog.pg_proc p WHERE p.oid = t.tgfoid), true)"
    " FROM (SELECT 1) x"
    " LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = $1::pg_catalog.oid AND t.tgname::text = $3";

static int starts_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    return text && strncmp(text, line, n) == 0 && text[n] == '\n';
}

static void hex_arg(sn_sbuf *b, const char *arg)
{
    static const char digits[] = "0123456789abcdef";
    char two[3] = "";
    for (const unsigned char *p = (const unsigned char *)arg;; p++) {
        two[0] = digits[*p >> 4];
        two[1] = digits[*p & 15];
        sn_sb_add(b, two);
        if (*p == '\0')
            break;
    }
}

static void hex_args(sn_sbuf *b, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++)
        hex_arg(b, cols[i]);
}

/* tgargs as the server keeps them, in hex: what pg_sb_capture_args() says, unquoted. */
static void sb_capture_tgargs(sn_sbuf *b, const sn_watch *w)
{
    char counts[64];
    int nold, ntrig;
    pg_capture_counts(w, counts, &nold, &ntrig);
    hex_arg(b, w->channel);
    hex_arg(b, counts);
    hex_args(b, w->pk, w->npk);
    hex_args(b, w->extra, w->nextra);
    hex_args(b, w->old_cols, nold);
    hex_args(b, w->trigger_cols, ntrig);
}

static int capture_state(sn_conn *c, const sn_watch *w, const tinfo *t, plan *p, char *err, size_t errlen)
{
    const char *vals[4] = {t->relid, t->nspid, p->name, p->capture};
    PGresult *res = pg_exec(c, &c->ctl, capture_state_sql, 4, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        return -1;
    int st;
    p->leftover = PQgetvalue(res, 0, 6)[0] == 't';
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        st = ST_NONE;
    } else if (!starts_line(PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1), p->markline.p)) {
        st = ST_OTHER;
    } else {
        sn_sbuf args = {0};
        sb_capture_tgargs(&args, &p->asked);
        char en = PQgetvalue(res, 0, 4)[0];
        int same = PQgetvalue(res, 0, 2)[0] == 't' && atoi(PQgetvalue(res, 0, 3)) == (TGT_ROW | op_bits[w->op]) &&
                   (en == 'O' || en == 'A') && args.p && strcmp(PQgetvalue(res, 0, 5), args.p) == 0;
        free(args.p);
        if (same && PQgetvalue(res, 0, 7)[0] != 't') { /* replaced since this connection asked */
            pg_capture_replaced(c, pg_cap_of(p->capture));
            same = 0;
        }
        st = same && !p->leftover ? ST_SAME : ST_DAMAGED;
    }
    PQclear(res);
    return st;
}

static int trigger_state(sn_conn *c, const sn_watch *w, const tinfo *t, plan *p, char *err, size_t errlen);

/* trigger_state(), where a trigger of this watch's C form that this connection may not use
 * (no grant, an older extension) counts as ST_SAME when it is unchanged: readers of one watch
 * that differ only in what they may use keep each other's trigger instead of replacing it at
 * each start (and calling the other's "replaced by someone else"). Not where its function
 * cannot run on this server (a library without it, a function replaced by hand): that one
 * is damaged, and replaced. Not the other way round either: where the C trigger can be used
 * it replaces the plpgsql one; nor with SQLNOTIFY_PG_CAPTURE=plpgsql, an operator's choice. */
static int state_of(sn_conn *c, const sn_watch *w, const tinfo *t, plan *p, char *err, size_t errlen)
{
    int st = trigger_state(c, w, t, p, err, errlen);
    const char *env = getenv("SQLNOTIFY_PG_CAPTURE"), *form;
    if (st != ST_OTHER || p->capture || (env && strcmp(env, "plpgsql") == 0) || !(form = pg_capture_form(c, &p->now, t)))
        return st;
    plan q;
    int other = plan_make(c, w, t, &q, form, err, errlen) == 0 ? trigger_state(c, w, t, &q, err, errlen) : -1;
    plan_free(&q);
    if (other < 0)
        return -1;
    if (other == ST_DAMAGED || (other == ST_SAME && (c->capture_broken & pg_cap_need(c))))
        return ST_DAMAGED;
    return other == ST_SAME ? ST_SAME : st;
}

/* Our trigger by its name: ST_NONE, ST_SAME (nothing to do), ST_DAMAGED (our marker, but
 * the function or the trigger was changed behind us), ST_OTHER (another watch's marker,
 * an older version, or not ours); -1 and err. */
static int trigger_state(sn_conn *c, const sn_watch *w, const tinfo *t, plan *p, char *err, size_t errlen)
{
    if (p->capture)
        return capture_state(c, w, t, p, err, errlen);
    const char *vals[3] = {t->relid, t->nspid, p->name};
    PGresult *res = pg_exec(c, &c->ctl, state_sql, 3, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        return -1;
    int st;
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        st = ST_NONE;
    } else if (!starts_line(PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1), p->markline.p)) {
        st = ST_OTHER;
    } else {
        int type = atoi(PQgetvalue(res, 0, 6));
        char en = PQgetvalue(res, 0, 7)[0];
        int same = PQgetvalue(res, 0, 2)[0] == 't' &&
                   starts_line(PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3), p->markline.p) &&
                   strcmp(PQgetvalue(res, 0, 4), p->body.p) == 0 && PQgetvalue(res, 0, 5)[0] == 't' &&
                   type == (TGT_ROW | op_bits[w->op]) && (en == 'O' || en == 'A') &&
                   *PQgetvalue(res, 0, 8) == '\0'; /* no SET clause */
        st = same ? ST_SAME : ST_DAMAGED;
    }
    PQclear(res);
    return st;
}

/* Our other triggers on this channel, first-naming installs of this watch, and the trigger
 * the previous release named for this table, operation and label (without the capture),
 * with whether it wrote the journal (durable) or notified (live). */
static const char related_sql[] =
    "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgtype::int,"
    " t.tgrelid = $1::pg_catalog.oid, d.description LIKE '" MARK_V1 "%',"
    " " FN_USERS "::int,"
    " fn.nspname::text, p.proname::text,"
    " t.tgname::text = $4 AND t.tgrelid = $1::pg_catalog.oid,"
    " p.prosrc = 'capture' OR pg_catalog.strpos(p.prosrc, 'sqlnotify.journal') > 0"
    "  OR pg_catalog.strpos(p.prosrc, 'sqlnotify.append') > 0"
    " FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_description d ON d.objoid = t.oid AND d.objsubid = 0"
    "  AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass"
    " JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"
    " JOIN pg_catalog.pg_namespace fn ON fn.oid = p.pronamespace"
    " WHERE (d.description LIKE '" MARK_V2 "%' AND (pg_catalog.strpos(d.description, $2) > 0"
    "  OR pg_catalog.strpos(d.description, $5) > 0))"
    "  OR (t.tgname::text = $3 AND d.description LIKE '" MARK_V1 "%')"
    "  OR (t.tgname::text = $4 AND t.tgrelid = $1::pg_catalog.oid AND d.description LIKE '" MARK_V2 "%')";

/* Refuse a channel another table's or operation's watch uses; add the DROPs of
 * first-naming installs of this watch to *drops. 1 ok, 0 refused (err), -1 failed (err). */
static int check_related(sn_conn *c, const sn_watch *w, const tinfo *t, const plan *p, sn_sbuf *drops,
                         char *err, size_t errlen)
{
    char legacy[64];
    sn_trigger_name_of(w, 1, legacy);
    /* the declared channel as a live watch's (or the previous release's) trigger records it:
     * one declared channel, one watch, whatever capture each rides */
    sn_sbuf plain = {0};
    int plen = sn_plain_len(w->channel);
    sn_sb_addf(&plain, "\nchannel=%d:%.*s\n", plen, plen, w->channel);
    if (plain.fail) {
        sn_seterr(err, errlen, "%s", plain.fail);
        return -1;
    }
    const char *vals[5] = {t->relid, p->chanline.p, p->old, legacy, plain.p};
    PGresult *res = pg_exec(c, &c->ctl, related_sql, 5, vals, PG_RETRY, NULL, err, errlen);
    free(plain.p);
    if (res == NULL)
        return -1;
    int rc = 1;
    for (int i = 0; i < PQntuples(res) && rc == 1; i++) {
        int type = atoi(PQgetvalue(res, i, 3));
        int here = PQgetvalue(res, i, 4)[0] == 't' && (type & op_bits[w->op]);
        if (here && strcmp(PQgetvalue(res, i, 2), p->name) == 0)
            continue; /* our own */
        /* The previous release's trigger of this table, operation and label goes when one of
         * its own kind takes its place (never two captures of one watch); one of the other kind
         * stays: a live watch never takes a durable consumer's capture, nor the reverse. */
        int legacy_here = here && PQgetvalue(res, i, 9)[0] == 't';
        if (legacy_here && (PQgetvalue(res, i, 10)[0] == 't') != sn_watch_durable(w))
            continue;
        if (here && (PQgetvalue(res, i, 5)[0] == 't' || legacy_here)) {
            sn_sb_add(drops, "DROP TRIGGER IF EXISTS ");
            pg_sb_quote(drops, c->ctl.conn, PQgetvalue(res, i, 2), 1);
            sn_sb_add(drops, " ON ");
            pg_sb_qname(drops, c->ctl.conn, w->schema, w->table);
            sn_sb_add(drops, ";\n");
            if (atoi(PQgetvalue(res, i, 6)) <= 1) { /* a shared function stays for its other trigger */
                sn_sb_add(drops, "DROP FUNCTION IF EXISTS ");
                pg_sb_qname(drops, c->ctl.conn, PQgetvalue(res, i, 7), PQgetvalue(res, i, 8));
                sn_sb_add(drops, "();\n");
            }
            continue;
        }
        if (here)
            continue; /* another name on this table and operation: not a clash of channels */
        sn_sbuf m = {0};
        sn_sb_add(&m, "channel ");
        pg_sb_luaq(&m, w->plain_channel);
        sn_sb_add(&m, " is already used by the ");
        sn_sb_add(&m, tgtype_op(type));
        sn_sb_add(&m, " watch on ");
        quote_table(&m, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        sn_sb_add(&m, "; give this watch its own channel_label");
        sn_seterr(err, errlen, "%s", m.fail ? m.fail : m.p);
        free(m.p);
        rc = 0;
    }
    PQclear(res);
    return rc;
}

/* ===== install ===== */

/* "cannot create the trigger for insert on "s"."t": <why> (<what to do>)" */
static void install_err(sn_conn *c, const sn_watch *w, const char *state, const char *why, char *err,
                        size_t errlen)
{
    sn_sbuf m = {0}, tbl = {0};
    char you[200] = "<you>", e2[200];
    pg_sb_qname(&tbl, c->ctl.conn, w->schema, w->table);
    if (strcmp(state, "42501") == 0) {
        PGresult *r = pg_exec(c, &c->ctl, "SELECT pg_catalog.quote_ident(current_user)", 0, NULL, 0, NULL, e2,
                              sizeof e2);
        if (r)
            snprintf(you, sizeof you, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    sn_sb_add(&m, "cannot create the trigger for ");
    sn_sb_add(&m, op_names[w->op]);
    sn_sb_add(&m, " on ");
    quote_table(&m, w->schema, w->table);
    sn_sb_add(&m, ": ");
    sn_sb_add(&m, why);
    if (strcmp(state, "42501") == 0) {
        if (strstr(why, "must be owner of table") || strstr(why, "must be owner of relation")) {
            sn_sb_add(&m, " (run as the table's owner, or ALTER TABLE ");
            sn_sb_add(&m, tbl.p);
            sn_sb_addf(&m, " OWNER TO %s)", you);
        } else if (strstr(why, "permission denied for schema")) {
            sn_sb_add(&m, " (GRANT USAGE, CREATE ON SCHEMA ");
            pg_sb_quote(&m, c->ctl.conn, w->schema, 1);
            sn_sb_addf(&m, " TO %s)", you);
        } else if (strstr(why, "permission denied for table") || strstr(why, "permission denied for relation")) {
            sn_sb_add(&m, " (run as the table's owner, or GRANT TRIGGER ON ");
            sn_sb_add(&m, tbl.p);
            sn_sb_addf(&m, " TO %s)", you);
        } else if (strstr(why, "must be owner of function")) {
            sn_sb_addf(&m, " (a function of this watch's name belongs to another role: run as its owner, "
                           "or have it dropped)");
        } else {
            sn_sb_add(&m, " (run as the table's owner)");
        }
    }
    sn_seterr(err, errlen, "%s", m.fail ? m.fail : m.p);
    free(m.p);
    free(tbl.p);
}

/* ===== locks: our DDL never waits long for the user's table ===== */

/* The lock_timeout of our DDL: SN_LOCK_TIMEOUT, within the statement deadline. */
static double lock_ms(const sn_conn *c)
{
    double ms = SN_LOCK_TIMEOUT * 1000;
    return ms < c->stmt_timeout * 800 ? ms : c->stmt_timeout * 800;
}

/* The SQLSTATEs of a lock our DDL did not get: lock_not_available (the lock_timeout ran out),
 * deadlock_detected. Both pass: the same DDL is tried again later. */
static int lock_failed(const char *state)
{
    return strcmp(state, "55P03") == 0 || strcmp(state, "40P01") == 0;
}

/* The sessions holding a lock on the table that our DDL's lock conflicts with (strong: it drops a
 * trigger, ACCESS EXCLUSIVE, which every lock conflicts with; else it only creates one, SHARE ROW
 * EXCLUSIVE, which readers' locks do not), oldest transaction first; $3: only this backend's. A
 * prepared transaction has no pid. */
static const char holders_sql[] =
    "SELECT l.pid, a.application_name, a.state,"
    " EXTRACT(epoch FROM pg_catalog.now() OPERATOR(pg_catalog.-)"
    "  COALESCE(a.xact_start, a.query_start, a.backend_start))::float8,"
    " pg_catalog.string_agg(l.mode, ', ' ORDER BY l.mode), pg_catalog.left(a.query, 80)"
    " FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'relation' AND l.granted AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()"
    "  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d"
    "   WHERE d.datname = pg_catalog.current_database())"
    "  AND l.relation = (SELECT c.oid FROM pg_catalog.pg_class c"
    "   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    "   WHERE n.nspname::text = $1 AND c.relname = $2::text::name AND c.relname::text = $2)"
    "  AND ($4::bool OR l.mode NOT IN ('AccessShareLock', 'RowShareLock'))"
    "  AND ($3::int IS NULL OR l.pid = $3::int)"
    " GROUP BY l.pid, a.application_name, a.state, 4, a.query ORDER BY 4 DESC LIMIT 3";

/* The backend of this notifier's query() connection while it is in a transaction, else 0. */
static int own_tx_pid(const sn_conn *c)
{
    PGTransactionStatusType ts = c->user.conn ? PQtransactionStatus(c->user.conn) : PQTRANS_IDLE;
    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR ? PQbackendPID(c->user.conn) : 0;
}

/* holders_sql for w's table; own: only the query() connection's (0: every session's). */
static PGresult *lock_holders(sn_conn *c, const sn_watch *w, int strong, int own)
{
    char pid[16], e[256];
    snprintf(pid, sizeof pid, "%d", own);
    const char *vals[4] = {w->schema, w->table, own ? pid : NULL, strong ? "t" : "f"};
    return pg_exec(c, &c->ctl, holders_sql, 4, vals, PG_RETRY, NULL, e, sizeof e);
}

/* One holder: "pid 1234 (application_name "psql", idle in transaction for 2.1 s,
 * AccessExclusiveLock): "LOCK TABLE ..."", our query() connection named as such. */
static void sb_holder(sn_sbuf *m, const sn_conn *c, const PGresult *r, int i)
{
    char query[200];
    if (PQgetisnull(r, i, 0)) {
        sn_sb_addf(m, "a prepared transaction (%s; see pg_prepared_xacts)", PQgetvalue(r, i, 4));
        return;
    }
    int pid = atoi(PQgetvalue(r, i, 0));
    if (pid == own_tx_pid(c))
        sn_sb_add(m, "your own n:query transaction, ");
    sn_sb_addf(m, "pid %d (application_name ", pid);
    pg_sb_luaq(m, PQgetvalue(r, i, 1));
    if (*PQgetvalue(r, i, 2))
        sn_sb_addf(m, ", %s for %.1f s", PQgetvalue(r, i, 2), atof(PQgetvalue(r, i, 3)));
    sn_sb_addf(m, ", %s)", PQgetvalue(r, i, 4));
    pg_one_line(query, sizeof query, PQgetvalue(r, i, 5));
    if (*query)
        sn_sb_addf(m, ": \"%s\"", query);
}

/* err for SN_INSTALL_BUSY (verb "create", "drop"): the DDL did not get its lock on w's table
 * within the lock timeout; who holds it, as far as the server still tells. */
static void busy_err(sn_conn *c, const sn_watch *w, const char *verb, int strong, char *err, size_t errlen)
{
    sn_sbuf m = {0};
    PGresult *r = lock_holders(c, w, strong, 0);
    sn_sb_add(&m, "the lock on ");
    quote_table(&m, w->schema, w->table);
    sn_sb_addf(&m, " to %s the trigger was not had within %g s", verb, lock_ms(c) / 1000);
    for (int i = 0; r && i < PQntuples(r); i++) {
        sn_sb_add(&m, i == 0 ? "; held by " : ", and by ");
        sb_holder(&m, c, r, i);
    }
    if (r == NULL || PQntuples(r) == 0)
        sn_sb_add(&m, " (its holder is gone already, or another object the install needs was locked)");
    sn_seterr(err, errlen, "%s", m.fail ? m.fail : m.p);
    PQclear(r);
    free(m.p);
}

/* Our DDL on w's table would wait on this notifier's own query() transaction, which cannot end
 * while we wait: 1 with err (for SN_INSTALL_BUSY), without trying; 0 not so (or cannot tell). */
static int own_lock(sn_conn *c, const sn_watch *w, const char *verb, int strong, char *err, size_t errlen)
{
    int pid = own_tx_pid(c);
    PGresult *r = pid ? lock_holders(c, w, strong, pid) : NULL;
    int held = r && PQntuples(r) > 0;
    if (held) {
        sn_sbuf m = {0};
        sn_sb_addf(&m, "your own n:query transaction holds %s on ", PQgetvalue(r, 0, 4));
        quote_table(&m, w->schema, w->table);
        sn_sb_addf(&m, " (pid %d): the trigger can be %s only once it ends (COMMIT or ROLLBACK)", pid,
                   strcmp(verb, "drop") == 0 ? "dropped" : "installed");
        sn_seterr(err, errlen, "%s", m.fail ? m.fail : m.p);
        free(m.p);
    }
    PQclear(r);
    return held;
}

/* Whether this role may keep (keep: 1, privilege INSERT and UPDATE) or forget (keep: 0,
 * DELETE) the statements that make durable triggers again (journal 11). Kept only where the
 * event trigger runs them (journal.sql): the schema, the statements' table and the reads are a
 * superuser's and no role that is not one may write the statements; a role that owns its own
 * journal may write its table but keeps nothing in it (a superuser's setup later would not run
 * what it wrote). Not there, or not allowed: 0, and the trigger is only repaired by the
 * notifiers' checks. */
static int made_allowed(sn_conn *c, int keep)
{
    char e[256];
    const char *vals[2] = {keep ? "INSERT, UPDATE" : "DELETE", keep ? "t" : "f"};
    PGresult *res = pg_exec(
        c, &c->ctl,
        "SELECT pg_catalog.has_table_privilege(pg_catalog.to_regclass('sqlnotify.triggers_made'), $1) IS TRUE"
        " AND (NOT $2::boolean OR (COALESCE((SELECT pg_catalog.bool_and(COALESCE(o.rolsuper, false)) FROM (VALUES"
        "   ((SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'sqlnotify')),"
        "   ((SELECT k.relowner FROM pg_catalog.pg_class k WHERE k.oid = pg_catalog.to_regclass('sqlnotify.triggers_made'))),"
        "   ((SELECT k.relowner FROM pg_catalog.pg_class k WHERE k.oid = pg_catalog.to_regclass('sqlnotify.reads')))) v (id)"
        "  LEFT JOIN pg_catalog.pg_roles o ON o.oid = v.id), false)"
        " AND NOT EXISTS (SELECT FROM pg_catalog.pg_class k CROSS JOIN LATERAL pg_catalog.aclexplode(k.relacl) a"
        "  LEFT JOIN pg_catalog.pg_roles o ON o.oid = a.grantee"
        "  WHERE k.oid = pg_catalog.to_regclass('sqlnotify.triggers_made')"
        "   AND a.privilege_type IN ('INSERT', 'UPDATE', 'TRIGGER') AND NOT COALESCE(o.rolsuper, false))))",
        2, vals, 0, NULL, e, sizeof e);
    int ok = res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return ok;
}

/* BEGIN; drops; function; trigger; comments; COMMIT. exists: a trigger of this name may be
 * there (DROP TRIGGER takes ACCESS EXCLUSIVE; CREATE TRIGGER alone lets readers go on). */
static void sb_install_script(sn_sbuf *b, sn_conn *c, const sn_watch *w, const plan *p, const char *drops,
                              int create, int exists, int keep)
{
    PGconn *db = c->ctl.conn;
    sn_sbuf fn = {0}, tbl = {0}, comment = {0};
    pg_sb_qname(&fn, db, w->schema, p->name);
    sn_sb_add(&fn, "()");
    pg_sb_qname(&tbl, db, w->schema, w->table);
    sb_comment(&comment, w, p);
    b->fail = fn.fail ? fn.fail : tbl.fail ? tbl.fail : comment.fail;

    /* DDL waits for a lock on the user's table, and its writers queue behind it: not for long. */
    sn_sb_addf(b, "BEGIN;\nSET LOCAL lock_timeout = '%.0fms';\n", lock_ms(c));
    sn_sb_add(b, drops);
    if (create) {
        const char *note = comment.p ? comment.p : "";
        sn_sbuf callee = {0};
        if (p->capture) {
            sn_sb_add(&callee, p->capture);
            sn_sb_add(&callee, "(");
            sn_sb_add(&callee, p->body.p);
            sn_sb_add(&callee, ")");
        } else {
            sn_sb_add(b, "CREATE OR REPLACE FUNCTION ");
            sn_sb_add(b, fn.p);
            sn_sb_add(b, " RETURNS trigger LANGUAGE plpgsql AS ");
            pg_sb_quote(b, db, p->body.p, 0);
            sn_sb_add(b, ";\nCOMMENT ON FUNCTION ");
            sn_sb_add(b, fn.p);
            sn_sb_add(b, " IS ");
            pg_sb_quote(b, db, note, 0);
            sn_sb_add(b, ";\n");
            sn_sb_add(&callee, fn.p);
        }
        if (callee.fail)
            b->fail = callee.fail;
        if (exists) {
            sn_sb_add(b, "DROP TRIGGER IF EXISTS ");
            pg_sb_quote(b, db, p->name, 1);
            sn_sb_add(b, " ON ");
            sn_sb_add(b, tbl.p);
            sn_sb_add(b, ";\n");
        }
        sn_sbuf make = {0}, mark = {0};
        sn_sb_add(&make, "CREATE TRIGGER ");
        pg_sb_quote(&make, db, p->name, 1);
        sn_sb_add(&make, " AFTER ");
        sn_sb_add(&make, op_sql[w->op]);
        sn_sb_add(&make, " ON ");
        sn_sb_add(&make, tbl.p);
        sn_sb_add(&make, " FOR EACH ROW EXECUTE FUNCTION ");
        sn_sb_add(&make, callee.p ? callee.p : "");
        sn_sb_add(&mark, "COMMENT ON TRIGGER ");
        pg_sb_quote(&mark, db, p->name, 1);
        sn_sb_add(&mark, " ON ");
        sn_sb_add(&mark, tbl.p);
        sn_sb_add(&mark, " IS ");
        pg_sb_quote(&mark, db, note, 0);
        if (make.fail || mark.fail)
            b->fail = make.fail ? make.fail : mark.fail;
        const char *mk = make.p ? make.p : "", *mr = mark.p ? mark.p : "";
        sn_sb_addf(b, "%s;\n%s;\n", mk, mr);
        if (keep) { /* kept for the event trigger that makes it again (journal 11) */
            sn_sb_add(b, "INSERT INTO sqlnotify.triggers_made (schema_name, table_name, tgname, channel, ddl) VALUES (");
            pg_sb_quote(b, db, w->schema, 0);
            sn_sb_add(b, ", ");
            pg_sb_quote(b, db, w->table, 0);
            sn_sb_add(b, ", ");
            pg_sb_quote(b, db, p->name, 0);
            sn_sb_add(b, ", ");
            pg_sb_quote(b, db, w->channel, 0);
            sn_sb_add(b, ", ARRAY[");
            pg_sb_quote(b, db, mk, 0);
            sn_sb_add(b, ", ");
            pg_sb_quote(b, db, mr, 0);
            sn_sb_add(b, "]) ON CONFLICT (schema_name, table_name, tgname)"
                         " DO UPDATE SET channel = EXCLUDED.channel, ddl = EXCLUDED.ddl;\n");
        }
        free(make.p);
        free(mark.p);
        if (p->capture && p->leftover) { /* the plpgsql function this watch had before */
            sn_sb_add(b, "DROP FUNCTION IF EXISTS ");
            sn_sb_add(b, fn.p);
            sn_sb_add(b, ";\n");
        }
        free(callee.p);
    }
    sn_sb_add(b, "COMMIT");
    free(fn.p);
    free(tbl.p);
    free(comment.p);
}

/* A watch the driver cannot take as given: one line saying why, or NULL. */
static const char *watch_problem(const sn_watch *w)
{
    if (w->op < SN_INSERT || w->op > SN_DELETE)
        return "unknown operation";
    if (w->npk == 0 && w->op != SN_INSERT)
        return "a table without a key can only be watched for INSERT";
    return NULL;
}

int pg_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen)
{
    const char *bad = watch_problem(w);
    if (bad) {
        sn_seterr(err, errlen, "%s", bad);
        return SN_INSTALL_ERROR;
    }
    if (c->consumer && pg_journal_ensure(c, err, errlen) < 0)
        return SN_INSTALL_ERROR;
    int rc = SN_INSTALL_ERROR;
    /* Two rounds at most: another process may create it between our lookup and our DDL. */
    for (int round = 0; round < 2 && rc == SN_INSTALL_ERROR; round++) {
        tinfo t;
        plan p;
        sn_sbuf drops = {0}, script = {0};
        char state[6] = "", why[900];
        int found = pg_table_info(c, w, &t, err, errlen);
        if (found <= 0) {
            if (found == 0)
                install_err(c, w, "", "no such table", err, errlen);
            PQclear(t.res);
            return SN_INSTALL_ERROR;
        }
        if (t.relkind == 'v' || t.relkind == 'm') {
            install_err(c, w, "",
                        t.relkind == 'v' ? "it is a view; views cannot be watched (watch the tables it reads from)"
                                         : "it is a materialized view; views cannot be watched (watch the "
                                           "tables it reads from)",
                        err, errlen);
            PQclear(t.res);
            return SN_INSTALL_ERROR;
        }
        if (plan_make(c, w, &t, &p, NULL, err, errlen) < 0)
            goto next;
        int related = check_related(c, w, &t, &p, &drops, err, errlen);
        if (related <= 0) {
            round = 2; /* a refusal or a failed lookup is final */
            goto next;
        }
        int broken = c->capture_broken, st = state_of(c, w, &t, &p, err, errlen);
        if (st >= 0 && p.capture && c->capture_broken != broken) { /* its C function was replaced: plan again */
            plan_free(&p);
            if (plan_make(c, w, &t, &p, NULL, err, errlen) < 0)
                goto next;
            st = state_of(c, w, &t, &p, err, errlen);
        }
        if (st < 0)
            goto next;
        int create = st == ST_NONE || st == ST_DAMAGED || (st == ST_OTHER && replace_changed);
        if (drops.fail) {
            sn_seterr(err, errlen, "%s", drops.fail);
            goto next;
        }
        if (create || drops.len > 0) {
            int strong = st != ST_NONE || drops.len > 0;
            int keep = create && c->consumer && made_allowed(c, 1);
            sb_install_script(&script, c, w, &p, drops.p ? drops.p : "", create, st != ST_NONE, keep);
            if (script.fail) {
                sn_seterr(err, errlen, "%s", script.fail);
                goto next;
            }
            if (own_lock(c, w, "create", strong, err, errlen)) {
                rc = SN_INSTALL_BUSY;
                goto next;
            }
            if (pg_script(c, script.p, state, why, sizeof why) < 0) {
                if (lock_failed(state)) {
                    busy_err(c, w, "create", strong, err, errlen);
                    rc = SN_INSTALL_BUSY;
                    goto next;
                }
                install_err(c, w, state, why, err, errlen);
                /* A concurrent installer fails us on the function or the trigger ("already
                 * exists", "tuple concurrently updated"): look again, it may now be there. */
                if (strcmp(state, "42501") == 0 || strcmp(state, "42809") == 0)
                    round = 2;
                goto next;
            }
        }
        rc = st == ST_NONE && drops.len == 0 ? SN_INSTALL_CREATED
             : create || drops.len > 0       ? SN_INSTALL_REPLACED
             : st == ST_SAME                 ? SN_INSTALL_UNCHANGED
                                             : SN_INSTALL_KEPT;
        if (rc == SN_INSTALL_CREATED && c->consumer && pg_journal_read_before(c, w->channel))
            rc = SN_INSTALL_RESTORED;
        if (pg_route_set(c, w->channel, p.ovf_schema) < 0) {
            sn_seterr(err, errlen, "out of memory");
            rc = SN_INSTALL_ERROR;
        } else if (w->overflow && !c->consumer && pg_overflow_ensure(c, p.ovf_schema, err, errlen) < 0) {
            rc = SN_INSTALL_ERROR;
        }
    next:
        plan_free(&p);
        free(drops.p);
        free(script.p);
        PQclear(t.res);
    }
    return rc;
}

int pg_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    tinfo t;
    plan p;
    const char *bad = watch_problem(w);
    if (bad) {
        sn_seterr(err, errlen, "%s", bad);
        return -1;
    }
    int found = pg_table_info(c, w, &t, err, errlen), rc = found;
    if (found == 1) {
        rc = plan_make(c, w, &t, &p, NULL, err, errlen);
        if (rc == 0) {
            int st = state_of(c, w, &t, &p, err, errlen);
            rc = st < 0 ? -1 : st == ST_SAME;
        }
        plan_free(&p);
    }
    PQclear(t.res);
    return rc;
}

/* ===== uninstall, drop ===== */

/* The statements kept to make durable triggers again (journal 11) go with the triggers: those
 * in scope as drop_scope's ($1 schema, $2 table, $3 channel line), or of one trigger ($4).
 * A role that may not forget them leaves them: they make a trigger again only while a
 * consumer reads its channel. */
static const char forget_made_sql[] =
    "DELETE FROM sqlnotify.triggers_made m"
    " WHERE CASE WHEN $2::text IS NOT NULL THEN m.table_name = $2 AND CASE WHEN $1::text IS NULL"
    "        THEN m.schema_name = ANY (pg_catalog.current_schemas(false)) ELSE m.schema_name = $1 END"
    "   WHEN $1::text IS NOT NULL THEN m.schema_name = $1 ELSE true END"
    "  AND ($3::text IS NULL OR $3 = E'\\nchannel=' || pg_catalog.octet_length(m.channel) || ':' || m.channel || E'\\n')"
    "  AND ($4::text IS NULL OR m.tgname = $4)";

static int forget_made(sn_conn *c, const char *schema, const char *table, const char *chanline, const char *tgname,
                       char *err, size_t errlen)
{
    if (!made_allowed(c, 0))
        return 0;
    const char *vals[4] = {schema, table, chanline, tgname};
    PGresult *res = pg_exec(c, &c->ctl, forget_made_sql, 4, vals, 0, NULL, err, errlen);
    int rc = res == NULL ? -1 : 0;
    PQclear(res);
    return rc;
}

int pg_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[64], old[32];
    const char *bad = watch_problem(w);
    if (bad) {
        sn_seterr(err, errlen, "%s", bad);
        return -1;
    }
    sn_trigger_name(w, name);
    old_name(w, old);
    /* Only what is there: no DDL (and no lock on the table) when nothing is. */
    static const char sql[] =
        "SELECT t.tgname::text, " FN_USERS "::int, fn.nspname::text, p.proname::text"
        " FROM pg_catalog.pg_trigger t"
        " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = p.pronamespace"
        " JOIN pg_catalog.pg_description d ON d.objoid = t.oid AND d.objsubid = 0"
        "  AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass"
        " WHERE n.nspname::text = $1 AND c.relname = $2::text::name AND c.relname::text = $2"
        "  AND d.description LIKE '" MARK_ANY "%' AND t.tgname::text IN ($3, $4)"
        " UNION ALL"
        " SELECT NULL, 0, n.nspname::text, p.proname::text FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname::text = $1 AND p.proname::text = $3 AND p.pronargs = 0"
        "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger u WHERE u.tgfoid = p.oid)";
    const char *vals[4] = {w->schema, w->table, name, old};
    PGresult *res = pg_exec(c, &c->ctl, sql, 4, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        return -1;
    sn_sbuf b = {0};
    for (int i = 0; i < PQntuples(res); i++) {
        if (!PQgetisnull(res, i, 0)) {
            sn_sb_add(&b, "DROP TRIGGER IF EXISTS ");
            pg_sb_quote(&b, c->ctl.conn, PQgetvalue(res, i, 0), 1);
            sn_sb_add(&b, " ON ");
            pg_sb_qname(&b, c->ctl.conn, w->schema, w->table);
            sn_sb_add(&b, ";\n");
        }
        if (atoi(PQgetvalue(res, i, 1)) <= 1) {
            sn_sb_add(&b, "DROP FUNCTION IF EXISTS ");
            pg_sb_qname(&b, c->ctl.conn, PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
            sn_sb_add(&b, "();\n");
        }
    }
    PQclear(res);
    int rc = 0;
    if (b.fail) {
        sn_seterr(err, errlen, "%s", b.fail);
        rc = -1;
    } else if (b.len > 0 && own_lock(c, w, "drop", 1, err, errlen)) {
        rc = -1;
    } else if (b.len > 0) {
        sn_sbuf s = {0};
        char state[6] = "";
        sn_sb_addf(&s, "BEGIN;\nSET LOCAL lock_timeout = '%.0fms';\n", lock_ms(c));
        sn_sb_add(&s, b.p);
        sn_sb_add(&s, "COMMIT");
        rc = s.fail ? -1 : pg_script(c, s.p, state, err, errlen);
        if (s.fail)
            sn_seterr(err, errlen, "%s", s.fail);
        else if (rc < 0 && lock_failed(state))
            busy_err(c, w, "drop", 1, err, errlen);
        free(s.p);
    }
    free(b.p);
    if (rc == 0)
        rc = forget_made(c, w->schema, w->table, NULL, name, err, errlen);
    return rc;
}

/* Our triggers in scope: every one (schema and table NULL), one schema's (table NULL), or
 * one table's (schema NULL: as search_path finds it). */
static const char scope_triggers_sql[] =
    "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgfoid::text"
    " FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_description d ON d.objoid = t.oid AND d.objsubid = 0"
    "  AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass"
    " WHERE d.description LIKE '" MARK_ANY "%'"
    "  AND CASE WHEN $2::text IS NOT NULL THEN c.relname::text = $2 AND CASE WHEN $1::text IS NULL"
    "        THEN pg_catalog.pg_table_is_visible(c.oid) ELSE n.nspname::text = $1 END"
    "   WHEN $1::text IS NOT NULL THEN n.nspname::text = $1 ELSE true END"
    "  AND ($3::text IS NULL OR pg_catalog.strpos(d.description, $3) > 0)";

/* Our functions no trigger uses any more: those of the dropped triggers, and in a
 * schema-wide or database-wide drop every one left over in scope (a dropped table leaves
 * its function behind). */
static const char scope_functions_sql[] =
    "SELECT n.nspname::text, p.proname::text FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.objsubid = 0"
    "  AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
    " WHERE d.description LIKE '" MARK_ANY "%' AND p.pronargs = 0"
    "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger u WHERE u.tgfoid = p.oid)"
    "  AND (p.oid = ANY ($3::pg_catalog.oid[])"
    "   OR ($4::text IS NULL AND $2::text IS NULL AND ($1::text IS NULL OR n.nspname::text = $1)))";

/* Our triggers in scope (a table, a schema, the database; those of one channel only when
 * chanline, "\nchannel=<len>:<channel>\n", is given) and the functions they leave unused. */
static int drop_scope(sn_conn *c, const char *schema, const char *table, const char *chanline, char *err,
                      size_t errlen)
{
    const char *vals[4] = {schema, table, chanline, NULL};
    sn_sbuf b = {0}, oids = {0};
    int dropped = -1;
    char begin[64], state[6] = "";
    snprintf(begin, sizeof begin, "BEGIN; SET LOCAL lock_timeout = '%.0fms'", lock_ms(c));
    if (pg_script(c, begin, NULL, err, errlen) < 0)
        return -1;
    PGresult *res = pg_exec(c, &c->ctl, scope_triggers_sql, 3, vals, 0, NULL, err, errlen);
    if (res == NULL)
        goto out;
    sn_sb_add(&oids, "{");
    for (int i = 0; i < PQntuples(res); i++) {
        sn_sb_add(&b, "DROP TRIGGER IF EXISTS ");
        pg_sb_quote(&b, c->ctl.conn, PQgetvalue(res, i, 2), 1);
        sn_sb_add(&b, " ON ");
        pg_sb_qname(&b, c->ctl.conn, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        sn_sb_add(&b, ";\n");
        sn_sb_add(&oids, i ? "," : "");
        sn_sb_add(&oids, PQgetvalue(res, i, 3));
    }
    sn_sb_add(&oids, "}");
    int n = PQntuples(res);
    PQclear(res);
    if (b.fail || oids.fail) {
        sn_seterr(err, errlen, "%s", b.fail ? b.fail : oids.fail);
        goto out;
    }
    if (b.len > 0 && pg_script(c, b.p, state, err, errlen) < 0) {
        if (lock_failed(state)) {
            size_t n = strlen(err);
            snprintf(err + n, errlen > n ? errlen - n : 0,
                     " (another session holds a lock on one of the tables; try again once it is done)");
        }
        goto out;
    }
    b.len = 0;
    const char *fvals[4] = {schema, table, oids.p, chanline};
    res = pg_exec(c, &c->ctl, scope_functions_sql, 4, fvals, 0, NULL, err, errlen);
    if (res == NULL)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        sn_sb_add(&b, "DROP FUNCTION IF EXISTS ");
        pg_sb_qname(&b, c->ctl.conn, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        sn_sb_add(&b, "();\n");
    }
    PQclear(res);
    if (b.fail) {
        sn_seterr(err, errlen, "%s", b.fail);
        goto out;
    }
    if (b.len > 0 && pg_script(c, b.p, NULL, err, errlen) < 0)
        goto out;
    if (forget_made(c, schema, table, chanline, NULL, err, errlen) < 0)
        goto out;
    if (pg_script(c, "COMMIT", NULL, err, errlen) == 0)
        dropped = n;
out:
    if (c->ctl.conn && PQtransactionStatus(c->ctl.conn) != PQTRANS_IDLE) {
        char e2[256];
        PQclear(pg_exec(c, &c->ctl, "ROLLBACK", 0, NULL, 0, NULL, e2, sizeof e2));
    }
    free(b.p);
    free(oids.p);
    return dropped;
}

int pg_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen)
{
    return drop_scope(c, schema, table, NULL, err, errlen);
}

/* A durable capture no consumer reads any more: its triggers go (found by the channel their
 * marker records). How many went, or -1 and err. */
int pg_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    sn_sbuf line = {0};
    sn_sb_addf(&line, "\nchannel=%zu:%s\n", strlen(channel), channel);
    int n = line.fail ? (sn_seterr(err, errlen, "%s", line.fail), -1) : drop_scope(c, NULL, NULL, line.p, err, errlen);
    free(line.p);
    return n;
}

/* ===== list ===== */

/* The value of "key=" in a marker comment: the rest of its line; for channel= the
 * length-prefixed text. NULL when absent. */
static int comment_field(const char *text, const char *key, const char **val, size_t *len)
{
    char pat[32];
    snprintf(pat, sizeof pat, "\n%s=", key);
    const char *p = strstr(text, pat);
    if (p == NULL)
        return 0;
    p += strlen(pat);
    if (strcmp(key, "channel") == 0) {
        char *end;
        unsigned long n = strtoul(p, &end, 10);
        if (*end != ':' || strlen(end + 1) < n)
            return 0;
        *val = end + 1;
        *len = n;
        return 1;
    }
    *val = p;
    *len = strcspn(p, "\n");
    return 1;
}

int pg_list(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    static const char sql[] =
        "SELECT n.nspname::text, c.relname::text, t.tgtype::int, t.tgname::text,"
        " t.tgfoid::pg_catalog.regprocedure::text, d.description"
        " FROM pg_catalog.pg_trigger t"
        " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_description d ON d.objoid = t.oid AND d.objsubid = 0"
        "  AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass"
        " WHERE d.description LIKE '" MARK_ANY "%'"
        " ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\", t.tgtype, t.tgname COLLATE \"C\"";
    static const char *const names[] = {"schema", "table",    "operation", "channel",
                                        "trigger", "function", "columns",   "installed"};
    *out = NULL;
    PGresult *res = pg_exec(c, &c->ctl, sql, 0, NULL, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        return -1;
    sn_result *r = sn_result_new(8);
    int ok = r != NULL;
    for (int i = 0; ok && i < 8; i++)
        ok = sn_result_name(r, i, names[i]) == 0;
    for (int i = 0; ok && i < PQntuples(res); i++) {
        sn_value *row = sn_result_row(r);
        if (row == NULL) {
            ok = 0;
            break;
        }
        const char *text = PQgetvalue(res, i, 5), *v;
        const char *op = tgtype_op(atoi(PQgetvalue(res, i, 2)));
        size_t len;
        ok = sn_value_text(&row[0], PQgetvalue(res, i, 0), strlen(PQgetvalue(res, i, 0))) == 0 &&
             sn_value_text(&row[1], PQgetvalue(res, i, 1), strlen(PQgetvalue(res, i, 1))) == 0 &&
             sn_value_text(&row[2], op, strlen(op)) == 0 &&
             sn_value_text(&row[4], PQgetvalue(res, i, 3), strlen(PQgetvalue(res, i, 3))) == 0 &&
             sn_value_text(&row[5], PQgetvalue(res, i, 4), strlen(PQgetvalue(res, i, 4))) == 0;
        if (ok && comment_field(text, "channel", &v, &len))
            ok = sn_value_text(&row[3], v, len) == 0;
        if (ok && comment_field(text, "columns", &v, &len))
            ok = sn_value_text(&row[6], v, len) == 0;
        if (ok && comment_field(text, "installed", &v, &len))
            ok = sn_value_text(&row[7], v, len) == 0;
    }
    PQclear(res);
    if (!ok) {
        sn_result_free(r);
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    *out = r;
    return 0;
}
