-- sqlnotify.nats (SPEC §8.2) through the real host against a private nats-server with
-- JetStream (port 14230, its store in a temporary directory): the outbox relay of 2,000
-- inserts from a durable SQLite consumer survives a kill -9 of the relay and a restart of
-- the server with exactly 2,000 messages in the stream, each row once; a subject no stream
-- takes is retried then dead-lettered; a server down at start makes calls wait for their
-- deadline while the loop goes on; misuse raises at the caller's line. Servers that refuse
-- the credentials (ports 17510, 17511), at start and after a restart with another password:
-- cnats closes the connection, calls fail at once saying why, the refusal is logged once, and
-- the client connects again once they are accepted.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt, q = string.format, H.shell_quote

local PORT, DOWN_PORT, LATE_PORT = 14230, 14233, 14231
local AUTH_PORT, MID_PORT = 17510, 17511
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
      -- a wrong or idle address is said at once, once, and so is the connection when it comes
      for _, w in ipairs { "u:***@127.0.0.1:" .. DOWN_PORT, "127.0.0.1:" .. LATE_PORT } do
        local _, k = p:stderr():gsub(("sqlnotify: nats: nats://" .. w .. ": not connected (the first attempt "
          .. "failed); connecting again with backoff\n"):gsub("%p", "%%%0"), "")
        assert.equal(1, k, p:stderr())
      end
      assert.matches("sqlnotify: nats: connected to nats://127.0.0.1:" .. LATE_PORT .. "\n", p:stderr(), 1, true)
      p:assert_clean()
    end)
end)

