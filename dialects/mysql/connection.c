/*
 * connection.c — the MySQL/MariaDB driver's connections: the URL, the blocking
 * connection for our own statements (catalog, triggers, journal set-up, notify), the
 * user's n:query session, and the dialect descriptor, the only symbol this folder exports.
 *
 * URL: mysql://user:pass@host:port/db?param=value&... (mariadb:// the same; the runtime has
 * removed any "+driver" suffix). Percent-escapes are decoded. Parameters: unix_socket,
 * connect_timeout (seconds, default 10), read_timeout (seconds: the deadline of each of our
 * statements and of n:query, default 30), ssl (true: refuse a connection without TLS),
 * ssl_ca, ssl_cert, ssl_key, ssl_verify_server_cert, charset (utf8mb4 only: every session
 * is utf8mb4). Anything else is refused by name. The password never leaves this file.
 */
#include "my.h"

#include <ctype.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CONNECT_TIMEOUT 10
#define DEFAULT_READ_TIMEOUT 30
#define DEFAULT_CONSUMER_RETENTION (7 * 86400.0)

/* Every session of ours: a known sql_mode (the trigger bodies are parsed under it and keep
 * it), UTC, read committed (the reader's locking probes must take no gap locks), and lock
 * waits that end. */
static const char *const session_sql[] = {
    "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION',"
    " SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = 5, SESSION lock_wait_timeout = " MY_LOCK_WAIT ","
    " SESSION group_concat_max_len = 1048576",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    NULL,
};

double my_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int my_conn_lost(unsigned e)
{
    /* client errors (2000-2999) but "commands out of sync", which is ours; server shutdown,
     * a killed connection, MariaDB's idle disconnect */
    return (e >= 2000 && e < 3000 && e != 2014) || e == 1053 || e == 1927 || e == 4031 || e == 1152;
}

/* ===== the URL ===== */

static char *decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static int number(const char *name, const char *v, unsigned *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno || n == 0 || n > 86400) {
        sn_seterr(err, errlen, "MySQL URL parameter %s must be a whole number of seconds from 1 to 86400, got \"%s\"",
                  name, v);
        return -1;
    }
    *out = (unsigned)n;
    return 0;
}

static int boolean(const char *name, const char *v, int *out, char *err, size_t errlen)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        *out = 1;
    else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        *out = 0;
    else {
        sn_seterr(err, errlen, "MySQL URL parameter %s must be true or false, got \"%s\"", name, v);
        return -1;
    }
    return 0;
}

static int param(my_params *p, const char *k, char *v, char *err, size_t errlen)
{
    char **slot = strcmp(k, "unix_socket") == 0 ? &p->socket
                  : strcmp(k, "ssl_ca") == 0    ? &p->ssl_ca
                  : strcmp(k, "ssl_cert") == 0  ? &p->ssl_cert
                  : strcmp(k, "ssl_key") == 0   ? &p->ssl_key
                                                : NULL;
    if (slot) {
        free(*slot);
        *slot = v;
        return 0;
    }
    int rc;
    if (strcmp(k, "connect_timeout") == 0)
        rc = number(k, v, &p->connect_timeout, err, errlen);
    else if (strcmp(k, "read_timeout") == 0)
        rc = number(k, v, &p->read_timeout, err, errlen);
    else if (strcmp(k, "ssl") == 0)
        rc = boolean(k, v, &p->ssl, err, errlen);
    else if (strcmp(k, "ssl_verify_server_cert") == 0)
        rc = boolean(k, v, &p->ssl_verify, err, errlen);
    else if (strcmp(k, "charset") == 0) {
        rc = strcmp(v, "utf8mb4") == 0 || strcmp(v, "utf8") == 0 ? 0 : -1;
        if (rc < 0)
            sn_seterr(err, errlen, "MySQL URL parameter charset must be utf8mb4 (every session is), got \"%s\"", v);
    } else {
        sn_seterr(err, errlen,
                  "unknown MySQL URL parameter \"%s\" (known: unix_socket, connect_timeout, read_timeout, ssl, ssl_ca,"
                  " ssl_cert, ssl_key, ssl_verify_server_cert, charset)",
                  k);
        rc = -1;
    }
    free(v);
    return rc;
}

