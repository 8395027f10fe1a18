-- The binding and its loop, in process: run() refused from inside the loop (on both
-- dialects, delivery going on), handles and notifiers freed by the collector while a
-- listening one stays, and a loop of our own that leaves child processes alone.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")

local S = "spec13"
local NESTED = "sqlnotify: run() called from inside a handler or callback; the loop is already running"

local function with_param(url, param)
  return url .. (url:find("?", 1, true) and "&" or "?") .. param
end

-- Sessions of this application name in pg_stat_activity, once it settled (a backend
-- whose client closed leaves the view a moment later).
local function pg_sessions(app, want)
  local deadline = H.now() + 10
  while true do
    local n = tonumber(H.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" .. app .. "'"):match("%d+"))
    if n == want or H.now() > deadline then return n end
    H.sleep(0.02)
  end
end

-- How many of this process's file descriptors are open on path (or its -wal, -shm, -journal).
local function open_fds(path)
  local p = io.popen("P=$PPID; env -u LD_PRELOAD sh -c 'for f in /proc/'$P'/fd/*; do readlink \"$f\"; done'")
  local n = 0
  for line in p:lines() do
    if line:sub(1, #path) == path then n = n + 1 end
  end
  p:close()
  return n
end

local function full_gc()
  collectgarbage()
  collectgarbage()
end

-- A notifier on each dialect with a table t (id int primary key), and a way to insert
-- rows from another client in one transaction.
local dialects = {
  postgresql = function()
    local n = H.pg_notifier()
    return n, "spec13.t", function(ids)
      local values = {}
      for i, id in ipairs(ids) do values[i] = "(" .. id .. ")" end
      H.psql("INSERT INTO spec13.t VALUES " .. table.concat(values, ", "))
    end
  end,
  sqlite = function()
    local path = H.tmpfile(".db")
    assert(H.sh("sqlite3 " .. H.shell_quote(path) .. " 'CREATE TABLE t (id INTEGER PRIMARY KEY)'"))
    local n = assert(sqlnotify.notifier { url = "sqlite:///" .. path, use_logger = false })
    return n, "t", function(ids)
      local values = {}
      for i, id in ipairs(ids) do values[i] = "(" .. id .. ")" end
      assert(H.sh("sqlite3 " .. H.shell_quote(path) .. " \".timeout 5000\" 'INSERT INTO t VALUES "
        .. table.concat(values, ", ") .. "'"))
    end
  end,
}

describe("the binding", function()
  setup(function()
    H.fresh_schema(S)
    H.psql("CREATE TABLE spec13.t (id int PRIMARY KEY)")
  end)

  teardown(function() H.drop_schema(S) end)

  describe("run() from inside the loop", function()
    for _, dialect in ipairs { "postgresql", "sqlite" } do
      it("raises a clear error in a handler on " .. dialect .. ", and the batch and later events are delivered", function()
        local n, t, write = dialects[dialect]()
        finally(function()
          n:cleanup()
          n:close()
        end)
        n:watch(t, "insert")
        local got, errs = {}, {}
        n:subscribe(t, "insert", function(ev)
          got[#got + 1] = ev.id
          local ok, err = pcall(sqlnotify.run)
          errs[#errs + 1] = ok and "returned" or err
          if ev.id == 2 then sqlnotify.run() end -- unprotected: this handler call fails, nothing else
        end)
        assert(n:start())
        write { 1, 2, 3 } -- one commit: one batch
        assert.is_true(H.run_until(function() return #got == 3 end))
        write { 4 }
        assert.is_true(H.run_until(function() return #got == 4 end))
        assert.are.same({ 1, 2, 3, 4 }, got)
        assert.are.same({ NESTED, NESTED, NESTED, NESTED }, errs)
      end)
    end

    it("raises the same error in a timer callback", function()
      local err
      local guard = sqlnotify.after(5, sqlnotify.stop) -- an inner loop would run until this
      sqlnotify.after(0, function()
        err = select(2, pcall(sqlnotify.run))
        sqlnotify.stop()
      end)
      sqlnotify.run()
      guard:stop()
      assert.are.equal(NESTED, err)
    end)
  end)

  describe("garbage collection", function()
    it("closes a handle whose dispatch and reconnect functions refer back to it", function()
      local app = "spec13_handle"
      do
        local h = assert(core.open(with_param(H.pg_url, "application_name=" .. app), { use_logger = false }))
        local owner = { h = h }
        h:set_dispatch(function() return owner end)
        h:set_reconnected(function() return owner end)
      end
      assert.is_true(pg_sessions(app, 1) >= 1)
      full_gc()
      assert.are.equal(0, pg_sessions(app, 0))
    end)

    it("closes a notifier that was never started once nothing refers to it (PostgreSQL)", function()
      local app = "spec13_notifier"
      do
        local n = H.pg_notifier { url = with_param(H.pg_url, "application_name=" .. app) }
        n:watch("spec13.t", "insert")
        n:subscribe("spec13.t", "insert", function() end)
      end
      assert.is_true(pg_sessions(app, 1) >= 1)
      full_gc()
      assert.are.equal(0, pg_sessions(app, 0))
    end)

    it("closes a notifier that was never started once nothing refers to it (SQLite)", function()
      local path = H.tmpfile(".db")
      assert(H.sh("sqlite3 " .. H.shell_quote(path) .. " 'CREATE TABLE t (id INTEGER PRIMARY KEY)'"))
      do
        local n = assert(sqlnotify.notifier { url = "sqlite:///" .. path, use_logger = false })
        n:watch("t", "insert")
        n:subscribe("t", "insert", function() end)
      end
      assert.is_true(open_fds(path) >= 1)
      full_gc()
      assert.are.equal(0, open_fds(path))
    end)

    it("keeps a started notifier listening when the script keeps no reference to it", function()
      local got, weak = {}, setmetatable({}, { __mode = "v" })
      do
        local n = H.pg_notifier()
        n:watch("spec13.t", "delete")
        n:subscribe("spec13.t", "delete", function(ev) got[#got + 1] = ev.id end)
        assert(n:start())
        weak[1] = n
      end
      full_gc()
      finally(function()
        if weak[1] then
          weak[1]:cleanup()
          weak[1]:close()
        end
      end)
      assert.is_not_nil(weak[1])
      H.psql("INSERT INTO spec13.t VALUES (50); DELETE FROM spec13.t WHERE id = 50")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ 50 }, got)
    end)
  end)

  describe("the loop", function()
    it("is not libev's default loop: a child process started in one callback is still there to close in a later one",
      function()
        local f, status
        sqlnotify.after(0, function() f = io.popen("true") end)
        sqlnotify.after(0.2, function()
          status = { f:close() }
          sqlnotify.stop()
        end)
        sqlnotify.run()
        assert.are.same({ true, "exit", 0 }, status)
        assert.are.same({ true, "exit", 0 }, { os.execute("true") })
      end)
  end)
end)
