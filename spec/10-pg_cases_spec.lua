-- spec/10-pg_cases_spec.lua — the API cases every dialect with a server shares
-- (spec/cases/api.lua), on PostgreSQL; MariaDB runs the same cases in spec 19. This
-- file's tables live in schema spec10.
local H = require("helper")

local fmt = string.format
local S = "spec10"


setup(function() H.fresh_schema(S) end)
teardown(function() H.drop_schema(S) end)

require("cases.api")({
  name = "PostgreSQL",
  dialect = "postgresql",
  schema = S,
  notifier = function(opts) return H.pg_notifier(opts) end,
  suffix_url = H.pg_url:gsub("^postgresql:", "postgresql+asyncpg:"),
  bad_url = "postgresql://root:s3cretpw@127.0.0.1:1/nodb",
  bad_url_error = '^sqlnotify: cannot connect to database "nodb" on 127%.0%.0%.1:1: ',
  exec = function(sql) return H.psql(sql) end,
  t = function(name) return fmt('%s."%s"', S, (name:gsub('"', '""'))) end,
  ddl = {
    users = "CREATE TABLE %s (id serial PRIMARY KEY, email text, name text, age int)",
    order_items = "CREATE TABLE %s (order_id int, item_id int, qty int, note text, PRIMARY KEY (order_id, item_id))",
    keyless = "CREATE TABLE %s (a int, b int UNIQUE, c text)",
  },
  typed = {
    ddl = "CREATE TABLE %s (id int PRIMARY KEY, qty int, price numeric(10,2), flag boolean, name text, ratio float8)",
    types = { id = "integer", qty = "integer", price = "numeric(10,2)", flag = "boolean", name = "text",
      ratio = "double precision" },
    classes = { id = "integer", qty = "integer", price = "decimal", flag = "boolean", name = "text", ratio = "float" },
    first = { qty = 42, price = "42.00", flag = true, name = "7", ratio = 0.5 },
  },
  trigger_count = function()
    return tonumber(H.psql(fmt([[SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = '%s' AND NOT t.tgisinternal
      AND c.relname IN ('users', 'order_items', 'keyless')]], S)):match("%d+"))
  end,
  unknown_suffix = " (not found in search_path)",
  max_payload = 7999,
  query = {
    sql = "SELECT $1::int AS a, $2::text AS b, $3::float8 AS c, $4::boolean AS d, NULL AS e, 2.5::float8 AS f, "
      .. "1.10::numeric(4,2) AS g",
    params = { 42, "x'y", 1.5, true },
    expect = { a = 42, b = "x'y", c = 1.5, d = true, f = 2.5, g = "1.10" },
    empty = "SELECT 1 WHERE false",
    bad = "SELECT * FROM spec10.no_such_table",
    bad_message = 'sqlnotify: relation "spec10.no_such_table" does not exist',
  },
}, _ENV)
