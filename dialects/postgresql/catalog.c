/*
 * catalog.c — describe(): a table's columns and keys from the live catalog, on the
 * control connection (catalog reads only: no lock on the table).
 */
#include "pg.h"

/* A built-in type by name, resolved when the statement is parsed. */
#define PG_T(name) "'pg_catalog." name "'::pg_catalog.regtype"

/* Names compare as text (a name longer than 63 bytes must not match its truncation); the
 * ::name comparison beside it lets the catalog indexes be used. Views and materialized
 * views are described too, marked "view", so the caller can say why they cannot be
 * watched. Keys: every valid unique index without a WHERE clause or expressions (a
 * UNIQUE constraint is one of them; so is the primary key), each column of a unique key
 * marked "nullable" where it can hold NULL. A column of a domain is
 * described by the type under it (the decoder and the filters go by what the value is: a
 * domain over numeric carries every digit). Each column's class (src/dialect.h) comes from
 * that type: this is the one place PostgreSQL's types are sorted into classes. */
static const char describe_sql[] =
    "WITH t AS ("
    " SELECT c.oid, n.nspname::text AS nsp, c.relname::text AS rel, c.relkind"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname = $2::text::name AND c.relname::text = $2::text"
    "   AND c.relkind IN ('r', 'p', 'v', 'm')"
    "   AND CASE WHEN $1::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)"
    "            ELSE n.nspname::text = $1::text END"
    "), k AS ("
    " SELECT i.indexrelid, i.indisprimary, x.attnum, x.ord"
    " FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid"
    " CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS x(attnum, ord)"
    " WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
    "   AND x.ord <= i.indnkeyatts"
    ")"
    " SELECT kind, a, b, n, class FROM ("
    "  SELECT 0 AS s1, ''::text AS s2, 0::bigint AS s3, 'table'::text AS kind, t.nsp AS a, t.rel AS b,"
    "         CASE WHEN t.relkind IN ('v', 'm') THEN 'view' END AS n, NULL::text AS class FROM t"
    "  UNION ALL"
    "  SELECT 1, '', a.attnum, 'column', a.attname::text, bt.name, a.attnum::text, bt.class"
    "  FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid"
    "  LEFT JOIN LATERAL ("
    "   WITH RECURSIVE b(id, m) AS (SELECT a.atttypid, a.atttypmod UNION ALL SELECT ty.typbasetype,"
    "     ty.typtypmod FROM b JOIN pg_catalog.pg_type ty ON ty.oid = b.id WHERE ty.typtype = 'd')"
    "   SELECT pg_catalog.format_type(b.id, b.m) AS name, CASE"
    "     WHEN b.id IN (" PG_T("int2") ", " PG_T("int4") ", " PG_T("int8") ") THEN 'integer'"
    "     WHEN b.id IN (" PG_T("float4") ", " PG_T("float8") ") THEN 'float'"
    /* numeric(p, s): the typmod holds s in its low 11 bits, two's complement since
     * PostgreSQL 15 (a negative scale prints no fraction digits) */
    "     WHEN b.id = " PG_T("numeric") " THEN 'decimal' || CASE WHEN b.m >= 4"
    "       THEN '(' || GREATEST((((b.m - 4) & 2047) # 1024) - 1024, 0) || ')' ELSE '' END"
    "     WHEN b.id = " PG_T("bool") " THEN 'boolean'"
    "     WHEN b.id IN (" PG_T("text") ", " PG_T("varchar") ", " PG_T("bpchar") ", " PG_T("name") ", "
    PG_T("uuid") ") THEN 'text'"
    "     WHEN b.id = " PG_T("bytea") " THEN 'bytes'"
    "     WHEN b.id IN (" PG_T("json") ", " PG_T("jsonb") ") THEN 'json'"
    "     ELSE 'other' END AS class"
    "   FROM b JOIN pg_catalog.pg_type ty ON ty.oid = b.id WHERE ty.typtype <> 'd') bt ON true"
    "  WHERE a.attnum > 0 AND NOT a.attisdropped"
    "  UNION ALL"
    "  SELECT 2, '', k.ord, 'pk', a.attname::text, NULL, k.ord::text, NULL"
    "  FROM t JOIN k ON k.indisprimary"
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
    "  UNION ALL"
    "  SELECT 3, ic.relname::text, k.ord, 'unique', a.attname::text, ic.relname::text, k.ord::text,"
    "         CASE WHEN NOT a.attnotnull THEN 'nullable' END"
    "  FROM t JOIN k ON true JOIN pg_catalog.pg_class ic ON ic.oid = k.indexrelid"
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
    " ) s ORDER BY s1, s2 COLLATE \"C\", s3";

int pg_describe(sn_conn *c, const char *schema, const char *table, sn_result **out, char *err,
                size_t errlen)
{
    const char *vals[2] = {schema, table};
    *out = NULL;
    PGresult *res = pg_exec(c, &c->ctl, describe_sql, 2, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        return -1;
    *out = pg_result_copy(res, 0);
    PQclear(res);
    if (*out == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}
