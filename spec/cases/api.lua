-- spec/cases/api.lua — the Lua API's cases, once, for every dialect (spec 10 PostgreSQL, spec
-- 19 MariaDB, spec 04 SQLite): notifier,
-- watch and subscribe errors, events with every field, composite keys, trigger_columns,
-- filters, labels, notify, query and the lifecycle. A dialect's spec calls
--
--   require("cases.api")(D, _ENV)
--
-- (_ENV: the spec file's, where busted's describe, it and assert live)
-- with an adapter D (spec/19-mysql_spec.lua has MariaDB's):
--   D.name, D.dialect              "MariaDB", "mysql" (n.dialect_name)
--   D.schema                       the schema (MySQL: database) the tables live in
--   D.prefix                       put before each table's name (several spec files, one database)
--   D.notifier(opts)               a notifier on the test database (asserts it connected)
--   D.suffix_url, D.bad_url        the URL with a driver suffix; one (with password s3cretpw where the
--                                  dialect has passwords) that cannot connect
--   D.bad_url_error                a pattern its error matches
--   D.exec(sql)                    SQL through another client and connection; returns its output
--   D.t(name)                      a table's qualified name in SQL text
--   D.ddl                          {users=, order_items=, keyless=}: CREATE TABLE with %s for the name
--   D.typed                        a table of every filter class: {ddl = CREATE TABLE (id, qty integer,
--                                  price decimal(10,2), flag boolean, name text, ratio float) with %s,
--                                  types = {col = type as the catalog prints it}, classes = {col = class},
--                                  first = the extra_columns of the row (1, 42, 42, TRUE, '7', 0.5),
--                                  loose = true where a column holds any value (SQLite without STRICT)}
--   D.trigger_count()              our triggers on this file's tables
--   D.unknown_suffix               what follows an unqualified unknown table's name in the error
--   D.query                        {sql=, params=, expect=, empty=, bad=, bad_message=}
--   D.max_payload                  the notification limit (0: none)
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

return function(D, env)
  local _ENV = env -- luacheck: ignore 211
  local S, P = D.schema, D.prefix or ""
  local QS = fmt("%q", S)
  local collector = H.collector
  local function N(name) return S .. "." .. P .. name end -- a table as the API names it
  local function T(name) return D.t(P .. name) end        -- in SQL text
  local function QN(name) return fmt("%s.%q", QS, P .. name) end -- in messages

  local function tables()
    for _, t in ipairs { "users", "order_items", "keyless", "typed" } do D.exec("DROP TABLE IF EXISTS " .. T(t)) end
    for _, t in ipairs { "users", "order_items", "keyless" } do D.exec(fmt(D.ddl[t], T(t))) end
  end

  describe(fmt("sqlnotify (%s API)", D.name), function()
    local n

    before_each(function()
      tables()
      n = D.notifier()
    end)

    after_each(function()
      if n then
        n:cleanup()
        n:close()
        n = nil
      end
    end)

    teardown(function()
      for _, t in ipairs { "users", "order_items", "keyless", "typed" } do D.exec("DROP TABLE IF EXISTS " .. T(t)) end
    end)

    describe("notifier", function()
      it("reports its dialect", function()
        assert.are.equal(D.dialect, n.dialect_name)
      end)

      it("accepts a driver suffix in the URL", function()
        local m = assert(sqlnotify.notifier{ url = D.suffix_url, use_logger = false })
        assert.are.equal(D.dialect, m.dialect_name)
        m:close()
      end)

      it("returns nil and a message naming the database, never the password", function()
        local m, err = sqlnotify.notifier{ url = D.bad_url, use_logger = false }
        assert.is_nil(m)
        assert.matches(D.bad_url_error, err)
        assert.is_nil(err:find("s3cretpw", 1, true))
      end)

      it("refuses a consumer that is not a name and a start_at that is not end, beginning or snapshot", function()
        assert.has_error(function() sqlnotify.notifier{ url = D.bad_url, consumer = "" } end,
          "sqlnotify: consumer must be a non-empty string")
        assert.has_error(function() sqlnotify.notifier{ url = D.bad_url, consumer = "c", start_at = "now" } end,
          'sqlnotify: start_at must be "end", "beginning" or "snapshot", got "now"')
      end)
    end)

    describe("watch and subscribe errors", function()
      it("names each bad thing, and the notifier keeps working", function()
        local users = QN("users")
        local cases = {
          { function() n:watch(S .. ".nosuch", "insert") end, fmt('sqlnotify: unknown table %s."nosuch"', QS) },
          { function() n:watch("nosuch_anywhere", "insert") end,
            'sqlnotify: unknown table "nosuch_anywhere"' .. D.unknown_suffix },
          { function() n:watch(N("users"), "upsert") end,
            'sqlnotify: unknown operation "upsert" (use sqlnotify.INSERT, UPDATE or DELETE)' },
          { function() n:watch(N("users"), "insert", { extra_columns = { "emial" } }) end,
            'sqlnotify: unknown column "emial" in extra_columns of table ' .. users },
          { function() n:watch(N("users"), "update", { trigger_columns = { "nope" } }) end,
            'sqlnotify: unknown column "nope" in trigger_columns of table ' .. users },
          { function() n:watch(N("users"), "insert", { primary_keys = { "idd" } }) end,
            'sqlnotify: unknown column "idd" in primary_keys of table ' .. users },
          { function() n:watch(N("users"), "insert", { primary_keys = { "email" } }) end,
            "sqlnotify: primary_keys {email} of table " .. users .. " is not its primary key or a unique key" },
          { function() n:watch(N("users"), "insert", { trigger_columns = { "email" } }) end,
            "sqlnotify: trigger_columns only applies to UPDATE watches, not insert on " .. users },
          { function() n:watch(N("keyless"), "update") end,
            "sqlnotify: table " .. QN("keyless") .. " has no primary key; update watches need one (pass primary_keys"
              .. " naming a unique key); only INSERT can be watched without a key" },
          { function() n:watch(N("users"), "insert", { extra_colums = { "email" } }) end,
            'sqlnotify: unknown watch option "extra_colums"' },
          { function() n:subscribe(N("users"), "delete", function() end) end,
            "sqlnotify: no watch for delete on " .. users .. " (call watch first)" },
          { function() n:subscribe(N("users"), "insert", { channel_label = "other" }, function() end) end,
            "sqlnotify: no watch for insert on " .. users .. ' with channel_label "other" (call watch first)' },
          { function() n:subscribe(N("users"), "insert", { filters = { { column = "agee", value = 1 } } }, print) end,
            'sqlnotify: unknown column "agee" in filters of table ' .. users },
          { function() n:subscribe(N("users"), "insert", { filters = { { column = "age", value = 1 } } }, print) end,
            'sqlnotify: filter column "age" is not carried by the insert watch on ' .. users ..
              " (add it to extra_columns)" },
          { function() n:subscribe(N("users"), "insert") end,
            "sqlnotify: subscribe needs a handler function, got nil" },
          { function() n:notify(N("users"), "insert", { id = 1, age = 3 }) end,
            'sqlnotify: notify payload has column "age" that the insert watch on ' .. users .. " does not carry" },
          { function() n:notify(N("users"), "insert", { email = "x" }) end,
            'sqlnotify: notify payload lacks primary key column "id" of ' .. users },
        }
        n:watch(N("users"), "insert", { extra_columns = { "email" } })
        for i, case in ipairs(cases) do
          local ok, e = pcall(case[1])
          assert.is_false(ok, "case " .. i)
          assert.are.equal(case[2], (e:gsub("^[^:]+:%d+: ", "")), "case " .. i)
        end
        local got, handler = collector()
        n:subscribe(N("users"), "insert", handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s (email) VALUES ('ok@example.com')", T("users")))
        assert.is_true(H.run_until(function() return #got == 1 end))
        assert.are.equal("ok@example.com", got[1].extra_columns.email)
      end)
    end)

    describe("events", function()
      it("delivers insert, update and delete with every field", function()
        local got, handler = collector()
        n:watch(N("users"), "insert", { extra_columns = { "email", "name" } })
          :watch(N("users"), "update", { extra_columns = { "email" } })
          :watch(N("users"), "delete", { extra_columns = { "email" } })
        for _, op in ipairs { "insert", "update", "delete" } do n:subscribe(N("users"), op, handler) end
        assert(n:start())
        local t0 = sqlnotify.now()
        local u = T("users")
        D.exec(fmt([[
          INSERT INTO %s (id, email, name) VALUES (7, 'a@example.com', NULL);
          UPDATE %s SET email = 'b@example.com' WHERE id = 7;
          DELETE FROM %s WHERE id = 7;
        ]], u, u, u))
        assert.is_true(H.run_until(function() return #got == 3 end))
        H.run_for(0.1)
        assert.are.equal(3, #got)
        local ops, emails = {}, {}
        for i, ev in ipairs(got) do
          assert.are.equal(S, ev.schema)
          assert.are.equal(P .. "users", ev.table)
          assert.are.equal(7, ev.id)
          assert.are.equal("integer", math.type(ev.id))
          assert.is_false(ev.truncated)
          local plain = "sqlnotify_" .. S .. "_" .. P .. "users_" .. ev.operation
          if (S .. P):find("^[A-Za-z0-9]+$") then
            assert.are.equal(plain, ev.channel)
          else -- names with "_" (or more) are followed by a hash of the tuple
            assert.matches("^" .. plain:gsub("%p", "%%%0") .. "_%x+$", ev.channel)
          end
          assert.is_true(ev.timestamp >= t0 - 1 and ev.timestamp <= sqlnotify.now(), "timestamp " .. i)
          assert.is_nil(ev.seq) -- live mode
          ops[i], emails[i] = ev.operation, ev.extra_columns.email
        end
        assert.are.same({ "insert", "update", "delete" }, ops)
        assert.are.same({ "a@example.com", "b@example.com", "b@example.com" }, emails)
        assert.are.same({ email = "a@example.com" }, got[1].extra_columns) -- NULL name: absent
      end)

      it("gives a composite key as an array in primary key order", function()
        local got, handler = collector()
        n:watch(N("order_items"), "insert", { extra_columns = { "qty" } })
        n:watch(N("keyless"), "insert", { primary_keys = { "b" }, extra_columns = { "c" } })
        n:subscribe(N("order_items"), "insert", handler)
        n:subscribe(N("keyless"), "insert", handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s VALUES (10, 3, 5, 'x'); INSERT INTO %s VALUES (1, 2, 'c');",
          T("order_items"), T("keyless")))
        assert.is_true(H.run_until(function() return #got == 2 end))
        assert.are.same({ 10, 3 }, got[1].id)
        assert.are.same({ qty = 5 }, got[1].extra_columns)
        assert.are.equal(2, got[2].id)
        assert.are.same({ c = "c" }, got[2].extra_columns)
      end)

      it("fires an UPDATE watch with trigger_columns only when one of them really changed", function()
        local got, handler = collector()
        local u = T("users")
        D.exec(fmt("INSERT INTO %s (id, email, name, age) VALUES (1, 'e', 'n', 30)", u))
        n:watch(N("users"), "update", { trigger_columns = { "email", "age" }, extra_columns = { "email", "age" } })
        n:subscribe(N("users"), "update", handler)
        assert(n:start())
        D.exec(fmt([[
          UPDATE %s SET name = 'other' WHERE id = 1;
          UPDATE %s SET email = 'e' WHERE id = 1;
          UPDATE %s SET age = 31 WHERE id = 1;
          UPDATE %s SET name = 'again', email = 'f' WHERE id = 1;
          UPDATE %s SET email = NULL WHERE id = 1;
          UPDATE %s SET email = NULL WHERE id = 1;
          UPDATE %s SET email = 'F' WHERE id = 1;
        ]], u, u, u, u, u, u, u))
        assert.is_true(H.run_until(function() return #got == 4 end))
        H.run_for(0.2)
        assert.are.equal(4, #got)
        assert.are.same({ email = "e", age = 31 }, got[1].extra_columns)
        assert.are.same({ email = "f", age = 31 }, got[2].extra_columns)
        assert.are.same({ age = 31 }, got[3].extra_columns) -- to NULL: a change; NULL to NULL: none
        assert.are.same({ email = "F", age = 31 }, got[4].extra_columns) -- case counts as a change
      end)

      it("applies filters (an AND of equalities) and runs subscribers in subscription order", function()
        local calls = {}
        local function rec(name) return function(ev) calls[#calls + 1] = name .. ":" .. ev.id end end
        n:watch(N("users"), "insert", { extra_columns = { "name", "age" } })
        n:subscribe(N("users"), "insert", rec("all"))
        n:subscribe(N("users"), "insert", { filters = { { column = "age", value = 40 } } }, rec("age40"))
        n:subscribe(N("users"), "insert",
          { filters = { { column = "name", value = "bo" }, { column = "age", value = 40 } } }, rec("bo40"))
        n:subscribe(N("users"), "insert", { filters = { { column = "id", value = 3 } } }, rec("id3"))
        n:subscribe(N("users"), "insert", rec("last"))
        assert(n:start())
        local u = T("users")
        D.exec(fmt([[
          INSERT INTO %s (id, name, age) VALUES (1, 'al', 40);
          INSERT INTO %s (id, name, age) VALUES (2, 'bo', 40);
          INSERT INTO %s (id, name, age) VALUES (3, 'bo', 41);
        ]], u, u, u))
        assert.is_true(H.run_until(function() return #calls == 10 end))
        H.run_for(0.1)
        assert.are.same({
          "all:1", "age40:1", "last:1",
          "all:2", "age40:2", "bo40:2", "last:2",
          "all:3", "id3:3", "last:3",
        }, calls)
      end)

      it("converts a filter value to the column's class where that is exact, and it matches what arrives", function()
        local calls, first = {}, nil
        local function rec(name)
          return function(ev)
            calls[#calls + 1] = name .. ":" .. ev.id
            if ev.id == 1 then first = ev.extra_columns end
          end
        end
        D.exec(fmt(D.typed.ddl, T("typed")))
        n:watch(N("typed"), "insert", { extra_columns = { "qty", "price", "flag", "name", "ratio" } })
        local function sub(col, value, name)
          n:subscribe(N("typed"), "insert", { filters = { { column = col, value = value } } }, rec(name))
        end
        sub("qty", "42", "qty")           -- a string on an integer
        sub("price", 42, "price42")       -- a number on a decimal(10,2): "42.00"
        sub("price", "19.9", "price19.9") -- fewer digits than the scale: "19.90"
        sub("flag", true, "flag")         -- a boolean, however the column keeps it
        sub("name", 7, "name7")           -- an integer on text
        sub("ratio", "0.5", "ratio")      -- a string on a float
        sub("id", "2", "id2")             -- on the key
        assert(n:start())
        local t = T("typed")
        D.exec(fmt([[
          INSERT INTO %s (id, qty, price, flag, name, ratio) VALUES (1, 42, 42, TRUE, '7', 0.5);
          INSERT INTO %s (id, qty, price, flag, name, ratio) VALUES (2, 41, 19.90, FALSE, 'x', 0.25);
          INSERT INTO %s (id, qty, price, flag, name, ratio) VALUES (3, 42, 7.5, FALSE, '7', 0.75);
        ]], t, t, t))
        assert.is_true(H.run_until(function() return #calls == 9 end))
        H.run_for(0.1)
        assert.are.same({
          "qty:1", "price42:1", "flag:1", "name7:1", "ratio:1",
          "price19.9:2", "id2:2",
          "qty:3", "name7:3",
        }, calls)
        assert.are.same(D.typed.first, first)
      end)

      -- { column, value, the value in the message, what a loose table compares instead }
      local never = {
        { "qty", "x", '"x"', "x" }, { "qty", 1.5, "1.5", 1.5 }, { "qty", "1.5", '"1.5"', 1.5 },
        { "id", "two", '"two"', "two" }, { "price", 0.125, "0.125", 0.125 }, { "price", "1.001", '"1.001"', 1.001 },
        { "price", true, "true", 1 }, { "flag", "maybe", '"maybe"', "maybe" }, { "name", true, "true", true },
        { "name", 0.5, "0.5", 0.5 }, { "ratio", "x", '"x"', "x" },
      }

      if not D.typed.loose then
        it("refuses a filter value the column's class can never hold, naming column, type and class", function()
          D.exec(fmt(D.typed.ddl, T("typed")))
          n:watch(N("typed"), "insert", { extra_columns = { "qty", "price", "flag", "name", "ratio" } })
          for i, c in ipairs(never) do
            local col = c[1]
            local ok, e = pcall(n.subscribe, n, N("typed"), "insert", { filters = { { column = col, value = c[2] } } },
              print)
            assert.is_false(ok, "case " .. i)
            local class = D.typed.classes[col]
            assert.are.equal(fmt("sqlnotify: filter value %s on column %q of %s can never match: the column is %s, "
              .. "class %s%s", c[3], col, QN("typed"), D.typed.types[col], class, class == "decimal" and " (scale 2)" or ""),
              (e:gsub("^[^:]+:%d+: ", "")), "case " .. i)
          end
          assert.is_nil(n._subs[n._watches[1].channel])
        end)
      else
        it("takes any filter value on a loose table, compared as the column would keep it", function()
          D.exec(fmt(D.typed.ddl, T("typed")))
          n:watch(N("typed"), "insert", { extra_columns = { "qty", "price", "flag", "name", "ratio" } })
          for i, c in ipairs(never) do
            local s = n:subscribe(N("typed"), "insert", { filters = { { column = c[1], value = c[2] } } }, print)
            assert.are.equal(c[4], s.filters[1].value, "case " .. i)
            assert.are.equal(math.type(c[4]), math.type(s.filters[1].value), "case " .. i)
          end
        end)
      end

      it("stops calling an unsubscribed handler", function()
        local a, ha = collector()
        local b, hb = collector()
        n:watch(N("users"), "insert")
        local sa = n:subscribe(N("users"), "insert", ha)
        n:subscribe(N("users"), "insert", hb)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s (id) VALUES (1)", T("users")))
        assert.is_true(H.run_until(function() return #b == 1 end))
        sa:unsubscribe()
        sa:unsubscribe()
        D.exec(fmt("INSERT INTO %s (id) VALUES (2)", T("users")))
        assert.is_true(H.run_until(function() return #b == 2 end))
        assert.are.equal(1, #a)
        assert.are.equal(2, b[2].id)
      end)

      it("keeps delivering after a handler raises", function()
        local got, handler = collector()
        n:watch(N("users"), "insert")
        n:subscribe(N("users"), "insert", function(ev)
          if ev.id == 1 then error("boom in handler") end
        end)
        n:subscribe(N("users"), "insert", handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s (id) VALUES (1); INSERT INTO %s (id) VALUES (2);", T("users"), T("users")))
        assert.is_true(H.run_until(function() return #got == 2 end))
        assert.are.same({ 1, 2 }, { got[1].id, got[2].id })
      end)

      it("watches INSERT on a table without any key: events without an id", function()
        local got, handler = collector()
        n:watch(N("keyless"), "insert", { extra_columns = { "c" } })
        n:subscribe(N("keyless"), "insert", handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s VALUES (1, 1, 'one'); INSERT INTO %s VALUES (2, 2, 'two');", T("keyless"), T("keyless")))
        assert.is_true(H.run_until(function() return #got == 2 end))
        assert.are.same({ { nil, "one" }, { nil, "two" } }, { { got[1].id, got[1].extra_columns.c },
          { got[2].id, got[2].extra_columns.c } })
      end)

      it("delivers a row whose unique key used as primary_keys is NULL, with a nil id", function()
        local got, handler = collector()
        n:watch(N("keyless"), "insert", { primary_keys = { "b" }, extra_columns = { "c" } })
        n:subscribe(N("keyless"), "insert", handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s VALUES (1, NULL, 'null key'); INSERT INTO %s VALUES (2, 2, 'k');",
          T("keyless"), T("keyless")))
        assert.is_true(H.run_until(function() return #got == 2 end))
        assert.is_nil(got[1].id)
        assert.are.same({ c = "null key" }, got[1].extra_columns)
        assert.are.equal(2, got[2].id)
      end)

      it("uses a channel_label as the channel", function()
        local got, handler = collector()
        n:watch(N("users"), "insert", { channel_label = "new_registrations", extra_columns = { "email" } })
        n:subscribe(N("users"), "insert", { channel_label = "new_registrations" }, handler)
        assert(n:start())
        D.exec(fmt("INSERT INTO %s (id, email) VALUES (5, 'l@example.com')", T("users")))
        assert.is_true(H.run_until(function() return #got == 1 end))
        assert.are.equal("sqlnotify_new_registrations", got[1].channel)
        assert.are.equal(5, got[1].id)
      end)

      it("refuses a channel_label another table's watch already uses, naming it", function()
        n:watch(N("users"), "insert", { channel_label = "shared" })
        assert(n:start())
        local m = D.notifier()
        m:watch(N("order_items"), "insert", { channel_label = "shared" })
        local ok, err = m:start()
        assert.is_nil(ok)
        assert.are.equal('sqlnotify: channel "sqlnotify_shared" is already used by the insert watch on ' .. QN("users") ..
          "; give this watch its own channel_label", err)
        m:close()
      end)
    end)

    describe("notify", function()
      it("sends a payload that arrives as an event", function()
        local got, handler = collector()
        n:watch(N("users"), "update", { extra_columns = { "email" } })
        n:subscribe(N("users"), "update", handler)
        assert(n:start())
        assert.is_true(n:notify(N("users"), "update", { id = 77, email = "n@example.com" }))
        assert.is_true(H.run_until(function() return #got == 1 end))
        assert.are.equal(77, got[1].id)
        assert.are.same({ email = "n@example.com" }, got[1].extra_columns)
      end)

      if D.max_payload == 0 then
        it("has no payload limit: a 100,000-byte notify arrives whole", function()
          local got, handler = collector()
          n:watch(N("users"), "insert", { extra_columns = { "name" } })
          n:subscribe(N("users"), "insert", handler)
          assert(n:start())
          assert.is_true(n:notify(N("users"), "insert", { id = 1, name = string.rep("y", 100000) }))
          assert.is_true(H.run_until(function() return #got == 1 end))
          assert.are.equal(100000, #got[1].extra_columns.name)
        end)
      end
    end)

    describe("query", function()
      it("returns rows of column = value, typed, with parameters", function()
        local q = D.query
        assert.are.same({ q.expect }, assert(n:query(q.sql, table.unpack(q.params))))
        assert.are.same({}, assert(n:query(q.empty)))
      end)

      it("returns nil and the database's message on failure, and keeps working", function()
        local rows, err = n:query(D.query.bad)
        assert.is_nil(rows)
        assert.are.equal(D.query.bad_message, err)
        assert.are.same({ { one = 1 } }, n:query("SELECT 1 AS one"))
      end)
    end)

    describe("lifecycle", function()
      it("installs at start, stops listening on stop, drops its triggers on cleanup", function()
        local got, handler = collector()
        n:watch(N("users"), "insert"):watch(N("users"), "delete")
        n:subscribe(N("users"), "insert", handler)
        assert.are.equal(0, D.trigger_count())
        assert.are.equal(n, n:start())
        assert.are.equal(2, D.trigger_count())
        n:stop()
        D.exec(fmt("INSERT INTO %s (id) VALUES (1)", T("users")))
        H.run_for(0.2)
        assert.are.equal(0, #got)
        assert.are.equal(2, D.trigger_count()) -- triggers stay
        assert.is_true(n:cleanup())
        assert.are.equal(0, D.trigger_count())
      end)

      it("installs and listens at once for a watch added after start", function()
        local got, handler = collector()
        assert(n:start())
        n:watch(N("order_items"), "delete")
        n:subscribe(N("order_items"), "delete", handler)
        D.exec(fmt("INSERT INTO %s VALUES (1, 2, 3, NULL); DELETE FROM %s;", T("order_items"), T("order_items")))
        assert.is_true(H.run_until(function() return #got == 1 end))
        assert.are.same({ 1, 2 }, got[1].id)
      end)

      it("drops every sqlnotify trigger in the database on start with cleanup_on_start", function()
        n:watch(N("users"), "insert"):watch(N("users"), "update")
        assert(n:start())
        assert.are.equal(2, D.trigger_count())
        local m = D.notifier{ cleanup_on_start = true }
        local logs = {}
        m._log = function(_, level, ...) logs[#logs + 1] = level .. " " .. fmt(...) end
        m:watch(N("users"), "delete")
        assert(m:start())
        assert.are.equal(1, D.trigger_count())
        -- one line per trigger dropped (the database may hold other files' too), then the count
        local mine, last = {}, nil
        for _, l in ipairs(logs) do
          if l:find("cleanup_on_start: ", 1, true) then last = l end
          if l:find(" on " .. QN("users") .. " ", 1, true) and l:find("cleanup_on_start: ", 1, true) then
            mine[#mine + 1] = l
          end
        end
        table.sort(mine)
        assert.are.same({
          fmt("info cleanup_on_start: dropped the trigger for insert on %s (channel %s)", QN("users"), n._watches[1].channel),
          fmt("info cleanup_on_start: dropped the trigger for update on %s (channel %s)", QN("users"), n._watches[2].channel),
        }, mine)
        assert.matches("^info cleanup_on_start: dropped %d+ sqlnotify trigger%(s%)$", last)
        m:cleanup()
        m:close()
      end)

      it("leaves a matching trigger alone, keeps or replaces a changed one, and verifies them", function()
        n:watch(N("users"), "insert", { extra_columns = { "email" } })
        assert(n:start())
        local m = D.notifier()
        m:watch(N("users"), "insert", { extra_columns = { "email" } })
        local w = m._watches[1]
        assert.is_true(m._h:verify(w))
        assert.are.equal("unchanged", m._h:install(w, true))
        m:close()
        local k = D.notifier()
        k:watch(N("users"), "insert", { extra_columns = { "name" } })
        w = k._watches[1]
        assert.is_false(k._h:verify(w))
        assert.are.equal("kept", k._h:install(w, false))
        assert.is_false(k._h:verify(w))
        assert.are.equal("replaced", k._h:install(w, true))
        assert.is_true(k._h:verify(w))
        assert.are.equal(1, D.trigger_count())
        k:close()
      end)
    end)
  end)
end
