-- SQLite through other processes: writes made by the sqlite3 CLI reach handlers exactly
-- and in order, on a WAL file and on a rollback-journal file; two sqlnotify-lua
-- watchers on one file each get every event; a late watcher starts at the end of the
-- log; a writer holding the lock delays events and loses none; hundreds of rows from
-- concurrent writers arrive exactly once, in commit order. One SQLite file per test.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local q = H.shell_quote

local function fresh_db() return H.fresh_sqlite("proc05") end

local cli = H.sqlite_cli

-- The same in the background; returns a function that tells whether it finished (and
-- raises if it failed).
local function cli_bg(path, sql)
  local file, out, rc = H.tmpfile(".sql"), H.tmpfile(".out"), H.tmpfile(".rc")
  H.spit(file, ".timeout 5000\n.bail on\n" .. sql .. "\n")
  assert(H.sh("(sqlite3 " .. q(path) .. " <" .. q(file) .. " >" .. q(out) .. " 2>&1; echo $? >" .. q(rc)
    .. ") >/dev/null 2>&1 </dev/null &"))
  return function()
    local code = H.slurp(rc):match("%d+")
    if code and code ~= "0" then error("sqlite3 failed: " .. H.slurp(out), 2) end
    return code ~= nil
  end
end

local function wait_done(done, timeout)
  local deadline = H.now() + (timeout or 20)
  while not done() do
    assert(H.now() < deadline, "the writer did not finish")
    H.sleep(0.01)
  end
end

local function setup_file(mode)
  local path = fresh_db()
  assert.are.equal(mode .. "\n", cli(path, "PRAGMA journal_mode = " .. mode .. ";\n"
    .. "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);"))
  return path
end

local function line(ev)
  local keys = {}
  for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
  return string.format("%s %s.%s %s [%s]", ev.operation, ev.schema, ev.table, tostring(ev.id), table.concat(keys, " "))
end

-- A watcher script for the real binary: prints every event of items as a line.
local WATCHER = [==[
  local sqlnotify = require("sqlnotify")
  local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], use_logger = true })
  local function show(ev)
    local keys = {}
    for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
    print(string.format("%s %s.%s %s [%s]", ev.operation, ev.schema, ev.table, tostring(ev.id),
      table.concat(keys, " ")))
  end
  n:watch("items", "insert", { extra_columns = { "name", "qty" } })
   :watch("items", "update", { extra_columns = { "qty" }, trigger_columns = { "qty" } })
   :watch("items", "delete", { extra_columns = { "name" } })
  for _, op in ipairs { "insert", "update", "delete" } do n:subscribe("items", op, show) end
  sqlnotify.after(0, function() print("ready") end)
]==]

local function count_lines(s)
  return select(2, s:gsub("\n", ""))
end

-- Wait until the process printed at least k lines; then a little longer to see that no
-- more come.
local function wait_lines(p, k, timeout)
  local deadline = H.now() + (timeout or 20)
  while count_lines(p:stdout()) < k and not p:exited() and H.now() < deadline do H.sleep(0.01) end
  H.sleep(0.3)
  return p:stdout()
end

local WRITES = [[
INSERT INTO items VALUES (1, 'one', 1);
BEGIN;
INSERT INTO items VALUES (2, 'two', 2);
INSERT INTO items VALUES (3, 'three', 3);
UPDATE items SET qty = 20 WHERE id = 2;
COMMIT;
UPDATE items SET name = 'uno' WHERE id = 1;
UPDATE items SET qty = qty + 100;
BEGIN;
INSERT INTO items VALUES (4, 'rolled back', 4);
ROLLBACK;
DELETE FROM items WHERE id = 2;
INSERT INTO items VALUES (5, 'it''s "five"', NULL);
DELETE FROM items WHERE id IN (1, 3);
]]

local EXPECTED = {
  "insert main.items 1 [name=one qty=1]",
  "insert main.items 2 [name=two qty=2]",
  "insert main.items 3 [name=three qty=3]",
  "update main.items 2 [qty=20]",
  "update main.items 1 [qty=101]",
  "update main.items 2 [qty=120]",
  "update main.items 3 [qty=103]",
  "delete main.items 2 [name=two]",
  "insert main.items 5 [name=it's \"five\"]",
  "delete main.items 1 [name=uno]",
  "delete main.items 3 [name=three]",
}

