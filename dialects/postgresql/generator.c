/*
 * generator.c — the plpgsql function of a watch's trigger, from what the catalog says about
 * the table now (pg_table_info, pg_watch_now).
 *
 * The function reads only the columns it sends (key, extra, trigger and old columns),
 * never the whole row, inside a block that catches every error; a watch of extra_columns
 * = "*" reads the whole row (to_jsonb), so it follows the table as it changes. A plan that
 * no longer fits the table (a column retyped since the session cached it) is rebuilt by
 * EXECUTE; an extra or old column renamed or dropped since is left out and the others are
 * sent; a key column gone, or a value jsonb cannot hold, sends the key (if it can) marked
 * truncated ("t": true); a trigger column that is gone counts as unchanged. The trigger is
 * made for the table as it is (pg_watch_now): the columns it no longer has are not read at
 * all, so one renamed back is seen by the host's next read of the table (the C trigger gets
 * the columns as declared, and sends one back at once). The user's write never fails here.
 * Floats go out with extra_float_digits of at least 1 (see FLOAT_GUARD).
 */
#include "triggers.h"

#define JSON_CHUNK 50 /* pairs per jsonb_build_object(): functions take <= 100 args */

/* ===== what the catalog says about the watched table ===== */


static const char table_sql[] =
    "SELECT c.oid::text, c.relkind::text, c.relnamespace::text, a.attname::text,"
    " COALESCE(NULLIF(ty.typbasetype, 0), ty.oid) ="
    "   'pg_catalog.bytea'::pg_catalog.regtype::pg_catalog.oid,"
    " COALESCE(NULLIF(ty.typbasetype, 0), ty.oid) IN ('pg_catalog.float4'::pg_catalog.regtype,"
    "   'pg_catalog.float8'::pg_catalog.regtype, 'pg_catalog._float4'::pg_catalog.regtype,"
    "   'pg_catalog._float8'::pg_catalog.regtype),"
    /* a type sqlnotify_capture.capture() renders itself (pgext/capture.c: category) */
    " COALESCE(NULLIF(ty.typbasetype, 0), ty.oid)::pg_catalog.int4 IN (16, 17, 18, 19, 20, 21, 23, 25, 26, 700,"
    "   701, 1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 3802)"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " LEFT JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid"
    " WHERE n.nspname::text = $1 AND c.relname = $2::text::name AND c.relname::text = $2";

/* 1 found, 0 no such table, -1 and err. */
int pg_table_info(sn_conn *c, const sn_watch *w, tinfo *t, char *err, size_t errlen)
{
    const char *vals[2] = {w->schema, w->table};
    memset(t, 0, sizeof *t);
    t->res = pg_exec(c, &c->ctl, table_sql, 2, vals, PG_RETRY, NULL, err, errlen);
    if (t->res == NULL)
        return -1;
    if (PQntuples(t->res) == 0)
        return 0;
    t->relid = PQgetvalue(t->res, 0, 0);
    t->relkind = PQgetvalue(t->res, 0, 1)[0];
    t->nspid = PQgetvalue(t->res, 0, 2);
    return 1;
}

static int is_bytea(const tinfo *t, const char *col)
{
    for (int i = 0; i < PQntuples(t->res); i++)
        if (strcmp(PQgetvalue(t->res, i, 3), col) == 0)
            return PQgetvalue(t->res, i, 4)[0] == 't';
    return 0;
}

int pg_is_float(const tinfo *t, const char *const *cols, int n)
{
    for (int k = 0; k < n; k++)
        for (int i = 0; i < PQntuples(t->res); i++)
            if (strcmp(PQgetvalue(t->res, i, 3), cols[k]) == 0 && PQgetvalue(t->res, i, 5)[0] == 't')
                return 1;
    return 0;
}

/* Every column of cols is of a type capture() renders itself. */
int pg_is_simple(const tinfo *t, const char *const *cols, int n)
{
    for (int k = 0; k < n; k++) {
        int ok = 0;
        for (int i = 0; i < PQntuples(t->res) && !ok; i++)
            ok = strcmp(PQgetvalue(t->res, i, 3), cols[k]) == 0 && PQgetvalue(t->res, i, 6)[0] == 't';
        if (!ok)
            return 0;
    }
    return 1;
}

