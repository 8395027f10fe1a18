-- --metrics ADDR and sqlnotify.metrics{} (SPEC §8.4), through the real host: the real
-- `promtool check metrics` accepts /metrics, the figures are exact after N events and K
-- failures, a table name with a quote, a backslash and a newline comes out escaped, /ready
-- turns 503 while PostgreSQL is away (a socat proxy stopped) and 200 after the reconnect,
-- clients that connect and never send hold nothing up, and a port in use exits 2.
local H = require("helper")
local sqlnotify = require("sqlnotify")

-- Ports of this spec (19100-19109).
local P_SQLITE, P_BUSY, P_LUA, P_DURABLE, P_PROXY, P_PG, P_IDLE = 19100, 19101, 19102, 19103, 19104, 19105, 19106
local P_FDS, P_STALL = 19107, 19108
local S = "spec32"

-- GET url with the curl CLI: status code, body.
local function get(port, path)
  local out, code = H.tmpfile(".body"), H.tmpfile(".code")
  H.sh(string.format("curl -s -m 5 -o %s -w '%%{http_code}' http://127.0.0.1:%d%s >%s 2>/dev/null", H.shell_quote(out),
    port, path, H.shell_quote(code)))
  return tonumber(H.slurp(code)), H.slurp(out)
end

-- The value of one series (name and labels exactly as printed), or nil.
local function value(text, series)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
  end
  return nil
end

local function promtool(text)
  local file, out = H.tmpfile(".prom"), H.tmpfile(".out")
  H.spit(file, text)
  local ok = H.sh("promtool check metrics <" .. H.shell_quote(file) .. " >" .. H.shell_quote(out) .. " 2>&1")
  return ok, H.slurp(out)
end

-- Wait until get(port, path) answers code (and body matches pattern, if given).
local function wait_get(port, path, code, pattern, timeout)
  local deadline = H.now() + (timeout or 20)
  local c, body
  repeat
    c, body = get(port, path)
    if c == code and (not pattern or body:find(pattern)) then return true, body end
    H.sleep(0.1)
  until H.now() > deadline
  return false, tostring(c) .. " " .. tostring(body)
end

local ODD = 'q"b\\s\nn\xff' -- a quote, a backslash, a newline, a byte that is no UTF-8
local ODD_SQL = '"q""b\\s\nn\xff"'

