-- Capture is not shared state one watcher can take from another (SPEC §8.5), end to end
-- through the real host on PostgreSQL, SQLite and MariaDB: a live watcher started while a
-- durable consumer is stopped must not take the consumer's capture (the consumer gets every
-- change made meanwhile, with its own columns), a live watcher and consumers asking for other
-- columns each get their own, whichever starts first, and the previous release's one trigger
-- per table and operation is taken over without a change lost or doubled.
-- Tables: spec28.* (PostgreSQL), s28_* (MariaDB), a file per test (SQLite); consumers s28_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

-- A host: watches insert and update with the columns named in arg[4] ("a" or "a,b"), as the
-- consumer arg[3] ("-": live), and prints "i|u <id> col=value ..." with every extra column the
-- event carried, in name order: a column it did not ask for shows.
local WATCHER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, cols, verify = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local list = {}
for c in cols:gmatch("[^,]+") do list[#list + 1] = c end
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil,
  verify_interval = verify })
n:watch(tbl, "insert", { extra_columns = list })
n:watch(tbl, "update", { extra_columns = list })
local function show(tag)
  return function(ev)
    local keys = {}
    for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = { tag, tostring(ev.id) }
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(ev.extra_columns[k]) end
    io.write(table.concat(parts, " "), "\n")
  end
end
n:subscribe(tbl, "insert", show("i"))
n:subscribe(tbl, "update", show("u"))
assert(n:start())
print("ready")
]]