static int has_column(const tinfo *t, const char *col)
{
    for (int i = 0; i < PQntuples(t->res); i++)
        if (!PQgetisnull(t->res, i, 3) && strcmp(PQgetvalue(t->res, i, 3), col) == 0)
            return 1;
    return 0;
}

/* The columns of cols the table has, into out; how many. */
static int keep_present(const tinfo *t, const char *const *cols, int n, const char **out)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (has_column(t, cols[i]))
            out[k++] = cols[i];
    return k;
}

/* The watch as its table is now, which the trigger is made for: the extra and old columns
 * renamed or dropped since it was declared are left out, the trigger columns gone too unless
 * none is left (then they all stay: a trigger column gone counts as unchanged, and it fires
 * no more). The key stays as asked: a key column gone sends {"t": true}. *cols (malloc'd)
 * holds the lists; 0, or -1 out of memory. */
int pg_watch_now(const sn_watch *w, const tinfo *t, sn_watch *now, const char ***cols)
{
    int n = w->nextra + w->nold + w->ntrigger;
    const char **a = malloc(sizeof *a * (size_t)(n > 0 ? n : 1));
    *now = *w;
    *cols = a;
    if (a == NULL)
        return -1;
    now->extra = a;
    now->nextra = keep_present(t, w->extra, w->nextra, a);
    a += now->nextra;
    now->old_cols = a;
    now->nold = keep_present(t, w->old_cols, w->nold, a);
    a += now->nold;
    int ntrig = keep_present(t, w->trigger_cols, w->ntrigger, a);
    if (ntrig > 0) {
        now->trigger_cols = a;
        now->ntrigger = ntrig;
    }
    return 0;
}

/* ===== the generator ===== */

/* One column's value as jsonb_build_object takes it: bytea as "\x<hex>" whatever
 * bytea_output says; every other type as to_jsonb would give it. */
static void sb_value(sn_sbuf *b, PGconn *db, const tinfo *t, const char *rec, const char *col)
{
    int bytes = is_bytea(t, col);
    if (bytes)
        sn_sb_add(b, "E'\\\\x' OPERATOR(pg_catalog.||) pg_catalog.encode(");
    sn_sb_add(b, rec);
    sn_sb_add(b, ".");
    pg_sb_quote(b, db, col, 1);
    if (bytes)
        sn_sb_add(b, ", 'hex')");
}

/* jsonb_build_object('c', REC."c", ...) for a list of columns; '{}' for none. */
static void sb_object(sn_sbuf *b, PGconn *db, const tinfo *t, const char *rec, const char *const *cols, int n)
{
    if (n <= 0) {
        sn_sb_add(b, "'{}'::jsonb");
        return;
    }
    for (int i = 0; i < n; i += JSON_CHUNK) {
        if (i > 0)
            sn_sb_add(b, " OPERATOR(pg_catalog.||) ");
        sn_sb_add(b, "pg_catalog.jsonb_build_object(");
        for (int k = i; k < n && k < i + JSON_CHUNK; k++) {
            if (k > i)
                sn_sb_add(b, ", ");
            pg_sb_quote(b, db, cols[k], 0);
            sn_sb_add(b, "::text, ");
            sb_value(b, db, t, rec, cols[k]);
        }
        sn_sb_add(b, ")");
    }
}

/* to_jsonb(OLD."c") IS DISTINCT FROM to_jsonb(NEW."c"): works for every type, also those
 * without an equality operator (json, point). */
static void sb_col_changed(sn_sbuf *b, PGconn *db, const char *col, const char *oldr, const char *newr)
{
    sn_sb_add(b, "pg_catalog.to_jsonb(");
    sn_sb_add(b, oldr);
    sn_sb_add(b, ".");
    pg_sb_quote(b, db, col, 1);
    sn_sb_add(b, ") IS DISTINCT FROM pg_catalog.to_jsonb(");
    sn_sb_add(b, newr);
    sn_sb_add(b, ".");
    pg_sb_quote(b, db, col, 1);
    sn_sb_add(b, ")");
}

/* A key column changed, compared as sb_col_changed does: the key's own type may compare
 * through a cast (varchar as text), and the writer's search_path could then give an equality
 * operator of another schema, one that matches exactly, the call. */
