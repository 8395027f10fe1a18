-- I/O beside the handlers, through the real host: sqlnotify.io on a pipe (readiness with
-- the data, :stop(), a failing callback, every misuse message); sqlnotify.cqueues (a
-- coroutine's socket round-trip to a slow server while events keep arriving, a failing
-- coroutine and a failing controller logged while the loop goes on); cqueues as the main
-- loop driving ours with sqlnotify.step(). SQLite files of this spec only.
local H = require("helper")

local q = H.shell_quote
local files = 0

local function fresh_db()
  files = files + 1
  local path = H.tmpdir() .. "/io16-" .. files .. ".db"
  H.sh("rm -f " .. q(path) .. "*")
  assert(H.sh("sqlite3 " .. q(path) .. " 'PRAGMA journal_mode = WAL; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)' >/dev/null"))
  return path
end

local function insert(db, ...)
  local sql = {}
  for _, name in ipairs { ... } do sql[#sql + 1] = string.format("INSERT INTO items (name) VALUES ('%s');", name) end
  assert(H.sh("sqlite3 " .. q(db) .. " " .. q(".timeout 5000") .. " " .. q(table.concat(sql, " "))))
end

local function lines(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

-- The position of the first line equal to s (an error when absent).
local function pos(list, s)
  for i, l in ipairs(list) do if l == s then return i end end
  error("no line " .. s .. " in:\n" .. table.concat(list, "\n"), 2)
end

describe("sqlnotify.io", function()
  it("calls back with the revents when a pipe is readable, survives a failing callback, and stops on :stop()", function()
    local fifo, written = H.tmpfile(".fifo"), H.tmpfile(".written")
    assert(H.sh("mkfifo " .. q(fifo)))
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local f = assert(io.open("/dev/fd/3", "r")) -- the pipe the host was given as fd 3
      f:setvbuf("no")
      local w
      w = sqlnotify.io(3, "r", function(revents)
        local line = f:read("l")
        print("readable " .. revents .. " " .. line)
        if line == "boom" then error("callback failed on purpose") end
        if line == "last" then w:stop(); w:stop(); print("stopped") end
      end)
      -- Once the spec says it wrote again: one more turn of the loop, then read it ourselves.
      local t
      t = sqlnotify.every(0.01, function()
        if io.open(arg[1]) then
          t:stop()
          sqlnotify.after(0, function() print("left in the pipe: " .. f:read("l")); sqlnotify.stop() end)
        end
      end)
      print("watching")
    ]], { written }, "3<>" .. q(fifo)) -- the host's fd 3 is the pipe (a redirection is a valid prefix too)
    local pipe = assert(io.open(fifo, "r+"))
    finally(function() pipe:close(); p:kill("KILL") end)
    assert.is_true(p:wait_for("watching\n"), p:stderr())
    for _, line in ipairs { "one", "boom", "two", "last" } do
      pipe:write(line, "\n")
      pipe:flush()
      assert.is_true(p:wait_for("readable r " .. line .. "\n"), p:stdout() .. p:stderr())
    end
    assert.is_true(p:wait_for("stopped\n"))
    pipe:write("after\n")
    pipe:flush()
    H.spit(written, "")
    assert.are.equal(0, p:wait())
    assert.are.equal("watching\nreadable r one\nreadable r boom\nreadable r two\nreadable r last\nstopped\n"
      .. "left in the pipe: after\n", p:stdout())
    local err = p:stderr()
    assert.matches("error sqlnotify: io callback failed: [^\n]+:9: callback failed on purpose\nstack traceback:\n", err)
    local _, count = err:gsub("io callback failed", "")
    assert.are.equal(1, count)
    p:assert_clean()
  end)

  it("raises sqlnotify: errors naming the bad fd, mode, function or controller", function()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      local cqueues = require("cqueues")
      local socket = require("cqueues.socket")
      local function try(...) print(select(2, pcall(...))) end
      local f = function() end
      try(sqlnotify.io, "3", "r", f)
      try(sqlnotify.io, nil, "r", f)
      try(sqlnotify.io, {}, "r", f)
      try(sqlnotify.io, -1, "r", f)
      try(sqlnotify.io, 987, "r", f)
      try(sqlnotify.io, 0, "x", f)
      try(sqlnotify.io, 0, nil, f)
      try(sqlnotify.io, 0, "r", "f")
      try(sqlnotify.io, { pollfd = function() return "x" end }, "r", f)
      try(sqlnotify.cqueues, nil)
      try(sqlnotify.cqueues, {})
      try(sqlnotify.cqueues, { pollfd = f, timeout = f })
      try(function() sqlnotify.io(0, "rw!", f) end) -- the message names the caller's line
      -- what works: an object with :pollfd() (a cqueues socket), "w" on a socket, :stop() twice
      local a = socket.pair()
      local w = sqlnotify.io(a, "w", function(revents)
        print("ready " .. revents)
        try(sqlnotify.step)
        sqlnotify.stop()
      end)
      print(getmetatable(w).__name, getmetatable(sqlnotify.cqueues(cqueues.new())).__name)
      sqlnotify.after(0, function() end)
      w = nil
      collectgarbage() -- an active watcher is kept alive by the loop
    ]])
    assert.are.equal(0, p:wait())
    local script = p.script:gsub("%p", "%%%0")
    local out = p:stdout()
    out = out:gsub(script, "SCRIPT")
    assert.are.equal(table.concat({
      "sqlnotify: io needs a file descriptor (an integer, or an object with a pollfd method), got string",
      "sqlnotify: io needs a file descriptor (an integer, or an object with a pollfd method), got nil",
      "sqlnotify: io needs a file descriptor (an integer, or an object with a pollfd method), got table",
      "sqlnotify: io: file descriptor -1 is not open",
      "sqlnotify: io: file descriptor 987 is not open",
      'sqlnotify: io mode must be "r", "w" or "rw", got "x"',
      'sqlnotify: io mode must be "r", "w" or "rw", got nil',
      "sqlnotify: io needs a function, got string",
      "sqlnotify: io: pollfd() returned string, not a file descriptor",
      "sqlnotify: cqueues needs a controller (from cqueues.new()), got nil",
      "sqlnotify: cqueues needs a controller (from cqueues.new()), got table without a pollfd method",
      "sqlnotify: cqueues needs a controller (from cqueues.new()), got table without a step method",
      'SCRIPT:18: sqlnotify: io mode must be "r", "w" or "rw", got "rw!"',
      "sqlnotify.io\tsqlnotify.cqueues",
      "ready w",
      "sqlnotify: step() cannot run inside the loop (from a handler or callback)",
      "",
    }, "\n"), out)
    p:assert_clean()
  end)
