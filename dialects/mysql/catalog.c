/*
 * catalog.c — what the MySQL/MariaDB catalog says about a table (describe), from
 * information_schema with the names as parameters, and the journal's own tables.
 *
 * The journal lives in the URL's database, beside the consumers' cursors:
 *   sqlnotify_journal    id (AUTO_INCREMENT), channel, payload, created_at (UTC)
 *   sqlnotify_consumers  one row per durable consumer: pos, pending, low, last_seen
 *   sqlnotify_pruned     the id below which pruning may have removed rows
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

static int add_row(sn_result *out, const char *kind, const char *a, const char *b, const char *n)
{
    sn_value *row = sn_result_row(out);
    if (row == NULL)
        return -1;
    const char *v[4] = {kind, a, b, n};
    for (int i = 0; i < 4; i++)
        if (v[i] && sn_value_text(&row[i], v[i], strlen(v[i])) < 0)
            return -1;
    return 0;
}

/* Same bytes: information_schema compares names without regard to case. */
static int same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

int my_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err, size_t errlen)
{
    sn_result *t = NULL, *cols = NULL, *keys = NULL;
    sn_result *r = sn_result_new(4);
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
    if (add_row(r, "table", schema, table, type && strcmp(type, "VIEW") == 0 ? "view" : NULL) < 0)
        goto oom;
    if (my_query(c,
                 "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, ORDINAL_POSITION FROM information_schema.COLUMNS"
                 " WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                 2, args, &cols, err, errlen) < 0)
        goto done;
    for (int i = 0; i < cols->nrows; i++) {
        char pos[24];
        snprintf(pos, sizeof pos, "%lld", num(cols, i, 3));
        if (same(cell(cols, i, 0), table) && add_row(r, "column", cell(cols, i, 1), cell(cols, i, 2), pos) < 0)
            goto oom;
    }
    /* Keys: the primary key, then unique indexes on whole columns (no prefix, no expression). */
    if (my_query(c,
                 "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME, SEQ_IN_INDEX,"
                 " SUM(SUB_PART IS NOT NULL OR COLUMN_NAME IS NULL) OVER (PARTITION BY INDEX_NAME)"
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
        if (add_row(r, pk ? "pk" : "unique", col, pk ? NULL : index, pos) < 0)
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
    my_sbuf b = {0};
    int rc = 0;
    /* created_at is UTC whatever the writer's time_zone, and has no year-2038 limit. */
    my_sb_addf(&b,
               "CREATE TABLE IF NOT EXISTS %s ("
               " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
               " channel VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
               " payload LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
               " created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))"
               ") ENGINE=InnoDB COMMENT='sqlnotify: the change journal its triggers write'",
               c->journal);
    if (first_id > 1)
        my_sb_addf(&b, " AUTO_INCREMENT = %lld", (long long)first_id);
    rc = b.oom ? -1 : my_exec(c, c->q, b.s, b.len, NULL, err, errlen);
    b.len = 0;
    my_sb_addf(&b,
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
        rc = b.oom ? -1 : my_exec(c, c->q, b.s, b.len, NULL, err, errlen);
    /* tables made by earlier versions: the column added (one that is there already, 1060,
     * is fine; MySQL has no ADD COLUMN IF NOT EXISTS) */
    b.len = 0;
    my_sb_addf(&b, "ALTER TABLE %s ADD COLUMN retention DOUBLE NULL", c->consumers);
    if (rc == 0 && !b.oom && my_exec(c, c->q, b.s, b.len, NULL, err, errlen) < 0 && mysql_errno(c->q) != 1060)
        rc = -1;
    b.len = 0;
    my_sb_addf(&b,
               "CREATE TABLE IF NOT EXISTS %s (id TINYINT NOT NULL PRIMARY KEY, below BIGINT NOT NULL)"
               " ENGINE=InnoDB COMMENT='sqlnotify: journal rows below this id may have been pruned'",
               c->pruned);
    if (rc == 0)
        rc = b.oom ? -1 : my_exec(c, c->q, b.s, b.len, NULL, err, errlen);
    /* the channels each consumer reads (its captures', and the plain ones an older release's
     * triggers wrote), so that its lag counts its own tables' rows only */
    b.len = 0;
    my_sb_add(&b, "CREATE TABLE IF NOT EXISTS ");
    my_sb_qname(&b, c->p.db, MY_READS);
    my_sb_add(&b, " (consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
                  " channel VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,"
                  " PRIMARY KEY (consumer, channel)) ENGINE=InnoDB"
                  " COMMENT='sqlnotify: the channels each durable consumer reads'");
    if (rc == 0)
        rc = b.oom ? -1 : my_exec(c, c->q, b.s, b.len, NULL, err, errlen);
    if (b.oom)
        sn_seterr(err, errlen, "out of memory");
    else if (rc < 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        sn_seterr(err, errlen, "cannot create the journal tables in database \"%s\": %s", c->p.db, why);
    }
    my_sb_free(&b);
    c->journal_ok = rc == 0;
    return rc;
}
