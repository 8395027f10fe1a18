/*
 * dialects/sqlite/triggers.c — the catalog (describe) and our triggers: their names,
 * the SQL that writes the wire format of dialect.h into the change log, install,
 * uninstall, drop, list, verify, and their repair after a schema change.
 *
 * Each trigger carries a marker comment, `/ * sqlnotify:2:<marker> {description} * /`:
 * the watch's hash (compared by install and verify) and a JSON description of the
 * watch (table, operation, channel, label, key, extra, trigger and old columns, "all"
 * for extra_columns = "*", install time) that list shows and the repair regenerates the
 * trigger from. Every '/' in it is written as "\/", so the comment cannot end early.
 * The trigger is made for the table as it is (build_now): columns of the watch the table
 * no longer has are left out, "*" is every column but the key ones; the repair makes it
 * again when the table changes.
 */
#include "sqlite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *const op_names[] = {"insert", "update", "delete"};
static const char *const op_sql[] = {"INSERT", "UPDATE", "DELETE"};

enum { L_PK, L_X, L_WHEN, L_OLD, NLISTS };
static const char *const list_keys[NLISTS] = {"pk", "x", "w", "o"};

#define PF_MAX_ARGS 100   /* SQLite functions take at most 127 arguments by default */

/* What a trigger is made from: a watch, or a description read back from a trigger. */
typedef struct spec {
    const char *table;           /* the table it is ON */
    int op;
    const char *channel;
    const char *const *cols[NLISTS];
    int n[NLISTS];
    int never;                   /* an UPDATE watch whose trigger columns are all gone */
} spec;

/* One of our triggers, read back. */
typedef struct desc {
    int version;                 /* SQL_VERSION: with a description; 1: an older sqlnotify's */
    int op;                      /* -1: unknown */
    char *table, *channel, *label, *at;
    char **cols[NLISTS];
    int n[NLISTS];
    int all;                     /* extra_columns = "*" */
    char *comment;               /* the marker comment, verbatim */
} desc;

static void desc_free(desc *d)
{
    free(d->table);
    free(d->channel);
    free(d->label);
    free(d->at);
    free(d->comment);
    for (int l = 0; l < NLISTS; l++) {
        for (int i = 0; i < d->n[l]; i++)
            free(d->cols[l][i]);
        free(d->cols[l]);
    }
    memset(d, 0, sizeof *d);
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? sqd_strdup(s) : NULL;
}

static int op_of(const char *name)
{
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, op_names[i]) == 0)
            return i;
    return -1;
}

/* The operation of a trigger from its SQL: "... AFTER INSERT ON ...". */
static int op_of_sql(const char *sql)
{
    const char *p = strstr(sql, " AFTER ");
    for (int i = 0; p && i < 3; i++)
        if (strncmp(p + 7, op_sql[i], strlen(op_sql[i])) == 0)
            return i;
    return -1;
}

/* The channel of an older sqlnotify's trigger: "VALUES ('<channel>', json_object(". */
static char *channel_of_v1(const char *sql)
{
    const char *p = strstr(sql, "VALUES ('");
    if (!p)
        return NULL;
    p += 9;
    char *out = malloc(strlen(p) + 1), *o = out;
    if (!out)
        return NULL;
    for (; *p; p++) {
        if (*p == '\'' && p[1] == '\'')
            p++;
        else if (*p == '\'')
            break;
        *o++ = *p;
    }
    *o = '\0';
    return out;
}

static int json_list(sqlite3 *db, const char *json, const char *key, desc *d, int l)
{
    sqlite3_stmt *st;
    char path[8];
    snprintf(path, sizeof path, "$.%s", key);
    if (sqlite3_prepare_v2(db, "SELECT value FROM json_each(?1, ?2) ORDER BY key", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
    int rc, cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (d->n[l] == cap) {
            cap = cap ? cap * 2 : 8;
            char **p = realloc(d->cols[l], (size_t)cap * sizeof *p);
            if (!p)
                break;
            d->cols[l] = p;
        }
        char *s = dup_col(st, 0);
        if (!s)
            break;
        d->cols[l][d->n[l]++] = s;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Read one of our triggers back from its SQL. 0, or -1: not ours, or unreadable. */
static int parse_desc(sqlite3 *db, const char *sql, desc *d)
{
    memset(d, 0, sizeof *d);
    d->op = -1;
    const char *p = strstr(sql, MARKER_PREFIX);
    if (!p)
        return -1;
    const char *end = strstr(p, " */");
    if (!end)
        return -1;
    d->version = atoi(p + strlen(MARKER_PREFIX));
    d->comment = strndup(p, (size_t)(end + 3 - p));
    if (!d->comment)
        return -1;
    if (d->version != SQL_VERSION) {
        d->op = op_of_sql(sql);
        d->channel = channel_of_v1(sql);
        return 0;
    }
    const char *json = strchr(d->comment + strlen(MARKER_PREFIX), ' ');
    if (!json)
        goto bad;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT json_extract(?1, '$.t'), json_extract(?1, '$.op'), "
                               "json_extract(?1, '$.ch'), json_extract(?1, '$.l'), "
                               "json_extract(?1, '$.at'), json_extract(?1, '$.all')", -1, &st, NULL) != SQLITE_OK)
        goto bad;
    /* the comment minus its closing " * /" */
    char *text = strndup(json + 1, strlen(json + 1) - 3);
    if (!text) {
        sqlite3_finalize(st);
        goto bad;
    }
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    int ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok) {
        d->table = dup_col(st, 0);
        char *op = dup_col(st, 1);
        d->op = op_of(op);
        free(op);
        d->channel = dup_col(st, 2);
        d->label = dup_col(st, 3);
        d->at = dup_col(st, 4);
        d->all = sqlite3_column_int(st, 5) != 0;
    }
    sqlite3_finalize(st);
    for (int l = 0; ok && l < NLISTS; l++)
        ok = json_list(db, text, list_keys[l], d, l) == 0;
    free(text);
    if (ok && d->table && d->channel && d->op >= 0)
        return 0;
bad:
    desc_free(d);
    return -1;
}

/* ===== names ===== */

/* The name an older sqlnotify gave the trigger of a channel. */
static void v1_name(const char *channel, char out[28])
{
    char hex[17];
    sn_hash_hex(channel, strlen(channel), hex);
    snprintf(out, 28, "sqlnotify_%s", hex);
}

/* ===== JSON text ===== */

/* A JSON string; slash: write '/' as "\/" (inside our comments). */
static void json_str(sqlite3_str *s, const char *v, int slash)
{
    sqlite3_str_appendchar(s, 1, '"');
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"' || *p == '\\' || (slash && *p == '/'))
            sqlite3_str_appendf(s, "\\%c", *p);
        else if (*p < 0x20)
            sqlite3_str_appendf(s, "\\u%04x", *p);
        else
            sqlite3_str_appendchar(s, 1, (char)*p);
    }
    sqlite3_str_appendchar(s, 1, '"');
}

static void json_names(sqlite3_str *s, const char *key, const char *const *cols, int n)
{
    sqlite3_str_appendf(s, ",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        if (i)
            sqlite3_str_appendchar(s, 1, ',');
        json_str(s, cols[i], 1);
    }
    sqlite3_str_appendchar(s, 1, ']');
}

static int marker_ok(const char *m)
{
    size_t n = m ? strlen(m) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((m[i] >= '0' && m[i] <= '9') || (m[i] >= 'a' && m[i] <= 'z') ||
              (m[i] >= 'A' && m[i] <= 'Z')))
            return 0;
    return 1;
}