static void params_free(my_params *p)
{
    free(p->host);
    free(p->user);
    if (p->pass) { /* do not leave it in freed memory */
        memset(p->pass, 0, strlen(p->pass));
        free(p->pass);
    }
    free(p->db);
    free(p->socket);
    free(p->ssl_ca);
    free(p->ssl_cert);
    free(p->ssl_key);
    memset(p, 0, sizeof *p);
}

#define DUP(field, s, n)                                                                                              \
    do {                                                                                                              \
        if (((field) = decode((s), (n))) == NULL)                                                                     \
            goto oom;                                                                                                 \
    } while (0)

static int parse_url(const char *url, my_params *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    p->read_timeout = DEFAULT_READ_TIMEOUT;
    const char *s = strstr(url, "://");
    s = s ? s + 3 : url;
    size_t alen = strcspn(s, "/?");
    const char *at = NULL;
    for (const char *q = s; q < s + alen; q++)
        if (*q == '@')
            at = q; /* the last one: a password may hold an unescaped '@' */
    const char *hp = s;
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        DUP(p->user, s, (size_t)((colon ? colon : at) - s));
        if (colon)
            DUP(p->pass, colon + 1, (size_t)(at - colon - 1));
        hp = at + 1;
    }
    const char *hend = s + alen, *portp = NULL;
    if (*hp == '[') { /* [v6]:port */
        const char *close = memchr(hp, ']', (size_t)(hend - hp));
        if (close == NULL) {
            sn_seterr(err, errlen, "bad MySQL URL: an IPv6 host without its closing ']'");
            return -1;
        }
        DUP(p->host, hp + 1, (size_t)(close - hp - 1));
        if (close + 1 < hend && close[1] == ':')
            portp = close + 2;
    } else {
        const char *colon = memchr(hp, ':', (size_t)(hend - hp));
        DUP(p->host, hp, (size_t)((colon ? colon : hend) - hp));
        if (colon)
            portp = colon + 1;
    }
    if (portp && portp < hend) {
        char buf[16];
        size_t n = (size_t)(hend - portp);
        char *end;
        if (n >= sizeof buf) {
            sn_seterr(err, errlen, "bad MySQL URL: the port is not a number");
            return -1;
        }
        memcpy(buf, portp, n);
        buf[n] = '\0';
        long port = strtol(buf, &end, 10);
        if (*end || port <= 0 || port > 65535) {
            sn_seterr(err, errlen, "bad MySQL URL: the port \"%s\" is not a number from 1 to 65535", buf);
            return -1;
        }
        p->port = (unsigned)port;
    }
    const char *rest = s + alen;
    if (*rest == '/') {
        size_t n = strcspn(rest + 1, "?");
        if (n > 0)
            DUP(p->db, rest + 1, n);
        rest += 1 + n;
    }
    if (*rest == '?') {
        const char *q = rest + 1;
        while (*q) {
            size_t n = strcspn(q, "&");
            const char *eq = memchr(q, '=', n);
            char *k, *v;
            DUP(k, q, (size_t)((eq ? eq : q + n) - q));
            v = decode(eq ? eq + 1 : "", eq ? (size_t)(q + n - eq - 1) : 0);
            if (v == NULL) {
                free(k);
                goto oom;
            }
            int rc = *k ? param(p, k, v, err, errlen) : (free(v), 0);
            free(k);
            if (rc < 0)
                return -1;
            q += n + (q[n] == '&');
        }
    }
    return 0;
oom:
    sn_seterr(err, errlen, "out of memory");
    return -1;
}

