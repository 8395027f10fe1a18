-- Backfill's API (SPEC §8.3) on PostgreSQL, SQLite and MariaDB, in process: what it refuses and
-- where; keys of every shape read in the database's own key order, each row once; a where
-- condition; n:backfills() and n:cancel_backfill(); a table truncated under a running
-- backfill; the pace's model, and the pace through the host beside a consumer's backlog; a
-- backfill read into memory stopped and started again.
-- spec/34-backfill_spec.lua is the end-to-end case with writers and kill -9.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

local dialects = {
  {
    name = "PostgreSQL",
    setup = function()
      H.fresh_schema("spec35")
      return { url = H.pg_url, t = "spec35.", run = H.psql, text_key = 'a text COLLATE "C"',
        drop = function() H.drop_schema("spec35") end }
    end,
  },
  {
    name = "SQLite",
    setup = function()
      local path = H.fresh_sqlite("spec35")
      return { url = "sqlite:///" .. path .. "?mode=rwc", t = "", text_key = "a TEXT",
        run = function(sql) return H.sqlite_cli(path, sql) end, drop = function() os.remove(path) end }
    end,
  },
  {
    name = "MariaDB",
    setup = function()
      local db = H.my.db
      H.mysql("DROP TABLE IF EXISTS s35_keys, s35_nokey, s35_nullkey, s35_n")
      return { url = H.mysql_url, t = db .. ".s35_", text_key = "a VARCHAR(20) COLLATE utf8mb4_bin", run = H.mysql,
        drop = function() H.mysql("DROP TABLE IF EXISTS s35_keys, s35_nokey, s35_nullkey, s35_n") end }
    end,
  },
}