/* The marker comment of a watch, sqlite3_malloc'd, or NULL. */
static char *make_comment(const sn_watch *w)
{
    char at[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &tm);

    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s, MARKER_PREFIX "%d:%s {\"s\":", SQL_VERSION, w->marker);
    json_str(s, w->schema ? w->schema : "main", 1);
    sqlite3_str_appendall(s, ",\"t\":");
    json_str(s, w->table, 1);
    sqlite3_str_appendf(s, ",\"op\":\"%s\",\"ch\":", op_names[w->op]);
    json_str(s, w->channel, 1);
    sqlite3_str_appendall(s, ",\"l\":");
    if (w->label)
        json_str(s, w->label, 1);
    else
        sqlite3_str_appendall(s, "null");
    json_names(s, list_keys[L_PK], w->pk, w->npk);
    json_names(s, list_keys[L_X], w->extra, w->nextra);
    json_names(s, list_keys[L_WHEN], w->trigger_cols, w->op == SN_UPDATE ? w->ntrigger : 0);
    json_names(s, list_keys[L_OLD], w->old_cols, w->op == SN_UPDATE ? w->nold : 0);
    if (w->extra_all)
        sqlite3_str_appendall(s, ",\"all\":1");
    sqlite3_str_appendf(s, ",\"at\":\"%s\"} */", at);
    if (sqlite3_str_errcode(s) != SQLITE_OK) {
        sqlite3_free(sqlite3_str_finish(s));
        return NULL;
    }
    return sqlite3_str_finish(s);
}

/* ===== the trigger's SQL ===== */

/* One value of the wire format (dialect.h) as JSON text, from SQL: integers exact,
 * REALs with 17 significant digits ('!' lifts SQLite's 16-digit cap), infinities as
 * strings, BLOBs as "\x" and lower-case hex, text quoted, NULL as null. SQLite stores
 * no NaN (it becomes NULL). Nothing here can fail on a value: the user's write never
 * fails because of its contents. */
static void value_expr(sqlite3_str *s, const char *rec, const char *col)
{
    sqlite3_str_appendf(s,
        "CASE typeof(%s.\"%w\") WHEN 'real' THEN CASE WHEN %s.\"%w\" = 9e999 THEN '\"Infinity\"' "
        "WHEN %s.\"%w\" = -9e999 THEN '\"-Infinity\"' ELSE printf('%%!.17g', %s.\"%w\") END "
        "WHEN 'blob' THEN '\"\\\\x' || lower(hex(%s.\"%w\")) || '\"' "
        "ELSE json_quote(%s.\"%w\") END",
        rec, col, rec, col, rec, col, rec, col, rec, col, rec, col);
}

/* The payload is built with printf(format, values...): one flat call instead of a chain
 * of || that grows SQLite's expression tree with every column. Past PF_MAX_ARGS values
 * the text continues in another printf joined with ||. */
typedef struct pf {
    sqlite3_str *out, *fmt, *args;
    int nargs, nchunks;
} pf;

static void pf_init(pf *p)
{
    p->out = sqlite3_str_new(NULL);
    p->fmt = sqlite3_str_new(NULL);
    p->args = sqlite3_str_new(NULL);
    p->nargs = p->nchunks = 0;
}

static void pf_lit(pf *p, const char *text)
{
    for (const char *q = text; *q; q++) {
        if (*q == '%')
            sqlite3_str_appendchar(p->fmt, 1, '%');
        sqlite3_str_appendchar(p->fmt, 1, *q);
    }
}

static void pf_key(pf *p, int first, const char *col)
{
    sqlite3_str *k = sqlite3_str_new(NULL);
    if (!first)
        sqlite3_str_appendchar(k, 1, ',');
    json_str(k, col, 0);
    sqlite3_str_appendchar(k, 1, ':');
    char *text = sqlite3_str_finish(k);
    if (text)
        pf_lit(p, text);
    else
        sqlite3_str_appendall(p->fmt, "\x01");   /* poisons the result: out of memory */
    sqlite3_free(text);
}

static void pf_flush(pf *p)
{
    const char *f = sqlite3_str_value(p->fmt);
    const char *a = sqlite3_str_value(p->args);
    if (!f)
        return;
    sqlite3_str_appendf(p->out, "%sprintf(%Q%s)", p->nchunks ? " || " : "", f, a ? a : "");
    p->nchunks++;
    sqlite3_str_reset(p->fmt);
    sqlite3_str_reset(p->args);
    p->nargs = 0;
}

/* Make room for one more value; the caller appends its expression to p->args. */
static void pf_arg(pf *p)
{
    if (p->nargs == PF_MAX_ARGS)
        pf_flush(p);
    sqlite3_str_appendall(p->fmt, "%s");
    sqlite3_str_appendall(p->args, ", ");
    p->nargs++;
}

static void pf_value(pf *p, const char *rec, const char *col)
{
    pf_arg(p);
    value_expr(p->args, rec, col);
}

static void pf_object(pf *p, const char *rec, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++) {
        pf_key(p, i == 0, cols[i]);
        pf_value(p, rec, cols[i]);
    }
}

/* The SQL text made, sqlite3_malloc'd, or NULL out of memory. */
static char *pf_finish(pf *p)
{
    pf_flush(p);
    int bad = sqlite3_str_errcode(p->out) || sqlite3_str_errcode(p->fmt) ||
              sqlite3_str_errcode(p->args) || sqlite3_str_length(p->out) == 0;
    sqlite3_free(sqlite3_str_finish(p->fmt));
    sqlite3_free(sqlite3_str_finish(p->args));
    char *out = sqlite3_str_finish(p->out);
    if (bad || (out && strchr(out, '\x01'))) {
        sqlite3_free(out);
        return NULL;
    }
    return out;
}

/* CASE WHEN <key changed> THEN ',"oid":{...OLD key...}' ELSE '' END */
static char *oid_expr(const spec *s)
{
    const char *const *pk = s->cols[L_PK];
    pf p;
    pf_init(&p);
    pf_lit(&p, ",\"oid\":{");
    pf_object(&p, "OLD", pk, s->n[L_PK]);
    pf_lit(&p, "}");
    char *obj = pf_finish(&p);
    if (!obj)
        return NULL;
    sqlite3_str *e = sqlite3_str_new(NULL);
    sqlite3_str_appendall(e, "CASE WHEN ");
    for (int i = 0; i < s->n[L_PK]; i++)
        sqlite3_str_appendf(e, "%sOLD.\"%w\" IS NOT NEW.\"%w\" COLLATE BINARY", i ? " OR " : "",
                            pk[i], pk[i]);
    sqlite3_str_appendf(e, " THEN %s ELSE '' END", obj);
    sqlite3_free(obj);
    if (sqlite3_str_errcode(e) != SQLITE_OK) {
        sqlite3_free(sqlite3_str_finish(e));
        return NULL;
    }
    return sqlite3_str_finish(e);
}

/* The payload of record rec as SQL (sqlite3_malloc'd), or NULL out of memory; oid: the old
 * key's part (UPDATE), taken and freed, or NULL. */
static char *payload_sql(const spec *s, const char *rec, char *oid)
{
    int update = s->op == SN_UPDATE;
    pf p;

    pf_init(&p);
    pf_lit(&p, "{\"id\":{");
    pf_object(&p, rec, s->cols[L_PK], s->n[L_PK]);
    pf_lit(&p, "}");
    if (s->n[L_X] > 0) {
        pf_lit(&p, ",\"x\":{");
        pf_object(&p, rec, s->cols[L_X], s->n[L_X]);
        pf_lit(&p, "}");
    }
    if (update && s->n[L_OLD] > 0) {
        pf_lit(&p, ",\"o\":{");
        pf_object(&p, "OLD", s->cols[L_OLD], s->n[L_OLD]);
        pf_lit(&p, "}");
    }
    if (oid) {
        pf_arg(&p);
        sqlite3_str_appendall(p.args, oid);
        sqlite3_free(oid);
    }
    pf_lit(&p, "}");
    return pf_finish(&p);
}

