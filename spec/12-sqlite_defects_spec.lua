-- SQLite driver defects (issue 10: 2, 4c, 7, 8, 12; issue 12: old values; issue 16:
-- 8 and 12): the exact text triggers write into sqlnotify_changes, trigger names and
-- label collisions, list/drop/verify, readers that hold pruning back, gaps in seq, a
-- database file replaced under a running watcher, and schema changes under triggers.
-- One SQLite file per test under the spec's temporary directory.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")
local cjson = require("cjson")

local q = H.shell_quote

local function fresh_db() return H.fresh_sqlite("def12") end

local cli = H.sqlite_cli

local function exec(n, ...)
  for _, sql in ipairs { ... } do assert(n:query(sql)) end
end

local function payloads(n)
  local out = {}
  for i, r in ipairs(assert(n:query("SELECT payload, json_valid(payload) AS ok FROM sqlnotify_changes ORDER BY seq"))) do
    assert.are.equal(1, r.ok, "payload " .. i .. " is not valid JSON: " .. r.payload)
    out[i] = r.payload
  end
  return out
end

local function trigger_names(n)
  local names = {}
  for _, r in ipairs(assert(n:query("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"))) do
    names[#names + 1] = r.name
  end
  return names
end

local OPCODES = { insert = 0, update = 1, delete = 2 }

-- A watch table as the binding takes it (h:install, h:verify), for shapes the Lua API
-- may not build yet (old columns, tables without a key).
local function raw_watch(t)
  local channel = "sqlnotify_" .. (t.label or ("main_" .. t.table .. "_" .. t.op))
  return {
    schema = "main", table = t.table, op = t.op, opcode = OPCODES[t.op], channel = channel, label = t.label,
    pk = t.pk or { "id" }, extra = t.extra or {}, trigger = t.trigger or {}, old = t.old or {},
    overflow = false, marker = t.marker or core.hash(cjson.encode(t)),
  }
end

local function line_of(ev)
  local keys = {}
  for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
  return string.format("%s %s [%s]", ev.operation, tostring(ev.id), table.concat(keys, " "))
end

-- A watcher for the real binary: arg[1] the file, arg[2] the retention, arg[3] the
-- verify_interval (or "-"); prints each event of items as a line, and the reconnect notice.
local WATCHER = [==[
  local sqlnotify = require("sqlnotify")
  local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], use_logger = true,
    retention = tonumber(arg[2]), verify_interval = tonumber(arg[3]) })
  local function show(ev)
    local keys = {}
    for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
    print(string.format("%s %s [%s]", ev.operation, tostring(ev.id), table.concat(keys, " ")))
    io.stdout:flush()
  end
  n:watch("items", "insert", { extra_columns = { "name", "qty" } })
   :watch("items", "update", { extra_columns = { "qty" }, trigger_columns = { "qty" } })
  n:subscribe("items", "insert", show)
  n:subscribe("items", "update", show)
  n._h:set_reconnected(function(outage, missed) print("reconnected " .. outage .. " " .. tostring(missed)) end)
  sqlnotify.after(0, function() print("ready") io.stdout:flush() end)
]==]

local function items_file(mode)
  local path = fresh_db()
  cli(path, "PRAGMA journal_mode = " .. (mode or "wal") .. ";\n"
    .. "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);")
  return path
end

local function count_lines(s)
  return select(2, s:gsub("\n", ""))
end

local function wait_until(cond, what, timeout)
  local deadline = H.now() + (timeout or 20)
  while not cond() do
    assert(H.now() < deadline, "timed out waiting for " .. (type(what) == "function" and what() or what))
    H.sleep(0.01)
  end
end

-- Wait for k lines on stdout, then a little longer to see that no more come.
local function wait_lines(p, k)
  wait_until(function() return count_lines(p:stdout()) >= k or p:exited() end, k .. " lines", 20)
  H.sleep(0.3)
  return p:stdout()
end

