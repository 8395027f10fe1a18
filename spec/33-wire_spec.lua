-- The wire format's values (spec/cases/wire.lua), on every dialect and every trigger that
-- writes them, in one file so that a value that arrives differently on two of them shows up
-- side by side: PostgreSQL with the plpgsql trigger (SQLNOTIFY_PG_CAPTURE=plpgsql) and with the
-- C trigger of the extension sqlnotify_capture (the default where the server has it: make check
-- installs it), live and durable; SQLite live and durable; MariaDB live and durable. Each run
-- is a host process of its own (the trigger kind is chosen by its environment). Tables:
-- PostgreSQL's in schema spec33, MariaDB's named s33_*, SQLite's in files of their own;
-- durable consumers s33_*, dropped after their run.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

local function hex(s) return (s:gsub(".", function(ch) return fmt("%02x", ch:byte()) end)) end

-- ===== PostgreSQL =====

local S = "spec33"

local function pg_functions(main, keys)
  local out = {}
  local rows = H.psql(fmt([[
SELECT c.relname, CASE WHEN t.tgtype & 4 <> 0 THEN 'insert' WHEN t.tgtype & 16 <> 0 THEN 'update'
    WHEN t.tgtype & 8 <> 0 THEN 'delete' ELSE 'other' END, pn.nspname || '.' || p.proname, l.lanname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = '%s' AND c.relname IN ('%s', '%s') AND NOT t.tgisinternal ORDER BY 1, 2]], S, main, keys))
  for rel, op, fn, lang in rows:gmatch("([^|\n]+)|([^|\n]+)|([^|\n]+)|([^|\n]+)\n") do
    out[#out + 1] = fmt("%s %s %s", rel, op, lang == "plpgsql" and "plpgsql" or fn .. " (" .. lang .. ")")
  end
  return out
end

-- The six triggers of a run's two tables, each calling fn ("plpgsql": a function of its own).
local function pg_check(fn)
  return function(main, keys)
    if fn ~= "plpgsql" then
      local have = H.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'sqlnotify_capture'")
      assert(have:match("%d+") == "1", "the PostgreSQL server has no extension sqlnotify_capture: `make check`"
        .. " builds and installs it (pgext/) before it runs the specs")
    end
    local want = {}
    for _, t in ipairs { main, keys } do
      for _, op in ipairs { "delete", "insert", "update" } do want[#want + 1] = fmt("%s %s %s", t, op, fn) end
    end
    assert.are.same(want, pg_functions(main, keys))
  end
end

local function pg_text(s, ty) return fmt("CAST(convert_from('\\x%s'::bytea, 'UTF8') AS %s)", hex(s), ty) end
local function pg_bytes(b) return fmt("'\\x%s'::bytea", hex(b)) end

local function pg_drop_consumer(run)
  local admin = H.pg_notifier()
  admin:drop_consumer(run.consumer)
  admin:close()
end

describe("PostgreSQL", function()
  setup(function()
    pg_drop_consumer({ consumer = "s33_dp" })
    pg_drop_consumer({ consumer = "s33_dc" })
    H.fresh_schema(S)
  end)
  teardown(function() H.drop_schema(S) end)

  require("cases.wire")({
    name = "PostgreSQL",
    key = "pg",
    schema = S,
    url = H.pg_url,
    runs = {
      { label = "live, plpgsql trigger", prefix = "lp_", env = "SQLNOTIFY_PG_CAPTURE=plpgsql",
        check = pg_check("plpgsql") },
      { label = "durable, plpgsql trigger", prefix = "dp_", consumer = "s33_dp", shares = 1,
        env = "SQLNOTIFY_PG_CAPTURE=plpgsql", check = pg_check("plpgsql") },
      -- the C path in the default environment, whatever the one running the specs sets
      { label = "live, C trigger", prefix = "lc_", env = "env -u SQLNOTIFY_PG_CAPTURE",
        check = pg_check("sqlnotify_capture.notify (c)") },
      { label = "durable, C trigger", prefix = "dc_", consumer = "s33_dc", shares = 1,
        env = "env -u SQLNOTIFY_PG_CAPTURE", check = pg_check("sqlnotify_capture.capture (c)") },
    },
    exec = function(sql) return H.psql("SET TimeZone = 'UTC';\n" .. sql) end,
    t = function(name) return fmt('%s."%s"', S, name) end,
    watch_name = function(name) return S .. "." .. name end,
    create = "CREATE TABLE %s (%s)",
    text = pg_text,
    bytes = pg_bytes,
    keys = {
      { "k_i", "int8", { "9223372036854775807", math.maxinteger }, { "-9223372036854775808", math.mininteger },
        { "9007199254740993", 9007199254740993 } },
      { "k_t", "text", { pg_text('é"\\\n😀', "text"), 'é"\\\n😀' }, { "''", "" }, { "'x'", "x" } },
      { "k_b", "bytea", { pg_bytes("\0\255"), "\0\255" }, { pg_bytes(""), "" }, { pg_bytes("\0\255"), "\0\255" } },
      { "k_n", "numeric", { "1.50", "1.50" }, { "-0.01", "-0.01" }, { "1.50", "1.50" } },
    },
    drop_consumer = pg_drop_consumer,
  }, _ENV)
end)

-- ===== SQLite =====

local function sq_text(s) return fmt("CAST(X'%s' AS TEXT)", hex(s)) end
local function sq_bytes(b) return fmt("X'%s'", hex(b)) end

describe("SQLite", function()
  local live, durable = H.fresh_sqlite("wire33"), H.fresh_sqlite("wire33")
  require("cases.wire")({
    name = "SQLite",
    key = "sq",
    schema = "main",
    runs = {
      { label = "live", prefix = "l_", path = live, url = "sqlite:///" .. live },
      { label = "durable", prefix = "d_", path = durable, url = "sqlite:///" .. durable, consumer = "s33_d" },
    },
    exec = function(sql, run) return H.sqlite_cli(run.path, sql) end,
    t = function(name) return fmt('"%s"', name) end,
    watch_name = function(name) return name end,
    create = "CREATE TABLE %s (%s)",
    text = sq_text,
    bytes = sq_bytes,
    keys = {
      { "k_i", "INTEGER", { "9223372036854775807", math.maxinteger }, { "-9223372036854775808", math.mininteger },
        { "9007199254740993", 9007199254740993 } },
      { "k_t", "TEXT", { sq_text('é"\\\n😀'), 'é"\\\n😀' }, { "''", "" }, { "'x'", "x" } },
      { "k_b", "BLOB", { sq_bytes("\0\255"), "\0\255" }, { sq_bytes(""), "" }, { sq_bytes("\0\255"), "\0\255" } },
    },
    drop_consumer = function() end, -- the file is this spec's own
  }, _ENV)
end)

-- ===== MariaDB =====

local DB = H.my.db
local function my_text(s) return fmt("CONVERT(X'%s' USING utf8mb4)", hex(s)) end
local function my_bytes(b) return fmt("X'%s'", hex(b)) end

local function my_drop_consumer(run)
  local admin = assert(sqlnotify.notifier{ url = H.mysql_url, use_logger = false })
  admin:drop_consumer(run.consumer)
  admin:close()
end

describe("MariaDB", function()
  setup(function()
    my_drop_consumer({ consumer = "s33_md" })
  end)

  require("cases.wire")({
    name = "MariaDB",
    key = "my",
    schema = DB,
    url = H.mysql_url,
    runs = {
      { label = "live", prefix = "s33_ml_" },
      { label = "durable", prefix = "s33_md_", consumer = "s33_md" },
    },
    exec = function(sql) return H.mysql(sql) end,
    t = function(name) return fmt("`%s`.`%s`", DB, name) end,
    watch_name = function(name) return DB .. "." .. name end,
    create = "CREATE TABLE %s (%s) CHARACTER SET utf8mb4",
    text = my_text,
    bytes = my_bytes,
    keys = {
      { "k_i", "bigint", { "9223372036854775807", math.maxinteger }, { "-9223372036854775808", math.mininteger },
        { "9007199254740993", 9007199254740993 } },
      { "k_t", "varchar(32)", { my_text('é"\\\n😀'), 'é"\\\n😀' }, { "''", "" }, { "'x'", "x" } },
      { "k_b", "varbinary(16)", { my_bytes("\0\255"), "\0\255" }, { my_bytes(""), "" },
        { my_bytes("\0\255"), "\0\255" } },
      { "k_n", "decimal(10,2)", { "1.50", "1.50" }, { "-0.01", "-0.01" }, { "1.50", "1.50" } },
    },
    drop_consumer = my_drop_consumer,
  }, _ENV)
end)
