-- The one decoder of trigger payloads (src/decode.c, the wire format in src/dialect.h):
-- exact values for each column class, any key escaping, the shape rules (duplicate,
-- unknown and missing keys refused), SQL NULL with and without nulls = true, and
-- mutated payloads that are always decoded or refused with a reason, never a crash.
-- Then the same values through real triggers on PostgreSQL and SQLite.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")

local NULL = core.null
local fmt = string.format

-- A watch and its catalog as init.lua hands them to core.plan.
local W = { schema = "s", table = "t", op = "update", pk = { 'a"b', "k" }, extra = { "f", "n", "by", "j", "txt", "é x" },
  old = { "txt" } }
local INFO = {
  class_of = { ['a"b'] = "integer", k = "text", f = "float", n = "decimal", by = "bytes", j = "json", txt = "text",
    ["é x"] = "integer", r = "float" },
}
local plan = core.plan(W, INFO, false)
local plan_nulls = core.plan(W, INFO, true)

local function decode(payload, p)
  return core.decode(p or plan, payload, "chan", 1.5)
end

-- The fields every event of W has; the test adds the rest.
local function event(fields)
  local ev = { schema = "s", table = "t", operation = "update", channel = "chan", timestamp = 1.5, truncated = false,
    extra_columns = {}, old = {} }
  for k, v in pairs(fields) do ev[k] = v end
  return ev
end

-- assert.are.same does not tell 1 from 1.0: compare math.type too, recursively.
local function types_of(v)
  if type(v) ~= "table" then return math.type(v) or type(v) end
  local t = {}
  for k, x in pairs(v) do t[k] = types_of(x) end
  return t
end

local function assert_exact(expected, got)
  assert.are.same(expected, got)
  assert.are.same(types_of(expected), types_of(got))
end

