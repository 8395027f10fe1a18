-- The Lua API on SQLite, in process: URLs, notifier, watch, subscribe, events,
-- filters, trigger_columns, composite keys, notify through the change log, query,
-- odd names, and the lifecycle (start, stop, cleanup). One SQLite file per test. First the
-- API cases every dialect shares (spec/cases/api.lua), on a file of their own.
local H = require("helper")
local sqlnotify = require("sqlnotify")


-- A fresh database file under the spec's temporary directory, with the tables.
local function fresh_db() return H.fresh_sqlite("api04") end

local function sqlite_notifier(path, opts)
  opts = opts or {}
  opts.url = opts.url or ("sqlite:///" .. path .. "?mode=rwc")
  if opts.use_logger == nil then opts.use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil end
  local n, err = sqlnotify.notifier(opts)
  assert(n, err)
  return n
end

local collector = H.collector

-- ===== the cases every dialect shares (spec/cases/api.lua), on one file =====

do
  local path = H.fresh_sqlite("api04-cases")
  local url = "sqlite:///" .. path .. "?mode=rwc"
  require("cases.api")({
    name = "SQLite",
    dialect = "sqlite",
    schema = "main",
    notifier = function(opts) return sqlite_notifier(path, opts) end,
    suffix_url = url:gsub("^sqlite:", "sqlite+aiosqlite:"),
    bad_url = "sqlite:////nonexistent/dir/nodb.db",
    bad_url_error = '^sqlnotify: SQLite database file "/nonexistent/dir/nodb%.db" does not exist',
    exec = function(sql) return H.sqlite_cli(path, sql) end,
    t = function(name) return string.format('"%s"', (name:gsub('"', '""'))) end,
    ddl = {
      users = "CREATE TABLE %s (id INTEGER PRIMARY KEY, email TEXT, name TEXT, age INTEGER)",
      order_items = "CREATE TABLE %s (order_id INTEGER, item_id INTEGER, qty INTEGER, note TEXT,"
        .. " PRIMARY KEY (order_id, item_id))",
      keyless = "CREATE TABLE %s (a INTEGER, b INTEGER UNIQUE, c TEXT)",
      big = "CREATE TABLE %s (id INTEGER PRIMARY KEY, n INTEGER, f REAL)",
    },
    typed = { -- DECIMAL and BOOLEAN have NUMERIC affinity: 42 and TRUE are kept as the integers 42 and 1
      ddl = "CREATE TABLE %s (id INTEGER PRIMARY KEY, qty INTEGER, price DECIMAL(10,2), flag BOOLEAN, name TEXT,"
        .. " ratio REAL)",
      first = { qty = 42, price = 42, flag = 1, name = "7", ratio = 0.5 },
      loose = true,
    },
    trigger_count = function()
      return tonumber(H.sqlite_cli(path, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger';"):match("%d+"))
    end,
    unknown_suffix = "",
    max_payload = 0,
    query = {
      sql = "SELECT CAST(? AS INTEGER) AS a, ? AS b, ? AS c, ? AS d, NULL AS e, 2.5 AS f, '1.10' AS g",
      params = { 42, "x'y", 1.5, true },
      expect = { a = 42, b = "x'y", c = 1.5, d = 1, f = 2.5, g = "1.10" },
      empty = "SELECT 1 WHERE 0",
      bad = "SELECT * FROM no_such_table",
      bad_message = "sqlnotify: no such table: no_such_table",
    },
  }, _ENV)
end

-- ===== what is SQLite's own =====

-- Run statements on the notifier's own query connection, asserting each succeeds.
local function exec(n, ...)
  for _, sql in ipairs { ... } do
    local rows, err = n:query(sql)
    assert(rows, err)
  end
end

local function trigger_names(n)
  local names = {}
  for _, r in ipairs(assert(n:query("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"))) do
    names[#names + 1] = r.name
  end
  return names
end

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok)
  return (e:gsub("^[^:]+:%d+: ", ""))
end

describe("sqlnotify (SQLite API)", function()
  local n, others, path

  before_each(function()
    path = fresh_db()
    n = sqlite_notifier(path)
    others = {}
    exec(n,
      "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, age INTEGER, score REAL)",
      "CREATE TABLE order_items (order_id INTEGER, item_id INTEGER, qty INTEGER, note TEXT, "
        .. "PRIMARY KEY (order_id, item_id))",
      "CREATE TABLE keyless (a INTEGER, b INTEGER UNIQUE, c TEXT)")
  end)

  -- A second notifier closed with the test.
  local function another(opts)
    local m = sqlite_notifier(path, opts)
    others[#others + 1] = m
    return m
  end

  after_each(function()
    for _, m in ipairs(others) do m:close() end
    if n then
      n:close()
      n = nil
    end
  end)

  describe("notifier", function()
    it("reports its dialect and creates the change log and the readers table", function()
      assert.are.equal("sqlite", n.dialect_name)
      assert.are.same({ { name = "sqlnotify_changes" }, { name = "sqlnotify_readers" } },
        assert(n:query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sqlnotify%' ORDER BY name")))
    end)

    it("opens sqlite:////abs/path.db at the absolute path", function()
      local abs = fresh_db()
      local m = another{ url = "sqlite:///" .. abs .. "?mode=rwc" }
      assert.are.equal("sqlite", m.dialect_name)
      assert(m:query("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
      local f = io.open(abs, "rb")
      assert.is_not_nil(f)
      f:close()
    end)

    it("opens sqlite:///relative.db relative to the working directory", function()
      local abs = fresh_db()
      -- the same file, named relative to the directory busted runs in
      local up = H.root:gsub("[^/]+", ".."):gsub("^/", "")
      local rel = up .. abs
      assert.are.equal("/", abs:sub(1, 1))
      local m = another{ url = "sqlite:///" .. rel .. "?mode=rwc" }
      assert(m:query("CREATE TABLE made_here (id INTEGER PRIMARY KEY)"))
      local check = another{ url = "sqlite:///" .. abs }
      assert.are.same({ { name = "made_here" } },
        assert(check:query("SELECT name FROM sqlite_master WHERE name = 'made_here'")))
    end)

    it("accepts a driver suffix: sqlite+aiosqlite://", function()
      local m = another{ url = "sqlite+aiosqlite:///" .. path }
      assert.are.equal("sqlite", m.dialect_name)
      assert.are.same({ { name = "keyless" }, { name = "order_items" }, { name = "users" } },
        assert(m:query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlnotify%' "
          .. "AND name NOT LIKE 'sqlite%' ORDER BY name")))
    end)

    it("returns nil and a message for a URL it cannot use", function()
      local cases = {
        { "sqlite://rel.db",
          'sqlnotify: not a SQLite URL: "sqlite://rel.db" '
            .. "(expected sqlite:///relative.db or sqlite:////absolute/path.db)" },
        { "sqlite:///", 'sqlnotify: no database path in SQLite URL "sqlite:///"' },
        { "sqlite:///:memory:",
          "sqlnotify: an in-memory SQLite database cannot be watched: "
            .. "the listener's own connection would not see it (use a file)" },
        { "sqlite:////nonexistent/dir/x.db",
          'sqlnotify: SQLite database file "/nonexistent/dir/x.db" does not exist '
            .. "(add ?mode=rwc to the URL to create it)" },
        { "sqlite:////nonexistent/dir/x.db?mode=rwc",
          'sqlnotify: cannot open SQLite database "/nonexistent/dir/x.db": unable to open database file' },
        { "sqlite:///" .. H.tmpdir() .. "/typo.db",
          'sqlnotify: SQLite database file "' .. H.tmpdir() .. '/typo.db" does not exist '
            .. "(add ?mode=rwc to the URL to create it)" },
        { "sqlite:///" .. path .. "?mode=ro",
          'sqlnotify: unsupported mode "ro" in SQLite URL "sqlite:///' .. path .. '?mode=ro" '
            .. "(use mode=rw or mode=rwc: sqlnotify writes its change log and triggers to the file)" },
        { "sqlite:///" .. path .. "?mode=rw&cache=shared",
          'sqlnotify: unknown parameter "cache=shared" in SQLite URL "sqlite:///' .. path
            .. '?mode=rw&cache=shared" (known: mode=rw, mode=rwc)' },
      }
      for i, case in ipairs(cases) do
        local m, err = sqlnotify.notifier{ url = case[1], use_logger = false }
        assert.is_nil(m, "case " .. i)
        assert.are.equal(case[2], err, "case " .. i)
      end
      -- nothing was created by the refused URLs
      assert.is_nil(io.open(H.tmpdir() .. "/typo.db", "rb"))
    end)

    it("takes the path up to '?' literally, '#' included, and decodes %XX escapes in it", function()
      local dir = H.tmpdir() .. "/odd names"
      assert(H.sh("mkdir -p " .. H.shell_quote(dir)))
      -- each file holds a table named after it: the URL must open that file and no other
      local files = { ["shop#2.db"] = "hash", ["shop.db"] = "plain", ["a b?.db"] = "space_question",
        ["100%.db"] = "percent", ["50%25.db"] = "escaped_percent" }
      for file, tbl in pairs(files) do
        H.sh("rm -f " .. H.shell_quote(dir .. "/" .. file))
        H.sqlite_cli(dir .. "/" .. file, "CREATE TABLE " .. tbl .. " (id INTEGER PRIMARY KEY);")
      end
      local cases = {
        { "shop#2.db", "hash" }, { "shop%232.db", "hash" }, { "shop.db#2", nil }, { "shop.db", "plain" },
        { "a%20b%3F.db", "space_question" }, { "a b%3f.db?mode=rw", "space_question" },
        { "100%.db", "percent" }, { "50%2525.db", "escaped_percent" }, { "50%25.db", "percent_missing" },
      }
      local base = "sqlite:///" .. dir:gsub(" ", "%%20") .. "/"
      for _, c in ipairs(cases) do
        local m, err = sqlnotify.notifier{ url = base .. c[1], use_logger = false }
        if c[2] == nil or c[2] == "percent_missing" then
          local want = c[2] and "50%.db" or "shop.db#2"
          assert.are.equal('sqlnotify: SQLite database file "' .. dir .. "/" .. want .. '" does not exist '
            .. "(add ?mode=rwc to the URL to create it)", err, c[1])
        else
          assert(m, err)
          local rows = m:query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlnotify%'"
            .. " AND name NOT LIKE 'sqlite%'")
          m:close()
          assert.are.same({ { name = c[2] } }, rows, c[1])
        end
      end
      local m, err = sqlnotify.notifier{ url = base .. "x%00.db?mode=rwc", use_logger = false }
      assert.is_nil(m)
      assert.are.equal('sqlnotify: SQLite URL "' .. base .. 'x%00.db?mode=rwc" has %00 in its path: a file name '
        .. "cannot hold a NUL byte", err)
    end)

    it("opens an existing file with mode=rw or no mode, and creates one only with mode=rwc", function()
      local made = fresh_db()
      local m = another{ url = "sqlite:///" .. made .. "?mode=rwc" }
      assert(m:query("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
      for _, url in ipairs { "sqlite:///" .. made, "sqlite:///" .. made .. "?mode=rw", "sqlite:///" .. made .. "?" } do
        local o = another{ url = url }
        assert.are.same({ { name = "t" } }, assert(o:query("SELECT name FROM sqlite_master WHERE name = 't'")))
      end
    end)
  end)

  describe("watch and subscribe errors", function()
    it("names each bad thing, with exact messages, and the notifier keeps working", function()
      local cases = {
        { function() n:watch("nosuch", "insert") end, 'sqlnotify: unknown table "nosuch"' },
        { function() n:watch("main.nosuch", "insert") end, 'sqlnotify: unknown table "main"."nosuch"' },
        { function() n:watch("other.users", "insert") end, 'sqlnotify: unknown table "other"."users"' },
        { function() n:watch("sqlnotify_changes", "insert") end, 'sqlnotify: unknown table "sqlnotify_changes"' },
        { function() n:watch("users", "upsert") end,
          'sqlnotify: unknown operation "upsert" (use sqlnotify.INSERT, UPDATE or DELETE)' },
        { function() n:watch("users", "insert", { extra_columns = { "emial" } }) end,
          'sqlnotify: unknown column "emial" in extra_columns of table "main"."users"' },
        { function() n:watch("users", "update", { trigger_columns = { "nope" } }) end,
          'sqlnotify: unknown column "nope" in trigger_columns of table "main"."users"' },
        { function() n:watch("users", "insert", { primary_keys = { "idd" } }) end,
          'sqlnotify: unknown column "idd" in primary_keys of table "main"."users"' },
        { function() n:watch("users", "insert", { primary_keys = { "email" } }) end,
          'sqlnotify: primary_keys {email} of table "main"."users" is not its primary key or a unique key' },
        { function() n:watch("order_items", "insert", { primary_keys = { "order_id" } }) end,
          'sqlnotify: primary_keys {order_id} of table "main"."order_items" is not its primary key or a unique key' },
        { function() n:watch("users", "insert", { trigger_columns = { "email" } }) end,
          'sqlnotify: trigger_columns only applies to UPDATE watches, not insert on "main"."users"' },
        { function() n:watch("users", "delete", { trigger_columns = { "email" } }) end,
          'sqlnotify: trigger_columns only applies to UPDATE watches, not delete on "main"."users"' },
        { function() n:watch("keyless", "update") end,
          'sqlnotify: table "main"."keyless" has no primary key; update watches need one (pass primary_keys naming a unique key); '
            .. 'only INSERT can be watched without a key' },
        { function() n:subscribe("users", "delete", function() end) end,
          'sqlnotify: no watch for delete on "main"."users" (call watch first)' },
        { function() n:subscribe("order_items", "insert", function() end) end,
          'sqlnotify: no watch for insert on "main"."order_items" (call watch first)' },
        { function() n:subscribe("users", "insert", { channel_label = "other" }, function() end) end,
          'sqlnotify: no watch for insert on "main"."users" with channel_label "other" (call watch first)' },
        { function() n:subscribe("users", "insert", { filters = { { column = "agee", value = 1 } } }, print) end,
          'sqlnotify: unknown column "agee" in filters of table "main"."users"' },
        { function() n:subscribe("users", "insert", { filters = { { column = "age", value = 1 } } }, print) end,
          'sqlnotify: filter column "age" is not carried by the insert watch on "main"."users" '
            .. "(add it to extra_columns)" },
        { function() n:notify("users", "insert", { id = 1, age = 3 }) end,
          'sqlnotify: notify payload has column "age" that the insert watch on "main"."users" does not carry' },
        { function() n:notify("users", "insert", { email = "x" }) end,
          'sqlnotify: notify payload lacks primary key column "id" of "main"."users"' },
      }
      n:watch("users", "insert", { extra_columns = { "email" } })
      for i, case in ipairs(cases) do
        assert.are.equal(case[2], err_of(case[1]), "case " .. i)
      end
      -- nothing was installed by the failed watches; the good one works
      local got, handler = collector()
      n:subscribe("users", "insert", handler)
      assert(n:start())
      assert.are.equal(1, #trigger_names(n))
      assert(n:query("INSERT INTO users (id, email) VALUES (1, 'ok@example.com')"))
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ email = "ok@example.com" }, got[1].extra_columns)
    end)

    it("reports the error at the caller's line", function()
      local ok, e = pcall(function() n:watch("nosuch", "insert") end)
      assert.is_false(ok)
      assert.matches("^.-04%-sqlite_api_spec%.lua:%d+: sqlnotify: unknown table", e)
    end)
  end)

  describe("events", function()
    it("delivers insert, update and delete with every field, schema main", function()
      local got, handler = collector()
      n:watch("users", "insert", { extra_columns = { "email", "name", "score" } })
        :watch("main.users", "update", { extra_columns = { "email" } })
        :watch({ schema = "main", table = "users" }, "delete", { extra_columns = { "email", "age" } })
      for _, op in ipairs { "insert", "update", "delete" } do n:subscribe("users", op, handler) end
      assert(n:start())
      local t0 = sqlnotify.now()
      exec(n,
        "INSERT INTO users (id, email, name, age, score) VALUES (7, 'a@example.com', NULL, 30, 2.5)",
        "UPDATE users SET email = 'b@example.com' WHERE id = 7",
        "DELETE FROM users WHERE id = 7")
      assert.is_true(H.run_until(function() return #got == 3 end))
      H.run_for(0.1)
      assert.are.equal(3, #got)
      for i, ev in ipairs(got) do
        assert.are.equal("main", ev.schema)
        assert.are.equal("users", ev.table)
        assert.are.equal(7, ev.id)
        assert.are.equal("integer", math.type(ev.id))
        assert.is_false(ev.truncated)
        assert.are.equal("sqlnotify_main_users_" .. ev.operation, ev.channel)
        assert.are.equal("float", math.type(ev.timestamp))
        assert.is_true(ev.timestamp >= t0 and ev.timestamp <= sqlnotify.now(), "timestamp " .. i)
      end
      assert.are.same({ "insert", "update", "delete" }, { got[1].operation, got[2].operation, got[3].operation })
      -- NULL name: absent; REAL stays a float
      assert.are.same({ email = "a@example.com", score = 2.5 }, got[1].extra_columns)
      assert.are.equal("float", math.type(got[1].extra_columns.score))
      assert.are.same({ email = "b@example.com" }, got[2].extra_columns)
      assert.are.same({ email = "b@example.com", age = 30 }, got[3].extra_columns) -- OLD values on delete
      assert.are.equal("integer", math.type(got[3].extra_columns.age))
    end)

    it("delivers in commit order, only what committed", function()
      local got, handler = collector()
      n:watch("users", "insert"):watch("users", "delete")
      n:subscribe("users", "insert", handler)
      n:subscribe("users", "delete", handler)
      assert(n:start())
      exec(n, "BEGIN", "INSERT INTO users (id) VALUES (1)", "INSERT INTO users (id) VALUES (2)", "ROLLBACK")
      exec(n, "BEGIN", "INSERT INTO users (id) VALUES (3)", "DELETE FROM users WHERE id = 3",
        "INSERT INTO users (id) VALUES (4)", "COMMIT")
      exec(n, "INSERT INTO users (id) VALUES (5)")
      assert.is_true(H.run_until(function() return #got == 4 end))
      H.run_for(0.1)
      local seen = {}
      for i, ev in ipairs(got) do seen[i] = ev.operation .. ":" .. ev.id end
      assert.are.same({ "insert:3", "delete:3", "insert:4", "insert:5" }, seen)
    end)

    it("gives a composite key as an array in primary_keys order", function()
      local got, handler = collector()
      n:watch("order_items", "insert", { extra_columns = { "qty" } })
      n:watch("order_items", "update", { primary_keys = { "item_id", "order_id" }, extra_columns = { "note" } })
      n:watch("keyless", "insert", { primary_keys = { "b" }, extra_columns = { "c" } })
      n:subscribe("order_items", "insert", handler)
      n:subscribe("order_items", "update", handler)
      n:subscribe("keyless", "insert", handler)
      assert(n:start())
      exec(n,
        "INSERT INTO order_items VALUES (10, 3, 5, 'x')",
        "UPDATE order_items SET note = 'y' WHERE order_id = 10",
        "INSERT INTO keyless VALUES (1, 2, 'c')")
      assert.is_true(H.run_until(function() return #got == 3 end))
      H.run_for(0.1)
      assert.are.equal(3, #got)
      assert.are.same({ 10, 3 }, got[1].id)
      assert.are.same({ qty = 5 }, got[1].extra_columns)
      assert.are.equal("update", got[2].operation)
      assert.are.same({ 3, 10 }, got[2].id)
      assert.are.same({ note = "y" }, got[2].extra_columns)
      assert.are.equal(2, got[3].id)
      assert.are.same({ c = "c" }, got[3].extra_columns)
    end)

    it("fires an UPDATE watch with trigger_columns only when one of them really changed", function()
      local got, handler = collector()
      exec(n, "INSERT INTO users (id, email, name, age) VALUES (1, 'e', 'n', 30)")
      n:watch("users", "update", { trigger_columns = { "email", "age" }, extra_columns = { "email", "age" } })
      n:subscribe("users", "update", handler)
      assert(n:start())
      exec(n,
        "UPDATE users SET name = 'other' WHERE id = 1",          -- only another column
        "UPDATE users SET email = 'e' WHERE id = 1",             -- the same value
        "UPDATE users SET email = 'e', age = 30 WHERE id = 1",   -- both, the same values
        "UPDATE users SET age = 31 WHERE id = 1",                -- fires
        "UPDATE users SET name = 'again', email = 'f' WHERE id = 1", -- fires
        "UPDATE users SET email = NULL WHERE id = 1",            -- to NULL: a change, fires
        "UPDATE users SET email = NULL WHERE id = 1",            -- NULL to NULL: nothing
        "UPDATE users SET email = 'E' WHERE id = 1")             -- fires
      assert.is_true(H.run_until(function() return #got == 4 end))
      H.run_for(0.2)
      assert.are.equal(4, #got)
      assert.are.same({ email = "e", age = 31 }, got[1].extra_columns)
      assert.are.same({ email = "f", age = 31 }, got[2].extra_columns)
      assert.are.same({ age = 31 }, got[3].extra_columns)
      assert.are.same({ email = "E", age = 31 }, got[4].extra_columns)
    end)

    it("applies filters (an AND of equalities) and runs subscribers in subscription order", function()
      local calls = {}
      local function rec(name) return function(ev) calls[#calls + 1] = name .. ":" .. ev.id end end
      n:watch("users", "insert", { extra_columns = { "name", "age" } })
      n:subscribe("users", "insert", rec("all"))
      n:subscribe("users", "insert", { filters = { { column = "age", value = 40 } } }, rec("age40"))
      n:subscribe("users", "insert",
        { filters = { { column = "name", value = "bo" }, { column = "age", value = 40 } } }, rec("bo40"))
      n:subscribe("users", "insert", { filters = { { column = "id", value = 3 } } }, rec("id3"))
      n:subscribe("users", "insert", rec("last"))
      assert(n:start())
      exec(n,
        "INSERT INTO users (id, name, age) VALUES (1, 'al', 40)",
        "INSERT INTO users (id, name, age) VALUES (2, 'bo', 40)",
        "INSERT INTO users (id, name, age) VALUES (3, 'bo', 41)")
      assert.is_true(H.run_until(function() return #calls == 10 end))
      H.run_for(0.1)
      assert.are.same({
        "all:1", "age40:1", "last:1",
        "all:2", "age40:2", "bo40:2", "last:2",
        "all:3", "id3:3", "last:3",
      }, calls)
    end)

    it("stops calling an unsubscribed handler", function()
      local a, ha = collector()
      local b, hb = collector()
      n:watch("users", "insert")
      local sa = n:subscribe("users", "insert", ha)
      n:subscribe("users", "insert", hb)
      assert(n:start())
      exec(n, "INSERT INTO users (id) VALUES (1)")
      assert.is_true(H.run_until(function() return #b == 1 end))
      sa:unsubscribe()
      sa:unsubscribe()
      exec(n, "INSERT INTO users (id) VALUES (2)")
      assert.is_true(H.run_until(function() return #b == 2 end))
      H.run_for(0.05)
      assert.are.equal(1, #a)
      assert.are.same({ 1, 2 }, { b[1].id, b[2].id })
    end)

    it("keeps delivering after a handler raises", function()
      local got, handler = collector()
      n:watch("users", "insert")
      n:subscribe("users", "insert", function(ev)
        if ev.id == 1 then error("boom in handler") end
      end)
      n:subscribe("users", "insert", handler)
      assert(n:start())
      exec(n, "INSERT INTO users (id) VALUES (1)", "INSERT INTO users (id) VALUES (2)")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ 1, 2 }, { got[1].id, got[2].id })
    end)

    it("uses a channel_label as the channel", function()
      local got, handler = collector()
      n:watch("users", "insert", { channel_label = "new_registrations", extra_columns = { "email" } })
      n:subscribe("users", "insert", { channel_label = "new_registrations" }, handler)
      assert(n:start())
      exec(n, "INSERT INTO users (id, email) VALUES (5, 'l@example.com')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.05)
      assert.are.equal(1, #got)
      assert.are.equal("sqlnotify_new_registrations", got[1].channel)
      assert.are.equal(5, got[1].id)
      assert.are.same({ email = "l@example.com" }, got[1].extra_columns)
    end)

    it("sends a large row whole (the change log has no payload limit), and a BLOB as \\x and hex", function()
      local got, handler = collector()
      exec(n, "CREATE TABLE files (id INTEGER PRIMARY KEY, body TEXT, raw BLOB)")
      n:watch("files", "insert", { extra_columns = { "body", "raw" } })
      n:subscribe("files", "insert", handler)
      assert(n:start())
      exec(n, "INSERT INTO files VALUES (9, printf('%.*c', 20000, 'x'), x'00ff10')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(9, got[1].id)
      assert.is_false(got[1].truncated)
      assert.are.equal(string.rep("x", 20000), got[1].extra_columns.body)
      -- the wire text (dialect.h); the binding turns it into the raw bytes for a BLOB column
      assert.are.equal('{"id":{"id":9},"x":{"body":"' .. string.rep("x", 20000) .. '","raw":"\\\\x00ff10"}}',
        assert(n:query("SELECT payload FROM sqlnotify_changes"))[1].payload)
      local raw = got[1].extra_columns.raw
      assert.is_true(raw == "\0\255\16" or raw == "\\x00ff10", raw)
    end)

    it("delivers every event to each of two notifiers on one file", function()
      local a, ha = collector()
      local b, hb = collector()
      local m = another()
      for _, x in ipairs { { n, ha }, { m, hb } } do
        x[1]:watch("users", "insert", { extra_columns = { "email" } })
        x[1]:subscribe("users", "insert", x[2])
        assert(x[1]:start())
      end
      assert.are.equal(1, #trigger_names(n)) -- the same watch shares one trigger
      exec(n, "INSERT INTO users (id, email) VALUES (1, 'from n')")
      exec(m, "INSERT INTO users (id, email) VALUES (2, 'from m')")
      assert.is_true(H.run_until(function() return #a == 2 and #b == 2 end))
      H.run_for(0.1)
      for _, got in ipairs { a, b } do
        assert.are.equal(2, #got)
        assert.are.same({ 1, "from n" }, { got[1].id, got[1].extra_columns.email })
        assert.are.same({ 2, "from m" }, { got[2].id, got[2].extra_columns.email })
      end
    end)
  end)

  describe("notify", function()
    it("sends a payload through the change log that arrives as an event, to every notifier", function()
      local got, handler = collector()
      local other_got, other_handler = collector()
      n:watch("users", "update", { extra_columns = { "email" } })
      n:subscribe("users", "update", handler)
      assert(n:start())
      local m = another()
      m:watch("users", "update", { extra_columns = { "email" } })
      m:subscribe("users", "update", other_handler)
      assert(m:start())
      assert.is_true(n:notify("users", "update", { id = 77, email = "n@example.com" }))
      assert.is_true(H.run_until(function() return #got == 1 and #other_got == 1 end))
      H.run_for(0.05)
      for _, g in ipairs { got, other_got } do
        assert.are.equal(1, #g)
        assert.are.equal(77, g[1].id)
        assert.are.equal("update", g[1].operation)
        assert.are.equal("sqlnotify_main_users_update", g[1].channel)
        assert.are.same({ email = "n@example.com" }, g[1].extra_columns)
      end
      local rows = assert(n:query("SELECT channel, payload FROM sqlnotify_changes ORDER BY seq"))
      assert.are.equal(1, #rows)
      -- the change log's channel carries the capture: a live watch's
      assert.are.equal("sqlnotify_main_users_update#live", rows[1].channel)
      assert.are.same({ id = { id = 77 }, x = { email = "n@example.com" } }, require("cjson").decode(rows[1].payload))
      -- nothing was written to the table itself
      assert.are.same({ { c = 0 } }, assert(n:query("SELECT count(*) AS c FROM users")))
    end)

    it("sends a payload of any size (no notification limit)", function()
      local got, handler = collector()
      n:watch("users", "insert", { extra_columns = { "name" } })
      n:subscribe("users", "insert", handler)
      assert(n:start())
      assert.is_true(n:notify("users", "insert", { id = 1, name = string.rep("y", 9000) }))
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(string.rep("y", 9000), got[1].extra_columns.name)
      assert.is_false(got[1].truncated)
    end)
  end)

  describe("query", function()
    it("returns rows of column = value, typed, with ? parameters", function()
      local rows = assert(n:query("SELECT ? AS a, ? AS b, ? AS c, ? AS d, NULL AS e, ? AS f",
        42, "x'y", 1.5, true, "z"))
      assert.are.same({ { a = 42, b = "x'y", c = 1.5, d = 1, f = "z" } }, rows)
      assert.are.equal("integer", math.type(rows[1].a))
      assert.are.equal("float", math.type(rows[1].c))
      assert.are.same({}, assert(n:query("SELECT 1 WHERE 0")))
      assert.are.same({ { x = 2 } }, assert(n:query("SELECT ?2 AS x", 1, 2)))
      assert.are.same({ { x = "b" } }, assert(n:query("SELECT $2 AS x", "a", "b")))
    end)

    it("reads and writes rows with parameters", function()
      assert.are.same({},
        assert(n:query("INSERT INTO users (id, email, score) VALUES (?, ?, ?)", 3, "q@example.com", 0.25)))
      assert.are.same({ { id = 3, email = "q@example.com", score = 0.25 } },
        assert(n:query("SELECT id, email, name, score FROM users WHERE email = ?", "q@example.com")))
    end)

    it("returns nil and the database's message on failure, and keeps working", function()
      local cases = {
        { { "SELECT * FROM no_such_table" }, "sqlnotify: no such table: no_such_table" },
        { { "SELECT 1; SELECT 2" }, "sqlnotify: only one statement is allowed" },
        { { "SELECT ?", 1, 2 }, "sqlnotify: 2 parameters given, the statement takes 1" },
        { { "INSERT INTO users (id) VALUES (1), (1)" }, "sqlnotify: UNIQUE constraint failed: users.id" },
      }
      for i, case in ipairs(cases) do
        local rows, err = n:query(table.unpack(case[1]))
        assert.is_nil(rows, "case " .. i)
        assert.are.equal(case[2], err, "case " .. i)
      end
      assert.are.same({ { one = 1 } }, n:query("SELECT 1 AS one"))
      assert.are.same({ { c = 0 } }, n:query("SELECT count(*) AS c FROM users"))
    end)
  end)

  describe("odd names", function()
    it("watches tables and columns with spaces, quotes, capitals, reserved words and non-ASCII", function()
      exec(n,
        [[CREATE TABLE "Mixed Case ""quoted"" it's tablé" ]]
          .. [[("Select" INTEGER PRIMARY KEY, "e mail" TEXT, "naïve" TEXT, "it's" INTEGER, "a""b" TEXT)]],
        [[CREATE TABLE "order" ("from" INTEGER, "to" INTEGER, "Group" TEXT, PRIMARY KEY ("from", "to"))]],
        [[CREATE TABLE "dotted.name" (id INTEGER PRIMARY KEY, v TEXT)]])
      local odd = [[Mixed Case "quoted" it's tablé]]
      local got = {}
      local function show(ev)
        local id = type(ev.id) == "table" and table.concat(ev.id, ",") or tostring(ev.id)
        local keys = {}
        for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
        table.sort(keys)
        for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
        got[#got + 1] = string.format("%s %s.%s id=%s [%s]", ev.operation, ev.schema, ev.table, id,
          table.concat(keys, " "))
      end
      n:watch(odd, "insert", { extra_columns = { "e mail", "naïve", "it's", 'a"b' } })
       :watch(odd, "update", { extra_columns = { "e mail" }, trigger_columns = { "e mail", 'a"b' } })
       :watch(odd, "delete", { channel_label = "odd deletes: 'ü' \"q\"" })
       :watch("order", "insert", { extra_columns = { "Group" } })
       :watch("order", "update", { primary_keys = { "to", "from" } })
       :watch({ table = "dotted.name" }, "insert", { extra_columns = { "v" } })
      n:subscribe(odd, "insert", show)
      n:subscribe(odd, "update", show)
      n:subscribe(odd, "delete", { channel_label = "odd deletes: 'ü' \"q\"" }, show)
      n:subscribe("order", "insert", { filters = { { column = "Group", value = "keep" } } }, show)
      n:subscribe("order", "update", show)
      n:subscribe({ table = "dotted.name" }, "insert", show)
      assert(n:start())
      assert.are.equal(6, #trigger_names(n))
      exec(n,
        [[INSERT INTO "Mixed Case ""quoted"" it's tablé" VALUES (1, 'a@x', 'ça', 5, 'q"q')]],
        [[UPDATE "Mixed Case ""quoted"" it's tablé" SET "naïve" = 'no change to e mail' WHERE "Select" = 1]],
        [[UPDATE "Mixed Case ""quoted"" it's tablé" SET "e mail" = 'b@x' WHERE "Select" = 1]],
        [[UPDATE "Mixed Case ""quoted"" it's tablé" SET "a""b" = 'r' WHERE "Select" = 1]],
        [[INSERT INTO "order" VALUES (4, 2, 'drop'), (5, 6, 'keep')]],
        [[UPDATE "order" SET "Group" = 'x' WHERE "from" = 4]],
        [[INSERT INTO "dotted.name" VALUES (3, 'dot')]],
        [[DELETE FROM "Mixed Case ""quoted"" it's tablé"]])
      assert.is_true(H.run_until(function() return #got == 7 end))
      H.run_for(0.1)
      assert.are.same({
        [[insert main.Mixed Case "quoted" it's tablé id=1 [a"b=q"q e mail=a@x it's=5 naïve=ça] ]],
        [[update main.Mixed Case "quoted" it's tablé id=1 [e mail=b@x] ]],
        [[update main.Mixed Case "quoted" it's tablé id=1 [e mail=b@x] ]],
        "insert main.order id=5,6 [Group=keep] ",
        "update main.order id=2,4 [] ",
        "insert main.dotted.name id=3 [v=dot] ",
        [[delete main.Mixed Case "quoted" it's tablé id=1 [] ]],
      }, (function()
        local t = {}
        for i, s in ipairs(got) do t[i] = s .. " " end
        return t
      end)())
      assert.is_true(n:cleanup())
      assert.are.same({}, trigger_names(n))
    end)
  end)

  describe("lifecycle", function()
    it("installs at start, stops listening on stop, drops its triggers on cleanup", function()
      local got, handler = collector()
      n:watch("users", "insert"):watch("users", "delete")
      n:subscribe("users", "insert", handler)
      assert.are.same({}, trigger_names(n))
      assert.are.equal(n, n:start())
      assert.are.equal(2, #trigger_names(n))
      exec(n, "INSERT INTO users (id) VALUES (1)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      n:stop()
      exec(n, "INSERT INTO users (id) VALUES (2)")
      H.run_for(0.2)
      assert.are.equal(1, #got)
      assert.are.equal(2, #trigger_names(n)) -- triggers stay, and still log
      assert.are.same({ { c = 2 } }, assert(n:query("SELECT count(*) AS c FROM sqlnotify_changes")))
      assert.is_true(n:cleanup())
      assert.are.same({}, trigger_names(n))
      exec(n, "INSERT INTO users (id) VALUES (3)") -- writes go on without the triggers
      assert.are.same({ { c = 2 } }, assert(n:query("SELECT count(*) AS c FROM sqlnotify_changes")))
    end)

    it("starts again at the end of the log after a stop", function()
      local got, handler = collector()
      n:watch("users", "insert")
      n:subscribe("users", "insert", handler)
      assert(n:start())
      n:stop()
      exec(n, "INSERT INTO users (id) VALUES (1)")
      assert(n:start())
      exec(n, "INSERT INTO users (id) VALUES (2)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.equal(1, #got)
      assert.are.equal(2, got[1].id)
    end)

    it("can be closed by a handler in the middle of a batch: the rest of the batch is dropped", function()
      local got = {}
      n:watch("users", "insert")
      n:subscribe("users", "insert", function(ev)
        got[#got + 1] = ev.id
        if ev.id == 2 then n:close() end
      end)
      assert(n:start())
      exec(n, "BEGIN", "INSERT INTO users (id) VALUES (1)", "INSERT INTO users (id) VALUES (2)",
        "INSERT INTO users (id) VALUES (3)", "COMMIT")
      assert.is_true(H.run_until(function() return #got >= 2 end))
      H.run_for(0.2)
      assert.are.same({ 1, 2 }, got)
      assert.has_error(function() n:start() end, "sqlnotify: this notifier is closed")
      n = nil
    end)

    it("installs and listens at once for a watch added after start", function()
      local got, handler = collector()
      assert(n:start())
      n:watch("order_items", "delete")
      n:subscribe("order_items", "delete", handler)
      assert.are.equal(1, #trigger_names(n))
      exec(n, "INSERT INTO order_items VALUES (1, 2, 3, NULL)", "DELETE FROM order_items")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ 1, 2 }, got[1].id)
    end)

    it("drops every sqlnotify trigger in the file on start with cleanup_on_start, and leaves others", function()
      exec(n, "CREATE TRIGGER users_own AFTER INSERT ON users BEGIN SELECT 1; END")
      n:watch("users", "insert"):watch("users", "update")
      assert(n:start())
      assert.are.equal(3, #trigger_names(n))
      local m = another{ cleanup_on_start = true }
      local logs = {}
      m._log = function(_, level, ...) logs[#logs + 1] = level .. " " .. string.format(...) end
      m:watch("users", "delete")
      assert(m:start())
      assert.are.same({
        'info cleanup_on_start: dropped the trigger for insert on "main"."users" (channel sqlnotify_main_users_insert)',
        'info cleanup_on_start: dropped the trigger for update on "main"."users" (channel sqlnotify_main_users_update)',
        "info cleanup_on_start: dropped 2 sqlnotify trigger(s)",
      }, { table.unpack(logs, 1, 3) })
      local names = trigger_names(m)
      assert.are.equal(2, #names)
      assert.is_truthy(names[1]:match("^sqlnotify_users_delete_%x+$") and names[2] == "users_own")
      m:cleanup()
      assert.are.same({ "users_own" }, trigger_names(m))
    end)

    it("replaces a trigger when the table's columns changed, and an ALTER TABLE never breaks writes", function()
      local got, handler = collector()
      n:watch("users", "insert", { extra_columns = { "email" } })
      n:subscribe("users", "insert", handler)
      assert(n:start())
      local before = assert(n:query("SELECT sql FROM sqlite_master WHERE type = 'trigger'"))[1].sql
      exec(n, "ALTER TABLE users ADD COLUMN extra TEXT",
        "INSERT INTO users (id, email, extra) VALUES (1, 'a', 'b')",
        "ALTER TABLE users RENAME COLUMN name TO full_name",
        "INSERT INTO users (id, email, full_name) VALUES (2, 'c', 'd')")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ 1, "a", 2, "c" },
        { got[1].id, got[1].extra_columns.email, got[2].id, got[2].extra_columns.email })
      n:close()
      n = sqlite_notifier(path)
      n:watch("users", "insert", { extra_columns = { "email" } })
      assert(n:start())
      local names = trigger_names(n)
      assert.are.equal(1, #names)
      local after = assert(n:query("SELECT sql FROM sqlite_master WHERE type = 'trigger'"))[1].sql
      assert.are_not.equal(before, after)
    end)
  end)
end)
