/*
 * capture.c — the triggers in C of the extension sqlnotify_capture:
 *
 *   sqlnotify_capture.capture(): a durable watch's. It writes the same journal row the
 *     generated plpgsql trigger writes (dialects/postgresql/triggers.c and journal.c: the
 *     payload of src/dialect.h's wire format, rendered as jsonb renders it, the key's hash,
 *     the table by the id's epoch, the wake-up gate), at a fraction of the cost: no
 *     plpgsql, no jsonb, no executor for the INSERT.
 *   sqlnotify_capture.notify() (version 2): a live watch's. The same payload, sent by
 *     NOTIFY on the watch's channel as the plpgsql body of a watch without overflow sends
 *     it (truncated to the key past 7999 bytes).
 *
 * The driver uses them only for watches whose every column is of a type whose JSON form it
 * renders here (category_of below, the driver's list in triggers.c), and says what to send
 * in the trigger's arguments, the same for both:
 *
 *   capture(channel, 'npk nextra nold ntrig', pk..., extra..., old..., trigger columns...)
 *
 * A user's write must not fail here where the plpgsql body would let it through: an extra
 * or old column gone (renamed or dropped since) is left out and the others are sent, a key
 * column gone sends {"t": true}, a trigger column gone is unchanged, a
 * column retyped since to something else is rendered by to_jsonb() in a subtransaction (as
 * the plpgsql body's EXECUTE would), a value that could fail or grow past MAX_PAYLOAD is
 * rendered in a subtransaction too and sends the key alone when it does. A journal of
 * another shape than the fast path knows (a column, index, trigger or rule added by hand)
 * is written by an INSERT through SPI, as the plpgsql trigger writes it.
 */
#include "postgres.h"

#include <math.h>

#include "access/detoast.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type_d.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/jsonapi.h"
#include "common/shortest_dec.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(capture);
PG_FUNCTION_INFO_V1(capture_notify);

/* the payload limit, the journal's schema and wake-up channel, and the wake-up gate's rule:
 * the driver's plpgsql triggers follow the same file */
#include "../dialects/postgresql/capture.h"
#define JOURNAL_SCHEMA PG_JOURNAL_SCHEMA
#define EPOCH_MS 946684800000LL /* 2000-01-01 in Unix milliseconds */
/* A payload that would grow past this goes as the key alone, marked truncated: the text, its
 * copy in the row and the row itself must fit in memory, and the write must not fail */
#define MAX_PAYLOAD ((Size) 256 * 1024 * 1024)
/* a jsonb value stored larger than this is rendered in a subtransaction: its numbers can
 * print far longer than they are stored (1e-16000 is a few bytes) */
#define JSONB_GUARD (64 * 1024)

/* ===== the journal ===== */

/* A relation of schema sqlnotify (nsp, looked up once per row) by name, at each use (a
 * syscache probe): no oid is kept from a journal that may have been dropped and made again. */
static Oid journal_oid(Oid nsp, const char *name)
{
    return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

static void journal_missing(void)
{
    ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
                    errmsg("sqlnotify: the durable journal (schema \"" JOURNAL_SCHEMA "\") is missing"),
                    errhint("Start a durable sqlnotify-lua reader to make it again, or drop this trigger.")));
}

enum { J_ID, J_XID, J_CHANNEL, J_PAYLOAD, J_CREATED, J_HASH, J_N };

typedef struct journal {
    Relation rel;
    int at[J_N];          /* attribute numbers of the six columns */
    int nix;
    Relation *ix;         /* its indexes, open, ready ones only */
} journal;

/* Whether the row may be written by heap_insert and index_insert: a plain heap table whose
 * live columns are exactly the six, without triggers, rules, row security or CHECK
 * constraints, whose indexes are plain, immediate column indexes. Otherwise it takes the
 * INSERT (what the executor does for those is not done here). */
