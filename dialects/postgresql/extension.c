/*
 * extension.c — whether a watch's trigger calls a C function of the server extension
 * sqlnotify_capture (pgext/) instead of a plpgsql one: the extension's version and its
 * functions probed once per connection, a watch that fits them (every column of a type they
 * render), and what they are called with.
 */
#include "triggers.h"


/* The C function of need (CAP_*) cannot run here: never used, nor kept where a trigger of
 * this watch calls it (state_of); said once, at warning level. */
void pg_capture_broken(sn_conn *c, int need, const char *why)
{
    const char *fn = need == CAP_CAPTURE ? CAPTURE_FN : NOTIFY_FN;
    if (!(c->capture_broken & need))
        sn_logf(&c->sink, SN_LOG_WARN, "%s triggers in plpgsql: %s() %s", need == CAP_CAPTURE ? "durable" : "live",
                fn, why);
    c->capture_broken |= need;
    if (c->capture > 0 && !(c->capture &= ~need))
        c->capture = -1;
}

#define REPLACED_WHY(fn, sym)                                                                                      \
    "is not the extension's C function any more (replaced by hand?); a superuser may put it back: CREATE OR "     \
    "REPLACE FUNCTION " fn "() RETURNS trigger LANGUAGE c AS '$libdir/sqlnotify_capture', '" sym "'"

/* The C trigger this connection's watches would call: capture() for durable ones, notify() for live. */
int pg_cap_need(const sn_conn *c)
{
    return c->consumer ? CAP_CAPTURE : CAP_NOTIFY;
}

/* The CAP_* of a C function's name (CAPTURE_FN or NOTIFY_FN). */
int pg_cap_of(const char *fn)
{
    return strcmp(fn, CAPTURE_FN) == 0 ? CAP_CAPTURE : CAP_NOTIFY;
}

/* The C function of need was replaced by hand (CAPTURE_ITSELF no longer holds). */
void pg_capture_replaced(sn_conn *c, int need)
{
    pg_capture_broken(c, need, need == CAP_CAPTURE ? REPLACED_WHY(CAPTURE_FN, "capture")
                                                 : REPLACED_WHY(NOTIFY_FN, "capture_notify"));
}

/* Whether the server's library has the C function fn: calling it outside a trigger loads it
 * and fails with its own message (1). A library older than the extension's catalog (an older
 * build installed over this one) cannot load it (0: broken, and every write through a
 * trigger calling it would fail the same way). Anything else (a lost connection, a timeout)
 * tells nothing (-1). */
static int capture_probe(sn_conn *c, const char *fn)
{
    char e[512] = "", sql[64], why[600];
    snprintf(sql, sizeof sql, "SELECT %s()", fn);
    PGresult *r = pg_exec(c, &c->ctl, sql, 0, NULL, PG_RETRY, NULL, e, sizeof e);
    int ran = r != NULL;
    PQclear(r);
    if (strstr(e, "() runs only as a trigger") != NULL)
        return 1;
    if (!ran && strstr(e, "could not find function") == NULL && strstr(e, "could not access file") == NULL &&
        strstr(e, "could not load library") == NULL) {
        sn_logf(&c->sink, SN_LOG_INFO, "%s triggers in plpgsql for now: cannot tell whether %s() can run: %s",
                c->consumer ? "durable" : "live", fn, e);
        return -1;
    }
    snprintf(why, sizeof why, "cannot run on this server: %s (make install-pgext on the server's machine)",
             ran ? "it ran outside a trigger" : e);
    pg_capture_broken(c, pg_cap_of(fn), why);
    return 0;
}

/* Which C triggers this connection's watches may call (CAP_*, 0 none): the extension is
 * there (made here when the server has it and this role is a superuser; never updated
 * here, since readers of the version before would stop using it), this role may create
 * triggers with them, and the server's library has them. Version 1 has capture() alone.
 * SQLNOTIFY_PG_CAPTURE=plpgsql keeps every trigger in plpgsql. Asked once per connection;
 * says why this connection's kind of trigger stays in plpgsql, where an operator could
 * change it (at info level: everything works; a function replaced by hand or a library that
 * lacks it, at warning level). */