static void sb_key_changed(sn_sbuf *b, PGconn *db, const sn_watch *w, const char *oldr, const char *newr)
{
    for (int i = 0; i < w->npk; i++) {
        if (i > 0)
            sn_sb_add(b, " OR ");
        sb_col_changed(b, db, w->pk[i], oldr, newr);
    }
}

/* extra_columns = "*": every column of record rec but the key ones, as the table has them
 * now (bytea as "\x<hex>" under BYTEA_GUARD). */
static void sb_row(sn_sbuf *b, PGconn *db, const sn_watch *w, const char *rec)
{
    sn_sb_add(b, "pg_catalog.to_jsonb(");
    sn_sb_add(b, rec);
    sn_sb_add(b, ")");
    if (w->npk == 0)
        return;
    sn_sb_add(b, " OPERATOR(pg_catalog.-) ARRAY[");
    for (int i = 0; i < w->npk; i++) {
        if (i > 0)
            sn_sb_add(b, ", ");
        pg_sb_quote(b, db, w->pk[i], 0);
    }
    sn_sb_add(b, "]::pg_catalog.text[]");
}

/* The payload object from records rec (NEW, or OLD for DELETE) and oldr (UPDATE):
 * jsonb_build_object('id', <k>, 'x', <extra>[, 'o', <old>]), the "oid" added after. */
static void sb_payload(sn_sbuf *b, PGconn *db, const sn_watch *w, const tinfo *t, const char *k,
                       const char *rec, const char *oldr)
{
    int nold = w->op == SN_UPDATE ? w->nold : 0;
    sn_sb_add(b, "pg_catalog.jsonb_build_object('id', ");
    sn_sb_add(b, k);
    sn_sb_add(b, ", 'x', ");
    if (w->extra_all)
        sb_row(b, db, w, rec);
    else
        sb_object(b, db, t, rec, w->extra, w->nextra);
    if (nold) {
        sn_sb_add(b, ", 'o', ");
        sb_object(b, db, t, oldr, w->old_cols, nold);
    }
    sn_sb_add(b, ")");
}

/* A statement for EXECUTE ... USING, as a literal: planned when it runs, so it fits the
 * table as it is now. In it $1 is NEW (OLD for DELETE) and $2 is OLD (UPDATE). */
static void sb_dynamic(sn_sbuf *b, PGconn *db, const sn_watch *w, const tinfo *t, int payload)
{
    sn_sbuf s = {0};
    int keycheck = w->op == SN_UPDATE && w->npk > 0;
    sn_sb_add(&s, "SELECT ");
    if (payload) {
        sb_payload(&s, db, w, t, "s.k", "($1)", "($2)");
        sn_sb_add(&s, " OPERATOR(pg_catalog.||) CASE WHEN s.ok IS NULL THEN '{}'::jsonb"
                      " ELSE pg_catalog.jsonb_build_object('oid', s.ok) END, ");
    }
    sn_sb_add(&s, "s.k, s.ok FROM (SELECT ");
    sb_object(&s, db, t, "($1)", w->pk, w->npk);
    sn_sb_add(&s, " AS k, ");
    if (keycheck) {
        sn_sb_add(&s, "CASE WHEN ");
        sb_key_changed(&s, db, w, "($2)", "($1)");
        sn_sb_add(&s, " THEN ");
        sb_object(&s, db, t, "($2)", w->pk, w->npk);
        sn_sb_add(&s, " END");
    } else {
        sn_sb_add(&s, "NULL::jsonb");
    }
    sn_sb_add(&s, " AS ok) s");
    if (s.fail)
        b->fail = s.fail;
    else
        pg_sb_quote(b, db, s.p, 0);
    free(s.p);
}

/* Floats are sent as float8out writes them, which the writer's extra_float_digits decides:
 * 1 or more (1 is the default since PostgreSQL 12) gives the shortest text that reads back
 * the same. A watch carrying a float column raises a lower setting to 1 for the trigger and
 * puts it back before returning; not with a SET clause on the function, which costs every
 * call a save and restore of all settings (PostgreSQL 15: about 2.5 us a row). */