static bool journal_fast(journal *j)
{
    static const struct { const char *name; Oid type; } cols[J_N] = {
        {"id", INT8OID}, {"xid", XID8OID}, {"channel", TEXTOID},
        {"payload", TEXTOID}, {"created_at", TIMESTAMPTZOID}, {"hash", INT4OID},
    };
    Relation r = j->rel;
    TupleDesc d = RelationGetDescr(r);
    if (r->rd_rel->relkind != RELKIND_RELATION || r->rd_rel->relam != HEAP_TABLE_AM_OID || r->trigdesc != NULL ||
        r->rd_rules != NULL || r->rd_rel->relrowsecurity || (d->constr && d->constr->num_check > 0))
        return false;
    for (int k = 0; k < J_N; k++)
        j->at[k] = 0;
    for (int i = 0; i < d->natts; i++) {
        Form_pg_attribute a = TupleDescAttr(d, i);
        int k = 0;
        if (a->attisdropped)
            continue;
        while (k < J_N && strcmp(NameStr(a->attname), cols[k].name) != 0)
            k++;
        if (k == J_N || a->atttypid != cols[k].type || a->attgenerated)
            return false;
        j->at[k] = i + 1;
    }
    for (int k = 0; k < J_N; k++)
        if (j->at[k] == 0)
            return false;
    List *indexes = RelationGetIndexList(r);
    ListCell *lc;
    j->ix = palloc(sizeof(Relation) * (list_length(indexes) + 1));
    j->nix = 0;
    foreach (lc, indexes) {
        Relation ix = index_open(lfirst_oid(lc), RowExclusiveLock);
        Form_pg_index f = ix->rd_index;
        j->ix[j->nix++] = ix;
        if (!heap_attisnull(ix->rd_indextuple, Anum_pg_index_indexprs, NULL) ||
            !heap_attisnull(ix->rd_indextuple, Anum_pg_index_indpred, NULL) || f->indisexclusion ||
            (f->indisunique && !f->indimmediate))
            return false;
    }
    list_free(indexes);
    return true;
}

static void journal_close(journal *j)
{
    for (int i = 0; i < j->nix; i++)
        index_close(j->ix[i], NoLock);
    j->nix = 0;
    table_close(j->rel, NoLock);
}

/* The row: heap_insert and index_insert where journal_fast() says they do what the
 * executor would, else INSERT INTO sqlnotify.journal_<k> (id, channel, payload, hash) as the
 * writer, as the plpgsql trigger does (the defaults give xid and created_at). */
