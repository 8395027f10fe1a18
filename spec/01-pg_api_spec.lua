-- The Lua API on PostgreSQL, in process: notifier, watch, subscribe, events,
-- filters, trigger_columns, composite keys, notify, query, timers, lifecycle.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local S = "spec01"

local function setup_tables()
  H.fresh_schema(S)
  H.psql([[
    SET search_path = spec01;
    CREATE TABLE users (id serial PRIMARY KEY, email text, name text, age int);
    CREATE TABLE order_items (order_id int, item_id int, qty int, note text, PRIMARY KEY (order_id, item_id));
    CREATE TABLE keyless (a int, b int UNIQUE, c text);
  ]])
end

local collector = H.collector

describe("sqlnotify (PostgreSQL API)", function()
  local n

  before_each(function()
    setup_tables()
    n = H.pg_notifier()
  end)

  after_each(function()
    if n then
      n:cleanup()
      n:close()
      n = nil
    end
  end)

  teardown(function() H.drop_schema(S) end)

  describe("constants", function()
    it("spells operations both ways", function()
      assert.are.equal("insert", sqlnotify.INSERT)
      assert.are.equal("update", sqlnotify.UPDATE)
      assert.are.equal("delete", sqlnotify.DELETE)
      assert.are.equal(sqlnotify.INSERT, sqlnotify.Operation.INSERT)
      assert.are.equal(sqlnotify.UPDATE, sqlnotify.Operation.UPDATE)
      assert.are.equal(sqlnotify.DELETE, sqlnotify.Operation.DELETE)
    end)
  end)

  describe("log_level", function()
    it("gets and sets the level, refusing an unknown one", function()
      local was = sqlnotify.log_level()
      assert.are.equal("info", was)
      assert.are.equal("debug", sqlnotify.log_level("debug"))
      assert.are.equal("debug", sqlnotify.log_level())
      assert.has_error(function() sqlnotify.log_level("loud") end,
        'sqlnotify: unknown log level "loud" (use error, warn, info or debug)')
      assert.are.equal("info", sqlnotify.log_level(was))
    end)
  end)

  describe("notifier", function()
    it("reports its dialect", function()
      assert.are.equal("postgresql", n.dialect_name)
    end)

    it("accepts a driver suffix in the URL", function()
      local m = assert(sqlnotify.notifier{ url = H.pg_url:gsub("^postgresql:", "postgresql+asyncpg:"), use_logger = false })
      assert.are.equal("postgresql", m.dialect_name)
      m:close()
    end)

    it("refuses an unknown URL scheme", function()
      assert.has_error(function() sqlnotify.notifier{ url = "oracle://x/y" } end,
        'sqlnotify: unsupported database URL scheme "oracle" (expected postgresql://, mysql:// or sqlite://)')
    end)

    it("refuses an unknown option", function()
      assert.has_error(function() sqlnotify.notifier{ url = H.pg_url, revoke = true } end,
        'sqlnotify: unknown notifier option "revoke"')
    end)

    it("returns nil and a message naming database and host, never the password", function()
      local m, err = sqlnotify.notifier{ url = "postgresql://root:s3cretpw@127.0.0.1:1/nodb", use_logger = false }
      assert.is_nil(m)
      assert.matches('^sqlnotify: cannot connect to database "nodb" on 127%.0%.0%.1:1: ', err)
      assert.is_nil(err:find("s3cretpw", 1, true))
    end)
  end)

  describe("watch and subscribe errors", function()
    local function err_of(f)
      local ok, e = pcall(f)
      assert.is_false(ok)
      return e
    end

    it("names each bad thing, and the notifier keeps working", function()
      local cases = {
        { function() n:watch(S .. ".nosuch", "insert") end, 'sqlnotify: unknown table "spec01"."nosuch"' },
        { function() n:watch("nosuch_anywhere", "insert") end,
          'sqlnotify: unknown table "nosuch_anywhere" (not found in search_path)' },
        { function() n:watch(S .. ".users", "upsert") end,
          'sqlnotify: unknown operation "upsert" (use sqlnotify.INSERT, UPDATE or DELETE)' },
        { function() n:watch(S .. ".users", "insert", { extra_columns = { "emial" } }) end,
          'sqlnotify: unknown column "emial" in extra_columns of table "spec01"."users"' },
        { function() n:watch(S .. ".users", "update", { trigger_columns = { "nope" } }) end,
          'sqlnotify: unknown column "nope" in trigger_columns of table "spec01"."users"' },
        { function() n:watch(S .. ".users", "insert", { primary_keys = { "idd" } }) end,
          'sqlnotify: unknown column "idd" in primary_keys of table "spec01"."users"' },
        { function() n:watch(S .. ".users", "insert", { primary_keys = { "email" } }) end,
          'sqlnotify: primary_keys {email} of table "spec01"."users" is not its primary key or a unique key' },
        { function() n:watch(S .. ".users", "insert", { trigger_columns = { "email" } }) end,
          'sqlnotify: trigger_columns only applies to UPDATE watches, not insert on "spec01"."users"' },
        { function() n:watch(S .. ".keyless", "update") end,
          'sqlnotify: table "spec01"."keyless" has no primary key; update watches need one (pass primary_keys naming a unique key); '
            .. 'only INSERT can be watched without a key' },
        { function() n:watch(S .. ".users", "insert", { extra_colums = { "email" } }) end,
          'sqlnotify: unknown watch option "extra_colums"' },
        { function() n:subscribe(S .. ".users", "delete", function() end) end,
          'sqlnotify: no watch for delete on "spec01"."users" (call watch first)' },
        { function() n:subscribe(S .. ".users", "insert", { channel_label = "other" }, function() end) end,
          'sqlnotify: no watch for insert on "spec01"."users" with channel_label "other" (call watch first)' },
        { function() n:subscribe(S .. ".users", "insert", { filters = { { column = "agee", value = 1 } } }, print) end,
          'sqlnotify: unknown column "agee" in filters of table "spec01"."users"' },
        { function() n:subscribe(S .. ".users", "insert", { filters = { { column = "age", value = 1 } } }, print) end,
          'sqlnotify: filter column "age" is not carried by the insert watch on "spec01"."users" (add it to extra_columns)' },
        { function() n:subscribe(S .. ".users", "insert") end,
          "sqlnotify: subscribe needs a handler function, got nil" },
        { function() n:notify(S .. ".users", "insert", { id = 1, age = 3 }) end,
          'sqlnotify: notify payload has column "age" that the insert watch on "spec01"."users" does not carry' },
        { function() n:notify(S .. ".users", "insert", { email = "x" }) end,
          'sqlnotify: notify payload lacks primary key column "id" of "spec01"."users"' },
      }
      n:watch(S .. ".users", "insert", { extra_columns = { "email" } })
      for i, case in ipairs(cases) do
        local e = err_of(case[1])
        -- the message is prefixed with where the call was made
        assert.are.equal(case[2], (e:gsub("^[^:]+:%d+: ", "")), "case " .. i)
      end
      -- still working: an event arrives
      local got, handler = collector()
      n:subscribe(S .. ".users", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (email) VALUES ('ok@example.com')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal("ok@example.com", got[1].extra_columns.email)
    end)

    it("reports the error at the caller's line", function()
      local ok, e = pcall(function() n:watch(S .. ".nosuch", "insert") end)
      assert.is_false(ok)
      assert.matches("^.-01%-pg_api_spec%.lua:%d+: sqlnotify: unknown table", e)
    end)
  end)

  describe("events", function()
    it("delivers insert, update and delete with every field", function()
      local got, handler = collector()
      n:watch(S .. ".users", "insert", { extra_columns = { "email", "name" } })
        :watch(S .. ".users", "update", { extra_columns = { "email" } })
        :watch(S .. ".users", "delete", { extra_columns = { "email" } })
      for _, op in ipairs { "insert", "update", "delete" } do n:subscribe(S .. ".users", op, handler) end
      assert(n:start())
      local t0 = sqlnotify.now()
      H.psql([[
        INSERT INTO spec01.users (id, email, name) VALUES (7, 'a@example.com', NULL);
        UPDATE spec01.users SET email = 'b@example.com' WHERE id = 7;
        DELETE FROM spec01.users WHERE id = 7;
      ]])
      assert.is_true(H.run_until(function() return #got == 3 end))
      H.run_for(0.1)
      assert.are.equal(3, #got)
      local ops, emails = {}, {}
      for i, ev in ipairs(got) do
        assert.are.equal("spec01", ev.schema)
        assert.are.equal("users", ev.table)
        assert.are.equal(7, ev.id)
        assert.are.equal("integer", math.type(ev.id))
        assert.is_false(ev.truncated)
        assert.are.equal("sqlnotify_spec01_users_" .. ev.operation, ev.channel)
        assert.is_true(ev.timestamp >= t0 - 1 and ev.timestamp <= sqlnotify.now(), "timestamp " .. i)
        ops[i], emails[i] = ev.operation, ev.extra_columns.email
      end
      assert.are.same({ "insert", "update", "delete" }, ops)
      assert.are.same({ "a@example.com", "b@example.com", "b@example.com" }, emails)
      assert.are.same({ email = "a@example.com" }, got[1].extra_columns) -- NULL name: absent
    end)

    it("gives a composite key as an array in primary key order", function()
      local got, handler = collector()
      n:watch(S .. ".order_items", "insert", { extra_columns = { "qty" } })
      n:watch(S .. ".keyless", "insert", { primary_keys = { "b" }, extra_columns = { "c" } })
      n:subscribe(S .. ".order_items", "insert", handler)
      n:subscribe(S .. ".keyless", "insert", handler)
      assert(n:start())
      H.psql([[
        INSERT INTO spec01.order_items VALUES (10, 3, 5, 'x');
        INSERT INTO spec01.keyless VALUES (1, 2, 'c');
      ]])
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ 10, 3 }, got[1].id)
      assert.are.same({ qty = 5 }, got[1].extra_columns)
      assert.are.equal(2, got[2].id)
      assert.are.same({ c = "c" }, got[2].extra_columns)
    end)

    it("fires an UPDATE watch with trigger_columns only when one of them really changed", function()
      local got, handler = collector()
      H.psql("INSERT INTO spec01.users (id, email, name, age) VALUES (1, 'e', 'n', 30)")
      n:watch(S .. ".users", "update", { trigger_columns = { "email", "age" }, extra_columns = { "email", "age" } })
      n:subscribe(S .. ".users", "update", handler)
      assert(n:start())
      H.psql([[
        UPDATE spec01.users SET name = 'other' WHERE id = 1;
        UPDATE spec01.users SET email = 'e' WHERE id = 1;
        UPDATE spec01.users SET age = 31 WHERE id = 1;
        UPDATE spec01.users SET name = 'again', email = 'f' WHERE id = 1;
      ]])
      assert.is_true(H.run_until(function() return #got == 2 end))
      H.run_for(0.2)
      assert.are.equal(2, #got)
      assert.are.same({ email = "e", age = 31 }, got[1].extra_columns)
      assert.are.same({ email = "f", age = 31 }, got[2].extra_columns)
    end)

    it("applies filters (an AND of equalities) and runs subscribers in subscription order", function()
      local calls = {}
      local function rec(name) return function(ev) calls[#calls + 1] = name .. ":" .. ev.id end end
      n:watch(S .. ".users", "insert", { extra_columns = { "name", "age" } })
      n:subscribe(S .. ".users", "insert", rec("all"))
      n:subscribe(S .. ".users", "insert", { filters = { { column = "age", value = 40 } } }, rec("age40"))
      n:subscribe(S .. ".users", "insert", { filters = { { column = "name", value = "bo" }, { column = "age", value = 40 } } },
        rec("bo40"))
      n:subscribe(S .. ".users", "insert", { filters = { { column = "id", value = 3 } } }, rec("id3"))
      n:subscribe(S .. ".users", "insert", rec("last"))
      assert(n:start())
      H.psql([[
        INSERT INTO spec01.users (id, name, age) VALUES (1, 'al', 40);
        INSERT INTO spec01.users (id, name, age) VALUES (2, 'bo', 40);
        INSERT INTO spec01.users (id, name, age) VALUES (3, 'bo', 41);
      ]])
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
      n:watch(S .. ".users", "insert")
      local sa = n:subscribe(S .. ".users", "insert", ha)
      n:subscribe(S .. ".users", "insert", hb)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id) VALUES (1)")
      assert.is_true(H.run_until(function() return #b == 1 end))
      sa:unsubscribe()
      sa:unsubscribe()
      H.psql("INSERT INTO spec01.users (id) VALUES (2)")
      assert.is_true(H.run_until(function() return #b == 2 end))
      assert.are.equal(1, #a)
      assert.are.equal(2, b[2].id)
    end)

    it("keeps delivering after a handler raises, and logs the error with a traceback", function()
      local got, handler = collector()
      local logs = {}
      n._log = function(_, level, ...) logs[#logs + 1] = { level, string.format(...) } end
      n:watch(S .. ".users", "insert")
      n:subscribe(S .. ".users", "insert", function(ev)
        if ev.id == 1 then error("boom in handler") end
      end)
      n:subscribe(S .. ".users", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id) VALUES (1); INSERT INTO spec01.users (id) VALUES (2);")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ 1, 2 }, { got[1].id, got[2].id })
      local failures = {}
      for _, l in ipairs(logs) do
        if l[1] == "error" then failures[#failures + 1] = l[2] end
      end
      assert.are.equal(1, #failures)
      assert.matches('^handler for insert on "spec01"%."users" failed for id 1: [^\n]*spec/01%-pg_api_spec%.lua:%d+: '
        .. "boom in handler\nstack traceback:\n", failures[1])
    end)

    it("delivers a row whose unique key used as primary_keys is NULL, with a nil id", function()
      local got, handler = collector()
      n:watch(S .. ".keyless", "insert", { primary_keys = { "b" }, extra_columns = { "c" } })
      n:subscribe(S .. ".keyless", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.keyless VALUES (1, NULL, 'null key'); INSERT INTO spec01.keyless VALUES (2, 2, 'k');")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.is_nil(got[1].id)
      assert.are.same({ c = "null key" }, got[1].extra_columns)
      assert.are.equal(2, got[2].id)
    end)

    it("gives integers beyond 2^53 exactly", function()
      local got, handler = collector()
      H.psql("CREATE TABLE spec01.big (id bigint PRIMARY KEY, n bigint, f float8)")
      n:watch(S .. ".big", "insert", { extra_columns = { "n", "f" } })
      n:subscribe(S .. ".big", "insert", handler)
      assert(n:start())
      H.psql([[INSERT INTO spec01.big VALUES (9223372036854775807, -9007199254740993, 2.5);
               INSERT INTO spec01.big VALUES (9007199254740993, 42, 1e300);]])
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.equal(math.maxinteger, got[1].id)
      assert.are.equal(-9007199254740993, got[1].extra_columns.n)
      assert.are.equal(2.5, got[1].extra_columns.f)
      assert.are.equal(9007199254740993, got[2].id)
      assert.are.equal("integer", math.type(got[2].extra_columns.n))
      assert.are.equal(1e300, got[2].extra_columns.f)
    end)

    it("uses a channel_label as the channel", function()
      local got, handler = collector()
      n:watch(S .. ".users", "insert", { channel_label = "new_registrations", extra_columns = { "email" } })
      n:subscribe(S .. ".users", "insert", { channel_label = "new_registrations" }, handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id, email) VALUES (5, 'l@example.com')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal("sqlnotify_new_registrations", got[1].channel)
      assert.are.equal(5, got[1].id)
    end)

    it("sends a row too large for a notification as its key, truncated, and the write succeeds", function()
      local got, handler = collector()
      n:watch(S .. ".users", "insert", { extra_columns = { "name" } })
      n:subscribe(S .. ".users", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id, name) VALUES (9, repeat('x', 20000))")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(9, got[1].id)
      assert.is_true(got[1].truncated)
      assert.are.same({}, got[1].extra_columns)
      assert.are.equal("20000", H.psql("SELECT length(name) FROM spec01.users WHERE id = 9"):match("%d+"))
    end)
  end)

  describe("notify", function()
    it("sends a payload that arrives as an event", function()
      local got, handler = collector()
      n:watch(S .. ".users", "update", { extra_columns = { "email" } })
      n:subscribe(S .. ".users", "update", handler)
      assert(n:start())
      assert.is_true(n:notify(S .. ".users", "update", { id = 77, email = "n@example.com" }))
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(77, got[1].id)
      assert.are.same({ email = "n@example.com" }, got[1].extra_columns)
    end)

    it("refuses a payload over the limit without overflow, giving its size", function()
      n:watch(S .. ".users", "insert", { extra_columns = { "name" } })
      local ok, e = pcall(n.notify, n, S .. ".users", "insert", { id = 1, name = string.rep("y", 9000) })
      assert.is_false(ok)
      assert.matches("sqlnotify: notify payload is 9031 bytes, over the 7999%-byte limit of postgresql notifications %(use use_overflow_table%)$", e)
    end)
  end)

  describe("query", function()
    it("returns rows of column = value, typed, with parameters", function()
      local rows = assert(n:query("SELECT $1::int AS a, $2::text AS b, $3::float8 AS c, $4::bool AS d, NULL AS e",
        42, "x'y", 1.5, true))
      assert.are.same({ { a = 42, b = "x'y", c = 1.5, d = true } }, rows)
      assert.are.same({}, assert(n:query("SELECT 1 WHERE false")))
    end)

    it("returns nil and the database's message on failure, and keeps working", function()
      local rows, err = n:query("SELECT * FROM spec01.no_such_table")
      assert.is_nil(rows)
      assert.are.equal('sqlnotify: relation "spec01.no_such_table" does not exist', err)
      assert.are.same({ { one = 1 } }, n:query("SELECT 1 AS one"))
    end)
  end)

  describe("lifecycle", function()
    local function trigger_count()
      return tonumber(H.psql([[SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'spec01' AND NOT t.tgisinternal]]):match("%d+"))
    end

    it("installs at start, stops listening on stop, drops its triggers on cleanup", function()
      local got, handler = collector()
      n:watch(S .. ".users", "insert"):watch(S .. ".users", "delete")
      n:subscribe(S .. ".users", "insert", handler)
      assert.are.equal(0, trigger_count())
      assert.are.equal(n, n:start())
      assert.are.equal(2, trigger_count())
      n:stop()
      H.psql("INSERT INTO spec01.users (id) VALUES (1)")
      H.run_for(0.2)
      assert.are.equal(0, #got)
      assert.are.equal(2, trigger_count()) -- triggers stay
      assert.is_true(n:cleanup())
      assert.are.equal(0, trigger_count())
    end)

    it("installs and listens at once for a watch added after start", function()
      local got, handler = collector()
      assert(n:start())
      n:watch(S .. ".order_items", "delete")
      n:subscribe(S .. ".order_items", "delete", handler)
      H.psql("INSERT INTO spec01.order_items VALUES (1, 2, 3); DELETE FROM spec01.order_items;")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ 1, 2 }, got[1].id)
    end)

    it("drops every sqlnotify trigger in the database on start with cleanup_on_start", function()
      n:watch(S .. ".users", "insert"):watch(S .. ".users", "update")
      assert(n:start())
      assert.are.equal(2, trigger_count())
      local m = H.pg_notifier{ cleanup_on_start = true }
      m:watch(S .. ".users", "delete")
      assert(m:start())
      assert.are.equal(1, trigger_count())
      m:cleanup()
      m:close()
    end)
  end)

  describe("timers", function()
    it("runs after() once and every() until stopped, and now() has sub-second resolution", function()
      local order = {}
      sqlnotify.after(0.02, function() order[#order + 1] = "after" end)
      local ticks = 0
      local t
      t = sqlnotify.every(0.005, function()
        ticks = ticks + 1
        if ticks == 3 then t:stop() end
      end)
      H.run_for(0.1)
      assert.are.equal(3, ticks)
      assert.are.same({ "after" }, order)
      local a = sqlnotify.now()
      assert.are.equal("float", math.type(a))
      H.sleep(0.002)
      assert.is_true(sqlnotify.now() - a > 0.001)
    end)

    it("returns from run() at once after stop() was called before it", function()
      sqlnotify.stop()
      local ticked = false
      -- a run() that did not return at once would tick this, then be stopped by it
      local t = sqlnotify.every(3, function() ticked = true; sqlnotify.stop() end)
      sqlnotify.run()
      t:stop()
      assert.is_false(ticked)
    end)
  end)
end)