#define FLOAT_GUARD                                                                                                    \
    "  IF pg_catalog.current_setting('extra_float_digits')::int OPERATOR(pg_catalog.<) 1 THEN\n"                                         \
    "    sn_f := pg_catalog.current_setting('extra_float_digits');\n"                                               \
    "    PERFORM pg_catalog.set_config('extra_float_digits', '1', true);\n"                                         \
    "  END IF;\n"
#define FLOAT_RESTORE "IF sn_f IS NOT NULL THEN PERFORM pg_catalog.set_config('extra_float_digits', sn_f, true); END IF;\n"
/* The same for bytea_output in a watch of every column (to_jsonb writes bytea as it says). */
#define BYTEA_GUARD                                                                                                    \
    "  IF pg_catalog.current_setting('bytea_output') OPERATOR(pg_catalog.<>) 'hex' THEN\n"                          \
    "    sn_bo := pg_catalog.current_setting('bytea_output');\n"                                                     \
    "    PERFORM pg_catalog.set_config('bytea_output', 'hex', true);\n"                                              \
    "  END IF;\n"
#define BYTEA_RESTORE "IF sn_bo IS NOT NULL THEN PERFORM pg_catalog.set_config('bytea_output', sn_bo, true); END IF;\n"

/* "BEGIN EXECUTE <q> INTO var USING ...;" at an indent, the query quoted as a literal (and
 * freed); the caller writes the rest of the block. */
static void sb_exec_into(sn_sbuf *b, PGconn *db, sn_sbuf *q, const char *indent, const char *var, const char *using)
{
    sn_sb_addf(b, "%sBEGIN\n%s  EXECUTE ", indent, indent);
    if (q->fail)
        b->fail = q->fail;
    else
        pg_sb_quote(b, db, q->p, 0);
    free(q->p);
    sn_sb_addf(b, " INTO %s%s;\n", var, using);
}

/* The slow path's extra and old columns, each read on its own by EXECUTE: one renamed or
 * dropped since (undefined_column) is left out, one whose value cannot be sent makes the
 * row truncated (sn_t). $1 is NEW (OLD for DELETE), $2 OLD. */
static void sb_each(sn_sbuf *b, PGconn *db, const tinfo *t, const char *rec, const char *into,
                    const char *const *cols, int n, const char *using)
{
    for (int i = 0; i < n; i++) {
        sn_sbuf s = {0};
        sn_sb_add(&s, "SELECT ");
        sb_object(&s, db, t, rec, &cols[i], 1);
        sb_exec_into(b, db, &s, "        ", "sn_e", using);
        sn_sb_addf(b, "          %s := %s OPERATOR(pg_catalog.||) sn_e;\n", into, into);
        sn_sb_add(b, "        EXCEPTION WHEN undefined_column THEN\n          NULL;\n"
                     "        WHEN OTHERS THEN\n          sn_t := true;\n        END;\n");
    }
}

/* The plpgsql body. The first block reads only the columns the watch sends, through
 * plans cached for the session. When it fails (a column renamed, dropped or retyped
 * since the session planned it, a value jsonb cannot hold), the same payload is built
 * again by EXECUTE, planned now; if that fails too, the key alone goes, truncated. A
 * user's write never fails here. */
/* durable: append to the journal (no size limit there) instead of pg_notify; fl: the watch
 * carries a float column */
