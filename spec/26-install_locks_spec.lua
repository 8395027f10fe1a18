-- Installing a trigger never queues a table's writers behind it for longer than a short lock
-- timeout, and never blocks the loop (SPEC §8.5): when another session holds a lock on the
-- watched table, the host starts anyway, names the holder, retries the install from a timer
-- with backoff, and installs once the lock is gone; when the lock is held by the notifier's
-- own n:query transaction, the install does not wait on it at all. PostgreSQL (schema s26),
-- MySQL/MariaDB (tables s26_*) and SQLite (files in the spec's temporary directory).
local H = require("helper")

local fmt = string.format
local q = H.shell_quote

local S = "s26"
local MYSQL_URL = H.mysql_url

-- Another client, another process, fed statements through a pipe one at a time (so that it
-- can hold a transaction open while the spec goes on); what it prints goes to a file. quit: the
-- command that ends it (the hosts started meanwhile inherit the pipe: it sees no end of input).
local function client(cmd, quit)
  local out = H.tmpfile(".client")
  local pipe = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " >" .. q(out) .. " 2>&1", "w"))
  local c = {}
  function c.send(sql)
    pipe:write(sql, "\n")
    pipe:flush()
  end
  function c.output() return H.slurp(out) end
  function c.close()
    if pipe then
      c.send(quit)
      pipe:close()
    end
    pipe = nil
  end
  return c
end

local function wait_until(cond, timeout, what)
  local deadline = H.now() + (timeout or 10)
  while not cond() do
    if H.now() > deadline then error("timed out waiting for " .. what, 2) end
    H.sleep(0.02)
  end
end

-- The events the host printed: "E <id> <v>" lines.
local function events(p)
  local out = {}
  for id, v in p:stdout():gmatch("E (%d+) ([^\n]*)\n") do out[#out + 1] = id .. " " .. v end
  return out
end

-- The longest gap between two of the host's "T" ticks (every 0.1 s from the loop).
local function longest_gap(p)
  local last, gap, n = nil, 0, 0
  for t in p:stdout():gmatch("T ([%d.]+)\n") do
    t = tonumber(t)
    if last and t - last > gap then gap = t - last end
    last, n = t, n + 1
  end
  return gap, n
end

-- The host's watcher: arg[1] url, arg[2] table, arg[3] consumer ("-": live). Prints each insert
-- as "E <id> <v>" and a tick "T <time>" every 0.1 s, from the loop.
local WATCHER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer = arg[1], arg[2], arg[3]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil })
n:watch(tbl, "insert", { extra_columns = { "v" } })
n:subscribe(tbl, "insert", function(ev) io.write("E ", ev.id, " ", ev.extra_columns.v, "\n") end)
sqlnotify.every(0.1, function() io.write(string.format("T %.3f\n", sqlnotify.now())) end)
]]

-- The n:query self-deadlock: arg[1] url, arg[2] a table watched from the start, arg[3] the
-- table the script's own n:query transaction writes before watching it, arg[4] the
-- statement that begins a transaction. The transaction commits 0.5 s after the watch.
local OWN = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, first, own, begin = arg[1], arg[2], arg[3], arg[4]
local n = assert(sqlnotify.notifier{ url = url })
n:watch(first, "insert")
assert(n:start())
assert(n:query(begin))
assert(n:query("INSERT INTO " .. own .. " (id, v) VALUES (1, 'mine')"))
local t0 = sqlnotify.now()
n:watch(own, "insert", { extra_columns = { "v" } })
io.write(string.format("watch returned after %.3f s\n", sqlnotify.now() - t0))
n:subscribe(own, "insert", function(ev) io.write("E ", ev.id, " ", ev.extra_columns.v, "\n") end)
sqlnotify.after(0.5, function()
  assert(n:query("INSERT INTO " .. own .. " (id, v) VALUES (2, 'mine too')"))
  assert(n:query("COMMIT"))
  print("committed")
end)
]]

local NOT_YET = "not installed yet"
local INSTALLED = "created %(channel [^)]*%) at attempt %d+"

