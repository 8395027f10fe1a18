-- MySQL/MariaDB: the API cases shared with PostgreSQL (spec/cases/api.lua), then what is
-- MySQL's own: URLs, the catalog, value encodings, odd names, ALTER TABLE, the journal's
-- late commits (two writers with interleaved commits), durable consumers, pruning, and
-- the real host killed with kill -9 and restarted. Everything lives in one database
-- (SQLNOTIFY_TEST_MYSQL_URL, default mysql://root@127.0.0.1:3306/sqlnotify_check, which
-- tools/mariadb.sh makes); this file's tables are named s19_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format
local q = H.shell_quote

local URL = os.getenv("SQLNOTIFY_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/sqlnotify_check"

-- mysql://user[:pass]@host[:port]/db
local user, pass, host, port, DB
do
  local rest = URL:match("^[%w+]+://(.*)$")
  local auth, hp = rest:match("^(.-)@(.*)$")
  if not auth then auth, hp = "", rest end
  user, pass = auth:match("^([^:]*):?(.*)$")
  host, DB = hp:match("^([^/]*)/([^?]*)")
  host, port = host:match("^([^:]*):?(%d*)$")
  port = port ~= "" and port or "3306"
  host = host ~= "" and host or "127.0.0.1"
end

-- SQL through the mariadb client (another connection); returns its output (tab-separated).
local function sql(text)
  local file = H.tmpfile(".sql")
  H.spit(file, text)
  local out = H.tmpfile(".out")
  local ok = H.sh(fmt("MYSQL_PWD=%s mariadb --protocol=tcp -h %s -P %s -u %s -N -B %s <%s >%s 2>&1", q(pass), q(host),
    q(port), q(user), q(DB), q(file), q(out)))
  local res = H.slurp(out)
  if not ok then error("mariadb failed: " .. res, 2) end
  return res
end

local function count(text) return tonumber(sql(text):match("%-?%d+")) end

local function notifier(opts)
  opts = opts or {}
  opts.url = opts.url or URL
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  return assert(sqlnotify.notifier(opts))
end

local function t(name) return fmt("`%s`.`%s`", DB, (name:gsub("`", "``"))) end

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok)
  return (tostring(e):gsub("^[^:]+:%d+: ", ""))
end

-- ===== the cases every dialect shares =====

require("cases.api")({
  name = "MariaDB",
  dialect = "mysql",
  schema = DB,
  notifier = notifier,
  suffix_url = URL:gsub("^mysql:", "mysql+pymysql:"),
  bad_url = "mysql://root:s3cretpw@127.0.0.1:1/nodb",
  exec = sql,
  prefix = "s19_",
  t = t,
  ddl = {
    users = "CREATE TABLE %s (id int AUTO_INCREMENT PRIMARY KEY, email text, name text, age int)",
    order_items = "CREATE TABLE %s (order_id int, item_id int, qty int, note text, PRIMARY KEY (order_id, item_id))",
    keyless = "CREATE TABLE %s (a int, b int UNIQUE, c text)",
    big = "CREATE TABLE %s (id bigint PRIMARY KEY, n bigint, f double)",
  },
  trigger_count = function()
    return count(fmt([[SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = '%s'
      AND EVENT_OBJECT_TABLE IN ('s19_users', 's19_order_items', 's19_keyless')]], DB))
  end,
  unknown_suffix = "",
  max_payload = 0,
  query = {
    sql = "SELECT CAST(? AS SIGNED) AS a, ? AS b, ? AS c, ? AS d, NULL AS e, 2.5e0 AS f, CAST(1.10 AS DECIMAL(4,2)) AS g",
    params = { 42, "x'y", 1.5, true },
    expect = { a = 42, b = "x'y", c = 1.5, d = 1, f = 2.5, g = "1.10" },
    empty = "SELECT 1 FROM DUAL WHERE 1 = 0",
    bad = fmt("SELECT * FROM `%s`.s19_no_such_table", DB),
    bad_message = fmt("sqlnotify: Table '%s.s19_no_such_table' doesn't exist", DB),
  },
}, _ENV)