void pg_sb_body(sn_sbuf *b, PGconn *db, const sn_watch *w, const tinfo *t, const char *ovf_table, int durable,
                    int fl)
{
    const char *restore = w->extra_all ? FLOAT_RESTORE BYTEA_RESTORE : fl ? FLOAT_RESTORE : "";
    const char *rec = w->op == SN_DELETE ? "OLD" : "NEW";
    const char *using = w->op == SN_UPDATE ? " USING NEW, OLD" : w->op == SN_DELETE ? " USING OLD" : " USING NEW";
    int upd = w->op == SN_UPDATE;
    int ntrig = upd ? w->ntrigger : 0, keycheck = upd && w->npk > 0, nold = upd ? w->nold : 0;
    int each = !w->extra_all && (w->nextra > 0 || nold > 0); /* the slow path reads them one by one */

    fl = fl || w->extra_all;
    sn_sb_add(b, "DECLARE\n  sn_k jsonb;\n  sn_ok jsonb;\n  sn_v jsonb;\n  sn_p text;\n  sn_id bigint;\n");
    if (durable)
        sn_sb_add(b, "  sn_h int;\n  sn_ms bigint;\n  sn_g bigint;\n");
    if (ntrig)
        sn_sb_add(b, "  sn_c boolean := false;\n  sn_d boolean;\n");
    if (fl)
        sn_sb_add(b, "  sn_f text;\n");
    if (w->extra_all)
        sn_sb_add(b, "  sn_bo text;\n");
    if (each)
        sn_sb_add(b, nold ? "  sn_x jsonb;\n  sn_o jsonb;\n  sn_e jsonb;\n  sn_t boolean;\n"
                          : "  sn_x jsonb;\n  sn_e jsonb;\n  sn_t boolean;\n");
    sn_sb_add(b, "BEGIN\n");
    if (fl)
        sn_sb_add(b, FLOAT_GUARD);
    if (w->extra_all)
        sn_sb_add(b, BYTEA_GUARD);
    sn_sb_add(b, "  BEGIN\n");
    if (ntrig) {
        sn_sb_add(b, "    IF NOT (");
        for (int i = 0; i < ntrig; i++) {
            if (i > 0)
                sn_sb_add(b, "\n        OR ");
            sb_col_changed(b, db, w->trigger_cols[i], "OLD", "NEW");
        }
        sn_sb_add(b, ") THEN\n      ");
        sn_sb_add(b, restore);
        sn_sb_add(b, "      RETURN NULL;\n    END IF;\n");
    }
    sn_sb_add(b, "    sn_k := ");
    sb_object(b, db, t, rec, w->pk, w->npk);
    sn_sb_add(b, ";\n");
    if (keycheck) {
        sn_sb_add(b, "    IF ");
        sb_key_changed(b, db, w, "OLD", "NEW");
        sn_sb_add(b, " THEN\n      sn_ok := ");
        sb_object(b, db, t, "OLD", w->pk, w->npk);
        sn_sb_add(b, ";\n    END IF;\n");
    }
    sn_sb_add(b, "    sn_v := ");
    sb_payload(b, db, w, t, "sn_k", rec, "OLD");
    sn_sb_add(b, ";\n");
    if (keycheck)
        sn_sb_add(b, "    IF sn_ok IS NOT NULL THEN\n"
                     "      sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);\n"
                     "    END IF;\n");
    sn_sb_add(b, "    sn_p := sn_v::text;\n"
                 "  EXCEPTION WHEN OTHERS THEN\n"
                 "    sn_p := NULL;\n"
                 "  END;\n"
                 "  IF sn_p IS NULL THEN\n");
    /* A trigger column that cannot be read any more counts as unchanged. */
    for (int i = 0; i < ntrig; i++) {
        sn_sbuf s = {0};
        sn_sb_add(&s, "SELECT ");
        sb_col_changed(&s, db, w->trigger_cols[i], "($2)", "($1)");
        sb_exec_into(b, db, &s, "    ", "sn_d", using);
        sn_sb_add(b, "      sn_c := sn_c OR sn_d;\n"
                     "    EXCEPTION WHEN OTHERS THEN\n      NULL;\n    END;\n");
    }
    if (ntrig) {
        sn_sb_add(b, "    IF NOT sn_c THEN\n      ");
        sn_sb_add(b, restore);
        sn_sb_add(b, "      RETURN NULL;\n    END IF;\n");
    }
    sn_sb_add(b, "    sn_k := NULL;\n    sn_ok := NULL;\n    BEGIN\n      EXECUTE ");
    sb_dynamic(b, db, w, t, 1);
    sn_sb_add(b, " INTO sn_v, sn_k, sn_ok");
    sn_sb_add(b, using);
    sn_sb_add(b, ";\n      sn_p := sn_v::text;\n"
                 "    EXCEPTION WHEN OTHERS THEN\n"
                 "      BEGIN\n        EXECUTE ");
    sb_dynamic(b, db, w, t, 0);
    sn_sb_add(b, " INTO sn_k, sn_ok");
    sn_sb_add(b, using);
    sn_sb_add(b, ";\n"
                 "      EXCEPTION WHEN OTHERS THEN\n"
                 "        sn_k := NULL;\n"
                 "        sn_ok := NULL;\n"
                 "      END;\n");
    if (each) { /* the key, and every column that can be read */
        sn_sb_add(b, nold ? "      IF sn_k IS NOT NULL THEN\n        sn_x := '{}';\n        sn_o := '{}';\n"
                          : "      IF sn_k IS NOT NULL THEN\n        sn_x := '{}';\n");
        sn_sb_add(b, "        sn_t := false;\n");
        sb_each(b, db, t, "($1)", "sn_x", w->extra, w->nextra, using);
        sb_each(b, db, t, "($2)", "sn_o", w->old_cols, nold, using);
        sn_sb_add(b, "        IF NOT sn_t THEN\n"
                     "          sn_v := pg_catalog.jsonb_build_object('id', sn_k, 'x', sn_x");
        sn_sb_add(b, nold ? ", 'o', sn_o);\n" : ");\n");
        sn_sb_add(b, "          IF sn_ok IS NOT NULL THEN\n"
                     "            sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);\n"
                     "          END IF;\n"
                     "          sn_p := sn_v::text;\n"
                     "        END IF;\n"
                     "      END IF;\n");
    }
    sn_sb_add(b, "    END;\n"
                 "  END IF;\n"
                 "  IF ");
    sn_sb_add(b, durable ? "false" : "pg_catalog.octet_length(sn_p) OPERATOR(pg_catalog.>) " PG_STR(PG_MAX_PAYLOAD));
    sn_sb_add(b, " THEN\n");
    if (ovf_table) {
        /* A missing table or privilege must not fail the write: fall back to the key. */
        sn_sb_add(b, "    BEGIN\n      INSERT INTO ");
        sn_sb_add(b, ovf_table);
        sn_sb_add(b, " (channel, payload) VALUES (");
        pg_sb_quote(b, db, w->channel, 0);
        sn_sb_add(b, ", sn_v) RETURNING id INTO sn_id;\n"
                     "      sn_p := '" PG_OVERFLOW_REF "' OPERATOR(pg_catalog.||) sn_id::text;\n"
                     "    EXCEPTION WHEN OTHERS THEN\n"
                     "      sn_p := NULL;\n"
                     "    END;\n");
    } else {
        sn_sb_add(b, "    sn_p := NULL;\n");
    }
    sn_sb_add(b, "  END IF;\n"
                 "  IF sn_p IS NULL THEN\n"
                 "    sn_p := '{\"t\": true}';\n"
                 "    IF sn_k IS NOT NULL THEN\n"
                 "      sn_v := pg_catalog.jsonb_build_object('id', sn_k, 't', true);\n"
                 "      IF sn_ok IS NOT NULL THEN\n"
                 "        sn_v := sn_v OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('oid', sn_ok);\n"
                 "      END IF;\n"
                 "      IF pg_catalog.octet_length(sn_v::text) OPERATOR(pg_catalog.<=) " PG_STR(PG_MAX_PAYLOAD) " THEN\n"
                 "        sn_p := sn_v::text;\n"
                 "      END IF;\n"
                 "    END IF;\n"
                 "  END IF;\n");
    sn_sbuf chan = {0};
    pg_sb_quote(&chan, db, w->channel, 0);
    if (chan.fail) {
        b->fail = chan.fail;
    } else if (durable) {
        /* the hash of table and key places the row in a consumer's share (a row without a
         * key: its payload's) */
        pg_journal_append_sql(b, chan.p, "sn_p", "pg_catalog.hashtext(COALESCE(sn_k::text, sn_p)) OPERATOR(pg_catalog.#) TG_RELID::int");
    } else {
        sn_sb_add(b, "  PERFORM pg_catalog.pg_notify(");
        sn_sb_add(b, chan.p);
        sn_sb_add(b, ", sn_p);\n");
    }
    free(chan.p);
    if (fl) {
        sn_sb_add(b, "  ");
        sn_sb_add(b, restore);
    }
    sn_sb_add(b, "  RETURN NULL;\nEND");
}