-- The log lines of a host's stderr without their timestamps.
local function log_lines(p)
  local out = {}
  for l in p:stderr():gmatch("[^\n]+") do out[#out + 1] = (l:gsub("^%S+Z ", "")) end
  return out
end

local function has_line(p, want)
  for _, l in ipairs(log_lines(p)) do
    if l == want then return true end
  end
  return false
end

describe("SQLite defects", function()
  local notifiers, procs = {}, {}

  local function notifier(path, opts)
    opts = opts or {}
    opts.url = opts.url or ("sqlite:///" .. path .. "?mode=rwc")
    if opts.use_logger == nil then opts.use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil end
    local n = assert(sqlnotify.notifier(opts))
    notifiers[#notifiers + 1] = n
    return n
  end

  local function host(path, retention, verify)
    local p = H.host(WATCHER, { path, tostring(retention or 3600), tostring(verify or "-") })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("ready\n"), p:stderr())
    return p
  end

  after_each(function()
    for _, n in ipairs(notifiers) do n:close() end
    for _, p in ipairs(procs) do
      if not p:exited() then
        p:kill("KILL")
        p:wait(5)
      end
    end
    notifiers, procs = {}, {}
  end)

  describe("values on the wire (issue 10 defect 12)", function()
    it("writes REALs with 17 digits, infinities as strings, BLOBs as \\x hex, integers exact", function()
      local path = fresh_db()
      local n = notifier(path)
      exec(n, "CREATE TABLE vals (id INTEGER PRIMARY KEY, r REAL, t TEXT, b BLOB, i INTEGER, n)")
      local got = {}
      n:watch("vals", "insert", { extra_columns = { "r", "t", "b", "i", "n" } })
      n:subscribe("vals", "insert", function(ev) got[#got + 1] = ev end)
      assert(n:start())
      exec(n,
        [[INSERT INTO vals VALUES (1, 0.1 + 0.2, 'q"\/' || char(1) || char(10), x'00ff10', 9007199254740993, NULL)]],
        [[INSERT INTO vals VALUES (2, 9e999, '', x'', -9223372036854775808, 1.5)]],
        [[INSERT INTO vals VALUES (3, -9e999, '0.5', NULL, 0, 3.0)]],
        [[INSERT INTO vals VALUES (4, 1e300, 'x', x'DEADBEEF', 42, 'text')]],
        [[INSERT INTO vals VALUES (5, 2, '', NULL, NULL, x'00')]])
      assert.are.same({
        [[{"id":{"id":1},"x":{"r":0.30000000000000004,"t":"q\"\\/\u0001\n","b":"\\x00ff10","i":9007199254740993,"n":null}}]],
        [[{"id":{"id":2},"x":{"r":"Infinity","t":"","b":"\\x","i":-9223372036854775808,"n":1.5}}]],
        [[{"id":{"id":3},"x":{"r":"-Infinity","t":"0.5","b":null,"i":0,"n":3.0}}]],
        [[{"id":{"id":4},"x":{"r":1.0e+300,"t":"x","b":"\\xdeadbeef","i":42,"n":"text"}}]],
        [[{"id":{"id":5},"x":{"r":2.0,"t":"","b":null,"i":null,"n":"\\x00"}}]],
      }, payloads(n))
      assert.is_true(H.run_until(function() return #got == 5 end))
      -- the double read back is the double written
      assert.are.equal(0.1 + 0.2, got[1].extra_columns.r)
      assert.are.equal(1e300, got[4].extra_columns.r)
      assert.are.equal(9007199254740993, got[1].extra_columns.i)
      assert.are.equal(math.mininteger, got[2].extra_columns.i)
      assert.are.equal('q"\\/\1\n', got[1].extra_columns.t)
    end)

    it("sends \"id\":{} for an INSERT watch on a table without any key", function()
      local path = fresh_db()
      local n = notifier(path)
      exec(n, "CREATE TABLE journal (at INTEGER, what TEXT)")
      assert.are.equal("created", n._h:install(raw_watch{ table = "journal", op = "insert", pk = {},
        extra = { "at", "what" } }, true))
      exec(n, "INSERT INTO journal VALUES (1, 'a')", "INSERT INTO journal VALUES (NULL, NULL)")
      assert.are.same({ [[{"id":{},"x":{"at":1,"what":"a"}}]], [[{"id":{},"x":{"at":null,"what":null}}]] },
        payloads(n))
    end)

    it("never installs a trigger naming a column the table does not have (it would fail every write)", function()
      local path = fresh_db()
      local n = notifier(path)
      exec(n, "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)")
      -- a key column it cannot do without: refused
      local ok, err = n._h:install(raw_watch{ table = "t", op = "insert", pk = { "nope" }, extra = { "a" } }, true)
      assert.is_nil(ok)
      assert.are.equal('sqlnotify: cannot install the insert trigger on table "t" in SQLite database "'
        .. path .. '": no such column: "nope"', err)
      assert.are.same({}, trigger_names(n))
      -- another column (renamed or dropped since the watch was declared): left out
      assert.are.equal("created", n._h:install(raw_watch{ table = "t", op = "insert", extra = { "a", "nope" } }, true))
      exec(n, "INSERT INTO t VALUES (1, 'x')")
      assert.are.same({ [[{"id":{"id":1},"x":{"a":"x"}}]] }, payloads(n))
    end)
  end)

  describe("old values and old keys (issue 12)", function()
    local n

    before_each(function()
      n = notifier(fresh_db())
      exec(n, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, plan TEXT, name TEXT)",
        "CREATE TABLE pairs (a INTEGER, b TEXT COLLATE NOCASE, v INTEGER, PRIMARY KEY (a, b))",
        "INSERT INTO users VALUES (1, 'a@x', NULL, 'n')", "INSERT INTO pairs VALUES (1, 'k', 0)")
    end)

    it("sends the OLD values of old columns in \"o\", only on a real change of a trigger column", function()
      assert.are.equal("created", n._h:install(raw_watch{ table = "users", op = "update", extra = { "email" },
        old = { "email", "plan" }, trigger = { "email", "plan" } }, true))
      exec(n,
        "UPDATE users SET email = 'b@x' WHERE id = 1",  -- fires
        "UPDATE users SET name = 'm' WHERE id = 1",     -- not a trigger column
        "UPDATE users SET plan = NULL WHERE id = 1",    -- NULL to NULL: no change
        "UPDATE users SET plan = 'pro' WHERE id = 1",   -- NULL to a value: fires
        "UPDATE users SET email = 'b@x', plan = 'pro' WHERE id = 1", -- same values
        "UPDATE users SET plan = NULL, email = 'B@x' WHERE id = 1")  -- value to NULL, case change
      assert.are.same({
        [[{"id":{"id":1},"x":{"email":"b@x"},"o":{"email":"a@x","plan":null}}]],
        [[{"id":{"id":1},"x":{"email":"b@x"},"o":{"email":"b@x","plan":null}}]],
        [[{"id":{"id":1},"x":{"email":"B@x"},"o":{"email":"b@x","plan":"pro"}}]],
      }, payloads(n))
    end)

    it("adds \"oid\" with the OLD key when an UPDATE changes the key, and only then", function()
      assert.are.equal("created", n._h:install(raw_watch{ table = "users", op = "update", old = { "plan" } }, true))
      assert.are.equal("created", n._h:install(raw_watch{ table = "pairs", op = "update", pk = { "a", "b" },
        extra = { "v" } }, true))
      exec(n,
        "UPDATE users SET plan = 'free' WHERE id = 1",
        "UPDATE users SET id = 2, plan = 'pro' WHERE id = 1",
        "UPDATE pairs SET v = 1",
        "UPDATE pairs SET b = 'K'",   -- equal under NOCASE, a change all the same
        "UPDATE pairs SET a = 2, v = 2")
      assert.are.same({
        [[{"id":{"id":1},"o":{"plan":null}}]],
        [[{"id":{"id":2},"o":{"plan":"free"},"oid":{"id":1}}]],
        [[{"id":{"a":1,"b":"k"},"x":{"v":1}}]],
        [[{"id":{"a":1,"b":"K"},"x":{"v":1},"oid":{"a":1,"b":"k"}}]],
        [[{"id":{"a":2,"b":"K"},"x":{"v":2},"oid":{"a":1,"b":"K"}}]],
      }, payloads(n))
    end)

    it("keeps old columns out of INSERT and DELETE triggers", function()
      assert.are.equal("created", n._h:install(raw_watch{ table = "users", op = "delete", extra = { "email" },
        old = { "plan" } }, true))
      exec(n, "DELETE FROM users")
      assert.are.same({ [[{"id":{"id":1},"x":{"email":"a@x"}}]] }, payloads(n))
    end)
  end)

  describe("trigger names and labels (issue 10 defect 4c, issue 16 item 12)", function()
    local path, n

    before_each(function()
      path = fresh_db()
      n = notifier(path)
      exec(n, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)",
        [[CREATE TABLE "Odd ""name"" é" (id INTEGER PRIMARY KEY)]])
    end)

    it("names triggers sqlnotify_<table>_<op>_<12 hex>, distinct per label", function()
      n:watch("users", "insert"):watch("users", "insert", { channel_label = "signups" })
       :watch([[Odd "name" é]], "delete")
      assert(n:start())
      local names = trigger_names(n)
      assert.are.equal(3, #names)
      -- one rule on every dialect (sn_trigger_name): other bytes become '_', non-ASCII stays
      assert.matches("^sqlnotify_Odd__name__é_delete_%x%x%x%x%x%x%x%x%x%x%x%x$", names[1])
      assert.matches("^sqlnotify_users_insert_%x%x%x%x%x%x%x%x%x%x%x%x$", names[2])
      assert.matches("^sqlnotify_users_insert_%x%x%x%x%x%x%x%x%x%x%x%x$", names[3])
      local long = string.rep("t", 80)
      exec(n, 'CREATE TABLE "' .. long .. '" (id INTEGER PRIMARY KEY)')
      n:watch(long, "update")
      local name = trigger_names(n)[2] -- "t..." sorts before "users"
      assert.are.equal("sqlnotify_" .. string.rep("t", 33) .. "_update_", name:sub(1, 51))
      assert.are.equal(63, #name)
    end)

    it("refuses a label another table's watch already uses, and leaves that watch alone", function()
      local got = {}
      n:watch("users", "insert", { channel_label = "shared" })
      n:subscribe("users", "insert", { channel_label = "shared" }, function(ev) got[#got + 1] = ev.id end)
      assert(n:start())
      for _, case in ipairs { { "orders", "insert" }, { "users", "delete" } } do
        local m = notifier(path)
        m:watch(case[1], case[2], { channel_label = "shared" })
        local ok, err = m:start()
        assert.is_nil(ok)
        assert.are.equal('sqlnotify: channel "sqlnotify_shared" is already used by the insert watch on '
          .. '"main"."users"; give this watch its own channel_label', err)
      end
      assert.are.equal(1, #trigger_names(n))
      exec(n, "INSERT INTO users (id) VALUES (7)", "INSERT INTO orders (id) VALUES (8)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.same({ 7 }, got)
    end)

    it("replaces an install of the older naming (sqlnotify_<16 hex>) found by its marker", function()
      local old = "sqlnotify_" .. core.hash("sqlnotify_main_users_insert")
      exec(n, 'CREATE TRIGGER "' .. old .. [[" AFTER INSERT ON "users" FOR EACH ROW BEGIN /* sqlnotify:1:abc */ ]]
        .. [[INSERT INTO sqlnotify_changes (channel, payload) VALUES ('sqlnotify_main_users_insert', ]]
        .. [[json_object('id', json_object('id', NEW."id"), 'x', json_object())); END]])
      -- the same label on another table, from the older naming: refused as well
      local old_orders = "sqlnotify_" .. core.hash("sqlnotify_totals")
      exec(n, 'CREATE TRIGGER "' .. old_orders .. [[" AFTER UPDATE ON "orders" FOR EACH ROW BEGIN ]]
        .. [[/* sqlnotify:1:def */ INSERT INTO sqlnotify_changes (channel, payload) VALUES ('sqlnotify_totals', ]]
        .. [[json_object('id', json_object('id', NEW."id"), 'x', json_object())); END]])
      n:watch("users", "insert")
      assert(n:start())
      local names = trigger_names(n)
      assert.are.equal(2, #names)
      assert.are.equal(old_orders, names[1])
      assert.matches("^sqlnotify_users_insert_%x+$", names[2])
      exec(n, "INSERT INTO users (id) VALUES (1)")
      assert.are.same({ [[{"id":{"id":1}}]] }, payloads(n)) -- one row: the old trigger is gone
      local m = notifier(path)
      m:watch("users", "insert", { channel_label = "totals" })
      local ok, err = m:start()
      assert.is_nil(ok)
      assert.are.equal('sqlnotify: channel "sqlnotify_totals" is already used by the update watch on '
        .. '"main"."orders"; give this watch its own channel_label', err)
      -- list shows it for what it is, drop removes it
      local rows = assert(n._h:list())
      assert.are.same({ "main", "orders", "update", "sqlnotify_totals", old_orders, nil,
        "(made by an older sqlnotify)", nil }, rows[1])
      assert.are.equal(1, n._h:drop(nil, "orders"))
    end)
  end)

  describe("list, drop and verify (issue 16 item 12)", function()
    it("lists every sqlnotify trigger, verifies a watch's own, drops by table or all", function()
      local path = fresh_db()
      local n = notifier(path)
      exec(n, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, plan TEXT)",
        "CREATE TABLE order_items (order_id INTEGER, item_id INTEGER, qty INTEGER, PRIMARY KEY (order_id, item_id))",
        "CREATE TRIGGER users_own AFTER INSERT ON users BEGIN SELECT 1; END")
      local before = os.time()
      local ins = raw_watch{ table = "users", op = "insert", extra = { "email", "plan" } }
      local upd = raw_watch{ table = "users", op = "update", extra = { "email" }, trigger = { "plan" }, old = { "plan" } }
      local del = raw_watch{ table = "order_items", op = "delete", pk = { "order_id", "item_id" }, label = "gone" }
      for _, w in ipairs { ins, upd, del } do assert.are.equal("created", n._h:install(w, true)) end
      local rows = assert(n._h:list())
      assert.are.equal(3, #rows)
      local names = {}
      for i, r in ipairs(rows) do
        names[i] = r[5]
        local y, mo, d, h, mi, s = r[8]:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
        local t = os.time{ year = y, month = mo, day = d, hour = h, min = mi, sec = s, isdst = false }
          - os.time{ year = 1970, month = 1, day = 1, hour = 0, isdst = false }
        assert.is_true(t >= before - 1 and t <= os.time() + 1, "installed " .. r[8])
        r[5], r[8] = nil, nil
      end
      assert.are.same({
        { "main", "order_items", "delete", "sqlnotify_gone", nil, nil, "order_id, item_id" },
        { "main", "users", "insert", "sqlnotify_main_users_insert", nil, nil, "id | x: email, plan" },
        { "main", "users", "update", "sqlnotify_main_users_update", nil, nil, "id | x: email | when: plan | old: plan" },
      }, rows)
      assert.matches("^sqlnotify_order_items_delete_%x+$", names[1])
      for _, w in ipairs { ins, upd, del } do assert.is_true(n._h:verify(w)) end
      -- another process's different watch took the trigger over: verify says so
      local other = raw_watch{ table = "users", op = "insert", extra = { "email" } }
      assert.are.equal("replaced", notifier(path)._h:install(other, true))
      assert.is_false(n._h:verify(ins))
      assert.is_true(n._h:verify(other))
      -- dropped by hand: verify says so
      exec(n, 'DROP TRIGGER "' .. names[1] .. '"')
      assert.is_false(n._h:verify(del))
      assert.are.equal(0, n._h:drop("other", "users"))
      assert.are.equal(2, n._h:drop(nil, "users"))
      assert.are.same({ "users_own" }, trigger_names(n))
      assert.are.equal("created", n._h:install(del, true))
      assert.are.equal(1, n._h:drop())
      assert.are.same({ "users_own" }, trigger_names(n))
      assert.are.same({}, assert(n._h:list()))
    end)
  end)

  describe("describe (issue 16 item 8)", function()
    it("reports a view as such, and unique indexes without a WHERE clause or expressions as keys", function()
      local n = notifier(fresh_db())
      exec(n, "CREATE TABLE t (id INTEGER, email TEXT, a INTEGER, b INTEGER, c TEXT)",
        "CREATE UNIQUE INDEX t_email ON t (email)",
        "CREATE UNIQUE INDEX t_ab ON t (b, a)",
        "CREATE UNIQUE INDEX t_partial ON t (c) WHERE c IS NOT NULL",
        "CREATE UNIQUE INDEX t_expr ON t (lower(c))",
        "CREATE INDEX t_plain ON t (id)",
        "CREATE VIEW v AS SELECT id, email FROM t")
      assert.are.same({ { "table", "main", "v", "view", "loose" }, { "column", "id", "INTEGER", "1", "integer" },
        { "column", "email", "TEXT", "2", "text" } }, assert(n._h:describe(nil, "v")))
      local uniques = {}
      for _, r in ipairs(assert(n._h:describe(nil, "t"))) do
        if r[1] == "unique" then uniques[#uniques + 1] = table.concat(r, " ") end
      end
      -- each column of these keys can hold NULL: such a key cannot order a backfill
      assert.are.same({ "unique b t_ab 1 nullable", "unique a t_ab 2 nullable", "unique email t_email 1 nullable" },
        uniques)
      assert.are.same({ "table", "main", "t", nil, "loose" }, assert(n._h:describe(nil, "t"))[1])
      -- a unique index is a key for a watch
      local got = {}
      n:watch("t", "insert", { primary_keys = { "email" }, extra_columns = { "a" } })
      n:subscribe("t", "insert", function(ev) got[#got + 1] = ev end)
      assert(n:start())
      exec(n, "INSERT INTO t (email, a) VALUES ('e@x', 5)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ "e@x", { a = 5 } }, { got[1].id, got[1].extra_columns })
    end)
  end)

  describe("readers and pruning (issue 10 defect 2)", function()
    local function readers(n)
      return assert(n:query("SELECT id, position, heartbeat, pid FROM sqlnotify_readers ORDER BY since"))
    end

    local function count(n)
      return assert(n:query("SELECT count(*) AS c FROM sqlnotify_changes"))[1].c
    end

    -- Wait until the host's reader row has a heartbeat past t, then for one more: the
    -- prune of the tick that wrote the first has finished by then.
    local function two_ticks_after(n, pid, t)
      local function hb()
        for _, r in ipairs(readers(n)) do
          if r.pid == pid then return r.heartbeat end
        end
        return 0
      end
      wait_until(function() return hb() > t end, "a heartbeat")
      local first = hb()
      wait_until(function() return hb() > first end, "another heartbeat")
    end

    it("keeps its row with position and heartbeat while listening, and removes it on stop", function()
      local path = items_file()
      local n = notifier(path)
      n:watch("items", "insert")
      assert.are.same({}, assert(n:query("SELECT * FROM sqlnotify_readers")))
      assert(n:start())
      n:stop()
      cli(path, "INSERT INTO items VALUES (1, 'a', 1);") -- row 1 of the log
      local t0 = sqlnotify.now()
      assert(n:start())
      local rows = readers(n)
      assert.are.equal(1, #rows)
      assert.are.equal(1, rows[1].position)
      assert.is_true(rows[1].heartbeat >= t0 - 1 and rows[1].heartbeat <= sqlnotify.now() + 1)
      assert.are.equal(tonumber(H.slurp("/proc/self/stat"):match("^%d+")), rows[1].pid)
      n:stop()
      assert.are.same({}, readers(n))
    end)

    it("never prunes rows a slower reader has not read; prunes them once it is gone", function()
      local path = items_file()
      local fast = host(path, 0.05)
      local pid = tonumber(fast.pid)
      local n = notifier(path)
      cli(path, "INSERT INTO items VALUES (1, 'alone', 1);")
      assert.are.equal("ready\ninsert 1 [name=alone qty=1]\n", wait_lines(fast, 2))
      wait_until(function() return count(n) == 0 end, "the fast reader to prune row 1")

      local got = {}
      n:watch("items", "insert", { extra_columns = { "name", "qty" } }) -- the same watch: one trigger
      n:subscribe("items", "insert", function(ev) got[#got + 1] = line_of(ev) end)
      assert(n:start()) -- registered at the log's end; its loop does not run below
      cli(path, "INSERT INTO items VALUES (2, 'b', 2); INSERT INTO items VALUES (3, 'c', 3);\n"
        .. "INSERT INTO items VALUES (4, 'd', 4);")
      assert.are.equal("ready\ninsert 1 [name=alone qty=1]\ninsert 2 [name=b qty=2]\n"
        .. "insert 3 [name=c qty=3]\ninsert 4 [name=d qty=4]\n", wait_lines(fast, 5))
      local newest = assert(n:query("SELECT max(created_at) AS t FROM sqlnotify_changes"))[1].t
      two_ticks_after(n, pid, newest + 0.2)
      assert.are.equal(3, count(n)) -- past the fast one's retention, but not read by the slow one

      assert.is_true(H.run_until(function() return #got == 3 end))
      assert.are.same({ "insert 2 [name=b qty=2]", "insert 3 [name=c qty=3]", "insert 4 [name=d qty=4]" }, got)
      n:stop()
      wait_until(function() return count(n) == 0 end, "the fast reader to prune rows 2 to 4")
      fast:stop()
      assert.are.same({}, readers(n))
    end)

    it("stops holding rows back for a reader silent past its timeout, and says so", function()
      local path = items_file()
      local fast = host(path, 0.05)
      local n = notifier(path)
      cli(path, "INSERT INTO sqlnotify_readers (id, position, heartbeat, timeout, pid) "
        .. "VALUES (99, 0, (julianday('now') - 2440587.5) * 86400.0, 600, 4242);\n"
        .. "INSERT INTO items VALUES (1, 'a', 1);")
      wait_lines(fast, 2)
      local newest = assert(n:query("SELECT max(created_at) AS t FROM sqlnotify_changes"))[1].t
      two_ticks_after(n, tonumber(fast.pid), newest + 0.2)
      assert.are.equal(1, count(n)) -- reader 99 has not read it
      cli(path, "UPDATE sqlnotify_readers SET heartbeat = heartbeat - 1000 WHERE id = 99;")
      wait_until(function() return count(n) == 0 end, "row 1 to be pruned")
      wait_until(function() return #readers(n) == 1 end, "reader 99 to be forgotten")
      local seen = false
      for _, l in ipairs(log_lines(fast)) do
        if l:match('^info  sqlnotify: reader 99 %(pid 4242%) of SQLite database "' .. path:gsub("%p", "%%%0")
            .. '" sent no heartbeat for 100%d s: it no longer holds back the change log$') then
          seen = true
        end
      end
      assert.is_true(seen, fast:stderr())
      fast:stop()
    end)

    it("logs the range of rows removed before it read them, at error level", function()
      local path = items_file()
      local p = host(path)
      cli(path, table.concat({
        "BEGIN;",
        "INSERT INTO items VALUES (1, 'a', 1); INSERT INTO items VALUES (2, 'b', 2);",
        "INSERT INTO items VALUES (3, 'c', 3); INSERT INTO items VALUES (4, 'd', 4);",
        "INSERT INTO items VALUES (5, 'e', 5);",
        "DELETE FROM sqlnotify_changes WHERE seq BETWEEN 2 AND 4;",
        "COMMIT;",
      }, "\n"))
      assert.are.equal("ready\ninsert 1 [name=a qty=1]\ninsert 5 [name=e qty=5]\n", wait_lines(p, 3))
      cli(path, "BEGIN; INSERT INTO items VALUES (6, 'f', 6); INSERT INTO items VALUES (7, 'g', 7);\n"
        .. "DELETE FROM sqlnotify_changes WHERE seq = 6; COMMIT;")
      assert.are.equal("ready\ninsert 1 [name=a qty=1]\ninsert 5 [name=e qty=5]\ninsert 7 [name=g qty=7]\n",
        wait_lines(p, 4))
      local errors = {}
      for _, l in ipairs(log_lines(p)) do
        if l:match("^error") then errors[#errors + 1] = l end
      end
      assert.are.same({
        'error sqlnotify: events lost: rows 2 to 4 of the change log of SQLite database "' .. path
          .. '" were removed before this reader read them',
        'error sqlnotify: events lost: row 6 of the change log of SQLite database "' .. path
          .. '" was removed before this reader read it',
      }, errors)
      p:stop()
    end)
  end)

  describe("a database file replaced under a watcher (issue 10 defect 7)", function()
    it("notices the new inode, says so, reopens, and delivers what is written to the new file", function()
      local path = items_file("delete")
      local p = host(path)
      cli(path, "INSERT INTO items VALUES (1, 'old file', 1);")
      assert.are.equal("ready\ninsert 1 [name=old file qty=1]\n", wait_lines(p, 2))
      -- the copy gets a row of its own before it takes the name: read at once after the reopen
      assert(H.sh("cp " .. q(path) .. " " .. q(path .. ".new")))
      cli(path .. ".new", "INSERT INTO items VALUES (2, 'copy', 2);")
      assert(H.sh("mv " .. q(path .. ".new") .. " " .. q(path)))
      assert.are.equal("ready\ninsert 1 [name=old file qty=1]\nreconnected 0.0 true\ninsert 2 [name=copy qty=2]\n",
        wait_lines(p, 4))
      cli(path, "INSERT INTO items VALUES (3, 'new file', 3); UPDATE items SET qty = 4 WHERE id = 1;")
      assert.are.equal("ready\ninsert 1 [name=old file qty=1]\nreconnected 0.0 true\ninsert 2 [name=copy qty=2]\n"
        .. "insert 3 [name=new file qty=3]\nupdate 1 [qty=4]\n", wait_lines(p, 6))
      assert.is_true(has_line(p, 'warn  sqlnotify: SQLite database "' .. path
        .. '" was replaced by another file (its inode changed); reopening it'), p:stderr())
      -- the reader registered itself in the new file
      assert.are.equal(tonumber(p.pid) .. "\n", cli(path, "SELECT pid FROM sqlnotify_readers;"))
      p:stop()
    end)
  end)

  describe("schema changes under the triggers (issue 10 defect 8)", function()
    it("stops sending a renamed watched column under its old name, and says so", function()
      local path = items_file()
      local p = host(path, nil, 0.2)
      cli(path, "ALTER TABLE items RENAME COLUMN qty TO amount;")
      -- the driver makes the triggers again at once; the runtime (spec 27) names the column
      local want = {
        'info  sqlnotify: the insert trigger on table "items" (channel sqlnotify_main_items_insert) was '
          .. 'regenerated after a schema change without column(s) "qty", which the table no longer has',
        'info  sqlnotify: the update trigger on table "items" (channel sqlnotify_main_items_update) was '
          .. 'regenerated after a schema change without column(s) "qty", which the table no longer has; with no '
          .. "trigger column left, it fires no more",
        'error sqlnotify: column "qty" of "main"."items" is gone (renamed or dropped): the insert watch\'s events '
          .. "carry the other columns",
        'error sqlnotify: column "qty" of "main"."items" is gone (renamed or dropped): the update watch\'s events '
          .. "carry the other columns; with no trigger column left it fires no more",
      }
      wait_until(function()
        for _, l in ipairs(want) do if not has_line(p, l) then return false end end
        return true
      end, function() return "the repair: " .. p:stderr() end)
      cli(path, "INSERT INTO items VALUES (1, 'one', 5); UPDATE items SET amount = 6;")
      assert.are.equal("ready\ninsert 1 [name=one]\n", wait_lines(p, 2))
      assert.are.equal('{"id":{"id":1},"x":{"name":"one"}}\n', cli(path, "SELECT payload FROM sqlnotify_changes;"))
      -- a new column of the old name is the one carried from now on
      cli(path, "ALTER TABLE items ADD COLUMN qty INTEGER;")
      wait_until(function()
        return cli(path, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%NEW.\"qty\"%';")
          == "2\n"
      end, "the triggers to carry qty again")
      cli(path, "INSERT INTO items (id, name, amount, qty) VALUES (2, 'two', 7, 8); UPDATE items SET qty = 9 WHERE id = 2;")
      assert.are.equal("ready\ninsert 1 [name=one]\ninsert 2 [name=two qty=8]\nupdate 2 [qty=9]\n", wait_lines(p, 4))
      wait_until(function()
        return has_line(p, 'info  sqlnotify: column "qty" of "main"."items" is back: the insert watch carries it again')
          and has_line(p, 'info  sqlnotify: column "qty" of "main"."items" is back: the update watch carries it again')
      end, function() return "the runtime to see qty back: " .. p:stderr() end)
      p:stop()
    end)

    it("leaves a DROP COLUMN of a watched column to SQLite, which refuses it until the triggers are dropped", function()
      local n = notifier(fresh_db())
      exec(n, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, note TEXT)")
      n:watch("items", "update", { extra_columns = { "qty" } })
      assert(n:start())
      local ok, err = n:query("ALTER TABLE items DROP COLUMN qty")
      assert.is_nil(ok)
      assert.matches('^sqlnotify: error in trigger sqlnotify_items_update_%x+ after drop column: no such column: NEW.qty$',
        err)
      exec(n, "ALTER TABLE items DROP COLUMN note") -- an unwatched column goes
      exec(n, "INSERT INTO items (id, qty) VALUES (1, 2)", "UPDATE items SET qty = 3")
      assert.are.equal(1, n._h:drop(nil, "items"))
      exec(n, "ALTER TABLE items DROP COLUMN qty", "UPDATE items SET name = 'x'")
      assert.are.same({ [[{"id":{"id":1},"x":{"qty":3}}]] }, payloads(n))
    end)

    it("makes a dropped sqlnotify_changes again at once, continuing its seq, and delivers on", function()
      local path = items_file()
      local p = host(path)
      cli(path, "INSERT INTO items VALUES (1, 'a', 1); INSERT INTO items VALUES (2, 'b', 2);")
      assert.are.equal("ready\ninsert 1 [name=a qty=1]\ninsert 2 [name=b qty=2]\n", wait_lines(p, 3))
      cli(path, "DROP TABLE sqlnotify_changes;")
      local want = 'warn  sqlnotify: the change log table sqlnotify_changes of SQLite database "' .. path
        .. '" was dropped; created it again (writes to watched tables failed while it was missing)'
      wait_until(function() return has_line(p, want) end,
        function() return "the change log to be made again: " .. p:stderr() end)
      cli(path, "INSERT INTO items VALUES (3, 'c', 3);")
      assert.are.equal("ready\ninsert 1 [name=a qty=1]\ninsert 2 [name=b qty=2]\ninsert 3 [name=c qty=3]\n",
        wait_lines(p, 4))
      assert.are.equal("3\n", cli(path, "SELECT seq FROM sqlnotify_changes;"))
      p:stop()
      for _, l in ipairs(log_lines(p)) do assert.is_nil(l:match("^error"), p:stderr()) end
    end)
  end)
end)
