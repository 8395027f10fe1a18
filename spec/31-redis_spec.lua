-- sqlnotify.redis (SPEC §8.2), through the real host against private redis-servers on ports
-- 16381-16385 (never the machine's shared one): the cache-invalidation relay of 2,000 updates
-- from a durable SQLite consumer with a Redis restart in the middle, losing nothing; each
-- kind of reply; a pipeline of 100; a refused connection and a server that never answers
-- (timeouts, the loop not blocked); AUTH and SELECT from the URL; misuse raising.
local H = require("helper")

local fmt, q = string.format, H.shell_quote

local PORT, PORT_AUTH, PORT_DEAD, PORT_HANG = 16381, 16382, 16383, 16384
local PASSWORD = "s3cret-pw31"

local function cli(port, args)
  local p = io.popen(fmt("redis-cli -p %d --raw %s 2>&1", port, args))
  local out = p:read("a")
  p:close()
  return out
end

local function lines(text)
  local out = {}
  for l in text:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- Run body (Lua, in a coroutine of sqlnotify.spawn, with `r`-making helpers) on the host;
-- return what it printed, line by line. The script prints "END" when done.
local PRELUDE = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local function show(v)
  if v == sqlnotify.null then return "null" end
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  if v.err then return "{err=" .. string.format("%q", v.err) .. "}" end
  local parts = {}
  for i = 1, #v do parts[i] = show(v[i]) end
  return "[" .. table.concat(parts, ",") .. "]"
end
local function say(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = show(parts[i]) end
  print(table.concat(parts, " ", 1, parts.n))
end
sqlnotify.spawn(function()
  local ok, err = pcall(function()
]]
local POSTLUDE = [[
  end)
  if not ok then print("FAILED " .. tostring(err)) end
  print("END")
  sqlnotify.stop()
end)
]]

local function run(body, timeout)
  local p = H.host(PRELUDE .. body .. POSTLUDE)
  assert(p:wait_for("END\n", timeout or 30), "the script did not finish:\n" .. p:stdout() .. p:stderr())
  assert.are.equal(0, p:wait())
  p:assert_clean()
  return lines(p:stdout()), p:stderr()
end

