/*
 * catalog.c — what the MySQL/MariaDB catalog says about a table (describe), from
 * information_schema with the names as parameters, and the journal's own tables.
 *
 * The journal lives in the URL's database, beside the consumers' cursors:
 *   sqlnotify_journal    id (AUTO_INCREMENT), channel, payload, created_at (UTC)
 *   sqlnotify_consumers  one row per durable consumer: pos, pending, low, last_seen
 *   sqlnotify_pruned     the id below which pruning may have removed rows
 *   sqlnotify_members    each process of a durable consumer: its tables, a heartbeat
 */
#include "my.h"

const char *my_schema(sn_conn *c, const char *schema) { return schema ? schema : c->p.db; }

static const char *cell(const sn_result *r, int row, int col)
{
    const sn_value *v = &r->cells[(size_t)row * (size_t)r->ncols + (size_t)col];
    return v->type == SN_TEXT ? v->s : NULL;
}

static long long num(const sn_result *r, int row, int col)
{
    const sn_value *v = &r->cells[(size_t)row * (size_t)r->ncols + (size_t)col];
    return v->type == SN_INT ? v->i : v->type == SN_TEXT ? atoll(v->s) : -1;
}

static int add_row(sn_result *out, const char *kind, const char *a, const char *b, const char *n, const char *cls)
{
    sn_value *row = sn_result_row(out);
    if (row == NULL)
        return -1;
    const char *v[5] = {kind, a, b, n, cls};
    for (int i = 0; i < 5; i++)
        if (v[i] && sn_value_text(&row[i], v[i], strlen(v[i])) < 0)
            return -1;
    return 0;
}

/* A column's class (src/dialect.h) from information_schema's DATA_TYPE, as the triggers
 * send its values: BIT and YEAR as integers, spatial values as bytes. */
static int type_class(const char *t)
{
    static const struct {
        const char *type;
        int cls;
    } classes[] = {
        {"tinyint", SN_CLASS_INTEGER}, {"smallint", SN_CLASS_INTEGER}, {"mediumint", SN_CLASS_INTEGER},
        {"int", SN_CLASS_INTEGER}, {"bigint", SN_CLASS_INTEGER}, {"bit", SN_CLASS_INTEGER},
        {"year", SN_CLASS_INTEGER}, {"float", SN_CLASS_FLOAT}, {"double", SN_CLASS_FLOAT},
        {"decimal", SN_CLASS_DECIMAL}, {"char", SN_CLASS_TEXT}, {"varchar", SN_CLASS_TEXT},
        {"tinytext", SN_CLASS_TEXT}, {"text", SN_CLASS_TEXT}, {"mediumtext", SN_CLASS_TEXT},
        {"longtext", SN_CLASS_TEXT}, {"enum", SN_CLASS_TEXT}, {"set", SN_CLASS_TEXT},
        {"binary", SN_CLASS_BYTES}, {"varbinary", SN_CLASS_BYTES}, {"tinyblob", SN_CLASS_BYTES},
        {"blob", SN_CLASS_BYTES}, {"mediumblob", SN_CLASS_BYTES}, {"longblob", SN_CLASS_BYTES},
        {"geometry", SN_CLASS_BYTES}, {"point", SN_CLASS_BYTES}, {"linestring", SN_CLASS_BYTES},
        {"polygon", SN_CLASS_BYTES}, {"multipoint", SN_CLASS_BYTES}, {"multilinestring", SN_CLASS_BYTES},
        {"multipolygon", SN_CLASS_BYTES}, {"geometrycollection", SN_CLASS_BYTES},
        {"geomcollection", SN_CLASS_BYTES}, {"json", SN_CLASS_JSON},
    };
    for (size_t i = 0; t && i < sizeof classes / sizeof classes[0]; i++)
        if (strcmp(t, classes[i].type) == 0)
            return classes[i].cls;
    return SN_CLASS_OTHER;
}

/* Same bytes: information_schema compares names without regard to case. */
static int same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

