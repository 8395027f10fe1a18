-- sqlnotify.nats (SPEC §8.2) through the real host against a private nats-server with
-- JetStream (port 14230, its store in a temporary directory): the outbox relay of 2,000
-- inserts from a durable SQLite consumer survives a kill -9 of the relay and a restart of
-- the server with exactly 2,000 messages in the stream, each row once; a subject no stream
-- takes is retried then dead-lettered; a server down at start makes calls wait for their
-- deadline while the loop goes on; misuse raises at the caller's line.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt, q = string.format, H.shell_quote

local PORT, DOWN_PORT, LATE_PORT = 14230, 14233, 14231
local URL = "nats://127.0.0.1:" .. PORT

-- Stream administration through the client itself: "create S" (subjects s.>, file storage,
-- a 120 s duplicate window, direct get), "count S" (messages, last_seq), "ids S" (the "id" of
-- every stored message, by sequence: the relay sends ev:json()).
local ADMIN = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, action, stream = arg[1], arg[2], arg[3]
local nc = assert(sqlnotify.nats{ url = url, timeout = 5 })
sqlnotify.spawn(function()
  if action == "create" then
    local r, err = nc:request("$JS.API.STREAM.CREATE." .. stream, string.format('{"name":"%s","subjects":["%s.>"],'
      .. '"storage":"file","duplicate_window":120000000000,"allow_direct":true}', stream, stream:lower()))
    print(r and (r:find('"error"') and "error " .. r or "created") or "failed " .. err)
  else
    local r = assert(nc:request("$JS.API.STREAM.INFO." .. stream, ""))
    local n, last = r:match('"messages":(%d+)'), r:match('"last_seq":(%d+)')
    print(string.format("messages %s last_seq %s", n, last))
    if action == "ids" then
      for seq = 1, tonumber(last) do
        local m = assert(nc:request("$JS.API.DIRECT.GET." .. stream, '{"seq":' .. seq .. '}'))
        print("id " .. (m:match('"id":(%d+)') or "?"))
      end
    end
  end
  nc:close()
  sqlnotify.stop()
end)
]]

-- The outbox relay: a durable consumer, 64 events in flight, each published with its row id
-- as msg_id. It waits a little before and after the publish, so a kill -9 finds events in
-- flight. Given a third argument, the handler of that row holds on after its publish: the
-- cursor cannot pass it, so a kill -9 always leaves one event stored by the stream and not
-- acknowledged to the database, redelivered at the next start.
local RELAY = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local db, url, hold = arg[1], arg[2], tonumber(arg[3])
local nc = sqlnotify.nats{ url = url, timeout = 2 }
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, consumer = "s31relay", concurrency = 64,
  retry = { attempts = math.huge, delay = 0.05, max_delay = 0.5 } })
n:watch("outbox", "insert")
n:subscribe("outbox", "insert", function(ev)
  sqlnotify.sleep(0.05)
  local ack = assert(nc:publish("s31.outbox", ev:json(), { msg_id = tostring(ev.id) }))
  print(string.format("acked %d %d %s", ev.id, ack.seq, tostring(ack.duplicate)))
  sqlnotify.sleep(ev.id == hold and 3600 or 0.02)
end)
assert(n:start())
print("ready")
]]

-- A subject no stream takes: retried twice, then dead-lettered.
local NOSTREAM = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local db, url = arg[1], arg[2]
local nc = sqlnotify.nats{ url = url, timeout = 2 }
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, consumer = "s31nostream",
  retry = { attempts = 2, delay = 0.05, max_delay = 0.1 } })
n:watch("outbox", "insert")
n:subscribe("outbox", "insert", function(ev)
  local ack, err = nc:publish("nowhere.outbox", ev:json(), { msg_id = tostring(ev.id) })
  print(string.format("try %d %s", ev.id, tostring(err)))
  assert(ack, err)
end)
n:on("dead_letter", function(ev, info) print(string.format("dead %d %d", ev.id, info.attempts)) end)
assert(n:start())
print("ready")
]]

