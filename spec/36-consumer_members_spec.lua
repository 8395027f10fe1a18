-- The members of a durable consumer on SQLite and MySQL/MariaDB, through the real binary: a
-- process reads its consumer only while its tables include every other live member's. Two
-- scripts on different tables under one name (neither reads, both say why, nothing is
-- skipped), a rolling deploy that adds a table (the new process takes over while rows of both
-- tables are written, none lost) and one that removes a table (the new process stands by
-- while the old one lives). SQLite: a file per test; MariaDB: a database of this file's own,
-- mem_s36.
local H = require("helper")

local fmt = string.format

local HOST = io.popen("hostname"):read("l")

-- Run cmd with input on its stdin in the background; returns a function telling whether it
-- finished (raising when it failed).
local function bg(cmd, input)
  local file, out, rc = H.tmpfile(".in"), H.tmpfile(".out"), H.tmpfile(".rc")
  H.spit(file, input)
  assert(H.sh("(" .. cmd .. " <" .. H.shell_quote(file) .. " >" .. H.shell_quote(out) .. " 2>&1; echo $? >"
    .. H.shell_quote(rc) .. ") >/dev/null 2>&1 </dev/null &"))
  return function()
    local code = H.slurp(rc):match("%d+")
    if code and code ~= "0" then error(cmd .. " failed: " .. H.slurp(out), 2) end
    return code ~= nil
  end
end

-- A host script: watches the inserts of each table named after the consumer (channel_label:
-- the table's name, so the channel is sqlnotify_<table> on both databases) and prints
-- "table id k" for each.
local SCRIPT = [==[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, consumer, start_at = arg[1], arg[2], arg[3]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, start_at = start_at ~= "-" and start_at or nil })
for i = 4, #arg do
  local t = arg[i]
  n:watch(t, "insert", { extra_columns = { "k" }, channel_label = t })
  n:subscribe(t, "insert", { channel_label = t }, function(ev)
    io.write(string.format("%s %d %d\n", t, ev.id, ev.extra_columns.k))
  end)
end
assert(n:start())
print("ready")
]==]

local files = 0

