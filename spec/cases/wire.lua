-- spec/cases/wire.lua — the wire format's values (src/dialect.h, "Values inside id, x, o,
-- oid"), once, as one table of cases every dialect runs: each case is a column type per
-- dialect, an SQL value and the exact Lua value it must arrive as, grouped by class
-- (integer, float, decimal, boolean, text, bytes, json, other). spec/33-wire_spec.lua runs it
-- on PostgreSQL (the plpgsql trigger and the C trigger of sqlnotify_capture, live and
-- durable), SQLite (live and durable) and MariaDB (live and durable):
--
--   require("cases.wire")(D, _ENV)
--
-- (_ENV: the spec file's, where busted's describe, it and assert live) with an adapter D:
--   D.name, D.key                  "PostgreSQL", "pg" (the key of the per-dialect fields below:
--                                  pg, sq, my)
--   D.schema                       what event.schema is
--   D.runs                         the ways to run it: { {label =, prefix = put before each table's
--                                  name, consumer = a name (durable mode) or nil (live), env = what
--                                  to put before the host's command line, url =, shares =,
--                                  check = function(tables) asserting which triggers run} }
--   D.url                          the URL a run's host uses when the run names none
--   D.exec(sql, run)               SQL through another client and connection, on run's database
--   D.t(name), D.watch_name(name)  a table's name in SQL text, and as n:watch takes it
--   D.create                       CREATE TABLE ... with %s for the name and %s for the columns
--   D.text(s, type)                an SQL expression of type for the UTF-8 text s
--   D.bytes(b)                     an SQL expression of the bytes b
--   D.keys                         the key table's columns: { {name, type, a, b, c} }: its values in
--                                  rows A, B and in A's key after an update: each {sql, want}
--   D.drop_consumer(run)           forget run's durable consumer (after the run)
--
-- One table of one column per case gets six events: INSERT of every value, INSERT of NULLs,
-- UPDATE NULLs to values (old_columns: every column), UPDATE values to NULLs, DELETE of each.
-- Every column of every event is compared exactly (math.type, every byte, NaN, -0.0), and
-- every event's other fields; a wrong value names its case, dialect type and event.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format
local NULL = sqlnotify.null

local SER = H.SER -- the canonical text of a Lua value (spec/helper.lua)
local ser = assert(load(SER, "ser"))(NULL)

-- The watcher: arg[1] url, arg[2] consumer ("-": live), arg[3] the main table, arg[4] the key
-- table (as n:watch names them), arg[5] the main table's columns, comma-separated, arg[6]
-- shares ("-": the default). Prints "E <table> <event>" for each event, without the fields that
-- differ from run to run (channel, timestamp, written_at, seq) and table.
local HOST = "local SER = [==[" .. SER .. "]==]\n" .. [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, consumer, main, keys, cols, shares = arg[1], arg[2], arg[3], arg[4], arg[5], arg[6]
local ser, show = assert(load(SER, "ser"))(sqlnotify.null)
local durable = consumer ~= "-"
local n = assert(sqlnotify.notifier{ url = url, consumer = durable and consumer or nil,
  shares = shares ~= "-" and tonumber(shares) or nil, nulls = true })
local C = {}
for c in cols:gmatch("[^,]+") do C[#C + 1] = c end
for _, op in ipairs { "insert", "update", "delete" } do
  n:watch(main, op, { extra_columns = C, old_columns = op == "update" and C or nil })
  n:subscribe(main, op, show)
  n:watch(keys, op, { extra_columns = { "v" }, old_columns = op == "update" and { "v" } or nil })
  n:subscribe(keys, op, show)
end
assert(n:start())
print("ready")
]]

-- ===== the cases =====

-- A value that differs by dialect: per{ pg = ..., sq = ..., my = ... }.
local PER = {}
local function per(t) return setmetatable(t, PER) end
local function pick(v, key)
  if getmetatable(v) == PER then return v[key] end
  return v
end