/* The CREATE TRIGGER statement (sqlite3_malloc'd), or NULL out of memory. */
static char *build_trigger(const char *name, const spec *s, const char *comment)
{
    int update = s->op == SN_UPDATE;
    char *oid = NULL;

    if (update && s->n[L_PK] > 0 && !(oid = oid_expr(s)))
        return NULL;
    char *payload = payload_sql(s, s->op == SN_DELETE ? "OLD" : "NEW", oid);
    if (!payload)
        return NULL;

    sqlite3_str *t = sqlite3_str_new(NULL);
    sqlite3_str_appendf(t, "CREATE TRIGGER \"%w\" AFTER %s ON \"%w\" FOR EACH ROW", name,
                        op_sql[s->op], s->table);
    if (update && s->never) {
        sqlite3_str_appendall(t, " WHEN 0");
    } else if (update && s->n[L_WHEN] > 0) {
        /* fire only on a real change; BINARY so a NOCASE column's 'a' -> 'A' counts */
        sqlite3_str_appendall(t, " WHEN ");
        for (int i = 0; i < s->n[L_WHEN]; i++)
            sqlite3_str_appendf(t, "%sOLD.\"%w\" IS NOT NEW.\"%w\" COLLATE BINARY",
                                i ? " OR " : "", s->cols[L_WHEN][i], s->cols[L_WHEN][i]);
    }
    sqlite3_str_appendf(t, " BEGIN %s INSERT INTO " CHANGES_TABLE " (channel, payload) "
                           "VALUES (%Q, %s); END", comment, s->channel, payload);
    sqlite3_free(payload);
    if (sqlite3_str_errcode(t) != SQLITE_OK) {
        sqlite3_free(sqlite3_str_finish(t));
        return NULL;
    }
    return sqlite3_str_finish(t);
}

static void spec_of_watch(const sn_watch *w, spec *s)
{
    memset(s, 0, sizeof *s);
    s->table = w->table;
    s->op = w->op;
    s->channel = w->channel;
    s->cols[L_PK] = w->pk;
    s->n[L_PK] = w->npk;
    s->cols[L_X] = w->extra;
    s->n[L_X] = w->nextra;
    if (w->op == SN_UPDATE) {
        s->cols[L_WHEN] = w->trigger_cols;
        s->n[L_WHEN] = w->ntrigger;
        s->cols[L_OLD] = w->old_cols;
        s->n[L_OLD] = w->nold;
    }
}

/* sn_dialect.row_sql: the payload of a row aliased r, as the INSERT trigger makes it. The
 * change log has no shares: hash stays empty. */
int sqd_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen)
{
    (void)c, (void)hash;
    spec s;
    spec_of_watch(w, &s);
    s.op = SN_INSERT;
    char *sql = payload_sql(&s, "r", NULL);
    if (!sql) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    sn_sb_add(payload, sql);
    sqlite3_free(sql);
    return payload->fail ? -1 : 0;
}

/* ===== the catalog ===== */

/* Trigger `name`: 1 found (sql and tbl malloc'd), 0 not there, -1 and err. */
static int find_trigger(sqlite3 *db, const char *name, char **sql, char **tbl, char *err,
                        size_t errlen)
{
    sqlite3_stmt *st;
    *sql = *tbl = NULL;
    if (sqd_prepare(db, "SELECT coalesce(sql, ''), tbl_name FROM main.sqlite_master "
                        "WHERE type = 'trigger' AND name = ?1", &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        *sql = dup_col(st, 0);
        *tbl = dup_col(st, 1);
        found = *sql && *tbl ? 1 : -1;
        if (found < 0) {
            free(*sql);
            free(*tbl);
            *sql = *tbl = NULL;
            sn_seterr(err, errlen, "out of memory");
        }
    } else if (rc != SQLITE_DONE) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
        found = -1;
    }
    sqlite3_finalize(st);
    return found;
}

/* The table's column names (malloc'd array of malloc'd strings); *n = 0 when there is
 * no such table. 0, or -1 and err. */
