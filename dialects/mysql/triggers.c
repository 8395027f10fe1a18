/*
 * triggers.c — one AFTER ... FOR EACH ROW trigger per watch, appending the payload of the
 * wire format (src/dialect.h) to the journal: the generator, install, uninstall, drop,
 * list and verify.
 *
 * Names come from the tuple (schema, table, operation, label), each part hashed with its
 * length: `sqlnotify_<table prefix>_<op>_<12 hex>`, at most 63 bytes (MySQL allows 64
 * characters; trigger names are per schema). The body's first line is our marker:
 *
 *   / * sqlnotify:1 marker=<watch marker>.<hash of the rest of the body> journal=<hex db>
 *       channel=<hex> installed=<ISO 8601 UTC> columns=<hex of "id | x: ... | when: ..."> * /
 *
 * A trigger is ours, unchanged, when the marker is this watch's and the rest of the body
 * hashes as recorded (an edited trigger does not). Values: integers and DOUBLE as the
 * server prints them (DOUBLE with up to 17 significant digits, which read back exactly);
 * FLOAT widened to DOUBLE first (the server prints a FLOAT with 6 digits); DECIMAL as a
 * JSON number with every digit; BIT as an integer; BINARY, VARBINARY, BLOB and spatial
 * values as "\x" + lower-case hex; JSON as JSON; the rest as MySQL's text (DATETIME as
 * "2024-01-02 03:04:05.000000").
 *
 * The trigger is made for the table as it is (watch_now): the extra and old columns of the
 * watch the table no longer has are left out, and extra_columns = "*" is every column but
 * the key ones; the runtime has it made again when the table changes.
 *
 * The body catches every error, so a user's write never fails because of us: when the one
 * JSON_OBJECT per part fails (a column renamed or dropped since install, a value the journal
 * refuses), a slow path reads each column on its own and sends what is left (a column gone
 * is absent, a trigger column gone counts as unchanged; a key that cannot be read sends
 * {"t": true}); a journal that is gone sends nothing. Lock waits, deadlocks and a killed
 * statement are raised again: they roll the user's statement back anyway. A row whose
 * payload would not fit max_allowed_packet (the reader could not fetch it) sends its key,
 * truncated.
 */
#include "my.h"

#include <ctype.h>
#include <strings.h>
#include <time.h>

#define MARK "/* sqlnotify:1 "

static const char *const op_names[] = {"insert", "update", "delete"};
static const char *const op_sql[] = {"INSERT", "UPDATE", "DELETE"};

/* ===== names ===== */

/* "schema"."table" as Lua's %q writes names, for messages that must match the runtime's. */
static void lua_quoted(sn_sbuf *b, const char *s)
{
    sn_sb_add(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            sn_sb_addf(b, "\\%c", *p);
        else if (*p == '\n')
            sn_sb_add(b, "\\\n");
        else if (*p == '\r')
            sn_sb_add(b, "\\r");
        else if (*p < 0x20 || *p == 0x7f)
            sn_sb_addf(b, isdigit(p[1]) ? "\\%03d" : "\\%d", *p);
        else
            sn_sb_addn(b, (const char *)p, 1);
    }
    sn_sb_add(b, "\"");
}

static void lua_table(sn_sbuf *b, const char *schema, const char *table)
{
    lua_quoted(b, schema);
    sn_sb_add(b, ".");
    lua_quoted(b, table);
}

/* ===== our triggers, as the catalog has them ===== */

typedef struct ours {
    char *schema, *name, *table, *op, *body, *created;
    char *marker;                 /* "<watch marker>.<body hash>" */
    char *journal, *channel, *installed, *columns; /* decoded */
    int intact;                   /* the rest of the body hashes as its marker says */
} ours;

typedef struct ours_list {
    ours *v;
    int n;
} ours_list;

static void ours_clear(ours *o)
{
    free(o->schema), free(o->name), free(o->table), free(o->op), free(o->body), free(o->created);
    free(o->marker), free(o->journal), free(o->channel), free(o->installed), free(o->columns);
    memset(o, 0, sizeof *o);
}

static void ours_free(ours_list *l)
{
    for (int i = 0; i < l->n; i++)
        ours_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static char *dup_text(const sn_result *r, int row, int col)
{
    const sn_value *v = &r->cells[(size_t)row * (size_t)r->ncols + (size_t)col];
    return v->type == SN_TEXT ? strdup(v->s) : NULL;
}

/* The value of key= in the marker line (up to the next space), decoded from hex when asked. */
static char *field(const char *line, const char *end, const char *key, int hex)
{
    size_t klen = strlen(key);
    for (const char *p = line; p && p < end; p = memchr(p, ' ', (size_t)(end - p)), p = p ? p + 1 : NULL) {
        if ((size_t)(end - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == '=') {
            const char *v = p + klen + 1;
            const char *ve = memchr(v, ' ', (size_t)(end - v));
            size_t n = (size_t)((ve ? ve : end) - v);
            if (!hex) {
                char *s = malloc(n + 1);
                if (s) {
                    memcpy(s, v, n);
                    s[n] = '\0';
                }
                return s;
            }
            sn_sbuf b = {0};
            if (my_unhex(v, n, &b) < 0) {
                sn_sb_free(&b);
                return NULL;
            }
            return b.p;
        }
    }
    return NULL;
}

static uint64_t body_hash(const char *rest) { return sn_hash64(rest, strlen(rest), 0); }

/* Parse the marker line; 0 when the body is not ours. */
static int parse_marker(ours *o)
{
    const char *m = o->body ? strstr(o->body, MARK) : NULL;
    if (m == NULL)
        return 0;
    const char *line = m + strlen(MARK);
    const char *end = strstr(line, "*/");
    if (end == NULL)
        return 0;
    o->marker = field(line, end, "marker", 0);
    o->journal = field(line, end, "journal", 1);
    o->channel = field(line, end, "channel", 1);
    o->installed = field(line, end, "installed", 0);
    o->columns = field(line, end, "columns", 1);
    if (o->marker == NULL || o->journal == NULL || o->channel == NULL)
        return 0;
    const char *rest = end + 2;
    if (*rest == '\n')
        rest++;
    const char *dot = strrchr(o->marker, '.');
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)body_hash(rest));
    o->intact = dot && strcmp(dot + 1, hex) == 0;
    return 1;
}

