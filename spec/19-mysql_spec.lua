-- MySQL/MariaDB: the API cases shared with PostgreSQL (spec/cases/api.lua), then what is
-- MySQL's own: URLs, the catalog, odd names, ALTER TABLE, the journal's
-- late commits (two writers with interleaved commits), durable consumers, pruning, a
-- table made again under a consumer, a truncated journal, and the real host killed with
-- kill -9 and restarted. Everything lives
-- in one database (SQLNOTIFY_TEST_MYSQL_URL, default mysql://root@127.0.0.1:3306/sqlnotify_check,
-- which tools/mariadb.sh makes; the truncated journal in one of its own, <db>_back); this
-- file's tables are named s19_*. The values on the wire, type
-- by type, are spec/cases/wire.lua (spec 33).
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format
local q = H.shell_quote

local URL = H.mysql_url
local user, host, port, DB = H.my.user, H.my.host, H.my.port, H.my.db
local sql = H.mysql -- SQL through the mariadb client (another connection); its tab-separated output

local function count(text) return tonumber(sql(text):match("%-?%d+")) end

local function notifier(opts)
  opts = opts or {}
  opts.url = opts.url or URL
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  return assert(sqlnotify.notifier(opts))
end

local function t(name) return fmt("`%s`.`%s`", DB, (name:gsub("`", "``"))) end

-- ===== the cases every dialect shares =====

