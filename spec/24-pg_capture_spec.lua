-- PostgreSQL with the server extension sqlnotify_capture: its C trigger functions must deliver
-- exactly the events the per-watch plpgsql trigger delivers, sqlnotify_capture.capture() in
-- durable mode and sqlnotify_capture.notify() in live mode; the whole suite runs once for each.
-- Two hosts run the same watcher script on twin tables: one with the default environment on
-- spec24.c_* (the C trigger, where every column a watch sends is of a simple type) and one
-- with SQLNOTIFY_PG_CAPTURE=plpgsql on spec24.p_* (the plpgsql trigger). Each case makes the
-- same writes on both, then asserts that both hosts printed the same events, every field of
-- every event with its Lua type (floats bit for bit), and the exact values of some of them.
-- Every table lives in the schema spec24; the durable consumers are s24_c and s24_p, dropped
-- at the end.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local S = "spec24"
local URL = H.pg_url
local fmt = string.format
local NULL = sqlnotify.null

-- H.SER: the canonical text of a Lua value (spec/helper.lua), in the hosts and here.
local SER = H.SER
local ser = assert(load(SER, "ser"))(NULL)

-- Every column of the types table but its key.
local TYPE_COLS = { "i2", "i4", "i8", "o", "f4", "f8", "n", "n2", "b", "t", "vc", "ch", "nm", "c1", "u", "d",
  "ts", "tz", "tm", "ttz", "iv", "by", "j", "dn", "db", "df", "dt" }

-- The watcher: arg[1] url, arg[2] consumer ("-": live mode), arg[3] the tables' prefix ("c" or "p"). Prints
-- "E <table> <event>" for each event, the event without channel, timestamp, written_at, seq and table.
local HOST = "local SER = [==[" .. SER .. "]==]\n" .. [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, consumer, P = arg[1], arg[2], arg[3]
local ser, show = assert(load(SER, "ser"))(sqlnotify.null)
local durable = consumer ~= "-"
local n = assert(sqlnotify.notifier{ url = url, consumer = durable and consumer or nil, shares = durable and 1 or nil,
  nulls = true })
local function watch(tbl, op, opts)
  local name = "spec24." .. P .. "_" .. tbl
  n:watch(name, op, opts)
  n:subscribe(name, op, show)
end
local ALL = { ]] .. '"' .. table.concat(TYPE_COLS, '", "') .. '"' .. [[ }
watch("types", "insert", { extra_columns = ALL })
watch("types", "update", { extra_columns = ALL })
watch("types", "delete", { extra_columns = ALL })
watch("old", "update", { extra_columns = { "a" }, old_columns = { "a", "b", "c", "f", "j" } })
watch("key", "insert", { extra_columns = { "v" } })
watch("key", "update", { extra_columns = { "v" } })
watch("trig", "update", { extra_columns = { "n", "f", "o" }, trigger_columns = { "n", "f", "t", "iv" } })
watch("nkey", "update", { extra_columns = { "v" } })
local WIDE = {}
for i = 1, 120 do WIDE[i] = "c" .. i end
watch("wide", "insert", { extra_columns = WIDE })
watch("comp", "insert", { extra_columns = { "v" } })
watch("comp", "update", { extra_columns = { "v" } })
watch("comp", "delete", { extra_columns = { "v" } })
watch("mixed", "insert", { extra_columns = { "js", "v" } })   -- json: the plpgsql trigger
watch("mixed", "update", { extra_columns = { "a" } })         -- an array: the plpgsql trigger
watch("mixed", "delete", { extra_columns = { "v" } })         -- simple types only: the C trigger
local WEIRD = { 'We"ird col', "ÉTÉ", "select", "g" }
watch('Weird"Näme_with_a_rather_long_name_x', "insert", { extra_columns = WEIRD })
watch('Weird"Näme_with_a_rather_long_name_x', "update", { extra_columns = WEIRD,
  old_columns = { "select", 'We"ird col' }, trigger_columns = { "ÉTÉ", "select" } })
watch("alter", "insert", { extra_columns = { "v", "w" } })
watch("back", "insert", { extra_columns = { "v", "w" } })
watch("part", "insert", { extra_columns = { "a", "b" } })
watch("part", "update", { extra_columns = { "a", "b" }, old_columns = { "b" } })
watch("part", "delete", { extra_columns = { "a" } })
assert(n:start())
print("ready")
]]