/* Our triggers writing to this database's journal; schema and table narrow it (NULL: any). */
static int find_ours(sn_conn *c, const char *schema, const char *table, ours_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sn_result *r = NULL;
    sn_sbuf sql = {0};
    const char *args[2];
    int n = 0;
    sn_sb_add(&sql, "SELECT TRIGGER_SCHEMA, TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_STATEMENT,"
                    " DATE_FORMAT(CREATED, '%Y-%m-%dT%H:%i:%s') FROM information_schema.TRIGGERS"
                    " WHERE ACTION_STATEMENT LIKE '%/* sqlnotify:1 %'");
    if (schema) {
        sn_sb_add(&sql, " AND TRIGGER_SCHEMA = ?");
        args[n++] = schema;
    }
    if (table) {
        sn_sb_add(&sql, " AND EVENT_OBJECT_TABLE = ?");
        args[n++] = table;
    }
    sn_sb_add(&sql, " ORDER BY TRIGGER_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME");
    if (sql.fail) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    int rc = my_query(c, sql.p, n, args, &r, err, errlen);
    sn_sb_free(&sql);
    if (rc < 0)
        return -1;
    out->v = calloc((size_t)r->nrows + 1, sizeof *out->v);
    if (out->v == NULL) {
        sn_result_free(r);
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < r->nrows; i++) {
        ours *o = &out->v[out->n];
        memset(o, 0, sizeof *o);
        o->schema = dup_text(r, i, 0);
        o->name = dup_text(r, i, 1);
        o->table = dup_text(r, i, 2);
        o->op = dup_text(r, i, 3);
        o->body = dup_text(r, i, 4);
        o->created = dup_text(r, i, 5);
        out->n++;
        /* information_schema compares names without case: keep exact matches only */
        int keep = o->schema && o->name && o->table && o->op && parse_marker(o) && strcmp(o->journal, c->p.db) == 0 &&
                   (!schema || strcmp(o->schema, schema) == 0) && (!table || strcmp(o->table, table) == 0);
        if (!keep) {
            ours_clear(o);
            out->n--;
        }
    }
    sn_result_free(r);
    return 0;
}

/* ===== the body ===== */

typedef struct colinfo {
    sn_result *r; /* rows: TABLE_NAME, COLUMN_NAME, DATA_TYPE */
    const char *table_type;
    sn_result *t;
} colinfo;

/* The table's column col (exact name), or NULL: its row of ci->r. */
static const sn_value *column_row(const colinfo *ci, const sn_watch *w, const char *col)
{
    for (int i = 0; ci->r && i < ci->r->nrows; i++) {
        const sn_value *row = &ci->r->cells[(size_t)i * 3];
        if (row[0].type == SN_TEXT && row[1].type == SN_TEXT && strcmp(row[0].s, w->table) == 0 &&
            strcmp(row[1].s, col) == 0)
            return row;
    }
    return NULL;
}

static const char *data_type(const colinfo *ci, const sn_watch *w, const char *col)
{
    const sn_value *row = column_row(ci, w, col);
    return row && row[2].type == SN_TEXT ? row[2].s : "";
}

static int in_list(const char *t, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(t, *list) == 0)
            return 1;
    return 0;
}

static const char *const bytes_types[] = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
                                          "geometry", "point", "linestring", "polygon", "multipoint",
                                          "multilinestring", "multipolygon", "geometrycollection", "geomcollection",
                                          NULL};

/* A column's value as the wire format wants it. */
static void value(sn_sbuf *b, const colinfo *ci, const sn_watch *w, const char *row, const char *col)
{
    const char *t = data_type(ci, w, col);
    if (in_list(t, bytes_types)) {
        sn_sb_add(b, "CONCAT('\\\\x', LOWER(HEX(");
        sn_sb_addf(b, "%s.", row);
        my_sb_ident(b, col);
        sn_sb_add(b, ")))");
        return;
    }
    int widen = strcmp(t, "float") == 0, bit = strcmp(t, "bit") == 0;
    if (widen || bit)
        sn_sb_add(b, "(");
    sn_sb_addf(b, "%s.", row);
    my_sb_ident(b, col);
    if (widen || bit)
        sn_sb_add(b, widen ? " + 0e0)" : " + 0)");
}

static void object(sn_sbuf *b, const colinfo *ci, const sn_watch *w, const char *row, const char *const *cols, int n)
{
    sn_sb_add(b, "JSON_OBJECT(");
    for (int i = 0; i < n; i++) {
        if (i)
            sn_sb_add(b, ", ");
        my_sb_lit(b, cols[i], strlen(cols[i]));
        sn_sb_add(b, ", ");
        value(b, ci, w, row, cols[i]);
    }
    sn_sb_add(b, ")");
}

/* OLD and NEW differ, NULL-safe, and byte for byte (a case-insensitive collation calls
 * 'a' and 'A' equal). */
static void changed(sn_sbuf *b, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++) {
        sn_sb_add(b, i ? " OR " : "");
        sn_sb_add(b, "NOT (OLD.");
        my_sb_ident(b, cols[i]);
        sn_sb_add(b, " <=> NEW.");
        my_sb_ident(b, cols[i]);
        sn_sb_add(b, ") OR NOT (CAST(OLD.");
        my_sb_ident(b, cols[i]);
        sn_sb_add(b, " AS BINARY) <=> CAST(NEW.");
        my_sb_ident(b, cols[i]);
        sn_sb_add(b, " AS BINARY))");
    }
}