end)

describe("sqlnotify.cqueues", function()
  local server

  -- A server in another process that answers one request only when told to (a file appears).
  local function slow_server()
    local dir = H.tmpdir()
    files = files + 1
    local s = { sock = dir .. "/slow" .. files .. ".sock", release = dir .. "/release" .. files,
      out = dir .. "/slow" .. files .. ".out", script = dir .. "/slow" .. files .. ".lua" }
    H.spit(s.script, [[
      local cqueues = require("cqueues")
      local socket = require("cqueues.socket")
      io.stdout:setvbuf("line")
      local cq = cqueues.new()
      cq:wrap(function()
        local srv = assert(socket.listen { path = arg[1], unlink = true })
        assert(srv:listen())
        print("listening")
        local con = assert(srv:accept())
        local request = con:read("*l")
        local deadline = cqueues.monotime() + 60
        while not io.open(arg[2]) and cqueues.monotime() < deadline do cqueues.sleep(0.01) end
        con:write("pong " .. request .. "\n")
        con:flush()
        con:close()
        print("answered " .. request)
      end)
      assert(cq:loop())
    ]])
    assert(H.sh("lua5.4 " .. q(s.script) .. " " .. q(s.sock) .. " " .. q(s.release) .. " >" .. q(s.out)
      .. " 2>&1 </dev/null & echo $! >" .. q(s.out .. ".pid")))
    local deadline = H.now() + 10
    while not H.slurp(s.out):find("listening") do
      assert(H.now() < deadline, "the slow server did not start: " .. H.slurp(s.out))
      H.sleep(0.01)
    end
    return s
  end

  after_each(function()
    if server then H.sh("kill " .. H.slurp(server.out .. ".pid"):match("%d+") .. " 2>/dev/null") end
    server = nil
  end)

  it("runs a coroutine's socket round-trip while events reach handlers and coroutines", function()
    server = slow_server()
    local db = fresh_db()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      local cqueues = require("cqueues")
      local condition = require("cqueues.condition")
      local socket = require("cqueues.socket")
      io.stdout:setvbuf("line")
      local n = assert(sqlnotify.notifier { url = "sqlite:///" .. arg[1] })
      n:watch("items", "insert", { extra_columns = { "name" } })
      local cq = cqueues.new()
      sqlnotify.cqueues(cq)
      -- The handler stays a plain function: it queues the work and signals a coroutine.
      local queue, more = {}, condition.new()
      n:subscribe("items", "insert", function(ev)
        print("event " .. ev.extra_columns.name)
        queue[#queue + 1] = ev.extra_columns.name
        more:signal()
      end)
      cq:wrap(function()
        while true do
          while #queue == 0 do more:wait() end
          print("coroutine got " .. table.remove(queue, 1))
        end
      end)
      cq:wrap(function()
        local con = assert(socket.connect { path = arg[2] })
        con:write("ping\n")
        con:flush()
        print("request sent")
        print("reply " .. assert(con:read("*l")))
        con:close()
        sqlnotify.stop()
      end)
    ]], { db, server.sock })
    finally(function() p:kill("KILL") end)
    assert.is_true(p:wait_for("request sent\n"), p:stdout() .. p:stderr())
    assert.is_true(p:wait_for("listening on 1 channel", 10, "err"), p:stderr())
    insert(db, "a")
    insert(db, "b", "c")
    assert.is_true(p:wait_for("coroutine got c\n"), p:stdout() .. p:stderr())
    -- Every event went through while the round-trip was still waiting for its reply.
    assert.is_nil(p:stdout():find("reply"))
    H.spit(server.release, "")
    assert.are.equal(0, p:wait())
    local out = lines(p:stdout())
    assert.are.equal(8, #out, p:stdout())
    assert.are.equal("request sent", out[1])
    assert.are.equal("reply pong ping", out[8])
    for i, name in ipairs { "a", "b", "c" } do
      assert.is_true(pos(out, "event " .. name) < pos(out, "coroutine got " .. name))
      if i > 1 then
        assert.is_true(pos(out, "event " .. ({ "a", "b" })[i - 1]) < pos(out, "event " .. name))
        assert.is_true(pos(out, "coroutine got " .. ({ "a", "b" })[i - 1]) < pos(out, "coroutine got " .. name))
      end
    end
    assert.matches("answered ping", H.slurp(server.out))
    p:assert_clean()
  end)

  it("wakes a sleeping coroutine at the controller's own deadline, with nothing else to wake the loop", function()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      local cqueues = require("cqueues")
      local cq = cqueues.new()
      local bridge = sqlnotify.cqueues(cq)
      cq:wrap(function()
        cqueues.sleep(0.05)
        print("slept")
        bridge:stop()
        bridge:stop()
        cq:wrap(function() print("never: the bridge is stopped") end)
        sqlnotify.after(0.05, sqlnotify.stop)
      end)
    ]])
    assert.are.equal(0, p:wait())
    assert.are.equal("slept\n", p:stdout())
    p:assert_clean()
  end)

  it("logs a failing coroutine with its traceback and a failing controller, and goes on", function()
    local db = fresh_db()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      local cqueues = require("cqueues")
      io.stdout:setvbuf("line")
      local n = assert(sqlnotify.notifier { url = "sqlite:///" .. arg[1] })
      n:watch("items", "insert", { extra_columns = { "name" } })
      local cq = cqueues.new()
      sqlnotify.cqueues(cq)
      -- A controller whose step raises: logged, retried later, the loop goes on.
      local idle = cqueues.new()
      local broken = sqlnotify.cqueues {
        pollfd = function() return idle:pollfd() end,
        timeout = function() return 0 end,
        step = function() error("broken controller") end,
      }
      n:subscribe("items", "insert", function(ev)
        local name = ev.extra_columns.name
        print("event " .. name)
        cq:wrap(function()
          if name == "bad" then error("coroutine failed on " .. name) end
          print("coroutine ran for " .. name)
          if name == "last" then broken:stop(); sqlnotify.stop() end
        end)
      end)
      print("ready")
    ]], { db })
    finally(function() p:kill("KILL") end)
    assert.is_true(p:wait_for("listening on 1 channel", 10, "err"), p:stderr())
    assert.is_true(p:wait_for("cqueues controller failed", 10, "err"), p:stderr())
    insert(db, "first")
    assert.is_true(p:wait_for("coroutine ran for first\n"), p:stdout() .. p:stderr())
    insert(db, "bad")
    assert.is_true(p:wait_for("cqueues coroutine failed", 10, "err"), p:stderr())
    insert(db, "last")
    assert.are.equal(0, p:wait())
    assert.are.equal("ready\nevent first\ncoroutine ran for first\nevent bad\nevent last\ncoroutine ran for last\n",
      p:stdout())
    local err = p:stderr()
    assert.matches("error sqlnotify: cqueues coroutine failed: [^\n]+:19: coroutine failed on bad\n"
      .. "stack traceback:\n%s+%[C%]: in function 'error'\n", err)
    assert.matches("error sqlnotify: cqueues controller failed: [^\n]+:13: broken controller\nstack traceback:\n", err)
    p:assert_clean()
  end)
end)

describe("sqlnotify.step", function()
  it("lets cqueues be the main loop and drive ours", function()
    local db = fresh_db()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      local cqueues = require("cqueues")
      io.stdout:setvbuf("line")
      local n = assert(sqlnotify.notifier { url = "sqlite:///" .. arg[1] })
      n:watch("items", "insert", { extra_columns = { "name" } })
      local got = {}
      n:subscribe("items", "insert", function(ev) got[#got + 1] = ev.extra_columns.name end)
      n:start()
      local cq = cqueues.new()
      cq:wrap(function()
        print("cqueues runs")
        while #got < 2 do
          sqlnotify.step() -- events, timers, io of ours that are ready now
          cqueues.sleep(0.005)
        end
      end)
      assert(cq:loop()) -- the script's own main loop, before the host's
      print("got " .. table.concat(got, " "))
      sqlnotify.stop() -- the host's loop then returns at once
    ]], { db })
    finally(function() p:kill("KILL") end)
    assert.is_true(p:wait_for("cqueues runs\n"), p:stderr())
    insert(db, "x", "y")
    assert.are.equal(0, p:wait())
    assert.are.equal("cqueues runs\ngot x y\n", p:stdout())
    p:assert_clean()
  end)
end)