describe("sqlnotify on SQLite across processes", function()
  local notifiers, procs = {}, {}

  local function notifier(path)
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path,
      use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil })
    notifiers[#notifiers + 1] = n
    return n
  end

  local function host(path)
    local p = H.host(WATCHER, { path })
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

  for _, mode in ipairs { "wal", "delete" } do
    describe("in " .. mode .. " journal mode", function()
      it("delivers inserts, updates and deletes made by the sqlite3 CLI exactly and in order", function()
        local path = setup_file(mode)
        local n = notifier(path)
        assert.are.same({ { journal_mode = mode } }, assert(n:query("PRAGMA journal_mode")))
        local got = {}
        local function handler(ev) got[#got + 1] = ev end
        n:watch("items", "insert", { extra_columns = { "name", "qty" } })
         :watch("items", "update", { extra_columns = { "qty" }, trigger_columns = { "qty" } })
         :watch("items", "delete", { extra_columns = { "name" } })
        for _, op in ipairs { "insert", "update", "delete" } do n:subscribe("items", op, handler) end
        assert(n:start())
        local t0 = sqlnotify.now()
        local done = cli_bg(path, WRITES) -- while the loop runs
        assert.is_true(H.run_until(function() return #got >= #EXPECTED end, 15))
        wait_done(done)
        H.run_for(0.3)
        local lines = {}
        for i, ev in ipairs(got) do
          lines[i] = line(ev)
          assert.are.equal("sqlnotify_main_items_" .. ev.operation, ev.channel)
          assert.is_false(ev.truncated)
          assert.is_true(ev.timestamp >= t0 and ev.timestamp <= sqlnotify.now())
        end
        assert.are.same(EXPECTED, lines)
      end)

      it("delivers every event to each of two sqlnotify-lua watchers on one file", function()
        local path = setup_file(mode)
        local a, b = host(path), host(path)
        cli(path, WRITES)
        local want = "ready\n" .. table.concat(EXPECTED, "\n") .. "\n"
        assert.are.equal(want, wait_lines(a, 1 + #EXPECTED), a:stderr())
        assert.are.equal(want, wait_lines(b, 1 + #EXPECTED), b:stderr())
        a:stop()
        b:stop()
        assert.is_nil(a:stderr():find("error", 1, true), a:stderr())
        assert.is_nil(b:stderr():find("error", 1, true), b:stderr())
      end)

      it("starts a late watcher at the end of the log", function()
        local path = setup_file(mode)
        local early = host(path)
        cli(path, "INSERT INTO items VALUES (1, 'before', 1); INSERT INTO items VALUES (2, 'before', 2);")
        assert.are.equal("ready\ninsert main.items 1 [name=before qty=1]\ninsert main.items 2 [name=before qty=2]\n",
          wait_lines(early, 3))
        local late = host(path)
        cli(path, "INSERT INTO items VALUES (3, 'after', 3); DELETE FROM items WHERE id = 1;")
        assert.are.equal(table.concat({
          "ready",
          "insert main.items 1 [name=before qty=1]",
          "insert main.items 2 [name=before qty=2]",
          "insert main.items 3 [name=after qty=3]",
          "delete main.items 1 [name=before]",
        }, "\n") .. "\n", wait_lines(early, 5))
        assert.are.equal("ready\ninsert main.items 3 [name=after qty=3]\ndelete main.items 1 [name=before]\n",
          wait_lines(late, 3))
        early:stop()
        late:stop()
      end)

      it("waits for a writer holding the database locked, and loses nothing", function()
        local path = setup_file(mode)
        local n = notifier(path)
        local got = {}
        n:watch("items", "insert", { extra_columns = { "name" } })
        n:subscribe("items", "insert", function(ev) got[#got + 1] = ev end)
        assert(n:start())
        local released = H.tmpfile(".released")
        -- row 1 commits at once; rows 2 and 3 wait in a transaction that holds the
        -- exclusive lock for a second (in rollback-journal mode readers are locked out
        -- too); the release time is written just before COMMIT
        local done = cli_bg(path, table.concat({
          "INSERT INTO items (id, name) VALUES (1, 'free');",
          "BEGIN EXCLUSIVE;",
          "INSERT INTO items (id, name) VALUES (2, 'locked');",
          "INSERT INTO items (id, name) VALUES (3, 'locked');",
          ".system sleep 1",
          ".system date +%s.%N >" .. q(released),
          "COMMIT;",
          "INSERT INTO items (id, name) VALUES (4, 'after');",
        }, "\n"))
        assert.is_true(H.run_until(function() return #got >= 4 end, 20))
        wait_done(done)
        H.run_for(0.2)
        local ids = {}
        for i, ev in ipairs(got) do ids[i] = ev.id .. ":" .. ev.extra_columns.name end
        assert.are.same({ "1:free", "2:locked", "3:locked", "4:after" }, ids)
        local release = tonumber(H.slurp(released):match("[%d.]+"))
        assert.is_not_nil(release)
        for i = 2, 4 do
          assert.is_true(got[i].timestamp >= release, "event " .. i .. " before the lock was released")
        end
      end)

      it("never holds off another process's write while a handler runs", function()
        local path = setup_file(mode)
        local n = notifier(path)
        local got = {}
        n:watch("items", "insert")
        n:subscribe("items", "insert", function(ev)
          got[#got + 1] = ev.id
          if ev.id == 1 then
            -- inside the handler: a writer with no busy timeout at all must not find the file locked
            local ok = H.sh("sqlite3 " .. q(path) .. " 'INSERT INTO items (id) VALUES (2)' >/dev/null 2>&1")
            got[#got + 1] = ok and "write ok" or "write failed"
          end
        end)
        assert(n:start())
        cli(path, "INSERT INTO items (id) VALUES (1);")
        assert.is_true(H.run_until(function() return #got >= 3 end, 10))
        H.run_for(0.2)
        assert.are.same({ 1, "write ok", 2 }, got)
      end)
    end)
  end

  -- TRUNCATE and PERSIST keep the journal file (no delete to wake on); a file switched
  -- to WAL after the watcher started gets its -wal only then.
  for _, mode in ipairs { "truncate", "persist", "delete then wal" } do
    it("delivers the CLI's writes exactly and in order in " .. mode .. " journal mode", function()
      local first, second = mode:match("^(%a+) then (%a+)$")
      local path = setup_file(first or mode)
      local n = notifier(path)
      local got = {}
      local function handler(ev) got[#got + 1] = line(ev) end
      n:watch("items", "insert", { extra_columns = { "name", "qty" } })
       :watch("items", "update", { extra_columns = { "qty" }, trigger_columns = { "qty" } })
       :watch("items", "delete", { extra_columns = { "name" } })
      for _, op in ipairs { "insert", "update", "delete" } do n:subscribe("items", op, handler) end
      assert(n:start())
      if second then assert.are.equal(second .. "\n", cli(path, "PRAGMA journal_mode = " .. second .. ";")) end
      -- written while the loop runs, so commits are picked up as they happen
      local done = cli_bg(path, WRITES)
      assert.is_true(H.run_until(function() return #got >= #EXPECTED end, 15))
      wait_done(done)
      H.run_for(0.3)
      assert.are.same(EXPECTED, got)
    end)
  end

  for _, mode in ipairs { "wal", "delete" } do
    it("delivers hundreds of rows from two concurrent writers exactly once, in commit order (real binary, "
        .. mode .. " mode)", function()
      local path = setup_file(mode)
      local p = host(path)
      -- each writer: 6 commits of 25 inserts, then one commit updating its first 40 rows,
      -- then one deleting its last 30
      local function writer(base)
        local sql = {}
        for c = 0, 5 do
          sql[#sql + 1] = string.format("WITH RECURSIVE r(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM r WHERE i < %d) "
            .. "INSERT INTO items SELECT i, 'w' || i, i FROM r;", base + c * 25 + 1, base + c * 25 + 25)
        end
        sql[#sql + 1] = string.format("UPDATE items SET qty = -qty WHERE id BETWEEN %d AND %d;", base + 1, base + 40)
        sql[#sql + 1] = string.format("DELETE FROM items WHERE id BETWEEN %d AND %d;", base + 121, base + 150)
        return table.concat(sql, "\n")
      end
      local done_a = cli_bg(path, writer(0))
      local done_b = cli_bg(path, writer(1000))
      wait_done(done_a)
      wait_done(done_b)
      local total = 2 * (150 + 40 + 30)
      local out = wait_lines(p, 1 + total, 30)
      p:stop()

      -- every expected line exactly once
      local expected = {}
      for _, base in ipairs { 0, 1000 } do
        local fmt = string.format
        for i = base + 1, base + 150 do
          expected[#expected + 1] = fmt("insert main.items %d [name=w%d qty=%d]", i, i, i)
        end
        for i = base + 1, base + 40 do expected[#expected + 1] = fmt("update main.items %d [qty=%d]", i, -i) end
        for i = base + 121, base + 150 do expected[#expected + 1] = fmt("delete main.items %d [name=w%d]", i, i) end
      end
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal("ready", table.remove(lines, 1))
      assert.are.equal(total, #lines)
      local sorted_got, sorted_want = { table.unpack(lines) }, { table.unpack(expected) }
      table.sort(sorted_got)
      table.sort(sorted_want)
      assert.are.same(sorted_want, sorted_got)

      -- in commit order: the order of the change log
      local logged = {}
      local n = notifier(path)
      for _, r in ipairs(assert(n:query("SELECT channel, payload FROM sqlnotify_changes ORDER BY seq"))) do
        local id = r.payload:match('^{"id":{"id":(%-?%d+)}')
        logged[#logged + 1] = r.channel:match("_(%a+)#live$") .. " main.items " .. id
      end
      assert.are.equal(total, #logged)
      for i, l in ipairs(lines) do
        assert.are.equal(logged[i], l:match("^%a+ main%.items %-?%d+"), "line " .. i)
      end
      -- and each writer's commits in its own order
      for _, base in ipairs { 0, 1000 } do
        local mine = {}
        for _, l in ipairs(lines) do
          local id = tonumber(l:match(" (%d+) %["))
          if id > base and id <= base + 150 then mine[#mine + 1] = l end
        end
        local want = {}
        for _, l in ipairs(expected) do
          local id = tonumber(l:match(" (%d+) %["))
          if id > base and id <= base + 150 then want[#want + 1] = l end
        end
        assert.are.same(want, mine)
      end
    end)
  end

  it("delivers a commit larger than one read of the log whole and in order", function()
    local path = setup_file("wal")
    local n = notifier(path)
    local got, bad = 0, 0
    n:watch("items", "insert", { extra_columns = { "qty" } })
    n:subscribe("items", "insert", function(ev)
      got = got + 1
      if ev.id ~= got or ev.extra_columns.qty ~= 2 * got then bad = bad + 1 end
    end)
    assert(n:start())
    local done = cli_bg(path, "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 12000) "
      .. "INSERT INTO items SELECT i, NULL, 2 * i FROM r;")
    assert.is_true(H.run_until(function() return got >= 12000 end, 30))
    wait_done(done)
    H.run_for(0.2)
    assert.are.same({ 12000, 0 }, { got, bad })
  end)

  it("prunes past the retention only rows it has delivered", function()
    local path = setup_file("wal")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, use_logger = false, retention = 0.2 })
    notifiers[#notifiers + 1] = n
    local got = {}
    n:watch("items", "insert")
    n:subscribe("items", "insert", function(ev) got[#got + 1] = ev.id end)
    assert(n:start())
    H.run_for(0.1)
    cli(path, "INSERT INTO items (id) VALUES (1); INSERT INTO items (id) VALUES (2);")
    H.sleep(0.5) -- the loop is held up past the retention: the pruning timer is due first
    assert.is_true(H.run_until(function() return #got >= 2 end, 10))
    assert.are.same({ 1, 2 }, got)
    -- and once delivered, they go
    assert.is_true(H.run_until(function()
      return assert(n:query("SELECT count(*) AS c FROM sqlnotify_changes"))[1].c == 0
    end, 10))
  end)
end)
