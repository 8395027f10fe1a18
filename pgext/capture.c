/*
 * capture.c — sqlnotify.capture(), the durable journal's trigger in C (extension
 * sqlnotify_capture). It writes the same journal row the generated plpgsql trigger writes
 * (dialects/postgresql/triggers.c and journal.c: the payload of src/dialect.h's wire format,
 * rendered as jsonb renders it, the key's hash, the table by the id's epoch, the wake-up
 * gate), at a fraction of the cost: no plpgsql, no jsonb, no executor for the INSERT.
 *
 * The driver uses it only for watches whose every column is of a type whose JSON form it
 * renders here (is_simple below; others keep the plpgsql trigger), and says what to send in
 * the trigger's arguments:
 *
 *   capture(channel, 'npk nextra nold ntrig', pk..., extra..., old..., trigger columns...)
 *
 * A column the table no longer has counts as the plpgsql body counts it: a payload column
 * sends the key alone with "t": true, a trigger column is unchanged.
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
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/jsonapi.h"
#include "common/shortest_dec.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(capture);

#define JOURNAL_SCHEMA "sqlnotify"
#define WAKE_CHANNEL "sqlnotify:journal"
#define WAKE_MS 10          /* as the plpgsql gate: at most one wake-up per 10 ms */
#define NTABLES 3
#define EPOCH_MS 946684800000LL /* 2000-01-01 in Unix milliseconds */
/* A payload that could grow past this goes as the key alone, marked truncated: the text, its
 * copy in the row and the row itself must fit in memory, and the write must not fail (the
 * plpgsql trigger's jsonb gives up near there too) */
#define MAX_PAYLOAD ((Size) 256 * 1024 * 1024)

/* ===== the journal's relations, looked up once and checked at each use ===== */

static Oid j_nsp, j_rel[NTABLES];

static void journal_lookup(void)
{
    char name[NAMEDATALEN];
    j_nsp = get_namespace_oid(JOURNAL_SCHEMA, true);
    for (int k = 0; k < NTABLES; k++) {
        snprintf(name, sizeof name, "journal_%d", k);
        j_rel[k] = OidIsValid(j_nsp) ? get_relname_relid(name, j_nsp) : InvalidOid;
    }
}

/* A sequence of the journal by name, looked up at each use (a syscache probe): an oid kept
 * from before the journal was dropped and made again is never used. */
static Oid sequence(const char *name)
{
    Oid seq = OidIsValid(j_nsp) ? get_relname_relid(name, j_nsp) : InvalidOid;
    if (!OidIsValid(seq)) {
        journal_lookup();
        seq = OidIsValid(j_nsp) ? get_relname_relid(name, j_nsp) : InvalidOid;
    }
    return seq;
}

/* The journal's columns, in order: id, xid, channel, payload, created_at, hash. */
static bool journal_shape(Relation r, int k)
{
    static const struct { const char *name; Oid type; } cols[] = {
        {"id", INT8OID}, {"xid", XID8OID}, {"channel", TEXTOID},
        {"payload", TEXTOID}, {"created_at", TIMESTAMPTZOID}, {"hash", INT4OID},
    };
    TupleDesc d = RelationGetDescr(r);
    char name[NAMEDATALEN];
    snprintf(name, sizeof name, "journal_%d", k);
    if (RelationGetNamespace(r) != j_nsp || strcmp(RelationGetRelationName(r), name) != 0 ||
        d->natts != (int) lengthof(cols))
        return false;
    for (int i = 0; i < d->natts; i++) {
        Form_pg_attribute a = TupleDescAttr(d, i);
        if (a->attisdropped || a->atttypid != cols[i].type || strcmp(NameStr(a->attname), cols[i].name) != 0)
            return false;
    }
    return true;
}

/* journal_<k>, opened with RowExclusiveLock (k = -1: only says it is missing); a dropped and re-made journal is found again
 * (an oid is checked against the name it had, never trusted alone). */