static void key_parts(sn_sbuf *b, const colinfo *ci, const sn_watch *w)
{
    sn_sb_add(b, "'{\"id\":', ");
    object(b, ci, w, w->op == SN_DELETE ? "OLD" : "NEW", w->pk, w->npk);
    if (w->op == SN_UPDATE && w->npk > 0) { /* the old key, when the key changed */
        sn_sb_add(b, ", IF(");
        changed(b, w->pk, w->npk);
        sn_sb_add(b, ", CONCAT(',\"oid\":', ");
        object(b, ci, w, "OLD", w->pk, w->npk);
        sn_sb_add(b, "), '')");
    }
}

static void journal_insert(sn_sbuf *b, sn_conn *c, const sn_watch *w, const char *payload_sql)
{
    sn_sb_addf(b, "INSERT INTO %s (channel, payload) VALUES (", c->journal);
    my_sb_lit(b, w->channel, strlen(w->channel));
    sn_sb_addf(b, ", %s);\n", payload_sql);
}

/* Run stmt (which sets t) in a block of its own: t is NULL when it failed. (A SET that
 * fails leaves NULL in its variable, so each read goes through t.) */
static void guarded(sn_sbuf *b, const char *stmt)
{
    sn_sb_add(b, "SET t = NULL;\nBEGIN DECLARE CONTINUE HANDLER FOR SQLEXCEPTION SET t = NULL; ");
    sn_sb_add(b, stmt);
    sn_sb_add(b, " END;\n");
}

/* The slow path, taken only when the fast one failed (a column renamed or dropped since
 * install, a value the journal refused): every column read on its own, so what is left
 * still goes out. A key that cannot be read sends {"t":true}. */
static void fallback(sn_sbuf *b, sn_conn *c, const sn_watch *w, const colinfo *ci)
{
    const char *row = w->op == SN_DELETE ? "OLD" : "NEW";
    sn_sbuf s = {0};
    sn_sb_add(b, "BEGIN\n"
                 "DECLARE k LONGTEXT CHARACTER SET utf8mb4 DEFAULT NULL;\n"
                 "DECLARE x, o LONGTEXT CHARACTER SET utf8mb4 DEFAULT '{}';\n"
                 "DECLARE d LONGTEXT CHARACTER SET utf8mb4 DEFAULT '';\n"
                 "DECLARE t LONGTEXT CHARACTER SET utf8mb4;\n");
    int when = w->op == SN_UPDATE && w->ntrigger > 0;
    sn_sb_addf(b, "DECLARE f INT DEFAULT %d;\n", when ? 0 : 1);
    sn_sb_add(&s, "SET t = ");
    object(&s, ci, w, row, w->pk, w->npk);
    sn_sb_add(&s, ";");
    guarded(b, s.p ? s.p : "");
    sn_sb_add(b, "SET k = t;\n");
    if (w->op == SN_UPDATE && w->npk > 0) {
        s.len = 0;
        sn_sb_add(&s, "IF ");
        changed(&s, w->pk, w->npk);
        sn_sb_add(&s, " THEN SET t = CONCAT(',\"oid\":', ");
        object(&s, ci, w, "OLD", w->pk, w->npk);
        sn_sb_add(&s, "); ELSE SET t = ''; END IF;");
        guarded(b, s.p ? s.p : "");
        sn_sb_add(b, "SET d = COALESCE(t, '');\n");
    }
    for (int l = 0; l < 2; l++) {
        const char *const *cols = l == 0 ? w->extra : w->old_cols;
        int n = l == 0 ? w->nextra : w->op == SN_UPDATE ? w->nold : 0;
        for (int i = 0; i < n; i++) {
            s.len = 0;
            sn_sb_add(&s, "SET t = ");
            object(&s, ci, w, l == 0 ? row : "OLD", &cols[i], 1);
            sn_sb_add(&s, ";");
            guarded(b, s.p ? s.p : "");
            sn_sb_addf(b, "IF t IS NOT NULL THEN SET %s = JSON_MERGE_PRESERVE(%s, t); END IF;\n", l == 0 ? "x" : "o",
                       l == 0 ? "x" : "o");
        }
    }
    for (int i = 0; when && i < w->ntrigger; i++) { /* a trigger column gone counts as unchanged */
        s.len = 0;
        sn_sb_add(&s, "IF ");
        changed(&s, &w->trigger_cols[i], 1);
        sn_sb_add(&s, " THEN SET f = 1; END IF;");
        guarded(b, s.p ? s.p : "");
    }
    const char *key_only = "IF(k IS NULL, '{\"t\":true}', CONCAT('{\"id\":', k, d, ',\"t\":true}'))";
    sn_sb_add(b, "IF f THEN\n");
    sn_sb_add(b, "SET p = IF(k IS NULL, '{\"t\":true}', CONCAT('{\"id\":', k, d");
    if (w->nextra > 0)
        sn_sb_add(b, ", ',\"x\":', x");
    if (w->op == SN_UPDATE && w->nold > 0)
        sn_sb_add(b, ", ',\"o\":', o");
    sn_sb_add(b, ", '}'));\n");
    sn_sb_addf(b, "IF LENGTH(p) > @@max_allowed_packet - 1024 THEN SET p = %s; END IF;\n", key_only);
    sn_sb_add(b, "BEGIN\n"
                 "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN\n"
                 "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN END;\n"); /* the journal is gone: nothing to do */
    journal_insert(b, c, w, key_only);
    sn_sb_add(b, "END;\n");
    journal_insert(b, c, w, "p");
    sn_sb_add(b, "END;\nEND IF;\nEND;\n");
    sn_sb_fail(b, s.fail);
    sn_sb_free(&s);
}

/* Everything after the marker line: the fast path (one JSON_OBJECT per part), and the
 * handler that takes the slow path when it fails. Lock waits, deadlocks and a killed
 * statement are raised again: they roll the user's statement back anyway. */