require("cases.api")({
  name = "MariaDB",
  dialect = "mysql",
  schema = DB,
  notifier = notifier,
  suffix_url = URL:gsub("^mysql:", "mysql+pymysql:"),
  bad_url = "mysql://root:s3cretpw@127.0.0.1:1/nodb",
  bad_url_error = '^sqlnotify: cannot connect to database "nodb" on 127%.0%.0%.1:1: ',
  exec = sql,
  prefix = "s19_",
  t = t,
  ddl = {
    users = "CREATE TABLE %s (id int AUTO_INCREMENT PRIMARY KEY, email text, name text, age int)",
    order_items = "CREATE TABLE %s (order_id int, item_id int, qty int, note text, PRIMARY KEY (order_id, item_id))",
    keyless = "CREATE TABLE %s (a int, b int UNIQUE, c text)",
  },
  typed = { -- BOOLEAN is tinyint(1): true arrives as 1
    ddl = "CREATE TABLE %s (id int PRIMARY KEY, qty int, price decimal(10,2), flag boolean, name varchar(20),"
      .. " ratio double)",
    types = { id = "int(11)", qty = "int(11)", price = "decimal(10,2)", flag = "tinyint(1)", name = "varchar(20)",
      ratio = "double" },
    classes = { id = "integer", qty = "integer", price = "decimal", flag = "integer", name = "text", ratio = "float" },
    first = { qty = 42, price = "42.00", flag = 1, name = "7", ratio = 0.5 },
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

-- ===== what is MySQL's own =====

local collector = H.collector

-- Events reduced to what a test compares.
local function brief(events)
  local out = {}
  for i, ev in ipairs(events) do out[i] = { id = ev.id, truncated = ev.truncated, x = ev.extra_columns } end
  return out
end

describe("sqlnotify (MySQL/MariaDB)", function()
  local open = {}
  local function N(opts)
    local n = notifier(opts)
    open[#open + 1] = n
    return n
  end

  after_each(function()
    for _, n in ipairs(open) do
      if not n._closed then
        n:cleanup()
        n:close()
      end
    end
    open = {}
  end)

  describe("URLs", function()
    it("honours unix_socket and a driver suffix, and names the socket in its target", function()
      local socket = sql("SELECT @@socket"):match("[^\n]+")
      local n = N{ url = fmt("mariadb+mariadbconnector://%s@localhost/%s?unix_socket=%s", user, DB, socket) }
      assert.are.equal("mysql", n.dialect_name)
      assert.are.equal(fmt('database "%s" on socket %s', DB, socket), n._h:target())
      assert.are.same({ { one = 1 } }, n:query("SELECT 1 AS one"))
    end)

    it("refuses an unknown parameter, a bad number and a URL without a database, by name", function()
      local cases = {
        { URL .. "?sslmode=require", 'sqlnotify: unknown MySQL URL parameter "sslmode" (known: unix_socket,'
          .. " connect_timeout, read_timeout, ssl, ssl_ca, ssl_cert, ssl_key, ssl_verify_server_cert, charset)" },
        { URL .. "?connect_timeout=soon",
          'sqlnotify: MySQL URL parameter connect_timeout must be a whole number of seconds from 1 to 86400, got "soon"' },
        { URL .. "?charset=latin1",
          'sqlnotify: MySQL URL parameter charset must be utf8mb4 (every session is), got "latin1"' },
        { URL:gsub("/[^/]*$", "/"),
          "sqlnotify: the MySQL URL names no database (mysql://user@host:3306/db): the journal lives there" },
      }
      for i, case in ipairs(cases) do
        local n, err = sqlnotify.notifier{ url = case[1], use_logger = false }
        assert.is_nil(n, "case " .. i)
        assert.are.equal(case[2], err, "case " .. i)
      end
    end)

    it("never shows the password of a refused login", function()
      local n, err = sqlnotify.notifier{ url = fmt("mysql://%s:s3cretpw@%s:%s/%s", user, host, port, DB), use_logger = false }
      if n then n:close() end -- a server that lets anyone in
      assert.is_nil(n)
      assert.matches(fmt('^sqlnotify: cannot connect to database "%s" on %s:%s: ', DB, host:gsub("%.", "%%."), port), err)
      assert.is_nil(err:find("s3cretpw", 1, true))
    end)
  end)

  describe("a build without MariaDB Connector/C", function()
    it("answers a mysql:// URL with what to install", function()
      local build = H.tmpdir() .. "/no-mysql"
      assert(H.sh("make -s -j2 all SANITIZE= BUILD=" .. q(build) .. " MYSQL_LIBS= MYSQL_CFLAGS= >/dev/null 2>&1"))
      local script, out = H.tmpfile(".lua"), H.tmpfile(".out")
      H.spit(script, [[print(select(2, pcall(require("sqlnotify").notifier, { url = "mariadb+pymysql://u@h/db" })))]])
      assert(H.sh(fmt("LUA_PATH=%s %s %s >%s 2>&1", q(H.root .. "/lua/?.lua;" .. H.root .. "/lua/?/init.lua;;"),
        q(build .. "/sqlnotify-lua"), q(script), q(out))))
      assert.are.equal("sqlnotify: this build has no MySQL/MariaDB support (install libmariadb-dev and rebuild)\n",
        H.slurp(out))
    end)
  end)

  describe("catalog", function()
    before_each(function()
      sql([[DROP VIEW IF EXISTS s19_v; DROP TABLE IF EXISTS s19_cat;
        CREATE TABLE s19_cat (id int, code varchar(20), a int, b int, note text, PRIMARY KEY (id),
          UNIQUE KEY by_code (code), UNIQUE KEY pair (b, a), UNIQUE KEY prefix (note(10)), KEY plain (a));
        CREATE VIEW s19_v AS SELECT id, code FROM s19_cat;]])
    end)
    teardown(function() sql("DROP VIEW IF EXISTS s19_v; DROP TABLE IF EXISTS s19_cat;") end)

    it("describes columns in order, the primary key and whole-column unique indexes", function()
      local n = N()
      local rows = assert(n._h:describe(DB, "s19_cat"))
      local shape = {}
      for i, r in ipairs(rows) do shape[i] = table.concat({ r[1], r[2] or "-", r[1] == "column" and "" or (r[3] or "-"),
        r[4] or "-" }, " ") end
      assert.are.same({
        "table " .. DB .. " s19_cat -",
        "column id  1", "column code  2", "column a  3", "column b  4", "column note  5",
        "pk id - 1",
        "unique code by_code 1",
        "unique b pair 1", "unique a pair 2",
      }, shape)
      assert.are.same({}, assert(n._h:describe(DB, "S19_CAT"))) -- names are taken literally
    end)

    it("gives each column's class as the triggers send its values", function()
      sql([[DROP TABLE IF EXISTS s19_classes;
        CREATE TABLE s19_classes (a tinyint(1), b smallint, c mediumint, d int, e bigint unsigned, f bit(3), g year,
          h float, i double, j decimal(10,2), k decimal, l char(2), m varchar(9), n text, o enum('x'), p set('y'),
          q binary(2), r varbinary(9), s blob, t point, u json, `v``w` json, x longtext, y datetime, z date)]])
      finally(function() sql("DROP TABLE IF EXISTS s19_classes") end)
      local n = N()
      local got = {}
      for _, r in ipairs(assert(n._h:describe(DB, "s19_classes"))) do
        if r[1] == "column" then got[r[2]] = r[5] end
      end
      assert.are.same({ a = "integer", b = "integer", c = "integer", d = "integer", e = "integer", f = "integer",
        g = "integer", h = "float", i = "float", j = "decimal(2)", k = "decimal(0)", l = "text", m = "text", n = "text",
        o = "text", p = "text", q = "bytes", r = "bytes", s = "bytes", t = "bytes", u = "json", ["v`w"] = "json",
        x = "text", y = "other", z = "other" }, got)
    end)

    it("marks a view, and refuses a trigger on it with a line saying what to watch", function()
      local n = N()
      local rows = assert(n._h:describe(DB, "s19_v"))
      assert.are.same({ "table", DB, "s19_v", "view" }, rows[1])
      local ok, err = n._h:install({ schema = DB, table = "s19_v", op = "insert", opcode = 0, channel = "sqlnotify_s19_v",
        marker = "0", pk = { "id" }, extra = {}, trigger = {}, old = {} }, true)
      assert.is_nil(ok)
      assert.are.equal(fmt('sqlnotify: cannot create the trigger for insert on "%s"."s19_v": it is a view, and MySQL has'
        .. " no triggers on views (watch the table it reads from)", DB), err)
    end)
  end)

  describe("odd names", function()
    local ODD = "s19 odd `tick` sélect"
    before_each(function()
      sql(fmt([[DROP TABLE IF EXISTS %s; DROP TABLE IF EXISTS `s19.dot`;
        CREATE TABLE %s (`select` int, `my col` varchar(20), `ünï` varchar(20), ```q``` int, PRIMARY KEY (`select`, `my col`))
          CHARACTER SET utf8mb4;
        CREATE TABLE `s19.dot` (id int PRIMARY KEY, `order` int);]], t(ODD), t(ODD)))
    end)
    teardown(function() sql(fmt("DROP TABLE IF EXISTS %s; DROP TABLE IF EXISTS `s19.dot`;", t(ODD))) end)

    it("watches tables and columns named with backticks, spaces, unicode, dots and reserved words", function()
      local got, handler = collector()
      local n = N()
      local odd = { schema = DB, table = ODD }
      local label = "étiquette très longue qui dépasse soixante-trois octets une fois écrite en UTF-8"
      n:watch(odd, "insert", { extra_columns = { "ünï", "`q`" } })
      n:watch(odd, "update", { extra_columns = { "ünï" }, trigger_columns = { "`q`" }, channel_label = label })
      n:watch(odd, "delete")
      n:watch({ schema = DB, table = "s19.dot" }, "insert", { extra_columns = { "order" } })
      n:subscribe(odd, "insert", handler)
      n:subscribe(odd, "update", { channel_label = label }, handler)
      n:subscribe(odd, "delete", handler)
      n:subscribe({ schema = DB, table = "s19.dot" }, "insert", handler)
      assert(n:start())
      sql(fmt([[INSERT INTO %s VALUES (1, 'a b', 'ü', 7);
        UPDATE %s SET `ünï` = 'changed' WHERE `select` = 1;
        UPDATE %s SET ```q``` = 8 WHERE `select` = 1;
        DELETE FROM %s;
        INSERT INTO `s19.dot` VALUES (3, 4);]], t(ODD), t(ODD), t(ODD), t(ODD)))
      assert.is_true(H.run_until(function() return #got == 4 end))
      H.run_for(0.1)
      assert.are.same({
        { id = { 1, "a b" }, truncated = false, x = { ["ünï"] = "ü", ["`q`"] = 7 } },
        { id = { 1, "a b" }, truncated = false, x = { ["ünï"] = "changed" } },
        { id = { 1, "a b" }, truncated = false, x = {} },
        { id = 3, truncated = false, x = { order = 4 } },
      }, brief(got))
      assert.is_true(#got[2].channel <= 63)
      assert.are.equal(ODD, got[1].table)
      for _, r in ipairs(assert(n._h:list())) do
        assert.is_true(#r[5] <= 63, r[5])
        assert.matches("^sqlnotify_s19", r[5])
      end
    end)
  end)

  describe("ALTER TABLE on a watched table", function()
    before_each(function()
      sql([[DROP TABLE IF EXISTS s19_alter;
        CREATE TABLE s19_alter (id int PRIMARY KEY, email varchar(50), name varchar(50), age int);]])
    end)
    teardown(function() sql("DROP TABLE IF EXISTS s19_alter") end)

    it("never fails the table's writes, and events keep flowing without the columns that went", function()
      local ins, hi = collector()
      local upd, hu = collector()
      local n = N()
      local T = DB .. ".s19_alter"
      n:watch(T, "insert", { extra_columns = { "email", "name", "age" } })
      n:watch(T, "update", { trigger_columns = { "email" }, extra_columns = { "email" } })
      n:subscribe(T, "insert", hi)
      n:subscribe(T, "update", hu)
      assert(n:start())
      sql([[
        ALTER TABLE s19_alter ADD COLUMN nick varchar(10);
        INSERT INTO s19_alter VALUES (1, 'a@x', 'Ann', 30, 'an');
        UPDATE s19_alter SET email = 'a2@x' WHERE id = 1;
        ALTER TABLE s19_alter RENAME COLUMN name TO full_name;
        INSERT INTO s19_alter (id, email, full_name, age) VALUES (2, 'b@x', 'Bob', 31);
        ALTER TABLE s19_alter MODIFY COLUMN age bigint;
        INSERT INTO s19_alter (id, email, full_name, age) VALUES (3, 'c@x', 'Cy', 32);
        ALTER TABLE s19_alter DROP COLUMN email;
        INSERT INTO s19_alter (id, full_name, age) VALUES (4, 'Di', 33);
        UPDATE s19_alter SET full_name = 'Dee', age = 34 WHERE id = 4;
      ]])
      assert.is_true(H.run_until(function() return #ins == 4 and #upd == 1 end))
      H.run_for(0.2)
      assert.are.same({
        { id = 1, truncated = false, x = { email = "a@x", name = "Ann", age = 30 } },
        { id = 2, truncated = false, x = { email = "b@x", age = 31 } },
        { id = 3, truncated = false, x = { email = "c@x", age = 32 } },
        { id = 4, truncated = false, x = { age = 33 } },
      }, brief(ins))
      -- the update watch fires only when email changed: there is no email any more
      assert.are.same({ { id = 1, truncated = false, x = { email = "a2@x" } } }, brief(upd))
      assert.are.equal("1\tAnn\t30\tan\n2\tBob\t31\tNULL\n3\tCy\t32\tNULL\n4\tDee\t34\tNULL\n",
        sql("SELECT id, full_name, age, nick FROM s19_alter ORDER BY id"))
    end)

    it("has the next start re-create the trigger for the table as it is now", function()
      local n1 = N()
      n1:watch(DB .. ".s19_alter", "insert", { extra_columns = { "email", "name" } })
      assert(n1:start())
      n1:close()
      sql("ALTER TABLE s19_alter DROP COLUMN age")
      local n2 = N()
      n2:watch(DB .. ".s19_alter", "insert", { extra_columns = { "email", "name" } })
      local w = n2._watches[1]
      assert.is_false(n2._h:verify(w)) -- the table's columns are part of the marker
      assert(n2:start())
      assert.is_true(n2._h:verify(w))
    end)

    it("lets writes succeed while the journal is gone, and the reader makes it again", function()
      local got, handler = collector()
      local n = N()
      n:watch(DB .. ".s19_alter", "insert")
      n:subscribe(DB .. ".s19_alter", "insert", handler)
      assert(n:start())
      sql("DROP TABLE sqlnotify_journal; INSERT INTO s19_alter (id) VALUES (1);")
      assert.is_true(H.run_until(function()
        return sql("SHOW TABLES LIKE 'sqlnotify_journal'"):find("sqlnotify_journal") ~= nil
      end))
      sql("INSERT INTO s19_alter (id) VALUES (2)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(2, got[1].id)
      assert.are.equal("1\n2\n", sql("SELECT id FROM s19_alter ORDER BY id"))
    end)
  end)

  describe("old values", function()
    before_each(function()
      sql([[DROP TABLE IF EXISTS s19_old;
        CREATE TABLE s19_old (id int PRIMARY KEY, email varchar(50), plan varchar(10));
        INSERT INTO s19_old VALUES (1, 'a@x', 'free');]])
    end)
    teardown(function() sql("DROP TABLE IF EXISTS s19_old") end)

    it("sends the OLD values of old_columns and the old key when the key changed", function()
      local got, handler = collector()
      local n = N()
      n:watch(DB .. ".s19_old", "update", { extra_columns = { "email" } })
      n._watches[1].old = { "plan" } -- old_columns, as the API passes them
      n:subscribe(DB .. ".s19_old", "update", handler)
      assert(n:start())
      sql("UPDATE s19_old SET plan = 'pro' WHERE id = 1; UPDATE s19_old SET id = 2 WHERE id = 1;")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ plan = "free" }, got[1].old)
      assert.is_nil(got[1].old_id)
      assert.are.equal(2, got[2].id)
      assert.are.same({ plan = "pro" }, got[2].old)
      assert.are.equal(1, got[2].old_id)
    end)
  end)
end)

-- ===== the journal: late commits, durable consumers, pruning (through the real host) =====

-- A host script: prints "who k id seq" for each insert into the table arg[2].
local READER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, start_at, retention = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil,
  start_at = start_at ~= "-" and start_at or nil, retention = retention, verify_interval = tonumber(arg[6]) })
n:watch(tbl, "insert", { extra_columns = { "who", "k" } })
n:subscribe(tbl, "insert", function(ev)
  io.write(string.format("%s %d %d %d\n", ev.extra_columns.who, ev.extra_columns.k, ev.id, ev.seq or 0))
end)
assert(n:start())
print("ready")
]]

local function reader(tbl, consumer, start_at, retention, verify_interval)
  local p = H.host(READER, { URL, DB .. "." .. tbl, consumer or "-", start_at or "-", tostring(retention or 3600),
    verify_interval and tostring(verify_interval) })
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  return p
end

-- The events a host printed: list of {who=, k=, id=, seq=}.
local function events(p)
  local out = {}
  for who, k, id, seq in p:stdout():gmatch("(%a) (%d+) (%d+) (%d+)\n") do
    out[#out + 1] = { who = who, k = tonumber(k), id = tonumber(id), seq = tonumber(seq) }
  end
  return out
end

local function wait_events(p, n, timeout) return p:wait_count(events, n, timeout) end

local function fresh(tbl)
  sql(fmt([[DROP TABLE IF EXISTS %s;
    CREATE TABLE %s (id bigint AUTO_INCREMENT PRIMARY KEY, who char(1) NOT NULL, k int NOT NULL);]], tbl, tbl))
end

-- "who k" -> how many times it arrived
local function tally(list)
  local seen = {}
  for _, e in ipairs(list) do
    local key = e.who .. " " .. e.k
    seen[key] = (seen[key] or 0) + 1
  end
  return seen
end

-- Two writers, each on its own session: A takes an id and holds it open while B commits a
-- later one, 1000 times; every 10th time both wait a little so the reader looks in between;
-- every 100th time B also inserts a row it rolls back (an id that never comes).
local function interleaved_writers(tbl)
  local wa, wb = notifier(), notifier()
  for i = 1, 1000 do
    assert(wa:query("BEGIN"))
    assert(wa:query(fmt("INSERT INTO %s (who, k) VALUES ('a', %d)", tbl, i)))
    assert(wb:query(fmt("INSERT INTO %s (who, k) VALUES ('b', %d)", tbl, i)))
    if i % 100 == 50 then
      assert(wb:query("BEGIN"))
      assert(wb:query(fmt("INSERT INTO %s (who, k) VALUES ('x', %d)", tbl, i)))
      assert(wb:query("ROLLBACK"))
    end
    if i % 10 == 0 then H.sleep(0.02) end
    assert(wa:query("COMMIT"))
  end
  wa:close()
  wb:close()
end

-- How many events came after one with a higher id: late commits the reader did not skip.
local function late(list)
  local high, n = 0, 0
  for _, e in ipairs(list) do
    if e.id < high then n = n + 1 end
    if e.id > high then high = e.id end
  end
  return n
end

describe("sqlnotify (MySQL/MariaDB journal)", function()
  local procs = {}
  local function track(p)
    procs[#procs + 1] = p
    return p
  end
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL"); p:wait() end
    end
    procs = {}
  end)

  describe("late commits", function()
    it("delivers every row of two writers with interleaved commits exactly once, none skipped (live)", function()
      fresh("s19_w1")
      local p = track(reader("s19_w1"))
      interleaved_writers("s19_w1")
      assert.is_true(wait_events(p, 2000), "events: " .. #events(p) .. "\n" .. p:stderr())
      H.run_for(0.3) -- room for anything that should not come
      p:stop()
      local got = events(p)
      assert.are.equal(2000, #got)
      local seen = tally(got)
      for i = 1, 1000 do
        assert.are.equal(1, seen["a " .. i], "a " .. i)
        assert.are.equal(1, seen["b " .. i], "b " .. i)
      end
      assert.is_true(late(got) > 0, "the reader never saw a later id before an earlier one")
      print(fmt("\n  live: 2000 rows, %d delivered after a higher id", late(got)))
    end)

    it("delivers every row of two writers with interleaved commits at least once, none skipped (durable)", function()
      fresh("s19_w2")
      local p = track(reader("s19_w2", "s19_interleaved", "end"))
      interleaved_writers("s19_w2")
      assert.is_true(wait_events(p, 2000), "events: " .. #events(p) .. "\n" .. p:stderr())
      p:stop()
      local got = events(p)
      local seen = tally(got)
      for i = 1, 1000 do
        assert.is_true((seen["a " .. i] or 0) >= 1, "a " .. i)
        assert.is_true((seen["b " .. i] or 0) >= 1, "b " .. i)
      end
      local seqs = {}
      for _, e in ipairs(got) do
        assert.is_true(e.seq > 0)
        seqs[e.seq] = (seqs[e.seq] or e.who .. " " .. e.k)
        assert.are.equal(e.who .. " " .. e.k, seqs[e.seq]) -- one position, one change
      end
      assert.is_nil(seen["x 50"])
      print(fmt("\n  durable: %d events for 2000 rows, %d delivered after a higher id", #got, late(got)))
    end)

    it("does not hold back rows committed after a transaction left open; its own row comes when it commits", function()
      fresh("s19_w3")
      local p = track(reader("s19_w3"))
      local wa = notifier()
      assert(wa:query("BEGIN"))
      assert(wa:query("INSERT INTO s19_w3 (who, k) VALUES ('a', 1)"))
      for i = 1, 50 do sql(fmt("INSERT INTO s19_w3 (who, k) VALUES ('b', %d)", i)) end
      assert.is_true(wait_events(p, 50))
      assert.is_nil(tally(events(p))["a 1"])
      assert(wa:query("COMMIT"))
      wa:close()
      assert.is_true(wait_events(p, 51))
      local got = events(p)
      assert.are.same({ who = "a", k = 1 }, { who = got[51].who, k = got[51].k })
      assert.is_true(got[51].id < got[1].id) -- the lowest id, delivered last
      p:stop()
    end)
  end)

  describe("connections", function()
    it("reconnects when its connections are killed, says so, and delivers what was written meanwhile", function()
      fresh("s19_c1")
      local p = track(reader("s19_c1"))
      sql("INSERT INTO s19_c1 (who, k) VALUES ('a', 1)")
      assert.is_true(wait_events(p, 1))
      local ids = sql(fmt("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '%s' AND ID <> CONNECTION_ID()", DB))
      for id in ids:gmatch("%d+") do pcall(sql, "KILL CONNECTION " .. id) end
      for i = 2, 11 do sql(fmt("INSERT INTO s19_c1 (who, k) VALUES ('a', %d)", i)) end
      assert.is_true(wait_events(p, 11), p:stderr())
      assert.is_true(p:wait_for("lost the journal reader's connection to database \"" .. DB, 10, "err"))
      assert.is_true(p:wait_for("journal reader reconnected to database \"" .. DB, 10, "err"))
      H.run_for(0.2)
      p:stop()
      local ks = {}
      for i, e in ipairs(events(p)) do ks[i] = e.k end
      assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }, ks)
    end)

    it("keeps a durable consumer's position across a reload of the script (SIGHUP)", function()
      fresh("s19_c2")
      local p = track(reader("s19_c2", "s19_reload", "end"))
      sql("INSERT INTO s19_c2 (who, k) VALUES ('a', 1), ('a', 2)")
      assert.is_true(wait_events(p, 2))
      p:kill("HUP")
      assert.is_true(p:wait_for("ready\n.*ready\n", 20), p:stderr())
      sql("INSERT INTO s19_c2 (who, k) VALUES ('a', 3), ('a', 4)")
      assert.is_true(wait_events(p, 4))
      H.run_for(0.2)
      p:stop()
      local ks = {}
      for i, e in ipairs(events(p)) do ks[i] = e.k end
      assert.are.same({ 1, 2, 3, 4 }, ks)
      notifier():drop_consumer("s19_reload")
    end)
  end)

  describe("durable consumers", function()
    local admin
    before_each(function() admin = notifier() end)
    after_each(function()
      for _, c in ipairs(assert(admin:consumers())) do
        if c.name:find("^s19_") then admin:drop_consumer(c.name) end
      end
      admin:close()
    end)

    local function consumer(name)
      for _, c in ipairs(assert(admin:consumers())) do
        if c.name == name then return c end
      end
    end

    it("catches up after downtime, in commit order, from where it stopped", function()
      fresh("s19_d1")
      local p = track(reader("s19_d1", "s19_catchup"))
      sql("INSERT INTO s19_d1 (who, k) VALUES ('a', 0)")
      assert.is_true(wait_events(p, 1))
      p:stop()
      local c = consumer("s19_catchup")
      assert.are.equal(0, c.members)
      local inserts = {}
      for i = 1, 500 do inserts[i] = fmt("INSERT INTO s19_d1 (who, k) VALUES ('a', %d);", i) end
      sql(table.concat(inserts, "\n"))
      assert.are.equal(500, consumer("s19_catchup").lag_events) -- every row after its position
      p = track(reader("s19_d1", "s19_catchup"))
      assert.is_true(wait_events(p, 500))
      assert.are.equal(1, consumer("s19_catchup").members)
      H.run_for(0.2)
      p:stop()
      local got = events(p)
      assert.are.equal(500, #got)
      for i, e in ipairs(got) do assert.are.equal(i, e.k) end
      assert.are.equal(0, consumer("s19_catchup").lag_events)
    end)

    it("starts a new consumer at the end or at the beginning of the journal", function()
      fresh("s19_d2")
      sql("INSERT INTO s19_d2 (who, k) VALUES ('a', 1), ('a', 2)")
      -- "beginning" is the oldest row of the consumer's capture: a consumer of the same
      -- columns makes it (a live watch's trigger is a capture of its own)
      local p0 = track(reader("s19_d2", "s19_first")) -- installs the trigger
      p0:stop()
      sql("INSERT INTO s19_d2 (who, k) VALUES ('a', 3), ('a', 4)")
      local pe = track(reader("s19_d2", "s19_end", "end"))
      local pb = track(reader("s19_d2", "s19_begin", "beginning"))
      sql("INSERT INTO s19_d2 (who, k) VALUES ('a', 5)")
      assert.is_true(wait_events(pe, 1) and wait_events(pb, 3))
      H.run_for(0.2)
      pe:stop()
      pb:stop()
      local function ks(list) local o = {} for i, e in ipairs(list) do o[i] = e.k end return o end
      assert.are.same({ 5 }, ks(events(pe)))
      assert.are.same({ 3, 4, 5 }, ks(events(pb))) -- 1 and 2 came before the trigger
    end)

    it("gives every event to each of two consumers, lists them and forgets a dropped one", function()
      fresh("s19_d3")
      local p1 = track(reader("s19_d3", "s19_one", "end"))
      local p2 = track(reader("s19_d3", "s19_two", "end"))
      local rows = {}
      for i = 1, 100 do rows[i] = fmt("('a', %d)", i) end
      sql("INSERT INTO s19_d3 (who, k) VALUES " .. table.concat(rows, ", "))
      assert.is_true(wait_events(p1, 100) and wait_events(p2, 100))
      p1:stop()
      p2:stop()
      assert.are.equal(100, #events(p1))
      assert.are.equal(100, #events(p2))
      local names = {}
      for _, c in ipairs(assert(admin:consumers())) do
        if c.name:find("^s19_") then
          names[#names + 1] = c.name
          assert.are.equal(0, c.lag_events)
          assert.are.equal(0, c.members)
          assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", c.last_seen)
        end
      end
      assert.are.same({ "s19_one", "s19_two" }, names)
      assert.is_true(admin:drop_consumer("s19_one"))
      assert.is_false(admin:drop_consumer("s19_one"))
      assert.is_nil(consumer("s19_one"))
    end)

    it("keeps a second process with the same consumer on standby, which takes over when the first dies", function()
      fresh("s19_d4")
      local p1 = track(reader("s19_d4", "s19_group", "end"))
      local p2 = track(reader("s19_d4", "s19_group", "end"))
      assert.is_true(p2:wait_for('consumer "s19_group" is being read by another process; this one stands by', 10, "err"))
      sql("INSERT INTO s19_d4 (who, k) VALUES ('a', 1)")
      assert.is_true(wait_events(p1, 1))
      p1:kill("KILL")
      p1:wait()
      sql("INSERT INTO s19_d4 (who, k) VALUES ('a', 2)")
      assert.is_true(p2:wait_for('consumer "s19_group": took over', 20, "err"))
      assert.is_true(wait_events(p2, 1))
      p2:stop()
      local ks = {}
      for _, e in ipairs(events(p2)) do ks[#ks + 1] = e.k end
      assert.are.same({ 2 }, ks) -- 1 was handled and saved before the first died
    end)

    it("loses nothing when the host is killed with kill -9 while another process writes 2,000 rows", function()
      fresh("s19_d5")
      local p = track(reader("s19_d5", "s19_kill", "end"))
      local lines = {}
      for i = 1, 2000 do
        lines[#lines + 1] = fmt("INSERT INTO s19_d5 (who, k) VALUES ('a', %d);", i)
        if i % 20 == 0 then lines[#lines + 1] = "DO SLEEP(0.02);" end
      end
      local file, done = H.tmpfile(".sql"), H.tmpfile(".done")
      H.spit(file, table.concat(lines, "\n"))
      H.sh(fmt("(%s %s <%s >/dev/null 2>&1; echo $? >%s) &", H.my.client, q(DB), q(file), q(done)))
      assert.is_true(wait_events(p, 300))
      p:kill("KILL")
      p:wait()
      local first = events(p)
      local p2 = track(reader("s19_d5", "s19_kill", "end"))
      local deadline = H.now() + 60
      while H.slurp(done) == "" and H.now() < deadline do H.sleep(0.05) end
      assert.are.equal("0\n", H.slurp(done))
      local function all()
        local seen = tally(first)
        for _, e in ipairs(events(p2)) do seen[e.who .. " " .. e.k] = (seen[e.who .. " " .. e.k] or 0) + 1 end
        for i = 1, 2000 do if not seen["a " .. i] then return false, seen end end
        return true, seen
      end
      deadline = H.now() + 60
      while not all() and H.now() < deadline do H.sleep(0.05) end
      local ok, seen = all()
      assert.is_true(ok, "missing rows after the restart")
      p2:stop()
      local dup = 0
      for _, c in pairs(seen) do dup = dup + c - 1 end
      print(fmt("\n  kill -9 after %d events; every one of 2000 rows delivered, %d twice", #first, dup))
      assert.is_true(dup <= 5000) -- at most the batch in flight
      local second = events(p2)
      for i = 2, #second do assert.is_true(second[i].k > second[i - 1].k, "commit order after the restart") end
    end)

    it("keeps a consumer's rows for its own retention, whatever the retention of the reader that prunes", function()
      -- a database of its own: a journal with nothing else to prune first
      local db2 = DB .. "_s19ret"
      local url2 = URL:gsub("/" .. DB:gsub("%p", "%%%0"), "/" .. db2)
      local script = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = arg[2], consumer_retention = tonumber(arg[3]),
  retention = tonumber(arg[4]) })
n:watch(arg[5], "insert", { extra_columns = { "who", "k" } })
n:subscribe(arg[5], "insert", function(ev)
  io.write(string.format("%s %d %d %d\n", ev.extra_columns.who, ev.extra_columns.k, ev.id, ev.seq or 0))
end)
assert(n:start())
print("ready")
]]
      local function run(name, consumer_retention, retention)
        local p = track(H.host(script, { url2, name, tostring(consumer_retention), tostring(retention),
          db2 .. ".t" }))
        assert(p:wait_for("ready\n", 20), p:stderr())
        return p
      end
      sql(fmt("DROP DATABASE IF EXISTS `%s`; CREATE DATABASE `%s`;"
        .. " CREATE TABLE `%s`.t (id bigint AUTO_INCREMENT PRIMARY KEY, who char(1) NOT NULL, k int NOT NULL);",
        db2, db2, db2))
      local ok, err = pcall(function()
        local keep = run("s19_keep", 604800, 3600)
        sql(fmt("INSERT INTO `%s`.t (who, k) VALUES ('a', 1)", db2))
        assert.is_true(wait_events(keep, 1))
        keep:stop()
        local first = sql(fmt("SELECT MAX(id) FROM `%s`.sqlnotify_journal", db2)):match("%d+")
        sql(fmt("UPDATE `%s`.sqlnotify_consumers SET last_seen = last_seen - INTERVAL 60 SECOND WHERE name = 's19_keep';"
          .. " INSERT INTO `%s`.t (who, k) VALUES ('a', 2), ('a', 3);", db2, db2))
        -- another consumer, away after 30 s, in a reader pruning rows older than 1 s
        local short = run("s19_short", 30, 1)
        -- the row every consumer has passed goes: pruning ran
        assert.is_true(H.run_until(function()
          return count(fmt("SELECT COUNT(*) FROM `%s`.sqlnotify_journal WHERE id <= %s", db2, first)) == 0
        end, 60), short:stderr())
        short:stop()
        keep = run("s19_keep", 604800, 3600)
        assert.is_true(wait_events(keep, 2), keep:stderr())
        keep:stop()
        local ks = {}
        for _, e in ipairs(events(keep)) do ks[#ks + 1] = e.k end
        assert.are.same({ 2, 3 }, ks)
        assert.is_nil(keep:stderr():find("was away longer"))
      end)
      sql(fmt("DROP DATABASE IF EXISTS `%s`", db2))
      assert(ok, err)
    end)

    it("tells a consumer that was away past the journal's retention which rows it missed", function()
      fresh("s19_d6")
      for _, c in ipairs(assert(admin:consumers())) do admin:drop_consumer(c.name) end -- nobody else holds rows
      local p = track(reader("s19_d6", "s19_gone", "end"))
      sql("INSERT INTO s19_d6 (who, k) VALUES ('a', 1)")
      assert.is_true(wait_events(p, 1))
      p:stop()
      sql([[UPDATE sqlnotify_consumers SET last_seen = last_seen - INTERVAL 8 DAY WHERE name = 's19_gone';
        INSERT INTO s19_d6 (who, k) VALUES ('a', 2), ('a', 3);]])
      local ids = sql("SELECT MIN(id), MAX(id) FROM sqlnotify_journal"):match("(%d+)\t(%d+)")
      assert.is_truthy(ids)
      -- a live reader with a retention of 1 s prunes what nobody holds any more
      local pruner = track(reader("s19_d6", nil, nil, 1))
      assert.is_true(H.run_until(function()
        return tonumber(sql("SELECT COUNT(*) FROM sqlnotify_journal WHERE created_at < UTC_TIMESTAMP(6)"
          .. " - INTERVAL 5 SECOND"):match("%d+")) == 0
      end, 60))
      pruner:stop()
      local p2 = track(reader("s19_d6", "s19_gone"))
      assert.is_true(p2:wait_for('consumer "s19_gone" was away longer than the journal kept its rows: ids %d+ to %d+'
        .. " were pruned before it read them and are not delivered", 20, "err"))
      sql("INSERT INTO s19_d6 (who, k) VALUES ('a', 4)")
      assert.is_true(wait_events(p2, 1))
      p2:stop()
      local ks = {}
      for _, e in ipairs(events(p2)) do ks[#ks + 1] = e.k end
      assert.are.same({ 4 }, ks)
    end)

    -- MySQL has no DDL hook: the triggers go with the old table. With the periodic check an
    -- hour away, only the reader's look (once a second) has them made again.
    it("makes the triggers of a table dropped and made again, or swapped in by renames, again within seconds", function()
      local ddl = "(id bigint AUTO_INCREMENT PRIMARY KEY, who char(1) NOT NULL, k int NOT NULL)"
      sql("DROP TABLE IF EXISTS s19_remade_old")
      fresh("s19_remade")
      local p = track(reader("s19_remade", "s19_remade", nil, nil, 3600))
      sql("INSERT INTO s19_remade (who, k) VALUES ('a', 1)")
      assert.is_true(wait_events(p, 1), p:stderr())
      local line = fmt('error sqlnotify: consumer "s19_remade": the trigger for insert on "%s"%%."s19_remade" was'
        .. " missing or changed; re%%-created it: changes between %%d%%d%%d%%d%%-%%d%%d%%-%%d%%dT%%d%%d:%%d%%d:%%d%%dZ"
        .. " and %%d%%d%%d%%d%%-%%d%%d%%-%%d%%dT%%d%%d:%%d%%d:%%d%%dZ %%(when it was last seen whole, and now%%) may not"
        .. " have been captured and are not delivered\n", DB:gsub("%p", "%%%0"))
      local function repairs(proc)
        local out = {}
        for l in proc:stderr():gmatch("[^\n]*\n") do
          if l:find(line) then out[#out + 1] = l end
        end
        return out
      end
      -- dropped and made again, as a migration that rebuilds it does
      sql(fmt("DROP TABLE s19_remade; CREATE TABLE s19_remade %s", ddl))
      assert.is_true(p:wait_count(repairs, 1, 10), p:stderr())
      sql("INSERT INTO s19_remade (who, k) VALUES ('b', 2); INSERT INTO s19_remade (who, k) VALUES ('b', 3)")
      assert.is_true(wait_events(p, 3), p:stderr())
      -- a copy swapped in by renames, as gh-ost does: the old table takes its trigger along
      sql(fmt("CREATE TABLE s19_remade_new %s; RENAME TABLE s19_remade TO s19_remade_old, s19_remade_new TO s19_remade",
        ddl))
      assert.is_true(p:wait_count(repairs, 2, 10), p:stderr())
      sql("INSERT INTO s19_remade (who, k) VALUES ('c', 4), ('c', 5); INSERT INTO s19_remade (who, k) VALUES ('c', 6)")
      assert.is_true(wait_events(p, 6), p:stderr())
      H.run_for(0.3)
      p:stop()
      local got = events(p)
      for i, e in ipairs(got) do
        assert.is_true(e.seq > (i > 1 and got[i - 1].seq or 0), "in journal order")
        e.seq = nil
      end
      assert.are.same({ { who = "a", k = 1, id = 1 }, { who = "b", k = 2, id = 1 }, { who = "b", k = 3, id = 2 },
        { who = "c", k = 4, id = 1 }, { who = "c", k = 5, id = 2 }, { who = "c", k = 6, id = 3 } }, got)
      assert.are.equal(2, #repairs(p))
      -- the trigger moved from the table renamed away to the one in its place
      assert.are.equal(1, count(fmt("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = '%s'"
        .. " AND EVENT_OBJECT_TABLE = 's19_remade'", DB)))
      assert.are.equal(0, count(fmt("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = '%s'"
        .. " AND EVENT_OBJECT_TABLE = 's19_remade_old'", DB)))
      sql("DROP TABLE s19_remade_old")
    end)
  end)

  -- TRUNCATE hands the journal's ids out again from 1, below every position: the reader, which
  -- fetches above its position, skipped the rows written since without a word. The test has a
  -- database of its own, so no other test's reader sees its journal go back.
  describe("a journal whose ids went back", function()
    local BDB = DB .. "_back"
    local BURL = URL:gsub("/[^/?]*(%??[^/]*)$", "/" .. BDB .. "%1")
    before_each(function()
      sql(fmt("DROP DATABASE IF EXISTS `%s`; CREATE DATABASE `%s`;"
        .. " CREATE TABLE `%s`.t (id bigint AUTO_INCREMENT PRIMARY KEY, who char(1) NOT NULL, k int NOT NULL);",
        BDB, BDB, BDB))
    end)
    after_each(function() sql(fmt("DROP DATABASE IF EXISTS `%s`", BDB)) end)

    local function back_reader()
      local p = H.host(READER, { BURL, BDB .. ".t", "s19_back", "-", "3600" })
      assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
      return p
    end
    local function ins(from, to)
      local rows = {}
      for k = from, to do rows[#rows + 1] = fmt("('a', %d)", k) end
      sql(fmt("INSERT INTO `%s`.t (who, k) VALUES %s", BDB, table.concat(rows, ", ")))
    end
    local function pos()
      return sql(fmt("SELECT pos FROM `%s`.sqlnotify_consumers WHERE name = 's19_back'", BDB))
    end
    local function ks(list) return H.pluck(list, "k") end

    it("delivers what was written after a TRUNCATE of the journal, says so, and a kill -9 then loses nothing", function()
      local p = track(back_reader())
      ins(1, 3)
      assert.is_true(wait_events(p, 3))
      assert.is_true(H.wait_until(function() return pos() == "3\n" end, 10))
      sql(fmt("TRUNCATE `%s`.sqlnotify_journal", BDB))
      ins(4, 5)
      assert.is_true(wait_events(p, 5))
      assert.is_true(p:wait_for(fmt('the journal\'s ids in database "%s" went back: its newest row is id 2, below 3 where'
        .. " this consumer stands %%(the journal was truncated or its AUTO_INCREMENT reset%%)", BDB), 10, "err"))
      ins(6, 6)
      assert.is_true(wait_events(p, 6))
      assert.is_true(H.wait_until(function() return pos() == "3\n" end, 10)) -- id 3 of the new journal
      p:kill("KILL")
      p:wait()
      ins(7, 7)
      local p2 = track(back_reader())
      assert.is_true(wait_events(p2, 1))
      H.sleep(0.3)
      p2:stop()
      assert.are.same({ 1, 2, 3, 4, 5, 6 }, ks(events(p)))
      assert.are.same({ 1, 2, 3, 1, 2, 3 }, H.pluck(events(p), "seq"))
      assert.are.same({ 7 }, ks(events(p2)))
      assert.is_falsy(p2:stderr():find("went back", 1, true))
    end)
  end)

  describe("the host's tools", function()
    it("lists the triggers with --list URL and drops one table's with --drop URL table", function()
      fresh("s19_listed")
      local n = notifier()
      n:watch(DB .. ".s19_listed", "insert")
      n:watch(DB .. ".s19_listed", "delete", { channel_label = "s19 gone" })
      assert(n:start())
      n:close()
      local function run(args)
        local out, err = H.tmpfile(".out"), H.tmpfile(".err")
        local argv = {}
        for i, a in ipairs(args) do argv[i] = q(a) end
        local ok, _, code = H.sh(fmt("%s %s >%s 2>%s", q(H.host_bin), table.concat(argv, " "), q(out), q(err)))
        return ok and 0 or code, H.slurp(out), H.slurp(err)
      end
      local code, out, err = run { "--list", URL }
      assert.are.equal(0, code, err)
      assert.matches("s19_listed", out)
      assert.matches("sqlnotify_s19 gone", out)
      local triggers = function()
        return count(fmt("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = '%s'"
          .. " AND EVENT_OBJECT_TABLE = 's19_listed'", DB))
      end
      assert.are.equal(2, triggers())
      code, out, err = run { "--drop", URL, DB .. ".s19_listed" }
      assert.are.equal(0, code, err .. out)
      assert.are.equal(0, triggers())
    end)
  end)
end)