describe("--metrics on SQLite", function()
  local db, p
  before_each(function()
    db = H.fresh_sqlite(S)
    H.sqlite_cli(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE " .. ODD_SQL
      .. " (id INTEGER PRIMARY KEY);")
  end)
  after_each(function()
    if p and not p:exited() then p:kill("KILL") p:wait() end
  end)

  local SCRIPT = [[
    local sqlnotify = require("sqlnotify")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1] })
    n:watch("t", "insert")
    n:watch(arg[2], "insert")
    n:subscribe("t", "insert", { retry = { attempts = 2, delay = 0 } }, function(ev)
      if ev.id <= 3 then error("refused " .. ev.id) end
      print("ok " .. ev.id)
    end)
    n:subscribe(arg[2], "insert", function(ev) print("odd " .. ev.id) end)
    sqlnotify.every(0.05, function() print("tick") end)
  ]]

  it("serves exact counts that promtool accepts, with odd table names escaped", function()
    H.host_options = { "--metrics", "127.0.0.1:" .. P_SQLITE }
    p = H.host(SCRIPT, { db, ODD })
    H.host_options = nil
    assert.is_true(p:wait_for("tick", 10), p:stderr())
    assert.are.same({ 200, "ok\n" }, { get(P_SQLITE, "/health") })
    assert.are.same({ 200, "ready\n" }, { get(P_SQLITE, "/ready") })
    local code, before = get(P_SQLITE, "/metrics")
    assert.are.equal(200, code)
    local T = 'consumer="",table="main.t",operation="insert"'
    assert.are.equal(0, value(before, "sqlnotify_events_delivered_total{" .. T .. "}"))

    -- 10 events, ids 1-3 refused on both attempts; 2 on the odd table
    H.sqlite_cli(db, "INSERT INTO t (v) VALUES " .. ("('x'),"):rep(9) .. "('x'); INSERT INTO " .. ODD_SQL
      .. " (id) VALUES (1), (2);")
    assert.is_true(p:wait_for("ok 10\n", 10), p:stderr())
    assert.is_true(p:wait_for("odd 2\n", 10), p:stderr())
    assert.is_true(p:wait_for("failed 2 time%(s%), given up", 10, "err"))
    local body
    local deadline = H.now() + 10
    repeat -- the third dead letter comes after its retry
      code, body = get(P_SQLITE, "/metrics")
    until value(body, "sqlnotify_dead_letters_total{" .. T .. "}") == 3 or H.now() > deadline
    local ok, why = promtool(body)
    assert.is_true(ok, why .. "\n" .. body)
    assert.are.equal(10, value(body, "sqlnotify_events_delivered_total{" .. T .. "}"))
    assert.are.equal(6, value(body, "sqlnotify_handler_failures_total{" .. T .. "}"))
    assert.are.equal(3, value(body, "sqlnotify_retries_total{" .. T .. "}"))
    assert.are.equal(3, value(body, "sqlnotify_dead_letters_total{" .. T .. "}"))
    assert.are.equal(10, value(body, "sqlnotify_commit_to_handler_seconds_count{" .. T .. "}"))
    assert.are.equal(10, value(body, "sqlnotify_commit_to_handler_seconds_bucket{" .. T .. ',le="+Inf"}'))
    local O = 'consumer="",table="main.q\\"b\\\\s\\nn\u{FFFD}",operation="insert"'
    assert.are.equal(2, value(body, "sqlnotify_events_delivered_total{" .. O .. "}"), body)
    assert.are.equal(0, value(body, "sqlnotify_handler_failures_total{" .. O .. "}"))
    assert.are.equal(1, value(body, 'sqlnotify_connection_up{consumer="",database="SQLite database \\"' .. db .. '\\""}'))
    assert.are.same({ 404 }, { (get(P_SQLITE, "/nothing")) })
    p:stop()
  end)

  it("times a durable catch-up from each journal row's write, and counts the journal's rows", function()
    local DURABLE = [[
      local sqlnotify = require("sqlnotify")
      local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], consumer = "s32_durable" })
      n:watch("t", "insert")
      n:subscribe("t", "insert", function(ev) print("got " .. ev.id) end)
      assert(n:start())
      print("ready")
    ]]
    H.host_options = { "--metrics", "127.0.0.1:" .. P_DURABLE }
    p = H.host(DURABLE, { db })
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    p:stop() -- registered: the rows below are kept for it
    H.sqlite_cli(db, "INSERT INTO t (v) VALUES " .. ("('x'),"):rep(4) .. "('x');")
    H.sleep(1.5)
    p = H.host(DURABLE, { db })
    H.host_options = nil
    assert.is_true(p:wait_for("got 5\n", 10), p:stderr())
    local T = 'consumer="s32_durable",table="main.t",operation="insert"'
    local ok, body = wait_get(P_DURABLE, "/metrics", 200, "sqlnotify_journal_rows{", 15)
    assert.is_true(ok, body)
    -- written 1.5 s before they were read: none under a second (from receipt, all would be)
    assert.are.equal(5, value(body, "sqlnotify_commit_to_handler_seconds_count{" .. T .. "}"), body)
    assert.are.equal(0, value(body, "sqlnotify_commit_to_handler_seconds_bucket{" .. T .. ',le="1"}'), body)
    assert.is_true(value(body, "sqlnotify_commit_to_handler_seconds_sum{" .. T .. "}") >= 5 * 1.4, body)
    -- the change log holds the five rows (kept for the retention, acknowledged or not)
    local rows = tonumber(H.sqlite_cli(db, "SELECT count(*) FROM sqlnotify_changes;"):match("%d+"))
    assert.are.equal(rows, value(body, 'sqlnotify_journal_rows{database="SQLite database \\"' .. db .. '\\""}'),
      body)
    assert.is_true(rows >= 5, tostring(rows))
    local promok, why = promtool(body)
    assert.is_true(promok, why .. "\n" .. body)
    p:stop()
  end)

  it("keeps delivering while clients connect and never send, and drops them at their deadline", function()
    H.host_options = { "--metrics", "127.0.0.1:" .. P_IDLE }
    p = H.host(SCRIPT, { db, ODD })
    H.host_options = nil
    assert.is_true(p:wait_for("tick", 10), p:stderr())
    -- 70 idle connections (more than the server keeps at once) and one that waits for its end
    local ended = H.tmpfile(".ended")
    H.sh("bash -c " .. H.shell_quote(string.format("for i in $(seq 70); do (exec 3<>/dev/tcp/127.0.0.1/%d; sleep 30) & "
      .. "done", P_IDLE)) .. " >/dev/null 2>&1")
    H.sleep(0.3)
    H.sh("bash -c " .. H.shell_quote(string.format("exec 3<>/dev/tcp/127.0.0.1/%d; timeout 25 cat <&3 >/dev/null; "
      .. "echo $? >%s", P_IDLE, H.shell_quote(ended))) .. " >/dev/null 2>&1 &")
    H.sleep(0.3)
    H.sqlite_cli(db, "INSERT INTO t (id, v) VALUES (11, 'a'), (12, 'b');")
    assert.is_true(p:wait_for("ok 12\n", 10), p:stderr())
    local ok, body = wait_get(P_IDLE, "/metrics", 200, nil, 5)
    assert.is_true(ok, body)
    assert.are.equal(2, value(body, 'sqlnotify_events_delivered_total{consumer="",table="main.t",operation="insert"}'))
    -- the last idle client is closed by the server (cat ends with 0), not by its own timeout (124)
    local deadline = H.now() + 20
    while H.slurp(ended) == "" and H.now() < deadline do H.sleep(0.1) end
    assert.are.equal("0", H.slurp(ended):match("%d+"))
    p:stop()
  end)

  -- The CPU seconds process pid has used (user and system), from /proc.
  local function cpu_of(pid)
    local f = assert(io.open("/proc/" .. pid .. "/stat"))
    local stat = f:read("a")
    f:close()
    local utime, stime = stat:match("^%d+ %b() %a" .. (" %S+"):rep(10) .. " (%d+) (%d+)")
    return (tonumber(utime) + tonumber(stime)) / 100 -- USER_HZ
  end

  -- Out of descriptors, a waiting connection keeps the listening socket readable: accepting
  -- again at once would spin the loop. It pauses, says so once, and serves it when one is free.
  it("pauses instead of spinning while out of descriptors, and serves once one is free", function()
    -- valgrind closes a connection accepted past its descriptor limit itself (then EMFILE)
    local valgrind = H.host_wrapper:find("valgrind", 1, true)
    local hog = [[
      local sqlnotify = require("sqlnotify")
      local held, free = {}, arg[1]
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        held[#held + 1] = f
      end
      print("hogged " .. #held)
      local t
      t = sqlnotify.every(0.05, function()
        table.remove(held):close() -- a descriptor to look for the flag with, taken back at once
        local f = io.open(free)
        if not f then
          held[#held + 1] = io.open("/dev/null")
          return
        end
        f:close()
        for _, h in ipairs(held) do h:close() end
        held = {}
        print("freed")
        t:stop()
      end)
      sqlnotify.every(0.05, function() end) -- keeps the host running
    ]]
    local free = H.tmpfile(".free")
    os.remove(free)
    local wrapper = H.host_wrapper
    H.host_wrapper = "prlimit --nofile=64:64 " .. wrapper
    H.host_options = { "--metrics", "127.0.0.1:" .. P_FDS }
    p = H.host(hog, { free })
    H.host_options, H.host_wrapper = nil, wrapper
    assert.is_true(p:wait_for("hogged %d+", 10), p:stderr())
    local code = H.tmpfile(".code")
    H.sh(string.format("curl -s -m 20 -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/health >%s 2>/dev/null &",
      P_FDS, H.shell_quote(code)))
    H.sleep(0.5)
    local before = cpu_of(p.pid)
    H.sleep(2)
    local used = cpu_of(p.pid) - before
    assert.is_true(used < 0.5, string.format("%.2f s of CPU in 2 s while out of descriptors", used))
    if not valgrind then assert.are.equal("", H.slurp(code)) end -- still waiting
    H.spit(free, "")
    assert.is_true(p:wait_for("freed", 10), p:stderr())
    local deadline = H.now() + 10
    while not valgrind and H.slurp(code) == "" and H.now() < deadline do H.sleep(0.05) end
    if not valgrind then assert.are.equal("200", H.slurp(code)) end
    assert.are.same({ 200, "ok\n" }, { get(P_FDS, "/health") })
    local said = 0
    for _ in p:stderr():gmatch("cannot accept a connection: Too many open files; trying again every 0.5 s") do
      said = said + 1
    end
    assert.are.equal(1, said, p:stderr())
    p:stop()
  end)

  it("exits 2 with a clear line when the port is in use or the address is bad", function()
    H.host_options = { "--metrics", "127.0.0.1:" .. P_BUSY }
    p = H.host(SCRIPT, { db, ODD })
    assert.is_true(p:wait_for("tick", 10), p:stderr())
    local q = H.host(SCRIPT, { db, ODD })
    assert.are.equal(2, q:wait())
    assert.are.equal("sqlnotify: --metrics 127.0.0.1:" .. P_BUSY .. ": cannot listen: Address already in use\n",
      q:stderr())
    for addr, why in pairs({ ["nonsense"] = "expected HOST:PORT or :PORT",
        ["127.0.0.1:0"] = "the port must be a number from 1 to 65535",
        ["no.such.host.invalid:19107"] = 'cannot resolve "no.such.host.invalid"' }) do
      H.host_options = { "--metrics", addr }
      q = H.host(SCRIPT, { db, ODD })
      assert.are.equal(2, q:wait())
      local err = q:stderr()
      assert.are.equal("sqlnotify: --metrics " .. addr .. ": " .. why, err:sub(1, #("sqlnotify: --metrics " .. addr
        .. ": " .. why)), err)
      assert.are.equal(1, select(2, err:gsub("\n", "")))
    end
    H.host_options = nil
    p:stop()
  end)
end)

describe("sqlnotify.metrics{} in plain Lua", function()
  it("serves from the script's own loop, and raises at the caller for a port in use", function()
    H.host_options = { "--metrics", "127.0.0.1:" .. P_BUSY }
    local p = H.host("require('sqlnotify').every(0.05, function() print('tick') end)")
    H.host_options = nil
    finally(function() p:stop() end)
    assert.is_true(p:wait_for("tick", 10), p:stderr())
    local ok, err = pcall(sqlnotify.metrics, { listen = "127.0.0.1:" .. P_BUSY })
    assert.is_false(ok)
    assert.matches("^spec/32%-metrics_spec%.lua:%d+: sqlnotify: metrics: 127%.0%.0%.1:19101: cannot listen: "
      .. "Address already in use$", err)
    assert.has_error(function() sqlnotify.metrics{ port = 1 } end, 'sqlnotify: unknown metrics option "port"')
    assert.is_true(sqlnotify.metrics{ listen = "127.0.0.1:" .. P_LUA })
    local out = H.tmpfile(".out")
    H.sh(string.format("curl -s -m 5 http://127.0.0.1:%d/health >%s 2>&1 &", P_LUA, H.shell_quote(out)))
    local deadline = H.now() + 5
    while H.slurp(out) == "" and H.now() < deadline do H.run_for(0.05) end
    assert.are.equal("ok\n", H.slurp(out))
  end)
end)

describe("--metrics on PostgreSQL", function()
  local proxy, p
  local function start_proxy()
    return H.daemon(string.format("socat TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:5432", P_PROXY),
      P_PROXY)
  end
  -- the proxy and every connection it forwards
  local function stop_proxy()
    if proxy and proxy.pid then H.sh(string.format("for c in $(pgrep -P %s); do kill -9 $c; done", proxy.pid)) end
    if proxy then proxy:stop() end
  end
  before_each(function()
    H.fresh_schema(S)
    H.psql("CREATE TABLE spec32.t (id int PRIMARY KEY);")
  end)
  after_each(function()
    if p and not p:exited() then p:kill("KILL") p:wait() end
    stop_proxy()
    H.drop_schema(S)
  end)

  it("turns /ready 503 while the database is away and 200 after the reconnect", function()
    proxy = start_proxy()
    local url = H.pg_url:gsub("^(postgresql://[^/]*@)[^/]*", "%1127.0.0.1:" .. P_PROXY)
    H.host_options = { "--metrics", "127.0.0.1:" .. P_PG }
    p = H.host([[
      local sqlnotify = require("sqlnotify")
      local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
      n:watch("spec32.t", "insert")
      n:subscribe("spec32.t", "insert", function(ev) print("ev " .. ev.id) end)
      n:on("reconnect", function() print("reconnected") end)
      sqlnotify.after(0, function() print("ready") end) -- once started
    ]], nil, "PG=" .. H.shell_quote(url))
    H.host_options = nil
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    assert.is_true((wait_get(P_PG, "/ready", 200, "^ready\n$", 10)))
    stop_proxy()
    local ok, body = wait_get(P_PG, "/ready", 503, "lost", 30)
    assert.is_true(ok, body)
    assert.matches("^not ready: the listener of database \"[^\"]+\" on 127%.0%.0%.1:" .. P_PROXY
      .. " has been lost for [%d.]+ s %(reconnecting%)\n$", body)
    local _, m = get(P_PG, "/metrics")
    local series = '{consumer="",database="database \\"' .. body:match('database "([^"]+)"') .. '\\" on 127.0.0.1:'
      .. P_PROXY .. '"}'
    assert.are.equal(0, value(m, "sqlnotify_connection_up" .. series), m)
    assert.are.equal(0, value(m, "sqlnotify_reconnects_total" .. series), m)
    proxy:start()
    assert.is_true(p:wait_for("reconnected", 60), p:stderr())
    assert.is_true((wait_get(P_PG, "/ready", 200, "^ready\n$", 10)))
    _, m = get(P_PG, "/metrics")
    assert.are.equal(1, value(m, "sqlnotify_connection_up" .. series), m)
    assert.are.equal(1, value(m, "sqlnotify_reconnects_total" .. series), m)
    H.psql("INSERT INTO spec32.t VALUES (1);")
    assert.is_true(p:wait_for("ev 1\n", 10))
    p:stop()
  end)

  it("shows a durable consumer's lag and shares", function()
    H.host_options = { "--metrics", "127.0.0.1:" .. P_PG }
    p = H.host([[
      local sqlnotify = require("sqlnotify")
      local n = assert(sqlnotify.notifier{ url = os.getenv("PG"), consumer = "spec32_c" })
      n:watch("spec32.t", "insert")
      n:subscribe("spec32.t", "insert", function(ev) print("ev " .. ev.id) end)
      sqlnotify.after(0, function() print("ready") end) -- once started
    ]], nil, "PG=" .. H.shell_quote(H.pg_url))
    H.host_options = nil
    finally(function()
      local n = H.pg_notifier()
      n:drop_consumer("spec32_c")
      n:close()
    end)
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    H.psql("INSERT INTO spec32.t SELECT generate_series(1, 5);")
    assert.is_true(p:wait_for("ev 5\n", 20), p:stderr() .. p:stdout())
    -- lag is read once when the consumer starts, so the first scrape has it; then after a
    -- scrape, from the loop: a later scrape shows it
    local _, first = get(P_PG, "/metrics")
    assert.is_number(value(first, 'sqlnotify_lag_events{consumer="spec32_c"}'), first)
    local ok, body = false, nil
    local deadline = H.now() + 20
    repeat
      local _, m = get(P_PG, "/metrics")
      body = m
      ok = value(m, 'sqlnotify_lag_events{consumer="spec32_c"}') == 0 and m:find("sqlnotify_journal_rows{", 1, true) ~= nil
      if not ok then H.sleep(0.5) end
    until ok or H.now() > deadline
    assert.is_true(ok, body)
    assert.is_number(value(body, 'sqlnotify_lag_seconds{consumer="spec32_c"}'))
    assert.are.equal(16, value(body, 'sqlnotify_shares_held{consumer="spec32_c"}'), body)
    -- the journal's rows, every consumer's: this spec writes nothing more, and none is past its retention
    local jrows = tonumber(body:match('\nsqlnotify_journal_rows{database="[^\n]*"} (%d+)\n'))
    assert.are.equal(tonumber(H.psql("SELECT count(*) FROM sqlnotify.journal"):match("%d+")), jrows, body)
    assert.is_true(jrows >= 5, body)
    assert.are.equal(5, value(body,
      'sqlnotify_events_delivered_total{consumer="spec32_c",table="spec32.t",operation="insert"}'))
    assert.is_true(promtool(body))
    p:stop()
  end)

  it("keeps its loop, /health and /metrics while the server stalls; its checks wait for an answer, and SIGTERM "
    .. "leaves within 5 s", function()
    local db = H.pg_url:match("/([^/?]+)$") or H.pg_url:match("/([^/?]+)%?")
    local stall = H.pg_proxy(db)
    finally(function()
      stall.stop()
      local n = H.pg_notifier()
      n:drop_consumer("spec32_stall")
      n:close()
    end)
    -- statements wait 8 s for an answer; the leave at exit gets at most 5
    local url = string.format("postgresql://root@127.0.0.1:%d/%s?connect_timeout=2&sqlnotify_statement_timeout=8",
      stall.port, db)
    H.host_options = { "--metrics", "127.0.0.1:" .. P_STALL }
    p = H.host([[
      local sqlnotify = require("sqlnotify")
      local n = assert(sqlnotify.notifier{ url = os.getenv("PG"), consumer = "spec32_stall", verify_interval = 0.5 })
      n:watch("spec32.t", "insert")
      n:subscribe("spec32.t", "insert", function(ev) print("ev " .. ev.id) end)
      n:on("error", function(msg, ctx) if ctx.source == "verify" then print("verify: " .. msg) end end)
      local last, worst = sqlnotify.now(), 0 -- the longest the loop was away, in whole seconds
      sqlnotify.every(0.1, function()
        local now = sqlnotify.now()
        if now - last >= worst + 1 then
          worst = math.floor(now - last)
          print("held " .. worst)
        end
        last = now
      end)
      sqlnotify.after(0, function() print("ready") end) -- once started
    ]], nil, "PG=" .. H.shell_quote(url))
    H.host_options = nil
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    H.psql("INSERT INTO spec32.t VALUES (1), (2);")
    assert.is_true(p:wait_for("ev 2\n", 10), p:stderr() .. p:stdout())
    assert.is_true((wait_get(P_STALL, "/metrics", 200, '\nsqlnotify_lag_events{consumer="spec32_stall"} 0\n', 20)))

    stall.stall()
    H.psql("INSERT INTO spec32.t VALUES (3);") -- straight to the server: in the journal, read once it answers
    -- scrapes during the stall ask for the lag again (every 5 s), the triggers' check every 0.5 s
    local deadline, scrapes = H.now() + 12, 0
    repeat
      local code, body = get(P_STALL, "/health")
      assert.are.equal(200, code)
      assert.are.equal("ok\n", body)
      code = get(P_STALL, "/metrics")
      assert.are.equal(200, code)
      scrapes = scrapes + 1
      H.sleep(0.5)
    until H.now() > deadline
    assert.is_true(scrapes >= 10)
    local target = 'database "' .. db .. '" on 127.0.0.1:' .. stall.port
    local skipped = "checking the triggers is skipped while " .. target .. " does not answer: statement on "
      .. target .. " timed out after 8 s (sqlnotify_statement_timeout in the URL); the query connection was closed"
    assert.are.equal("ready\nev 1\nev 2\nverify: " .. skipped .. "\n", p:stdout())
    local _, said = p:stderr():gsub("does not answer", "")
    assert.are.equal(1, said, p:stderr())
    assert.truthy(p:stderr():find(" warn  sqlnotify: " .. skipped .. "\n", 1, true), p:stderr())

    stall.resume()
    assert.is_true(p:wait_for("ev 3\n", 20), p:stderr() .. p:stdout())
    assert.is_true(p:wait_for(" info  sqlnotify: " .. target:gsub("%p", "%%%0") .. " answers again: its periodic "
      .. "checks run again\n", 10, "err"), p:stderr())
    H.psql("INSERT INTO spec32.t VALUES (4);")
    assert.is_true(p:wait_for("ev 4\n", 10), p:stderr() .. p:stdout())

    stall.stall()
    p:kill("TERM")
    assert.are.equal(0, p:wait(20), p:stderr())
    p:assert_clean()
    -- nothing held the loop a whole second, nor delivered anything twice
    assert.are.equal("ready\nev 1\nev 2\nverify: " .. skipped .. "\nev 3\nev 4\n", p:stdout())
    assert.truthy(p:stderr():find(' warn  sqlnotify: consumer "spec32_stall" could not leave its group: statement on '
      .. target .. " timed out after 5 s (sqlnotify_statement_timeout in the URL); the control connection was "
      .. "closed; its shares pass to the others when its lease runs out, and what it acknowledged since the last "
      .. "save is delivered again\n", 1, true), p:stderr())
  end)
end)