static Relation journal_open(int k)
{
    for (int round = 0; k >= 0 && round < 2; round++) {
        if (round > 0 || !OidIsValid(j_rel[k]))
            journal_lookup();
        if (OidIsValid(j_rel[k])) {
            Relation r = try_table_open(j_rel[k], RowExclusiveLock);
            if (r != NULL) {
                if (journal_shape(r, k))
                    return r;
                table_close(r, RowExclusiveLock);
            }
        }
    }
    ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
                    errmsg("sqlnotify: the durable journal (schema \"" JOURNAL_SCHEMA "\") is missing or of "
                           "another version"),
                    errhint("Start a durable sqlnotify-lua reader to make it again, or drop this trigger.")));
    return NULL; /* not reached */
}

/* The row and every index on it (the journal's are plain column indexes). */
static void journal_insert(Relation r, Datum *values, bool *nulls)
{
    HeapTuple tup = heap_form_tuple(RelationGetDescr(r), values, nulls);
    List *indexes = RelationGetIndexList(r);
    ListCell *lc;
    heap_insert(r, tup, GetCurrentCommandId(true), 0, NULL);
    foreach (lc, indexes) {
        Relation ix = index_open(lfirst_oid(lc), RowExclusiveLock);
        IndexInfo *ii = BuildIndexInfo(ix);
        Datum iv[INDEX_MAX_KEYS];
        bool in[INDEX_MAX_KEYS];
        if (!ix->rd_index->indisready) { /* being built: as the executor, leave it out */
            index_close(ix, NoLock);
            continue;
        }
        if (ii->ii_Expressions != NIL || ii->ii_Predicate != NIL)
            ereport(ERROR, (errmsg("sqlnotify: an index of the durable journal is not a plain column index"),
                            errhint("Drop the index that was added to sqlnotify.journal_N by hand.")));
        for (int i = 0; i < ii->ii_NumIndexAttrs; i++)
            iv[i] = heap_getattr(tup, ii->ii_IndexAttrNumbers[i], RelationGetDescr(r), &in[i]);
        index_insert(ix, iv, in, &tup->t_self, r, ix->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
                     false, ii);
        index_close(ix, NoLock);
    }
    list_free(indexes);
}

/* ===== values as jsonb renders them ===== */

enum { C_OTHER, C_INT, C_FLOAT4, C_FLOAT8, C_NUMERIC, C_BOOL, C_DATETIME, C_JSONB, C_BYTEA };