static int capture_usable(sn_conn *c)
{
    char e[256] = "";
    const char *env = getenv("SQLNOTIFY_PG_CAPTURE");
    const char *kind = c->consumer ? "durable" : "live", *fn = c->consumer ? CAPTURE_FN : NOTIFY_FN;
    int need = pg_cap_need(c);
    if (c->capture != 0)
        return c->capture > 0 ? c->capture : 0;
    c->capture = -1;
    if (env && strcmp(env, "plpgsql") == 0)
        return 0;
    for (int round = 0; round < 2; round++) {
        PGresult *r = pg_exec(c, &c->ctl,
                              "SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'sqlnotify_capture'),"
                              " EXISTS (SELECT FROM pg_catalog.pg_available_extension_versions"
                              "  WHERE name = 'sqlnotify_capture' AND version = '" CAPTURE_VERSION "'),"
                              " (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),"
                              /* found in the catalog, not by name: a role without USAGE on
                               * its schema may not look them up, nor create a trigger with them */
                              " COALESCE(pg_catalog.bit_or(CASE WHEN pg_catalog.has_function_privilege(p.oid, 'EXECUTE')"
                              "  AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') AND " CAPTURE_ITSELF
                              "  THEN CASE p.proname WHEN 'capture' THEN 1 ELSE 2 END END), 0),"
                              /* and replaced by hand (CREATE OR REPLACE FUNCTION) */
                              " COALESCE(pg_catalog.bit_or(CASE WHEN NOT " CAPTURE_ITSELF
                              "  THEN CASE p.proname WHEN 'capture' THEN 1 ELSE 2 END END), 0),"
                              " EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'sqlnotify_capture')"
                              " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
                              " WHERE n.nspname = 'sqlnotify_capture' AND p.proname IN ('capture', 'notify')"
                              "  AND p.pronargs = 0",
                              0, NULL, PG_RETRY, NULL, e, sizeof e);
        if (r == NULL) {
            sn_logf(&c->sink, SN_LOG_INFO, "%s triggers in plpgsql: cannot tell whether the C trigger may be used: %s",
                    kind, e);
            return 0;
        }
        int installed = !PQgetisnull(r, 0, 0);
        int available = PQgetvalue(r, 0, 1)[0] == 't', super = PQgetvalue(r, 0, 2)[0] == 't';
        int may = atoi(PQgetvalue(r, 0, 3)), replaced = atoi(PQgetvalue(r, 0, 4));
        int other = PQgetvalue(r, 0, 5)[0] == 't';
        char version[32];
        snprintf(version, sizeof version, "%s", installed ? PQgetvalue(r, 0, 0) : "");
        PQclear(r);
        int ours = strcmp(version, CAPTURE_VERSION) == 0, older = strcmp(version, "1") == 0;
        if (ours || older) {
            int got = older ? may & CAP_CAPTURE : may, probe = 1;
            if (replaced & need)
                pg_capture_replaced(c, need);
            else if (!(may & need) && (ours || need == CAP_CAPTURE))
                sn_logf(&c->sink, SN_LOG_INFO,
                        "%s triggers in plpgsql: this role may not use %s() (GRANT USAGE ON SCHEMA sqlnotify_capture "
                        "and EXECUTE ON FUNCTION %s() TO it for the faster C trigger)", kind, fn, fn);
            else if (older && need == CAP_NOTIFY)
                sn_logf(&c->sink, SN_LOG_INFO,
                        "live triggers in plpgsql: the database has sqlnotify_capture 1, which has no notify(); "
                        "ALTER EXTENSION sqlnotify_capture UPDATE, once every sqlnotify-lua reading this database "
                        "is of this version, gives live watches the C trigger");
            if ((got & need) && (probe = capture_probe(c, fn)) < 1)
                got &= ~need;
            got &= ~c->capture_broken;
            c->capture = probe < 0 ? 0 : got ? got : -1; /* 0: ask again at the next install */
            return got;
        }
        if (installed) {
            sn_logf(&c->sink, SN_LOG_INFO,
                    "%s triggers in plpgsql: the database has sqlnotify_capture %s, this program knows 1 and "
                    CAPTURE_VERSION, kind, version);
            break;
        }
        if (!available || !super || round > 0) {
            if (available)
                sn_logf(&c->sink, SN_LOG_INFO,
                        "%s triggers in plpgsql: the server has the extension sqlnotify_capture but it is not "
                        "created here%s%s (a superuser may CREATE EXTENSION sqlnotify_capture)",
                        kind, *e ? ": " : "", e);
            else if (other)
                sn_logf(&c->sink, SN_LOG_INFO,
                        "%s triggers in plpgsql: the server has sqlnotify_capture, but not version " CAPTURE_VERSION
                        " (make install-pgext on the server's machine)", kind);
            break;
        }
        /* failed or not, look again: another process may have made it meanwhile */
        pg_script(c, "CREATE EXTENSION IF NOT EXISTS sqlnotify_capture VERSION '" CAPTURE_VERSION "'", NULL, e, sizeof e);
    }
    return c->capture > 0 ? c->capture : 0;
}