static int table_columns(sqlite3 *db, const char *table, char ***names, int *n, char *err,
                         size_t errlen)
{
    sqlite3_stmt *st;
    *names = NULL;
    *n = 0;
    if (sqd_prepare(db, "SELECT name FROM pragma_table_xinfo(?1, 'main') WHERE hidden <> 1",
                    &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    int rc, cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **p = realloc(*names, (size_t)cap * sizeof *p);
            if (!p)
                break;
            *names = p;
        }
        if (!((*names)[*n] = dup_col(st, 0)))
            break;
        (*n)++;
    }
    if (rc != SQLITE_DONE)
        sn_seterr(err, errlen, "%s", rc == SQLITE_ROW ? "out of memory" : sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static int has_name(char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return 1;
    return 0;
}

/* "main"."t" as the Lua side writes a table name in its messages. */
static void quoted_table(char *out, size_t len, const char *table)
{
    size_t o = 0;
    o += (size_t)snprintf(out, len, "\"main\".\"");
    for (const char *p = table; *p && o + 3 < len; p++) {
        if (*p == '"' || *p == '\\')
            out[o++] = '\\';
        out[o++] = *p;
    }
    if (o + 2 <= len) {
        out[o++] = '"';
        out[o] = '\0';
    }
}

/* Is the channel already used by one of our triggers for another table or operation?
 * 1 with the message in err, 0 no, -1 and err. */
static int channel_taken(sqlite3 *db, const sn_watch *w, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqd_prepare(db, "SELECT tbl_name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                        "AND instr(sql, '" MARKER_PREFIX "') > 0", &st, err, errlen))
        return -1;
    int rc, taken = 0;
    while (!taken && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *tbl = (const char *)sqlite3_column_text(st, 0);
        desc d;
        if (parse_desc(db, (const char *)sqlite3_column_text(st, 1), &d))
            continue;
        int plain = d.channel ? sn_plain_len(d.channel) : -1;
        /* one declared channel, one watch: whatever capture each rides */
        if (plain == sn_plain_len(w->channel) && memcmp(d.channel, w->channel, (size_t)plain) == 0 &&
            (strcmp(tbl, w->table) != 0 || d.op != w->op)) {
            char name[512];
            quoted_table(name, sizeof name, tbl);
            sn_seterr(err, errlen, "channel \"%s\" is already used by the %s watch on %s; "
                      "give this watch its own channel_label", w->plain_channel,
                      d.op >= 0 ? op_names[d.op] : "unknown", name);
            taken = 1;
        }
        desc_free(&d);
    }
    if (!taken && rc != SQLITE_DONE) {
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
        taken = -1;
    }
    sqlite3_finalize(st);
    return taken;
}

static int drop_trigger(sqlite3 *db, const char *name, char *err, size_t errlen)
{
    char *sql = sqlite3_mprintf("DROP TRIGGER IF EXISTS main.\"%w\"", name);
    if (!sql) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    int bad = sqd_exec(db, sql, err, errlen);
    sqlite3_free(sql);
    return bad;
}

/* ===== dialect: catalog ===== */

static int add_row(sn_result *r, const char *kind, const char *a, const char *b, const char *n, const char *cls)
{
    sn_value *row = sn_result_row(r);
    if (!row)
        return -1;
    const char *cells[5] = {kind, a, b, n, cls};
    for (int i = 0; i < 5; i++)
        if (cells[i] && sn_value_text(&row[i], cells[i], strlen(cells[i])))
            return -1;
    return 0;
}

/* A column's class (src/dialect.h) from its declared type, by SQLite's affinity rules in
 * their order ("FLOATING POINT" is an integer column). Without STRICT the class says what the
 * column turns a value into where it can, not what it holds (the table is "loose"). */
static const char *affinity_class(const char *type, int strict)
{
    if (type == NULL || type[0] == '\0')
        return sn_class_name(SN_CLASS_OTHER); /* no affinity: values are kept as they come */
    if (strcasestr(type, "INT"))
        return sn_class_name(SN_CLASS_INTEGER);
    if (strcasestr(type, "CHAR") || strcasestr(type, "CLOB") || strcasestr(type, "TEXT"))
        return sn_class_name(SN_CLASS_TEXT);
    if (strcasestr(type, "BLOB"))
        return sn_class_name(SN_CLASS_BYTES);
    if (strcasestr(type, "REAL") || strcasestr(type, "FLOA") || strcasestr(type, "DOUB"))
        return sn_class_name(SN_CLASS_FLOAT);
    if (strict && strcasecmp(type, "ANY") == 0)
        return sn_class_name(SN_CLASS_OTHER);
    /* NUMERIC affinity (NUMERIC, DECIMAL(10,2), BOOLEAN, DATE): integers where the value is
     * one, else reals, so an integer column that also takes the rest, as every column does */
    return sn_class_name(SN_CLASS_INTEGER);
}

/* Whether the table is STRICT: its columns hold only their class. Before SQLite 3.37 there
 * is no STRICT, nor pragma_table_list. */
static int is_strict(sqlite3 *db, const char *table)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    int strict = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) != 0;
    sqlite3_finalize(st);
    return strict;
}

/* Run a catalog query bound to the table name; each row is (a, b, n) added as kind, with
 * the column's class for a column. 0, or -1 with err. */
static int describe_rows(sqlite3 *db, sn_result *r, const char *kind, const char *sql,
                         const char *table, int strict, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqd_prepare(db, sql, &st, err, errlen))
        return -1;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    int rc, column = strcmp(kind, "column") == 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *b = (const char *)sqlite3_column_text(st, 1);
        const char *cls = column ? affinity_class(b, strict)
                                 : sqlite3_column_count(st) > 3 ? (const char *)sqlite3_column_text(st, 3) : NULL;
        if (add_row(r, kind, (const char *)sqlite3_column_text(st, 0), b, (const char *)sqlite3_column_text(st, 2),
                    cls)) {
            sqlite3_finalize(st);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    }
    if (rc != SQLITE_DONE)
        sn_seterr(err, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int sqd_describe(sn_conn *c, const char *schema, const char *table, sn_result **out,
                 char *err, size_t errlen)
{
    static const char *const names[5] = {"kind", "a", "b", "n", "class"};
    /* Tables and views (a view is reported so the caller can say it cannot be watched);
     * not virtual tables, SQLite's own tables or ours. */
    static const char table_sql[] =
        "SELECT 'main', name, CASE type WHEN 'view' THEN 'view' END FROM main.sqlite_master "
        "WHERE type IN ('table', 'view') AND name = ?1 "
        "AND name NOT IN ('" CHANGES_TABLE "', '" READERS_TABLE "', '" CONSUMERS_TABLE "') "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND sql NOT LIKE 'CREATE VIRTUAL TABLE%'";
    /* table_xinfo rather than table_info: generated columns are readable in triggers */
    static const char column_sql[] =
        "SELECT name, type, cid + 1 FROM pragma_table_xinfo(?1, 'main') "
        "WHERE hidden <> 1 ORDER BY cid";
    static const char pk_sql[] =
        "SELECT name, NULL, pk FROM pragma_table_xinfo(?1, 'main') WHERE pk > 0 ORDER BY pk";
    /* Unique indexes and constraints over the whole table whose columns are all plain
     * columns: a partial or expression index says nothing about a row's identity. A column
     * that can hold NULL is marked "nullable" (such a key does not tell those rows apart). */
    static const char unique_sql[] =
        "SELECT ii.name, il.name, ii.seqno + 1, "
        "(SELECT 'nullable' FROM pragma_table_xinfo(?1, 'main') AS x WHERE x.name = ii.name AND x.\"notnull\" = 0) "
        "FROM pragma_index_list(?1, 'main') AS il, pragma_index_info(il.name, 'main') AS ii "
        "WHERE il.\"unique\" = 1 AND il.partial = 0 AND NOT EXISTS ("
        "  SELECT 1 FROM pragma_index_info(il.name, 'main') AS x WHERE x.name IS NULL) "
        "ORDER BY il.seq, ii.seqno";

    *out = NULL;
    sn_result *r = sn_result_new(5);
    if (!r) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < 5; i++)
        if (sn_result_name(r, i, names[i])) {
            sn_result_free(r);
            sn_seterr(err, errlen, "out of memory");
            return -1;
        }
    if (schema && strcmp(schema, "main") != 0) {
        *out = r;   /* attached databases are not watched: no such table */
        return 0;
    }
    if (describe_rows(c->db, r, "table", table_sql, table, 0, err, errlen))
        goto fail;
    if (r->nrows == 0) {
        *out = r;
        return 0;
    }
    int strict = is_strict(c->db, table);
    if (!strict && sn_value_text(&r->cells[4], "loose", 5)) {
        sn_seterr(err, errlen, "out of memory");
        goto fail;
    }
    if (describe_rows(c->db, r, "column", column_sql, table, strict, err, errlen) ||
        describe_rows(c->db, r, "pk", pk_sql, table, 0, err, errlen) ||
        describe_rows(c->db, r, "unique", unique_sql, table, 0, err, errlen))
        goto fail;
    *out = r;
    return 0;

fail:
    sn_result_free(r);
    return -1;
}

/* ===== durable triggers kept, to be made again at once ===== */

/* SQLite drops a table's triggers with it and has no hook on DDL, so a durable trigger whose
 * table was dropped and made again (or a copy renamed into its place) would capture nothing
 * until the notifier's next check (verify_interval). Each connection keeps the CREATE TRIGGER
 * of the durable triggers it installed, and its reader makes one again as soon as it sees the
 * schema change (sqd_remake_triggers). The kept text is also where the trigger's description
 * is read back from once the trigger itself is gone. */
struct made {
    char *name, *table, *channel, *ddl;
    double seen;                 /* ev_now() when last known whole */
    int whole;                   /* found on its table at the last look (or just installed) */
    int refused;                 /* could not be made again as it was: said once */
};

static struct made *made_find(sn_conn *c, const char *name)
{
    for (int i = 0; i < c->nmade; i++)
        if (strcmp(c->made[i].name, name) == 0)
            return &c->made[i];
    return NULL;
}

static void made_clear(struct made *m)
{
    free(m->name);
    free(m->table);
    free(m->channel);
    free(m->ddl);
}

/* Keep (or renew) the statement that made a durable watch's trigger `name`. Out of memory it
 * is not kept: the check repairs the trigger, as it does without this. */
static void made_keep(sn_conn *c, const sn_watch *w, const char *name, const char *ddl)
{
    if (!c->consumer || !sn_watch_durable(w))
        return;
    struct made m = {sqd_strdup(name), sqd_strdup(w->table), sqd_strdup(w->channel), sqd_strdup(ddl),
                     ev_now(c->loop), 1, 0};
    struct made *slot = made_find(c, name);
    if (slot) {
        made_clear(slot);
        *slot = c->made[--c->nmade];   /* an old text must not outlive its trigger */
    }
    if (m.name && m.table && m.channel && m.ddl && c->nmade == c->capmade) {
        int cap = c->capmade ? c->capmade * 2 : 8;
        struct made *p = realloc(c->made, (size_t)cap * sizeof *p);
        if (p) {
            c->made = p;
            c->capmade = cap;
        }
    }
    if (!m.name || !m.table || !m.channel || !m.ddl || c->nmade == c->capmade) {
        made_clear(&m);
        return;
    }
    c->made[c->nmade++] = m;
}

/* Forget the kept triggers named `name`, or else on `table`, or else of `channel`; all when
 * the three are NULL. Their watch or capture was dropped: nothing makes them again. */
static void made_forget(sn_conn *c, const char *name, const char *table, const char *channel)
{
    int k = 0;
    for (int i = 0; i < c->nmade; i++) {
        struct made *m = &c->made[i];
        int match = name ? strcmp(m->name, name) == 0 : table ? strcmp(m->table, table) == 0
                  : channel ? strcmp(m->channel, channel) == 0 : 1;
        if (match)
            made_clear(m);
        else
            c->made[k++] = *m;
    }
    c->nmade = k;
}

void sqd_made_free(sn_conn *c)
{
    made_forget(c, NULL, NULL, NULL);
    free(c->made);
    c->made = NULL;
    c->capmade = 0;
}

/* ===== dialect: triggers ===== */

/* Whether column i of list l already appeared earlier in d's lists. */
static int named_before(const spec *d, int l, int i)
{
    for (int m = 0; m <= l; m++)
        for (int j = 0; j < (m == l ? i : d->n[m]); j++)
            if (strcmp(d->cols[m][j], d->cols[l][i]) == 0)
                return 1;
    return 0;
}

/* The trigger of watch decl for its table as it is now: decl's lists minus the columns the
 * table no longer has (their names into *gone, "\"a\", \"b\"", or NULL; *never when that
 * leaves an UPDATE watch no trigger column), and for extra_columns = "*" (all) every column
 * but the key ones as the extra columns. NULL and why: no such table, out of memory. */
static char *build_now(sqlite3 *db, const char *name, const spec *decl, int all, const char *comment,
                       char **gone, int *never, char *why, size_t whylen)
{
    char **have;
    int nhave;
    const char **keep[NLISTS] = {0};
    spec s;
    char *ddl = NULL;

    *gone = NULL;
    *never = 0;
    if (table_columns(db, decl->table, &have, &nhave, why, whylen))
        return NULL;
    if (nhave == 0) {
        sn_seterr(why, whylen, "no such table");
        return NULL;
    }
    memset(&s, 0, sizeof s);
    s.table = decl->table;
    s.op = decl->op;
    s.channel = decl->channel;
    sqlite3_str *g = sqlite3_str_new(NULL);
    int ngone = 0, oom = 0;
    for (int l = 0; l < NLISTS; l++) {
        int cap = l == L_X && all ? nhave : decl->n[l];
        keep[l] = malloc(((size_t)cap + 1) * sizeof *keep[l]);
        oom |= !keep[l];
        for (int i = 0; keep[l] && i < decl->n[l]; i++) {
            if (has_name(have, nhave, decl->cols[l][i]))
                keep[l][s.n[l]++] = decl->cols[l][i];
            else if (!named_before(decl, l, i))
                sqlite3_str_appendf(g, "%s\"%s\"", ngone++ ? ", " : "", decl->cols[l][i]);
        }
        s.cols[l] = keep[l];
    }
    for (int i = 0; all && !oom && i < nhave; i++) {
        int key = 0;
        for (int k = 0; k < s.n[L_PK] && !key; k++)
            key = strcmp(keep[L_PK][k], have[i]) == 0;
        if (!key)
            keep[L_X][s.n[L_X]++] = have[i];
    }
    s.never = *never = decl->op == SN_UPDATE && decl->n[L_WHEN] > 0 && s.n[L_WHEN] == 0;
    if (!oom)
        ddl = build_trigger(name, &s, comment);
    if (!ddl)
        sn_seterr(why, whylen, "out of memory");
    char *gtext = sqlite3_str_finish(g);
    *gone = ngone && gtext ? sqd_strdup(gtext) : NULL;
    sqlite3_free(gtext);
    for (int l = 0; l < NLISTS; l++)
        free(keep[l]);
    free_names(have, nhave);
    return ddl;
}

/* The table is there, with the watch's key: a trigger naming a missing column would make
 * every write to the table fail (build_now leaves out the others gone). 0, or -1 and err. */
static int key_exists(sqlite3 *db, const sn_watch *w, char *err, size_t errlen)
{
    char **names;
    int n;
    if (table_columns(db, w->table, &names, &n, err, errlen))
        return -1;
    int bad = 0;
    if (n == 0) {
        sn_seterr(err, errlen, "no such table");
        bad = 1;
    }
    for (int i = 0; i < w->npk && !bad; i++)
        if (!has_name(names, n, w->pk[i])) {
            sn_seterr(err, errlen, "no such column: \"%s\"", w->pk[i]);
            bad = 1;
        }
    free_names(names, n);
    return bad ? -1 : 0;
}

/* Whether the file has a durable consumer (a change-log reader with a position to keep). */
static int has_consumers(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int any = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM main." CONSUMERS_TABLE " LIMIT 1", -1, &st, NULL) == SQLITE_OK)
        any = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return any;
}

/* Drop the trigger an older release named for this watch, when it is ours, on this table and
 * operation, and may go (the previous release's one trigger per table, operation and label
 * served live watches and consumers alike: a live watch leaves it while a consumer may still
 * read what it writes; the consumer's own install takes it). 1 dropped, 0 not, -1 and why. */
static int drop_older(sn_conn *c, const sn_watch *w, const char *name, int may, char *why, size_t whylen)
{
    char *osql, *otbl;
    int found = find_trigger(c->db, name, &osql, &otbl, why, whylen);
    if (found <= 0)
        return found;
    int ours = strstr(osql, MARKER_PREFIX) && strcmp(otbl, w->table) == 0 && op_of_sql(osql) == w->op;
    free(osql);
    free(otbl);
    if (!ours || !may)
        return 0;
    return drop_trigger(c->db, name, why, whylen) ? -1 : 1;
}

/* The last call on db failed for a lock another connection holds. */
static int is_busy(sqlite3 *db)
{
    int e = sqlite3_errcode(db);
    return e == SQLITE_BUSY || e == SQLITE_LOCKED;
}

int sqd_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen)
{
    char name[64], oldname[28], mark[128], why[512];
    char *sql = NULL, *tbl = NULL, *comment = NULL, *ddl = NULL;
    int found, nested = 0, result, replaced_v1 = 0, busy = 0;

    if (w->op < SN_INSERT || w->op > SN_DELETE) {
        sn_seterr(err, errlen, "unknown operation %d", w->op);
        return SN_INSTALL_ERROR;
    }
    if (!marker_ok(w->marker)) {
        sn_seterr(err, errlen, "invalid trigger marker");
        return SN_INSTALL_ERROR;
    }
    /* A member whose tables grow says so before its trigger captures a row: the holder must
     * not pass those rows for a consumer that does not watch them (consumers.c, members) */
    if (c->consumer && sn_watch_durable(w) && sqd_members_add(c, w->channel, err, errlen) != 0)
        return SN_INSTALL_ERROR;
    snprintf(mark, sizeof mark, MARKER_PREFIX "%d:%s ", SQL_VERSION, w->marker);
    sn_trigger_name(w, name);
    v1_name(w->plain_channel, oldname);

    /* The common case, nothing changed, takes no write lock. */
    found = find_trigger(c->db, name, &sql, &tbl, why, sizeof why);
    if (found < 0)
        goto fail;
    if (found && !strstr(sql, MARKER_PREFIX)) {
        snprintf(why, sizeof why, "a trigger named \"%s\" that sqlnotify did not make is in "
                 "the way", name);
        goto fail;
    }
    if (found && strstr(sql, mark) && strcmp(tbl, w->table) == 0) {
        result = SN_INSTALL_UNCHANGED;
        goto done;
    }
    if (found && !replace_changed) {
        result = SN_INSTALL_KEPT;
        goto done;
    }
    free(sql);
    free(tbl);
    sql = tbl = NULL;

    spec s;
    char *gone;
    int never;
    spec_of_watch(w, &s);
    snprintf(why, sizeof why, "out of memory");
    comment = make_comment(w);
    ddl = comment ? build_now(c->db, name, &s, w->extra_all, comment, &gone, &never, why, sizeof why) : NULL;
    if (!ddl)
        goto fail;
    free(gone); /* left out: the runtime says which */
    /* Writers do not queue behind a waiting SQLite writer, but the loop waits with it: briefly. */
    sqlite3_busy_timeout(c->db, (int)(SN_LOCK_TIMEOUT * 1000));
    if (sqd_txn_begin(c->db, &nested, why, sizeof why)) {
        busy = is_busy(c->db);
        goto fail;
    }
    /* Look again under the write lock: another process may have installed it since. */
    found = find_trigger(c->db, name, &sql, &tbl, why, sizeof why);
    if (found < 0)
        goto fail_txn;
    if (found && strstr(sql, mark) && strcmp(tbl, w->table) == 0) {
        result = SN_INSTALL_UNCHANGED;
    } else if (found && !replace_changed) {
        result = SN_INSTALL_KEPT;
    } else {
        int taken = channel_taken(c->db, w, why, sizeof why);
        if (taken > 0) {
            sqd_txn_rollback(c->db, nested);
            sn_seterr(err, errlen, "%s", why);
            result = SN_INSTALL_ERROR;
            goto done;
        }
        if (taken < 0 || key_exists(c->db, w, why, sizeof why))
            goto fail_txn;
        /* An older sqlnotify's trigger of this watch goes: never two of one watch. */
        int older = drop_older(c, w, oldname, 1, why, sizeof why);
        if (older >= 0) {
            replaced_v1 = older;
            char legacy[64];
            sn_trigger_name_of(w, 1, legacy);
            older = drop_older(c, w, legacy, sn_watch_durable(w) || !has_consumers(c->db), why, sizeof why);
        }
        if (older < 0)
            goto fail_txn;
        replaced_v1 |= older;
        if (found && drop_trigger(c->db, name, why, sizeof why))
            goto fail_txn;
        if (sqd_exec(c->db, ddl, why, sizeof why))
            goto fail_txn;
        result = found || replaced_v1                                     ? SN_INSTALL_REPLACED
                 : c->consumer && sqd_consumer_read_before(c, w->channel) ? SN_INSTALL_RESTORED
                                                                         : SN_INSTALL_CREATED;
    }
    if (sqd_txn_commit(c->db, nested, why, sizeof why))
        goto fail_txn;
    sqd_kick(c, 0);
done:
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    /* the text that makes it, as the catalog keeps it (found) or as just made */
    if (result == SN_INSTALL_UNCHANGED)
        made_keep(c, w, name, sql);
    else if (result == SN_INSTALL_CREATED || result == SN_INSTALL_REPLACED || result == SN_INSTALL_RESTORED)
        made_keep(c, w, name, ddl);
    free(sql);
    free(tbl);
    sqlite3_free(comment);
    sqlite3_free(ddl);
    return result;

fail_txn:
    busy = is_busy(c->db);
    sqd_txn_rollback(c->db, nested);
fail:
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    if (busy) {
        char who[256] = "";
        sqd_lock_holders(c, who, sizeof who);
        sn_seterr(err, errlen, "the write lock on %s was not had within %g s; %s%s", c->target, SN_LOCK_TIMEOUT,
                  *who ? "held by " : "another connection holds a write transaction", who);
        result = SN_INSTALL_BUSY;
    } else {
        sn_seterr(err, errlen, "cannot install the %s trigger on table \"%s\" in %s: %s",
                  op_names[w->op], w->table, c->target, why);
        result = SN_INSTALL_ERROR;
    }
    free(sql);
    free(tbl);
    sqlite3_free(comment);
    sqlite3_free(ddl);
    return result;
}

