-- sqlnotify.kafka (SPEC §8.2), through the real host against librdkafka's own mock cluster
-- (spec/support/kafka_peer.c, built here; never a broker of the machine's): the outbox example
-- relays every insert of a durable PostgreSQL consumer once, keyed by id; a relay of inserts
-- and updates keeps each key's messages in commit order; no broker (a closed port), brokers
-- down, a broker's error and a fatal producer error each return nil, err, and the handler's
-- retry delivers once; close answers what waits; misuse raises at the caller.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local cjson = require("cjson")

local fmt, q = string.format, H.shell_quote

local SCHEMA = "spec31k"
local PORT_CLOSED, PORT_CLOSED2 = 11989, 11988 -- nothing listens there (checked)

local PEER = H.tmpdir() .. "/kafka_peer"

local function build_peer()
  local log = H.tmpfile(".log")
  local ok = H.sh(fmt("cc -std=c11 -D_GNU_SOURCE -O1 -o %s %s $(pkg-config --cflags --libs rdkafka) >%s 2>&1", q(PEER),
    q(H.root .. "/spec/support/kafka_peer.c"), q(log)))
  assert(ok, "cannot build spec/support/kafka_peer.c: " .. H.slurp(log))
end

local wait_until, count = H.wait_until, H.count

local alive = H.running -- a zombie is not (this machine's init reaps it late)

-- A mock cluster in a process of its own: c.bootstrap, c.down(), c.up(), c.stop().
local function cluster(...)
  local out, pidfile = H.tmpfile(".out"), H.tmpfile(".pid")
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = q(a) end
  assert(H.sh(fmt("%s cluster %s >%s 2>&1 </dev/null & echo $! >%s", q(PEER), table.concat(args, " "), q(out),
    q(pidfile))))
  local c = { pid = H.slurp(pidfile):match("%d+") }
  assert(c.pid, "the mock cluster did not start")
  c.bootstrap = wait_until(function() return H.slurp(out):match("bootstrap (%S+)\n") end, 5)
  assert(c.bootstrap, "the mock cluster printed no bootstrap servers: " .. H.slurp(out))
  local function signal(sig, word)
    local before = count(H.slurp(out), word .. "\n")
    H.sh(fmt("kill -%s %s", sig, c.pid))
    assert(wait_until(function() return count(H.slurp(out), word .. "\n") > before end, 5), H.slurp(out))
  end
  function c.down() signal("USR1", "down") end
  function c.up() signal("USR2", "up") end
  function c.stop()
    if not c.pid then return end
    H.sh(fmt("kill %s 2>/dev/null", c.pid))
    if not wait_until(function() return not alive(c.pid) end, 3) then
      H.sh(fmt("kill -KILL %s 2>/dev/null", c.pid))
    end
    c.pid = nil
  end
  return c
end

local function unescape(s)
  if s == "\\N" then return nil end
  return (s:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Every message of the topic, partition by partition in offset order:
-- {partition =, offset =, key =, value =, headers = "name=value;..."}.
local function consume(c, topic)
  local out, err = H.tmpfile(".out"), H.tmpfile(".err")
  local ok = H.sh(fmt("%s consume %s %s >%s 2>%s", q(PEER), q(c.bootstrap), q(topic), q(out), q(err)))
  assert(ok, "kafka_peer consume failed: " .. H.slurp(err))
  local list = {}
  for line in H.slurp(out):gmatch("[^\n]+") do
    local p, o, k, v, h = line:match("^(%d+)\t(%d+)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    assert(p, "bad line from kafka_peer: " .. line)
    list[#list + 1] = { partition = tonumber(p), offset = tonumber(o), key = unescape(k), value = unescape(v),
      headers = h }
  end
  return list
end

local SCRIPT_HEAD = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local fmt = string.format
]]

describe("sqlnotify.kafka", function()
  local procs, clusters = {}, {}

  setup(function()
    build_peer()
  end)

  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    for _, c in ipairs(clusters) do c.stop() end
    procs, clusters = {}, {}
  end)

  local function with_schema()
    H.fresh_schema(SCHEMA)
    finally(function()
      for _, p in ipairs(procs) do
        if not p:exited() then p:kill("KILL") p:wait() end
      end
      local n = H.pg_notifier()
      H.reap({}, n, "spec31k_")
      n:close()
      H.drop_schema(SCHEMA)
    end)
  end

  it("the outbox example relays 300 inserts of a durable consumer: each once, keyed by its id", function()
    with_schema()
    H.psql("CREATE TABLE spec31k.outbox (id int PRIMARY KEY, body text)")
    local c = cluster("3", "s31k.outbox:3")
    clusters[#clusters + 1] = c
    local p = H.host(H.slurp(H.root .. "/scripts/examples/kafka_outbox.lua"),
      { H.pg_url, "spec31k.outbox", c.bootstrap, "s31k.outbox" }, "CONSUMER=spec31k_outbox")
    procs[#procs + 1] = p
    assert.is_true(p:wait_for('consumer "spec31k_outbox" starts', 15, "err"), p:stderr())
    H.psql("INSERT INTO spec31k.outbox SELECT g, 'body ' || g FROM generate_series(1, 300) g")
    local got = {}
    wait_until(function()
      got = consume(c, "s31k.outbox")
      return #got >= 300
    end, 20)
    assert.equal(300, #got, p:stderr())
    local seen, parts = {}, {}
    for _, m in ipairs(got) do
      local ev = cjson.decode(m.value)
      local id = math.tointeger(ev.id)
      assert.equal(tostring(id), m.key)
      assert.is_nil(seen[id], "twice: " .. id)
      seen[id] = true
      assert.same({ "insert", "spec31k", "outbox", "body " .. id },
        { ev.operation, ev.schema, ev.table, ev.extra_columns.body })
      assert.equal("", m.headers)
      -- offsets 0, 1, 2, ... in each partition: nothing was lost in between
      assert.equal(parts[m.partition] or 0, m.offset)
      parts[m.partition] = m.offset + 1
    end
    for i = 1, 300 do assert.is_true(seen[i], "missing id " .. i) end
    local used = 0
    for _ in pairs(parts) do used = used + 1 end
    assert.equal(3, used) -- the keys spread over the topic's partitions
    p:stop()
    assert.equal(300, #consume(c, "s31k.outbox")) -- and nothing came after
  end)

  it("a relay of inserts and updates keeps each key's messages in commit order, with their headers", function()
    with_schema()
    H.psql("CREATE TABLE spec31k.rows (id int PRIMARY KEY, v text)")
    local c = cluster("3", "s31k.rows:3")
    clusters[#clusters + 1] = c
    local p = H.host(SCRIPT_HEAD .. [[
local k = sqlnotify.kafka{ brokers = arg[2], client_id = "spec31k", linger_ms = 0 }
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "spec31k_rows", concurrency = 16,
  retry = { attempts = math.huge, delay = 0.05, max_delay = 0.5 } })
for _, op in ipairs({ "insert", "update" }) do
  n:watch("spec31k.rows", op, { extra_columns = { "v" } })
  n:subscribe("spec31k.rows", op, function(ev)
    assert(k:produce("s31k.rows", ev.extra_columns.v, { key = ev.id, headers = { op = op, ["x-seq"] = "s" } }))
    print("done " .. ev.id)
  end)
end
assert(n:start())
print("ready")
]], { H.pg_url, c.bootstrap })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("ready", 15), p:stderr())
    H.psql("INSERT INTO spec31k.rows SELECT g, 'i' || g FROM generate_series(1, 100) g")
    H.psql("UPDATE spec31k.rows SET v = 'u1-' || id WHERE id <= 40")
    H.psql("UPDATE spec31k.rows SET v = 'u2-' || id WHERE id <= 40")
    assert.is_true(wait_until(function() return count(p:stdout(), "done ") >= 180 end, 20), p:stderr())
    local got = consume(c, "s31k.rows")
    assert.equal(180, #got)
    local by_key, part_of = {}, {}
    for _, m in ipairs(got) do
      by_key[m.key] = by_key[m.key] or {}
      table.insert(by_key[m.key], m.value .. " " .. m.headers)
      part_of[m.key] = part_of[m.key] or m.partition
      assert.equal(part_of[m.key], m.partition) -- one key, one partition
    end
    for id = 1, 100 do
      local want = { "i" .. id .. " op=insert;x-seq=s" }
      if id <= 40 then
        want[2] = "u1-" .. id .. " op=update;x-seq=s"
        want[3] = "u2-" .. id .. " op=update;x-seq=s"
      end
      assert.same(want, by_key[tostring(id)])
    end
    p:stop()
  end)

  it("no broker, or brokers down: nil, err after the timeout, the loop runs meanwhile; a retry delivers once", function()
    for _, port in ipairs({ PORT_CLOSED, PORT_CLOSED2 }) do
      assert.is_falsy(H.sh(fmt("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null", port)), "port " .. port .. " is taken")
    end
    local c = cluster("1", "s31k.late:1")
    clusters[#clusters + 1] = c
    c.down()
    local p = H.host(SCRIPT_HEAD .. [[
local none = sqlnotify.kafka{ brokers = "127.0.0.1:]] .. PORT_CLOSED .. [[", timeout = 1 }
local late = sqlnotify.kafka{ brokers = arg[1], timeout = 1, config = { ["reconnect.backoff.max.ms"] = 100 } }
-- librdkafka quotes this token in its error: never shown
local sasl = sqlnotify.kafka{ brokers = "127.0.0.1:]] .. PORT_CLOSED2 .. [[", timeout = 1, config = {
  ["security.protocol"] = "SASL_PLAINTEXT", ["sasl.mechanism"] = "OAUTHBEARER",
  ["sasl.oauthbearer.config"] = "hunter2-token", ["enable.sasl.oauthbearer.unsecure.jwt"] = true,
  ["sasl.password"] = "hunter2" } }
local ticks, left = 0, 3
local t = sqlnotify.every(0.05, function() ticks = ticks + 1 end)
local function over()
  left = left - 1
  if left == 0 then t:stop() sqlnotify.stop() end
end
sqlnotify.spawn(function()
  local t0 = sqlnotify.now()
  local ok, err = none:produce("s31k.none", "x")
  local secs = sqlnotify.now() - t0
  print(fmt("none %s %s|%s", tostring(ok), err, secs >= 1 and secs < 3.6 and ticks >= 15))
  t0 = sqlnotify.now()
  ok, err = none:produce("s31k.none", "x", { timeout = 0.3 })
  secs = sqlnotify.now() - t0
  print(fmt("none %s %s|%s", tostring(ok), err, secs >= 0.3 and secs < 1))
  over()
end)
sqlnotify.spawn(function()
  print("sasl", sasl:produce("s31k.none", "x"))
  over()
end)
sqlnotify.spawn(function() -- what a handler with retries does
  local tries, ok, err = 0, nil, nil
  repeat
    tries = tries + 1
    ok, err = late:produce("s31k.late", "once", { key = "k" })
    if not ok then print("failed " .. err) sqlnotify.sleep(0.05) end
  until ok or tries == 40
  print("late", ok, tries)
  over()
end)
]], { c.bootstrap })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("failed ", 10), p:stdout() .. p:stderr())
    c.up()
    assert.equal(0, p:wait(20), p:stdout() .. p:stderr())
    p:assert_clean()
    local out, err = p:stdout(), p:stderr()
    local none = fmt("sqlnotify: kafka: not delivered to 127.0.0.1:%d within %%s s: 127.0.0.1:%d/bootstrap: Connect "
      .. "to ipv4#127.0.0.1:%d failed: Connection refused", PORT_CLOSED, PORT_CLOSED, PORT_CLOSED)
    assert.matches("\nnone nil " .. fmt(none, "1"):gsub("%p", "%%%0") .. "|true\n", "\n" .. out)
    assert.matches("\nnone nil " .. fmt(none, "0.3"):gsub("%p", "%%%0") .. "|true\n", "\n" .. out)
    assert.matches("failed sqlnotify: kafka: not delivered to " .. c.bootstrap:gsub("%p", "%%%0") .. " within 1 s", out)
    assert.matches(fmt("\nsasl\tnil\tsqlnotify: kafka: not delivered to 127.0.0.1:%d within 1 s: Failed to acquire SASL "
      .. "OAUTHBEARER token: Unrecognized sasl.oauthbearer.config beginning at: ***\n", PORT_CLOSED2):gsub("%p", "%%%0"),
      "\n" .. out)
    assert.is_nil((out .. err):find("hunter2", 1, true))
    local tries = tonumber(out:match("late\ttrue\t(%d+)\n"))
    assert.is_true(tries and tries >= 2, out)
    -- the attempts before were given up by librdkafka (not merely unanswered): one message
    local got = consume(c, "s31k.late")
    assert.same({ { partition = 0, offset = 0, key = "k", value = "once", headers = "" } }, got)
    -- librdkafka's connection errors are logged, at most one a client in 10 s
    assert.equal(1, count(err, fmt("warn  sqlnotify: kafka: 127.0.0.1:%d: 127.0.0.1:%d/bootstrap: Connect to ipv4#"
      .. "127.0.0.1:%d failed: Connection refused", PORT_CLOSED, PORT_CLOSED, PORT_CLOSED)), err)
  end)

  it("a broker's error and a fatal producer error return nil, err; the producer is made anew; close answers", function()
    -- The first Produce (0) answered OUT_OF_ORDER_SEQUENCE_NUMBER (45): fatal for an idempotent
    -- producer; the next one INVALID_RECORD (87)
    local c = cluster("1", "s31k.err:2", "0=45*1", "0=87*1")
    clusters[#clusters + 1] = c
    local p = H.host(SCRIPT_HEAD .. [[
local k = sqlnotify.kafka{ brokers = arg[1], timeout = 5 }
local none = sqlnotify.kafka{ brokers = "127.0.0.1:]] .. PORT_CLOSED .. [[", timeout = 5 }
local left = sqlnotify.kafka{ brokers = "127.0.0.1:]] .. PORT_CLOSED .. [[", timeout = 5 }
local running = 2
local function over()
  running = running - 1
  if running == 0 then sqlnotify.stop() end -- with a message of left's waiting: __gc purges it
end
sqlnotify.spawn(function()
  for i = 1, 3 do print(i, k:produce("s31k.err", "m" .. i, { partition = 1 })) end
  print("tombstone", k:produce("s31k.err", nil, { key = "gone", partition = 0, headers = { b = "2", a = "1=" } }))
  print(tostring(k))
  k:close()
  print(tostring(k), pcall(k.produce, k, "s31k.err", "x"))
  k:close() -- twice: nothing more
  over()
end)
sqlnotify.spawn(function()
  local t0 = sqlnotify.now()
  local ok, err = none:produce("s31k.none", "x")
  print(fmt("waiting %s %s %s", tostring(ok), err, sqlnotify.now() - t0 < 1.5))
  over()
end)
sqlnotify.spawn(function()
  left:produce("s31k.none", "never answered: the process leaves first")
end)
sqlnotify.spawn(function()
  sqlnotify.sleep(0.2)
  none:close()
end)
]], { c.bootstrap })
    procs[#procs + 1] = p
    local t0 = H.now()
    assert.equal(0, p:wait(20), p:stdout() .. p:stderr())
    assert.is_true(H.now() - t0 < 5, "the host took long to leave")
    p:assert_clean()
    local lines, waiting = {}, {}
    for l in p:stdout():gmatch("[^\n]+") do
      if l:find("^waiting ") then waiting[#waiting + 1] = l else lines[#lines + 1] = l end
    end
    local closed = table.remove(lines, 6)
    local fatal = "1\tnil\tsqlnotify: kafka: fatal producer error: ProduceRequest for s31k.err [1] with 1 message(s) "
      .. "failed due to sequence desynchronization with broker 1 "
    assert.equal(fatal, (lines[1] or ""):sub(1, #fatal))
    lines[1] = fatal
    assert.same({
      fatal,
      "2\tnil\tsqlnotify: kafka: produce to \"s31k.err\" failed: Broker: Broker failed to validate record",
      "3\ttrue",
      "tombstone\ttrue",
      "sqlnotify.kafka(" .. c.bootstrap .. ")",
    }, lines)
    assert.matches("^sqlnotify%.kafka%(" .. c.bootstrap:gsub("%p", "%%%0") .. "%) closed\tfalse\t[^\n]*"
      .. "sqlnotify: kafka: produce on a closed client$", closed)
    assert.same({ "waiting nil sqlnotify: kafka: the client was closed before the delivery report true" }, waiting)
    assert.matches("error sqlnotify: kafka: " .. c.bootstrap:gsub("%p", "%%%0") .. ": fatal error, making the producer "
      .. "anew: ProduceRequest for s31k%.err %[1%] with 1 message%(s%) failed due to sequence desynchronization", p:stderr())
    assert.same({
      { partition = 0, offset = 0, key = "gone", value = nil, headers = "a=1\\x3d;b=2" },
      { partition = 1, offset = 0, key = nil, value = "m3", headers = "" },
    }, consume(c, "s31k.err"))
  end)

  it("refuses a bad option at the caller's line, naming it; a librdkafka property it does not know", function()
    local function err_of(opts)
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() local k = sqlnotify.kafka(opts) return k end)
      assert.is_false(ok)
      local rest = e:match("^[^:]*31%-kafka_spec.lua:" .. line .. ": (sqlnotify: kafka: .*)$")
      assert(rest, e)
      return rest:sub(#"sqlnotify: kafka: " + 1)
    end
    local B = "127.0.0.1:" .. PORT_CLOSED
    assert.equal("options must be a table {brokers = ...}, got string", err_of("kafka://h:1"))
    assert.equal('brokers must be a string "host:port,...", got nil', err_of{})
    assert.equal('brokers "h:1,,h:2": expected host:port, comma-separated', err_of{ brokers = "h:1,,h:2" })
    assert.equal('brokers "kafka://h:1": expected host:port, comma-separated', err_of{ brokers = "kafka://h:1" })
    assert.equal('brokers "h:1,h:70000": port 70000 out of range', err_of{ brokers = "h:1,h:70000" })
    assert.equal('unknown option "url"', err_of{ brokers = B, url = "kafka://h" })
    assert.equal("client_id must be a non-empty string", err_of{ brokers = B, client_id = "" })
    assert.equal("timeout must be a number of seconds above zero, got 0", err_of{ brokers = B, timeout = 0 })
    assert.equal('acks must be "all", 1 or 0, got 2', err_of{ brokers = B, acks = 2 })
    assert.equal('acks must be "all", 1 or 0, got "one"', err_of{ brokers = B, acks = "one" })
    assert.equal("acks = 1 needs idempotence = false (an idempotent producer waits for every in-sync replica)",
      err_of{ brokers = B, acks = 1 })
    assert.equal("idempotence must be a boolean", err_of{ brokers = B, idempotence = "no" })
    assert.equal("linger_ms must be an integer from 0 to 900000, got 1.5", err_of{ brokers = B, linger_ms = 1.5 })
    assert.equal("timeout (0.001 s) must be longer than linger_ms (5 ms)", err_of{ brokers = B, timeout = 0.001 })
    assert.equal('config: No such configuration property: "no.such.property"',
      err_of{ brokers = B, config = { ["no.such.property"] = "1" } })
    assert.equal('config: Invalid value for configuration property "batch.num.messages"',
      err_of{ brokers = B, config = { ["batch.num.messages"] = "lots" } })
    assert.equal('config: "bootstrap.servers" is set by the option brokers',
      err_of{ brokers = B, config = { ["bootstrap.servers"] = "h:1" } })
    assert.equal('config: "delivery.timeout.ms" is set by the option timeout',
      err_of{ brokers = B, config = { ["delivery.timeout.ms"] = 1 } })
    assert.equal('config: "log.queue" is sqlnotify\'s to set', err_of{ brokers = B, config = { ["log.queue"] = false } })
    assert.equal('config: "compression.type" must be a string, number or boolean, got table',
      err_of{ brokers = B, config = { ["compression.type"] = {} } })
    -- a good one, with config of every type
    local k = sqlnotify.kafka{ brokers = B .. ", [::1]:9092", acks = 0, idempotence = false,
      config = { ["compression.type"] = "lz4", ["batch.num.messages"] = 100, ["socket.nagle.disable"] = true } }
    assert.equal("sqlnotify.kafka(" .. B .. ", [::1]:9092)", tostring(k))
    k:close()
  end)

  it("produce refuses bad arguments at the caller's line, and outside a handler names sqlnotify.spawn", function()
    local k = sqlnotify.kafka{ brokers = "127.0.0.1:" .. PORT_CLOSED, timeout = 2 }
    local function err_of(...)
      local args = table.pack(...)
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() local r = k:produce(table.unpack(args, 1, args.n)) return r end)
      assert.is_false(ok)
      local rest = e:match("^[^:]*31%-kafka_spec.lua:" .. line .. ": (sqlnotify: .*)$")
      assert(rest, e)
      return rest
    end
    assert.equal("sqlnotify: kafka: topic must be a string, got nil", err_of(nil, "x"))
    assert.equal('sqlnotify: kafka: bad topic "a b" (1 to 249 of a-z A-Z 0-9 . _ -)', err_of("a b", "x"))
    assert.equal('sqlnotify: kafka: bad topic "" (1 to 249 of a-z A-Z 0-9 . _ -)', err_of("", "x"))
    assert.equal("sqlnotify: kafka: value must be a string (or nil, with a key: a tombstone), got number",
      err_of("t", 5))
    assert.equal("sqlnotify: kafka: value nil (a tombstone) needs a key", err_of("t", nil))
    assert.equal('sqlnotify: kafka: unknown produce option "qos"', err_of("t", "x", { qos = 1 }))
    assert.equal("sqlnotify: kafka: key must be a string or a number, got table", err_of("t", "x", { key = {} }))
    assert.equal('sqlnotify: kafka: header "h" must be a string, got number', err_of("t", "x", { headers = { h = 1 } }))
    assert.equal("sqlnotify: kafka: partition must be an integer from 0, got -1", err_of("t", "x", { partition = -1 }))
    assert.equal("sqlnotify: kafka: timeout 3 is above the client's (2 s, librdkafka's message.timeout.ms)",
      err_of("t", "x", { timeout = 3 }))
    assert.equal("sqlnotify: k:produce must be called from a handler or a coroutine of sqlnotify.spawn",
      err_of("t", "x", { key = 1 }))
    k:close()
    assert.equal("sqlnotify: kafka: produce on a closed client", err_of("t", "x"))
  end)
end)