/* The C trigger this watch's trigger would call where the extension is usable, or NULL:
 * every column it sends or compares of a type capture.c renders itself, and for a live
 * watch no overflow (its table is written by the plpgsql body). */
const char *pg_capture_form(sn_conn *c, const sn_watch *w, const tinfo *t)
{
    int upd = w->op == SN_UPDATE;
    if (w->extra_all || !(pg_is_simple(t, w->pk, w->npk) && pg_is_simple(t, w->extra, w->nextra) &&
          (!upd || (pg_is_simple(t, w->old_cols, w->nold) && pg_is_simple(t, w->trigger_cols, w->ntrigger)))))
        return NULL;
    return c->consumer ? CAPTURE_FN : w->overflow ? NULL : NOTIFY_FN;
}

/* The C trigger this watch's trigger calls, or NULL: its form, where usable here. */
const char *pg_capture_fits(sn_conn *c, const sn_watch *w, const tinfo *t)
{
    const char *fn = pg_capture_form(c, w, t);
    return fn && (capture_usable(c) & pg_cap_need(c)) ? fn : NULL;
}

static void sb_args(sn_sbuf *b, PGconn *db, const char *const *cols, int n)
{
    for (int i = 0; i < n; i++) {
        sn_sb_add(b, ", ");
        pg_sb_quote(b, db, cols[i], 0);
    }
}

/* capture()'s second argument, 'npk nextra nold ntrig' (old and trigger columns: UPDATE
 * only); *nold and *ntrig say how many of those it sends. */
void pg_capture_counts(const sn_watch *w, char out[64], int *nold, int *ntrig)
{
    int upd = w->op == SN_UPDATE;
    *nold = upd ? w->nold : 0;
    *ntrig = upd ? w->ntrigger : 0;
    snprintf(out, 64, "%d %d %d %d", w->npk, w->nextra, *nold, *ntrig);
}

/* capture()'s arguments: channel, the counts, then those columns' names. */
void pg_sb_capture_args(sn_sbuf *b, PGconn *db, const sn_watch *w)
{
    char counts[64];
    int nold, ntrig;
    pg_capture_counts(w, counts, &nold, &ntrig);
    pg_sb_quote(b, db, w->channel, 0);
    sn_sb_add(b, ", ");
    pg_sb_quote(b, db, counts, 0);
    sb_args(b, db, w->pk, w->npk);
    sb_args(b, db, w->extra, w->nextra);
    sb_args(b, db, w->old_cols, nold);
    sb_args(b, db, w->trigger_cols, ntrig);
}