int my_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err, size_t errlen)
{
    sn_result *t = NULL, *cols = NULL, *keys = NULL;
    sn_result *r = sn_result_new(5);
    int rc = -1;
    *out = NULL;
    schema = my_schema(c, schema);
    const char *args[2] = {schema, table};
    if (r == NULL)
        goto oom;
    if (my_query(c,
                 "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES"
                 " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                 2, args, &t, err, errlen) < 0)
        goto done;
    int found = -1;
    for (int i = 0; i < t->nrows; i++)
        if (same(cell(t, i, 0), schema) && same(cell(t, i, 1), table))
            found = i;
    if (found < 0) { /* no rows: no such table */
        *out = r;
        r = NULL;
        rc = 0;
        goto done;
    }
    const char *type = cell(t, found, 2);
    if (add_row(r, "table", schema, table, type && strcmp(type, "VIEW") == 0 ? "view" : NULL, NULL) < 0)
        goto oom;
    /* MariaDB's JSON is LONGTEXT with a CHECK (json_valid(`column`)) it adds itself, and its
     * JSON_OBJECT embeds such a column's value as JSON. */
    if (my_query(c,
                 c->mariadb ? "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, ORDINAL_POSITION, DATA_TYPE, NUMERIC_SCALE,"
                              " EXISTS (SELECT 1 FROM information_schema.CHECK_CONSTRAINTS k"
                              "  WHERE k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME"
                              "  AND k.LEVEL = 'Column' AND k.CONSTRAINT_NAME = c.COLUMN_NAME"
                              "  AND k.CHECK_CLAUSE = CONCAT('json_valid(`', REPLACE(c.COLUMN_NAME, '`', '``'), '`)'))"
                              " FROM information_schema.COLUMNS c"
                              " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
                            : "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, ORDINAL_POSITION, DATA_TYPE, NUMERIC_SCALE, 0"
                              " FROM information_schema.COLUMNS"
                              " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                 2, args, &cols, err, errlen) < 0)
        goto done;
    for (int i = 0; i < cols->nrows; i++) {
        char pos[24], cls[32];
        snprintf(pos, sizeof pos, "%lld", num(cols, i, 3));
        int k = num(cols, i, 6) > 0 ? SN_CLASS_JSON : type_class(cell(cols, i, 4));
        if (k == SN_CLASS_DECIMAL) /* DECIMAL always has a scale: DECIMAL alone is DECIMAL(10,0) */
            snprintf(cls, sizeof cls, "decimal(%lld)", num(cols, i, 5));
        else
            snprintf(cls, sizeof cls, "%s", sn_class_name(k));
        if (same(cell(cols, i, 0), table) && add_row(r, "column", cell(cols, i, 1), cell(cols, i, 2), pos, cls) < 0)
            goto oom;
    }
    /* Keys: the primary key, then unique indexes on whole columns (no prefix, no expression). */
    if (my_query(c,
                 "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME, SEQ_IN_INDEX,"
                 " SUM(SUB_PART IS NOT NULL OR COLUMN_NAME IS NULL) OVER (PARTITION BY INDEX_NAME), NULLABLE"
                 " FROM information_schema.STATISTICS"
                 " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0"
                 " ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
                 2, args, &keys, err, errlen) < 0)
        goto done;
    for (int i = 0; i < keys->nrows; i++) {
        const char *index = cell(keys, i, 1), *col = cell(keys, i, 2);
        char pos[24];
        snprintf(pos, sizeof pos, "%lld", num(keys, i, 3));
        if (!same(cell(keys, i, 0), table) || col == NULL || num(keys, i, 4) > 0)
            continue;
        int pk = strcmp(index, "PRIMARY") == 0;
        const char *nullable = cell(keys, i, 5);
        if (add_row(r, pk ? "pk" : "unique", col, pk ? NULL : index, pos,
                    !pk && nullable && strcmp(nullable, "YES") == 0 ? "nullable" : NULL) < 0)
            goto oom;
    }
    *out = r;
    r = NULL;
    rc = 0;
    goto done;
oom:
    sn_seterr(err, errlen, "out of memory");
done:
    sn_result_free(r);
    sn_result_free(t);
    sn_result_free(cols);
    sn_result_free(keys);
    return rc;
}

/* ===== the journal's tables ===== */

int my_journal_ensure(sn_conn *c, char *err, size_t errlen) { return my_journal_make(c, 0, err, errlen); }

int my_journal_make(sn_conn *c, int64_t first_id, char *err, size_t errlen)
{
    if (c->journal_ok)
        return 0;
    sn_sbuf b = {0};
    int rc = 0;
    /* created_at is UTC whatever the writer's time_zone, and has no year-2038 limit. */
    sn_sb_addf(&b,
               "CREATE TABLE IF NOT EXISTS %s ("
               " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
               " channel VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
               " payload LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
               " created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))"
               ") ENGINE=InnoDB COMMENT='sqlnotify: the change journal its triggers write'",
               c->journal);
    if (first_id > 1)
        sn_sb_addf(&b, " AUTO_INCREMENT = %lld", (long long)first_id);
    rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    b.len = 0;
    sn_sb_addf(&b,
               "CREATE TABLE IF NOT EXISTS %s ("
               " name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,"
               " pos BIGINT NOT NULL,"
               " pending MEDIUMTEXT CHARACTER SET ascii NOT NULL,"
               " low BIGINT NOT NULL,"
               " created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),"
               " last_seen DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),"
               " retention DOUBLE NULL" /* its consumer_retention (NULL: the pruner's) */
               ") ENGINE=InnoDB COMMENT='sqlnotify: where each durable consumer stands in the journal'",
               c->consumers);
    if (rc == 0)
        rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    /* tables made by earlier versions: the column added (one that is there already, 1060,
     * is fine; MySQL has no ADD COLUMN IF NOT EXISTS) */
    b.len = 0;
    sn_sb_addf(&b, "ALTER TABLE %s ADD COLUMN retention DOUBLE NULL", c->consumers);
    if (rc == 0 && !b.fail && my_exec(c, c->q, b.p, b.len, NULL, err, errlen) < 0 && mysql_errno(c->q) != 1060)
        rc = -1;
    b.len = 0;
    sn_sb_addf(&b,
               "CREATE TABLE IF NOT EXISTS %s (id TINYINT NOT NULL PRIMARY KEY, below BIGINT NOT NULL)"
               " ENGINE=InnoDB COMMENT='sqlnotify: journal rows below this id may have been pruned'",
               c->pruned);
    if (rc == 0)
        rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    /* the channels each consumer reads (its captures', and the plain ones an older release's
     * triggers wrote), so that its lag counts its own tables' rows only */
    b.len = 0;
    sn_sb_add(&b, "CREATE TABLE IF NOT EXISTS ");
    my_sb_qname(&b, c->p.db, MY_READS);
    sn_sb_add(&b, " (consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
                  " channel VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
                  " PRIMARY KEY (consumer, channel)) ENGINE=InnoDB"
                  " COMMENT='sqlnotify: the channels each durable consumer reads'");
    if (rc == 0)
        rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    /* each process of a durable consumer, holder or standby: the tables it reads, a heartbeat */
    b.len = 0;
    sn_sb_add(&b, "CREATE TABLE IF NOT EXISTS ");
    my_sb_qname(&b, c->p.db, MY_MEMBERS);
    sn_sb_add(&b, " (consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
                  " member BIGINT NOT NULL," /* the process's random id */
                  " pid BIGINT NOT NULL,"
                  " host VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,"
                  " tables MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL," /* one a line */
                  " heartbeat DATETIME(6) NOT NULL,"
                  " PRIMARY KEY (consumer, member)) ENGINE=InnoDB"
                  " COMMENT='sqlnotify: the processes of each durable consumer and the tables they read'");
    if (rc == 0)
        rc = b.fail ? -1 : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    if (b.fail)
        sn_seterr(err, errlen, "out of memory");
    else if (rc < 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        sn_seterr(err, errlen, "cannot create the journal tables in database \"%s\": %s", c->p.db, why);
    }
    sn_sb_free(&b);
    c->journal_ok = rc == 0;
    return rc;
}