static void set_target(sn_conn *c)
{
    const my_params *p = &c->p;
    if (p->socket && (p->host == NULL || *p->host == '\0' || strcmp(p->host, "localhost") == 0))
        snprintf(c->target, sizeof c->target, "database \"%s\" on socket %s", p->db ? p->db : "", p->socket);
    else
        snprintf(c->target, sizeof c->target, "database \"%s\" on %s:%u", p->db ? p->db : "",
                 p->host && *p->host ? p->host : "localhost", p->port ? p->port : 3306);
}

/* ===== sessions ===== */

/* A configured, unconnected handle; ours gets our session settings. */
static MYSQL *new_handle(sn_conn *c, int nonblocking, int ours)
{
    MYSQL *m = mysql_init(NULL);
    if (m == NULL)
        return NULL;
    const my_params *p = &c->p;
    unsigned zero = 0;
    mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &p->connect_timeout);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &p->read_timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &p->read_timeout);
    mysql_options(m, MYSQL_OPT_LOCAL_INFILE, &zero);
    for (int i = 0; ours && session_sql[i]; i++)
        mysql_options(m, MYSQL_INIT_COMMAND, session_sql[i]);
    if (p->ssl_ca)
        mysql_options(m, MYSQL_OPT_SSL_CA, p->ssl_ca);
    if (p->ssl_cert)
        mysql_options(m, MYSQL_OPT_SSL_CERT, p->ssl_cert);
    if (p->ssl_key)
        mysql_options(m, MYSQL_OPT_SSL_KEY, p->ssl_key);
    if (p->ssl) {
        my_bool on = 1;
        mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on);
    }
    if (p->ssl_verify) {
        my_bool on = 1;
        mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
    }
    if (nonblocking)
        mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    return m;
}