static void body_rest(sn_sbuf *b, sn_conn *c, const sn_watch *w, const colinfo *ci)
{
    sn_sbuf key = {0}, full = {0}, trunc = {0};
    key_parts(&key, ci, w);
    sn_sb_add(&full, key.p ? key.p : "");
    const char *row = w->op == SN_DELETE ? "OLD" : "NEW";
    if (w->nextra > 0) {
        sn_sb_add(&full, ", ',\"x\":', ");
        object(&full, ci, w, row, w->extra, w->nextra);
    }
    if (w->op == SN_UPDATE && w->nold > 0) {
        sn_sb_add(&full, ", ',\"o\":', ");
        object(&full, ci, w, "OLD", w->old_cols, w->nold);
    }
    sn_sb_addf(&trunc, "CONCAT(%s, ',\"t\":true}')", key.p ? key.p : "");
    sn_sb_add(b, "DECLARE p LONGTEXT CHARACTER SET utf8mb4;\n"
                 "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN\n"
                 "DECLARE e INT;\n"
                 "GET DIAGNOSTICS CONDITION 1 e = MYSQL_ERRNO;\n"
                 "IF e IN (1205, 1213, 1317, 1969, 3024) THEN RESIGNAL; END IF;\n");
    fallback(b, c, w, ci);
    sn_sb_add(b, "END;\n");
    if (w->op == SN_UPDATE && w->ntrigger > 0) {
        sn_sb_add(b, "IF ");
        changed(b, w->trigger_cols, w->ntrigger);
        sn_sb_add(b, " THEN\n");
    }
    sn_sb_addf(b, "SET p = CONCAT(%s, '}');\n", full.p ? full.p : "");
    sn_sb_addf(b, "IF LENGTH(p) > @@max_allowed_packet - 1024 THEN SET p = %s; END IF;\n", trunc.p ? trunc.p : "");
    journal_insert(b, c, w, "p");
    if (w->op == SN_UPDATE && w->ntrigger > 0)
        sn_sb_add(b, "END IF;\n");
    sn_sb_add(b, "END");
    sn_sb_fail(b, key.fail ? key.fail : full.fail ? full.fail : trunc.fail);
    sn_sb_free(&key);
    sn_sb_free(&full);
    sn_sb_free(&trunc);
}

static void summary(sn_sbuf *b, const sn_watch *w)
{
    const char *const *lists[4] = {w->pk, w->extra, w->trigger_cols, w->old_cols};
    const int ns[4] = {w->npk, w->nextra, w->ntrigger, w->nold};
    static const char *const heads[4] = {"", " | x: ", " | when: ", " | old: "};
    for (int l = 0; l < 4; l++) {
        if (l == 1 && w->extra_all) {
            sn_sb_add(b, " | x: *");
            continue;
        }
        if (l > 0 && ns[l] == 0)
            continue;
        sn_sb_add(b, heads[l]);
        for (int i = 0; i < ns[l]; i++) {
            sn_sb_add(b, i ? ", " : "");
            sn_sb_add(b, lists[l][i]);
        }
    }
}

/* The whole CREATE TRIGGER statement. */
static void create_sql(sn_sbuf *b, sn_conn *c, const sn_watch *w, const colinfo *ci, const char *name, int or_replace)
{
    sn_sbuf rest = {0}, sum = {0};
    body_rest(&rest, c, w, ci);
    summary(&sum, w);
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    sn_sb_addf(b, "CREATE %sTRIGGER ", or_replace ? "OR REPLACE " : "");
    my_sb_qname(b, w->schema, name);
    sn_sb_addf(b, " AFTER %s ON ", op_sql[w->op]);
    my_sb_qname(b, w->schema, w->table);
    sn_sb_addf(b, " FOR EACH ROW BEGIN\n" MARK "marker=%s.%016llx journal=", w->marker,
               (unsigned long long)body_hash(rest.p ? rest.p : ""));
    my_sb_hex(b, c->p.db, strlen(c->p.db));
    sn_sb_add(b, " channel=");
    my_sb_hex(b, w->channel, strlen(w->channel));
    sn_sb_addf(b, " installed=%s columns=", when);
    my_sb_hex(b, sum.p ? sum.p : "", sum.len);
    sn_sb_add(b, " */\n");
    sn_sb_addn(b, rest.p ? rest.p : "", rest.len);
    sn_sb_fail(b, rest.fail ? rest.fail : sum.fail);
    sn_sb_free(&rest);
    sn_sb_free(&sum);
}

/* ===== install ===== */

static void cannot(sn_sbuf *b, const sn_watch *w, const char *verb)
{
    sn_sb_addf(b, "cannot %s the trigger for %s on ", verb, op_names[w->op]);
    lua_table(b, w->schema, w->table);
    sn_sb_add(b, ": ");
}

/* The server's refusal, with what to grant or change where we can tell. */
static void install_error(sn_conn *c, const sn_watch *w, MYSQL *m, char *err, size_t errlen)
{
    sn_sbuf b = {0};
    unsigned e = mysql_errno(m);
    cannot(&b, w, "create");
    sn_sb_add(&b, mysql_error(m));
    if (e == 1142 || e == 1044) {
        sn_sb_add(&b, " (GRANT TRIGGER ON ");
        my_sb_qname(&b, w->schema, w->table);
        sn_sb_addf(&b, " TO the user of %s, or run as the table's owner)", c->target);
    } else if (e == 1419) {
        sn_sb_add(&b, " (with binary logging on: SET GLOBAL log_bin_trust_function_creators = 1, or run as a user"
                      " with SUPER)");
    } else if (e == 1227) {
        sn_sb_add(&b, " (run as a user with the TRIGGER privilege on the table)");
    }
    sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
    sn_sb_free(&b);
}