local function lines(text)
  local out = {}
  for l in text:gmatch("([iu] [^\n]*)\n") do out[#out + 1] = l end
  return out
end

local function cases(d)
  describe(fmt("capture per watch on %s", d.name), function()
    local procs = {}

    local function watcher(tbl, consumer, cols, verify)
      local p = H.host(WATCHER, { d.url(), d.table(tbl), consumer or "-", cols, verify })
      procs[#procs + 1] = p
      assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
      return p
    end

    -- What a consumer's hosts printed, in the order they ran.
    local function printed(list)
      local out = {}
      for _, p in ipairs(list) do
        for _, l in ipairs(lines(p:stdout())) do out[#out + 1] = l end
      end
      return out
    end

    local function wait_lines(list, n)
      local deadline = H.now() + 30
      while #printed(list) < n and H.now() < deadline do H.sleep(0.02) end
      return printed(list)
    end

    local function stop(p)
      p:stop()
      assert.is_nil(p:stderr():find("replaced"), p:stderr())
    end

    teardown(function() if d.teardown then d.teardown() end end)
    before_each(function() if d.begin then d.begin() end end)

    after_each(function()
      for _, p in ipairs(procs) do
        if not p:exited() then p:kill("KILL") p:wait() end
      end
      procs = {}
      local n = assert(sqlnotify.notifier{ url = d.url(), use_logger = false })
      for _, c in ipairs(assert(n:consumers())) do
        if c.name:sub(1, 4) == "s28_" then n:drop_consumer(c.name) end
      end
      n:close()
    end)

    it("keeps a stopped consumer's capture while a live watcher of other columns comes and goes", function()
      d.fresh("t1")
      local c1 = watcher("t1", "s28_relay", "a")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (1, 'a1', 'b1')", "t1"))
      assert.are.same({ "i 1 a=a1" }, wait_lines({ c1 }, 1))
      local live = watcher("t1", nil, "b")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (2, 'a2', 'b2')", "t1"))
      d.exec(d.sql("UPDATE %s SET a = 'a1x', b = 'b1x' WHERE id = 1", "t1"))
      assert.are.same({ "i 1 a=a1", "i 2 a=a2", "u 1 a=a1x" }, wait_lines({ c1 }, 3))
      stop(c1)
      -- the consumer is down: the live watcher runs on, the changes must still be captured
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (3, 'a3', 'b3')", "t1"))
      d.exec(d.sql("UPDATE %s SET a = 'a2x', b = 'b2x' WHERE id = 2", "t1"))
      assert.are.same({ "i 2 b=b2", "u 1 b=b1x", "i 3 b=b3", "u 2 b=b2x" }, wait_lines({ live }, 4))
      stop(live)
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (4, 'a4', 'b4')", "t1"))
      local c2 = watcher("t1", "s28_relay", "a")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (5, 'a5', 'b5')", "t1"))
      assert.are.same({ "i 1 a=a1", "i 2 a=a2", "u 1 a=a1x", "i 3 a=a3", "u 2 a=a2x", "i 4 a=a4", "i 5 a=a5" },
        wait_lines({ c1, c2 }, 7))
      H.sleep(0.3)
      assert.are.equal(7, #printed({ c1, c2 }))
      assert.are.same({ "i 2 b=b2", "u 1 b=b1x", "i 3 b=b3", "u 2 b=b2x" }, printed({ live }))
      stop(c2)
    end)

    it("puts a consumer's dropped capture back at the next check and says which changes it missed", function()
      d.fresh("t3")
      local c = watcher("t3", "s28_repair", "a", "0.3")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (1, 'a1', 'b1')", "t3"))
      assert.are.same({ "i 1 a=a1" }, wait_lines({ c }, 1))
      -- stopped meanwhile, so that no check puts the trigger back between the drop and row 2
      c:kill("STOP")
      assert(H.sh(fmt("%s --drop %s %s --yes >/dev/null 2>&1", H.shell_quote(H.host_bin), H.shell_quote(d.url()),
        H.shell_quote(d.table("t3")))))
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (2, 'a2', 'b2')", "t3")) -- not captured
      c:kill("CONT")
      -- SQLite's reader puts it back at once when it sees the schema change, before the check
      local said = d.name == "SQLite"
        and 'error sqlnotify: consumer "s28_repair": the trigger for insert on [^\n]*t3[^\n]* was gone %(its table '
          .. "dropped and made again, or the trigger dropped%): made it again; changes written to the table between "
          .. "%d[^\n]* and now were not captured"
        or 'error sqlnotify: consumer "s28_repair": the trigger for insert on [^\n]*t3[^\n]* was missing '
          .. "or changed; re%-created it: changes between %d[^\n]* and %d[^\n]* %(when it was last seen whole, "
          .. "and now%) may not have been captured and are not delivered"
      assert(c:wait_for(said, 20, "err"), c:stderr())
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (3, 'a3', 'b3')", "t3"))
      assert.are.same({ "i 1 a=a1", "i 3 a=a3" }, wait_lines({ c }, 2))
      H.sleep(0.3)
      assert.are.equal(2, #printed({ c }))
      c:stop()
    end)

    it("says at error level what a consumer missed when its trigger was dropped while it was away", function()
      d.fresh("t7")
      local c1 = watcher("t7", "s28_away", "a")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (1, 'a1', 'b1')", "t7"))
      assert.are.same({ "i 1 a=a1" }, wait_lines({ c1 }, 1))
      c1:stop()
      -- seen a moment ago, so it may be running: refused, then dropped with --yes
      local code, out, err = H.run_host { "--drop", d.url(), d.table("t7") }
      assert.are.same({ 1, "" }, { code, out })
      local refused = {}
      for op, what in err:gmatch('sqlnotify: consumer "s28_away" reads the capture of (%a+) on [^\n]*t7 %(channel [^\n]*, '
          .. "durable %x+%) and was seen %d+ s ago %(0 live member%(s%)%): it would make the trigger "
          .. "again at its next check and miss what is written meanwhile; stop it first, or give %-%-yes to drop "
          .. "it (anyway)\n") do
        refused[#refused + 1] = op .. " " .. what
      end
      table.sort(refused)
      assert.are.same({ "insert anyway", "update anyway" }, refused, err)
      assert.matches("\nsqlnotify: nothing dropped\n$", err)
      code, out, err = H.run_host { "--drop", d.url(), d.table("t7"), "--yes" }
      assert.are.equal(0, code, err)
      assert.matches("^dropped 2 sqlnotify trigger%(s%) on ", out)
      local warned = {}
      for op in err:gmatch("sqlnotify: warning: dropped the capture of a durable consumer for (%a+) on [^\n]*: a "
          .. "consumer reading it may be running: it makes the trigger again at its next check %(verify_interval%) "
          .. "and says at error level what it did not capture meanwhile\n") do
        warned[#warned + 1] = op
      end
      table.sort(warned)
      assert.are.same({ "insert", "update" }, warned, err)
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (2, 'a2', 'b2')", "t7")) -- not captured
      local c2 = watcher("t7", "s28_away", "a")
      assert.matches('error sqlnotify: consumer "s28_away": the trigger for insert on [^\n]*t7[^\n]* was missing '
        .. "%(dropped while the consumer was away%); created it again: changes made between its drop %(after "
        .. "%d[^\n]*, when the consumer was last seen%) and now were not captured and are not delivered", c2:stderr())
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (3, 'a3', 'b3')", "t7"))
      assert.are.same({ "i 1 a=a1", "i 3 a=a3" }, wait_lines({ c1, c2 }, 2))
      H.sleep(0.3)
      assert.are.equal(2, #printed({ c1, c2 }))
      c2:stop()
    end)

    it("counts in a consumer's lag only the rows of its own tables", function()
      d.fresh("t4")
      d.fresh("t5")
      local ca = watcher("t4", "s28_lag_a", "a")
      local cb = watcher("t5", "s28_lag_b", "a")
      ca:stop()
      cb:stop()
      for i = 1, 3 do d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (" .. i .. ", 'a', 'b')", "t4")) end
      for i = 1, 4 do d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (" .. i .. ", 'a', 'b')", "t5")) end
      local n = assert(sqlnotify.notifier{ url = d.url(), use_logger = false })
      local lag = {}
      for _, c in ipairs(assert(n:consumers())) do lag[c.name] = c.lag_events end
      n:close()
      assert.are.equal(3, lag.s28_lag_a)
      assert.are.equal(4, lag.s28_lag_b)
    end)

    -- The durable captures --list shows on a table: "insert <12 hex>" each, sorted.
    local function captures(t)
      local out = H.tmpfile(".list")
      assert(H.sh(fmt("%s --list %s >%s 2>&1", H.shell_quote(H.host_bin), H.shell_quote(d.url()), out)))
      local found = {}
      for line in H.slurp(out):gmatch("[^\n]+") do
        local op, tag = line:match("^%S+%s+" .. d.bare(t):gsub("%p", "%%%0") .. "%s+(%a+)%s+%S+%s+durable (%x+)")
        if op then found[#found + 1] = op .. " " .. tag end
      end
      table.sort(found)
      return found
    end

    it("drops the capture of a consumer's former columns, and a dropped consumer's own", function()
      d.fresh("t6")
      local c1 = watcher("t6", "s28_gc", "a")
      c1:stop()
      local before = captures("t6")
      assert.are.equal(2, #before)
      local c2 = watcher("t6", "s28_gc", "a,b")
      local after = captures("t6")
      assert.are.equal(2, #after)
      local now = {}
      for _, t in ipairs(after) do now[t] = true end
      for _, t in ipairs(before) do assert.is_nil(now[t], t .. " is still there") end
      assert.matches("dropped 1 trigger%(s%) of capture [^\n]*_insert[^#\n]*#%x+, which no consumer reads any more", c2:stderr())
      assert.matches("dropped 1 trigger%(s%) of capture [^\n]*_update[^#\n]*#%x+, which no consumer reads any more", c2:stderr())
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (1, 'a1', 'b1')", "t6"))
      assert.are.same({ "i 1 a=a1 b=b1" }, wait_lines({ c2 }, 1))
      c2:stop()
      local c3 = watcher("t6", "s28_gc2", "a,b") -- shares the capture: it stays while one reads it
      c3:stop()
      local n = assert(sqlnotify.notifier{ url = d.url(), use_logger = false })
      assert.is_true(n:drop_consumer("s28_gc"))
      assert.are.same(after, captures("t6"))
      assert.is_true(n:drop_consumer("s28_gc2"))
      n:close()
      assert.are.same({}, captures("t6"))
    end)

    it("gives a live watcher and two consumers of other columns their own, whichever starts first", function()
      d.fresh("t2")
      local live = watcher("t2", nil, "b")
      local ca = watcher("t2", "s28_a", "a")
      local cb = watcher("t2", "s28_b", "a,b")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (1, 'a1', 'b1')", "t2"))
      assert.are.same({ "i 1 a=a1" }, wait_lines({ ca }, 1))
      assert.are.same({ "i 1 a=a1 b=b1" }, wait_lines({ cb }, 1))
      assert.are.same({ "i 1 b=b1" }, wait_lines({ live }, 1))
      stop(ca)
      d.exec(d.sql("UPDATE %s SET a = 'a1x', b = 'b1x' WHERE id = 1", "t2"))
      assert.are.same({ "i 1 a=a1 b=b1", "u 1 a=a1x b=b1x" }, wait_lines({ cb }, 2))
      local ca2 = watcher("t2", "s28_a", "a")
      d.exec(d.sql("INSERT INTO %s (id, a, b) VALUES (2, 'a2', 'b2')", "t2"))
      assert.are.same({ "i 1 a=a1", "u 1 a=a1x", "i 2 a=a2" }, wait_lines({ ca, ca2 }, 3))
      assert.are.same({ "i 1 a=a1 b=b1", "u 1 a=a1x b=b1x", "i 2 a=a2 b=b2" }, wait_lines({ cb }, 3))
      assert.are.same({ "i 1 b=b1", "u 1 b=b1x", "i 2 b=b2" }, wait_lines({ live }, 3))
      H.sleep(0.3)
      assert.are.equal(3, #printed({ ca, ca2 }))
      assert.are.equal(3, #printed({ cb }))
      assert.are.equal(3, #printed({ live }))
      stop(live)
      stop(ca2)
      stop(cb)
    end)
  end)
end

-- ===== PostgreSQL =====
local S = "spec28"
cases({
  name = "PostgreSQL",
  url = function() return H.pg_url end,
  table = function(t) return S .. "." .. t end,
  bare = function(t) return t end,
  sql = function(text, t) return fmt(text, S .. "." .. t) end,
  exec = function(text) return H.psql(text) end,
  fresh = function(t)
    H.psql(fmt('CREATE SCHEMA IF NOT EXISTS %s; DROP TABLE IF EXISTS %s.%s; '
      .. 'CREATE TABLE %s.%s (id int PRIMARY KEY, a text, b text);', S, S, t, S, t))
  end,
})

describe("capture per watch on PostgreSQL", function()
  teardown(function() H.drop_schema(S) end)

  it("reads the rows the previous release's trigger wrote on the plain channel, once", function()
    H.psql(fmt("CREATE SCHEMA IF NOT EXISTS %s; DROP TABLE IF EXISTS %s.t3; "
      .. "CREATE TABLE %s.t3 (id int PRIMARY KEY, a text, b text);", S, S, S))
    local c = H.host(WATCHER, { H.pg_url, S .. ".t3", "s28_old", "a" })
    assert(c:wait_for("ready\n", 20), c:stderr())
    c:stop()
    -- what a trigger of the previous release wrote while the consumer was down
    H.psql(fmt([[SELECT sqlnotify.append('sqlnotify_%s_t3_insert', '{"id": {"id": 1}, "x": {"a": "a1"}}', 0)]], S))
    local c2 = H.host(WATCHER, { H.pg_url, S .. ".t3", "s28_old", "a" })
    assert(c2:wait_for("ready\n", 20), c2:stderr())
    H.psql(fmt("INSERT INTO %s.t3 (id, a, b) VALUES (2, 'a2', 'b2')", S))
    assert(c2:wait_count(function(p) return lines(p:stdout()) end, 2, 30))
    H.sleep(0.3)
    assert.are.same({ "i 1 a=a1", "i 2 a=a2" }, lines(c2:stdout()))
    c2:stop()
    local m = assert(sqlnotify.notifier{ url = H.pg_url, use_logger = false })
    m:drop_consumer("s28_old")
    m:close()
  end)
end)

-- ===== SQLite =====
do
  local path -- a file per test
  cases({
    name = "SQLite",
    begin = function() path = H.fresh_sqlite("s28") end,
    url = function() return "sqlite:///" .. path end,
    table = function(t) return t end,
    bare = function(t) return t end,
    sql = function(text, t) return fmt(text, t) end,
    exec = function(text) return H.sqlite_cli(path, text) end,
    fresh = function(t)
      H.sqlite_cli(path, fmt("PRAGMA journal_mode = wal; CREATE TABLE %s (id INTEGER PRIMARY KEY, a TEXT, b TEXT);", t))
    end,
  })
end

-- ===== MariaDB =====
do
  local URL, DB, my = H.mysql_url, H.my.db, H.mysql
  cases({
    name = "MariaDB",
    url = function() return URL end,
    table = function(t) return DB .. ".s28_" .. t end,
    bare = function(t) return "s28_" .. t end,
    sql = function(text, t) return fmt(text, "s28_" .. t) end,
    exec = my,
    fresh = function(t)
      my(fmt("DROP TABLE IF EXISTS s28_%s; CREATE TABLE s28_%s (id int PRIMARY KEY, a text, b text);", t, t))
    end,
    teardown = function() my("DROP TABLE IF EXISTS s28_t1, s28_t2, s28_t3, s28_t4, s28_t5, s28_t6, s28_t7") end,
  })
end