for _, d in ipairs(dialects) do
  describe(d.name .. " backfill", function()
    local env, notifiers
    before_each(function()
      env = d.setup()
      notifiers = {}
    end)
    after_each(function()
      for _, n in ipairs(notifiers) do
        pcall(n.drop_consumer, n, n._consumer or "")
        n:close()
      end
      env.drop()
    end)
    local function notifier(opts)
      opts.url = env.url
      opts.use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil
      local n = assert(sqlnotify.notifier(opts))
      notifiers[#notifiers + 1] = n
      return n
    end
    local function tbl(name) return env.t .. name end
    -- The lines n logs, as they come (still logged as before).
    local function said_by(n)
      local said, log = {}, n._log
      n._log = function(self, level, ...)
        said[#said + 1] = fmt(...)
        return log(self, level, ...)
      end
      return said
    end
    -- Table n: ids 1..count, v = "v<id>".
    local function table_n(count)
      local rows = {}
      for i = 1, count do rows[#rows + 1] = fmt("(%d, 'v%d')", i, i) end
      env.run(fmt("CREATE TABLE %s (id int PRIMARY KEY, v text); INSERT INTO %s VALUES %s;", tbl("n"), tbl("n"),
        table.concat(rows, ", ")))
    end

    it("refuses at the caller's line what it cannot do, and writes nothing then", function()
      env.run(fmt("CREATE TABLE %s (id int PRIMARY KEY, v text); CREATE TABLE %s (v text);", tbl("n"), tbl("nokey")))
      local live = notifier({})
      assert.error_matches(function() live:backfill(tbl("n")) end, "^sqlnotify: a backfill needs a durable consumer")
      assert.error_matches(function() live:subscribe(tbl("n"), "read", function() end) end,
        "a backfill needs a durable consumer")
      assert.error_matches(function() sqlnotify.notifier{ url = env.url, start_at = "snapshot" } end,
        "start_at applies to a consumer")
      assert.error_matches(function() sqlnotify.notifier{ url = env.url, consumer = "x", start_at = "now" } end,
        'start_at must be "end", "beginning" or "snapshot", got "now"')
      assert.error_matches(function() sqlnotify.notifier{ url = env.url, backfill_rate = 100 } end,
        "backfill_rate applies to a consumer")
      assert.error_matches(function() sqlnotify.notifier{ url = env.url, consumer = "x", backfill_rate = 0 } end,
        'backfill_rate must be "auto", "full" or a number of rows per second from 1, got 0')
      assert.error_matches(function() sqlnotify.notifier{ url = env.url, consumer = "x", backfill_rate = "fast" } end,
        'backfill_rate must be "auto", "full" or a number of rows per second from 1, got fast')
      local n = notifier({ consumer = "s35a" })
      assert.error_matches(function() n:backfill(tbl("nokey")) end, "has no primary key; a backfill reads it in key order")
      -- a unique key that can be NULL orders no row with a NULL: a chunk that ended on one looped
      env.run(fmt("CREATE TABLE %s (code varchar(20) UNIQUE, v text); INSERT INTO %s VALUES ('a', '1'), (NULL, '2');",
        tbl("nullkey"), tbl("nullkey")))
      assert.error_matches(function() n:watch(tbl("nullkey"), "read", { primary_keys = { "code" } }) end,
        "primary_keys {code} of table .- can be NULL; a backfill reads in key order and needs a key every row has "
          .. "%(make its columns NOT NULL%)")
      n:watch(tbl("nullkey"), "update", { primary_keys = { "code" } }) -- a change watch takes it, as before
      assert.error_matches(function() n:subscribe(tbl("nullkey"), "read", function() end) end,
        "primary_keys {code} of table .- can be NULL")
      assert.error_matches(function() n:backfill(tbl("n"), { chunk = 0 }) end, "chunk must be a whole number from 1 to 100000")
      assert.error_matches(function() n:backfill(tbl("n"), { where = " " }) end, "where must be an SQL condition")
      assert.error_matches(function() n:backfill(tbl("n"), { rows = 1 }) end, 'unknown backfill option "rows"')
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(function() n:backfill(tbl("n"), { where = "no_such_column > 1" }) end)
      assert.is_false(ok)
      assert.matches("^spec/35%-backfill_api_spec.lua:" .. line .. ": sqlnotify: backfill of .- cannot read the table where "
        .. "no_such_column > 1: ", err)
      ok, err = pcall(n.backfill, n, tbl("n"), { where = "id >" })
      assert.is_false(ok)
      assert.matches("cannot read the table where id >: ", err)
      assert.same({}, assert(n:backfills())) -- nothing was written
      local snap = notifier({ consumer = "s35b", start_at = "snapshot" })
      snap:watch(tbl("n"), "insert")
      local started, why = snap:start()
      assert.is_nil(started)
      assert.matches('start_at = "snapshot" reads the tables subscribed to "read", and there is none', why)
    end)

    it("reads a composite key of text and integer in the database's key order, each row once, three a chunk", function()
      env.run(fmt("CREATE TABLE %s (%s, b int, v text, PRIMARY KEY (a, b));", tbl("keys"), env.text_key)
        .. fmt("INSERT INTO %s VALUES ('b', 2, 'b2'), ('B', 1, 'B1'), ('a', 10, 'a10'), ('a', 9, 'a9'), ('ä', 1, 'x'),"
          .. " ('a b', 1, 'ab'), ('', 1, 'empty'), ('b', -1, 'bm'), ('z', 0, 'z0'), ('Z', 0, 'Z0');", tbl("keys")))
      local n = notifier({ consumer = "s35c" })
      n:watch(tbl("keys"), "insert", { extra_columns = { "v" } })
      local got = {}
      n:subscribe(tbl("keys"), "read", function(ev)
        got[#got + 1] = fmt("%s|%d|%s|%s", ev.id[1], ev.id[2], ev.extra_columns.v, ev.operation)
      end)
      assert(n:start())
      n:backfill(tbl("keys"), { chunk = 3 })
      local want = { "|1|empty|read", "B|1|B1|read", "Z|0|Z0|read", "a|9|a9|read", "a|10|a10|read", "a b|1|ab|read",
        "b|-1|bm|read", "b|2|b2|read", "z|0|z0|read", "ä|1|x|read" }
      assert.is_true(H.run_until(function()
        local b = n:backfills()
        return #got >= #want and b[1] and b[1].state == "done"
      end, 20), "got " .. #got)
      H.run_for(0.3)
      assert.same(want, got)
      local b = assert(n:backfills())
      assert.equal(1, #b)
      assert.same({ done = 10, total = 10, state = "done", chunk = 3 },
        { done = b[1].done, total = b[1].total, state = b[1].state, chunk = b[1].chunk })
    end)

    it("reads only the rows where says, and n:cancel_backfill stops reading chunks", function()
      table_n(60)
      local n = notifier({ consumer = "s35d" })
      n:watch(tbl("n"), "read", { extra_columns = { "v" } })
      local got = {}
      n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id end)
      assert(n:start())
      n:backfill(tbl("n"), { where = "id % 3 = 0", chunk = 4 })
      assert.is_true(H.run_until(function() return #got >= 20 end, 20))
      H.run_for(0.3)
      local want = {}
      for i = 3, 60, 3 do want[#want + 1] = i end
      assert.same(want, got)
      assert.equal("done", n:backfills()[1].state)
      assert.equal(20, n:backfills()[1].total)
      -- again, cancelled after its first rows: no chunk after the cancel
      got = {}
      n:backfill(tbl("n"), { chunk = 1 })
      assert.is_true(H.run_until(function() return #got >= 3 end, 20))
      assert.is_true(n:cancel_backfill(tbl("n")))
      assert.is_true(H.run_until(function() return n:backfills()[1].state == "cancelled" end, 10))
      local done = n:backfills()[1]
      H.run_for(0.5)
      assert.equal(done.done, #got) -- the rows read before the cancel arrive, and no more
      assert.is_true(#got < 60)
      local again, why = n:cancel_backfill(tbl("n"))
      assert.is_nil(again)
      assert.matches("^sqlnotify: no backfill of .- is running$", why)
    end)

    if d.name == "PostgreSQL" then -- the query connection's statements run on the loop here
      it("waits its turn from a coroutine while a handler's statement runs on the query connection", function()
        table_n(10)
        local n = notifier({ consumer = "s35q" })
        n:watch(tbl("n"), "read", { extra_columns = { "v" } })
        local got, order = {}, {}
        n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id .. "=" .. ev.extra_columns.v end)
        assert(n:start())
        sqlnotify.spawn(function()
          order[#order + 1] = "sleep"
          assert(n:query("SELECT pg_sleep(0.5)"))
          order[#order + 1] = "slept"
        end)
        sqlnotify.spawn(function()
          local ok, err = pcall(n.backfill, n, tbl("n"), { chunk = 4 })
          order[#order + 1] = ok and "backfill" or err
        end)
        -- where it cannot wait, it says so
        assert.error_matches(function() n:backfill(tbl("n")) end, "backfill: the query connection is in use by a "
          .. "handler's statement or transaction; call n:backfill from a handler or a coroutine of sqlnotify.spawn, "
          .. "where it waits its turn %(not inside its own transaction%)")
        assert.is_true(H.run_until(function() return #got >= 10 end, 20))
        H.run_for(0.3)
        assert.same({ "sleep", "slept", "backfill" }, order)
        local want = {}
        for i = 1, 10 do want[i] = i .. "=v" .. i end
        assert.same(want, got)
        assert.equal("done", n:backfills()[1].state)
      end)
    end

    if d.name == "PostgreSQL" then
      it("cancels a backfill running elsewhere in the query connection's turn", function()
        table_n(30)
        local a = notifier({ consumer = "s35k" })
        a:watch(tbl("n"), "read", { extra_columns = { "v" } })
        local seen = 0
        a:subscribe(tbl("n"), "read", function() seen = seen + 1 end)
        assert(a:start())
        a:backfill(tbl("n"), { chunk = 1 })
        assert.is_true(H.run_until(function() return seen >= 3 end, 20))
        a:close() -- its backfill stays running, for the next process of the consumer
        local b = notifier({ consumer = "s35k" })
        b:watch(tbl("n"), "read", { extra_columns = { "v" } })
        assert.equal("running", b:backfills()[1].state)
        local order = {}
        sqlnotify.spawn(function()
          order[#order + 1] = "sleep"
          assert(b:query("SELECT pg_sleep(0.5)"))
          order[#order + 1] = "slept"
        end)
        sqlnotify.spawn(function()
          local ok, err = b:cancel_backfill(tbl("n"))
          order[#order + 1] = ok and "cancelled" or err
        end)
        local no, why = b:cancel_backfill(tbl("n")) -- where it cannot wait, it says so
        assert.is_nil(no)
        assert.equal("sqlnotify: cancel_backfill: the query connection is in use by a handler's statement or "
          .. "transaction; call n:cancel_backfill from a handler or a coroutine of sqlnotify.spawn, where it waits "
          .. "its turn (not inside its own transaction)", why)
        assert.is_true(H.run_until(function() return #order >= 3 end, 20))
        assert.same({ "sleep", "slept", "cancelled" }, order)
        assert.equal("cancelled", b:backfills()[1].state)
      end)
    end

    it("starts again from the first key when asked over a running backfill, and stops with its dropped consumer",
      function()
      table_n(30)
      local n = notifier({ consumer = "s35f" })
      local got = {}
      n:watch(tbl("n"), "insert")
      n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id end)
      assert(n:start())
      n:backfill(tbl("n"), { chunk = 1 })
      assert.is_true(H.run_until(function() return #got >= 5 end, 20))
      n:backfill(tbl("n"), { chunk = 2 }) -- over the running one, maybe while its chunk is read
      assert.is_true(H.run_until(function() return n:backfills()[1].state == "done" end, 20))
      H.run_for(0.3)
      local b = n:backfills()[1]
      assert.same({ 30, 30, 2 }, { b.done, b.total, b.chunk })
      -- the second pass is the last 30 rows, in key order
      assert.is_true(#got >= 35 and #got <= 40, "rows: " .. #got)
      for i = 1, 30 do assert.equal(i, got[#got - 30 + i]) end
      -- once more, and the consumer dropped under it
      got = {}
      n:backfill(tbl("n"), { chunk = 1 })
      assert.is_true(H.run_until(function() return #got >= 3 end, 20))
      assert.is_true(n:drop_consumer("s35f"))
      H.run_for(0.5)
      local seen = #got
      H.run_for(0.5)
      assert.equal(seen, #got) -- no chunk after the drop
      assert.same({}, n:backfills())
    end)

    it("goes on without a column renamed under it, as the watches do", function()
      table_n(20)
      local n = notifier({ consumer = "s35g" })
      local got = {}
      n:watch(tbl("n"), "insert", { extra_columns = { "v" } })
      n:subscribe(tbl("n"), "read", function(ev)
        got[#got + 1] = { ev.id, ev.extra_columns.v }
        if #got == 4 then env.run(fmt("ALTER TABLE %s RENAME COLUMN v TO v2;", tbl("n"))) end
      end)
      assert(n:start())
      n:backfill(tbl("n"), { chunk = 2 })
      assert.is_true(H.run_until(function() return n:backfills()[1].state == "done" end, 30))
      H.run_for(0.3)
      assert.equal(20, #got)
      for i, e in ipairs(got) do assert.equal(i, e[1]) end
      assert.same({ 1, "v1" }, got[1])
      assert.same({ 20 }, got[20]) -- read after the rename: the other columns (here none)
    end)

    it("reads at most backfill_rate rows a second, every row once", function()
      table_n(300)
      local n = notifier({ consumer = "s35r", backfill_rate = 400 })
      local got = {}
      n:watch(tbl("n"), "insert")
      n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id end)
      assert(n:start())
      local t0 = sqlnotify.now()
      n:backfill(tbl("n"), { chunk = 50 })
      assert.is_true(H.run_until(function() return #got == 300 end, 20), "rows read: " .. #got)
      -- six chunks of 50 at 400 rows/s: the sixth starts 5 x 0.125 s after the first
      local secs = sqlnotify.now() - t0
      assert.is_true(secs >= 0.6, fmt("300 rows at 400 rows/s took %.2f s", secs))
      for i = 1, 300 do assert.equal(i, got[i]) end
      assert.is_true(H.run_until(function() return n:backfills()[1].state == "done" end, 5))
    end)

    if d.name == "PostgreSQL" then
      -- A chunk read into memory drops a row whose key a later change touched: only where
      -- every change of the table reaches an unfiltered handler with the read's key and columns.
      -- Else the rows go through the journal, in commit order with the changes.
      it("reads into memory only where the table's changes stand for its rows", function()
        table_n(30)
        local function path(consumer, update_opts, update_watch)
          local n = notifier({ consumer = consumer })
          local said = said_by(n)
          local got = {}
          n:watch(tbl("n"), "insert", { extra_columns = { "v" } })
          n:watch(tbl("n"), "update", update_watch or { extra_columns = { "v" } })
          n:watch(tbl("n"), "read", { extra_columns = { "v" } })
          n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id end)
          n:subscribe(tbl("n"), "update", update_opts or {}, function() end)
          assert(n:start())
          n:backfill(tbl("n"), { chunk = 10 })
          assert.is_true(H.run_until(function() return #got == 30 and n:backfills()[1].state == "done" end, 20))
          for i = 1, 30 do assert.equal(i, got[i]) end
          local memory = false -- the journal's way says nothing: it is the way a backfill starts
          for _, l in ipairs(said) do memory = memory or l:find(": chunks read into memory", 1, true) ~= nil end
          n:stop()
          return memory and "memory" or "journal"
        end
        assert.equal("memory", path("s35m1"))
        assert.equal("journal", path("s35m2", { filters = { { column = "v", value = "x" } } }))
        assert.equal("journal", path("s35m3", nil, {}))                             -- no v in its events
        env.run(fmt("CREATE UNIQUE INDEX ON %s (v);", tbl("n")))
        assert.equal("journal", path("s35m4", nil, { extra_columns = { "id" }, primary_keys = { "v" } }))
      end)

      -- A chunk's marks take their journal ids once their statement has its xid, as every writer
      -- of the journal does: a fetch whose snapshot fell between the ids and the xid would move
      -- its floor past them, and the chunk would wait 30 s for marks that never come. An open
      -- ALTER SEQUENCE holds the read statement at its first id, where it must have its xid.
      it("has its xid before a chunk read into memory takes its marks' ids", function()
        table_n(30)
        local n = notifier({ consumer = "s35x" })
        local said = said_by(n)
        local got = {}
        n:watch(tbl("n"), "insert", { extra_columns = { "v" } })
        n:watch(tbl("n"), "read", { extra_columns = { "v" } })
        n:subscribe(tbl("n"), "read", function(ev) got[#got + 1] = ev.id end)
        assert(n:start())
        local holder = notifier({})
        assert(holder:query("BEGIN"))
        assert(holder:query("ALTER SEQUENCE sqlnotify.journal_id CACHE 1")) -- as it is: a lock, no change
        n:backfill(tbl("n"), { chunk = 10 })
        local xid
        local function waiting()
          local rows = assert(holder:query("SELECT COALESCE(backend_xid::text, 'none') AS x FROM pg_stat_activity"
            .. " WHERE wait_event_type = 'Lock' AND datname = current_database() AND query LIKE '%generate_series%'"))
          xid = rows[1] and rows[1].x
          return xid ~= nil
        end
        local blocked = false
        for _ = 1, 40 do -- (the loop runs between: holder's query is called outside it)
          H.run_for(0.5)
          blocked = waiting()
          if blocked then break end
        end
        assert(holder:query("COMMIT"))
        assert.is_true(blocked, "no chunk's read waited for the journal's sequence")
        assert.not_equal("none", xid)
        local ok = H.run_until(function() return #got == 30 and n:backfills()[1].state == "done" end, 20)
        local memory = false
        for _, l in ipairs(said) do
          memory = memory or l:find(": chunks read into memory", 1, true) ~= nil
          assert.is_nil(l:find("did not see its marks", 1, true), l)
        end
        assert.is_true(ok, "rows read: " .. #got)
        assert.is_true(memory)
        for i = 1, 30 do assert.equal(i, got[i]) end
      end)

      -- Rows read into memory go to handlers that run inline; slow handlers must not hold the
      -- loop for a whole slice of rows, or lease steps, timers and acks wait behind them.
      it("lets the loop run between slow handlers of a chunk read into memory", function()
        table_n(1120) -- a first chunk of 600 through the journal, then 520 read into memory
        local n = notifier({ consumer = "s35s" })
        local got, gap, last = {}, 0, nil
        n:watch(tbl("n"), "insert", { extra_columns = { "v" } })
        n:watch(tbl("n"), "read", { extra_columns = { "v" } })
        n:subscribe(tbl("n"), "read", function(ev)
          if #got >= 600 then -- 2 ms of work for every row read into memory
            local t = sqlnotify.now() + 0.002
            while sqlnotify.now() < t do end
          end
          got[#got + 1] = ev.id
        end)
        assert(n:start())
        local timer = sqlnotify.every(0.01, function()
          local now = sqlnotify.now()
          if last and #got > 600 and #got < 1120 then gap = math.max(gap, now - last) end
          last = now
        end)
        n:backfill(tbl("n"), { chunk = 600 })
        local ok = H.run_until(function() return #got == 1120 and n:backfills()[1].state == "done" end, 30)
        timer:stop()
        assert.is_true(ok, "rows read: " .. #got)
        for i = 1, 1120 do assert.equal(i, got[i]) end
        -- a slice of 500 rows would hold the loop 1 s; the emitter yields after about 50 ms
        assert.is_true(gap < 0.4, fmt("the loop waited %.2f s between two timer ticks", gap))
      end)
    end

    it("finishes when its table is emptied under it", function()
      table_n(40)
      local n = notifier({ consumer = "s35e" })
      local got = {}
      n:watch(tbl("n"), "insert")
      n:subscribe(tbl("n"), "read", function(ev)
        got[#got + 1] = ev.id
        if #got == 2 then env.run(fmt("DELETE FROM %s;", tbl("n"))) end
      end)
      assert(n:start())
      n:backfill(tbl("n"), { chunk = 2 })
      assert.is_true(H.run_until(function() return n:backfills()[1].state == "done" end, 20))
      H.run_for(0.3)
      -- read before the delete, at most: the first chunk (through the journal), and on PostgreSQL
      -- three more read into memory ahead of it (MEM_AHEAD); elsewhere two written ahead (AHEAD)
      assert.is_true(#got >= 2 and #got <= 8, "rows read: " .. #got)
      for i, id in ipairs(got) do assert.equal(i, id) end
      assert.equal(#got, n:backfills()[1].done)
    end)
  end)
end

-- A read row's values are made by other SQL than the trigger's (text, not a jsonb object made
-- and rendered: docs/design.md, Backfill), so each is checked against the trigger's insert of
-- the same row: the C trigger for the types it renders, the plpgsql one for a table with a
-- type it leaves to it (json, arrays, point). Odd names test the keys' order and escapes.
describe("PostgreSQL backfill, value by value", function()
  local n
  before_each(function() H.fresh_schema("spec35v") end)
  after_each(function()
    if n then
      pcall(n.drop_consumer, n, "s35v")
      n:close()
      n = nil
    end
    H.drop_schema("spec35v")
  end)

  local C_COLS = [["ab" float8, "b" float4, "a" numeric, "é" text, "x	y" bool, "long name here" jsonb, by bytea,
    ts timestamptz, d date, u uuid, ival interval, big bigint]]
  local ROWS = {
    [[(1, 'a"b\c', 0.1::float8 + 0.2, 1.5, 1.50, 'héllo "q" \ 	tab
nl', true, '{"z": 1, "a": [1, 2.50, "x"]}', '\x00ff', '2026-01-02 03:04:05.678+02', '2026-12-07',
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 2 hours', 9007199254740993)]],
    [[(2, '', 'NaN', '-0', 'NaN', NULL, NULL, 'null', NULL, NULL, NULL, NULL, NULL, NULL)]],
    [[(3, 'z', 'Infinity', '-Infinity', 1e-30, E'\u0001ctl', false, '"str"', '\x', 'infinity', '-infinity', NULL,
      '-1 year', -1)]],
    [[(4, 'w', 1e300, 3.4e38, 123456789012345678901234567890.123456789, 'x', true, '1.0', '\x5c', NULL, NULL, NULL,
      NULL, 0)]],
  }
  -- a value as text: keys sorted, numbers exact with their type (NaN is no equal of itself)
  local function shown(v)
    if math.type(v) == "integer" then return fmt("integer:%d", v) end
    if type(v) == "number" then return fmt("float:%.17g", v) end
    if type(v) ~= "table" then return fmt("%q", v) end
    local keys, out = {}, {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
    for i, k in ipairs(keys) do
      out[i] = (type(k) == "string" and fmt("%q", k) or tostring(k)) .. "=" .. shown(v[k])
    end
    return "{" .. table.concat(out, ",") .. "}"
  end
  local cases = {
    { name = "the C trigger's types", cols = C_COLS, more = "", values = "" },
    { name = "json, arrays and point (the plpgsql trigger)", cols = C_COLS .. ", j json, arr int[], pt point",
      more = ", j, arr, pt", values = { ", '{\"z\" : 1,   \"a\":2}', '{1,NULL,3}', '(1,2)'", ", 'null', NULL, NULL",
        ", '[]', '{}', NULL", ", '1.0', '{{1,2},{3,4}}', '(0,-0.5)'" } },
    { name = 'extra_columns = "*"', cols = C_COLS, more = "", values = "", star = true },
  }
  for _, case in ipairs(cases) do
    it("has the values of the trigger's insert of the same row: " .. case.name, function()
      H.psql(fmt([[CREATE TABLE spec35v.src ("K ey""\" int, k2 text, %s, PRIMARY KEY ("K ey""\", k2));
        CREATE TABLE spec35v.t (LIKE spec35v.src INCLUDING ALL);]], case.cols))
      local vals = {}
      for i, r in ipairs(ROWS) do
        vals[i] = type(case.values) == "table" and r:gsub("%)$", function() return case.values[i] .. ")" end) or r
      end
      H.psql("INSERT INTO spec35v.src VALUES " .. table.concat(vals, ", ") .. ";")
      local extra = { "ab", "b", "a", "é", "x\ty", "long name here", "by", "ts", "d", "u", "ival", "big" }
      for c in case.more:gmatch("(%w+)") do extra[#extra + 1] = c end
      n = assert(sqlnotify.notifier{ url = H.pg_url, consumer = "s35v", use_logger = false })
      n:watch("spec35v.t", "insert", { extra_columns = case.star and "*" or extra })
      local got = { insert = {}, read = {} }
      local function keep(ev)
        got[ev.operation][#got[ev.operation] + 1] = { id = ev.id, x = ev.extra_columns }
      end
      n:subscribe("spec35v.t", "insert", keep)
      n:subscribe("spec35v.t", "read", keep)
      assert(n:start())
      H.psql("INSERT INTO spec35v.t SELECT * FROM spec35v.src ORDER BY 1;")
      assert.is_true(H.run_until(function() return #got.insert == #ROWS end, 10))
      n:backfill("spec35v.t", { chunk = 3 })
      assert.is_true(H.run_until(function() return #got.read == #ROWS end, 10))
      H.run_for(0.2)
      assert.are.equal(#ROWS, #got.read)
      for i = 1, #ROWS do assert.are.equal(shown(got.insert[i]), shown(got.read[i]), "row " .. i) end
      for _, part in ipairs({ '"big"=integer:9007199254740993,', '"x\\9y"=true,', '"ab"=float:0.30000000000000004,',
          '"id"={1=integer:1,2="a\\"b\\\\c"}' }) do
        assert.matches(part, shown(got.read[1]), 1, true)
      end
    end)
  end
end)

-- The pace of backfill_rate = "auto" (lua/sqlnotify/pace.lua), driven by a model: a backfill
-- that reads FREE rows/s alone, writers that make BASE writes/s alone and lose LOSS of their
-- rate at the backfill's full speed (in proportion below it), time in steps of one chunk, and
-- where asked a noise that moves the writers' rate by up to NOISE each second, as a real
-- second's tps moves (pgbench's varies by a tenth).
describe("backfill pace", function()
  local pace = require("sqlnotify.pace")
  local FREE, CHUNK, BASE = 300000, 1000, 2000

  local function model()
    return { p = pace.new(), t = 0, rows = 0, writes = 0, seed = 12345, mul = 1 }
  end
  local function noise(m) -- a multiplier in [1 - NOISE, 1 + NOISE] from the model's own generator
    m.seed = (m.seed * 1103515245 + 12345) % 2147483648
    return 2 * m.seed / 2147483648 - 1
  end
  -- Runs the model to t1 with writers of base writes/s losing loss; returns the rows read and
  -- the writes made meanwhile.
  local function run(m, t1, base, loss, amount)
    local rows0, writes0 = m.rows, m.writes
    while m.t < t1 do
      local hold = m.p:step(m.t, math.floor(m.writes), m.rows)
      local dt, read = hold, 0
      if hold == 0 then dt, read = CHUNK / math.min(m.p.cap or FREE, FREE), CHUNK end
      if amount and math.floor(m.t) ~= m.sec then m.sec, m.mul = math.floor(m.t), 1 + amount * noise(m) end
      m.writes = m.writes + dt * base * m.mul * (1 - loss * (read / dt) / FREE)
      m.rows, m.t = m.rows + read, m.t + dt
    end
    return m.rows - rows0, m.writes - writes0
  end

  it("reads as fast as it goes while no writes come", function()
    local m = model()
    local rows = run(m, 30, 0, 0.5)
    assert.is_nil(m.p.cap)
    assert.equal(FREE * 30, rows)
  end)

  it("holds writers that lose rate to it at 90% of their rate alone or more, then lets go when they stop", function()
    local m = model()
    run(m, 10, BASE, 0.4) -- learning
    local rows, writes = run(m, 70, BASE, 0.4)
    assert.is_true(writes >= 0.9 * BASE * 60, fmt("writes %.0f of %d", writes, BASE * 60))
    -- and reads on: writers at 90% leave it a quarter of FREE in this model
    assert.is_true(rows >= 0.05 * FREE * 60 and rows <= 0.3 * FREE * 60, fmt("rows %d", rows))
    assert.is_number(m.p.cap)
    run(m, 75, 0, 0.4) -- the writers stopped
    assert.is_nil(m.p.cap)
    rows = run(m, 85, 0, 0.4)
    assert.equal(FREE * 10, rows)
  end)

  it("climbs back near full speed when the writers do not lose rate to it", function()
    local m = model()
    run(m, 40, BASE, 0)
    local rows = run(m, 70, BASE, 0)
    -- only the probes (0.5 s in 8) cost it
    assert.is_true(rows >= 0.85 * FREE * 30, fmt("rows %d of %d", rows, FREE * 30))
  end)

  it("errs on the writers' side when their rate moves on its own", function()
    local m = model()
    run(m, 10, BASE, 0.4, 0.15)
    local rows, writes = run(m, 130, BASE, 0.4, 0.15)
    assert.is_true(writes >= 0.9 * BASE * 120, fmt("writes %.0f of %d", writes, BASE * 120))
    assert.is_true(rows >= 0.005 * FREE * 120, fmt("rows %d", rows)) -- slow, not stopped
  end)

  it("keeps what it learned over a pause with no backfill, and starts a new window", function()
    local m = model()
    run(m, 20, BASE, 0.4)
    local cap = m.p.cap
    m.t = m.t + 60 -- no step for a minute: no window spans it
    assert.equal(0, m.p:step(m.t, math.floor(m.writes) + 5000000, m.rows))
    assert.equal(cap, m.p.cap)
  end)
end)

-- The pace counts the writers at work by the changes a process reads. A durable consumer's
-- backlog, read after it was away, is not them: it is a handler's pace, and it must not hold
-- a backfill back. The same backlog read moments after it was written is (the control). On
-- PostgreSQL, whose backfill reads into memory, beside the backlog rather than behind it.
describe("backfill pace, through the host on PostgreSQL", function()
  local BACKLOG, BIG = 3000, 200000
  local SCRIPT = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local backlog, big = tonumber(arg[2]), tonumber(arg[3])
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s35pace" })
local changes, reads = 0, 0
local function check()
  if changes == backlog and reads == big then print("done") end
end
n:watch("spec35p.c", "insert")
n:subscribe("spec35p.c", "insert", function()
  local t = sqlnotify.now() + 0.001
  while sqlnotify.now() < t do end -- a handler's work: the backlog takes seconds
  changes = changes + 1
  check()
end)
for _, op in ipairs({ "insert", "update", "delete" }) do
  n:watch("spec35p.big", op)
  n:subscribe("spec35p.big", op, function() end)
end
n:subscribe("spec35p.big", "read", function()
  reads = reads + 1
  check()
end)
assert(n:start())
n:backfill("spec35p.big", { chunk = 1000 })
]]
  local procs
  local function drop_consumer()
    local n = assert(sqlnotify.notifier({ url = H.pg_url, use_logger = false }))
    n:drop_consumer("s35pace")
    n:close()
  end
  before_each(function()
    procs = {}
    H.fresh_schema("spec35p")
    H.psql(fmt("CREATE TABLE spec35p.c (id int PRIMARY KEY, v text); CREATE TABLE spec35p.big (id int PRIMARY KEY,"
      .. " v text); INSERT INTO spec35p.big SELECT i, 'v' || i FROM generate_series(1, %d) i;", BIG))
    local n = assert(sqlnotify.notifier({ url = H.pg_url, consumer = "s35pace", use_logger = false }))
    n:watch("spec35p.c", "insert")
    for _, op in ipairs({ "insert", "update", "delete" }) do n:watch("spec35p.big", op) end
    assert(n:start())
    n:close() -- the consumer is away; its capture stays
    H.psql(fmt("INSERT INTO spec35p.c SELECT i, 'c' || i FROM generate_series(1, %d) i;", BACKLOG))
  end)
  after_each(function()
    for _, p in ipairs(procs) do p:kill("KILL") end
    drop_consumer()
    H.drop_schema("spec35p")
  end)
  local function consume()
    local p = H.host(SCRIPT, { H.pg_url, tostring(BACKLOG), tostring(BIG) }, "SQLNOTIFY_LOG_LEVEL=debug ")
    procs[#procs + 1] = p
    assert(p:wait_for("done\n", 60), "the host did not read every change and row: " .. p:stderr())
    p:kill()
    assert.equal(0, p:wait(20))
    p:assert_clean()
    local said = {} -- the pace's and the backfill's own lines: the events' debug lines are many
    for l in p:stderr():gmatch("[^\n]+") do
      if l:find("sqlnotify: backfill", 1, true) then said[#said + 1] = l end
    end
    return table.concat(said, "\n")
  end
  local CAPPED = "backfill pace: writers at about %d+ changes/s alone; reading at most %d+ rows/s"

  it("leaves a backfill free while a consumer reads a backlog written over 5 s before", function()
    H.sleep(6)
    local said = consume()
    assert.matches("chunks read into memory", said)
    assert.is_nil(said:match(CAPPED), said)
  end)

  it("holds a backfill back while the changes it reads are fresh, and lets go once they stop", function()
    local said = consume()
    assert.matches("chunks read into memory", said)
    local capped = said:find(CAPPED)
    assert.is_number(capped, said)
    local free = said:find("backfill pace: the writers stopped; reading as fast as it goes", capped, true)
    assert.is_number(free, said)
    assert.is_nil(said:find(CAPPED, free), said) -- once
  end)
end)

-- A consumer stopped while the rows of a chunk read into memory wait for their handlers: the
-- chunk is not saved until they are done, so they are read again at the next start. The stop
-- says so, as it says of the consumer's other events in flight; it used to log each of them at
-- error level as a live event not handled, with its payload, when none was lost.
describe("a PostgreSQL backfill read into memory, stopped", function()
  local ROWS = 3000
  local SCRIPT = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s35stop", start_at = "snapshot" })
n:watch("spec35s.t", "update", { extra_columns = { "v" } })
n:subscribe("spec35s.t", "update", function() end)
n:subscribe("spec35s.t", "read", function(ev)
  print("R " .. ev.id)
  sqlnotify.sleep(0.002)
end)
assert(n:start())
sqlnotify.every(0.1, function()
  local b = n:backfills()
  if b and b[1] and b[1].state == "done" then print("done") end
end)
]]
  local procs
  before_each(function()
    procs = {}
    H.fresh_schema("spec35s")
    H.psql(fmt("CREATE TABLE spec35s.t (id int PRIMARY KEY, v text); INSERT INTO spec35s.t SELECT i, 'v' || i"
      .. " FROM generate_series(1, %d) i;", ROWS))
  end)
  after_each(function()
    for _, p in ipairs(procs) do p:kill("KILL") end
    local n = assert(sqlnotify.notifier({ url = H.pg_url, use_logger = false }))
    n:drop_consumer("s35stop")
    n:close()
    H.drop_schema("spec35s")
  end)
  local function ids(p)
    local out = {}
    for id in p:stdout():gmatch("R (%d+)\n") do out[#out + 1] = tonumber(id) end
    return out
  end

  it("says its rows in flight come again, and reads them again at the next start", function()
    local p = H.host(SCRIPT, { H.pg_url })
    procs[#procs + 1] = p
    assert.is_true(p:wait_count(ids, 300, 30), p:stderr())
    p:stop()
    local err, first = p:stderr(), ids(p)
    assert.matches("chunks read into memory", err)
    assert.is_nil(err:find("live event", 1, true), err)
    assert.is_nil(err:find(" error ", 1, true), err)
    local left = tonumber(err:match('(%d+) event%(s%) in flight when consumer "s35stop" stopped are delivered again '
      .. "at its next start"))
    assert.is_number(left, err)
    assert.is_true(left > 0, err)
    for i, id in ipairs(first) do assert.equal(i, id) end
    p = H.host(SCRIPT, { H.pg_url })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("done\n", 60), p:stderr())
    p:stop()
    local again = ids(p)
    -- from the first row of a chunk not saved (a chunk is 1000 rows), each row once, to the last
    assert.equal(1, again[1] % 1000, "from " .. tostring(again[1]))
    assert.is_true(again[1] <= #first + 1, "from " .. again[1] .. " after " .. #first)
    for i, id in ipairs(again) do assert.equal(again[1] + i - 1, id) end
    assert.equal(ROWS, again[#again])
  end)
end)

-- A chunk read into memory waits for its marks, which come through the journal behind what
-- the consumer had not read yet. Its wait for them used to count from the read: a consumer
-- more than that wait (30 s) behind read its chunks again and again, each time saying its marks
-- did not come, and its backfill went no further until the backlog was read. The wait counts
-- from when the reader last moved below the marks. Here the wait is 1 s and the backlog 4 s.
describe("a PostgreSQL backfill read into memory behind a backlog", function()
  local BACKLOG, ROWS = 4000, 3000
  local backfill = require("sqlnotify.backfill")
  local wait0, n
  before_each(function()
    H.fresh_schema("spec35w")
    H.psql(fmt("CREATE TABLE spec35w.c (id int PRIMARY KEY); CREATE TABLE spec35w.t (id int PRIMARY KEY, v text);"
      .. " INSERT INTO spec35w.t SELECT i, 'v' || i FROM generate_series(1, %d) i;", ROWS))
    local n0 = assert(sqlnotify.notifier({ url = H.pg_url, consumer = "s35wait", use_logger = false }))
    n0:watch("spec35w.c", "insert")
    assert(n0:start())
    n0:close() -- the consumer is away; its capture stays
    H.psql(fmt("INSERT INTO spec35w.c SELECT i FROM generate_series(1, %d) i;", BACKLOG))
    wait0, backfill.MARK_WAIT = backfill.MARK_WAIT, 1
  end)
  after_each(function()
    backfill.MARK_WAIT = wait0
    if n then
      n:drop_consumer("s35wait")
      n:close()
    end
    H.drop_schema("spec35w")
  end)

  it("waits for its marks while the reader reads the backlog below them, and reads each chunk once", function()
    n = assert(sqlnotify.notifier({ url = H.pg_url, consumer = "s35wait", backfill_rate = "full",
      use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil }))
    local said, log = {}, n._log
    n._log = function(self, level, ...)
      said[#said + 1] = fmt(...)
      return log(self, level, ...)
    end
    local got, changes, first_read = {}, 0, nil
    n:watch("spec35w.c", "insert")
    n:subscribe("spec35w.c", "insert", function()
      local t = sqlnotify.now() + 0.001
      while sqlnotify.now() < t do end -- a handler's work: the backlog takes 4 s
      changes = changes + 1
    end)
    n:watch("spec35w.t", "update", { extra_columns = { "v" } })
    n:subscribe("spec35w.t", "update", function() end)
    n:subscribe("spec35w.t", "read", function(ev)
      first_read = first_read or changes
      got[#got + 1] = ev.id
    end)
    assert(n:start())
    n:backfill("spec35w.t", { chunk = 1000 })
    assert.is_true(H.run_until(function()
      local b = n:backfills()
      return #got >= ROWS and b[1] and b[1].state == "done"
    end, 60), "got " .. #got .. " rows, " .. changes .. " changes")
    H.run_for(0.3)
    local text = table.concat(said, "\n")
    assert.matches("chunks read into memory", text)
    assert.is_nil(text:find("did not see its marks come", 1, true), text)
    assert.equal(BACKLOG, changes)
    assert.equal(BACKLOG, first_read) -- the marks came behind the backlog, and the rows with them
    assert.equal(ROWS, #got)
    for i = 1, ROWS do assert.equal(i, got[i]) end
  end)
end)