local function lines(text, pattern)
  local out = {}
  for l in text:gmatch("[^\n]+") do
    local a, b, c = l:match(pattern)
    if a then out[#out + 1] = { a, b, c } end
  end
  return out
end

local function insert(db, from, to)
  local rows = {}
  for i = from, to do rows[#rows + 1] = fmt("(%d, 'row %d')", i, i) end
  H.sqlite_cli(db, "INSERT INTO outbox VALUES " .. table.concat(rows, ", ") .. ";")
end

describe("sqlnotify.nats (the real host, a private nats-server)", function()
  local server, dir
  local procs = {}
  local function track(p) procs[#procs + 1] = p; return p end

  local function admin(action, stream)
    local p = track(H.host(ADMIN, { URL, action, stream }))
    assert(p:wait(30) == 0, p:stderr())
    return p:stdout()
  end

  setup(function()
    dir = H.tmpdir() .. "/nats31-store"
    H.sh("rm -rf " .. q(dir))
    server = H.daemon(fmt("nats-server -a 127.0.0.1 -p %d -js -sd %s", PORT, dir), PORT)
  end)
  teardown(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") end
    end
    if server then server:stop() end
    H.sh("rm -rf " .. q(dir))
  end)
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL"); p:wait() end
    end
  end)

  it("relays 2,000 outbox inserts with a kill -9 and a server restart: 2,000 messages, each row once",
    function()
      assert.matches("^created", admin("create", "S31"))
      local db = H.fresh_sqlite("nats31")
      H.sqlite_cli(db, "PRAGMA journal_mode = wal; CREATE TABLE outbox (id integer PRIMARY KEY, body text);")

      local r1 = track(H.host(RELAY, { db, URL, "100" }))
      assert(r1:wait_for("ready", 20), r1:stderr())
      insert(db, 1, 800)
      local function acked(p) return lines(p:stdout(), "^acked (%d+) (%d+) (%a+)") end
      assert.is_true(r1:wait_count(acked, 150, 30), r1:stderr())
      assert.matches("\nacked 100 %d+ false\n", "\n" .. r1:stdout())
      r1:kill("KILL") -- events in flight: row 100 and others published, not acknowledged to the database
      r1:wait()
      assert.is_true(#acked(r1) < 800, "the kill came after the end: " .. #acked(r1))

      local r2 = track(H.host(RELAY, { db, URL }))
      assert(r2:wait_for("ready", 20), r2:stderr())
      insert(db, 801, 1400)
      assert.is_true(r2:wait_count(acked, 300, 30), r2:stderr())
      server:stop() -- the stream's store stays in dir
      insert(db, 1401, 2000)
      H.sleep(1)
      server:start()

      local seen = {}
      local function distinct()
        local n = 0
        seen = {}
        for _, p in ipairs({ r1, r2 }) do
          for _, a in ipairs(acked(p)) do
            if not seen[a[1]] then seen[a[1]] = true; n = n + 1 end
          end
        end
        return n
      end
      local deadline = H.now() + 60
      while distinct() < 2000 and H.now() < deadline do H.sleep(0.1) end
      assert.equal(2000, distinct(), r2:stderr())
      assert.matches("nats: disconnected from nats://127.0.0.1:" .. PORT, r2:stderr())
      r2:stop()

      -- redeliveries happened (row 100 and the others in flight at the kill, the calls that
      -- timed out while the server was down) and the stream dropped them by msg_id: 2,000
      -- messages at sequences 1..2000
      local again = {}
      for _, a in ipairs(acked(r2)) do if a[3] == "true" then again[tonumber(a[1])] = true end end
      assert.is_true(again[100], "row 100 was not redelivered and deduplicated")
      local out = admin("ids", "S31")
      assert.matches("^messages 2000 last_seq 2000\n", out)
      local count = {}
      for id in out:gmatch("\nid (%d+)") do count[tonumber(id)] = (count[tonumber(id)] or 0) + 1 end
      for i = 1, 2000 do assert.equal(1, count[i], "row " .. i) end
      r1:assert_clean()
      r2:assert_clean()
    end)

  it("a subject no stream takes: nil, 'no stream', a retry, then a dead letter", function()
    local db = H.fresh_sqlite("nats31")
    H.sqlite_cli(db, "PRAGMA journal_mode = wal; CREATE TABLE outbox (id integer PRIMARY KEY, body text);")
    local p = track(H.host(NOSTREAM, { db, URL }))
    assert(p:wait_for("ready", 20), p:stderr())
    insert(db, 7, 7)
    assert(p:wait_for("dead 7 2", 20), p:stdout() .. p:stderr())
    -- up to the dead letter (the delivery core redelivers a dead-lettered last event: reported)
    local got = {}
    for l in p:stdout():gmatch("[^\n]+") do
      if l:find(" 7") and not (got[#got] or ""):find("^dead") then got[#got + 1] = l end
    end
    assert.same({
      "try 7 sqlnotify: nats: publish to 'nowhere.outbox': no stream takes this subject (no responders)",
      "try 7 sqlnotify: nats: publish to 'nowhere.outbox': no stream takes this subject (no responders)",
      "dead 7 2",
    }, got)
    p:stop()
    p:assert_clean()
  end)

  it("publish, dedupe, publish_core, request, close: the answers", function()
    assert.matches("^created", admin("create", "API31"))
    local p = track(H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local nc = sqlnotify.nats{ url = arg[1] }
sqlnotify.spawn(function()
  local a = assert(nc:publish("api31.a", "one", { msg_id = "m1" }))
  print("first", a.stream, a.seq, a.duplicate)
  a = assert(nc:publish("api31.a", "again", { msg_id = "m1" }))
  print("again", a.stream, a.seq, a.duplicate)
  a = assert(nc:publish("api31.b", "two", { stream = "API31" }))
  print("second", a.stream, a.seq, a.duplicate)
  print("wrong stream", nc:publish("api31.c", "x", { stream = "OTHER" }))
  print("core", nc:publish_core("api31.core", "three"))
  print("nobody", nc:request("nobody31.here", "x", 0.5))
  local info = assert(nc:request("$JS.API.STREAM.INFO.API31", ""))
  print("messages", info:match('"messages":(%d+)'))
  print("subject", pcall(nc.publish_core, nc, "bad subject", "x"))
  sqlnotify.spawn(function() print("waiting", nc:publish("api31.d", "x")) end)
  nc:close()
  print("closed", pcall(nc.publish_core, nc, "api31.e", "x"))
  sqlnotify.sleep(0.1)
  sqlnotify.stop()
end)
]], { URL }))
    assert.equal(0, p:wait(20), p:stderr())
    local out = p:stdout()
    assert.matches("first\tAPI31\t1\tfalse\n", out, 1, true)
    assert.matches("again\tAPI31\t1\ttrue\n", out, 1, true)
    assert.matches("second\tAPI31\t2\tfalse\n", out, 1, true)
    assert.matches("wrong stream\tnil\tsqlnotify: nats: publish to 'api31.c': JetStream error 10060: expected stream does not match\n",
      out, 1, true)
    assert.matches("core\ttrue\n", out, 1, true)
    assert.matches("nobody\tnil\tsqlnotify: nats: request to 'nobody31.here': no responders\n", out, 1, true)
    assert.matches("messages\t3\n", out, 1, true) -- one, two, three
    assert.matches("subject\tfalse\t[^\n]*sqlnotify: nats: subject \"bad subject\": expected dot%-separated tokens", out)
    assert.matches("waiting\tnil\tsqlnotify: nats: publish to 'api31.d': the client was closed\n", out, 1, true)
    assert.matches("closed\tfalse\t[^\n]*sqlnotify: nats: this client is closed\n", out)
    p:assert_clean()
  end)

  it("a server down at start: calls wait for their deadline, the loop goes on; held calls go once it is up",
    function()
      local late
      local p = track(H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local down = sqlnotify.nats{ url = "nats://u:secret31@127.0.0.1:" .. arg[1], timeout = 1 }
local late = sqlnotify.nats{ url = "nats://127.0.0.1:" .. arg[2], timeout = 20 }
local ticks = 0
sqlnotify.every(0.05, function() ticks = ticks + 1 end)
sqlnotify.spawn(function()
  local r, err = down:publish("s31.down", "x", { msg_id = "d1" })
  print("down", r, err)
  print("ticks", ticks >= 10)
  print("late waiting")
  local a, e = late:publish("late31.x", "x", { msg_id = "l1" })
  print("late", a, e)
  sqlnotify.stop()
end)
]], { tostring(DOWN_PORT), tostring(LATE_PORT) }))
      finally(function() if late then late:stop() end end)
      assert(p:wait_for("late waiting", 20), p:stdout() .. p:stderr())
      local out = p:stdout()
      assert.matches("down\tnil\tsqlnotify: nats: publish to 's31.down': no answer within 1 s: the connection to "
        .. "nats://u:***@127.0.0.1:" .. DOWN_PORT .. " is down (reconnecting)\n", out, 1, true)
      assert.matches("ticks\ttrue\n", out, 1, true)
      assert.is_nil(out:find("secret31", 1, true))
      late = H.daemon(fmt("nats-server -a 127.0.0.1 -p %d", LATE_PORT), LATE_PORT) -- no JetStream there
      assert.equal(0, p:wait(30), p:stderr())
      assert.matches("late\tnil\tsqlnotify: nats: publish to 'late31.x': no stream takes this subject (no responders)\n",
        p:stdout(), 1, true)
      assert.is_nil(p:stderr():find("secret31", 1, true))
      p:assert_clean()
    end)