int sqd_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char names[2][64], why[512];
    int nested;

    if (w->op < SN_INSERT || w->op > SN_DELETE) {
        sn_seterr(err, errlen, "unknown operation %d", w->op);
        return -1;
    }
    sn_trigger_name(w, names[0]);
    v1_name(w->plain_channel, names[1]);
    if (sqd_txn_begin(c->db, &nested, why, sizeof why))
        goto fail;
    for (int i = 0; i < 2; i++) {
        char *sql, *tbl;
        int found = find_trigger(c->db, names[i], &sql, &tbl, why, sizeof why);
        if (found < 0)
            goto fail_txn;
        /* only ever drop a trigger that carries our marker, on this table */
        int ours = found && strstr(sql, MARKER_PREFIX) && strcmp(tbl, w->table) == 0 &&
                   op_of_sql(sql) == w->op;
        free(sql);
        free(tbl);
        if (ours && drop_trigger(c->db, names[i], why, sizeof why))
            goto fail_txn;
    }
    if (sqd_txn_commit(c->db, nested, why, sizeof why))
        goto fail_txn;
    made_forget(c, names[0], NULL, NULL);
    return 0;

fail_txn:
    sqd_txn_rollback(c->db, nested);
fail:
    sn_seterr(err, errlen, "cannot drop the %s trigger on table \"%s\" in %s: %s",
              op_names[w->op], w->table, c->target, why);
    return -1;
}