describe("the payload decoder", function()
  describe("values", function()
    it("keeps integers exact to 64 bits whatever the key column is called", function()
      local ev = decode([[{"id": {"a\"b": 9007199254740993, "k": "x"}}]])
      assert_exact(event { id = { 9007199254740993, "x" }, key = { ['a"b'] = 9007199254740993, k = "x" } }, ev)
      ev = decode([[{"id": {"k": "y", "a\u0022b": -9223372036854775808}}]])
      assert_exact(event { id = { math.mininteger, "y" }, key = { ['a"b'] = math.mininteger, k = "y" } }, ev)
      ev = decode([[{"id": {"a\"b": 9223372036854775807, "k": ""}}]])
      assert.are.equal(math.maxinteger, ev.id[1])
      assert.are.equal("integer", math.type(ev.id[1]))
    end)

    it("gives a plain column's number beyond 64 bits, or with a fraction or exponent, as a float", function()
      local ev = decode([[{"id": {"a\"b": 1, "k": "x"}, "x": {"txt": 9223372036854775808, "é x": 2e3, "j": 1.0}}]])
      assert_exact({ txt = 9223372036854775808.0, ["é x"] = 2000.0, j = 1.0 }, ev.extra_columns)
    end)

    it("gives a float column's values as floats, with Infinity, -Infinity and NaN", function()
      local function f(text) return decode('{"id": {"a\\"b": 1, "k": "x"}, "x": {"f": ' .. text .. '}}').extra_columns.f end
      assert.are.equal("float", math.type(f("1")))
      assert.are.equal(1.0, f("1"))
      assert.are.equal(0.1 + 0.2, f("0.30000000000000004"))
      assert.are.equal(0.3, f("0.3"))
      assert.are.equal(math.huge, f('"Infinity"'))
      assert.are.equal(-math.huge, f('"-Infinity"'))
      local nan = f('"NaN"')
      assert.is_true(nan ~= nan)
      assert.are.equal(-math.huge, 1 / f("-0"))
      assert.are.equal(1.7976931348623157e308, f("1.7976931348623157e308"))
      assert.are.equal(5e-324, f("5e-324"))
      assert.are.equal(-9007199254740993.0, f("-9007199254740993")) -- rounded as a double, as the column holds it
    end)

    it("gives a numeric column's value as the exact text, from a number or a string", function()
      local function n(text) return decode('{"id": {"a\\"b": 1, "k": "x"}, "x": {"n": ' .. text .. '}}').extra_columns.n end
      assert.are.equal("123456789012345678901234567890.12345678901234567890", n("123456789012345678901234567890.12345678901234567890"))
      assert.are.equal("-0.000000000000000000001", n("-0.000000000000000000001"))
      assert.are.equal("42", n("42"))
      assert.are.equal("1e5", n("1e5"))
      assert.are.equal("NaN", n('"NaN"'))
      assert.are.equal("Infinity", n('"Infinity"'))
    end)

    it("gives a bytes column's \\x<hex> value as the raw bytes", function()
      local function b(text) return decode('{"id": {"a\\"b": 1, "k": "x"}, "x": {"by": ' .. text .. '}}').extra_columns.by end
      assert.are.equal("\0\255A\n", b([["\\x00ff410a"]]))
      assert.are.equal("\171\205", b([["\\xABcd"]]))
      assert.are.equal("", b([["\\x"]]))
      assert.are.equal(string.rep("\1\2", 5000), b('"\\\\x' .. string.rep("0102", 5000) .. '"'))
      -- what is not \x and pairs of hex digits decodes by its JSON type (SQLite keeps any
      -- type in a BLOB column): text stays text, a number a number
      assert.are.equal("\\x0", b([["\\x0"]]))
      assert.are.equal("plain", b([["plain"]]))
      assert.are.equal(42, b("42"))
    end)

    it("decodes strings with every JSON escape, and text as sent", function()
      local ev = decode([[{"id": {"a\"b": 1, "k": "\"\\\/\b\f\n\r\t\u00e9\u20ac\ud83d\ude00 é€😀"}}]])
      assert.are.equal("\"\\/\b\f\n\r\té€😀 é€😀", ev.id[2])
      assert.are.equal(ev.id[2], ev.key.k)
    end)

    it("gives a json column's objects and arrays as tables: NULL inside absent and arrays with n, or core.null",
      function()
        local p = [=[{"id": {"a\"b": 1, "k": "x"}, "x": {"j": {"k": [1, null, {"z": 2.5}, []], "s": null, "t": true}}}]=]
        assert_exact({ k = { 1, nil, { z = 2.5 }, { n = 0 }, n = 4 }, t = true }, decode(p).extra_columns.j)
        assert_exact({ k = { 1, NULL, { z = 2.5 }, {} }, s = NULL, t = true }, decode(p, plan_nulls).extra_columns.j)
      end)

    it("leaves out SQL NULL, or gives core.null (which is cjson.null) when the notifier asks for it", function()
      assert.are.equal(require("cjson").null, NULL)
      assert.are.equal(NULL, sqlnotify.null or NULL)
      local p = [[{"id": {"a\"b": 1, "k": null}, "x": {"txt": null, "f": 2}, "o": {"txt": null}}]]
      assert_exact(event { id = { 1 }, key = { ['a"b'] = 1 }, extra_columns = { f = 2.0 } }, decode(p))
      assert_exact(event { id = { 1, NULL }, key = { ['a"b'] = 1, k = NULL }, extra_columns = { f = 2.0, txt = NULL },
        old = { txt = NULL } }, decode(p, plan_nulls))
    end)
  end)

  describe("shape", function()
    it("builds the whole event: id, key, extra_columns, old, old_id and truncated", function()
      local ev = decode([[{"id":{"k":"n","a\"b":2},"x":{"txt":"new","é x":5},"o":{"txt":"was"},"oid":{"a\"b":1,"k":"o"}}]])
      assert_exact(event { id = { 2, "n" }, key = { ['a"b'] = 2, k = "n" }, extra_columns = { txt = "new", ["é x"] = 5 },
        old = { txt = "was" }, old_id = { 1, "o" } }, ev)
      ev = decode([[{"id": {"a\"b": 2, "k": "n"}, "t": true}]])
      assert_exact(event { id = { 2, "n" }, key = { ['a"b'] = 2, k = "n" }, truncated = true }, ev)
      assert_exact(event { key = {}, truncated = true }, decode([[{"t": true}]]))
      assert_exact(event { id = { 2, "n" }, key = { ['a"b'] = 2, k = "n" } },
        decode([[{"t": false, "id": {"a\"b": 2, "k": "n"}}]]))
    end)

    it("gives a single key as a value and a key of none as nil, with key by name in both", function()
      local info = { class_of = { id = "integer", v = "text" } }
      local one = core.plan({ schema = "s", table = "t", op = "delete", pk = { "id" }, extra = { "v" } }, info, false)
      assert.are.same({ schema = "s", table = "t", operation = "delete", id = 7, key = { id = 7 },
        extra_columns = { v = "w" }, old_id = 6, channel = "chan", timestamp = 1.5, truncated = false },
        decode([[{"id": {"id": 7}, "x": {"v": "w"}, "oid": {"id": 6}}]], one))
      local none = core.plan({ schema = "s", table = "t", op = "insert", pk = {}, extra = { "v" } }, info, false)
      assert.are.same({ schema = "s", table = "t", operation = "insert", key = {}, extra_columns = { v = "w" },
        channel = "chan", timestamp = 1.5, truncated = false }, decode([[{"id": {}, "x": {"v": "w"}}]], none))
    end)

    it("leaves old out when the watch has no old_columns, and takes columns it does not know as not carried", function()
      local bare = core.plan({ schema = "s", table = "t", op = "update", pk = { "id" }, extra = {} },
        { class_of = { id = "integer" } }, false)
      local ev = decode([[{"id": {"id": 1, "zz": [1, {"deep": null}]}, "x": {"gone": 1}, "o": {"was": 2}}]], bare)
      assert.are.same({ schema = "s", table = "t", operation = "update", id = 1, key = { id = 1 }, extra_columns = {},
        channel = "chan", timestamp = 1.5, truncated = false }, ev)
    end)

    it("refuses a malformed payload with the reason", function()
      local cases = {
        { [[{"id": {"a\"b": 1, "a\u0022b": 2, "k": "x"}}]], [[a duplicate key "a\x22b" in "id"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "x": {"f": 1, "f": 2}}]], [[a duplicate key "f" in "x"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "id": {"a\"b": 1, "k": "x"}}]], [[a duplicate key "id"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "x": {"j": {"a": 1, "a": 2}}}]], [[a duplicate key "a" in a nested object]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "x": {"j": {"a": null, "a": 2}}}]], [[a duplicate key "a" in a nested object]] },
        { [[{"id": {"a\"b": 1}}]], [["id" lacks key column "k"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "oid": {"k": "y"}}]], [["oid" lacks key column "a\x22b"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "zz": 1}]], [[an unknown key "zz"]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "line\nbreak": 1}]], [[an unknown key "line\x0abreak"]] },
        { [[{"x": {"f": 1}}]], [[no "id" object]] },
        { [[{}]], [[no "id" object]] },
        { [[{"id": [1, "x"]}]], [["id" is not an object]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "x": null}]], [["x" is not an object]] },
        { [[{"id": {"a\"b": 1, "k": "x"}, "t": 1}]], [["t" is not true or false]] },
        { [[{"id": {"a\"b": {"n": 1}, "k": "x"}}]], [[key column "a\x22b" in "id" is not a scalar]] },
        { [[{"id": {"a\"b": 01, "k": "x"}}]], "a number with a leading zero at byte 17" },
        { [[{"id": {"a\"b": 1., "k": "x"}}]], "a bad number at byte 17" },
        { [[{"id": {"a\"b": NaN, "k": "x"}}]], "a bad value at byte 17" },
        { [[{"id": {"a\"b": 1, "k": "\ud800"}}]], "a bad escape in a string at byte 26" },
        { [[{"id": {"a\"b": 1, "k": "\q"}}]], "a bad escape in a string at byte 26" },
        { '{"id": {"a\\"b": 1, "k": "raw\ncontrol"}}', "a control character in a string at byte 29" },
        { [[{"id": {"a\"b": 1, "k": "x"}} trailing]], "trailing text at byte 31" },
        { [[{"id": {"a\"b": 1, "k": "x"}]], "a missing ',' or '}' at the end of the payload" },
        { "[1]", "not a JSON object" },
        { "", "not a JSON object" },
        { [[{"id": {"a\"b": 1, "k": "x]], "an unterminated string at the end of the payload" },
        { [[{"id": {"a\"b": 1, "k": "x"}, "x": {"j": ]] .. ("["):rep(65) .. ("]"):rep(65) .. "}}",
          "nesting deeper than 64 at byte 106" },
      }
      for _, c in ipairs(cases) do
        local ev, why, newer = decode(c[1])
        assert.are.same({ nil, c[2], false }, { ev, why, newer }, c[1])
      end
      assert.is_table(decode([[{"id": {"a\"b": 1, "k": "x"}, "x": {"j": ]] .. ("["):rep(64) .. ("]"):rep(64) .. "}}"))
    end)

    it('reads wire version 1, "v" absent or given; refuses a newer one naming the upgrade, and a bad one', function()
      local base = event({ id = { 1, "x" }, key = { ['a"b'] = 1, k = "x" } })
      assert_exact(base, decode([[{"id": {"a\"b": 1, "k": "x"}}]]))
      assert_exact(base, decode([[{"v": 1, "id": {"a\"b": 1, "k": "x"}}]]))
      assert_exact(base, decode([[{"id": {"a\"b": 1, "k": "x"}, "v":1}]]))
      local newer = "it is in wire format version %d, and this sqlnotify-lua reads up to version 1: upgrade"
        .. " sqlnotify-lua to the release of the writers' triggers"
      for _, v in ipairs({ 2, 17, 1000000000 }) do
        assert.are.same({ nil, newer:format(v), true }, { decode(fmt('{"v": %d, "id": {"a\\"b": 1, "k": "x"}}', v)) })
        -- refused before the rest is read: a newer format may change what follows
        assert.are.same({ nil, newer:format(v), true }, { decode(fmt('{"v": %d, "id": [], "new": {}}', v)) })
      end
      local bad = '"v" is not a wire format version (a whole number from 1)'
      for _, v in ipairs({ "0", "-1", "1.0", "1e3", '"2"', "null", "true", "99999999999" }) do
        assert.are.same({ nil, bad, false }, { decode('{"v": ' .. v .. ', "id": {"a\\"b": 1, "k": "x"}}') }, v)
      end
      assert.are.same({ nil, 'a duplicate key "v"', false },
        { decode([[{"v": 1, "v": 1, "id": {"a\"b": 1, "k": "x"}}]]) })
    end)

    it("decodes or refuses each of 50,000 mutations of valid payloads, never raising, never accepting bad JSON", function()
      local valid = {
        [[{"id":{"a\"b":1,"k":"x"},"x":{"f":0.5,"n":12.50,"by":"\\x0aff","j":{"a":[1,null,"s"]},"txt":"t","é x":3}}]],
        [[{"id":{"k":"\u00e9\ud83d\ude00","a\u0022b":-9223372036854775808},"o":{"txt":null},"oid":{"a\"b":2,"k":"y"}}]],
        [[ {"t" : true , "id" : {"a\"b" : 9007199254740993 , "k" : null} , "x" : {"f" : "NaN"} } ]],
        [=[{"id":{"a\"b":1,"k":"x"},"x":{"j":{"deep":{"deeper":[[[]]],"e":1e-5}},"f":"-Infinity","by":"\\x"}}]=],
      }
      local reference = require("cjson.safe").new()
      reference.decode_max_depth(1000)
      reference.decode_invalid_numbers(false)
      math.randomseed(20261126)
      local alphabet = '{}[]",:\\ 0123456789.eE+-tfnulxabid\128\195\169\0\n'
      local decoded, refused = 0, 0
      for i = 1, 50000 do
        local p = valid[i % #valid + 1]
        for _ = 1, math.random(1, 4) do
          local at = math.random(1, #p + 1)
          local ch = alphabet:sub(math.random(#alphabet)):sub(1, 1)
          local op = math.random(3)
          if op == 1 then p = p:sub(1, at - 1) .. ch .. p:sub(at)
          elseif op == 2 then p = p:sub(1, at - 1) .. p:sub(at + 1)
          else p = p:sub(1, at - 1) .. ch .. p:sub(at + 1) end
        end
        local ok, ev, why = pcall(core.decode, i % 2 == 0 and plan or plan_nulls, p, "chan", 1.5)
        assert.is_true(ok, p)
        if ev then
          decoded = decoded + 1
          assert.is_table(ev.key, p)
          assert.is_not_nil(reference.decode(p), "accepted what is not JSON: " .. p)
        else
          refused = refused + 1
          assert.are.equal("string", type(why), p)
        end
      end
      assert.is_true(decoded > 2000 and refused > 2000, decoded .. " decoded, " .. refused .. " refused")
    end)
  end)

  describe("columns that are not the plan's (a table changed, spec 27)", function()
    local info = { class_of = { id = "integer", a = "text", b = "bytes" } }
    local watch = { schema = "s", table = "t", op = "update", pk = { "id" }, extra = { "a", "b" }, old = { "a" } }
    local function drift(payload, p) return select(3, core.decode(p, payload, "chan", 1.5)) end

    it("says so when a carried column is absent, unless it is known to be gone", function()
      local p = core.plan(watch, info, false)
      assert.is_nil(drift([[{"id": {"id": 1}, "x": {"a": null, "b": "\\x01"}, "o": {"a": "z"}}]], p))
      assert.is_nil(drift([[{"id": {"id": 1}, "x": {"a": 1, "b": 2, "zz": 3}, "o": {"a": 1}}]], p)) -- not asked for
      assert.is_nil(drift([[{"id": {"id": 1}, "t": true}]], p)) -- truncated: the key alone
      assert.is_true(drift([[{"id": {"id": 1}, "x": {"b": "\\x01"}, "o": {"a": "z"}}]], p))
      assert.is_true(drift([[{"id": {"id": 1}, "x": {"a": 1, "b": null}, "o": {}}]], p))
      assert.is_true(drift([[{"id": {"id": 1}, "x": {"a": 1, "b": null}}]], p))
      assert.is_true(drift([[{"id": {"id": 1}}]], p))
      local gone = core.plan({ schema = "s", table = "t", op = "update", pk = { "id" }, extra = { "a", "b" },
        old = { "a" }, gone = { a = true } }, info, false)
      assert.is_nil(drift([[{"id": {"id": 1}, "x": {"b": null}, "o": {}}]], gone))
      assert.is_true(drift([[{"id": {"id": 1}, "x": {}, "o": {}}]], gone))
      -- one written before it went is decoded all the same
      assert.are.same({ a = "was", b = "\1" },
        core.decode(gone, [[{"id": {"id": 1}, "x": {"a": "was", "b": "\\x01"}, "o": {}}]], "chan", 1.5).extra_columns)
    end)

    it('keeps, with extra_columns = "*", a column the plan does not know by its JSON type, and says so', function()
      for _, nulls in ipairs { false, true } do
        local p = core.plan({ schema = "s", table = "t", op = "insert", pk = { "id" }, extra = { "a", "b" }, all = true },
          info, nulls)
        local ev, why, news = core.decode(p, [[{"id": {"id": 1}, "x": {"a": "x", "b": "\\x01", "c": "\\x02",
          "d\u00e9": [1, 2.5], "e": null}}]], "chan", 1.5)
        assert.is_nil(why)
        assert.is_true(news)
        assert_exact({ a = "x", b = "\1", c = "\\x02", ["dé"] = { 1, 2.5, n = not nulls and 2 or nil }, e = nulls and NULL or nil }, ev.extra_columns)
        assert.is_nil(drift([[{"id": {"id": 1}, "x": {"a": "x", "b": null}}]], p))
        assert.is_true(drift([[{"id": {"id": 1}, "x": {"a": "x"}}]], p))
      end
    end)
  end)

  describe("plans", function()
    it("decode each column by the class describe gave it, whatever the dialect", function()
      local classes = { "bytes", "float", "decimal", "decimal(2)", "integer", "text", "boolean", "json", "other",
        "no such class" }
      local names, class_of = {}, {}
      for i, c in ipairs(classes) do
        names[i] = "c" .. i
        class_of[names[i]] = c
      end
      local p = core.plan({ schema = "s", table = "t", op = "insert", pk = { "id" }, extra = names },
        { class_of = class_of }, false)
      local function row(text)
        local x = {}
        for i = 1, #classes do x[i] = string.format('"c%d": %s', i, text) end
        local ev = core.decode(p, '{"id": {"id": 1}, "x": {' .. table.concat(x, ", ") .. '}}', "c", 0)
        local out = {}
        for i = 1, #classes do out[i] = ev.extra_columns["c" .. i] end
        return out
      end
      assert_exact({ "A", "\\x41", "\\x41", "\\x41", "\\x41", "\\x41", "\\x41", "\\x41", "\\x41", "\\x41" },
        row('"\\\\x41"'))
      assert_exact({ 3, 3.0, "3", "3", 3, 3, 3, 3, 3, 3 }, row("3"))
      assert_exact({ 3.10, 3.10, "3.10", "3.10", 3.10, 3.10, 3.10, 3.10, 3.10, 3.10 }, row("3.10"))
      assert_exact({ "Infinity", math.huge, "Infinity", "Infinity", "Infinity", "Infinity", "Infinity", "Infinity",
        "Infinity", "Infinity" }, row('"Infinity"'))
      -- a column gone from the catalog since (not in class_of) decodes by JSON type
      local gone = core.plan({ schema = "s", table = "t", op = "insert", pk = { "id" }, extra = { "x" } },
        { class_of = {} }, false)
      assert_exact({ x = "\\x41" }, core.decode(gone, '{"id": {"id": 1}, "x": {"x": "\\\\x41"}}', "c", 0).extra_columns)
    end)
  end)

  describe("classes from describe", function()
    -- describe's column rows as {name = class}, and the table row's class cell
    local function classes(rows)
      local out = {}
      for _, r in ipairs(rows) do
        if r[1] == "column" then out[r[2]] = r[5] end
      end
      return out, rows[1][5]
    end

    it("on PostgreSQL, from the type under any domain", function()
      H.fresh_schema("spec09c")
      finally(function() H.drop_schema("spec09c") end)
      H.psql([[CREATE DOMAIN spec09c.price AS numeric(12,3);
        CREATE TABLE spec09c.t (a int2, b int4, c int8, d real, e float8, f numeric, g numeric(10,2), h spec09c.price,
          i boolean, j text, k varchar(3), l char(2), m uuid, n bytea, o json, p jsonb, q timestamptz, r int[],
          s numeric(5,-2))]])
      local n = H.pg_notifier()
      finally(function() n:close() end)
      local got, loose = classes(assert(n._h:describe("spec09c", "t")))
      assert.are.same({ a = "integer", b = "integer", c = "integer", d = "float", e = "float", f = "decimal",
        g = "decimal(2)", h = "decimal(3)", i = "boolean", j = "text", k = "text", l = "text", m = "text", n = "bytes",
        o = "json", p = "json", q = "other", r = "other", s = "decimal(0)" }, got)
      assert.is_nil(loose)
    end)

    it("on SQLite, by column affinity; a table without STRICT is loose", function()
      local path = H.tmpfile(".db")
      local n = assert(sqlnotify.notifier { url = "sqlite:///" .. path .. "?mode=rwc", use_logger = false })
      finally(function() n:close() end)
      assert(n:query([[CREATE TABLE t (a INTEGER, b "FLOATING POINT", c TEXT, d VARCHAR(3), e BLOB, f, g REAL,
        h DOUBLE, i NUMERIC, j DECIMAL(10,2), k BOOLEAN)]]))
      assert(n:query("CREATE TABLE s (a INT, b REAL, c TEXT, d BLOB, e ANY) STRICT"))
      local got, loose = classes(assert(n._h:describe(nil, "t")))
      assert.are.same({ a = "integer", b = "integer", c = "text", d = "text", e = "bytes", f = "other", g = "float",
        h = "float", i = "integer", j = "integer", k = "integer" }, got)
      assert.are.equal("loose", loose)
      got, loose = classes(assert(n._h:describe(nil, "s")))
      assert.are.same({ a = "integer", b = "float", c = "text", d = "bytes", e = "other" }, got)
      assert.is_nil(loose)
    end)
  end)
end)

-- The same row written on each database arrives as the same Lua values.
describe("values through real triggers", function()
  local S = "spec09"
  local COLUMNS = { "big", "f", "r", "n", "by", "t", "z" }
  local EXPECTED = {
    { id = 9007199254740993, big = 9007199254740993, f = 0.1 + 0.2, r = 0.25, n = "1234567890.0123456789",
      by = "\0\255A", t = "é\"\\\n" },
    { id = -9223372036854775807 - 1, big = 0, f = math.huge, r = -math.huge, n = "-0.00000000000000000001", by = "",
      t = "" },
  }

  local function check(got)
    assert.are.equal(#EXPECTED, #got)
    for i, e in ipairs(EXPECTED) do
      local ev = got[i]
      assert.are.equal(e.id, ev.id)
      assert.are.equal("integer", math.type(ev.id))
      assert.are.same({ ['a"b'] = e.id }, ev.key)
      local x = ev.extra_columns
      for _, c in ipairs(COLUMNS) do
        assert.are.equal(e[c], x[c], c .. " of row " .. i)
        if type(e[c]) == "number" then assert.are.equal(math.type(e[c]), math.type(x[c]), c) end
      end
      assert.is_nil(x.z) -- SQL NULL
    end
  end

  it("on PostgreSQL", function()
    H.fresh_schema(S)
    finally(function() H.drop_schema(S) end)
    H.psql([[CREATE TABLE spec09.v ("a""b" bigint PRIMARY KEY, big bigint, f float8, r real, n numeric, by bytea,
      t text, z int)]])
    local n = H.pg_notifier()
    finally(function()
      n:cleanup()
      n:close()
    end)
    n:watch("spec09.v", "insert", { extra_columns = COLUMNS })
    local got, handler = H.collector()
    n:subscribe("spec09.v", "insert", handler)
    assert(n:start())
    H.psql([[INSERT INTO spec09.v VALUES (9007199254740993, 9007199254740993, 0.1::float8 + 0.2::float8, 0.25,
        1234567890.0123456789, '\x00ff41', E'é"\\\n', NULL);
      INSERT INTO spec09.v VALUES (-9223372036854775808, 0, 'Infinity', '-Infinity', -1e-20, '', '', NULL);]])
    assert.is_true(H.run_until(function() return #got == 2 end))
    check(got)
  end)

  it("on SQLite", function()
    local path = H.tmpfile(".db")
    local n = assert(sqlnotify.notifier { url = "sqlite:///" .. path .. "?mode=rwc", use_logger = false })
    finally(function() n:close() end)
    assert(n:query([[CREATE TABLE v ("a""b" INTEGER PRIMARY KEY, big INTEGER, f REAL, r DOUBLE, n TEXT, by BLOB,
      t TEXT, z INTEGER)]]))
    n:watch("v", "insert", { extra_columns = COLUMNS })
    local got, handler = H.collector()
    n:subscribe("v", "insert", handler)
    assert(n:start())
    assert(H.sh("sqlite3 " .. H.shell_quote(path) .. [[ ".timeout 5000" "INSERT INTO v VALUES (9007199254740993,
      9007199254740993, 0.1 + 0.2, 0.25, '1234567890.0123456789', x'00ff41', 'é\"\\' || char(10), NULL);
      INSERT INTO v VALUES (-9223372036854775808, 0, 9e999, -9e999, '-0.00000000000000000001', x'', '', NULL);"]]))
    assert.is_true(H.run_until(function() return #got == 2 end))
    check(got)
  end)
end)
