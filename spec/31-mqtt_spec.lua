-- sqlnotify.mqtt (SPEC §8.2), through the real host against private mosquitto brokers (ports
-- 11890-11899, never the shared 1883): a durable PostgreSQL relay publishes every insert at QoS 1
-- and a persistent mosquitto_sub session receives every one, across a broker restart; QoS 0
-- returns true; a broker that is down makes publish wait its timeout without blocking the
-- loop, and a broker that comes up in time takes the message; misuse raises at the caller.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local cjson = require("cjson")

local fmt, q = string.format, H.shell_quote

local PORT, PORT_LATE, PORT_DOWN = 11890, 11891, 11899

-- A broker config in its own directory; persistence keeps the subscriber's session (and
-- the QoS 1 messages queued for it) across a restart.
local function broker(port, persist, extra)
  local dir = H.tmpdir()
  local conf = dir .. "/mosquitto.conf"
  local f = assert(io.open(conf, "w"))
  f:write(fmt("listener %d 127.0.0.1\nallow_anonymous true\n%s", port, extra or ""))
  if persist then
    f:write(fmt("persistence true\npersistence_location %s/\nautosave_interval 1\n", dir))
    -- started as root, mosquitto drops to its own user before it saves: without the right to
    -- write here it saves nothing ("Permission denied" in its log), and the subscriber's
    -- session is lost across the restart whenever the relay publishes before it reconnects
    assert(H.sh("chmod 0777 " .. q(dir)))
  else
    f:write("persistence false\n")
  end
  f:close()
  local d = H.daemon("mosquitto -c " .. q(conf), port)
  d.dir = dir
  return d
end

-- mosquitto_sub in the background, its output ("topic payload" lines) in a file.
local function subscriber(port, topic, extra)
  local out = os.tmpname()
  local pidfile = os.tmpname()
  assert(H.sh(fmt("sh -c %s >/dev/null 2>&1 </dev/null & ", q(fmt("exec mosquitto_sub -p %d -q 1 %s -t %s -v >%s 2>&1",
    port, extra or "", q(topic), q(out)))) .. fmt("echo $! >%s", q(pidfile))))
  local pf = assert(io.open(pidfile))
  local pid = pf:read("l")
  pf:close()
  os.remove(pidfile)
  local s = { out = out, pid = pid }
  function s.lines()
    local t = {}
    local fh = io.open(out)
    if fh then
      for l in fh:lines() do t[#t + 1] = l end
      fh:close()
    end
    return t
  end
  function s.stop()
    H.sh("kill " .. pid .. " 2>/dev/null")
    os.remove(out)
  end
  return s
end

local wait_until = H.wait_until

-- The relay: a durable PostgreSQL consumer of table t publishing each insert as ev:json() at QoS 1 to
-- s31/<t>/<id>; a failed publish raises, so the event is retried.
local RELAY = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, port = arg[1], arg[2], arg[3]
local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:" .. port, client_id = "s31relay", timeout = 2 }
local n = assert(sqlnotify.notifier{ url = url, consumer = "mq31", concurrency = 16,
  retry = { attempts = math.huge, delay = 0.05, max_delay = 0.5 } })
n:watch(tbl, "insert")
local fails = 0
n:subscribe(tbl, "insert", function(ev)
  local ok, err = mq:publish("s31/" .. tbl .. "/" .. ev.id, ev:json(), { qos = 1 })
  if not ok then
    fails = fails + 1
    print("fail " .. err)
    error(err)
  end
  print("done " .. ev.id)
end)
assert(n:start())
print("ready")
]]