/* Our triggers on one table, or all of them (table NULL), or those of one channel only
 * (the channel their description records): how many were dropped, or -1 and why. */
static int drop_where(sn_conn *c, const char *table, const char *channel, char *why, size_t whylen)
{
    sqlite3_stmt *st = NULL;
    int nested = 0, count = 0, rc;

    if (sqd_txn_begin(c->db, &nested, why, whylen))
        return -1;
    if (sqd_prepare(c->db, "SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                           "AND instr(sql, '" MARKER_PREFIX "') > 0 "
                           "AND (?1 IS NULL OR tbl_name = ?1)", &st, why, whylen))
        goto fail_txn;
    if (table)
        sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    /* Dropping while stepping over sqlite_master is not allowed: collect, then drop. */
    sqlite3_str *drops = sqlite3_str_new(NULL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (channel) {
            desc d;
            int same = parse_desc(c->db, (const char *)sqlite3_column_text(st, 1), &d) == 0 && d.channel &&
                       strcmp(d.channel, channel) == 0;
            desc_free(&d);
            if (!same)
                continue;
        }
        sqlite3_str_appendf(drops, "DROP TRIGGER IF EXISTS main.\"%w\";",
                            (const char *)sqlite3_column_text(st, 0));
        count++;
    }
    if (rc != SQLITE_DONE)
        snprintf(why, whylen, "%s", sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    int oom = sqlite3_str_errcode(drops) != SQLITE_OK;
    char *sql = sqlite3_str_finish(drops);
    if (rc != SQLITE_DONE || oom) {
        if (oom)
            snprintf(why, whylen, "out of memory");
        sqlite3_free(sql);
        goto fail_txn;
    }
    rc = sql ? sqd_exec(c->db, sql, why, whylen) : 0;
    sqlite3_free(sql);
    if (rc || sqd_txn_commit(c->db, nested, why, whylen))
        goto fail_txn;
    made_forget(c, NULL, table, channel);
    return count;

fail_txn:
    sqd_txn_rollback(c->db, nested);
    return -1;
}

int sqd_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    char why[512];
    int n = drop_where(c, NULL, channel, why, sizeof why);
    if (n < 0)
        sn_seterr(err, errlen, "cannot drop the triggers of channel %s in %s: %s", channel, c->target, why);
    return n;
}

int sqd_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen)
{
    char why[512];
    if (schema && strcmp(schema, "main") != 0)
        return 0;   /* attached databases hold none of ours */
    int count = drop_where(c, table, NULL, why, sizeof why);
    if (count >= 0)
        return count;
    if (table)
        sn_seterr(err, errlen, "cannot drop the sqlnotify triggers on table \"%s\" in %s: %s",
                  table, c->target, why);
    else
        sn_seterr(err, errlen, "cannot drop the sqlnotify triggers in %s: %s", c->target, why);
    return -1;
}