static int load_columns(sn_conn *c, const sn_watch *w, colinfo *ci, char *err, size_t errlen)
{
    const char *args[2] = {w->schema, w->table};
    memset(ci, 0, sizeof *ci);
    if (my_query(c, "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                 2, args, &ci->t, err, errlen) < 0)
        return -1;
    for (int i = 0; i < ci->t->nrows; i++) {
        const sn_value *row = &ci->t->cells[(size_t)i * 2];
        if (row[0].type == SN_TEXT && strcmp(row[0].s, w->table) == 0 && row[1].type == SN_TEXT)
            ci->table_type = row[1].s;
    }
    if (ci->table_type == NULL)
        return 0;
    return my_query(c,
                    "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                    2, args, &ci->r, err, errlen);
}

/* The columns of cols the table has, into out; how many. */
static int keep_present(const colinfo *ci, const sn_watch *w, const char *const *cols, int n, const char **out)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (column_row(ci, w, cols[i]))
            out[k++] = cols[i];
    return k;
}

/* The watch as its table is now, which the trigger is made for: the extra and old columns
 * renamed or dropped since it was declared are left out, the trigger columns gone too unless
 * none is left (then they all stay: a trigger column gone counts as unchanged, and it fires
 * no more); extra_columns = "*" is every column but the key ones. The key stays as asked (a
 * key column gone sends {"t":true}). *cols (malloc'd) holds the lists; 0, or -1 out of memory. */
static int watch_now(const sn_watch *w, const colinfo *ci, sn_watch *now, const char ***cols)
{
    int nrows = ci->r ? ci->r->nrows : 0, n = w->nextra + w->nold + w->ntrigger + nrows;
    const char **a = malloc(sizeof *a * (size_t)(n > 0 ? n : 1));
    *now = *w;
    *cols = a;
    if (a == NULL)
        return -1;
    now->extra = a;
    now->nextra = keep_present(ci, w, w->extra, w->nextra, a);
    for (int i = 0; w->extra_all && i < nrows; i++) {
        const sn_value *row = &ci->r->cells[(size_t)i * 3];
        int skip = row[0].type != SN_TEXT || row[1].type != SN_TEXT || strcmp(row[0].s, w->table) != 0;
        for (int k = 0; k < w->npk && !skip; k++)
            skip = strcmp(w->pk[k], row[1].s) == 0; /* a key column */
        if (!skip)
            a[now->nextra++] = row[1].s;
    }
    a += now->nextra;
    now->old_cols = a;
    now->nold = keep_present(ci, w, w->old_cols, w->nold, a);
    a += now->nold;
    int ntrig = keep_present(ci, w, w->trigger_cols, w->ntrigger, a);
    if (ntrig > 0) {
        now->trigger_cols = a;
        now->ntrigger = ntrig;
    }
    return 0;
}

static void colinfo_free(colinfo *ci)
{
    sn_result_free(ci->r);
    sn_result_free(ci->t);
}

/* sn_dialect.row_sql: the payload of a row aliased r, as the INSERT trigger's fast path makes
 * it. The journal has no shares: hash stays empty. */
int my_row_sql(sn_conn *c, const sn_watch *w, sn_sbuf *payload, sn_sbuf *hash, char *err, size_t errlen)
{
    (void)hash;
    colinfo ci;
    int rc = load_columns(c, w, &ci, err, errlen);
    if (rc == 0 && ci.table_type == NULL) {
        sn_seterr(err, errlen, "table %s.%s does not exist", w->schema, w->table);
        rc = -1;
    }
    if (rc == 0) {
        sn_sb_add(payload, "CONCAT('{\"id\":', ");
        object(payload, &ci, w, "r", w->pk, w->npk);
        if (w->nextra > 0) {
            sn_sb_add(payload, ", ',\"x\":', ");
            object(payload, &ci, w, "r", w->extra, w->nextra);
        }
        sn_sb_add(payload, ", '}')");
        if (payload->fail) {
            sn_seterr(err, errlen, "%s", payload->fail);
            rc = -1;
        }
    }
    colinfo_free(&ci);
    return rc;
}

static int run(sn_conn *c, const char *sql, char *err, size_t errlen)
{
    return my_exec(c, c->q, sql, strlen(sql), NULL, err, errlen);
}

/* ===== locks: our DDL never waits long for the user's table ===== */

/* The last statement on m gave up waiting for a lock (lock_wait_timeout), or was a deadlock's victim. */
static int lock_failed(MYSQL *m)
{
    unsigned e = mysql_errno(m);
    return e == 1205 || e == 1213;
}

/* Who holds the table's metadata lock: performance_schema knows (MySQL 8 by default); else
 * (MariaDB by default) the sessions in an open transaction, any of which may hold it. */
static const char mdl_holders_sql[] =
    "SELECT CAST(t.PROCESSLIST_ID AS CHAR), CONCAT(COALESCE(t.PROCESSLIST_USER, ''), '@',"
    " COALESCE(t.PROCESSLIST_HOST, '')), COALESCE(t.PROCESSLIST_COMMAND, ''), CAST(COALESCE(t.PROCESSLIST_TIME, 0)"
    " AS CHAR), GROUP_CONCAT(DISTINCT m.LOCK_TYPE ORDER BY m.LOCK_TYPE SEPARATOR ', '),"
    " LEFT(COALESCE(t.PROCESSLIST_INFO, ''), 80)"
    " FROM performance_schema.metadata_locks m JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID"
    " WHERE m.OBJECT_TYPE = 'TABLE' AND m.OBJECT_SCHEMA = ? AND m.OBJECT_NAME = ? AND m.LOCK_STATUS = 'GRANTED'"
    "  AND t.PROCESSLIST_ID NOT IN (CONNECTION_ID(), ?)"
    " GROUP BY t.PROCESSLIST_ID, t.PROCESSLIST_USER, t.PROCESSLIST_HOST, t.PROCESSLIST_COMMAND, t.PROCESSLIST_TIME,"
    "  t.PROCESSLIST_INFO LIMIT 3";
static const char trx_holders_sql[] =
    "SELECT CAST(p.ID AS CHAR), CONCAT(p.USER, '@', p.HOST), p.COMMAND,"
    " CAST(TIMESTAMPDIFF(SECOND, x.trx_started, NOW()) AS CHAR), 'in a transaction',"
    " LEFT(COALESCE(x.trx_query, p.INFO, ''), 80)"
    " FROM information_schema.INNODB_TRX x JOIN information_schema.PROCESSLIST p ON p.ID = x.trx_mysql_thread_id"
    " WHERE p.ID NOT IN (CONNECTION_ID(), ?) ORDER BY x.trx_started LIMIT 3";

/* The connection id of this notifier's n:query session while it is in a transaction, else 0. */
static unsigned long own_tx_id(sn_conn *c)
{
    unsigned status = 0;
    if (c->uq == NULL || mariadb_get_infov(c->uq, MARIADB_CONNECTION_SERVER_STATUS, &status) != 0)
        return 0;
    return status & SERVER_STATUS_IN_TRANS ? mysql_thread_id(c->uq) : 0;
}

/* err for SN_INSTALL_BUSY: the DDL did not get the table's metadata lock in time, and who may hold it. */
static void busy_err(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    sn_sbuf b = {0};
    sn_result *r = NULL;
    char reader[24], e[256];
    snprintf(reader, sizeof reader, "%lu", c->r.m ? mysql_thread_id(c->r.m) : 0);
    const char *args[3] = {w->schema, w->table, reader};
    int exact = my_query(c, mdl_holders_sql, 3, args, &r, e, sizeof e) == 0 && r->nrows > 0;
    if (!exact) {
        sn_result_free(r);
        r = NULL;
        if (my_query(c, trx_holders_sql, 1, args + 2, &r, e, sizeof e) < 0)
            r = NULL;
    }
    sn_sb_add(&b, "the metadata lock on ");
    lua_table(&b, w->schema, w->table);
    sn_sb_addf(&b, " was not had within %g s", SN_LOCK_TIMEOUT);
    if (r && r->nrows > 0)
        sn_sb_add(&b, exact ? "; held by " : "; sessions in an open transaction, one of which may hold it: ");
    for (int i = 0; r && i < r->nrows; i++) {
        const sn_value *v = &r->cells[(size_t)i * 6];
        const char *s[6];
        for (int k = 0; k < 6; k++)
            s[k] = v[k].type == SN_TEXT ? v[k].s : "";
        if (i > 0)
            sn_sb_add(&b, ", ");
        if (strtoul(s[0], NULL, 10) == own_tx_id(c) && *s[0])
            sn_sb_add(&b, "your own n:query transaction, ");
        sn_sb_addf(&b, "connection %s (%s, %s, %s for %s s)", s[0], s[1], s[2], s[4], s[3]);
        if (*s[5]) {
            char q[100];
            snprintf(q, sizeof q, "%s", s[5]);
            for (char *p = q; *p; p++)
                if (*p == '\n' || *p == '\r' || *p == '\t')
                    *p = ' ';
            sn_sb_addf(&b, ": \"%s\"", q);
        }
    }
    if (r == NULL || r->nrows == 0)
        sn_sb_add(&b, " (no session in a transaction now: a LOCK TABLES or a long statement may hold it;"
                      " SHOW PROCESSLIST)");
    sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
    sn_result_free(r);
    sn_sb_free(&b);
}

/* Replace a trigger without a moment in which writes go unseen: MariaDB's CREATE OR
 * REPLACE does it under one lock; MySQL drops and creates under LOCK TABLES. *busy: it
 * failed for want of a lock. */
static int create(sn_conn *c, const sn_watch *w, const colinfo *ci, const char *name, int replace, int *busy,
                  char *err, size_t errlen)
{
    sn_sbuf b = {0};
    int rc;
    if (replace && !c->mariadb) {
        sn_sbuf lock = {0}, drop = {0};
        sn_sb_add(&lock, "LOCK TABLES ");
        my_sb_qname(&lock, w->schema, w->table);
        sn_sb_addf(&lock, " WRITE, %s WRITE", c->journal);
        sn_sb_add(&drop, "DROP TRIGGER IF EXISTS ");
        my_sb_qname(&drop, w->schema, name);
        create_sql(&b, c, w, ci, name, 0);
        rc = lock.fail || drop.fail || b.fail ? -1 : 0;
        if (rc == 0 && (rc = run(c, lock.p, err, errlen)) < 0)
            *busy = lock_failed(c->q);
        if (rc == 0) {
            if ((rc = run(c, drop.p, err, errlen)) == 0 && (rc = run(c, b.p, err, errlen)) < 0)
                install_error(c, w, c->q, err, errlen);
            if (rc < 0)
                *busy = lock_failed(c->q);
            char ignored[256];
            run(c, "UNLOCK TABLES", ignored, sizeof ignored);
        }
        sn_sb_free(&lock);
        sn_sb_free(&drop);
    } else {
        create_sql(&b, c, w, ci, name, replace);
        rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
        if (rc < 0 && !b.fail) {
            *busy = lock_failed(c->q);
            install_error(c, w, c->q, err, errlen);
        }
    }
    if (b.fail)
        sn_seterr(err, errlen, "out of memory");
    sn_sb_free(&b);
    return rc;
}

static int drop_one(sn_conn *c, const char *schema, const char *name, char *err, size_t errlen);

/* The previous release's trigger of this table, operation and label (one per watch, serving
 * live watches and consumers alike) goes when a consumer's own capture takes its place, or a
 * live watch's where no consumer may still read what it writes. 0, or -1 and err. */
static int drop_legacy(sn_conn *c, const sn_watch *w, const ours_list *all, char *err, size_t errlen)
{
    char legacy[64];
    sn_trigger_name_of(w, 1, legacy);
    for (int i = 0; i < all->n; i++) {
        const ours *o = &all->v[i];
        if (strcmp(o->name, legacy) != 0 || strcmp(o->schema, w->schema) != 0 || strcmp(o->table, w->table) != 0 ||
            strcasecmp(o->op, op_sql[w->op]) != 0)
            continue;
        if (!sn_watch_durable(w)) {
            sn_result *r = NULL;
            sn_sbuf q = {0};
            sn_sb_add(&q, "SELECT 1 FROM ");
            my_sb_qname(&q, c->p.db, MY_CONSUMERS);
            sn_sb_add(&q, " LIMIT 1");
            int rc = q.fail ? -1 : my_query(c, q.p, 0, NULL, &r, err, errlen);
            int consumers = rc < 0 || r->nrows > 0; /* unknown: keep it */
            sn_result_free(r);
            sn_sb_free(&q);
            if (consumers)
                return 0;
        }
        return drop_one(c, o->schema, o->name, err, errlen);
    }
    return 0;
}

/* create() waiting SN_LOCK_TIMEOUT at most for the table's lock, never on this notifier's own
 * n:query transaction (which cannot end while we wait; whether it touched the table, the server
 * tells only through performance_schema, so any open one counts). done: the status when it
 * went in. */
static int ddl(sn_conn *c, const sn_watch *w, const colinfo *ci, const char *name, int replace, int done, char *err,
               size_t errlen)
{
    unsigned long own = own_tx_id(c);
    if (own) {
        sn_sbuf b = {0};
        sn_sb_addf(&b, "your own n:query transaction (connection %lu) is open and may hold a metadata lock on ", own);
        lua_table(&b, w->schema, w->table);
        sn_sb_add(&b, ": the trigger can be installed only once it ends (COMMIT or ROLLBACK)");
        sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
        sn_sb_free(&b);
        return SN_INSTALL_BUSY;
    }
    char set[64], ignored[256];
    int busy = 0;
    snprintf(set, sizeof set, "SET SESSION lock_wait_timeout = %.0f", SN_LOCK_TIMEOUT < 1 ? 1 : SN_LOCK_TIMEOUT);
    if (run(c, set, err, errlen) < 0)
        return SN_INSTALL_ERROR;
    int rc = create(c, w, ci, name, replace, &busy, err, errlen);
    run(c, "SET SESSION lock_wait_timeout = " MY_LOCK_WAIT, ignored, sizeof ignored);
    if (rc == 0)
        return done;
    if (!busy)
        return SN_INSTALL_ERROR;
    busy_err(c, w, err, errlen);
    return SN_INSTALL_BUSY;
}

int my_install(sn_conn *c, const sn_watch *w, int replace, char *err, size_t errlen)
{
    char name[64];
    colinfo ci;
    ours_list all = {0};
    sn_watch now;
    const char **cols = NULL;
    int rc = SN_INSTALL_ERROR;
    sn_trigger_name(w, name);
    if (my_journal_ensure(c, err, errlen) < 0)
        return SN_INSTALL_ERROR;
    /* a member whose tables grow says so before its trigger captures a row (consumers.c) */
    if (c->consumer && sn_watch_durable(w) && my_members_add(c, w->channel, err, errlen) < 0)
        return SN_INSTALL_ERROR;
    if (load_columns(c, w, &ci, err, errlen) < 0)
        goto done;
    if (watch_now(w, &ci, &now, &cols) < 0) {
        sn_seterr(err, errlen, "out of memory");
        goto done;
    }
    if (ci.table_type == NULL || strcmp(ci.table_type, "VIEW") == 0) {
        sn_sbuf b = {0};
        cannot(&b, w, "create");
        if (ci.table_type == NULL)
            sn_sb_add(&b, "there is no such table");
        else
            sn_sb_add(&b, "it is a view, and MySQL has no triggers on views (watch the table it reads from)");
        sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
        sn_sb_free(&b);
        goto done;
    }
    if (find_ours(c, NULL, NULL, &all, err, errlen) < 0)
        goto done;
    const ours *mine = NULL;
    for (int i = 0; i < all.n; i++) {
        const ours *o = &all.v[i];
        int same_watch = strcmp(o->schema, w->schema) == 0 && strcmp(o->name, name) == 0;
        if (same_watch) {
            mine = o;
        } else if (sn_plain_len(o->channel) == sn_plain_len(w->channel) &&
                   memcmp(o->channel, w->channel, (size_t)sn_plain_len(w->channel)) == 0 &&
                   !(strcmp(o->schema, w->schema) == 0 && strcmp(o->table, w->table) == 0 &&
                     strcasecmp(o->op, op_sql[w->op]) == 0)) {
            sn_sbuf b = {0};
            char op[16];
            snprintf(op, sizeof op, "%s", o->op);
            for (char *p = op; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            sn_sb_add(&b, "channel ");
            lua_quoted(&b, w->plain_channel);
            sn_sb_addf(&b, " is already used by the %s watch on ", op);
            lua_table(&b, o->schema, o->table);
            sn_sb_add(&b, "; give this watch its own channel_label");
            sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
            sn_sb_free(&b);
            goto done;
        }
    }
    if (drop_legacy(c, w, &all, err, errlen) < 0)
        goto done;
    /* Ours on another table: the one it was made on was renamed away, and the trigger went with
     * it (a copy swapped into its place, as gh-ost does). It no longer captures this table, and
     * its name (one per schema) is this table's: it goes, and this table gets one. */
    if (mine && strcmp(mine->table, w->table) != 0) {
        if (drop_one(c, mine->schema, mine->name, err, errlen) < 0)
            goto done;
        mine = NULL;
    }
    if (mine == NULL) {
        /* A trigger of this name that is not ours: never touch it. */
        sn_result *r = NULL;
        const char *args[2] = {w->schema, name};
        if (my_query(c, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME = ?",
                     2, args, &r, err, errlen) < 0)
            goto done;
        int taken = r->nrows > 0;
        sn_result_free(r);
        /* another process made it meanwhile (two consumers of one capture starting, or
         * repairing a table made again, at the same moment): theirs is in */
        char ignored[256];
        if (taken && my_verify(c, w, ignored, sizeof ignored) == 1) {
            rc = SN_INSTALL_UNCHANGED;
            goto done;
        }
        if (taken) {
            sn_sbuf b = {0};
            cannot(&b, w, "create");
            sn_sb_addf(&b, "a trigger named %s that sqlnotify did not make is in the way", name);
            sn_seterr(err, errlen, "%s", b.fail ? "out of memory" : b.p);
            sn_sb_free(&b);
            goto done;
        }
        rc = ddl(c, &now, &ci, name, 0, SN_INSTALL_CREATED, err, errlen);
        if (rc == SN_INSTALL_ERROR && my_verify(c, w, ignored, sizeof ignored) == 1) /* the same, later */
            rc = SN_INSTALL_UNCHANGED;
        if (rc == SN_INSTALL_CREATED && c->consumer && my_read_before(c, w->channel))
            rc = SN_INSTALL_RESTORED;
        goto done;
    }
    const char *dot = strrchr(mine->marker, '.');
    int same_marker = dot && (size_t)(dot - mine->marker) == strlen(w->marker) &&
                      memcmp(mine->marker, w->marker, strlen(w->marker)) == 0;
    if (same_marker && mine->intact)
        rc = SN_INSTALL_UNCHANGED;
    else if (!replace)
        rc = SN_INSTALL_KEPT;
    else
        rc = ddl(c, &now, &ci, name, 1, SN_INSTALL_REPLACED, err, errlen);
done:
    free(cols);
    colinfo_free(&ci);
    ours_free(&all);
    return rc;
}

/* ===== uninstall, drop, list, verify ===== */

/* DROP TRIGGER waits for the table's metadata lock as briefly as an install does. */
static int drop_one(sn_conn *c, const char *schema, const char *name, char *err, size_t errlen)
{
    sn_sbuf b = {0};
    char ignored[256];
    sn_sb_addf(&b, "SET SESSION lock_wait_timeout = %.0f", SN_LOCK_TIMEOUT < 1 ? 1 : SN_LOCK_TIMEOUT);
    int rc = b.fail ? -1 : run(c, b.p, err, errlen);
    b.len = 0;
    sn_sb_add(&b, "DROP TRIGGER IF EXISTS ");
    my_sb_qname(&b, schema, name);
    if (b.fail)
        sn_seterr(err, errlen, "out of memory");
    else if (rc == 0 && (rc = run(c, b.p, err, errlen)) < 0 && lock_failed(c->q)) {
        size_t n = strlen(err);
        snprintf(err + n, errlen > n ? errlen - n : 0,
                 " (another session holds a lock on the table; try again once it is done)");
    }
    run(c, "SET SESSION lock_wait_timeout = " MY_LOCK_WAIT, ignored, sizeof ignored);
    rc = b.fail ? -1 : rc;
    if (rc == 0)
        my_forget(c, schema, name);
    sn_sb_free(&b);
    return rc;
}

/* The triggers of a capture no consumer reads any more (found by the channel their marker
 * records): how many went, or -1 and err. */
int my_drop_channel(sn_conn *c, const char *channel, char *err, size_t errlen)
{
    ours_list l;
    if (find_ours(c, NULL, NULL, &l, err, errlen) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < l.n && n >= 0; i++)
        if (l.v[i].channel && strcmp(l.v[i].channel, channel) == 0)
            n = drop_one(c, l.v[i].schema, l.v[i].name, err, errlen) < 0 ? -1 : n + 1;
    ours_free(&l);
    return n;
}

int my_uninstall(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[64];
    ours_list l;
    sn_trigger_name(w, name);
    if (find_ours(c, w->schema, w->table, &l, err, errlen) < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < l.n && rc == 0; i++)
        if (strcmp(l.v[i].name, name) == 0)
            rc = drop_one(c, l.v[i].schema, l.v[i].name, err, errlen);
    ours_free(&l);
    return rc;
}

int my_drop(sn_conn *c, const char *schema, const char *table, char *err, size_t errlen)
{
    ours_list l;
    if (table && schema == NULL)
        schema = c->p.db;
    if (find_ours(c, schema, table, &l, err, errlen) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < l.n; i++) {
        if (drop_one(c, l.v[i].schema, l.v[i].name, err, errlen) < 0) {
            n = -1;
            break;
        }
        n++;
    }
    ours_free(&l);
    return n;
}


int my_list(sn_conn *c, sn_result **out, char *err, size_t errlen)
{
    static const char *const names[] = {"schema", "table", "operation", "channel", "trigger", "function", "columns",
                                        "installed"};
    ours_list l;
    *out = NULL;
    if (find_ours(c, NULL, NULL, &l, err, errlen) < 0)
        return -1;
    sn_result *r = sn_result_new(8);
    int ok = r != NULL;
    for (int i = 0; ok && i < 8; i++)
        ok = sn_result_name(r, i, names[i]) == 0;
    for (int i = 0; ok && i < l.n; i++) {
        const ours *o = &l.v[i];
        char op[16];
        snprintf(op, sizeof op, "%s", o->op);
        for (char *p = op; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        const char *v[8] = {o->schema, o->table, op, o->channel, o->name, NULL, o->columns,
                            o->installed ? o->installed : o->created};
        sn_value *row = sn_result_row(r);
        for (int k = 0; ok && k < 8; k++)
            ok = row != NULL && (v[k] == NULL || sn_value_text(&row[k], v[k], strlen(v[k])) == 0);
    }
    ours_free(&l);
    if (!ok) {
        sn_result_free(r);
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    *out = r;
    return 0;
}

int my_verify(sn_conn *c, const sn_watch *w, char *err, size_t errlen)
{
    char name[64];
    ours_list l;
    sn_trigger_name(w, name);
    if (find_ours(c, w->schema, w->table, &l, err, errlen) < 0)
        return -1;
    int ok = 0;
    for (int i = 0; i < l.n; i++) {
        const ours *o = &l.v[i];
        const char *dot = strrchr(o->marker, '.');
        if (strcmp(o->name, name) == 0 && o->intact && dot && (size_t)(dot - o->marker) == strlen(w->marker) &&
            memcmp(o->marker, w->marker, strlen(w->marker)) == 0)
            ok = 1;
    }
    ours_free(&l);
    return ok;
}