describe("sqlnotify.redis", function()
  local server
  setup(function()
    server = H.daemon(fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no", PORT), PORT)
  end)
  teardown(function() if server then server:stop() end end)
  before_each(function() cli(PORT, "FLUSHALL") end)

  it("returns each kind of reply; an error reply is nil and the message", function()
    local out = run(fmt([[
    local r = sqlnotify.redis{ url = "redis://127.0.0.1:%d/0" }
    say(r:call("SET", "k", "v\0w"))
    say(r:call("GET", "k"))
    say(r:call("GET", "missing"))
    say(r:call("INCRBY", "n", 41))
    say(r:call("INCR", "n"))
    say(r:call("RPUSH", "l", "a", 2, 3.5))
    say(r:call("LRANGE", "l", 0, -1))
    say(r:call("MGET", "k", "missing"))
    say(r:call("HGET", "k", "f"))
    say(r:call("NOSUCHCOMMAND"))
    say(r:call("MULTI"))
    say(r:call("INCR", "n"))
    say(r:call("LPUSH", "n", "x"))
    say(r:call("EXEC"))
    say(r:call("PING"))
]], PORT))
    assert.are.same({
      '"OK"',
      '"v\\0w"',
      "null",
      "41",
      "42",
      "3",
      '["a","2","3.5"]',
      '["v\\0w",null]',
      'nil "sqlnotify: redis: WRONGTYPE Operation against a key holding the wrong kind of value"',
      'nil "sqlnotify: redis: ERR unknown command \'NOSUCHCOMMAND\', with args beginning with: "',
      '"OK"',
      '"QUEUED"',
      '"QUEUED"',
      '[43,{err="WRONGTYPE Operation against a key holding the wrong kind of value"}]',
      '"PONG"',
      "END",
    }, out)
  end)

  it("runs calls of many coroutines at once on one connection, and a pipeline of 100 in order", function()
    local out = run(fmt([[
    local r = sqlnotify.redis{ url = "redis://127.0.0.1:%d" }
    local got, ids, w = {}, {}, sqlnotify.waiter()
    for i = 1, 50 do
      sqlnotify.spawn(function()
        local v = assert(r:call("RPUSH", "order", i)) -- (got[#got + 1] = ... would take #got before the wait)
        ids[assert(r:call("CLIENT", "ID"))] = true
        got[#got + 1] = v
        if #got == 50 then w:wake() end
      end)
    end
    w:wait()
    say(#got, got[1], got[50])
    local nids = 0
    for _ in pairs(ids) do nids = nids + 1 end
    say("connections", nids)
    local cmds = {}
    for i = 1, 100 do cmds[i] = { "RPUSH", "p", "v" .. i } end
    local res = assert(r:pipeline(cmds))
    local seq = true
    for i = 1, 100 do seq = seq and res[i] == i end
    say(#res, seq)
    say(r:call("LINDEX", "p", 0), r:call("LINDEX", "p", 99))
    say(r:pipeline({ { "SET", "a", "1" }, { "HGET", "a", "f" }, { "GET", "a" } }))
]], PORT))
    assert.are.same({
      "50 1 50",
      '"connections" 1', -- one connection served every coroutine
      "100 true",
      '"v1" "v100"',
      'nil "sqlnotify: redis: pipeline command 2 of 3 failed: WRONGTYPE Operation against a key holding the wrong'
        .. ' kind of value" ["OK",{err="WRONGTYPE Operation against a key holding the wrong kind of value"},"1"]',
      "END",
    }, out)
    -- the 50 calls went out before any answer came back: all 50 values are in the list
    assert.are.equal(50, #lines(cli(PORT, "LRANGE order 0 -1")))
  end)

  it("times out on a refused connection and on a server that never answers, the loop going on", function()
    local hang = H.daemon(fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no", PORT_HANG),
      PORT_HANG)
    finally(function()
      hang:kill("CONT")
      hang:stop()
    end)
    hang:kill("STOP")
    local out, err = run(fmt([[
    local ticks = 0
    local t = sqlnotify.every(0.05, function() ticks = ticks + 1 end)
    local dead = sqlnotify.redis{ url = "redis://127.0.0.1:%d", timeout = 0.6 }
    local hung = sqlnotify.redis{ url = "redis://127.0.0.1:%d", timeout = 0.6 }
    say(dead:call("PING"))
    say(ticks >= 8)
    ticks = 0
    say(hung:call("PING"))
    say(hung:pipeline({ { "PING" }, { "PING" } }))
    say(ticks >= 16)
    t:stop()
    sqlnotify.spawn(function() say("pending", hung:call("PING")) end)
    hung:close()
    sqlnotify.sleep(0.1)
    dead:close()
]], PORT_DEAD, PORT_HANG))
    assert.are.same({
      fmt('nil "sqlnotify: redis: timeout after 0.6 s waiting for a connection to 127.0.0.1:%d (Connection refused)"',
        PORT_DEAD),
      "true",
      fmt('nil "sqlnotify: redis: timeout after 0.6 s waiting for the reply from 127.0.0.1:%d"', PORT_HANG),
      fmt('nil "sqlnotify: redis: timeout after 0.6 s waiting for the reply from 127.0.0.1:%d"', PORT_HANG),
      "true",
      '"pending" nil "sqlnotify: redis: the client was closed (r:close())"',
      "END",
    }, out)
    -- the address where nothing listens is said at once, and once
    local said = fmt("warn  sqlnotify: redis 127.0.0.1:%d: cannot connect (Connection refused); trying again with "
      .. "backoff\n", PORT_DEAD)
    assert.are.equal(1, H.count(err, said), err)
    assert.are.equal(1, H.count(err, "cannot connect"), err)
  end)

  it("sends AUTH and SELECT from the URL; a wrong password or database says so, never the password", function()
    local auth = H.daemon(fmt("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --requirepass %s",
      PORT_AUTH, PASSWORD), PORT_AUTH)
    finally(function() auth:stop() end)
    local out, err = run(fmt([[
    local good = sqlnotify.redis{ url = "redis://:%s@127.0.0.1:%d/3" }
    say(good:call("SET", "k", "in-db-3"))
    local acl = sqlnotify.redis{ url = "redis://default:%s@127.0.0.1:%d/4" }
    say(acl:call("SET", "k", "in-db-4"))
    local wrong = sqlnotify.redis{ url = "redis://:not-%s@127.0.0.1:%d/3", timeout = 2 }
    local _, e1 = wrong:call("GET", "k")
    local _, e2 = wrong:call("GET", "k")
    say(e1, e1 == e2, (e1:find("%s", 1, true)))
    local nodb = sqlnotify.redis{ url = "redis://:%s@127.0.0.1:%d/99", timeout = 2 }
    say(nodb:call("GET", "k"))
    say(tostring(wrong))
    for _, u in ipairs({ "redis://127.0.0.1:%d/x", "redis://127.0.0.1:%d/-1", "redis://127.0.0.1:%d/1.5",
        "redis://:pw@127.0.0.1:99999/0", "http://127.0.0.1:%d/0" }) do
      local ok, e = pcall(sqlnotify.redis, { url = u })
      say(ok, e)
    end
    say(pcall(sqlnotify.redis, { url = "redis://127.0.0.1:1/0", timeout = 0 }))
    for _ = 1, 8 do -- 4 s: the client tries AUTH again every 1-2 s, and says the same refusal once
      sqlnotify.sleep(0.5)
      wrong:call("GET", "k")
    end
    good:close() acl:close() wrong:close() nodb:close()
]], PASSWORD, PORT_AUTH, PASSWORD, PORT_AUTH, PASSWORD, PORT_AUTH, PASSWORD, PASSWORD, PORT_AUTH,
      PORT_AUTH, PORT_AUTH, PORT_AUTH, PORT_AUTH))
    local wrong_auth = fmt("sqlnotify: redis: AUTH refused by 127.0.0.1:%d: WRONGPASS invalid username-password"
      .. " pair or user is disabled.", PORT_AUTH)
    assert.are.equal('"OK"', out[1])
    assert.are.equal('"OK"', out[2])
    assert.are.equal(fmt("%q true nil", wrong_auth), out[3])
    assert.are.equal(fmt('nil "sqlnotify: redis: SELECT refused by 127.0.0.1:%d: ERR DB index is out of range"',
      PORT_AUTH), out[4])
    assert.are.equal(fmt('"sqlnotify.redis(redis://:***@127.0.0.1:%d/3)"', PORT_AUTH), out[5])
    local bad = {
      fmt('the database number must be a whole number from 0, got \\"x\\"'),
      fmt('the database number must be a whole number from 0, got \\"-1\\"'),
      fmt('the database number must be a whole number from 0, got \\"1.5\\"'),
      'the port must be a whole number from 1 to 65535, got \\"99999\\"',
      "the scheme must be redis://, got http://",
      "timeout must be a number of seconds above 0, got 0",
    }
    for i, msg in ipairs(bad) do
      local line = out[5 + i]
      assert.truthy(line:find("^false \"[^\n]*%.lua:%d+: sqlnotify: redis"), line) -- the caller's line
      assert.truthy(line:find(msg, 1, true), line)
    end
    assert.truthy(out[7]:find("-1", 1, true))
    assert.is_nil(out[6]:find(":pw@", 1, true))
    assert.are.equal("END", out[12])
    assert.are.equal("in-db-3\n", cli(PORT_AUTH, fmt("--no-auth-warning -a %s -n 3 GET k", PASSWORD)))
    assert.are.equal("in-db-4\n", cli(PORT_AUTH, fmt("--no-auth-warning -a %s -n 4 GET k", PASSWORD)))
    assert.is_nil(err:find(PASSWORD, 1, true)) -- the log of the refused AUTH does not show it
    assert.is_nil(table.concat(out, "\n"):find(PASSWORD, 1, true))
    local said = 0
    for _ in err:gmatch(": AUTH refused: WRONGPASS") do said = said + 1 end
    assert.are.equal(1, said, err)
  end)

  it("raises outside a handler, naming sqlnotify.spawn, and on bad arguments", function()
    local p = H.host(fmt([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local r = sqlnotify.redis{ url = "redis://127.0.0.1:%d" }
print(pcall(r.call, r, "PING"))
print(pcall(r.pipeline, r, { { "PING" } }))
sqlnotify.spawn(function()
  print(pcall(r.call, r, "GET", {}))
  print(pcall(r.call, r))
  print(pcall(r.call, r, "SUBSCRIBE", "ch"))
  print(pcall(r.pipeline, r, {}))
  r:close()
  print(pcall(r.call, r, "PING"))
  print("END")
  sqlnotify.stop()
end)
]], PORT))
    assert.is_true(p:wait_for("END\n", 20), p:stderr())
    assert.are.equal(0, p:wait())
    p:assert_clean()
    local out = lines(p:stdout())
    assert.truthy(out[1]:find("^false\t.-%.lua:4: sqlnotify: redis call must be called from a handler or a"
      .. " coroutine of sqlnotify.spawn$"), out[1])
    assert.truthy(out[2]:find("^false\t.-%.lua:5: sqlnotify: redis pipeline must be called from a handler"), out[2])
    assert.truthy(out[3]:find("argument 2 must be a string or a number, got table", 1, true), out[3])
    assert.truthy(out[4]:find("redis call needs a command", 1, true), out[4])
    assert.truthy(out[5]:find("SUBSCRIBE changes the connection's mode", 1, true), out[5])
    assert.truthy(out[6]:find("redis pipeline needs a non-empty list", 1, true), out[6])
    assert.truthy(out[7]:find("this client is closed", 1, true), out[7])
  end)
end)

-- The acceptance: a durable SQLite consumer invalidates product:<id> and records seen:<id> = v
-- for 2,000 updates (200 ids x 10) written at full speed by another process, while the
-- private Redis (append-only, so what it acknowledged survives) is stopped and started again.
local RELAY = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local db, port = arg[1], arg[2]
local r = sqlnotify.redis{ url = "redis://127.0.0.1:" .. port .. "/0", timeout = 2 }
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, consumer = "s31relay", concurrency = 64,
  retry = { attempts = math.huge, delay = 0.05, max_delay = 0.5 } })
n:watch("items", "update", { extra_columns = { "v" } })
local done, failed = 0, 0
n:subscribe("items", "update", function(ev)
  local ok, err = r:call("DEL", "product:" .. ev.id)
  if ok then ok, err = r:call("SET", "seen:" .. ev.id, ev.extra_columns.v) end
  if not ok then
    failed = failed + 1
    if failed == 1 then print("first failure: " .. err) end
    error(err)
  end
  done = done + 1
  if done % 500 == 0 then print("done " .. done) end
end)
assert(n:start())
print("ready")
]]

describe("sqlnotify.redis cache invalidation (the real host, durable SQLite)", function()
  local server, host
  local dir = H.tmpdir() .. "/redis31"
  setup(function()
    H.sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
    server = H.daemon(fmt("redis-server --port %d --bind 127.0.0.1 --dir %s --save '' --appendonly yes"
      .. " --appendfsync always", PORT + 4, q(dir)), PORT + 4)
  end)
  teardown(function()
    if host and not host:exited() then host:kill("KILL") host:wait() end
    if server then server:stop() end
    H.sh("rm -rf " .. q(dir))
  end)

  it("loses no invalidation of 2,000 updates while Redis restarts", function()
    local port = PORT + 4
    local db = H.fresh_sqlite("spec31")
    local ins = {}
    for i = 1, 200 do ins[i] = fmt("(%d, 0)", i) end
    H.sqlite_cli(db, "PRAGMA journal_mode = WAL; CREATE TABLE items (id integer PRIMARY KEY, v integer NOT NULL);"
      .. " INSERT INTO items VALUES " .. table.concat(ins, ", ") .. ";")
    local mset = {}
    for i = 1, 200 do mset[i] = fmt("product:%d cached", i) end
    cli(port, "MSET " .. table.concat(mset, " "))
    host = H.host(RELAY, { db, tostring(port) })
    assert.is_true(host:wait_for("ready\n", 20), host:stderr())
    -- 2,000 updates, each its own commit, in two halves: the second one while Redis restarts
    local function writer(from, to)
      local sql = {}
      for v = from, to do for id = 1, 200 do sql[#sql + 1] = fmt("UPDATE items SET v = %d WHERE id = %d;", v, id) end end
      local file = H.tmpfile(".sql")
      local f = assert(io.open(file, "w"))
      f:write(".timeout 10000\n", table.concat(sql, "\n"), "\n")
      f:close()
      return file
    end
    local t0 = H.now()
    H.sqlite_cli(db, ".read " .. writer(1, 5))
    assert.is_true(host:wait_for("done 1000\n", 60), host:stdout() .. host:stderr())
    local first_half = H.now() - t0
    local second = writer(6, 10)
    local flag = H.tmpfile(".done")
    H.sh(fmt("(sqlite3 %s < %s >/dev/null 2>&1; touch %s) &", q(db), q(second), q(flag)))
    server:stop()
    H.sleep(1)
    server:start()
    local deadline = H.now() + 60
    while not H.sh("test -e " .. q(flag)) and H.now() < deadline do H.sleep(0.05) end
    -- every key holds the value of its last update
    local want = {}
    for _ = 1, 200 do want[#want + 1] = "10" end
    local keys = {}
    for i = 1, 200 do keys[i] = "seen:" .. i end
    local got
    repeat
      got = lines(cli(port, "MGET " .. table.concat(keys, " ")))
      local ok = true
      for i = 1, 200 do ok = ok and got[i] == "10" end
      if not ok then H.sleep(0.1) end
    until ok or H.now() > deadline
    assert.are.same(want, got)
    assert.are.equal("0\n", cli(port, "EVAL \"return #redis.call('KEYS', 'product:*')\" 0"))
    local err = host:stderr()
    assert.truthy(err:find("redis 127.0.0.1:" .. port .. ": connection lost", 1, true), err)
    assert.truthy(err:find("redis 127.0.0.1:" .. port .. ": connected again", 1, true), err)
    print(fmt("\n  spec31: first 1,000 updates relayed in %.2f s (%.0f/s)", first_half, 1000 / first_half))
    host:stop()
  end)
end)