static void journal_write(Oid nsp, int k, int64 id, FullTransactionId xid, text *channel, text *payload, int32 hash)
{
    char name[NAMEDATALEN];
    journal j = {0};
    snprintf(name, sizeof name, "journal_%d", k);
    Oid oid = journal_oid(nsp, name);
    if (!OidIsValid(oid) || (j.rel = try_table_open(oid, RowExclusiveLock)) == NULL)
        journal_missing();
    if (journal_fast(&j)) {
        TupleDesc d = RelationGetDescr(j.rel);
        Datum *values = palloc0(sizeof(Datum) * d->natts);
        bool *nulls = palloc(sizeof(bool) * d->natts);
        memset(nulls, true, sizeof(bool) * d->natts);
        values[j.at[J_ID] - 1] = Int64GetDatum(id);
        values[j.at[J_XID] - 1] = FullTransactionIdGetDatum(xid);
        values[j.at[J_CHANNEL] - 1] = PointerGetDatum(channel);
        values[j.at[J_PAYLOAD] - 1] = PointerGetDatum(payload);
        values[j.at[J_CREATED] - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
        values[j.at[J_HASH] - 1] = Int32GetDatum(hash);
        for (int i = 0; i < J_N; i++)
            nulls[j.at[i] - 1] = false;
        HeapTuple tup = heap_form_tuple(d, values, nulls);
        heap_insert(j.rel, tup, GetCurrentCommandId(true), 0, NULL);
        for (int i = 0; i < j.nix; i++) {
            Relation ix = j.ix[i];
            Datum iv[INDEX_MAX_KEYS];
            bool in[INDEX_MAX_KEYS];
            if (!ix->rd_index->indisready) /* being built: as the executor, leave it out */
                continue;
            IndexInfo *ii = BuildIndexInfo(ix);
            for (int a = 0; a < ii->ii_NumIndexAttrs; a++)
                iv[a] = heap_getattr(tup, ii->ii_IndexAttrNumbers[a], d, &in[a]);
            index_insert(ix, iv, in, &tup->t_self, j.rel,
                         ix->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
#if PG_VERSION_NUM >= 140000
                         false, /* indexUnchanged: a new row */
#endif
                         ii);
        }
        journal_close(&j);
        return;
    }
    journal_close(&j);
    char sql[128];
    Oid types[4] = {INT8OID, TEXTOID, TEXTOID, INT4OID};
    Datum args[4] = {Int64GetDatum(id), PointerGetDatum(channel), PointerGetDatum(payload), Int32GetDatum(hash)};
    snprintf(sql, sizeof sql, "INSERT INTO " JOURNAL_SCHEMA ".%s (id, channel, payload, hash) VALUES ($1, $2, $3, $4)",
             name);
    SPI_connect();
    if (SPI_execute_with_args(sql, 4, types, args, NULL, false, 0) != SPI_OK_INSERT)
        ereport(ERROR, (errmsg("sqlnotify: cannot insert into " JOURNAL_SCHEMA ".%s", name)));
    SPI_finish();
}

/* ===== values as jsonb renders them ===== */

enum { C_OTHER, C_INT, C_FLOAT4, C_FLOAT8, C_NUMERIC, C_BOOL, C_DATETIME, C_JSONB, C_BYTEA, C_TEXT, C_FOREIGN };

/* The driver's list (triggers.c, table_sql): the builtin types rendered here. Anything else
 * (a domain, or a column retyped since the trigger was made) is C_FOREIGN. */
static int category_of(Oid type)
{
    switch (type) {
    case INT2OID:
    case INT4OID:
    case INT8OID:
        return C_INT;
    case FLOAT4OID:
        return C_FLOAT4;
    case FLOAT8OID:
        return C_FLOAT8;
    case NUMERICOID:
        return C_NUMERIC;
    case BOOLOID:
        return C_BOOL;
    case DATEOID:
    case TIMESTAMPOID:
    case TIMESTAMPTZOID:
        return C_DATETIME;
    case JSONBOID:
        return C_JSONB;
    case BYTEAOID:
        return C_BYTEA; /* "\\x<hex>" whatever bytea_output says, as the plpgsql trigger sends it */
    case TEXTOID:
    case VARCHAROID:
    case BPCHAROID:
        return C_TEXT; /* its bytes, as a JSON string */
    case OIDOID:       /* to_jsonb() makes an oid a string */
    case NAMEOID:
    case CHAROID:
    case UUIDOID:
    case TIMEOID:
    case TIMETZOID:
    case INTERVALOID:
        return C_OTHER; /* its text, as a JSON string */
    default:
        return C_FOREIGN;
    }
}

/* type's category and *base, the type its values are of: a domain's base, looked up (a
 * syscache probe) only for a type that is not builtin. C_FOREIGN is rendered by to_jsonb(). */
static int category(Oid type, Oid *base)
{
    int cat = category_of(type);
    *base = type;
    if (cat == C_FOREIGN) {
        *base = getBaseType(type);
        if (*base != type)
            cat = category_of(*base);
    }
    return cat;
}

/* jsonb keeps a number as numeric: "1e+20" comes back as 100000000000000000000, -0 as 0. */
static void append_number(StringInfo s, const char *text)
{
    if (strpbrk(text, "eE") != NULL || strcmp(text, "-0") == 0) {
        Datum n = DirectFunctionCall3(numeric_in, CStringGetDatum(text), ObjectIdGetDatum(InvalidOid),
                                      Int32GetDatum(-1));
        appendStringInfoString(s, DatumGetCString(DirectFunctionCall1(numeric_out, n)));
    } else {
        appendStringInfoString(s, text);
    }
}

/* One value of a builtin type category() knows (base: the value's type, no domain); none of
 * these fails for a valid datum. Integers and text are written here, the rest by their output
 * functions. */
static void append_value(StringInfo s, Datum v, Oid base, int cat)
{
    char buf[64];
    switch (cat) {
    case C_FLOAT4:
    case C_FLOAT8: {
        double f = cat == C_FLOAT4 ? (double) DatumGetFloat4(v) : DatumGetFloat8(v);
        if (isnan(f))
            appendStringInfoString(s, "\"NaN\"");
        else if (isinf(f))
            appendStringInfoString(s, f > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        else {
            if (cat == C_FLOAT4)
                float_to_shortest_decimal_buf(DatumGetFloat4(v), buf);
            else
                double_to_shortest_decimal_buf(f, buf);
            append_number(s, buf);
        }
        return;
    }
    case C_DATETIME:
        escape_json(s, JsonEncodeDateTime(NULL, v, base, NULL));
        return;
    case C_BOOL:
        appendStringInfoString(s, DatumGetBool(v) ? "true" : "false");
        return;
    case C_BYTEA: {
        static const char digits[] = "0123456789abcdef";
        bytea *b = DatumGetByteaPP(v);
        const unsigned char *d = (const unsigned char *) VARDATA_ANY(b);
        Size n = VARSIZE_ANY_EXHDR(b);
        enlargeStringInfo(s, (int) (2 * n + 4));
        appendStringInfoString(s, "\"\\\\x");
        for (Size i = 0; i < n; i++) {
            s->data[s->len++] = digits[d[i] >> 4];
            s->data[s->len++] = digits[d[i] & 15];
        }
        appendStringInfoChar(s, '"');
        return;
    }
    case C_INT:
        if (base == INT8OID)
            pg_lltoa(DatumGetInt64(v), buf);
        else
            pg_ltoa(base == INT2OID ? (int32) DatumGetInt16(v) : DatumGetInt32(v), buf);
        appendStringInfoString(s, buf);
        return;
    case C_TEXT: /* text, varchar and bpchar write their bytes as they are */
        escape_json(s, text_to_cstring(DatumGetTextPP(v)));
        return;
    default:
        break;
    }
    Oid out;
    bool varlena;
    getTypeOutputInfo(base, &out, &varlena);
    char *text = OidOutputFunctionCall(out, v);
    switch (cat) {
    case C_JSONB:
        appendStringInfoString(s, text);
        break;
    case C_NUMERIC:
        if (IsValidJsonNumber(text, strlen(text)))
            appendStringInfoString(s, text);
        else
            escape_json(s, text); /* NaN, Infinity */
        break;
    default:
        escape_json(s, text);
        break;
    }
}

/* to_jsonb(v)::text through SPI: a type this file does not render (in a subtransaction). */
static void append_foreign(StringInfo s, Datum v, Oid type)
{
    Oid types[1] = {type};
    Datum args[1] = {v};
    SPI_connect();
    if (SPI_execute_with_args("SELECT pg_catalog.to_jsonb($1)::text", 1, types, args, NULL, true, 1) != SPI_OK_SELECT ||
        SPI_processed != 1)
        ereport(ERROR, (errmsg("sqlnotify: to_jsonb() of a column failed")));
    char *t = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    if (t == NULL)
        appendStringInfoString(s, "null");
    else
        appendStringInfoString(s, t);
    SPI_finish();
}

/* The same inside a subtransaction: false (and s as it was) when it failed or went past
 * MAX_PAYLOAD, as the plpgsql body's exception block sends the key alone. */
static bool append_guarded(StringInfo s, Datum v, Oid base, int cat)
{
    MemoryContext mcx = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    int len = s->len;
    bool ok = true;
    BeginInternalSubTransaction(NULL);
    MemoryContextSwitchTo(mcx);
    PG_TRY();
    {
        if (cat == C_FOREIGN)
            append_foreign(s, v, base);
        else
            append_value(s, v, base, cat);
        ReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(mcx);
        CurrentResourceOwner = owner;
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(mcx);
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(mcx);
        CurrentResourceOwner = owner;
        ok = false;
    }
    PG_END_TRY();
    if (!ok || (Size) s->len > MAX_PAYLOAD) {
        s->len = len;
        s->data[len] = '\0';
        return false;
    }
    return true;
}

/* One value into s: false when it would not fit (or could not be rendered). */
static bool append_any(StringInfo s, Datum v, Form_pg_attribute a)
{
    Oid base;
    int cat = category(a->atttypid, &base);
    Size stored = a->attlen == -1 ? toast_raw_datum_size(v) : 0;
    /* escape_json writes at most 6 bytes for one (\u0001); what could pass the bound, or
     * fail, goes through the guard */
    if (cat == C_FOREIGN || (cat == C_JSONB && stored > JSONB_GUARD) || (Size) s->len + 6 * stored + 64 > MAX_PAYLOAD)
        return append_guarded(s, v, base, cat);
    append_value(s, v, base, cat);
    return (Size) s->len <= MAX_PAYLOAD;
}

/* ===== the watch in the trigger's arguments ===== */

typedef struct col {
    const char *name;
    int attnum; /* 0: the table has no such column now */
} col;

typedef struct watch {
    const char *channel;
    int npk, nextra, nold, ntrig;
    col *pk, *extra, *old, *trig;
} watch;

/* One count of the second argument: 0 .. max, or -1. */
static int count_of(const char **p, int max)
{
    char *end;
    long n = strtol(*p, &end, 10);
    if (end == *p || n < 0 || n > max)
        return -1;
    *p = end;
    return (int) n;
}

/* fn: the function's name, for the message */
static void watch_read(watch *w, Trigger *tg, TupleDesc desc, const char *fn)
{
    char **a = tg->tgargs;
    int max = tg->tgnargs - 2, ok = max >= 0, n = 0;
    const char *p = ok ? a[1] : "";
    int *counts[4] = {&w->npk, &w->nextra, &w->nold, &w->ntrig};
    for (int i = 0; i < 4 && ok; i++) {
        *counts[i] = count_of(&p, max - n);
        ok = *counts[i] >= 0;
        n += ok ? *counts[i] : 0;
    }
    if (!ok || *p != '\0' || n != max)
        ereport(ERROR, (errmsg("sqlnotify: trigger \"%s\" gives %s() arguments it does not take", tg->tgname, fn),
                        errhint("Its arguments are made by sqlnotify-lua: channel, 'npk nextra nold ntrig', "
                                "then that many column names.")));
    w->channel = a[0];
    col *cols = palloc(sizeof(col) * (n > 0 ? n : 1));
    for (int i = 0; i < n; i++) {
        int at = SPI_fnumber(desc, a[2 + i]);
        cols[i].name = a[2 + i];
        cols[i].attnum = at > 0 ? at : 0;
    }
    w->pk = cols;
    w->extra = w->pk + w->npk;
    w->old = w->extra + w->nextra;
    w->trig = w->old + w->nold;
}

/* jsonb's key order: shorter first, then bytewise. */
static int key_cmp(const col *a, const col *b)
{
    size_t la = strlen(a->name), lb = strlen(b->name);
    if (la != lb)
        return la < lb ? -1 : 1;
    return memcmp(a->name, b->name, la);
}

/* {"a": 1, "b": "x"} of cols from tup, keys in jsonb's order, a repeated name once (its
 * last); a column gone is left out (skip_gone) or makes it fail (a key). false when it
 * failed or the payload would grow past MAX_PAYLOAD. */
static bool append_object(StringInfo s, const col *cols, int n, HeapTuple tup, TupleDesc desc, bool skip_gone)
{
    int *order = palloc(sizeof(int) * (n > 0 ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (cols[i].attnum == 0 && skip_gone)
            continue;
        if (cols[i].attnum == 0)
            return false;
        int j = m;
        while (j > 0 && key_cmp(&cols[order[j - 1]], &cols[i]) > 0)
            j--;
        if (j > 0 && key_cmp(&cols[order[j - 1]], &cols[i]) == 0) {
            order[j - 1] = i;
            continue;
        }
        memmove(order + j + 1, order + j, sizeof(int) * (m - j));
        order[j] = i;
        m++;
    }
    appendStringInfoChar(s, '{');
    for (int k = 0; k < m; k++) {
        const col *c = &cols[order[k]];
        bool isnull;
        Datum v = heap_getattr(tup, c->attnum, desc, &isnull);
        if (k > 0)
            appendStringInfoString(s, ", ");
        escape_json(s, c->name);
        appendStringInfoString(s, ": ");
        if (isnull)
            appendStringInfoString(s, "null");
        else if (!append_any(s, v, TupleDescAttr(desc, c->attnum - 1)))
            return false;
    }
    appendStringInfoChar(s, '}');
    return true;
}

/* to_jsonb(old.c) IS DISTINCT FROM to_jsonb(new.c), without writing large values out; a
 * column gone, or one that cannot be rendered, is unchanged. */
static bool changed(const col *c, HeapTuple oldt, HeapTuple newt, TupleDesc desc)
{
    bool on, nn;
    if (c->attnum == 0)
        return false;
    Form_pg_attribute a = TupleDescAttr(desc, c->attnum - 1);
    Datum o = heap_getattr(oldt, c->attnum, desc, &on), n = heap_getattr(newt, c->attnum, desc, &nn);
    if (on || nn)
        return on != nn;
    Oid base;
    int cat = category(a->atttypid, &base);
    switch (cat) {
    case C_NUMERIC: /* 1.0 and 1.00 are one jsonb number */
        return DatumGetInt32(DirectFunctionCall2(numeric_cmp, o, n)) != 0;
    case C_JSONB:
        return !DatumGetBool(DirectFunctionCall2(jsonb_eq, o, n));
    case C_INT:
    case C_BOOL:
    case C_DATETIME: /* one value, one text: the datums say it (floats do not: -0, NaN) */
        return !datumIsEqual(o, n, a->attbyval, a->attlen);
    case C_TEXT:
    case C_BYTEA: { /* their JSON text is one to one with their bytes */
        struct varlena *x = PG_DETOAST_DATUM_PACKED(o), *y = PG_DETOAST_DATUM_PACKED(n);
        return VARSIZE_ANY_EXHDR(x) != VARSIZE_ANY_EXHDR(y) ||
               memcmp(VARDATA_ANY(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(x)) != 0;
    }
    default: {
        StringInfoData x, y;
        initStringInfo(&x);
        initStringInfo(&y);
        if (!append_any(&x, o, a) || !append_any(&y, n, a))
            return false;
        return x.len != y.len || memcmp(x.data, y.data, x.len) != 0;
    }
    }
}

/* ===== the wake-up gate, as the plpgsql one: the sequence sqlnotify.wake holds the
 * milliseconds of the last NOTIFY; a writer notifies when it is 10 ms old =====
 *
 * The trigger claims the gate (the sequence, under the function's rights); its NOTIFY goes
 * out from the pre-commit callback instead, once per transaction. PREPARE TRANSACTION refuses
 * a transaction that has notified, and the gate fires in any transaction at any time: sent
 * from the trigger, it made a two-phase writer's PREPARE fail now and then. A prepared
 * transaction sends none; its rows are read at the reader's next fetch after COMMIT PREPARED
 * (its poll, 250 ms at the most when idle). */

static bool wake_due;        /* this transaction claimed the gate */
static bool wake_registered; /* wake_xact is this backend's callback */

static void wake_xact(XactEvent event, void *arg)
{
    (void) arg;
    if (event == XACT_EVENT_PRE_COMMIT && wake_due) {
        wake_due = false;
        Async_Notify(PG_JOURNAL_CHANNEL, "");
    } else if (event != XACT_EVENT_PARALLEL_PRE_COMMIT) {
        wake_due = false; /* prepared, committed, aborted: nothing left to send */
    }
}

static void wake(Oid nsp)
{
    if (wake_due)
        return; /* claimed already: this transaction notifies at its commit */
    Oid seq = journal_oid(nsp, "wake");
    if (!OidIsValid(seq))
        return;
    int64 ms = GetCurrentTimestamp() / 1000 + EPOCH_MS;
    LOCAL_FCINFO(fc, 1);
    InitFunctionCallInfoData(*fc, NULL, 1, InvalidOid, NULL, NULL);
    fc->args[0].value = ObjectIdGetDatum(seq);
    fc->args[0].isnull = false;
    Datum last = pg_sequence_last_value(fc);
    int64 gap = ms - (fc->isnull ? 0 : DatumGetInt64(last));
    if (gap > PG_WAKE_MS || gap < -PG_WAKE_AHEAD_MS) {
        DirectFunctionCall2(setval_oid, ObjectIdGetDatum(seq), Int64GetDatum(ms));
        if (!wake_registered) {
            RegisterXactCallback(wake_xact, NULL);
            wake_registered = true;
        }
        wake_due = true;
    }
}

/* ===== the trigger ===== */

/* One row change rendered: the payload, and the key objects it carries. */
typedef struct change {
    const char *channel; /* the watch's, from the trigger's arguments */
    StringInfoData p, key, oldkey;
    bool have_key, have_oldkey;
} change;

/* The trigger's data, checked: fn is the function's name, for the message. */
static TriggerData *trigger_data(FunctionCallInfo fcinfo, const char *fn)
{
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errmsg("sqlnotify: %s() runs only as a trigger", fn)));
    TriggerData *td = (TriggerData *) fcinfo->context;
    if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
        TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
        ereport(ERROR, (errmsg("sqlnotify: %s() runs only as an AFTER INSERT, UPDATE or DELETE ... FOR EACH "
                               "ROW trigger", fn)));
    return td;
}

/* The payload's end: , "id": …, "oid": …} (no key: only the brace). */
static void append_keys(change *ch)
{
    if (ch->have_key) {
        appendStringInfoString(&ch->p, ", \"id\": ");
        appendBinaryStringInfo(&ch->p, ch->key.data, ch->key.len);
        if (ch->have_oldkey) {
            appendStringInfoString(&ch->p, ", \"oid\": ");
            appendBinaryStringInfo(&ch->p, ch->oldkey.data, ch->oldkey.len);
        }
    }
    appendStringInfoChar(&ch->p, '}');
}

/* {"t": true, "id": …, "oid": …}: the key alone, marked truncated (no key: {"t": true}). */
static void append_truncated(change *ch)
{
    resetStringInfo(&ch->p);
    appendStringInfoString(&ch->p, "{\"t\": true");
    append_keys(ch);
}

/* The change the trigger fired for, as the generated plpgsql body renders it (the wire
 * format of src/dialect.h, keys in jsonb's order); false when the watch's trigger columns
 * say it is no event. */
static bool render(TriggerData *td, change *ch, const char *fn)
{
    TupleDesc desc = RelationGetDescr(td->tg_relation);
    bool upd = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
    HeapTuple oldt = upd || TRIGGER_FIRED_BY_DELETE(td->tg_event) ? td->tg_trigtuple : NULL;
    HeapTuple rec = upd ? td->tg_newtuple : td->tg_trigtuple; /* NEW, or OLD for a delete */
    watch w;
    watch_read(&w, td->tg_trigger, desc, fn);
    ch->channel = w.channel;

    if (upd && w.ntrig > 0) {
        bool any = false;
        for (int i = 0; i < w.ntrig && !any; i++)
            any = changed(&w.trig[i], oldt, rec, desc);
        if (!any)
            return false;
    }
    bool keychange = false;
    for (int i = 0; upd && i < w.npk && !keychange; i++)
        keychange = changed(&w.pk[i], oldt, rec, desc);

    /* the key alone first: it is also what the hash is of */
    initStringInfo(&ch->key);
    initStringInfo(&ch->oldkey);
    initStringInfo(&ch->p);
    ch->have_key = append_object(&ch->key, w.pk, w.npk, rec, desc, false);
    ch->have_oldkey = keychange && ch->have_key && append_object(&ch->oldkey, w.pk, w.npk, oldt, desc, false);
    int nold = upd ? w.nold : 0;
    /* {"o": …, "x": …, "id": …, "oid": …}: jsonb's order of the top-level keys; a value
     * that cannot be sent: {"t": true, "id": …} */
    bool whole = ch->have_key;
    if (whole) {
        appendStringInfoString(&ch->p, nold > 0 ? "{\"o\": " : "{\"x\": ");
        if (nold > 0) {
            whole = append_object(&ch->p, w.old, nold, oldt, desc, true);
            appendStringInfoString(&ch->p, ", \"x\": ");
        }
        whole = whole && append_object(&ch->p, w.extra, w.nextra, rec, desc, true);
    }
    if (whole)
        append_keys(ch);
    else
        append_truncated(ch);
    return true;
}

/* The durable watch's trigger: the change into the journal, then the wake-up gate. */
Datum capture(PG_FUNCTION_ARGS)
{
    TriggerData *td = trigger_data(fcinfo, "capture");
    change ch;
    if (!render(td, &ch, "capture"))
        return PointerGetDatum(NULL);

    /* the xid before the id (see floor_of in journal.c), then the table by the id's epoch,
     * as the plpgsql CASE picks it (1, 2, else 0) */
    FullTransactionId xid = GetTopFullTransactionId();
    Oid nsp = get_namespace_oid(JOURNAL_SCHEMA, true);
    Oid seq = journal_oid(nsp, "journal_id");
    if (!OidIsValid(seq))
        journal_missing();
    int64 id = nextval_internal(seq, true);
    int64 epoch = (id >> 32) % 3;
    text *hashed = ch.have_key ? cstring_to_text_with_len(ch.key.data, ch.key.len)
                               : cstring_to_text_with_len(ch.p.data, ch.p.len);
    int32 h = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID, PointerGetDatum(hashed))) ^
              (int32) RelationGetRelid(td->tg_relation);
    journal_write(nsp, epoch == 1 || epoch == 2 ? (int) epoch : 0, id, xid, cstring_to_text(ch.channel),
                  cstring_to_text_with_len(ch.p.data, ch.p.len), h);
    wake(nsp);
    return PointerGetDatum(NULL);
}

/* The live watch's trigger (sqlnotify_capture.notify()): the change as one NOTIFY on the
 * watch's channel. Past NOTIFY's limit it goes as the key alone, marked truncated, and
 * past that as {"t": true}, as the plpgsql body of a watch without overflow sends it. */
Datum capture_notify(PG_FUNCTION_ARGS)
{
    TriggerData *td = trigger_data(fcinfo, "notify");
    change ch;
    if (!render(td, &ch, "notify"))
        return PointerGetDatum(NULL);
    if (ch.p.len > PG_MAX_PAYLOAD)
        append_truncated(&ch);
    if (ch.p.len > PG_MAX_PAYLOAD) {
        resetStringInfo(&ch.p);
        appendStringInfoString(&ch.p, "{\"t\": true}");
    }
    Async_Notify(ch.channel, ch.p.data);
    return PointerGetDatum(NULL);
}