local backends = {
  {
    name = "SQLite",
    setup = function(b)
      files = files + 1
      b.path = H.tmpdir() .. "/mem_s36-" .. files .. ".db"
      H.sh("rm -f " .. H.shell_quote(b.path) .. "*")
      b.url = "sqlite:///" .. b.path
      b.sql("PRAGMA journal_mode = wal; CREATE TABLE a (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);"
        .. " CREATE TABLE b (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
    end,
    sql = function(b, s) return H.sqlite_cli(b.path, s) end,
    -- n rounds, each a row of every table then a pause of 10 ms, in the background
    writer = function(b, tables, from, n)
      local lines = { ".timeout 5000" }
      for i = from, from + n - 1 do
        for _, t in ipairs(tables) do lines[#lines + 1] = fmt("INSERT INTO %s (k) VALUES (%d);", t, i) end
        lines[#lines + 1] = ".shell sleep 0.01"
      end
      return bg("sqlite3 " .. H.shell_quote(b.path), table.concat(lines, "\n") .. "\n")
    end,
    teardown = function() end,
  },
  {
    name = "MariaDB",
    setup = function(b)
      b.db = "mem_s36"
      H.mysql(fmt("DROP DATABASE IF EXISTS %s; CREATE DATABASE %s", b.db, b.db))
      b.url = H.mysql_url:gsub("/[^/?]*(%??[^/]*)$", "/" .. b.db .. "%1")
      b.sql("CREATE TABLE a (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL);"
        .. " CREATE TABLE b (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL)")
    end,
    sql = function(b, s) return H.mysql(fmt("USE %s; %s", b.db, s)) end,
    writer = function(b, tables, from, n)
      local lines = { "USE " .. b.db .. ";" }
      for i = from, from + n - 1 do
        for _, t in ipairs(tables) do lines[#lines + 1] = fmt("INSERT INTO %s (k) VALUES (%d);", t, i) end
        lines[#lines + 1] = "DO SLEEP(0.01);"
      end
      return bg(H.my.client .. " " .. H.shell_quote(H.my.db), table.concat(lines, "\n") .. "\n")
    end,
    teardown = function(b) H.mysql(fmt("DROP DATABASE IF EXISTS %s", b.db)) end,
  },
}

for _, b in ipairs(backends) do
  local raw = b.sql
  b.sql = function(s) return raw(b, s) end
end

-- What a host printed: {table, id, k} in order.
local function events(p)
  local out = {}
  for t, id, k in p:stdout():gmatch("(%a+) (%d+) (%d+)\n") do
    out[#out + 1] = { t = t, id = tonumber(id), k = tonumber(k) }
  end
  return out
end

-- The ks of table t in events, sorted, each once; and how many events of t there were.
local function distinct(list, t)
  local seen, out, n = {}, {}, 0
  for _, e in ipairs(list) do
    if e.t == t then
      n = n + 1
      if not seen[e.k] then seen[e.k], out[#out + 1] = true, e.k end
    end
  end
  table.sort(out)
  return out, n
end

local function range(from, to)
  local out = {}
  for i = from, to do out[#out + 1] = i end
  return out
end

local function said(p, text)
  local n, from = 0, 1
  while true do
    local i, j = p:stderr():find(text, from, true)
    if not i then return n end
    n, from = n + 1, j + 1
  end
end

-- s as a pattern that matches s itself (Proc:wait_for takes patterns).
local function plain(s) return (s:gsub("%p", "%%%0")) end

-- The error line of a process blocked by one other member (pid) that watches tables.
local function blocked_line(consumer, pid, tables)
  return fmt('consumer "%s": another member watches tables this process does not (pid %s on %s: %s); this one'
    .. " reads nothing while that member runs, or it would skip their rows: a consumer's members must watch the"
    .. " same tables (give each script its own consumer name)", consumer, pid, HOST, tables)
end

local function may_read(consumer)
  return fmt('consumer "%s": no other member watches a table this process does not any more; it may read again',
    consumer)
end

for _, b in ipairs(backends) do
  describe(b.name .. " consumer members", function()
    local procs = {}
    local function start(consumer, start_at, ...)
      local p = H.host(SCRIPT, { b.url, consumer, start_at or "-", ... })
      procs[#procs + 1] = p
      assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
      return p
    end

    before_each(function() b.setup(b) end)
    after_each(function()
      for _, p in ipairs(procs) do
        if not p:exited() then
          p:kill("KILL")
          p:wait()
        end
      end
      for i = #procs, 1, -1 do procs[i] = nil end
      b.teardown(b)
    end)

    it("reads with neither of two scripts on different tables under one name, and says why in both", function()
      local pa = start("mem_dis", nil, "a")
      local pb = start("mem_dis", nil, "b")
      local line_a, line_b = blocked_line("mem_dis", pb.pid, "sqlnotify_b"), blocked_line("mem_dis", pa.pid, "sqlnotify_a")
      assert.is_true(pa:wait_for(plain(line_a), 10, "err"), pa:stderr())
      assert.is_true(pb:wait_for(plain(line_b), 10, "err"), pb:stderr())
      b.sql("INSERT INTO a (k) VALUES (1); INSERT INTO b (k) VALUES (1); INSERT INTO a (k) VALUES (2);"
        .. " INSERT INTO b (k) VALUES (2); INSERT INTO a (k) VALUES (3);")
      H.sleep(2.5) -- two beats and more: still neither reads, and each said it once
      assert.are.same({}, events(pa))
      assert.are.same({}, events(pb))
      assert.are.equal(1, said(pa, line_a))
      assert.are.equal(1, said(pb, line_b))
      -- the one on b stops: the one on a reads, every row of a that waited
      pb:stop()
      assert.is_true(pa:wait_for(plain(may_read("mem_dis")), 10, "err"), pa:stderr())
      assert.is_true(pa:wait_count(events, 3, 10), pa:stderr())
      H.sleep(0.3)
      assert.are.same({ { t = "a", id = 1, k = 1 }, { t = "a", id = 2, k = 2 }, { t = "a", id = 3, k = 3 } },
        events(pa))
      -- the script on b, run alone under its own consumer name, has its table's rows
      local pb2 = start("mem_dis_b", "beginning", "b")
      assert.is_true(pb2:wait_count(events, 2, 10), pb2:stderr())
      H.sleep(0.3)
      assert.are.same({ { t = "b", id = 1, k = 1 }, { t = "b", id = 2, k = 2 } }, events(pb2))
      assert.are.equal(0, said(pb2, "watches tables this process does not"))
      pa:stop()
      pb2:stop()
      assert.are.equal(1, said(pa, line_a))
    end)

    it("hands the consumer over to a new process that watches one more table, losing no row", function()
      local old = start("mem_roll", nil, "a")
      b.sql("INSERT INTO a (k) VALUES (0);")
      assert.is_true(old:wait_count(events, 1, 10), old:stderr())
      local new = start("mem_roll", nil, "a", "b")
      local done = b.writer(b, { "a", "b" }, 1, 150) -- about two seconds of rows in both tables
      assert.is_true(old:wait_for(plain(blocked_line("mem_roll", new.pid, "sqlnotify_b")), 10, "err"), old:stderr())
      assert.is_true(old:wait_for('consumer "mem_roll": stopped reading after %a+ %d+; this process stands by', 10, "err"),
        old:stderr())
      assert.is_true(H.wait_until(done, 30), "the writer did not finish")
      local function all_there()
        local ka = distinct(events(old), "a")
        for _, k in ipairs(distinct(events(new), "a")) do ka[#ka + 1] = k end
        local seen, n = {}, 0
        for _, k in ipairs(ka) do
          if not seen[k] then seen[k], n = true, n + 1 end
        end
        return n == 151 and #distinct(events(new), "b") == 150
      end
      assert.is_true(H.wait_until(all_there, 20), new:stderr())
      H.sleep(0.3)
      local oa, ob = events(old), distinct(events(old), "b")
      local na = distinct(events(new), "a")
      local nb, nbn = distinct(events(new), "b")
      -- every row of a, by one or the other; every row of b by the new one (at least once each)
      local union, seen = {}, {}
      for _, e in ipairs(oa) do
        if not seen[e.k] then seen[e.k], union[#union + 1] = true, e.k end
      end
      for _, k in ipairs(na) do
        if not seen[k] then seen[k], union[#union + 1] = true, k end
      end
      table.sort(union)
      assert.are.same(range(0, 150), union)
      assert.are.same(range(1, 150), nb)
      assert.is_true(nbn >= 150)
      assert.are.same({}, ob)
      assert.are.equal(1, said(old, 'consumer "mem_roll": stopped reading after '))
      assert.are.equal(0, said(new, "watches tables this process does not"))
      -- the old one stands by from then on: nothing more reaches it
      local before, had = #events(old), #events(new)
      b.sql("INSERT INTO a (k) VALUES (151); INSERT INTO b (k) VALUES (151);")
      assert.is_true(new:wait_count(events, had + 2, 10), new:stderr())
      H.sleep(0.3)
      assert.are.equal(before, #events(old))
      old:stop()
      new:stop()
    end)

    it("keeps a new process that watches one table fewer standing by while the old one runs", function()
      local old = start("mem_less", nil, "a", "b")
      local new = start("mem_less", nil, "a")
      local line = blocked_line("mem_less", old.pid, "sqlnotify_b")
      assert.is_true(new:wait_for(plain(line), 10, "err"), new:stderr())
      b.sql("INSERT INTO a (k) VALUES (1); INSERT INTO b (k) VALUES (1); INSERT INTO a (k) VALUES (2);"
        .. " INSERT INTO b (k) VALUES (2);")
      assert.is_true(old:wait_count(events, 4, 10), old:stderr())
      H.sleep(2.5) -- two beats and more
      assert.are.same({ { t = "a", id = 1, k = 1 }, { t = "b", id = 1, k = 1 }, { t = "a", id = 2, k = 2 },
        { t = "b", id = 2, k = 2 } }, events(old))
      assert.are.same({}, events(new))
      assert.are.equal(1, said(new, line))
      assert.are.equal(0, said(old, "watches tables this process does not"))
      -- the old one stops: the new one reads from where it stopped
      old:stop()
      assert.is_true(new:wait_for(plain(may_read("mem_less")), 10, "err"), new:stderr())
      b.sql("INSERT INTO a (k) VALUES (3);")
      assert.is_true(new:wait_count(events, 1, 10), new:stderr())
      H.sleep(0.3)
      assert.are.same({ { t = "a", id = 3, k = 3 } }, events(new))
      new:stop()
    end)
  end)
end
