/*
 * query.c — notify() on the control connection (sent at once, outside any transaction
 * the user opened with query()) and query() on the user's own connection.
 */
#include "pg.h"

#include <math.h>

static int cell_from_pg(sn_value *v, const PGresult *res, int row, int col, int typed)
{
    const char *s = PQgetvalue(res, row, col);
    if (PQgetisnull(res, row, col))
        return 0; /* the row starts as SN_NULL */
    switch (typed ? PQftype(res, col) : 25) {
    case 16: /* bool */
        v->type = SN_BOOL;
        v->i = s[0] == 't';
        return 0;
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
        v->type = SN_INT;
        v->i = strtoll(s, NULL, 10);
        return 0;
    case 700: /* float4 */
    case 701: /* float8 */
        v->type = SN_FLOAT;
        v->d = strtod(s, NULL); /* also reads "NaN", "Infinity", "-Infinity" */
        return 0;
    default:
        return sn_value_text(v, s, (size_t)PQgetlength(res, row, col));
    }
}

/* A PGresult as an sn_result: typed by column OID, or every cell as text. */
sn_result *pg_result_copy(const PGresult *res, int typed)
{
    int nc = PQnfields(res), nr = PQntuples(res);
    sn_result *r = sn_result_new(nc);
    if (r == NULL)
        return NULL;
    for (int col = 0; col < nc; col++)
        if (sn_result_name(r, col, PQfname(res, col)) < 0)
            goto oom;
    for (int row = 0; row < nr; row++) {
        sn_value *v = sn_result_row(r);
        if (v == NULL)
            goto oom;
        for (int col = 0; col < nc; col++)
            if (cell_from_pg(&v[col], res, row, col, typed) < 0)
                goto oom;
    }
    return r;
oom:
    sn_result_free(r);
    return NULL;
}

int pg_notify(sn_conn *c, const char *channel, const char *payload, size_t len, int overflow, char *err,
              size_t errlen)
{
    char state[6] = "";
    if (len > PG_MAX_PAYLOAD && !overflow) {
        sn_seterr(err, errlen, "payload of %zu bytes is over the %d-byte notification limit", len, PG_MAX_PAYLOAD);
        return -1;
    }
    if (memchr(payload, '\0', len)) {
        sn_seterr(err, errlen, "payload contains a NUL byte");
        return -1;
    }
    char *text = malloc(len + 1); /* libpq wants NUL-terminated text parameters */
    if (text == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    memcpy(text, payload, len);
    text[len] = '\0';
    const char *vals[2] = {channel, text};
    PGresult *res = NULL;
    if (len <= PG_MAX_PAYLOAD) {
        res = pg_exec(c, &c->ctl, "SELECT pg_catalog.pg_notify($1, $2)", 2, vals, PG_RETRY, NULL, err, errlen);
    } else {
        /* Park it where the channel's listeners fetch from, and send its id: one statement. */
        const char *schema = pg_route_get(c, channel);
        for (int round = 0; round < 2 && res == NULL; round++) {
            pg_sbuf b = {0};
            if (pg_overflow_ensure(c, schema, err, errlen) < 0)
                break;
            pg_sb_add(&b, "WITH r AS (INSERT INTO ");
            pg_sb_qname(&b, c->ctl.conn, schema, PG_OVERFLOW_TABLE);
            pg_sb_add(&b, " (channel, payload) VALUES ($1::text, $2::text::jsonb) RETURNING id)"
                          " SELECT pg_catalog.pg_notify($1::text, '" PG_OVERFLOW_REF "' || r.id) FROM r");
            if (b.fail) {
                sn_seterr(err, errlen, "%s", b.fail);
                free(b.p);
                break;
            }
            res = pg_exec(c, &c->ctl, b.p, 2, vals, 0, state, err, errlen);
            free(b.p);
            if (res == NULL && strcmp(state, "42P01") != 0)
                break;
            pg_overflow_forget(c, schema); /* the table went away: create it again */
        }
    }
    free(text);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

int pg_query(sn_conn *c, const char *sql, int nparams, const sn_value *params, sn_result **out, char *err,
             size_t errlen)
{
    int rc = -1;
    size_t np = nparams > 0 ? (size_t)nparams : 0;
    const char **vals = calloc(np ? np : 1, sizeof *vals);
    char(*num)[40] = malloc((np ? np : 1) * sizeof *num);
    *out = NULL;
    if (vals == NULL || num == NULL) {
        sn_seterr(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        const sn_value *v = &params[i];
        switch (v->type) {
        case SN_INT:
            snprintf(num[i], sizeof num[i], "%lld", (long long)v->i);
            vals[i] = num[i];
            break;
        case SN_FLOAT:
            if (isnan(v->d))
                snprintf(num[i], sizeof num[i], "NaN");
            else if (isinf(v->d))
                snprintf(num[i], sizeof num[i], "%sInfinity", v->d < 0 ? "-" : "");
            else
                snprintf(num[i], sizeof num[i], "%.17g", v->d);
            vals[i] = num[i];
            break;
        case SN_BOOL:
            vals[i] = v->i ? "true" : "false";
            break;
        case SN_TEXT:
            vals[i] = v->s ? v->s : "";
            break;
        default:
            vals[i] = NULL;
            break;
        }
    }
    /* Repeated once on a fresh connection when the old one was found lost, unless the user
     * had a transaction open on it (that transaction is gone: say so instead). */
    PGresult *res = pg_exec(c, &c->user, sql, nparams, vals, PG_RETRY, NULL, err, errlen);
    if (res == NULL)
        goto done;
    ExecStatusType st = PQresultStatus(res);
    *out = st == PGRES_TUPLES_OK || st == PGRES_SINGLE_TUPLE ? pg_result_copy(res, 1) : sn_result_new(0);
    PQclear(res);
    if (*out == NULL)
        sn_seterr(err, errlen, "out of memory");
    else
        rc = 0;
done:
    free(vals);
    free(num);
    return rc;
}