describe("installing a trigger under a lock held by another session", function()
  local procs, clients = {}, {}
  local function host(script, args)
    local p = H.host(script, args)
    procs[#procs + 1] = p
    return p
  end
  local function open(cmd, quit)
    local c = client(cmd, quit)
    clients[#clients + 1] = c
    return c
  end
  after_each(function()
    for _, c in ipairs(clients) do c.close() end
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    clients, procs = {}, {}
  end)

  describe("PostgreSQL", function()
    local URL = H.pg_url
    setup(function() H.fresh_schema(S) end)
    teardown(function() H.drop_schema(S) end)

    local function psql_client(app)
      local c = open(H.psql_bin .. " -X -q -At " .. q(URL), "\\q")
      c.send(fmt("SET application_name = '%s';", app))
      return c
    end
    -- pid of the session of this application_name once it holds a granted lock on tbl
    local function holder_pid(app, tbl)
      local pid
      wait_until(function()
        pid = H.psql(fmt([[SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE a.application_name = '%s' AND l.relation = '%s'::regclass AND l.granted LIMIT 1]], app, tbl))
          :match("%d+")
        return pid ~= nil
      end, 10, "the holder's lock")
      return pid
    end

    it("starts a durable consumer anyway, names who holds the lock, keeps the loop running, and installs "
      .. "once the lock is gone", function()
      H.psql(fmt("CREATE TABLE %s.held (id int PRIMARY KEY, v text);", S))
      local holder = psql_client("s26_holder")
      holder.send(fmt("BEGIN; LOCK TABLE %s.held IN ACCESS EXCLUSIVE MODE;", S))
      local pid = holder_pid("s26_holder", S .. ".held")

      local p = host(WATCHER, { URL, S .. ".held", "s26_durable" })
      assert.is_true(p:wait_for(NOT_YET, 15, "err"), p:stderr())
      local err = p:stderr()
      local line = err:match("[^\n]*" .. NOT_YET .. "[^\n]*")
      assert.matches('trigger for insert on "s26"."held" not installed yet', line, 1, true)
      assert.matches("pid " .. pid .. " (application_name \"s26_holder\", idle in transaction for ", line, 1, true)
      assert.matches("AccessExclusiveLock", line, 1, true)
      assert.matches('"LOCK TABLE s26.held IN ACCESS EXCLUSIVE MODE;"', line, 1, true)
      assert.matches('not captured for consumer "s26_durable"', line, 1, true)
      assert.is_true(p:wait_for("listening on 1 channel", 5, "err"), p:stderr())
      assert.is_false(p:exited())

      H.sleep(2) -- a retry or two while the lock is held
      holder.send("COMMIT;")
      holder.close()
      assert.is_true(p:wait_for('trigger for insert on "s26"."held" ' .. INSTALLED, 30, "err"), p:stderr())
      H.psql(fmt("INSERT INTO %s.held VALUES (1, 'a'); INSERT INTO %s.held VALUES (2, 'b');", S, S))
      assert.is_true(p:wait_count(events, 2, 15), p:stdout())
      H.sleep(0.3)
      assert.same({ "1 a", "2 b" }, events(p))
      -- the loop ran all along: never stopped for longer than one attempt's lock timeout (generous bound)
      local gap, ticks = longest_gap(p)
      assert.is_true(ticks > 5, "ticks: " .. ticks)
      assert.is_true(gap < 2.5, "longest pause of the loop: " .. gap .. " s")
      p:stop()
      local n = H.pg_notifier()
      n:drop_consumer("s26_durable")
      n:close()
    end)

    it("never holds up a writer for longer than the short lock timeout while an open write transaction "
      .. "keeps the trigger out", function()
      H.psql(fmt("CREATE TABLE %s.busy (id int PRIMARY KEY, v text);", S))
      local holder = psql_client("s26_writer_tx")
      holder.send(fmt("BEGIN; INSERT INTO %s.busy VALUES (0, 'held');", S))
      local pid = holder_pid("s26_writer_tx", S .. ".busy")

      local p = host(WATCHER, { URL, S .. ".busy", "-" })
      assert.is_true(p:wait_for(NOT_YET, 15, "err"), p:stderr())
      local line = p:stderr():match("[^\n]*" .. NOT_YET .. "[^\n]*")
      assert.matches("pid " .. pid .. " (application_name \"s26_writer_tx\", idle in transaction for ", line, 1, true)
      assert.matches('"INSERT INTO s26.busy VALUES (0, \'held\');"', line, 1, true)
      assert.matches("RowExclusiveLock", line, 1, true)

      -- 20 single-row writes over about 4 s, while the host tries again (at about 1 s and 3 s,
      -- each try waiting at most the lock timeout, with writers queued behind it meanwhile)
      local sql = { "\\timing on" }
      for i = 1, 20 do sql[#sql + 1] = fmt("INSERT INTO %s.busy VALUES (%d, 'w'); SELECT pg_sleep(0.2);", S, 100 + i) end
      local out = H.psql(table.concat(sql, "\n"))
      local slowest, n = 0, 0
      for ms in out:gmatch("Time: ([%d.]+) ms") do
        n = n + 1
        if n % 2 == 1 and tonumber(ms) > slowest then slowest = tonumber(ms) end -- the INSERTs
      end
      assert.equal(40, n)
      assert.is_true(slowest < 3000, "slowest write: " .. slowest .. " ms")
      assert.is_false(p:exited())

      holder.send("COMMIT;")
      holder.close()
      assert.is_true(p:wait_for('trigger for insert on "s26"."busy" ' .. INSTALLED, 30, "err"), p:stderr())
      H.psql(fmt("INSERT INTO %s.busy VALUES (1, 'one'); INSERT INTO %s.busy VALUES (2, 'two');", S, S))
      assert.is_true(p:wait_count(events, 2, 15), p:stdout())
      H.sleep(0.3)
      assert.same({ "1 one", "2 two" }, events(p))
      p:stop()
    end)

    it("n:stop() cancels the retry: no trigger goes in after it", function()
      H.psql(fmt("CREATE TABLE %s.stopped (id int PRIMARY KEY);", S))
      local holder = psql_client("s26_stop_holder")
      holder.send(fmt("BEGIN; LOCK TABLE %s.stopped IN ACCESS EXCLUSIVE MODE;", S))
      holder_pid("s26_stop_holder", S .. ".stopped")
      local triggers = fmt("SELECT count(*) FROM pg_trigger WHERE tgrelid = '%s.stopped'::regclass", S)
      local n = H.pg_notifier()
      n:watch(S .. ".stopped", "insert")
      assert(n:start())
      assert.equal("0", H.psql(triggers):match("%d+"))
      n:stop()
      holder.send("COMMIT;")
      holder.close()
      H.run_for(3) -- the retry was due after about 1 s
      assert.equal("0", H.psql(triggers):match("%d+"))
      assert(n:start()) -- and a new start installs it at once
      assert.equal("1", H.psql(triggers):match("%d+"))
      n:close()
    end)

    it("does not wait on the notifier's own n:query transaction: the watch is kept and installed once "
      .. "that transaction ends", function()
      H.psql(fmt("CREATE TABLE %s.first (id int PRIMARY KEY); CREATE TABLE %s.own (id int PRIMARY KEY, v text);", S, S))
      local p = host(OWN, { URL, S .. ".first", S .. ".own", "BEGIN" })
      assert.is_true(p:wait_for("watch returned after", 15), p:stderr())
      local took = tonumber(p:stdout():match("watch returned after ([%d.]+) s"))
      assert.is_true(took < 0.9, "n:watch took " .. took .. " s") -- never the lock timeout
      local line = p:stderr():match("[^\n]*" .. NOT_YET .. "[^\n]*")
      assert.matches('trigger for insert on "s26"."own" not installed yet: your own n:query transaction holds '
        .. 'RowExclusiveLock on "s26"."own"', line, 1, true)
      assert.is_true(p:wait_for("committed", 10), p:stderr())
      assert.is_true(p:wait_for('trigger for insert on "s26"."own" ' .. INSTALLED, 30, "err"), p:stderr())
      H.psql(fmt("INSERT INTO %s.own VALUES (3, 'three');", S))
      assert.is_true(p:wait_count(events, 1, 15), p:stdout())
      H.sleep(0.3)
      assert.same({ "3 three" }, events(p))
      p:stop()
    end)
  end)

  describe("MySQL/MariaDB", function()
    local DB, CLIENT, sql = H.my.db, H.my.client, H.mysql
    local TABLES = { "s26_busy", "s26_first", "s26_own" }
    local function drop_tables()
      for _, t in ipairs(TABLES) do sql(fmt("DROP TABLE IF EXISTS `%s`;", t)) end
    end
    setup(drop_tables)
    teardown(drop_tables)

    it("starts anyway, names the session in a transaction, never holds up a writer for longer than the "
      .. "short lock timeout, and installs once the lock is gone", function()
      sql("CREATE TABLE s26_busy (id int PRIMARY KEY, v text) ENGINE=InnoDB;")
      local holder = open(CLIENT .. " --unbuffered " .. q(DB), "quit")
      holder.send("SELECT CONCAT('id=', CONNECTION_ID()); START TRANSACTION; INSERT INTO s26_busy VALUES (0, 'held');"
        .. " SELECT 'held';")
      wait_until(function() return holder.output():find("held") end, 10, "the holder")
      local id = holder.output():match("id=(%d+)")

      local p = host(WATCHER, { MYSQL_URL, "s26_busy", "-" })
      assert.is_true(p:wait_for(NOT_YET, 15, "err"), p:stderr())
      local line = p:stderr():match("[^\n]*" .. NOT_YET .. "[^\n]*")
      assert.matches(fmt('trigger for insert on "%s"."s26_busy" not installed yet', DB), line, 1, true)
      assert.matches("connection " .. id .. " (", line, 1, true)
      assert.is_false(p:exited())

      -- writes over about 4 s while the host tries again (at about 1 s and 3 s, each try waiting
      -- at most the lock timeout)
      local slowest = 0
      for i = 1, 9 do
        local t0 = H.now()
        sql(fmt("INSERT INTO s26_busy VALUES (%d, 'w');", 100 + i))
        slowest = math.max(slowest, H.now() - t0)
        H.sleep(0.4)
      end
      assert.is_true(slowest < 3, "slowest write: " .. slowest .. " s")
      assert.is_false(p:exited())

      holder.send("COMMIT;")
      holder.close()
      assert.is_true(p:wait_for(fmt('trigger for insert on "%s"."s26_busy" ', DB) .. INSTALLED, 30, "err"), p:stderr())
      sql("INSERT INTO s26_busy VALUES (1, 'one'); INSERT INTO s26_busy VALUES (2, 'two');")
      assert.is_true(p:wait_count(events, 2, 15), p:stdout())
      H.sleep(0.3)
      assert.same({ "1 one", "2 two" }, events(p))
      local gap = longest_gap(p)
      assert.is_true(gap < 2.5, "longest pause of the loop: " .. gap .. " s")
      p:stop()
    end)

    it("does not wait on the notifier's own n:query transaction", function()
      sql("CREATE TABLE s26_first (id int PRIMARY KEY) ENGINE=InnoDB;"
        .. " CREATE TABLE s26_own (id int PRIMARY KEY, v text) ENGINE=InnoDB;")
      local p = host(OWN, { MYSQL_URL, "s26_first", "s26_own", "START TRANSACTION" })
      assert.is_true(p:wait_for("watch returned after", 15), p:stderr())
      local took = tonumber(p:stdout():match("watch returned after ([%d.]+) s"))
      assert.is_true(took < 0.9, "n:watch took " .. took .. " s")
      local line = p:stderr():match("[^\n]*" .. NOT_YET .. "[^\n]*")
      assert.matches(fmt('trigger for insert on "%s"."s26_own" not installed yet: your own n:query transaction', DB),
        line, 1, true)
      assert.is_true(p:wait_for("committed", 10), p:stderr())
      assert.is_true(p:wait_for(fmt('trigger for insert on "%s"."s26_own" ', DB) .. INSTALLED, 30, "err"), p:stderr())
      sql("INSERT INTO s26_own VALUES (3, 'three');")
      assert.is_true(p:wait_count(events, 1, 15), p:stdout())
      H.sleep(0.3)
      assert.same({ "3 three" }, events(p))
      p:stop()
    end)
  end)

  describe("SQLite", function()
    for _, mode in ipairs({ "delete", "wal" }) do
      it(fmt("starts anyway while another process holds a write transaction (journal_mode %s), names it, "
        .. "keeps the loop running, and installs once it ends", mode), function()
        local path = H.fresh_sqlite("s26")
        local url = "sqlite:///" .. path
        H.sqlite_cli(path, fmt("PRAGMA journal_mode = %s; CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);", mode))
        -- the change log's tables, made once per file (that takes the write lock; installs come later)
        local p = host("local sqlnotify = require('sqlnotify') assert(sqlnotify.notifier{ url = arg[1] }):close()",
          { url .. "?mode=rw" })
        assert.equal(0, p:wait())
        local holder = open("sqlite3 " .. q(path), ".quit")
        holder.send("BEGIN IMMEDIATE; INSERT INTO items VALUES (0, 'held'); SELECT 'held';")
        wait_until(function() return holder.output():find("held") end, 10, "the holder")

        p = host(WATCHER, { url, "items", "-" })
        assert.is_true(p:wait_for(NOT_YET, 15, "err"), p:stderr())
        local line = p:stderr():match("[^\n]*" .. NOT_YET .. "[^\n]*")
        assert.matches('trigger for insert on "main"."items" not installed yet', line, 1, true)
        assert.matches("held by pid %d+ %(sqlite3%)", line) -- the holding process, by its name
        assert.is_false(p:exited())
        H.sleep(2)
        holder.send("COMMIT;")
        holder.close()
        assert.is_true(p:wait_for('trigger for insert on "main"."items" ' .. INSTALLED, 30, "err"), p:stderr())
        H.sqlite_cli(path, "INSERT INTO items VALUES (1, 'one'); INSERT INTO items VALUES (2, 'two');")
        assert.is_true(p:wait_count(events, 2, 15), p:stdout())
        H.sleep(0.3)
        assert.same({ "1 one", "2 two" }, events(p))
        local gap, ticks = longest_gap(p)
        assert.is_true(ticks > 5, "ticks: " .. ticks)
        assert.is_true(gap < 2.5, "longest pause of the loop: " .. gap .. " s")
        p:stop()
      end)
    end
  end)
end)