local ALL256 = {}
for i = 0, 255 do ALL256[#ALL256 + 1] = string.char(i) end
ALL256 = table.concat(ALL256)

-- Each case: class, name, t (the column's type: a string for every dialect, or per{} where
-- a dialect without an entry does not run it), then the value, one of
--   v = SQL text;  s = a Lua string written as text (D.text);  b = bytes written as bytes (D.bytes)
-- and want (per{} where it differs; default: s or b), the exact Lua value in the event. A
-- case where a dialect sends another value than the wire format says (a product defect, each
-- one named in a comment) gives that value in now = per{}: the spec asserts what arrives today,
-- so that a change either way is seen, and says so in the test's name.
local INT8 = per { pg = "int8", sq = "INTEGER", my = "bigint" }
local FLOAT8 = per { pg = "float8", sq = "REAL", my = "double" }
local TEXT = per { pg = "text", sq = "TEXT", my = "text" }
local BYTES = per { pg = "bytea", sq = "BLOB", my = "blob" }
local JSON = per { pg = "jsonb", my = "json" }

local CASES = {
  -- integer: a Lua integer, exact
  { "integer", "int2 max", t = per { pg = "int2", my = "smallint" }, v = "32767", want = 32767 },
  { "integer", "int2 min", t = per { pg = "int2", my = "smallint" }, v = "-32768", want = -32768 },
  { "integer", "int4 max", t = per { pg = "int4", my = "int" }, v = "2147483647", want = 2147483647 },
  { "integer", "int4 min", t = per { pg = "int4", my = "int" }, v = "-2147483648", want = -2147483648 },
  { "integer", "int8 max", t = INT8, v = "9223372036854775807", want = math.maxinteger },
  { "integer", "int8 min", t = INT8, v = "-9223372036854775808", want = math.mininteger },
  { "integer", "2^53 + 1", t = INT8, v = "9007199254740993", want = 9007199254740993 },
  { "integer", "-(2^53 + 1)", t = INT8, v = "-9007199254740993", want = -9007199254740993 },
  { "integer", "zero", t = per { pg = "int4", sq = "INTEGER", my = "int" }, v = "0", want = 0 },
  { "integer", "tinyint max", t = per { my = "tinyint" }, v = "127", want = 127 },
  { "integer", "tinyint min", t = per { my = "tinyint" }, v = "-128", want = -128 },
  { "integer", "tinyint unsigned max", t = per { my = "tinyint unsigned" }, v = "255", want = 255 },
  { "integer", "mediumint min", t = per { my = "mediumint" }, v = "-8388608", want = -8388608 },
  { "integer", "int unsigned max", t = per { my = "int unsigned" }, v = "4294967295", want = 4294967295 },
  { "integer", "bigint unsigned 2^63 - 1", t = per { my = "bigint unsigned" }, v = "9223372036854775807",
    want = math.maxinteger },
  -- above 2^63 - 1 no Lua integer holds it: it arrives as its text, exact, as a decimal does
  { "integer", "bigint unsigned max", t = per { my = "bigint unsigned" }, v = "18446744073709551615",
    want = "18446744073709551615" },
  { "integer", "bit(64) all ones", t = per { my = "bit(64)" }, v = "b'" .. ("1"):rep(64) .. "'",
    want = "18446744073709551615" },
  { "integer", "bit(5)", t = per { my = "bit(5)" }, v = "b'101'", want = 5 },
  { "integer", "year", t = per { my = "year" }, v = "2024", want = 2024 },
  { "integer", "text in an INTEGER column (affinity)", t = per { sq = "INTEGER" }, v = "'42'", want = 42 },

  -- float: a Lua float that is the double stored (a FLOAT/real one widened where the dialect sends that)
  { "float", "0.1", t = FLOAT8, v = "0.1", want = 0.1 },
  { "float", "0.1 + 0.2", t = FLOAT8, v = "0.30000000000000004", want = 0.1 + 0.2 },
  { "float", "1e20", t = FLOAT8, v = "1e20", want = 1e20 },
  { "float", "a whole number stays a float", t = FLOAT8, v = "2", want = 2.0 },
  { "float", "2.5", t = FLOAT8, v = "2.5", want = 2.5 },
  { "float", "-2.5", t = FLOAT8, v = "-2.5", want = -2.5 },
  { "float", "1e300", t = FLOAT8, v = "1e300", want = 1e300 },
  -- SQLite and MariaDB store -0 as 0 themselves; PostgreSQL keeps -0 but its payload says 0
  { "float", "-0", t = FLOAT8, v = per { pg = "'-0'", sq = "-0.0", my = "-0e0" },
    want = per { pg = -0.0, sq = 0.0, my = 0.0 }, now = per { pg = 0.0 } },
  { "float", "1.5e-7", t = FLOAT8, v = "1.5e-7", want = 1.5e-7 },
  { "float", "1e-300", t = FLOAT8, v = "1e-300", want = 1e-300 },
  { "float", "the smallest subnormal", t = per { pg = "float8", sq = "REAL" }, v = "5e-324", want = 5e-324 },
  -- SQLite stores the largest double, but its printf('%!.17g') writes 1.7976931348623156e+308
  { "float", "the largest double", t = FLOAT8, v = "1.7976931348623157e308", want = 1.7976931348623157e308,
    now = per { sq = 1.7976931348623155e308 } },
  -- the same: SQLite's printf writes ...063e+213, another double (as it does at some extremes)
  { "float", "1.0571653198384064e213", t = FLOAT8, v = "1.0571653198384064e213", want = 1.0571653198384064e213,
    now = per { sq = 1.0571653198384063e213 } },
  { "float", "NaN", t = per { pg = "float8" }, v = "'NaN'", want = 0 / 0 },
  { "float", "Infinity", t = per { pg = "float8", sq = "REAL" }, v = per { pg = "'Infinity'", sq = "9e999" },
    want = math.huge },
  { "float", "-Infinity", t = per { pg = "float8", sq = "REAL" }, v = per { pg = "'-Infinity'", sq = "-9e999" },
    want = -math.huge },
  { "float", "float4 0.1", t = per { pg = "real", my = "float" }, v = "0.1",
    want = per { pg = 0.1, my = 0.10000000149011612 } },
  { "float", "float4 1/3", t = per { pg = "real", my = "float" }, v = "1.0/3",
    want = per { pg = 0.33333334, my = 0.3333333432674408 } },
  { "float", "float4 NaN", t = per { pg = "real" }, v = "'NaN'", want = 0 / 0 },
  { "float", "float4 -Infinity", t = per { pg = "real" }, v = "'-Infinity'", want = -math.huge },
  { "float", "an integer in a REAL column (affinity)", t = per { sq = "REAL" }, v = "3", want = 3.0 },

  -- decimal: a Lua string of the exact value, every digit (SQLite has none: NUMERIC affinity)
  { "decimal", "1.50", t = per { pg = "numeric", my = "decimal(10,2)", sq = "DECIMAL(10,2)" }, v = "1.50",
    want = per { pg = "1.50", my = "1.50", sq = 1.5 } },
  { "decimal", "1.5 to scale 2", t = per { pg = "numeric(6,2)", my = "decimal(6,2)" }, v = "1.5", want = "1.50" },
  { "decimal", "a whole number", t = per { pg = "numeric", my = "decimal(10,0)", sq = "NUMERIC" }, v = "42",
    want = per { pg = "42", my = "42", sq = 42 } },
  { "decimal", "-123.45", t = per { pg = "numeric", my = "decimal(10,2)" }, v = "-123.45", want = "-123.45" },
  { "decimal", "-0.000", t = per { pg = "numeric", my = "decimal(10,3)" }, v = "-0.000", want = "0.000" },
  { "decimal", "1e-20", t = per { pg = "numeric", my = "decimal(30,20)" }, v = "0.00000000000000000001",
    want = "0.00000000000000000001" },
  { "decimal", "30 digits", t = per { pg = "numeric", my = "decimal(30,0)" }, v = "123456789012345678901234567890",
    want = "123456789012345678901234567890" },
  { "decimal", "50 digits", t = per { pg = "numeric", my = "decimal(65,25)" },
    v = "1234567890123456789012345678901234567890.0123456789",
    want = per { pg = "1234567890123456789012345678901234567890.0123456789",
      my = "1234567890123456789012345678901234567890.0123456789000000000000000" } },
  { "decimal", "NaN", t = per { pg = "numeric" }, v = "'NaN'", want = "NaN" },
  { "decimal", "Infinity", t = per { pg = "numeric" }, v = "'Infinity'", want = "Infinity" },
  { "decimal", "-Infinity", t = per { pg = "numeric" }, v = "'-Infinity'", want = "-Infinity" },
  { "decimal", "text in a DECIMAL column (affinity)", t = per { sq = "DECIMAL(10,2)" }, v = "'1.50'", want = 1.5 },

  -- boolean: true/false (MySQL's BOOLEAN is tinyint(1), SQLite's has NUMERIC affinity: 1/0)
  { "boolean", "true", t = per { pg = "boolean", my = "boolean", sq = "BOOLEAN" }, v = "TRUE",
    want = per { pg = true, my = 1, sq = 1 } },
  { "boolean", "false", t = per { pg = "boolean", my = "boolean", sq = "BOOLEAN" }, v = "FALSE",
    want = per { pg = false, my = 0, sq = 0 } },

  -- text: a Lua string, every byte
  { "text", "quotes and backslash", t = TEXT, s = [[a"b\c'd\\]] },
  { "text", "newlines", t = TEXT, s = "line1\nline2\r\n" },
  { "text", "control characters", t = TEXT, s = "\1\2\t\27\31\127" },
  { "text", "é", t = TEXT, s = "é" },
  { "text", "U+2028 and U+2029", t = TEXT, s = "a\u{2028}b\u{2029}c" },
  { "text", "emoji", t = TEXT, s = "\u{1F600}\u{1F44D}\u{1F3FD}" },
  { "text", "empty", t = TEXT, s = "" },
  { "text", "NUL", t = per { sq = "TEXT", my = "text" }, s = "a\0b" },
  { "text", "NaN as text", t = TEXT, s = "NaN" },
  { "text", "Infinity as text", t = TEXT, s = "-Infinity" },
  { "text", "a \\x string that is not bytes", t = TEXT, s = "\\x00ff" },
  { "text", "a number as text", t = TEXT, s = "1.50" },
  { "text", "JSON as text", t = TEXT, s = '{"a": [1, null]}' },
  { "text", "null as text", t = TEXT, s = "null" },
  { "text", "surrounding spaces", t = TEXT, s = "  x  " },
  { "text", "500 bytes", t = TEXT, s = ("ab\"\\é"):rep(83) },
  { "text", "varchar", t = per { pg = "varchar(5)", sq = "VARCHAR(5)", my = "varchar(5)" }, s = "abc" },
  { "text", "char(4) 'ab'", t = per { pg = "char(4)", my = "char(4)" }, s = "ab",
    want = per { pg = "ab  ", my = "ab" } },
  { "text", "enum", t = per { my = "enum('a','b')" }, s = "b" },
  { "text", "set", t = per { my = "set('x','y')" }, s = "x,y" },
  { "text", "a plain literal", t = TEXT, v = "'it''s'", want = "it's" },

  -- bytes: the raw bytes
  { "bytes", "NUL and 0xFF", t = BYTES, b = "\0\255\16" },
  { "bytes", "empty", t = BYTES, b = "" },
  { "bytes", "all 256 bytes", t = BYTES, b = ALL256 },
  { "bytes", "bytes that read \\x41", t = BYTES, b = "\\x41" },
  { "bytes", "UTF-8 bytes", t = BYTES, b = "é\u{1F600}" },
  { "bytes", "varbinary", t = per { my = "varbinary(10)" }, b = "\0a\255" },
  { "bytes", "binary(4) padded", t = per { my = "binary(4)" }, b = "ab", want = "ab\0\0" },

  -- json: tables (objects and arrays), JSON null inside as the NULL sentinel
  { "json", "an object", t = JSON, s = '{"a": 1, "b": [1, 2.5, {"c": null}], "s": "x\\"y\\n\\u00e9", "e": {}}',
    want = { a = 1, b = { 1, 2.5, { c = NULL } }, s = 'x"y\né', e = {} } },
  { "json", "an array", t = JSON, s = '[1, "two", true, false, 2.5]', want = { 1, "two", true, false, 2.5 } },
  { "json", "nested", t = JSON, s = '{"a": {"b": {"c": [[1], [2, [3]]]}}}',
    want = { a = { b = { c = { { 1 }, { 2, { 3 } } } } } } },
  { "json", "big numbers", t = JSON, s = '{"big": 12345678901234567890, "i": 9007199254740993, "f": 1.0}',
    want = { big = 12345678901234567890.0, i = 9007199254740993, f = 1.0 } },
  { "json", "a string", t = JSON, s = '"str"', want = "str" },
  { "json", "a number", t = JSON, s = "1.5", want = 1.5 },
  { "json", "true", t = JSON, s = "true", want = true },
  { "json", "an empty object", t = JSON, s = "{}", want = {} },
  { "json", "an empty array", t = JSON, s = "[]", want = {} },
  { "json", "JSON text in SQLite (no json type: a string)", t = per { sq = "JSON" }, s = '{"a": [1]}' },

  -- other: dates and times as text, as the dialect writes them
  { "other", "date", t = per { pg = "date", my = "date" }, v = "'2024-02-29'", want = "2024-02-29" },
  { "other", "timestamp", t = per { pg = "timestamp", my = "datetime(6)" }, v = "'2024-01-02 03:04:05.123456'",
    want = per { pg = "2024-01-02T03:04:05.123456", my = "2024-01-02 03:04:05.123456" } },
  { "other", "timestamptz", t = per { pg = "timestamptz" }, v = "'2024-01-02 03:04:05.5+02'",
    want = "2024-01-02T01:04:05.5+00:00" },
  { "other", "time", t = per { pg = "time", my = "time(6)" }, v = "'23:59:59.999999'", want = "23:59:59.999999" },
  { "other", "interval", t = per { pg = "interval" }, v = "'1 day 02:03:04'", want = "1 day 02:03:04" },
  { "other", "uuid", t = per { pg = "uuid" }, v = "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    want = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" },
  { "other", "oid", t = per { pg = "oid" }, v = "4294967295", want = "4294967295" },
  { "other", "date infinity", t = per { pg = "date" }, v = "'infinity'", want = "infinity" },
}

-- The cases of dialect key, each {class, name, type, sql, want}, column c<i> the i-th.
-- Also the list of known deviations (now = per{}).
local function cases_of(D)
  local out, known = {}, {}
  for _, c in ipairs(CASES) do
    local ty = pick(c.t, D.key)
    if ty then
      local sql
      if c.s then sql = D.text(pick(c.s, D.key), ty)
      elseif c.b then sql = D.bytes(pick(c.b, D.key))
      else sql = pick(c.v, D.key) end
      local want = c.want
      if want == nil then want = c.s or c.b end
      want = pick(want, D.key)
      local now = c.now and pick(c.now, D.key)
      if now ~= nil then
        known[#known + 1] = fmt("%s %s (%s): want %s, arrives %s", c[1], c[2], ty, ser(want), ser(now))
        want = now
      end
      assert(sql and want ~= nil, "case " .. c[2] .. ": no value for " .. D.key)
      out[#out + 1] = { class = c[1], name = c[2], type = ty, sql = sql, want = want, col = "c" .. (#out + 1) }
    end
  end
  return out, known
end

return function(D, env)
  local _ENV = env -- luacheck: ignore 211
  local cases, known = cases_of(D)
  local cols = {}
  for i, c in ipairs(cases) do cols[i] = c.col end

  -- The lines the host printed for one table: the events, decoded, in order.
  local function events(p, tbl)
    local out = {}
    for t, raw in p:stdout():gmatch("E (%S+) ([^\n]*)\n") do
      if t == tbl then
        out[#out + 1] = assert(load("return " .. raw, "event", "t", { NULL = NULL, NAN = 0 / 0 }))()
      end
    end
    return out
  end

  -- Wait for count events of tbl, then a little longer to see no more come.
  local function delivered(p, tbl, count)
    p:wait_count(function(x) return events(x, tbl) end, count, 30)
    H.sleep(0.3)
    local ev = events(p, tbl)
    assert(#ev == count, fmt("%s: %d events of %s, want %d:\n%s\n%s", D.name, #ev, tbl, count,
      p:stdout(), p:stderr()))
    return ev
  end

  -- Compare events field by field; every difference is one line, every case named.
  local function compare(want, got, name_of)
    local diffs = {}
    for i, w in ipairs(want) do
      local g = got[i]
      local keys = {}
      for k in pairs(w) do keys[k] = true end
      for k in pairs(g) do keys[k] = true end
      for k in pairs(keys) do
        local wv, gv = w[k], g[k]
        if (k == "extra_columns" or k == "old") and type(wv) == "table" and type(gv) == "table" then
          local cs = {}
          for c in pairs(wv) do cs[c] = true end
          for c in pairs(gv) do cs[c] = true end
          for c in pairs(cs) do
            if ser(wv[c]) ~= ser(gv[c]) then
              diffs[#diffs + 1] = fmt("event %d (%s %s) %s.%s %s: want %s, got %s", i, w.operation, ser(w.id), k, c,
                name_of(c), wv[c] == nil and "absent" or ser(wv[c]), gv[c] == nil and "absent" or ser(gv[c]))
            end
          end
        elseif ser(wv) ~= ser(gv) then
          diffs[#diffs + 1] = fmt("event %d (%s %s) %s: want %s, got %s", i, w.operation, ser(w.id), k,
            wv == nil and "absent" or ser(wv), gv == nil and "absent" or ser(gv))
        end
      end
    end
    table.sort(diffs)
    assert(#diffs == 0, fmt("%s: %d value(s) differ from the wire format:\n  %s", D.name, #diffs,
      table.concat(diffs, "\n  ")))
  end

  describe(fmt("the wire format's values on %s (%d cases)", D.name, #cases), function()
    for _, run in ipairs(D.runs) do
      describe(run.label, function()
        local main, keys = run.prefix .. "wire", run.prefix .. "wire_k"
        local p

        setup(function()
          if D.setup then D.setup(run) end
          local defs = { "id int PRIMARY KEY" }
          for _, c in ipairs(cases) do defs[#defs + 1] = c.col .. " " .. c.type end
          local kdefs, pk = {}, {}
          for _, k in ipairs(D.keys) do
            kdefs[#kdefs + 1] = k[1] .. " " .. k[2]
            pk[#pk + 1] = k[1]
          end
          kdefs[#kdefs + 1] = "v " .. pick(TEXT, D.key)
          kdefs[#kdefs + 1] = "PRIMARY KEY (" .. table.concat(pk, ", ") .. ")"
          D.exec(fmt("DROP TABLE IF EXISTS %s; DROP TABLE IF EXISTS %s;\n", D.t(main), D.t(keys))
            .. fmt(D.create, D.t(main), table.concat(defs, ", ")) .. ";\n"
            .. fmt(D.create, D.t(keys), table.concat(kdefs, ", ")) .. ";", run)
          p = H.host(HOST, { run.url or D.url, run.consumer or "-", D.watch_name(main), D.watch_name(keys),
            table.concat(cols, ","), run.shares and tostring(run.shares) or "-" }, run.env)
          assert(p:wait_for("ready\n", 30), D.name .. " " .. run.label .. ": the host did not start: " .. p:stderr())
        end)

        teardown(function()
          local ok, err = true, nil
          if p then ok, err = pcall(p.stop, p) end
          if run.consumer then D.drop_consumer(run) end
          D.exec(fmt("DROP TABLE IF EXISTS %s; DROP TABLE IF EXISTS %s;", D.t(main), D.t(keys)), run)
          if D.teardown then D.teardown(run) end
          assert(ok, err)
        end)

        it(fmt("delivers each of the %d values exactly: INSERT, INSERT of NULLs, UPDATE to and from NULL with"
          .. " old values, DELETE%s", #cases, #known == 0 and ""
            or " (as they arrive today, against the wire format: " .. table.concat(known, "; ") .. ")"), function()
          local vals, nulls = {}, {}
          for i, c in ipairs(cases) do vals[i], nulls[i] = c.col .. " = " .. c.sql, c.col .. " = NULL" end
          local sqlvals = {}
          for i, c in ipairs(cases) do sqlvals[i] = c.sql end
          local T = D.t(main)
          D.exec(table.concat({
            fmt("INSERT INTO %s (id, %s) VALUES (1, %s)", T, table.concat(cols, ", "), table.concat(sqlvals, ", ")),
            fmt("INSERT INTO %s (id) VALUES (2)", T),
            fmt("UPDATE %s SET %s WHERE id = 2", T, table.concat(vals, ", ")),
            fmt("UPDATE %s SET %s WHERE id = 1", T, table.concat(nulls, ", ")),
            fmt("DELETE FROM %s WHERE id = 2", T),
            fmt("DELETE FROM %s WHERE id = 1", T),
          }, ";\n") .. ";\n", run)
          local V, N = {}, {}
          for _, c in ipairs(cases) do V[c.col], N[c.col] = c.want, NULL end
          local function e(op, id, x, old)
            return { schema = D.schema, operation = op, id = id, key = { id = id }, extra_columns = x, old = old,
              truncated = false }
          end
          local byname = {}
          for _, c in ipairs(cases) do byname[c.col] = fmt("[%s %s, %s]", c.class, c.name, c.type) end
          compare({
            e("insert", 1, V), e("insert", 2, N), e("update", 2, V, N), e("update", 1, N, V), e("delete", 2, V),
            e("delete", 1, N),
          }, delivered(p, main, 6), function(c) return byname[c] or "" end)
        end)

        it("delivers keys of every class exactly: event.id in key order, event.key, old_id", function()
          local T = D.t(keys)
          local names, a, b, c = {}, {}, {}, {}
          local wa, wb, wc, ka, kb, kc = {}, {}, {}, {}, {}, {}
          for i, k in ipairs(D.keys) do
            names[i], a[i], b[i], c[i] = k[1], k[3][1], k[4][1], k[1] .. " = " .. k[5][1]
            wa[i], wb[i], wc[i] = k[3][2], k[4][2], k[5][2]
            ka[k[1]], kb[k[1]], kc[k[1]] = k[3][2], k[4][2], k[5][2]
          end
          local cl = table.concat(names, ", ")
          D.exec(table.concat({
            fmt("INSERT INTO %s (%s, v) VALUES (%s, 'a')", T, cl, table.concat(a, ", ")),
            fmt("INSERT INTO %s (%s, v) VALUES (%s, 'b')", T, cl, table.concat(b, ", ")),
            fmt("UPDATE %s SET %s, v = 'c' WHERE %s", T, table.concat(c, ", "),
              (fmt("%s = %s", names[1], a[1]))),
            fmt("DELETE FROM %s WHERE %s = %s", T, names[1], b[1]),
          }, ";\n") .. ";\n", run)
          local function e(op, id, key, v, old_id, old)
            return { schema = D.schema, operation = op, id = id, key = key, extra_columns = { v = v }, old_id = old_id,
              old = old, truncated = false }
          end
          compare({
            e("insert", wa, ka, "a"), e("insert", wb, kb, "b"), e("update", wc, kc, "c", wa, { v = "a" }),
            e("delete", wb, kb, "b"),
          }, delivered(p, keys, 4), function() return "" end)
        end)

        if run.check then
          it("ran the triggers this run is about", function() run.check(main, keys) end)
        end
      end)
    end
  end)
end