-- What each table is made of ({P}: the prefix).
local TABLES = [[
CREATE TABLE spec24.{P}_types (id bigint PRIMARY KEY, gone text, i2 int2, i4 int4, i8 int8, o oid, f4 real,
  f8 double precision, n numeric, n2 numeric(6,2), b boolean, t text, vc varchar(5), ch char(4), nm name,
  c1 "char", u uuid, d date, ts timestamp, tz timestamptz, tm time, ttz timetz, iv interval, by bytea,
  j jsonb, dn spec24.dnum, db spec24.dbytes, df spec24.dfloat, dt spec24.dtext);
ALTER TABLE spec24.{P}_types DROP COLUMN gone;
CREATE TABLE spec24.{P}_old (id int PRIMARY KEY, a text, b int, c numeric, f float8, j jsonb);
CREATE TABLE spec24.{P}_key (id bigint PRIMARY KEY, v text);
CREATE TABLE spec24.{P}_trig (id int PRIMARY KEY, n numeric, f float8, o text, t timestamptz, iv interval);
CREATE TABLE spec24.{P}_nkey (id numeric PRIMARY KEY, v text);
SELECT format('CREATE TABLE spec24.{P}_wide (id int PRIMARY KEY, %s)',
  string_agg(format('c%s int', i), ', ')) FROM generate_series(1, 120) i \gexec
CREATE TABLE spec24.{P}_comp (name text, k int, v text, PRIMARY KEY (name, k));
CREATE TABLE spec24.{P}_mixed (id int PRIMARY KEY, js json, a int[], v text);
CREATE TABLE spec24."{P}_Weird""Näme_with_a_rather_long_name_x" ("Id Key" int PRIMARY KEY, "We""ird col" text,
  "ÉTÉ" int, "select" boolean, g int GENERATED ALWAYS AS ("ÉTÉ" * 2) STORED);
CREATE TABLE spec24.{P}_alter (id int PRIMARY KEY, v int, w text);
CREATE TABLE spec24.{P}_back (id int PRIMARY KEY, v int, w text);
CREATE TABLE spec24.{P}_part (id int, a text, b int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE spec24.{P}_part_1 (b int, junk int, a text, id int NOT NULL);
ALTER TABLE spec24.{P}_part_1 DROP COLUMN junk;
ALTER TABLE spec24.{P}_part ATTACH PARTITION spec24.{P}_part_1 FOR VALUES FROM (0) TO (100);
CREATE TABLE spec24.{P}_part_2 PARTITION OF spec24.{P}_part FOR VALUES FROM (100) TO (200);
]]

-- The same text for both prefixes.
local function per(text, P) return (text:gsub("{P}", P)) end

-- Run writes (SQL with {T} for the table) on c_<tbl>, then the same on p_<tbl>, each in a
-- session of its own.
local function write(tbl, text)
  for _, P in ipairs { "c", "p" } do
    local name = (P .. "_" .. tbl):gsub('"', '""')
    H.psql((text:gsub("{T}", function() return S .. '."' .. name .. '"' end)))
  end
end

local hosts = {}

-- The lines a host printed for one table: the event texts, in order.
local function lines(p, tbl)
  local out = {}
  for t, raw in p:stdout():gmatch("E (%S+) ([^\n]*)\n") do
    if t == tbl then out[#out + 1] = raw end
  end
  return out
end

local function decode(raw)
  return assert(load("return " .. raw, "event", "t", { NULL = NULL, NAN = 0 / 0 }))()
end

-- path -> canonical text of every scalar in a decoded event ("extra_columns.j.b.1": "1").
local function flatten(v, path, out)
  if type(v) == "table" and next(v) ~= nil then
    for k, x in pairs(v) do flatten(x, path .. (path == "" and "" or ".") .. tostring(k), out) end
  else
    out[path] = ser(v)
  end
  return out
end

-- Wait for count events of c_<tbl> and p_<tbl>, then a little longer to see no more come;
-- assert that both paths delivered these same count events, field by field, and return them
-- (the C path's) decoded.
local function delivered(tbl, count)
  for _, P in ipairs { "c", "p" } do
    local p = hosts[P]
    p:wait_count(function(x) return lines(x, P .. "_" .. tbl) end, count, 20)
  end
  H.sleep(0.4)
  local c, p = lines(hosts.c, "c_" .. tbl), lines(hosts.p, "p_" .. tbl)
  assert.are.equal(count, #p, "plpgsql path: events of p_" .. tbl .. "\n" .. table.concat(p, "\n")
    .. "\n" .. hosts.p:stderr())
  assert.are.equal(count, #c, "C path: events of c_" .. tbl .. "\n" .. table.concat(c, "\n")
    .. "\n" .. hosts.c:stderr())
  local diffs = {}
  for i = 1, count do
    if p[i] ~= c[i] then
      local fc, fp = {}, {}
      flatten(decode(c[i]), "", fc)
      flatten(decode(p[i]), "", fp)
      for k, v in pairs(fp) do
        if fc[k] ~= v then diffs[#diffs + 1] = { i, k, fmt("C %s, plpgsql %s", fc[k] or "absent", v) } end
      end
      for k, v in pairs(fc) do
        if fp[k] == nil then diffs[#diffs + 1] = { i, k, fmt("C %s, plpgsql absent", v) } end
      end
    end
  end
  table.sort(diffs, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  for i, d in ipairs(diffs) do diffs[i] = fmt("event %d %s: %s", d[1], d[2], d[3]) end
  assert(#diffs == 0, fmt("%s: the C path's events differ from the plpgsql path's:\n  %s", tbl,
    table.concat(diffs, "\n  ")))
  local out = {}
  for i, raw in ipairs(c) do out[i] = decode(raw) end
  return out
end

-- The exact value (NaN, -0.0, integer or float included), through the canonical text.
local function exactly(want, got, what)
  assert.are.equal(ser(want), ser(got), what)
end

-- Our triggers on spec24's tables: { [table] = { [op] = "schema.function (language)" } }.
local function trigger_functions()
  local out = {}
  local rows = H.psql([[
SELECT c.relname, CASE WHEN t.tgtype & 4 <> 0 THEN 'insert' WHEN t.tgtype & 16 <> 0 THEN 'update'
    WHEN t.tgtype & 8 <> 0 THEN 'delete' ELSE 'other' END,
  pn.nspname || '.' || p.proname, l.lanname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = 'spec24' AND NOT t.tgisinternal ORDER BY 1, 2]])
  for rel, op, fn, lang in rows:gmatch("([^|\n]+)|([^|\n]+)|([^|\n]+)|([^|\n]+)\n") do
    out[rel] = out[rel] or {}
    assert.is_nil(out[rel][op], "two triggers for " .. op .. " on " .. rel)
    out[rel][op] = fn .. " (" .. lang .. ")"
  end
  return out
end

local CAPTURE = { durable = "sqlnotify_capture.capture (c)", live = "sqlnotify_capture.notify (c)" }

local function drop_ours(admin)
  for _, c in ipairs(assert(admin:consumers())) do
    if c.name:sub(1, 4) == "s24_" then admin:drop_consumer(c.name) end
  end
end

-- The suite in mode "durable" or "live".
local function suite(mode)
describe("PostgreSQL " .. mode .. " mode: the C trigger (" .. CAPTURE[mode] .. ") against the plpgsql one",
  function()
  local admin
  local durable = mode == "durable"

  setup(function()
    admin = H.pg_notifier()
    drop_ours(admin)
    H.fresh_schema(S)
    H.psql([[
CREATE DOMAIN spec24.dnum AS numeric;
CREATE DOMAIN spec24.dbytes AS bytea;
CREATE DOMAIN spec24.dfloat AS double precision;
CREATE DOMAIN spec24.dtext AS varchar(10) CHECK (VALUE <> 'forbidden');
]] .. per(TABLES, "c") .. per(TABLES, "p"))
    -- the C path runs in the default environment, whatever the one running the specs sets
    hosts.c = H.host(HOST, { URL, durable and "s24_c" or "-", "c" }, "env -u SQLNOTIFY_PG_CAPTURE")
    hosts.p = H.host(HOST, { URL, durable and "s24_p" or "-", "p" }, "SQLNOTIFY_PG_CAPTURE=plpgsql")
    for _, P in ipairs { "c", "p" } do
      assert(hosts[P]:wait_for("ready\n", 30), "the " .. P .. " host did not start: " .. hosts[P]:stderr())
    end
  end)

  teardown(function()
    local errs = {}
    for _, P in ipairs { "c", "p" } do
      if hosts[P] then
        local ok, err = pcall(hosts[P].stop, hosts[P])
        if not ok then errs[#errs + 1] = P .. " host: " .. tostring(err) end
      end
    end
    drop_ours(admin)
    H.drop_schema(S)
    admin:close()
    assert(#errs == 0, table.concat(errs, "\n"))
  end)

  it("runs where the server has the extension sqlnotify_capture (make check installs it)", function()
    local have = H.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'sqlnotify_capture'")
    assert(have:match("%d+") == "1", "the PostgreSQL server has no extension sqlnotify_capture: `make check`"
      .. " builds and installs it (pgext/) before it runs the specs")
  end)

  it("delivers the same events for values of every simple type, NULLs, special floats and session settings",
    function()
    write("types", [[
SET TimeZone = 'UTC';
INSERT INTO {T} VALUES (1, 32767, -2147483648, 9223372036854775807, 4294967295, 0.1, 0.1, 1.50, 1.5, true,
  E'a"b\\c\nd\u0001\u00e9\t\u2028\U0001F600', 'abc', 'ab', 'nm', 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+02', '23:59:59.999999', '03:04:05+05:30',
  '1 year 2 mons 3 days 04:05:06.7', '\x00ff10',
  '{"a": 1.0, "b": [1, 2.50, {"c": null}], "s": "x\"y\n", "e": {}, "n": -0.5e3, "big": 12345678901234567890}',
  1.50, '\x01ab', 'NaN', 'dom');
INSERT INTO {T} (id) VALUES (2);
INSERT INTO {T} (id, f4, f8, n, df) VALUES (3, 'NaN', 'NaN', 'NaN', 'NaN');
INSERT INTO {T} (id, f4, f8, n, d, ts, tz) VALUES (4, 'Infinity', 'Infinity', 'Infinity', 'infinity',
  'infinity', '-infinity');
INSERT INTO {T} (id, f4, f8, n, df) VALUES (5, '-Infinity', '-Infinity', '-Infinity', '-Infinity');
INSERT INTO {T} (id, f4, f8, n, i2, i4, i8, b, t, j, vc, ch) VALUES (6, 1e20, 1e20,
  1234567890123456789012345678901234567890.0123456789, -32768, 0, -9223372036854775808, false, '', 'null',
  '', '');
INSERT INTO {T} (id, f4, f8, n, o, j, dn, df) VALUES (7, 1.5e-7, 1.5e-7, -0.000, 0, '"str"',
  1234567890123456789.123456789, 1e-300);
INSERT INTO {T} (id, f4, f8, n, j, by) VALUES (8, '-0', '-0', 0.1, '[]', '');
SET extra_float_digits = 0;
SET bytea_output = 'escape';
SET IntervalStyle = 'postgres_verbose';
SET TimeZone = 'America/New_York';
SET DateStyle = 'SQL, DMY';
INSERT INTO {T} (id, f4, f8, df, by, db, iv, tz, ts, d, ttz, tm) VALUES (9, (1.0 / 3)::real,
  0.1::float8 + 0.2::float8, 0.1::float8 + 0.2::float8, '\x00ff', '\x6869', '1 day 02:03:04',
  '2024-07-01 12:00:00+00', '2024-01-02 03:04:05', '2024-02-29', '03:04:05-01', '01:02:03');
RESET ALL;
SET TimeZone = 'UTC';
UPDATE {T} SET t = 'updated', i4 = i4 + 1 WHERE id = 1;
UPDATE {T} SET (i2, i4, i8, o, f4, f8, n, n2, b, t, vc, ch, nm, c1, u, d, ts, tz, tm, ttz, iv, by, j, dn, db,
  df, dt) = (SELECT i2, i4, i8, o, f4, f8, n, n2, b, t, vc, ch, nm, c1, u, d, ts, tz, tm, ttz, iv, by, j, dn,
  db, df, dt FROM {T} WHERE id = 1) WHERE id = 2;
UPDATE {T} SET i2 = NULL, t = NULL, j = NULL, by = NULL, ch = NULL WHERE id = 6;
UPDATE {T} SET id = id WHERE id = 9;
DELETE FROM {T} WHERE id = 3;
DELETE FROM {T} WHERE id = 1;
DELETE FROM {T} WHERE id = 2;
INSERT INTO {T} (id, t, by, j, n) VALUES (10, repeat('ab"\', 30000),
  (SELECT string_agg(decode(md5(i::text), 'hex'), ''::bytea) FROM generate_series(1, 2000) i),
  (SELECT jsonb_agg(md5(i::text)) FROM generate_series(1, 500) i), repeat('9', 1000)::numeric);
UPDATE {T} SET i4 = 1 WHERE id = 10;
DELETE FROM {T} WHERE id = 10;
]])
    local ev = delivered("types", 19)
    assert.are.same({ "insert", "insert", "insert", "insert", "insert", "insert", "insert", "insert", "insert",
      "update", "update", "update", "update", "delete", "delete", "delete", "insert", "update", "delete" },
      H.pluck(ev, "operation"))
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 6, 9, 3, 1, 2, 10, 10, 10 }, H.pluck(ev, "id"))

    local TEXT = 'a"b\\c\nd\1\u{e9}\t\u{2028}\u{1F600}'
    local row1 = {
      i2 = 32767, i4 = -2147483648, i8 = math.maxinteger, o = "4294967295", f4 = 0.1, f8 = 0.1, n = "1.50",
      n2 = "1.50", b = true, t = TEXT, vc = "abc", ch = "ab  ", nm = "nm", c1 = "x",
      u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", d = "2024-02-29", ts = "2024-01-02T03:04:05.123456",
      tz = "2024-01-02T01:04:05.5+00:00", tm = "23:59:59.999999", ttz = "03:04:05+05:30",
      iv = "1 year 2 mons 3 days 04:05:06.7", by = "\0\255\16",
      j = { a = 1.0, b = { 1, 2.5, { c = NULL } }, s = 'x"y\n', e = {}, n = -500, big = 12345678901234567890.0 },
      -- a domain's values arrive as the type under it says: every digit, raw bytes, a float
      dn = "1.50", db = "\1\171", df = 0 / 0, dt = "dom",
    }
    exactly({ schema = S, operation = "insert", id = 1, key = { id = 1 }, extra_columns = row1, truncated = false },
      ev[1], "insert 1")
    local nulls = {}
    for _, c in ipairs(TYPE_COLS) do nulls[c] = NULL end
    exactly({ schema = S, operation = "insert", id = 2, key = { id = 2 }, extra_columns = nulls, truncated = false },
      ev[2], "insert 2: NULL in every column")
    local x = ev[3].extra_columns
    exactly({ 0 / 0, 0 / 0, "NaN" }, { x.f4, x.f8, x.n }, "NaN")
    x = ev[4].extra_columns
    exactly({ math.huge, math.huge, "Infinity", "infinity", "infinity", "-infinity" },
      { x.f4, x.f8, x.n, x.d, x.ts, x.tz }, "infinities")
    x = ev[5].extra_columns
    exactly({ -math.huge, -math.huge, "-Infinity" }, { x.f4, x.f8, x.n }, "-Infinity")
    x = ev[6].extra_columns
    exactly({ 1e20, 1e20, "1234567890123456789012345678901234567890.0123456789", -32768, 0, math.mininteger,
      false, "", NULL, "", "    " }, { x.f4, x.f8, x.n, x.i2, x.i4, x.i8, x.b, x.t, x.j, x.vc, x.ch }, "row 6")
    x = ev[7].extra_columns
    exactly({ 1.5e-7, 1.5e-7, "0.000", "0", "str", 1e-300, "1234567890123456789.123456789" },
      { x.f4, x.f8, x.n, x.o, x.j, x.df, x.dn }, "row 7")
    x = ev[8].extra_columns
    assert.are.equal("float", math.type(x.f4))
    assert.are.equal("float", math.type(x.f8))
    assert.is_true(x.f4 == 0 and x.f8 == 0, "-0 arrives as a zero") -- its sign: as the plpgsql path has it
    exactly({ "0.1", {}, "" }, { x.n, x.j, x.by }, "row 8")
    -- a writer's session settings change nothing: floats shortest exact, bytea raw, timestamps
    -- ISO 8601 (in the writer's time zone, as to_jsonb writes them), intervals as the style says
    x = ev[9].extra_columns
    exactly("hi", x.db, "row 9: a domain over bytea")
    exactly({ 0.33333334, 0.30000000000000004, 0.30000000000000004, "\0\255",
      "@ 1 day 2 hours 3 mins 4 secs", "2024-07-01T08:00:00-04:00", "2024-01-02T03:04:05", "2024-02-29",
      "03:04:05-01", "01:02:03" }, { x.f4, x.f8, x.df, x.by, x.iv, x.tz, x.ts, x.d, x.ttz, x.tm }, "row 9")

    -- updates: NEW values
    local upd1 = {}
    for k, v in pairs(row1) do upd1[k] = v end
    upd1.t, upd1.i4 = "updated", -2147483647
    exactly({ schema = S, operation = "update", id = 1, key = { id = 1 }, extra_columns = upd1, truncated = false },
      ev[10], "update 1")
    exactly(upd1, ev[11].extra_columns, "update 2: NULL to values")
    x = ev[12].extra_columns
    exactly({ NULL, NULL, NULL, NULL, NULL, 1e20 }, { x.i2, x.t, x.j, x.by, x.ch, x.f8 }, "update 6: to NULL")
    assert.is_nil(ev[13].old_id)
    -- deletes: OLD values
    exactly({ schema = S, operation = "delete", id = 1, key = { id = 1 }, extra_columns = upd1, truncated = false },
      ev[15], "delete 1")
    exactly(upd1, ev[16].extra_columns, "delete 2")
    for _, e in ipairs(ev) do assert.is_nil(e.old) end
    -- values kept out of line (TOAST), compressed or not, also where an update left them as they were;
    -- in live mode they do not fit a NOTIFY: the key alone, marked truncated
    for i = 17, 19 do
      x = ev[i].extra_columns
      if not durable then
        exactly({ schema = S, operation = ev[i].operation, id = 10, key = { id = 10 }, extra_columns = {},
          truncated = true }, ev[i], "row 10 in live mode")
        goto next
      end
      assert.are.equal(('ab"\\'):rep(30000), x.t)
      assert.are.equal(32000, #x.by)
      assert.are.equal(500, #x.j)
      assert.are.equal(("9"):rep(1000), x.n)
      assert.are.equal(i == 17 and NULL or 1, x.i4)
      exactly(ev[17].extra_columns.by, x.by)
      ::next::
    end
  end)

  it("delivers the same old values (event.old), NULL to a value and a value to NULL", function()
    write("old", [[
INSERT INTO {T} VALUES (1, NULL, 5, 1.10, 0.5, '{"k": [1]}'), (2, 'x', NULL, NULL, NULL, NULL);
UPDATE {T} SET a = 'now', b = NULL, c = 2.20, f = 'NaN', j = NULL WHERE id = 1;
UPDATE {T} SET a = NULL, b = 7, c = 3, f = 1e-300, j = '1.0' WHERE id = 2;
UPDATE {T} SET a = a WHERE id = 1;
]])
    local ev = delivered("old", 3)
    exactly({
      { schema = S, operation = "update", id = 1, key = { id = 1 }, extra_columns = { a = "now" }, truncated = false,
        old = { a = NULL, b = 5, c = "1.10", f = 0.5, j = { k = { 1 } } } },
      { schema = S, operation = "update", id = 2, key = { id = 2 }, extra_columns = { a = NULL }, truncated = false,
        old = { a = "x", b = NULL, c = NULL, f = NULL, j = NULL } },
      { schema = S, operation = "update", id = 1, key = { id = 1 }, extra_columns = { a = "now" }, truncated = false,
        old = { a = "now", b = NULL, c = "2.20", f = 0 / 0, j = NULL } },
    }, ev)
  end)

  it("delivers the same old_id when an update changes the key, and none when it does not", function()
    write("key", [[
INSERT INTO {T} VALUES (1, 'a');
UPDATE {T} SET id = 10 WHERE id = 1;
UPDATE {T} SET v = 'b' WHERE id = 10;
UPDATE {T} SET id = 9007199254740993, v = 'c' WHERE id = 10;
UPDATE {T} SET id = id WHERE id = 9007199254740993;
UPDATE {T} SET id = -9223372036854775808 WHERE id = 9007199254740993;
BEGIN;
SAVEPOINT s;
INSERT INTO {T} VALUES (99, 'rolled back');
ROLLBACK TO SAVEPOINT s;
INSERT INTO {T} VALUES (98, 'kept');
COMMIT;
]])
    local ev = delivered("key", 7)
    local function e(op, id, v, old_id)
      return { schema = S, operation = op, id = id, key = { id = id }, extra_columns = { v = v }, old_id = old_id,
        truncated = false }
    end
    exactly({
      e("insert", 1, "a"),
      e("update", 10, "a", 1),
      e("update", 10, "b"),
      e("update", 9007199254740993, "c", 10),
      e("update", 9007199254740993, "c"),
      e("update", math.mininteger, "c", 9007199254740993),
      e("insert", 98, "kept"),
    }, ev)
    -- a numeric key: 1.0 -> 1.00 is no change of the key (to_jsonb compares them equal)
    write("nkey", [[
INSERT INTO {T} VALUES (1.0, 'a');
UPDATE {T} SET id = 1.00 WHERE id = 1;
UPDATE {T} SET id = 2 WHERE id = 1;
]])
    ev = delivered("nkey", 2)
    exactly({
      { schema = S, operation = "update", id = "1.00", key = { id = "1.00" }, extra_columns = { v = "a" },
        truncated = false },
      { schema = S, operation = "update", id = "2", key = { id = "2" }, extra_columns = { v = "a" },
        old_id = "1.00", truncated = false },
    }, ev)
  end)

  it("fires an UPDATE watch with trigger_columns on the same changes: 1.0 -> 1.00, -0 -> 0, NaN -> NaN,"
    .. " NULL -> NULL and one instant in two zones are no change; '1 day' -> '24 hours' is one", function()
    write("trig", [[
INSERT INTO {T} VALUES (1, 1.0, 0, 'a', '2024-01-01 00:00:00+00'), (2, 7, 7, 'z', NULL);
UPDATE {T} SET o = 'b' WHERE id = 1;
UPDATE {T} SET n = 1.00 WHERE id = 1;
UPDATE {T} SET f = '-0' WHERE id = 1;
UPDATE {T} SET t = '2024-01-01 01:00:00+01' WHERE id = 1;
UPDATE {T} SET n = 2, o = 'c' WHERE id = 1;
UPDATE {T} SET f = 'NaN' WHERE id = 1;
UPDATE {T} SET f = 'NaN', o = 'd' WHERE id = 1;
UPDATE {T} SET n = NULL WHERE id = 1;
UPDATE {T} SET n = NULL, o = 'e' WHERE id = 1;
UPDATE {T} SET t = NULL WHERE id = 1;
UPDATE {T} SET t = NULL, o = 'f' WHERE id = 1;
UPDATE {T} SET t = '2024-01-01' WHERE id = 1;
UPDATE {T} SET o = 'g', n = 7.000 WHERE id = 2;
UPDATE {T} SET f = 'Infinity', n = 5 WHERE id = 1;
UPDATE {T} SET f = 'Infinity' WHERE id = 1;
UPDATE {T} SET f = 8 WHERE id = 2;
UPDATE {T} SET iv = '1 day' WHERE id = 2;
UPDATE {T} SET iv = '24 hours', o = 'h' WHERE id = 2;
UPDATE {T} SET iv = '1440 minutes', o = 'i' WHERE id = 2;
UPDATE {T} SET f = 8.0, o = 'j' WHERE id = 2;
UPDATE {T} SET n = 7.5, o = 'k' WHERE id = 2;
]])
    local ev = delivered("trig", 10)
    local function e(id, n, f, o)
      return { schema = S, operation = "update", id = id, key = { id = id }, extra_columns = { n = n, f = f, o = o },
        truncated = false }
    end
    exactly({
      e(1, "2", ev[1].extra_columns.f, "c"), -- f was set to -0: as the plpgsql path sends it
      e(1, "2", 0 / 0, "c"),
      e(1, NULL, 0 / 0, "d"),
      e(1, NULL, 0 / 0, "e"),
      e(1, NULL, 0 / 0, "f"),
      e(1, "5", math.huge, "f"),
      e(2, "7.000", 8.0, "g"),
      e(2, "7.000", 8.0, "g"), -- interval NULL -> '1 day'
      e(2, "7.000", 8.0, "h"), -- '1 day' -> '24 hours': equal intervals, but to_jsonb writes them apart
      e(2, "7.5", 8.0, "k"),
    }, ev)
    assert.is_true(ev[1].extra_columns.f == 0)
  end)

  it("delivers the same composite keys: id in primary key order, key by name, old_id", function()
    write("comp", [[
INSERT INTO {T} VALUES ('a', 1, 'x'), (E'b"\\', 2, NULL);
UPDATE {T} SET v = 'y' WHERE name = 'a';
UPDATE {T} SET k = 3 WHERE name = 'a';
UPDATE {T} SET name = 'c' WHERE k = 2;
DELETE FROM {T} WHERE name = 'a';
]])
    local ev = delivered("comp", 6)
    local function e(op, name, k, v, old_id)
      return { schema = S, operation = op, id = { name, k }, key = { name = name, k = k }, extra_columns = { v = v },
        old_id = old_id, truncated = false }
    end
    exactly({
      e("insert", "a", 1, "x"),
      e("insert", 'b"\\', 2, NULL),
      e("update", "a", 1, "y"),
      e("update", "a", 3, "y", { "a", 1 }),
      e("update", "c", 2, NULL, { 'b"\\', 2 }),
      e("delete", "a", 3, "y"),
    }, ev)
  end)

  it("delivers the same events for quoted, mixed-case, non-ASCII column names and a generated column", function()
    write('Weird"Näme_with_a_rather_long_name_x', [[
INSERT INTO {T} ("Id Key", "We""ird col", "ÉTÉ", "select") VALUES (1, 'w', 2, true);
UPDATE {T} SET "We""ird col" = 'w2' WHERE "Id Key" = 1;
UPDATE {T} SET "ÉTÉ" = 3, "select" = NULL WHERE "Id Key" = 1;
]])
    local ev = delivered('Weird"Näme_with_a_rather_long_name_x', 2)
    exactly({
      { schema = S, operation = "insert", id = 1, key = { ["Id Key"] = 1 }, truncated = false,
        extra_columns = { ['We"ird col'] = "w", ["ÉTÉ"] = 2, select = true, g = 4 } },
      { schema = S, operation = "update", id = 1, key = { ["Id Key"] = 1 }, truncated = false,
        extra_columns = { ['We"ird col'] = "w2", ["ÉTÉ"] = 3, select = NULL, g = 6 },
        old = { select = true, ['We"ird col'] = "w2" } },
    }, ev)
  end)

  it("delivers the same events for a watch of 120 columns", function()
    write("wide", [[
SELECT format('INSERT INTO {T} VALUES (1, %s)', string_agg(i::text, ', ')) FROM generate_series(1, 120) i \gexec
INSERT INTO {T} (id) VALUES (2);
]])
    local ev = delivered("wide", 2)
    local all, none = {}, {}
    for i = 1, 120 do all["c" .. i], none["c" .. i] = i, NULL end
    exactly({ all, none }, { ev[1].extra_columns, ev[2].extra_columns })
  end)

  it("delivers the same events for a partitioned table, with a partition whose columns lie in another order",
    function()
    write("part", [[
INSERT INTO {T} VALUES (1, 'one', 10), (150, 'x', 20);
UPDATE {T} SET b = 11 WHERE id = 1;
UPDATE {T} SET id = 120 WHERE id = 1;
UPDATE {T} SET id = 2, a = NULL WHERE id = 150;
DELETE FROM {T} WHERE id = 2;
]])
    -- an update that moves a row to another partition is a delete and an insert
    local ev = delivered("part", 8)
    local function e(op, id, x, old)
      return { schema = S, operation = op, id = id, key = { id = id }, extra_columns = x, old = old,
        truncated = false }
    end
    exactly({
      e("insert", 1, { a = "one", b = 10 }),
      e("insert", 150, { a = "x", b = 20 }),
      e("update", 1, { a = "one", b = 11 }, { b = 10 }),
      e("delete", 1, { a = "one" }),
      e("insert", 120, { a = "one", b = 11 }),
      e("delete", 150, { a = "x" }),
      e("insert", 2, { a = NULL, b = 20 }),
      e("delete", 2, { a = NULL }),
    }, ev)
  end)

  it("delivers the same events after the table changed under the trigger: retyped, renamed, dropped columns",
    function()
    -- One transaction: the host reads the table again when an event lacks a column, and one
    -- read between the two renames would remake the trigger without w until the next check:
    -- a race of the host's, not a difference of the triggers'.
    write("alter", [[
BEGIN;
INSERT INTO {T} VALUES (1, 1, 'a');
ALTER TABLE {T} ALTER COLUMN v TYPE numeric USING v;
INSERT INTO {T} VALUES (2, 2.50, 'b');
ALTER TABLE {T} ALTER COLUMN v TYPE jsonb USING to_jsonb(v);
INSERT INTO {T} VALUES (3, '{"x": [1.0]}', 'c');
ALTER TABLE {T} RENAME COLUMN w TO w2;
INSERT INTO {T} VALUES (4, '1', 'd');
ALTER TABLE {T} RENAME COLUMN w2 TO w;
ALTER TABLE {T} DROP COLUMN v;
ALTER TABLE {T} ADD COLUMN v text;
INSERT INTO {T} (id, v, w) VALUES (5, 'five', 'e');
COMMIT;
]])
    local ev = delivered("alter", 5)
    local function e(id, x, truncated)
      return { schema = S, operation = "insert", id = id, key = { id = id }, extra_columns = x,
        truncated = truncated or false }
    end
    exactly({
      e(1, { v = 1, w = "a" }),
      e(2, { v = 2.5, w = "b" }), -- the column was an integer when the watch was made: a number
      e(3, { v = { x = { 1.0 } }, w = "c" }),
      e(4, { v = 1 }), -- a watched column renamed: the other columns
      e(5, { v = "five", w = "e" }),
    }, ev)
  end)

  it("carries a column renamed and renamed back: at once with the C trigger, after a read of the table with"
    .. " the plpgsql one", function()
    write("back", [[
INSERT INTO {T} VALUES (1, 1, 'a');
ALTER TABLE {T} RENAME COLUMN w TO w2;
INSERT INTO {T} VALUES (2, 2, 'b');
]])
    delivered("back", 2)
    -- event 2 lacked w: each host read the table and made its trigger again while w was gone
    for _, P in ipairs { "c", "p" } do
      assert(hosts[P]:wait_for('insert on "spec24"%."' .. P .. '_back" replaced', 20, "err"), hosts[P]:stderr())
    end
    -- the C trigger looks w up at each call: the next row carries it
    H.psql("ALTER TABLE spec24.c_back RENAME COLUMN w2 TO w; INSERT INTO spec24.c_back VALUES (3, 3, 'c');")
    -- the plpgsql one was made without w: the host sees it back by reading the table again
    H.psql("ALTER TABLE spec24.p_back RENAME COLUMN w2 TO w;")
    assert(hosts.p:wait_for('column "w" of "spec24"%."p_back" is back', 20, "err"), hosts.p:stderr())
    H.psql("INSERT INTO spec24.p_back VALUES (3, 3, 'c');")
    local ev = delivered("back", 3)
    local function e(id, x)
      return { schema = S, operation = "insert", id = id, key = { id = id }, extra_columns = x, truncated = false }
    end
    exactly({ e(1, { v = 1, w = "a" }), e(2, { v = 2 }), e(3, { v = 3, w = "c" }) }, ev)
  end)

  it("uses " .. CAPTURE[mode] .. " for " .. mode .. " watches of simple types only, and never with"
    .. " SQLNOTIFY_PG_CAPTURE=plpgsql", function()
    write("mixed", [[
INSERT INTO {T} VALUES (1, '{"a": 1.0, "a": [2]}', '{1,NULL,3}', 'v');
UPDATE {T} SET a = '{}' WHERE id = 1;
DELETE FROM {T} WHERE id = 1;
]])
    local ev = delivered("mixed", 3)
    exactly({ js = { a = { 2 } }, v = "v" }, ev[1].extra_columns)
    exactly({ a = {} }, ev[2].extra_columns)
    exactly({ v = "v" }, ev[3].extra_columns)

    local fns = trigger_functions()
    local want = {
      types = { "insert", "update", "delete" }, old = { "update" }, key = { "insert", "update" },
      trig = { "update" }, comp = { "insert", "update", "delete" },
      ['Weird"Näme_with_a_rather_long_name_x'] = { "insert", "update" },
      part = { "insert", "update", "delete" }, part_1 = { "insert", "update", "delete" },
      part_2 = { "insert", "update", "delete" }, alter = { "insert" }, back = { "insert" }, nkey = { "update" }, wide = { "insert" },
    }
    for tbl, ops in pairs(want) do
      for _, op in ipairs(ops) do
        assert.are.equal(CAPTURE[mode], (fns["c_" .. tbl] or {})[op], op .. " on c_" .. tbl)
        local p = (fns["p_" .. tbl] or {})[op]
        assert.are.equal("spec24.", p and p:sub(1, 7), op .. " on p_" .. tbl .. ": " .. tostring(p))
        assert.matches("%(plpgsql%)$", p)
      end
    end
    -- a json or an array column: the plpgsql trigger, also in the default environment
    assert.matches("^spec24%..*%(plpgsql%)$", fns.c_mixed.insert)
    assert.matches("^spec24%..*%(plpgsql%)$", fns.c_mixed.update)
    assert.are.equal(CAPTURE[mode], fns.c_mixed.delete)
    assert.matches("^spec24%..*%(plpgsql%)$", fns.p_mixed.delete)
  end)

  if not durable then
    it("keeps the plpgsql trigger for a live watch with overflow, whose rows over the limit go to a table", function()
      H.psql("CREATE TABLE spec24.c_ovf (id int PRIMARY KEY, v text)")
      local live = H.pg_notifier()
      live:watch(S .. ".c_ovf", "insert", { extra_columns = { "v" }, use_overflow_table = true })
      live:watch(S .. ".c_ovf", "delete", { extra_columns = { "v" } })
      local got, handler = H.collector()
      live:subscribe(S .. ".c_ovf", "insert", handler)
      live:subscribe(S .. ".c_ovf", "delete", handler)
      assert(live:start())
      local ok, err = pcall(function()
        local fn = trigger_functions().c_ovf
        assert.matches("^spec24%..*%(plpgsql%)$", fn and fn.insert)
        assert.are.equal(CAPTURE.live, fn and fn.delete)
        H.psql("INSERT INTO spec24.c_ovf VALUES (1, repeat('x', 9000)); DELETE FROM spec24.c_ovf")
        assert.is_true(H.run_until(function() return #got == 2 end, 10))
        exactly({ "insert", 1, 9000, false }, { got[1].operation, got[1].id, #got[1].extra_columns.v, got[1].truncated })
        exactly({ "delete", 1, {}, true }, { got[2].operation, got[2].id, got[2].extra_columns, got[2].truncated })
      end)
      live:stop()
      live:cleanup()
      live:close()
      assert(ok, err)
    end)
  end
end)
end

suite("durable")
suite("live")