/* ===== backfill ===== */

/* A name as jsonb's text output writes an object key: quoted, escaped as escape_json does. */
static void sb_json_key(sn_sbuf *b, const char *name)
{
    sn_sb_add(b, "\"");
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        char esc[8];
        const char *named = *p == '"' ? "\\\"" : *p == '\\' ? "\\\\" : *p == '\b' ? "\\b" : *p == '\f' ? "\\f"
                          : *p == '\n' ? "\\n" : *p == '\r' ? "\\r" : *p == '\t' ? "\\t" : NULL;
        if (named) {
            sn_sb_add(b, named);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sn_sb_add(b, esc);
        } else {
            sn_sb_addn(b, (const char *)p, 1);
        }
    }
    sn_sb_add(b, "\"");
}

/* jsonb orders an object's keys by length, then bytes (lengthCompareJsonbStringValue). */
static int json_key_cmp(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return memcmp(x, y, lx);
}

/* The text of sb_object's jsonb object, made as text: the same bytes (keys in jsonb's order,
 * its ": " and ", ", each value as to_jsonb renders it), at a fraction of the cost of making
 * the jsonb and rendering it, per row of a backfill. A piece of the object's text between
 * two values is one literal; a NULL value is null. */
static void sb_text_object(sn_sbuf *b, PGconn *db, const tinfo *t, const char *rec, const char *const *cols, int n)
{
    if (n <= 0) {
        sn_sb_add(b, "'{}'");
        return;
    }
    const char **sorted = malloc(sizeof *sorted * (size_t)n);
    if (sorted == NULL) {
        sn_sb_fail(b, "out of memory");
        return;
    }
    memcpy(sorted, cols, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, json_key_cmp);
    sn_sbuf lit = {0};
    sn_sb_add(b, "(");
    for (int i = 0; i < n; i++) {
        sn_sb_add(&lit, i == 0 ? "{" : ", ");
        sb_json_key(&lit, sorted[i]);
        sn_sb_add(&lit, ": ");
        pg_sb_quote(b, db, lit.p ? lit.p : "", 0);
        sn_sb_add(b, " OPERATOR(pg_catalog.||) COALESCE(pg_catalog.to_jsonb(");
        sb_value(b, db, t, rec, sorted[i]);
        sn_sb_add(b, ")::pg_catalog.text, 'null') OPERATOR(pg_catalog.||) ");
        if (lit.fail)
            b->fail = lit.fail;
        sn_sb_free(&lit);
        lit = (sn_sbuf){0};
    }
    sn_sb_add(b, "'}')");
    free(sorted);
}