describe("sqlnotify.nats and a server that refuses the credentials", function()
  local procs, servers, dirs = {}, {}, {}
  local function track(p) procs[#procs + 1] = p; return p end
  -- a private server on port with --user good --pass pass, JetStream stored in its own directory
  local function nats_auth(port, pass)
    local dir = H.tmpdir() .. "/nats31-auth-" .. port
    H.sh("rm -rf " .. q(dir))
    dirs[#dirs + 1] = dir
    local d = H.daemon(fmt("nats-server -a 127.0.0.1 -p %d --user good --pass %s -js -sd %s", port, pass, dir), port)
    servers[#servers + 1] = d
    return d
  end
  -- the same server (its stream kept) restarted with another password
  local function restart(d, port, pass)
    d.cmd = d.cmd:gsub("%-%-pass %S+", "--pass " .. pass)
    d:stop()
    d:start()
  end
  local function count(text, plain)
    local n, at = 0, 1
    while true do
      local i = text:find(plain, at, true)
      if not i then return n end
      n, at = n + 1, i + #plain
    end
  end
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL"); p:wait() end
    end
    for _, d in ipairs(servers) do d:stop() end
    for _, dir in ipairs(dirs) do H.sh("rm -rf " .. q(dir)) end
    procs, servers, dirs = {}, {}, {}
  end)

  it("refused at start: a client, not an error; calls fail at once saying why; it connects once accepted",
    function()
      local server = nats_auth(AUTH_PORT, "wrong31")
      local p = track(H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local nc, err = sqlnotify.nats{ url = "nats://good:pw31@127.0.0.1:" .. arg[1], timeout = 20 }
print("made", nc ~= nil, err)
sqlnotify.spawn(function() -- held until the first connection, which never comes: fails at cnats's close
  local t0 = sqlnotify.now()
  local r, e = nc:publish("auth31.held", "x", { msg_id = "h1" })
  print("held", r, e, sqlnotify.now() - t0 < 5)
end)
sqlnotify.spawn(function()
  while nc:publish_core("auth31.core", "x") do sqlnotify.sleep(0.02) end -- buffered until cnats closes
  print("status", nc:status())
  print("core", nc:publish_core("auth31.core", "x"))
  print("request", nc:request("auth31.x", "x"))
  print("publish", nc:publish("auth31.a", "x", { msg_id = "a1" }))
  print("waiting")
  while nc:status() ~= "connected" do sqlnotify.sleep(0.02) end
  print("status", nc:status())
  local r = assert(nc:request("$JS.API.STREAM.CREATE.AUTH31",
    '{"name":"AUTH31","subjects":["auth31.>"],"storage":"file"}'))
  print("created", r:find('"did_create":true', 1, true) ~= nil)
  local a = assert(nc:publish("auth31.a", "x", { msg_id = "a1" }))
  print("acked", a.stream, a.seq, a.duplicate)
  print("messages", assert(nc:request("$JS.API.STREAM.INFO.AUTH31", "")):match('"messages":(%d+)'))
  nc:close()
  sqlnotify.stop()
end)
]], { tostring(AUTH_PORT) }))
      assert(p:wait_for("waiting", 20), p:stdout() .. p:stderr())
      assert(p:wait_for("held", 5), p:stdout() .. p:stderr())
      local down = "sqlnotify: nats: nats://good:***@127.0.0.1:" .. AUTH_PORT .. ": not connected (Authorization Violation)"
      local got, held = {}, {} -- the held publish is answered from the loop: before or after the rest
      for l in p:stdout():gmatch("[^\n]+") do
        if l:find("^held") then held[#held + 1] = l else got[#got + 1] = l end
      end
      assert.same({ "held\tnil\t" .. down .. "\ttrue" }, held)
      assert.same({
        "made\ttrue\tnil",
        "status\treconnecting",
        "core\tnil\t" .. down,
        "request\tnil\t" .. down,
        "publish\tnil\t" .. down,
        "waiting" }, got)
      restart(server, AUTH_PORT, "pw31")
      assert.equal(0, p:wait(30), p:stderr())
      local out = p:stdout():gsub("held\t[^\n]*\n", "")
      assert.matches("\nwaiting\nstatus\tconnected\ncreated\ttrue\nacked\tAUTH31\t1\tfalse\nmessages\t1\n$", out)
      local err = p:stderr()
      assert.equal(1, count(err, "warn  sqlnotify: nats: nats://good:***@127.0.0.1:" .. AUTH_PORT
        .. ": not connected (Authorization Violation); connecting again with backoff\n"), err)
      assert.equal(1, count(err, "Authorization Violation"), err)
      assert.equal(1, count(err, "nats: connected again to nats://good:***@127.0.0.1:" .. AUTH_PORT .. "\n"), err)
      assert.is_nil(err:find("pw31", 1, true))
      p:assert_clean()
    end)

  it("refused after a restart with another password: in-flight calls fail, then back with the old one",
    function()
      local server = nats_auth(MID_PORT, "pw31")
      local p = track(H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local nc = sqlnotify.nats{ url = "nats://good:pw31@127.0.0.1:" .. arg[1], timeout = 30 }
sqlnotify.spawn(function()
  local r = assert(nc:request("$JS.API.STREAM.CREATE.MID31", '{"name":"MID31","subjects":["mid31.>"],"storage":"file"}'))
  print("created", r:find('"did_create":true', 1, true) ~= nil)
  local a = assert(nc:publish("mid31.a", "one", { msg_id = "m1" }))
  print("acked", a.stream, a.seq, a.duplicate)
  print("ready")
  while nc:status() == "connected" do sqlnotify.sleep(0.02) end
  -- in flight while cnats reconnects, to the server that refuses: fails when cnats closes
  sqlnotify.spawn(function()
    local t0 = sqlnotify.now()
    local r2, e2 = nc:request("nobody31.here", "x")
    print("inflight request", r2, e2, sqlnotify.now() - t0 < 10)
  end)
  local t0 = sqlnotify.now()
  local r1, e1 = nc:publish("mid31.b", "lost", { msg_id = "m2" })
  print("inflight publish", r1, e1, sqlnotify.now() - t0 < 10)
  print("status", nc:status())
  print("core", nc:publish_core("mid31.c", "x"))
  print("publish", nc:publish("mid31.b", "x", { msg_id = "m2" }))
  print("waiting")
  while nc:status() ~= "connected" do sqlnotify.sleep(0.02) end
  print("status", nc:status())
  a = assert(nc:publish("mid31.b", "two", { msg_id = "m3" }))
  print("acked", a.stream, a.seq, a.duplicate)
  a = assert(nc:publish("mid31.a", "one again", { msg_id = "m1" }))
  print("acked", a.stream, a.seq, a.duplicate)
  print("nobody", nc:request("nobody31.here", "x", 1))
  print("messages", assert(nc:request("$JS.API.STREAM.INFO.MID31", "")):match('"messages":(%d+)'))
  nc:close()
  sqlnotify.stop()
end)
]], { tostring(MID_PORT) }))
      assert(p:wait_for("ready", 20), p:stdout() .. p:stderr())
      restart(server, MID_PORT, "other31")
      assert(p:wait_for("waiting", 20), p:stdout() .. p:stderr())
      assert(p:wait_for("inflight request", 5) and p:wait_for("inflight publish", 5), p:stdout() .. p:stderr())
      local down = "sqlnotify: nats: nats://good:***@127.0.0.1:" .. MID_PORT .. ": not connected (Authorization Violation)"
      local got, inflight = {}, {} -- the two in-flight answers come in either order
      for l in p:stdout():gmatch("[^\n]+") do
        if l:find("^inflight") then inflight[#inflight + 1] = l else got[#got + 1] = l end
      end
      table.sort(inflight)
      assert.same({
        "inflight publish\tnil\t" .. down .. "\ttrue",
        "inflight request\tnil\t" .. down .. "\ttrue",
      }, inflight)
      assert.same({
        "created\ttrue",
        "acked\tMID31\t1\tfalse",
        "ready",
        "status\treconnecting",
        "core\tnil\t" .. down,
        "publish\tnil\t" .. down,
        "waiting",
      }, got)
      restart(server, MID_PORT, "pw31")
      assert.equal(0, p:wait(30), p:stderr())
      assert.matches("\nwaiting\nstatus\tconnected\nacked\tMID31\t2\tfalse\nacked\tMID31\t1\ttrue\n"
        .. "nobody\tnil\tsqlnotify: nats: request to 'nobody31.here': no responders\nmessages\t2\n$",
        (p:stdout():gsub("inflight [^\n]*\n", "")))
      local err = p:stderr()
      local url = "nats://good:***@127.0.0.1:" .. MID_PORT
      assert.equal(1, count(err, "warn  sqlnotify: nats: disconnected from " .. url .. "; reconnecting\n"), err)
      assert.equal(1, count(err, "warn  sqlnotify: nats: " .. url .. ": Authorization Violation\n"), err)
      assert.equal(1, count(err, "warn  sqlnotify: nats: " .. url
        .. ": not connected (Authorization Violation); connecting again with backoff\n"), err)
      assert.equal(2, count(err, "Authorization Violation"), err)
      assert.equal(1, count(err, "nats: connected again to " .. url .. "\n"), err)
      assert.is_nil(err:find("pw31", 1, true))
      assert.is_nil(err:find("other31", 1, true))
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