/* "id | x: email, name | when: plan | old: plan" */
static char *summary(const desc *d)
{
    static const char *const labels[NLISTS] = {"", " | x: ", " | when: ", " | old: "};
    sqlite3_str *s = sqlite3_str_new(NULL);
    if (d->version != SQL_VERSION)
        sqlite3_str_appendall(s, "(made by an older sqlnotify)");
    else if (d->n[L_PK] == 0)
        sqlite3_str_appendall(s, "(no key)");
    for (int l = 0; d->version == SQL_VERSION && l < NLISTS; l++) {
        if (l == L_X && d->all)
            sqlite3_str_appendall(s, " | x: *");
        if (d->n[l] == 0)
            continue;
        sqlite3_str_appendall(s, labels[l]);
        for (int i = 0; i < d->n[l]; i++)
            sqlite3_str_appendf(s, "%s%s", i ? ", " : "", d->cols[l][i]);
    }
    if (sqlite3_str_errcode(s) != SQLITE_OK) {
        sqlite3_free(sqlite3_str_finish(s));
        return NULL;
    }
    return sqlite3_str_finish(s);
}

int sqd_list(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    static const char *const names[8] = {"schema", "table", "operation", "channel", "trigger",
                                         "function", "columns", "installed"};
    sqlite3_stmt *st = NULL;
    char why[512] = "out of memory";
    int rc = SQLITE_NOMEM;

    *out = NULL;
    sn_result *r = sn_result_new(8);
    if (!r)
        goto fail;
    for (int i = 0; i < 8; i++)
        if (sn_result_name(r, i, names[i]))
            goto fail;
    if (sqd_prepare(c->db, "SELECT name, tbl_name, sql FROM main.sqlite_master "
                           "WHERE type = 'trigger' AND instr(sql, '" MARKER_PREFIX "') > 0 "
                           "ORDER BY tbl_name, name", &st, why, sizeof why))
        goto fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        desc d;
        if (parse_desc(c->db, (const char *)sqlite3_column_text(st, 2), &d))
            continue;
        char *sum = summary(&d);
        const char *cells[8] = {"main", (const char *)sqlite3_column_text(st, 1),
                                d.op >= 0 ? op_names[d.op] : NULL, d.channel,
                                (const char *)sqlite3_column_text(st, 0), NULL, sum, d.at};
        sn_value *row = sn_result_row(r);
        int bad = !sum || !row;
        for (int i = 0; i < 8 && !bad; i++)
            if (cells[i] && sn_value_text(&row[i], cells[i], strlen(cells[i])))
                bad = 1;
        sqlite3_free(sum);
        desc_free(&d);
        if (bad) {
            rc = SQLITE_NOMEM;
            snprintf(why, sizeof why, "out of memory");
            break;
        }
    }
    if (rc != SQLITE_DONE && rc != SQLITE_NOMEM)
        snprintf(why, sizeof why, "%s", sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        goto fail;
    *out = r;
    return 0;

fail:
    sn_result_free(r);
    sn_seterr(err, errlen, "cannot list the sqlnotify triggers in %s: %s", c->target, why);
    return -1;
}

int sqd_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[64], mark[128], why[512];
    char *sql, *tbl;

    if (w->op < SN_INSERT || w->op > SN_DELETE || !marker_ok(w->marker)) {
        sn_seterr(err, errlen, "invalid watch");
        return -1;
    }
    snprintf(mark, sizeof mark, MARKER_PREFIX "%d:%s ", SQL_VERSION, w->marker);
    sn_trigger_name(w, name);
    int found = find_trigger(c->db, name, &sql, &tbl, why, sizeof why);
    if (found < 0) {
        sn_seterr(err, errlen, "cannot look for the %s trigger on table \"%s\" in %s: %s",
                  op_names[w->op], w->table, c->target, why);
        return -1;
    }
    int ok = found && strstr(sql, mark) && strcmp(tbl, w->table) == 0;
    free(sql);
    free(tbl);
    return ok;
}

/* ===== repair after a schema change ===== */

struct fix {
    char *name, *tbl, *ddl, *gone;
    int never;
    desc d;
};

/* The trigger as it should be now, for the watch its description d says. */
static char *rebuild(sqlite3 *db, const char *name, const char *tbl, desc *d, char **gone,
                     int *never)
{
    char why[256];
    spec s;
    memset(&s, 0, sizeof s);
    s.table = tbl;
    s.op = d->op;
    s.channel = d->channel;
    for (int l = 0; l < NLISTS; l++) {
        s.cols[l] = (const char *const *)d->cols[l];
        s.n[l] = d->n[l];
    }
    return build_now(db, name, &s, d->all, d->comment, gone, never, why, sizeof why);
}