/* The payload and share hash of a row aliased r, as sb_body's fast path makes them for an
 * INSERT (sn_dialect.row_sql): the key object, hashed as the trigger hashes it with the
 * relation the row is in (tableoid is TG_RELID for a partition's row). */
int pg_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen)
{
    tinfo t;
    int found = pg_table_info(c, w, &t, err, errlen);
    if (found <= 0) {
        if (found == 0)
            sn_seterr(err, errlen, "table %s.%s does not exist", w->schema, w->table);
        PQclear(t.res);
        return -1;
    }
    PGconn *db = c->ctl.conn;
    sn_sbuf k = {0};
    sb_text_object(&k, db, &t, "r", w->pk, w->npk);
    /* {"x": ..., "id": ...}: jsonb's order of the two keys (sb_text_object); a backfill names
     * its extra columns (backfill.lua: every column for "*"), so there is no whole-row case */
    sn_sb_add(payload, "('{\"x\": ' OPERATOR(pg_catalog.||) ");
    sb_text_object(payload, db, &t, "r", w->extra, w->nextra);
    sn_sb_add(payload, " OPERATOR(pg_catalog.||) ', \"id\": ' OPERATOR(pg_catalog.||) ");
    sn_sb_add(payload, k.p ? k.p : "NULL");
    sn_sb_add(payload, " OPERATOR(pg_catalog.||) '}')");
    sn_sb_add(hash, "pg_catalog.hashtext(");
    sn_sb_add(hash, k.p);
    sn_sb_add(hash, ") OPERATOR(pg_catalog.#) r.tableoid::int");
    const char *fail = k.fail ? k.fail : payload->fail ? payload->fail : hash->fail;
    if (fail)
        sn_seterr(err, errlen, "%s", fail);
    sn_sb_free(&k);
    PQclear(t.res);
    return fail ? -1 : 0;
}