describe("sqlnotify.mqtt", function()
  local procs, daemons, subs = {}, {}, {}
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    for _, s in ipairs(subs) do s.stop() end
    for _, d in ipairs(daemons) do d:stop() end
    procs, daemons, subs = {}, {}, {}
  end)

  it("a durable relay publishes 500 inserts at QoS 1: the subscriber gets every one across a broker restart", function()
    local d = broker(PORT, true)
    daemons[#daemons + 1] = d
    -- A persistent session (-c -i): what is published while it reconnects waits for it.
    local sub = subscriber(PORT, "s31/#", "-c -i s31sub")
    subs[#subs + 1] = sub
    H.sleep(0.3)
    local schema = H.fresh_schema("spec31")
    H.psql("CREATE TABLE spec31.r (id int PRIMARY KEY, v text)")
    local p = H.host(RELAY, { H.pg_url, "spec31.r", tostring(PORT) })
    procs[#procs + 1] = p
    finally(function()
      if not p:exited() then p:kill("KILL") p:wait() end
      local n = H.pg_notifier()
      n:drop_consumer("mq31")
      n:close()
      H.drop_schema(schema)
    end)
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    H.psql("INSERT INTO spec31.r SELECT g, 'row ' || g FROM generate_series(1, 250) g")
    local function done()
      local n = 0
      for _ in p:stdout():gmatch("done %d+") do n = n + 1 end
      return n
    end
    assert.is_true(wait_until(function() return done() >= 100 end, 30), p:stderr())
    -- The restart, with the rest inserted while the broker is down.
    d:stop()
    local saved = io.open(d.dir .. "/mosquitto.db")
    assert(saved, "the broker saved no sessions at its stop:\n" .. d:log())
    saved:close()
    H.psql("INSERT INTO spec31.r SELECT g, 'row ' || g FROM generate_series(251, 500) g")
    H.sleep(3) -- above the relay's timeout (2 s): its publishes fail and are retried
    d:start()
    local ids, dups, got = {}, 0, 0
    local function distinct()
      ids, dups = {}, 0
      local n = 0
      for _, l in ipairs(sub.lines()) do
        local topic, payload = l:match("^(s31/spec31%.r/%d+) (.*)$")
        if topic then
          local ev = cjson.decode(payload)
          ev.id = math.tointeger(ev.id)
          assert.equal("s31/spec31.r/" .. ev.id, topic)
          assert.equal("insert", ev.operation)
          assert.equal("r", ev.table)
          assert.equal("spec31", ev.schema)
          if ids[ev.id] then dups = dups + 1 else ids[ev.id] = true n = n + 1 end
        end
      end
      got = n
      return n >= 500 and n
    end
    local n = wait_until(distinct, 60)
    local last = sub.lines()
    assert.equal(500, n, fmt("the subscriber got %d distinct of 500 (%d lines, the last %q); relay:\n%s\n%s",
      got, #last, tostring(last[#last]), p:stdout():sub(-300), p:stderr():sub(-2000)))
    for i = 1, 500 do assert.is_true(ids[i] == true, "missing id " .. i) end
    -- At least once: a duplicate is allowed (a QoS 1 message in flight at the restart).
    -- The relay's own redeliveries (handlers run more than once per event) are counted apart.
    print(fmt("\nspec 31: 500 distinct ids, %d duplicates at the subscriber; the relay ran %d handlers to the end"
      .. " for 500 events; %d publishes failed and were retried", dups, select(2, p:stdout():gsub("done ", "")),
      select(2, p:stdout():gsub("fail ", ""))))
    -- The restart was seen: publishes failed while the broker was down, and were retried.
    assert.matches("fail sqlnotify: mqtt: ", p:stdout())
    assert.matches("connection to 127.0.0.1:%d+ lost", p:stderr())
    p:stop()
  end)

  it("publish at QoS 0 returns true and the subscriber gets it", function()
    daemons[#daemons + 1] = broker(PORT + 2, false)
    local sub = subscriber(PORT + 2, "s31/q0/#")
    subs[#subs + 1] = sub
    H.sleep(0.3)
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:]] .. (PORT + 2) .. [[" }
      sqlnotify.spawn(function()
        print("q0", mq:publish("s31/q0/a", "zero"))
        print("q0", mq:publish("s31/q0/b", "", { qos = 0, retain = false }))
        print("q1", mq:publish("s31/q0/c", "one\0bin", { qos = 1 }))
        mq:close()
        print("closed", tostring(mq), pcall(mq.publish, mq, "s31/q0/d", "x"))
        sqlnotify.stop()
      end)
    ]])
    procs[#procs + 1] = p
    assert.equal(0, p:wait(15), p:stderr())
    p:assert_clean()
    local out = p:stdout()
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("q0\ttrue", lines[1])
    assert.equal("q0\ttrue", lines[2])
    assert.equal("q1\ttrue", lines[3])
    assert.matches("^closed\tsqlnotify.mqtt%(127.0.0.1:11892%) closed\tfalse\t.*sqlnotify: mqtt: publish on a closed client$",
      lines[4])
    assert.is_true(wait_until(function() return #sub.lines() >= 3 end, 10))
    -- (mosquitto_sub shows an empty payload as "(null)")
    assert.same({ "s31/q0/a zero", "s31/q0/b (null)", "s31/q0/c one\0bin" }, sub.lines())
  end)

  it("broker down: publish waits its timeout and fails, the loop runs meanwhile; a broker up in time takes it", function()
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local down = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:]] .. PORT_DOWN .. [[", timeout = 1 }
      local late = sqlnotify.mqtt{ url = "mqtt://localhost:]] .. PORT_LATE .. [[", timeout = 20 }
      local ticks = 0
      local t = sqlnotify.every(0.05, function() ticks = ticks + 1 end)
      sqlnotify.spawn(function()
        local t0 = sqlnotify.now()
        local ok, err = down:publish("s31/down", "x", { qos = 1 })
        print(string.format("down %s %s %.1f %s", tostring(ok), err, sqlnotify.now() - t0, ticks >= 10))
        ok, err = down:publish("s31/down", "x", { qos = 0, timeout = 0.2 })
        print(string.format("down0 %s %s", tostring(ok), err))
        print("waiting late")
        print("late", late:publish("s31/late", "y", { qos = 1 }))
        t:stop()
        sqlnotify.stop()
      end)
    ]])
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("waiting late", 15), p:stdout() .. p:stderr())
    local out = p:stdout()
    assert.matches("down nil sqlnotify: mqtt: not connected to 127.0.0.1:" .. PORT_DOWN
      .. " within 1 s: Connection refused 1%.%d true\n", out)
    local secs = tonumber(out:match("down nil .- (%d+%.%d) true"))
    assert.is_true(secs >= 0.9 and secs < 3, out)
    assert.matches("down0 nil sqlnotify: mqtt: not connected to 127.0.0.1:" .. PORT_DOWN
      .. " within 0.2 s: Connection refused\n", out)
    -- The broker comes up while the publish waits for it.
    daemons[#daemons + 1] = broker(PORT_LATE, false)
    assert.equal(0, p:wait(20), p:stdout() .. p:stderr())
    p:assert_clean()
    assert.matches("late\ttrue\n", p:stdout())
    -- each address where nothing listens is said at once, and once; the late one's connection too
    local err = p:stderr()
    for _, name in ipairs { "127.0.0.1:" .. PORT_DOWN, "localhost:" .. PORT_LATE } do
      assert.are.equal(1, H.count(err, "warn  sqlnotify: mqtt: cannot connect to " .. name .. " (Connection refused): "
        .. "tried again with backoff until it does\n"), err)
    end
    assert.are.equal(2, H.count(err, "cannot connect"), err)
    assert.are.equal(1, H.count(err, "info  sqlnotify: mqtt: connected to localhost:" .. PORT_LATE .. "\n"), err)
  end)

  it("a message the broker drops the connection for is not sent again by itself: the relay goes on", function()
    -- A broker refuses a packet above its max_packet_size by closing the connection. The
    -- publish fails ("lost before the PUBACK") and the event is retried, then dead-lettered;
    -- libmosquitto used to keep the message and send it again after every reconnect, so each
    -- new connection was dropped at once, and every later row failed and was dead-lettered too.
    daemons[#daemons + 1] = broker(PORT + 3, false, "max_packet_size 2000\n")
    local sub = subscriber(PORT + 3, "s31/big/#")
    subs[#subs + 1] = sub
    H.sleep(0.3)
    local db = H.tmpdir() .. "/mq31big.db"
    H.sqlite_cli(db, "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);")
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:" .. arg[2], timeout = 2 }
      local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], consumer = "mq31big", concurrency = 1,
        retry = { attempts = 2, delay = 0.05, max_delay = 0.1 } })
      n:watch("big", "insert", { extra_columns = { "v" } })
      n:subscribe("big", "insert", function(ev)
        local ok, err = mq:publish("s31/big/" .. ev.id, ev.extra_columns.v, { qos = 1 })
        print(string.format("try %d %s", ev.id, tostring(err)))
        assert(ok, err)
      end)
      n:on("dead_letter", function(ev, info) print(string.format("dead %d %d", ev.id, info.attempts)) end)
      assert(n:start())
      print("ready")
    ]], { db, tostring(PORT + 3) })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("ready", 10), p:stderr())
    H.sqlite_cli(db, "INSERT INTO big VALUES (1, 'one'), (2, 'two'), (3, printf('%.5000c', 'x')), (4, 'four'),"
      .. " (5, 'five'), (6, 'six');")
    assert.is_true(wait_until(function() return #sub.lines() >= 5 end, 20),
      "the subscriber got:\n" .. table.concat(sub.lines(), "\n") .. "\nrelay:\n" .. p:stdout() .. p:stderr():sub(-1500))
    assert.same({ "s31/big/1 one", "s31/big/2 two", "s31/big/4 four", "s31/big/5 five", "s31/big/6 six" }, sub.lines())
    local lost = "sqlnotify: mqtt: connection to 127.0.0.1:" .. (PORT + 3) .. " lost before the PUBACK"
    assert.equal(table.concat({ "ready", "try 1 nil", "try 2 nil", "try 3 " .. lost, "try 3 " .. lost, "dead 3 2",
      "try 4 nil", "try 5 nil", "try 6 nil" }, "\n") .. "\n", p:stdout())
    -- One loss per attempt of the big message, not one per reconnect.
    assert.equal(2, H.count(p:stderr(), "lost (The connection was lost.), reconnecting"), p:stderr())
  end)

  it("a broker that stops answering: the loss names the keepalive, and publishes go on once it answers", function()
    local d = broker(PORT + 4, false)
    daemons[#daemons + 1] = d
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:" .. arg[1], keepalive = 5, timeout = 1 }
      sqlnotify.spawn(function()
        while true do
          print("publish", mq:publish("s31/ka", "x", { qos = 1 }))
          sqlnotify.sleep(0.2)
        end
      end)
    ]], { tostring(PORT + 4) })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("publish\ttrue\n", 10), p:stdout() .. p:stderr())
    d:kill("STOP")
    finally(function() d:kill("CONT") end)
    -- libmosquitto pings after a keepalive without a word from the broker and gives up after
    -- another: about 10 s.
    assert.is_true(p:wait_for("lost %(", 20, "err"), p:stdout() .. p:stderr())
    local name = "127.0.0.1:" .. (PORT + 4)
    assert.matches("warn  sqlnotify: mqtt: connection to " .. name:gsub("%.", "%%.")
      .. " lost %(the broker did not answer within the keepalive, 5 s%), reconnecting\n", p:stderr())
    H.sleep(2) -- publishes wait for the connection now
    d:kill("CONT")
    local out = p:stdout()
    assert.is_true(wait_until(function()
      return p:stdout():find("publish\tnil[^\n]*\npublish\ttrue\n") ~= nil
    end, 20), p:stdout() .. p:stderr())
    p:kill("TERM")
    p:wait(10)
    out = p:stdout()
    local nopuback, lost, waited = 0, 0, 0
    for l in out:gmatch("publish\tnil[^\n]*") do
      if l == "publish\tnil\tsqlnotify: mqtt: no PUBACK from " .. name .. " within 1 s" then
        nopuback = nopuback + 1
      elseif l == "publish\tnil\tsqlnotify: mqtt: connection to " .. name .. " lost before the PUBACK" then
        lost = lost + 1 -- the one in flight when libmosquitto gave up
      else
        -- never "Unknown error." (what libmosquitto calls its keepalive code)
        assert.equal("publish\tnil\tsqlnotify: mqtt: not connected to " .. name
          .. " within 1 s: the broker did not answer within the keepalive, 5 s", l)
        waited = waited + 1
      end
    end
    assert.is_true(nopuback >= 4 and lost <= 1 and waited >= 1, out)
    assert.not_matches("Unknown error", p:stderr())
  end)

  it("a broker that takes the connection but never answers: publish says so at its timeout", function()
    local d = broker(PORT + 7, false)
    daemons[#daemons + 1] = d
    d:kill("STOP") -- the kernel still accepts its connections
    finally(function() d:kill("CONT") end)
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:" .. arg[1], timeout = 1 }
      sqlnotify.spawn(function()
        print(mq:publish("s31/mute", "x", { qos = 1 }))
        sqlnotify.stop()
      end)
    ]], { tostring(PORT + 7) })
    procs[#procs + 1] = p
    assert.equal(0, p:wait(10), p:stderr())
    p:assert_clean()
    -- it said "not connected to 127.0.0.1:11897 within 1 s", and no why
    assert.equal("nil\tsqlnotify: mqtt: not connected to 127.0.0.1:" .. (PORT + 7)
      .. " within 1 s: the broker took the connection but has not answered it\n", p:stdout())
  end)

  it("a broker that refuses the credentials: said once in the log, without the password, and when it takes them", function()
    local dir = H.tmpdir()
    local pw = dir .. "/pw"
    local function passwd(secret) -- mosquitto reads it after it dropped to its own user
      assert(H.sh(fmt("mosquitto_passwd -b -c %s relay %s >/dev/null 2>&1 && chmod 0644 %s && chmod a+x %s",
        q(pw), q(secret), q(pw), q(dir))))
    end
    passwd("s3cret-pw")
    local d = broker(PORT + 8, false, fmt("password_file %s\nallow_anonymous false\n", pw))
    daemons[#daemons + 1] = d
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local mq = sqlnotify.mqtt{ url = "mqtt://relay:wrong-pw@127.0.0.1:" .. arg[1], timeout = 1 }
      sqlnotify.spawn(function()
        print(mq:publish("s31/auth", "x", { qos = 1 }))
        sqlnotify.sleep(1)
        print("waited")
        local ok, err
        for _ = 1, 20 do
          ok, err = mq:publish("s31/auth", "x", { qos = 1 })
          if ok then break end
        end
        print(ok, err)
        sqlnotify.stop()
      end)
    ]], { tostring(PORT + 8) })
    procs[#procs + 1] = p
    assert.is_true(p:wait_for("waited\n", 10), p:stderr())
    passwd("wrong-pw") -- the broker takes the client's password from now on
    d:kill("HUP")
    assert.equal(0, p:wait(30), p:stderr())
    local name = "127.0.0.1:" .. (PORT + 8)
    assert.equal("nil\tsqlnotify: mqtt: not connected to " .. name
      .. " within 1 s: the broker refused the connection: Connection Refused: not authorised.\nwaited\ntrue\tnil\n",
      p:stdout())
    -- tried some 6 times in the first 2 s: said once (it said nothing at all), and the end of it
    local err = p:stderr()
    assert.equal(1, H.count(err, "refused"), err)
    assert.matches("warn  sqlnotify: mqtt: " .. name:gsub("%.", "%%.") .. " refused the connection %(Connection Refused:"
      .. " not authorised%.%): tried again with backoff until it takes it\n.*info  sqlnotify: mqtt: connected to "
      .. name:gsub("%.", "%%.") .. "\n", err) -- never connected before: not "again"
    assert.not_matches("wrong%-pw", err)
  end)

  it("two clients with one client_id: they back off and the log says why, no reconnect storm", function()
    -- Two copies of a relay with a fixed client_id (a consumer group's members): the broker
    -- closes the older connection whenever the other connects. Each CONNACK used to reset the
    -- backoff, so the two took turns every 50-100 ms, each with a warning, for ever.
    daemons[#daemons + 1] = broker(PORT + 5, false)
    local p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local url = "mqtt://127.0.0.1:" .. arg[1]
      local a = sqlnotify.mqtt{ url = url, client_id = "s31twin", timeout = 1 }
      local b = sqlnotify.mqtt{ url = url, client_id = "s31twin", timeout = 1 }
      sqlnotify.after(4, sqlnotify.stop)
    ]], { tostring(PORT + 5) })
    procs[#procs + 1] = p
    assert.equal(0, p:wait(15), p:stderr())
    local err = p:stderr()
    local losses = H.count(err, "mqtt: connection to 127.0.0.1:" .. (PORT + 5) .. " lost")
    -- 0.05-0.1 s, then doubling: at most 6 losses each in 4 s (there were 40 and more)
    assert.is_true(losses >= 2 and losses <= 12, losses .. " losses:\n" .. err)
    assert.matches('lost %(The connection was lost%.%) 0%.%d s after the broker accepted it, reconnecting;'
      .. ' a broker closes a client when another connects with its client_id %("s31twin"%)\n', err)
  end)

  it("two copies of scripts/examples/mqtt_relay.lua share the work and keep their connections", function()
    -- A consumer group of two: each copy relays its shares. The example used to give every copy
    -- the client_id "sqlnotify-relay", so the broker closed one whenever the other connected.
    daemons[#daemons + 1] = broker(PORT + 6, false)
    local sub = subscriber(PORT + 6, "s31ex/#")
    subs[#subs + 1] = sub
    H.sleep(0.3)
    local schema = H.fresh_schema("spec31ex")
    H.psql("CREATE TABLE spec31ex.t (id int PRIMARY KEY, v text)")
    local script = H.slurp(H.root .. "/scripts/examples/mqtt_relay.lua")
    local args = { H.pg_url, "spec31ex.t", "mqtt://127.0.0.1:" .. (PORT + 6), "s31ex" }
    local a, b = H.host(script, args), H.host(script, args)
    procs[#procs + 1], procs[#procs + 2] = a, b
    finally(function()
      for _, p in ipairs({ a, b }) do
        if not p:exited() then p:kill("KILL") p:wait() end
      end
      local n = H.pg_notifier()
      n:drop_consumer("mqtt_relay_spec31ex_t") -- the example names it after its table
      n:close()
      H.drop_schema(schema)
    end)
    -- both members hold shares before the rows come
    assert.is_true(wait_until(function()
      local ea, eb = a:stderr(), b:stderr()
      return ea:find("took shares", 1, true) ~= nil and eb:find("took shares", 1, true) ~= nil and
        (ea .. eb):find("gave up shares", 1, true) ~= nil
    end, 20), a:stderr() .. b:stderr())
    H.psql("INSERT INTO spec31ex.t SELECT g, 'v' || g FROM generate_series(1, 200) g")
    assert.is_true(wait_until(function() return #sub.lines() >= 200 end, 20), #sub.lines() .. " lines")
    H.sleep(1)
    local ids = {}
    for _, l in ipairs(sub.lines()) do
      local id = assert(tonumber(l:match("^s31ex/t/insert/(%d+) {")), l)
      assert.is_nil(ids[id], "twice: " .. l)
      ids[id] = true
    end
    for i = 1, 200 do assert.is_true(ids[i], "missing " .. i) end
    assert.not_matches("lost", a:stderr())
    assert.not_matches("lost", b:stderr())
  end)

  it("refuses a bad URL or option at the caller's line", function()
    local function err_of(opts)
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() local c = sqlnotify.mqtt(opts) return c end)
      assert.is_false(ok)
      assert.matches("^[^:]*31%-mqtt_spec.lua:" .. line .. ": sqlnotify: mqtt: ", e)
      return e
    end
    assert.matches("options must be a table", err_of("mqtt://127.0.0.1"))
    assert.matches("url must be a string, got nil", err_of{})
    assert.matches([[url "http://h:1" must start with mqtt:// or mqtts://]], err_of{ url = "http://h:1" })
    assert.matches([=[url "mqtt://u:%*%*%*@h:1/x": expected mqtt://%[user:password@%]host%[:port%]]=],
      err_of{ url = "mqtt://u:secret@h:1/x" })
    assert.is_nil(err_of{ url = "mqtt://u:secret@h:1/x" }:find("secret", 1, true))
    assert.matches("port 70000 out of range", err_of{ url = "mqtt://127.0.0.1:70000" })
    assert.matches([[unknown option "qos"]], err_of{ url = "mqtt://127.0.0.1", qos = 1 })
    assert.matches("keepalive must be an integer number of seconds from 5", err_of{ url = "mqtt://127.0.0.1", keepalive = 1 })
    assert.matches("timeout must be a number of seconds above zero, got 0", err_of{ url = "mqtt://127.0.0.1", timeout = 0 })
    assert.matches("clean_session = false needs a client_id", err_of{ url = "mqtt://127.0.0.1", clean_session = false })
    assert.matches("cafile is for mqtts:// URLs", err_of{ url = "mqtt://127.0.0.1", cafile = "/x" })
    assert.matches("cannot resolve no%-such%-host%.invalid", err_of{ url = "mqtt://no-such-host.invalid:1883" })
  end)

  it("publish refuses a wildcard topic or bad options at the caller's line, and outside a handler names sqlnotify.spawn", function()
    local mq = sqlnotify.mqtt{ url = "mqtt://127.0.0.1:" .. PORT_DOWN }
    local function err_of(...)
      local args = table.pack(...)
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() local r = mq:publish(table.unpack(args, 1, args.n)) return r end)
      assert.is_false(ok)
      assert.matches("^[^:]*31%-mqtt_spec.lua:" .. line .. ": sqlnotify: ", e)
      return e
    end
    assert.matches([[mqtt: bad publish topic "s31/#"]], err_of("s31/#", "x"))
    assert.matches([[mqtt: bad publish topic "s31/%+/x"]], err_of("s31/+/x", "x"))
    assert.matches([[mqtt: bad publish topic ""]], err_of("", "x"))
    assert.matches("mqtt: topic must be a string, got nil", err_of(nil, "x"))
    assert.matches("mqtt: payload must be a string, got number", err_of("s31/x", 5))
    assert.matches("mqtt: qos must be 0 or 1, got 2", err_of("s31/x", "p", { qos = 2 }))
    assert.matches([[mqtt: unknown publish option "ttl"]], err_of("s31/x", "p", { ttl = 2 }))
    assert.matches("mq:publish must be called from a handler or a coroutine of sqlnotify.spawn",
      err_of("s31/x", "p", { qos = 1 }))
    mq:close()
    assert.matches("mqtt: publish on a closed client", err_of("s31/x", "p"))
  end)
end)
