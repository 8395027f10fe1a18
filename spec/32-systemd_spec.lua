-- systemd's notification protocol through the real host: a socat receiver stands in for
-- systemd on a unix datagram socket (a path, or an abstract name), the host gets its name in
-- NOTIFY_SOCKET, and the spec reads what arrived: READY=1 only once the script ran and its
-- notifier listens, RELOADING=1 then READY=1 at SIGHUP, STOPPING=1 at SIGTERM before the
-- shutdown grace, WATCHDOG=1 every WATCHDOG_USEC/2 while the loop turns.
local H = require("helper")

local S = "spec32"
local q = H.shell_quote

-- Every line the receiver got (each message the host sends ends with a newline).
local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- The lines but the watchdog's, and the number of those.
local function without_watchdog(list)
  local out, n = {}, 0
  for _, l in ipairs(list) do
    if l == "WATCHDOG=1" then n = n + 1 else out[#out + 1] = l end
  end
  return out, n
end

local receivers = 0
-- A socat bound to a unix datagram socket, writing what it receives to a file. abstract:
-- an abstract name instead of a path. r.env is NOTIFY_SOCKET=... for the host.
local function receiver(abstract)
  receivers = receivers + 1
  local r = { file = H.tmpfile(".notify"), pidfile = H.tmpfile(".pid") }
  local address
  if abstract then
    r.name = string.format("sqlnotify-spec32-%d-%d", math.random(1, 1e9), receivers)
    r.env = "NOTIFY_SOCKET=" .. q("@" .. r.name)
    address = "ABSTRACT-RECV:" .. r.name
  else
    r.path = H.tmpdir() .. "/notify" .. receivers .. ".sock"
    r.env = "NOTIFY_SOCKET=" .. q(r.path)
    address = "UNIX-RECV:" .. r.path .. ",unlink-early"
  end
  H.spit(r.file, "")
  assert(H.sh(string.format("socat -u %s STDOUT >>%s 2>&1 </dev/null & echo $! >%s", q(address), q(r.file),
    q(r.pidfile))))
  r.pid = H.slurp(r.pidfile):match("%d+")
  local deadline = H.now() + 5
  local bound
  repeat
    if abstract then
      bound = H.slurp("/proc/net/unix"):find("@" .. r.name, 1, true) ~= nil
    else
      bound = H.sh("test -S " .. q(r.path))
    end
    if not bound then H.sleep(0.02) end
  until bound or H.now() > deadline
  assert(bound, "socat did not bind: " .. H.slurp(r.file))
  function r.lines() return lines(H.slurp(r.file)) end
  -- Wait until the lines other than WATCHDOG=1 number n; those lines.
  function r.wait(n, timeout)
    local deadline2 = H.now() + (timeout or 10)
    local got = without_watchdog(r.lines())
    while #got < n and H.now() < deadline2 do
      H.sleep(0.01)
      got = without_watchdog(r.lines())
    end
    return got
  end
  function r.watchdogs()
    local _, n = without_watchdog(r.lines())
    return n
  end
  function r.stop()
    if r.pid then H.sh("kill " .. r.pid .. " 2>/dev/null") end
    r.pid = nil
  end
  return r
end

local WATCHER = [[
local sqlnotify = require("sqlnotify")
local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
n:watch("spec32.t", "insert")
n:subscribe("spec32.t", "insert", function(ev) print("event " .. ev.id) end)
]]

local READY = { "READY=1", "STATUS=listening on 1 channel(s) of 1 notifier(s)" }

local function env(r, extra)
  return "PG=" .. q(H.pg_url) .. " " .. (r and r.env or "") .. " " .. (extra or "")
end

describe("systemd notification", function()
  local procs, recvs = {}, {}
  local function host(script, r, extra, args)
    local p = H.host(script, args or {}, env(r, extra))
    procs[#procs + 1] = p
    return p
  end
  local function recv(abstract)
    local r = receiver(abstract)
    recvs[#recvs + 1] = r
    return r
  end

  setup(function()
    H.fresh_schema(S)
    H.psql("CREATE TABLE spec32.t (id int PRIMARY KEY);")
  end)

  teardown(function()
    H.psql("DELETE FROM spec32.t")
    H.drop_schema(S)
  end)

  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    for _, r in ipairs(recvs) do r.stop() end
    procs, recvs = {}, {}
    H.psql("DELETE FROM spec32.t")
  end)

  it("sends READY=1 once the script ran and its notifier listens, not before; STOPPING=1 at SIGTERM", function()
    local r = recv()
    local go = H.tmpfile(".go")
    local p = host([[
      print("loading")
      -- the script holds its main chunk until the spec lets it go
      local go = os.getenv("GO")
      while true do
        local f = io.open(go)
        if f then f:close() break end
        os.execute("sleep 0.02")
      end
      -- NOTIFY_SOCKET and the watchdog's variables are the host's, not its children's
      print("env", os.getenv("NOTIFY_SOCKET"), os.getenv("WATCHDOG_USEC"),
        io.popen("env | grep -c -e NOTIFY_SOCKET -e WATCHDOG_"):read("l"))
    ]] .. WATCHER, r, "GO=" .. q(go))
    assert.is_true(p:wait_for("loading\n"), p:stderr())
    H.sleep(0.3) -- a READY sent before the script ran would be here by now
    assert.are.same({}, r.lines())
    H.spit(go, "")
    assert.are.same(READY, r.wait(2))
    -- READY came after the notifier logged that it listens, and it does
    assert.matches("listening on 1 channel%(s%)", p:stderr())
    assert.are.equal("loading\nenv\tnil\tnil\t0\n", p:stdout())
    H.psql("INSERT INTO spec32.t VALUES (1)")
    assert.is_true(p:wait_for("event 1\n"), p:stderr())
    p:stop()
    assert.are.same({ READY[1], READY[2], "STOPPING=1", "STATUS=stopping (SIGTERM)" }, r.lines())
  end)

  it("sends RELOADING=1 then READY=1 at SIGHUP, also when the reload fails", function()
    local r = recv()
    local p = host(WATCHER, r)
    assert.are.same(READY, r.wait(2))
    p:kill("HUP")
    local got = r.wait(7)
    assert.are.equal(7, #got, table.concat(got, "\n"))
    assert.are.same({ "RELOADING=1", "STATUS=reloading", "READY=1",
      "STATUS=reloaded: listening on 1 channel(s) of 1 notifier(s)" }, { got[3], got[5], got[6], got[7] })
    assert.matches("^MONOTONIC_USEC=%d+$", got[4])
    -- the reloaded script's handlers receive
    H.psql("INSERT INTO spec32.t VALUES (2)")
    assert.is_true(p:wait_for("event 2\n"), p:stderr())

    H.spit(p.script, "local x = = 1\n")
    p:kill("HUP")
    got = r.wait(12)
    assert.are.same({ "RELOADING=1", "STATUS=reloading", "READY=1",
      "STATUS=reload failed, the previous script runs: listening on 1 channel(s) of 1 notifier(s)" },
      { got[8], got[10], got[11], got[12] })
    assert.is_true(p:wait_for("reload failed; the previous handlers keep running", 5, "err"))
    H.psql("INSERT INTO spec32.t VALUES (3)")
    assert.is_true(p:wait_for("event 3\n"), p:stderr())
    p:stop()
  end)

  it("sends STOPPING=1 when SIGTERM comes, before the handlers in flight finish in the grace", function()
    local r = recv()
    local release = H.tmpfile(".release")
    local p = host([[
      local sqlnotify = require("sqlnotify")
      local n = assert(sqlnotify.notifier{ url = os.getenv("PG"), shutdown_grace = 30 })
      n:watch("spec32.t", "insert")
      n:subscribe("spec32.t", "insert", function(ev)
        print("handling " .. ev.id)
        while not io.open(os.getenv("RELEASE")) do sqlnotify.sleep(0.02) end
        print("handled " .. ev.id)
      end)
    ]], r, "RELEASE=" .. q(release))
    assert.are.same(READY, r.wait(2))
    H.psql("INSERT INTO spec32.t VALUES (4)")
    assert.is_true(p:wait_for("handling 4\n"), p:stderr())
    p:kill("TERM")
    assert.are.same({ READY[1], READY[2], "STOPPING=1", "STATUS=stopping (SIGTERM)" }, r.wait(4))
    assert.is_true(p:wait_for("handlers in flight get up to 30 s", 5, "err"))
    assert.is_false(p:exited())
    H.spit(release, "")
    assert.are.equal(0, p:wait())
    assert.are.equal("handling 4\nhandled 4\n", p:stdout())
    assert.are.equal(4, #r.lines())
    p:assert_clean()
  end)

  it("sends WATCHDOG=1 every WATCHDOG_USEC/2 while the loop turns, none while it is wedged", function()
    local r = recv()
    local p = host(WATCHER .. [[
      -- a handler that holds the loop for two seconds of CPU time, when the spec asks
      n:subscribe("spec32.t", "insert", function(ev)
        if ev.id ~= 99 then return end
        print("wedged")
        local t = os.clock()
        while os.clock() - t < 2 do end
        print("unwedged")
      end)
    ]], r, "WATCHDOG_USEC=200000")
    assert.are.same(READY, r.wait(2))
    local deadline = H.now() + 1
    while r.watchdogs() < 3 and H.now() < deadline do H.sleep(0.01) end
    assert.is_true(r.watchdogs() >= 3, "WATCHDOG=1 within a second: " .. r.watchdogs())
    H.psql("INSERT INTO spec32.t VALUES (99)")
    assert.is_true(p:wait_for("wedged\n"), p:stderr())
    H.sleep(0.3)
    local during = r.watchdogs()
    H.sleep(0.7)
    assert.is_false(p:stdout():find("unwedged", 1, true) ~= nil, "the wedge ended too soon to tell")
    assert.are.equal(during, r.watchdogs())
    assert.is_true(p:wait_for("unwedged\n"), p:stderr())
    deadline = H.now() + 2
    while r.watchdogs() < during + 2 and H.now() < deadline do H.sleep(0.01) end
    assert.is_true(r.watchdogs() >= during + 2, "the pings came back after the wedge")
    p:stop()
  end)

  it("sends no WATCHDOG=1 when WATCHDOG_PID names another process, or without WATCHDOG_USEC", function()
    for _, extra in ipairs { "WATCHDOG_USEC=200000 WATCHDOG_PID=1", "" } do
      local r = recv()
      local p = host(WATCHER, r, extra)
      assert.are.same(READY, r.wait(2))
      H.sleep(1)
      assert.are.same(READY, r.lines())
      p:stop()
      assert.are.same({ READY[1], READY[2], "STOPPING=1", "STATUS=stopping (SIGTERM)" }, r.lines())
    end
  end)

  it("does not keep a script that watches nothing running for the watchdog's sake", function()
    local r = recv()
    local p = host('require("sqlnotify")\nprint("done")\n', r, "WATCHDOG_USEC=200000")
    assert.are.equal(0, p:wait(5))
    assert.are.equal("done\n", p:stdout())
    assert.are.same({ "READY=1", "STATUS=listening on 0 channel(s) of 0 notifier(s)", "STOPPING=1",
      "STATUS=stopping (the loop ended)" }, without_watchdog(r.lines()))
    p:assert_clean()
  end)

  it("notifies an abstract socket named @name", function()
    local r = recv(true)
    local p = host(WATCHER, r, "WATCHDOG_USEC=200000")
    assert.are.same(READY, r.wait(2))
    local deadline = H.now() + 2
    while r.watchdogs() < 2 and H.now() < deadline do H.sleep(0.01) end
    assert.is_true(r.watchdogs() >= 2)
    p:stop()
    assert.are.same({ READY[1], READY[2], "STOPPING=1", "STATUS=stopping (SIGTERM)" }, r.wait(4))
  end)

  it("runs as ever without NOTIFY_SOCKET, and with one that is unusable or that nobody reads", function()
    local gone = H.tmpdir() .. "/nobody.sock"
    local cases = {
      { "", nil },
      { "NOTIFY_SOCKET=relative/notify.sock",
        "systemd: NOTIFY_SOCKET=relative/notify.sock is not a unix socket path" },
      { "NOTIFY_SOCKET=" .. q("/" .. string.rep("x", 200)), "is not a unix socket path" },
      { "NOTIFY_SOCKET=" .. q(gone) .. " WATCHDOG_USEC=100000", "systemd: cannot notify " .. gone .. ": " },
      { "NOTIFY_SOCKET=@", "is not a unix socket path" },
    }
    for i, case in ipairs(cases) do
      local p = host(WATCHER, nil, case[1])
      assert.is_true(p:wait_for("listening on 1 channel", 10, "err"), p:stderr())
      H.psql(string.format("INSERT INTO spec32.t VALUES (%d)", 10 + i))
      assert.is_true(p:wait_for(string.format("event %d\n", 10 + i)), p:stderr())
      H.sleep(0.3) -- a few watchdog pings, for the last but one
      p:stop()
      local err = p:stderr()
      if case[2] then
        local _, count = err:gsub("sqlnotify: systemd:", "")
        assert.are.equal(1, count, err) -- one warning, not one a message
        assert.is_truthy(err:find(case[2], 1, true), err)
      else
        assert.is_nil(err:find("systemd", 1, true), err)
      end
    end
  end)
end)