static int category(Oid type)
{
    switch (getBaseType(type)) {
    case INT2OID:
    case INT4OID:
    case INT8OID:
        return C_INT; /* oid is not: to_jsonb() makes it a string */
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
    default:
        return C_OTHER; /* its text, as a JSON string */
    }
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

static void append_value(StringInfo s, Datum v, Oid type)
{
    char buf[64];
    switch (category(type)) {
    case C_FLOAT4:
    case C_FLOAT8: {
        double f = category(type) == C_FLOAT4 ? (double) DatumGetFloat4(v) : DatumGetFloat8(v);
        if (isnan(f))
            appendStringInfoString(s, "\"NaN\"");
        else if (isinf(f))
            appendStringInfoString(s, f > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        else {
            if (category(type) == C_FLOAT4)
                float_to_shortest_decimal_buf(DatumGetFloat4(v), buf);
            else
                double_to_shortest_decimal_buf(f, buf);
            append_number(s, buf);
        }
        return;
    }
    case C_DATETIME:
        escape_json(s, JsonEncodeDateTime(NULL, v, getBaseType(type), NULL));
        return;
    case C_BOOL:
        appendStringInfoString(s, DatumGetBool(v) ? "true" : "false");
        return;
    case C_BYTEA: {
        static const char digits[] = "0123456789abcdef";
        bytea *b = DatumGetByteaPP(v);
        const unsigned char *d = (const unsigned char *) VARDATA_ANY(b);
        int n = VARSIZE_ANY_EXHDR(b);
        char *hex = palloc(2 * (Size) n + 3), *h = hex;
        *h++ = '\\';
        *h++ = 'x';
        for (int i = 0; i < n; i++) {
            *h++ = digits[d[i] >> 4];
            *h++ = digits[d[i] & 15];
        }
        *h = '\0';
        escape_json(s, hex);
        return;
    }
    default:
        break;
    }
    Oid out;
    bool varlena;
    getTypeOutputInfo(type, &out, &varlena);
    char *text = OidOutputFunctionCall(out, v);
    switch (category(type)) {
    case C_INT:
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

static void watch_read(watch *w, Trigger *tg, TupleDesc desc)
{
    char **a = tg->tgargs;
    if (tg->tgnargs < 2 || sscanf(a[1], "%d %d %d %d", &w->npk, &w->nextra, &w->nold, &w->ntrig) != 4 ||
        w->npk < 0 || w->nextra < 0 || w->nold < 0 || w->ntrig < 0 ||
        tg->tgnargs != 2 + w->npk + w->nextra + w->nold + w->ntrig)
        ereport(ERROR, (errmsg("sqlnotify: trigger \"%s\" has arguments capture() does not take", tg->tgname)));
    w->channel = a[0];
    int n = w->npk + w->nextra + w->nold + w->ntrig;
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
 * last); false when a column is gone or the payload would grow past MAX_PAYLOAD. */
static bool append_object(StringInfo s, const col *cols, int n, HeapTuple tup, TupleDesc desc)
{
    int *order = palloc(sizeof(int) * (n > 0 ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++) {
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
        Form_pg_attribute a = TupleDescAttr(desc, c->attnum - 1);
        bool isnull;
        Datum v = heap_getattr(tup, c->attnum, desc, &isnull);
        /* escape_json writes at most 6 bytes for one (\u0001), bytea 2 (hex) */
        if (!isnull && a->attlen == -1 && (Size) s->len + 6 * toast_raw_datum_size(v) + 64 > MAX_PAYLOAD)
            return false;
        if (k > 0)
            appendStringInfoString(s, ", ");
        escape_json(s, c->name);
        appendStringInfoString(s, ": ");
        if (isnull)
            appendStringInfoString(s, "null");
        else
            append_value(s, v, a->atttypid);
    }
    appendStringInfoChar(s, '}');
    return true;
}

/* to_jsonb(old.c) IS DISTINCT FROM to_jsonb(new.c); a column gone is unchanged. */
static bool changed(const col *c, HeapTuple oldt, HeapTuple newt, TupleDesc desc)
{
    bool on, nn;
    if (c->attnum == 0)
        return false;
    Datum o = heap_getattr(oldt, c->attnum, desc, &on), n = heap_getattr(newt, c->attnum, desc, &nn);
    if (on || nn)
        return on != nn;
    Oid type = TupleDescAttr(desc, c->attnum - 1)->atttypid;
    switch (category(type)) {
    case C_NUMERIC: /* 1.0 and 1.00 are one jsonb number */
        return DatumGetInt32(DirectFunctionCall2(numeric_cmp, o, n)) != 0;
    case C_JSONB:
        return !DatumGetBool(DirectFunctionCall2(jsonb_eq, o, n));
    default: {
        StringInfoData a, b;
        initStringInfo(&a);
        initStringInfo(&b);
        append_value(&a, o, type);
        append_value(&b, n, type);
        return a.len != b.len || memcmp(a.data, b.data, a.len) != 0;
    }
    }
}

/* ===== the wake-up gate, as the plpgsql one: the sequence sqlnotify.wake holds the
 * milliseconds of the last NOTIFY; a writer notifies when it is 10 ms old ===== */

static void wake(void)
{
    Oid seq = sequence("wake");
    if (!OidIsValid(seq))
        return;
    int64 ms = GetCurrentTimestamp() / 1000 + EPOCH_MS;
    LOCAL_FCINFO(fc, 1);
    InitFunctionCallInfoData(*fc, NULL, 1, InvalidOid, NULL, NULL);
    fc->args[0].value = ObjectIdGetDatum(seq);
    fc->args[0].isnull = false;
    Datum last = pg_sequence_last_value(fc);
    int64 gap = ms - (fc->isnull ? 0 : DatumGetInt64(last));
    if (gap > WAKE_MS || gap < -60000) {
        DirectFunctionCall2(setval_oid, ObjectIdGetDatum(seq), Int64GetDatum(ms));
        Async_Notify(WAKE_CHANNEL, "");
    }
}

/* ===== the trigger ===== */

Datum capture(PG_FUNCTION_ARGS)
{
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errmsg("sqlnotify: capture() runs only as a trigger")));
    TriggerData *td = (TriggerData *) fcinfo->context;
    if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event))
        ereport(ERROR, (errmsg("sqlnotify: capture() runs only as an AFTER ... FOR EACH ROW trigger")));
    TupleDesc desc = RelationGetDescr(td->tg_relation);
    bool upd = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
    HeapTuple oldt = upd || TRIGGER_FIRED_BY_DELETE(td->tg_event) ? td->tg_trigtuple : NULL;
    HeapTuple rec = upd ? td->tg_newtuple : td->tg_trigtuple; /* NEW, or OLD for a delete */
    watch w;
    watch_read(&w, td->tg_trigger, desc);

    if (upd && w.ntrig > 0) {
        bool any = false;
        for (int i = 0; i < w.ntrig && !any; i++)
            any = changed(&w.trig[i], oldt, rec, desc);
        if (!any)
            return PointerGetDatum(NULL);
    }
    bool keychange = false;
    for (int i = 0; upd && i < w.npk && !keychange; i++)
        keychange = changed(&w.pk[i], oldt, rec, desc);

    /* the key alone first: it is also what the hash is of */
    StringInfoData key, oldkey, p;
    initStringInfo(&key);
    initStringInfo(&oldkey);
    initStringInfo(&p);
    bool have_key = append_object(&key, w.pk, w.npk, rec, desc);
    bool have_oldkey = keychange && have_key && append_object(&oldkey, w.pk, w.npk, oldt, desc);
    int nold = upd ? w.nold : 0;
    /* {"o": …, "x": …, "id": …, "oid": …}: jsonb's order of the top-level keys; a column
     * gone: {"t": true, "id": …} */
    bool whole = have_key;
    if (whole) {
        appendStringInfoString(&p, nold > 0 ? "{\"o\": " : "{\"x\": ");
        if (nold > 0) {
            whole = append_object(&p, w.old, nold, oldt, desc);
            appendStringInfoString(&p, ", \"x\": ");
        }
        whole = whole && append_object(&p, w.extra, w.nextra, rec, desc);
    }
    if (!whole) {
        resetStringInfo(&p);
        appendStringInfoString(&p, "{\"t\": true");
    }
    if (have_key) {
        appendStringInfoString(&p, ", \"id\": ");
        appendBinaryStringInfo(&p, key.data, key.len);
        if (have_oldkey) {
            appendStringInfoString(&p, ", \"oid\": ");
            appendBinaryStringInfo(&p, oldkey.data, oldkey.len);
        }
    }
    appendStringInfoChar(&p, '}');

    /* the xid before the id (see floor_of in journal.c), then the table by the id's epoch */
    FullTransactionId xid = GetTopFullTransactionId();
    Oid seq = sequence("journal_id");
    if (!OidIsValid(seq))
        journal_open(-1); /* says the journal is missing */
    int64 id = nextval_internal(seq, true);
    Relation r = journal_open((int) ((id >> 32) % NTABLES));
    text *hashed = have_key ? cstring_to_text_with_len(key.data, key.len) : cstring_to_text_with_len(p.data, p.len);
    int32 h = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID, PointerGetDatum(hashed))) ^
              (int32) RelationGetRelid(td->tg_relation);
    Datum values[6];
    bool nulls[6] = {false, false, false, false, false, false};
    values[0] = Int64GetDatum(id);
    values[1] = FullTransactionIdGetDatum(xid);
    values[2] = PointerGetDatum(cstring_to_text(w.channel));
    values[3] = PointerGetDatum(cstring_to_text_with_len(p.data, p.len));
    values[4] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
    values[5] = Int32GetDatum(h);
    journal_insert(r, values, nulls);
    table_close(r, NoLock);
    wake();
    return PointerGetDatum(NULL);
}