end)

describe("sqlnotify.nats misuse", function()
  it("a bad URL or option raises at the caller's line", function()
    local function line_of(fn)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      return err
    end
    local here = "31%-nats_spec%.lua:%d+: "
    assert.matches(here .. "sqlnotify: nats: url \"http://x\" must start with nats:// or tls://",
      line_of(function() local c = sqlnotify.nats{ url = "http://x" } return c end))
    assert.matches(here .. "sqlnotify: nats: url \"nats://u:%*%*%*@h:99999\": expected",
      line_of(function() local c = sqlnotify.nats{ url = "nats://u:pw@h:99999" } return c end))
    assert.matches(here .. "sqlnotify: nats: timeout must be a number of seconds above 0, got %-1",
      line_of(function() local c = sqlnotify.nats{ url = URL, timeout = -1 } return c end))
    assert.matches(here .. "sqlnotify: nats: unknown option \"tiemout\"",
      line_of(function() local c = sqlnotify.nats{ url = URL, tiemout = 1 } return c end))
    assert.matches(here .. "sqlnotify: nats: sqlnotify.nats needs a table",
      line_of(function() local c = sqlnotify.nats(URL) return c end))
  end)

  it("publish and request outside a handler raise naming sqlnotify.spawn", function()
    local nc = sqlnotify.nats{ url = "nats://127.0.0.1:" .. DOWN_PORT, timeout = 1 }
    finally(function() nc:close() end)
    local ok, err = pcall(function() local r = nc:publish("s31.x", "d") return r end)
    assert.is_false(ok)
    assert.matches("31%-nats_spec%.lua:%d+: sqlnotify: nc:publish must be called from a handler or a coroutine of "
      .. "sqlnotify%.spawn", err)
    ok, err = pcall(function() local r = nc:request("s31.x", "d") return r end)
    assert.matches("31%-nats_spec%.lua:%d+: sqlnotify: nc:request must be called from a handler", err)
    ok, err = pcall(function() local r = nc:publish("s31.x", 42) return r end)
    assert.matches("31%-nats_spec%.lua:%d+: sqlnotify: nats: data must be a string, got number", err)
    ok, err = pcall(function() local r = nc:publish("s31.x", "d", { msg_id = "a\nb" }) return r end)
    assert.matches("31%-nats_spec%.lua:%d+: sqlnotify: nats: msg_id must be a non%-empty string", err)
  end)
end)