static MYSQL *connect_as(sn_conn *c, int nonblocking, int ours, char *err, size_t errlen)
{
    MYSQL *m = new_handle(c, nonblocking, ours);
    if (m == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    if (nonblocking)
        return m; /* the reader connects it on the loop */
    const my_params *p = &c->p;
    if (mysql_real_connect(m, p->host && *p->host ? p->host : NULL, p->user, p->pass, p->db, p->port, p->socket, 0) ==
        NULL) {
        sn_seterr(err, errlen, "cannot connect to %s: %s", c->target, mysql_error(m));
        mysql_close(m);
        return NULL;
    }
    /* Our own statements survive a server restart; the session is set up again. */
    my_bool on = 1;
    mysql_options(m, MYSQL_OPT_RECONNECT, &on);
    return m;
}

MYSQL *my_connect(sn_conn *c, int nonblocking, char *err, size_t errlen)
{
    return connect_as(c, nonblocking, 1, err, errlen);
}

/* n:query's session is the user's: the server's defaults for sql_mode, time_zone and isolation. */
MYSQL *my_connect_user(sn_conn *c, char *err, size_t errlen) { return connect_as(c, 0, 0, err, errlen); }

/* Run one statement; with res, keep its rows. 0, or -1 and err (the server's message). */
int my_exec(sn_conn *c, MYSQL *m, const char *sql, size_t len, MYSQL_RES **res, char *err, size_t errlen)
{
    (void)c;
    if (res)
        *res = NULL;
    if (mysql_real_query(m, sql, len) != 0) {
        sn_seterr(err, errlen, "%s", mysql_error(m));
        return -1;
    }
    MYSQL_RES *r = mysql_store_result(m);
    if (r == NULL && mysql_field_count(m) > 0) {
        sn_seterr(err, errlen, "%s", mysql_error(m));
        return -1;
    }
    if (res)
        *res = r;
    else
        mysql_free_result(r);
    return 0;
}

/* ===== n:query ===== */

static int is_int_type(enum enum_field_types t)
{
    return t == MYSQL_TYPE_TINY || t == MYSQL_TYPE_SHORT || t == MYSQL_TYPE_LONG || t == MYSQL_TYPE_INT24 ||
           t == MYSQL_TYPE_LONGLONG || t == MYSQL_TYPE_YEAR;
}

static int is_float_type(enum enum_field_types t) { return t == MYSQL_TYPE_FLOAT || t == MYSQL_TYPE_DOUBLE; }

/* One cell from text: integers and floats typed, the rest as bytes. */
static int text_cell(sn_value *v, const MYSQL_FIELD *f, const char *s, size_t len)
{
    if (s == NULL)
        return 0;
    if (is_int_type(f->type)) {
        char *end;
        errno = 0;
        long long n = strtoll(s, &end, 10);
        if (*end == '\0' && errno == 0) {
            v->type = SN_INT;
            v->i = n;
            return 0;
        }
    } else if (is_float_type(f->type)) {
        v->type = SN_FLOAT;
        v->d = strtod(s, NULL);
        return 0;
    }
    return sn_value_text(v, s, len);
}

static sn_result *result_head(MYSQL_FIELD *f, unsigned n)
{
    sn_result *r = sn_result_new((int)n);
    for (unsigned i = 0; r && i < n; i++)
        if (sn_result_name(r, (int)i, f[i].name) < 0) {
            sn_result_free(r);
            return NULL;
        }
    return r;
}

static int query_text(MYSQL *m, const char *sql, sn_result **out, char *err, size_t errlen)
{
    if (mysql_real_query(m, sql, strlen(sql)) != 0) {
        sn_seterr(err, errlen, "%s", mysql_error(m));
        return -1;
    }
    MYSQL_RES *res = mysql_store_result(m);
    if (res == NULL) {
        if (mysql_field_count(m) > 0) {
            sn_seterr(err, errlen, "%s", mysql_error(m));
            return -1;
        }
        *out = sn_result_new(0);
        return *out ? 0 : (sn_seterr(err, errlen, "out of memory"), -1);
    }
    unsigned nf = mysql_num_fields(res);
    MYSQL_FIELD *f = mysql_fetch_fields(res);
    sn_result *r = result_head(f, nf);
    MYSQL_ROW row;
    while (r && (row = mysql_fetch_row(res)) != NULL) {
        unsigned long *lens = mysql_fetch_lengths(res);
        sn_value *cells = sn_result_row(r);
        for (unsigned i = 0; cells && i < nf; i++)
            if (text_cell(&cells[i], &f[i], row[i], lens[i]) < 0)
                cells = NULL;
        if (cells == NULL) {
            sn_result_free(r);
            r = NULL;
        }
    }
    mysql_free_result(res);
    if (r == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return -1;
    }
    *out = r;
    return 0;
}

/* A prepared statement: the values travel as parameters, never in the SQL text. */
static int query_prepared(MYSQL *m, const char *sql, int nparams, const sn_value *params, sn_result **out, char *err,
                          size_t errlen)
{
    int rc = -1;
    sn_result *r = NULL;
    MYSQL_RES *meta = NULL;
    MYSQL_BIND *pb = calloc((size_t)nparams, sizeof *pb), *cb = NULL;
    unsigned long *lens = NULL;
    my_bool *nulls = NULL;
    int64_t *ints = NULL;
    double *dbls = NULL;
    char *empty = NULL;
    MYSQL_STMT *st = mysql_stmt_init(m);
    if (st == NULL || pb == NULL) {
        sn_seterr(err, errlen, "out of memory");
        goto done;
    }
    if (mysql_stmt_prepare(st, sql, strlen(sql)) != 0)
        goto stmt_error;
    if ((int)mysql_stmt_param_count(st) != nparams) {
        sn_seterr(err, errlen, "the statement has %lu ? placeholder(s) but %d parameter(s) were given",
                  mysql_stmt_param_count(st), nparams);
        goto done;
    }
    for (int i = 0; i < nparams; i++) {
        const sn_value *v = &params[i];
        switch (v->type) {
        case SN_BOOL:
        case SN_INT:
            pb[i].buffer_type = MYSQL_TYPE_LONGLONG;
            pb[i].buffer = (void *)&v->i;
            break;
        case SN_FLOAT:
            pb[i].buffer_type = MYSQL_TYPE_DOUBLE;
            pb[i].buffer = (void *)&v->d;
            break;
        case SN_TEXT:
            pb[i].buffer_type = MYSQL_TYPE_STRING;
            pb[i].buffer = v->s;
            pb[i].buffer_length = (unsigned long)v->len;
            break;
        default: pb[i].buffer_type = MYSQL_TYPE_NULL; break;
        }
    }
    if (mysql_stmt_bind_param(st, pb) != 0 || mysql_stmt_execute(st) != 0)
        goto stmt_error;
    meta = mysql_stmt_result_metadata(st);
    if (meta == NULL) {
        if (mysql_stmt_field_count(st) > 0)
            goto stmt_error;
        r = sn_result_new(0);
        rc = r ? 0 : (sn_seterr(err, errlen, "out of memory"), -1);
        goto done;
    }
    unsigned nf = mysql_num_fields(meta);
    MYSQL_FIELD *f = mysql_fetch_fields(meta);
    r = result_head(f, nf);
    cb = calloc(nf + 1, sizeof *cb);
    lens = calloc(nf + 1, sizeof *lens);
    nulls = calloc(nf + 1, sizeof *nulls);
    ints = calloc(nf + 1, sizeof *ints);
    dbls = calloc(nf + 1, sizeof *dbls);
    empty = malloc(1);
    if (!r || !cb || !lens || !nulls || !ints || !dbls || !empty) {
        sn_seterr(err, errlen, "out of memory");
        goto done;
    }
    for (unsigned i = 0; i < nf; i++) {
        int unsigned_big = f[i].type == MYSQL_TYPE_LONGLONG && (f[i].flags & UNSIGNED_FLAG);
        cb[i].length = &lens[i];
        cb[i].is_null = &nulls[i];
        if (is_int_type(f[i].type) && !unsigned_big) {
            cb[i].buffer_type = MYSQL_TYPE_LONGLONG;
            cb[i].buffer = &ints[i];
        } else if (is_float_type(f[i].type)) {
            cb[i].buffer_type = MYSQL_TYPE_DOUBLE;
            cb[i].buffer = &dbls[i];
        } else { /* fetched by length below */
            cb[i].buffer_type = MYSQL_TYPE_STRING;
            cb[i].buffer = empty;
            cb[i].buffer_length = 0;
        }
    }
    if (mysql_stmt_bind_result(st, cb) != 0 || mysql_stmt_store_result(st) != 0)
        goto stmt_error;
    for (;;) {
        int fr = mysql_stmt_fetch(st);
        if (fr == MYSQL_NO_DATA)
            break;
        if (fr == 1)
            goto stmt_error;
        sn_value *cells = sn_result_row(r);
        if (cells == NULL) {
            sn_seterr(err, errlen, "out of memory");
            goto done;
        }
        for (unsigned i = 0; i < nf; i++) {
            if (nulls[i])
                continue;
            if (cb[i].buffer_type == MYSQL_TYPE_LONGLONG) {
                cells[i].type = SN_INT;
                cells[i].i = ints[i];
            } else if (cb[i].buffer_type == MYSQL_TYPE_DOUBLE) {
                cells[i].type = SN_FLOAT;
                cells[i].d = dbls[i];
            } else {
                char *buf = malloc(lens[i] + 1);
                MYSQL_BIND one = {0};
                unsigned long got = 0;
                one.buffer_type = MYSQL_TYPE_STRING;
                one.buffer = buf;
                one.buffer_length = lens[i] + 1;
                one.length = &got;
                if (buf == NULL || mysql_stmt_fetch_column(st, &one, i, 0) != 0) {
                    free(buf);
                    sn_seterr(err, errlen, "out of memory");
                    goto done;
                }
                buf[lens[i]] = '\0';
                cells[i].type = SN_TEXT;
                cells[i].s = buf;
                cells[i].len = lens[i];
                if (f[i].type == MYSQL_TYPE_LONGLONG) { /* unsigned: an integer where it fits */
                    char *end;
                    errno = 0;
                    long long n = strtoll(buf, &end, 10);
                    if (*end == '\0' && errno == 0) {
                        free(buf);
                        cells[i].s = NULL;
                        cells[i].type = SN_INT;
                        cells[i].i = n;
                    }
                }
            }
        }
    }
    rc = 0;
    goto done;
stmt_error:
    sn_seterr(err, errlen, "%s", mysql_stmt_error(st));
done:
    if (rc != 0) {
        sn_result_free(r);
        r = NULL;
    }
    *out = r;
    if (meta)
        mysql_free_result(meta);
    if (st)
        mysql_stmt_close(st);
    free(pb);
    free(cb);
    free(lens);
    free(nulls);
    free(ints);
    free(dbls);
    free(empty);
    return rc;
}

/* A catalog query with text parameters (NULL: SQL NULL), on our own connection. */
int my_query(sn_conn *c, const char *sql, int n, const char *const *texts, sn_result **out, char *err, size_t errlen)
{
    sn_value v[16];
    if (n > 16) {
        sn_seterr(err, errlen, "too many parameters");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        memset(&v[i], 0, sizeof v[i]);
        if (texts[i]) {
            v[i].type = SN_TEXT;
            v[i].s = (char *)texts[i];
            v[i].len = strlen(texts[i]);
        }
    }
    *out = NULL;
    return query_prepared(c->q, sql, n, v, out, err, errlen);
}

static int d_query(sn_conn *c, const char *sql, int nparams, const sn_value *params, sn_result **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (c->uq == NULL && (c->uq = my_connect_user(c, err, errlen)) == NULL)
        return -1;
    if (nparams == 0)
        return query_text(c->uq, sql, out, err, errlen);
    return query_prepared(c->uq, sql, nparams, params, out, err, errlen);
}

/* ===== notify ===== */

static int d_notify(sn_conn *c, const char *channel, const char *payload, size_t len, int overflow, char *err,
                    size_t errlen)
{
    (void)overflow; /* the journal holds any size: there is no overflow table */
    if (my_journal_ensure(c, err, errlen) < 0)
        return -1;
    sn_sbuf b = {0};
    sn_sb_addf(&b, "INSERT INTO %s (channel, payload) VALUES (", c->journal);
    my_sb_lit(&b, channel, strlen(channel));
    sn_sb_add(&b, ", ");
    my_sb_lit(&b, payload, len);
    sn_sb_add(&b, ")");
    int rc = b.fail ? (sn_seterr(err, errlen, "out of memory"), -1) : my_exec(c, c->q, b.p, b.len, NULL, err, errlen);
    sn_sb_free(&b);
    return rc;
}

/* ===== open and close ===== */

static sn_conn *d_open(const char *url, struct ev_loop *loop, const sn_sink *sink, const sn_options *opt, char *err,
                       size_t errlen)
{
    sn_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        sn_seterr(err, errlen, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->sink = *sink;
    c->r.acked = -1;
    if (parse_url(url, &c->p, err, errlen) < 0)
        goto fail;
    set_target(c);
    if (c->p.db == NULL) {
        sn_seterr(err, errlen, "the MySQL URL names no database (mysql://user@host:3306/db): the journal lives there");
        goto fail;
    }
    c->retention = opt && opt->retention > 0 ? opt->retention : 3600;
    c->consumer_retention = opt && opt->consumer_retention > 0 ? opt->consumer_retention : DEFAULT_CONSUMER_RETENTION;
    c->start_beginning = opt ? opt->start_at_beginning : 0;
    if (opt && opt->consumer && (c->consumer = strdup(opt->consumer)) == NULL) {
        sn_seterr(err, errlen, "out of memory");
        goto fail;
    }
    if (c->consumer) {
        if (gethostname(c->host, sizeof c->host - 1) != 0 || !*c->host)
            strcpy(c->host, "?");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t seed[3] = {(uint64_t)ts.tv_sec, (uint64_t)ts.tv_nsec, (uint64_t)getpid()};
        c->member = (int64_t)(sn_hash64(seed, sizeof seed, (uint64_t)(uintptr_t)c) & INT64_MAX);
    }
    sn_sbuf b = {0};
    my_sb_qname(&b, c->p.db, MY_JOURNAL);
    c->journal = b.p;
    memset(&b, 0, sizeof b);
    my_sb_qname(&b, c->p.db, MY_CONSUMERS);
    c->consumers = b.p;
    memset(&b, 0, sizeof b);
    my_sb_qname(&b, c->p.db, MY_PRUNED);
    c->pruned = b.p;
    if (!c->journal || !c->consumers || !c->pruned) {
        sn_seterr(err, errlen, "out of memory");
        goto fail;
    }
    if ((c->q = my_connect(c, 0, err, errlen)) == NULL)
        goto fail;
    c->mariadb = strstr(mysql_get_server_info(c->q), "MariaDB") != NULL;
    return c;
fail:
    params_free(&c->p);
    free(c->consumer);
    free(c->journal);
    free(c->consumers);
    free(c->pruned);
    free(c);
    return NULL;
}

static void d_close(sn_conn *c)
{
    if (c == NULL)
        return;
    if (c->in_deliver) { /* from a handler: the reader finishes the close when deliver returns */
        c->closing = 1;
        return;
    }
    my_reader_close(c);
    my_forget_all(c);
    if (c->q)
        mysql_close(c->q);
    if (c->uq)
        mysql_close(c->uq);
    params_free(&c->p);
    free(c->consumer);
    free(c->journal);
    free(c->consumers);
    free(c->pruned);
    free(c);
}

/* reader.c calls this once a close asked for from inside deliver can be done. */
void my_conn_free(sn_conn *c)
{
    c->in_deliver = 0;
    d_close(c);
}

static const char *d_target(sn_conn *c) { return c->target; }

/* A durable trigger that is in is kept for the reader to look for: MySQL has no DDL hook, so
 * a table made again under it would go uncaptured until the notifier's next check (reader.c). */
static int d_install(sn_conn *c, const sn_watch *w, int replace_changed, char *err, size_t errlen)
{
    int rc = my_install(c, w, replace_changed, err, errlen);
    if (rc != SN_INSTALL_ERROR && rc != SN_INSTALL_BUSY && c->consumer && my_keep(c, w) < 0) {
        sn_seterr(err, errlen, "out of memory");
        return SN_INSTALL_ERROR;
    }
    return rc;
}

static const char *const schemes[] = {"mysql", "mariadb", NULL};

static void d_status(sn_conn *c, double *down, int *shares)
{
    *down = c->r.down_since > 0 ? my_now() - c->r.down_since : 0;
    *shares = -1;
}

const sn_dialect sn_mysql_dialect = {
    .name = "mysql",
    .schemes = schemes,
    .max_payload = 0,
    .quote = '`',
    .statements = mysql_statements_sql,
    .open = d_open,
    .close = d_close,
    .target = d_target,
    .describe = my_describe,
    .install = d_install,
    .uninstall = my_uninstall,
    .drop = my_drop,
    .list = my_list,
    .verify = my_verify,
    .row_sql = my_row_sql,
    .listen = my_listen,
    .unlisten = my_unlisten,
    .stop = my_stop,
    .notify = d_notify,
    .ack = my_ack,
    .hold = my_hold,
    .consumers = my_consumers,
    .drop_consumer = my_drop_consumer,
    .query = d_query,
    .status = d_status,
};