int sqd_repair_triggers(sn_conn *c)
{
    sqlite3_stmt *st;
    struct fix *fixes = NULL;
    int nfix = 0, cap = 0, rc, nested = 0;
    char why[512];

    if (sqlite3_prepare_v2(c->db, "SELECT name, tbl_name, sql FROM main.sqlite_master "
                                  "WHERE type = 'trigger' AND instr(sql, ?1) > 0",
                           -1, &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    char mark[32];
    snprintf(mark, sizeof mark, MARKER_PREFIX "%d:", SQL_VERSION);
    sqlite3_bind_text(st, 1, mark, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *tbl = (const char *)sqlite3_column_text(st, 1);
        const char *sql = (const char *)sqlite3_column_text(st, 2);
        struct fix f = {0};
        if (parse_desc(c->db, sql, &f.d))
            continue;
        char *ddl = rebuild(c->db, name, tbl, &f.d, &f.gone, &f.never);
        if (!ddl || strcmp(ddl, sql) == 0 || nfix == 64) {
            sqlite3_free(ddl);
            free(f.gone);
            desc_free(&f.d);
            continue;
        }
        f.name = sqd_strdup(name);
        f.tbl = sqd_strdup(tbl);
        f.ddl = sqd_strdup(ddl);
        sqlite3_free(ddl);
        if (nfix == cap) {
            cap = cap ? cap * 2 : 4;
            struct fix *p = realloc(fixes, (size_t)cap * sizeof *p);
            if (!p) {
                cap = nfix;
                free(f.name);
                free(f.tbl);
                free(f.ddl);
                free(f.gone);
                desc_free(&f.d);
                continue;
            }
            fixes = p;
        }
        fixes[nfix++] = f;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        goto out;
    if (nfix == 0) {
        rc = SQLITE_OK;
        goto out;
    }
    if (sqd_txn_begin(c->db, &nested, why, sizeof why)) {
        rc = sqlite3_errcode(c->db);
        goto out;
    }
    for (int i = 0; i < nfix; i++) {
        if (!fixes[i].name || !fixes[i].tbl || !fixes[i].ddl)
            continue;
        char *sql, *tbl;
        int found = find_trigger(c->db, fixes[i].name, &sql, &tbl, why, sizeof why);
        /* another process may have repaired (or dropped) it meanwhile */
        int todo = found > 0 && strcmp(sql, fixes[i].ddl) != 0;
        free(sql);
        free(tbl);
        if (found < 0 || (todo && (drop_trigger(c->db, fixes[i].name, why, sizeof why) ||
                                   sqd_exec(c->db, fixes[i].ddl, why, sizeof why)))) {
            rc = sqlite3_errcode(c->db);
            sqd_txn_rollback(c->db, nested);
            goto out;
        }
        if (!todo) {
            free(fixes[i].gone);
            fixes[i].gone = NULL;
            fixes[i].never = -1;   /* not ours to report */
        }
    }
    if (sqd_txn_commit(c->db, nested, why, sizeof why)) {
        rc = sqlite3_errcode(c->db);
        sqd_txn_rollback(c->db, nested);
        goto out;
    }
    rc = SQLITE_OK;
    for (int i = 0; i < nfix; i++) {
        const desc *d = &fixes[i].d;
        if (fixes[i].never < 0)
            continue;
        if (fixes[i].gone) /* the watcher's own runtime says it at error level, naming the column */
            sn_logf(&c->sink, SN_LOG_INFO, "the %s trigger on table \"%s\" (channel %.*s) was "
                    "regenerated after a schema change without column(s) %s, which the table no "
                    "longer has%s", op_names[d->op], fixes[i].tbl, sn_plain_len(d->channel), d->channel, fixes[i].gone,
                    fixes[i].never ? "; with no trigger column left, it fires no more" : "");
        else
            sn_logf(&c->sink, SN_LOG_INFO, "the %s trigger on table \"%s\" (channel %.*s) was "
                    "regenerated after a schema change", op_names[d->op], d->table, sn_plain_len(d->channel),
                    d->channel);
    }
out:
    if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        sn_logf(&c->sink, SN_LOG_WARN, "cannot repair the sqlnotify triggers of %s after a "
                "schema change: %s", c->target, sqlite3_errmsg(c->db));
        rc = SQLITE_OK;   /* not retried before the next schema change */
    }
    for (int i = 0; i < nfix; i++) {
        free(fixes[i].name);
        free(fixes[i].tbl);
        free(fixes[i].ddl);
        free(fixes[i].gone);
        desc_free(&fixes[i].d);
    }
    free(fixes);
    return rc;
}

/* ===== a durable trigger gone with its table, made again ===== */

/* Whether the reader reads the channel: a watch a reload took away keeps its trigger, but
 * nothing reads it to need it made again. */
static int reads_channel(const sn_conn *c, const char *channel)
{
    for (int i = 0; i < c->nchans; i++)
        if (strcmp(c->chans[i].name, channel) == 0)
            return 1;
    return 0;
}

static void utc(double t, char out[32])
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Make m's trigger again on its table, as it was made: rebuild() from its description for the
 * table as it is now, which is the kept text itself while the table has every column the trigger
 * names (and follows the table for extra_columns = "*"). A column missing would make every write
 * to the table fail: then it is not made, said once, and left to the check, which adapts the
 * watch to the table (a column gone is left out, a key gone sends nothing). Under the write lock
 * it looks again, as install does, so that two processes that saw the same change make it once.
 * SQLITE_OK (made, there already, or not to be made), or an SQLite result code to try again. */
static int remake(sn_conn *c, struct made *m)
{
    char why[512] = "out of memory", table[512], since[32];
    char *gone = NULL, *sql = NULL, *tbl = NULL;
    int never, nested = 0, rc = SQLITE_OK;
    desc d;

    quoted_table(table, sizeof table, m->table);
    utc(m->seen, since);
    if (parse_desc(c->db, m->ddl, &d))
        return SQLITE_OK;   /* our own text: cannot be; the check repairs */
    char *ddl = rebuild(c->db, m->name, m->table, &d, &gone, &never);
    const char *op = op_names[d.op >= 0 ? d.op : 0];
    desc_free(&d);
    if (!ddl)
        goto out;   /* the table went again meanwhile (or out of memory): as before, the check's */
    if (gone) {
        snprintf(why, sizeof why, "the table has no column%s %s now", strchr(gone, ',') ? "s" : "", gone);
        goto refused;
    }
    /* a writer of the new table may hold the lock: wait a little, as a position's save does */
    sqlite3_busy_timeout(c->db, SAVE_BUSY_MS);
    if (sqd_txn_begin(c->db, &nested, why, sizeof why)) {
        rc = sqlite3_errcode(c->db);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
            goto out;
        rc = SQLITE_OK;   /* not retried before the next schema change: said once */
        goto refused;
    }
    int found = find_trigger(c->db, m->name, &sql, &tbl, why, sizeof why);
    int there = found > 0 && strcmp(tbl, m->table) == 0;   /* another process made it since */
    if (found > 0 && !there && !strstr(sql, MARKER_PREFIX)) {
        sqd_txn_rollback(c->db, nested);
        snprintf(why, sizeof why, "a trigger named \"%s\" that sqlnotify did not make is in the way", m->name);
        goto refused;
    }
    /* found on another table: a rename took it along (the swap's old table); it goes with it */
    if (found < 0 || (!there && ((found > 0 && drop_trigger(c->db, m->name, why, sizeof why)) ||
                                 sqd_exec(c->db, ddl, why, sizeof why))) ||
        sqd_txn_commit(c->db, nested, why, sizeof why)) {
        rc = sqlite3_errcode(c->db);
        sqd_txn_rollback(c->db, nested);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
            goto out;
        rc = SQLITE_OK;
        goto refused;
    }
    if (!there)
        sn_logf(&c->sink, SN_LOG_ERROR, "consumer \"%s\": the trigger for %s on %s was gone (its table dropped and "
                "made again, or the trigger dropped): made it again; changes written to the table between %s and "
                "now were not captured", c->consumer, op, table, since);
    char *kept = sqd_strdup(ddl);
    if (kept) {
        free(m->ddl);
        m->ddl = kept;
    }
    m->seen = ev_now(c->loop);
    m->whole = 1;
    m->refused = 0;
    goto out;

refused:
    if (!m->refused)
        sn_logf(&c->sink, SN_LOG_ERROR, "consumer \"%s\": the trigger for %s on %s was gone (its table dropped and "
                "made again, or the trigger dropped) and cannot be made again as it was: %s; changes written to the "
                "table since %s are not captured until the next check (verify_interval) adapts the watch to the "
                "table", c->consumer, op, table, why, since);
    m->refused = 1;
out:
    sqlite3_busy_timeout(c->db, 0);
    free(sql);
    free(tbl);
    free(gone);
    sqlite3_free(ddl);
    return rc;
}

int sqd_remake_triggers(sn_conn *c)
{
    sqlite3_stmt *st;
    int rc = SQLITE_OK;

    if (!c->rd || !c->consumer || c->nmade == 0)
        return SQLITE_OK;   /* made again only while a consumer reads what it captures */
    /* the cheap look, by name: a schema change of anything else costs only this */
    if (sqlite3_prepare_v2(c->db, "SELECT (SELECT tbl_name FROM main.sqlite_master WHERE type = 'trigger' "
                                  "AND name = ?1), EXISTS (SELECT 1 FROM main.sqlite_master "
                                  "WHERE type = 'table' AND name = ?2)",
                           -1, &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(c->db);
    for (int i = 0; i < c->nmade && rc == SQLITE_OK; i++) {
        struct made *m = &c->made[i];
        sqlite3_bind_text(st, 1, m->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, m->table, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW) {
            rc = sqlite3_errcode(c->db);
            break;
        }
        const char *on = (const char *)sqlite3_column_text(st, 0);
        int whole = on && strcmp(on, m->table) == 0, table = sqlite3_column_int(st, 1);
        sqlite3_reset(st);
        if (whole) {
            m->seen = ev_now(c->loop);
            m->whole = 1;
            m->refused = 0;
            continue;
        }
        /* Whole at the last look, and while the schema was found unchanged after it: the
         * last moment it is known to have captured. */
        if (m->whole && c->schema_same_at > m->seen)
            m->seen = c->schema_same_at;
        m->whole = 0;
        /* no table (dropped, not made again): the check says so, as before */
        if (table && reads_channel(c, m->channel))
            rc = remake(c, m);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        sn_logf(&c->sink, SN_LOG_WARN, "cannot look for the durable triggers of %s after a schema change: %s",
                c->target, sqlite3_errstr(rc));
        rc = SQLITE_OK;   /* as the repair: not retried before the next schema change */
    }
    return rc;
}
