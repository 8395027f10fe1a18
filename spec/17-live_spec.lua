-- The live example (scripts/examples/live.lua) end to end, through the real host: a
-- headless Chromium shows rows written by another process, on PostgreSQL and on SQLite
-- (a screenshot of each is kept, its path in the log); 200 concurrent SSE clients each
-- get every one of 1,000 events in order; a client that reconnects with Last-Event-ID
-- gets exactly what it missed. And what makes it safe to copy: clients that never read
-- cost the host little memory however much they have to catch up on, one that falls behind
-- is dropped and resumes, accept outlives EMFILE, a cap on connections, a deadline for the
-- request. Schema spec17 and SQLite files of this spec only.
local H = require("helper")
local Chromium = require("chromium")
local cjson = require("cjson")
local socket = require("cqueues.socket")

local S = "spec17"
local q = H.shell_quote
local LIVE = H.slurp(H.root .. "/scripts/examples/live.lua")

-- Start live.lua on url and table; returns the process and the port it serves on.
local function live(url, tbl, env)
  local p = H.host(LIVE, { url, tbl, "0" }, env)
  assert.is_true(p:wait_for("live: [^\n]* on http://127%.0%.0%.1:%d+/"), p:stdout() .. p:stderr())
  return p, tonumber(p:stdout():match("http://127%.0%.0%.1:(%d+)/"))
end

-- Wait until the server has had `count` streams opened in all.
local function opened(p, count)
  local deadline = H.now() + 60
  repeat
    local _, n = p:stdout():gsub("live: stream opened", "")
    if n >= count then return true end
    H.sleep(0.02)
  until H.now() > deadline
  return false
end

local function sqlite_db(name)
  local path = H.tmpdir() .. "/live17-" .. name .. ".db"
  H.sh("rm -f " .. q(path) .. "*")
  assert(H.sh("sqlite3 " .. q(path) .. " 'PRAGMA journal_mode = WAL; "
    .. "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)' >/dev/null"))
  return path
end

local function sqlite_write(path, sql)
  assert(H.sh("sqlite3 " .. q(path) .. " " .. q(".timeout 5000") .. " " .. q(sql)))
end

local client_bin
local function sse_client()
  if not client_bin then
    client_bin = H.tmpdir() .. "/sse_client"
    assert(H.sh("cc -O2 -Wall -Wextra -Werror -o " .. q(client_bin) .. " " .. q(H.root .. "/bench/sse_client.c")))
  end
  return client_bin
end

-- Run sse_client in the background; returns its stdout file and a function telling
-- whether it exited.
local function clients(port, n, events, opts)
  local out = H.tmpfile(".clients")
  local extra = ""
  for k, v in pairs(opts or {}) do extra = extra .. " --" .. k .. " " .. q(v) end
  assert(H.sh("(" .. q(sse_client()) .. " " .. port .. " " .. n .. " " .. events .. extra .. " >" .. q(out)
    .. " 2>&1; echo $? >" .. q(out .. ".rc") .. ") </dev/null >/dev/null 2>&1 &"))
  local function wait(pattern, timeout)
    local deadline = H.now() + (timeout or 60)
    while not H.slurp(out):find(pattern) do
      if H.now() > deadline or H.slurp(out .. ".rc") ~= "" and not H.slurp(out):find(pattern) then
        error("sse_client: no " .. pattern .. " in:\n" .. H.slurp(out), 2)
      end
      H.sleep(0.01)
    end
  end
  return out, wait
end

-- The per-client lines of sse_client's output.
local function summaries(out)
  local t = {}
  for i, rest in H.slurp(out):gmatch("client (%d+) ([^\n]+)") do t[tonumber(i) + 1] = rest end
  return t
end

-- A connection of our own to the server, from this process: binary, socket errors returned
-- (not raised), each read waiting at most 10 s. Sends request if given.
local function connect(port, request)
  local con = socket.connect { host = "127.0.0.1", port = port }
  con:setmode("b", "bn")
  con:onerror(function(_, _, why) return why end)
  con:settimeout(10)
  assert(con:connect())
  if request then assert(con:write(request)) end
  return con
end

local GET_EVENTS = "GET /events HTTP/1.1\r\nHost: x\r\n\r\n"

-- The status line of a response, after reading its headers (nil if the server closed first).
local function status(con)
  local first = con:read("*l")
  local line = first
  while line and line ~= "\r" and line ~= "" do line = con:read("*l") end
  return first and first:gsub("\r$", "")
end

-- Read SSE events until n arrived or the server closed (or timeout s passed): their ids,
-- and whether the server closed.
local function read_events(con, n, timeout)
  local ids, id = {}, nil
  local deadline = H.now() + (timeout or 30)
  while #ids < n and H.now() < deadline do
    con:settimeout(math.max(0.01, deadline - H.now()))
    local line = con:read("*l")
    if not line then return ids, con:eof("r") end
    id = line:match("^id: (%S+)") or id
    if line == "" and id then ids[#ids + 1], id = id, nil end
  end
  return ids, false
end

-- The host's resident memory, in kB.
local function rss(p)
  return tonumber(H.slurp("/proc/" .. p.pid .. "/status"):match("VmRSS:%s*(%d+)"))
end

local function count(text, pattern)
  local _, n = text:gsub(pattern, "")
  return n
end

-- The rows of the page's table, top to bottom, as arrays of cell texts; and its header.
local ROWS = [[JSON.stringify({
  head: [...document.querySelectorAll("#head th")].map(th => th.textContent),
  rows: [...document.querySelectorAll("#rows tr")].map(tr => [...tr.children].map(td => td.textContent)),
  status: document.getElementById("status").textContent })]]

local function browser_shows(url, tbl, write, name)
  local p, port = live(url, tbl)
  local browser = Chromium.start()
  finally(function() browser:close(); p:kill("KILL") end)
  local page = browser:open("http://127.0.0.1:" .. port .. "/")
  assert.is_true(opened(p, 1), p:stdout())
  write()
  local expected = {
    head = { "change", "id", "name", "qty" },
    rows = { { "delete", "1", "apples", "3" }, { "update", "2", "pears", "6" }, { "insert", "3", "plums", "7" } },
    status = "live: 5 changes",
  }
  local got
  local deadline = H.now() + 60
  repeat
    got = cjson.decode(browser:eval(page, ROWS))
    if #got.rows == 3 and got.status == expected.status then break end
    H.sleep(0.05)
  until H.now() > deadline
  assert.are.same(expected, got)
  local shot = browser:screenshot(page, H.tmpdir() .. "/live-" .. name .. ".png")
  print("screenshot: " .. shot)
  assert.are.equal("\137PNG", H.slurp(shot):sub(1, 4))
  p:kill("TERM")
  assert.are.equal(0, p:wait())
  p:assert_clean()
end

describe("scripts/examples/live.lua", function()
  setup(function()
    H.fresh_schema(S)
    H.psql([[CREATE TABLE spec17.items (id int PRIMARY KEY, name text NOT NULL, qty int);
      CREATE TABLE spec17.many (id int PRIMARY KEY, v text);]])
  end)
  teardown(function() H.drop_schema(S) end)

  it("shows rows written by another client in a browser's DOM (PostgreSQL)", function()
    browser_shows(H.pg_url, "spec17.items", function()
      H.psql([[INSERT INTO spec17.items VALUES (1, 'apples', 3), (2, 'pears', 5);
        INSERT INTO spec17.items VALUES (3, 'plums', 7);
        UPDATE spec17.items SET qty = 6 WHERE id = 2;
        DELETE FROM spec17.items WHERE id = 1;]])
    end, "postgresql")
  end)

  it("shows rows written by another process in a browser's DOM (SQLite)", function()
    local db = sqlite_db("browser")
    browser_shows("sqlite:///" .. db, "items", function()
      sqlite_write(db, [[INSERT INTO items VALUES (1, 'apples', 3), (2, 'pears', 5);
        INSERT INTO items VALUES (3, 'plums', 7);
        UPDATE items SET qty = 6 WHERE id = 2;
        DELETE FROM items WHERE id = 1;]])
    end, "sqlite")
  end)

  it("sends every one of 1,000 events, in order, to each of 200 concurrent clients", function()
    local p, port = live(H.pg_url, "spec17.many")
    finally(function() p:kill("KILL") end)
    local dump = H.tmpfile(".dump")
    local out, wait = clients(port, 200, 1000, { dump = dump })
    wait("ready 200\n")
    assert.is_true(opened(p, 200), p:stdout())
    -- 1,000 rows in ten commits.
    H.psql([[DO $$ BEGIN FOR c IN 0..9 LOOP
        INSERT INTO spec17.many SELECT g, 'row ' || g FROM generate_series(c * 100 + 1, c * 100 + 100) g;
        COMMIT;
      END LOOP; END $$;]])
    wait("done %d+/200\n", 120)
    assert.matches("done 200/200\n", H.slurp(out))
    local all = summaries(out)
    assert.are.equal(200, #all)
    local first = all[1]
    assert.matches("^events=1000 resets=0 first=%x+%-1 last=%x+%-1000 order=ok hash=%x+$", first)
    for i = 2, 200 do assert.are.equal(first, all[i], "client " .. (i - 1)) end
    -- Client 0's events, decoded: rows 1..1000 in commit order.
    local n = 0
    for id, data in H.slurp(dump):gmatch("([^\t\n]+)\t([^\n]+)") do
      n = n + 1
      local ev = cjson.decode(data)
      assert.are.equal("-" .. n, id:match("%-%d+$"))
      assert.are.same({ "insert", "many", n, { id = n, v = "row " .. n } }, { ev.op, ev.table, ev.id, ev.row })
    end
    assert.are.equal(1000, n)
    p:kill("TERM")
    assert.are.equal(0, p:wait())
    p:assert_clean()
  end)

  it("sends a client that reconnects with Last-Event-ID exactly the events it missed", function()
    local db = sqlite_db("reconnect")
    local p, port = live("sqlite:///" .. db, "items")
    finally(function() p:kill("KILL") end)
    local function rows(from, to)
      local v = {}
      for i = from, to do v[#v + 1] = string.format("(%d, 'r%d', %d)", i, i, i) end
      sqlite_write(db, "INSERT INTO items VALUES " .. table.concat(v, ", ") .. ";")
    end
    -- An observer that stays connected, to know when the server has had the events.
    local _, observer_wait = clients(port, 1, 12)
    observer_wait("ready 1\n")
    -- The first client sees events 1..5, then goes away.
    local out1, wait1 = clients(port, 1, 5)
    wait1("ready 1\n")
    for i = 1, 5 do rows(i, i) end
    wait1("done 1/1\n")
    local s1 = summaries(out1)[1]
    local boot, last = s1:match("last=(%x+)%-(%d+) ")
    assert.are.equal("5", last)
    -- Seven events while it is away.
    rows(6, 8)
    rows(9, 12)
    observer_wait("done 1/1\n")
    -- It comes back: events 6..12 from the ring, then a new one, live; nothing twice.
    local dump = H.tmpfile(".dump")
    local out2, wait2 = clients(port, 1, 8, { ["last-id"] = boot .. "-5", dump = dump })
    wait2("ready 1\n")
    rows(13, 13)
    wait2("done 1/1\n")
    assert.matches("^events=8 resets=0 first=" .. boot .. "%-6 last=" .. boot .. "%-13 order=ok ", summaries(out2)[1])
    local ids = {}
    for data in H.slurp(dump):gmatch("\t([^\n]+)") do ids[#ids + 1] = cjson.decode(data).id end
    assert.are.same({ 6, 7, 8, 9, 10, 11, 12, 13 }, ids)
    -- An id from another run of the server (or older than the ring) cannot be resumed:
    -- the client is told it missed events, then gets the new ones.
    local out3, wait3 = clients(port, 1, 1, { ["last-id"] = "abc-3" })
    wait3("ready 1\n")
    rows(14, 14)
    wait3("done 1/1\n")
    assert.matches("^events=1 resets=1 first=" .. boot .. "%-14 last=" .. boot .. "%-14 order=ok ", summaries(out3)[1])
    p:kill("TERM")
    assert.are.equal(0, p:wait())
    p:assert_clean()
  end)
end)

describe("scripts/examples/live.lua, safe to copy", function()
  local ETIMEDOUT = require("cqueues.errno").ETIMEDOUT

  -- rows(db, from, to, size): rows from..to in one transaction, each with a name of size characters.
  local function rows(db, from, to, size)
    sqlite_write(db, string.format("WITH RECURSIVE g(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM g WHERE i < %d) "
      .. "INSERT INTO items SELECT i, hex(zeroblob(%d)), i FROM g;", from, to, size // 2))
  end

  it("keeps its memory bounded while 20 clients that never read catch up on 10,000 events", function()
    local db = sqlite_db("memory")
    -- The sanitizer build keeps freed memory in quarantine, which RSS would count.
    local p, port = live("sqlite:///" .. db, "items",
      "ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:quarantine_size_mb=0")
    local cons = {}
    finally(function()
      for _, c in ipairs(cons) do c:close() end
      p:kill("KILL")
    end)
    -- A full ring: 10,000 events of ~620 bytes, so ~6 MB to catch up on from the first.
    local out, wait = clients(port, 1, 10000)
    wait("ready 1\n")
    rows(db, 1, 10000, 500)
    wait("done 1/1\n")
    local boot = summaries(out)[1]:match("first=(%x+)%-1 ")
    local before = rss(p)
    for i = 1, 20 do
      cons[i] = connect(port, "GET /events HTTP/1.1\r\nLast-Event-ID: " .. boot .. "-0\r\n\r\n")
    end
    assert.is_true(opened(p, 21), p:stdout())
    local peak = before
    for _ = 1, 30 do
      peak = math.max(peak, rss(p))
      H.sleep(0.05)
    end
    -- Each stream holds one piece of its catch-up (16 kB), its socket's buffer and a coroutine:
    -- well under 256 kB. On top, the pieces already written are garbage until the collector's
    -- next cycle, which starts when the heap has grown by about its own size, the ring's 6 MB.
    -- A host that copies a stream's whole catch-up holds 20 x 6 MB.
    local bound = 6 * 1024 + 20 * 256
    assert.is_true(peak - before < bound, string.format("RSS grew by %d kB (from %d kB), bound %d kB",
      peak - before, before, bound))
    for _, c in ipairs(cons) do c:close() end
    cons = {}
    p:stop()
  end)

  it("drops a client falling behind by more than half the ring; with its Last-Event-ID it resumes", function()
    local db = sqlite_db("behind")
    -- A ring of 64 events of 256 kB. The socket of a client that stops reading takes ~4 MB
    -- (about 16 events), then the host waits for it to take more.
    local p, port = live("sqlite:///" .. db, "items", "LIVE_RING=64")
    local slow, back = connect(port, GET_EVENTS), nil
    finally(function()
      slow:close()
      if back then back:close() end
      p:kill("KILL")
    end)
    assert.are.equal("HTTP/1.1 200 OK", status(slow))
    local _, wait40 = clients(port, 1, 40)
    local _, wait64 = clients(port, 1, 64)
    wait40("ready 1\n")
    wait64("ready 1\n")
    rows(db, 1, 40, 256 * 1024)
    wait40("done 1/1\n") -- the slow client's socket is full by now
    rows(db, 41, 64, 256 * 1024) -- 24 more while it does not read: more than 32 behind, and falling
    wait64("done 1/1\n")
    -- It reads again: what the host had written, and then the host closes it.
    local ids, eof = read_events(slow, 64)
    assert.is_true(eof, "the slow client was not dropped; it got " .. #ids .. " events")
    assert.is_true(#ids >= 1 and #ids < 32, #ids)
    local boot = ids[1]:match("^(%x+)%-1$")
    assert.is_truthy(boot, ids[1])
    for i, id in ipairs(ids) do assert.are.equal(boot .. "-" .. i, id) end
    assert.matches("live: dropped a stream falling behind %(" .. (64 - #ids) .. " events%); "
      .. "it reconnects and resumes\n", p:stdout())
    -- It comes back with the last id it saw and gets exactly the rest.
    back = connect(port, "GET /events HTTP/1.1\r\nLast-Event-ID: " .. ids[#ids] .. "\r\n\r\n")
    assert.are.equal("HTTP/1.1 200 OK", status(back))
    local rest = read_events(back, 64 - #ids)
    local expected = {}
    for i = #ids + 1, 64 do expected[#expected + 1] = boot .. "-" .. i end
    assert.are.same(expected, rest)
    back:close()
    slow:close()
    assert.is_true(p:wait_for("stream closed %(0 open%)"), p:stdout())
    p:stop()
  end)

  it("goes on accepting after running out of file descriptors (EMFILE), saying so once", function()
    local db = sqlite_db("emfile")
    -- prlimit, after the variables, runs the host with at most 64 open files.
    local p, port = live("sqlite:///" .. db, "items", "prlimit --nofile=64:64")
    local cons = {}
    finally(function()
      for _, c in ipairs(cons) do c:close() end
      p:kill("KILL")
    end)
    for i = 1, 80 do cons[i] = connect(port, GET_EVENTS) end
    assert.is_true(p:wait_for("live: cannot accept %(Too many open files%); trying again every 0%.1 s\n", 30),
      p:stdout() .. p:stderr())
    H.sleep(1) -- ten more tries meanwhile, not logged again
    assert.are.equal(1, count(p:stdout(), "cannot accept"))
    local served = count(p:stdout(), "stream opened")
    assert.is_true(served > 0 and served < 80, served)
    for _, c in ipairs(cons) do c:close() end
    cons = {}
    assert.is_true(p:wait_for("live: accepting connections again\n", 30), p:stdout())
    -- A new client is served, and gets a new event.
    local out, wait = clients(port, 1, 1)
    wait("ready 1\n")
    sqlite_write(db, "INSERT INTO items VALUES (1, 'after', 1);")
    wait("done 1/1\n")
    assert.matches("^events=1 resets=0 first=%x+%-1 last=%x+%-1 order=ok ", summaries(out)[1])
    p:stop()
  end)

  it("answers 503 beyond LIVE_MAX_CONNECTIONS, says so once, and serves again once one closes", function()
    local db = sqlite_db("cap")
    local p, port = live("sqlite:///" .. db, "items", "LIVE_MAX_CONNECTIONS=3")
    local cons = {}
    finally(function()
      for _, c in ipairs(cons) do c:close() end
      p:kill("KILL")
    end)
    for i = 1, 3 do
      cons[i] = connect(port, GET_EVENTS)
      assert.are.equal("HTTP/1.1 200 OK", status(cons[i]))
    end
    for _, request in ipairs { GET_EVENTS, "GET / HTTP/1.1\r\n\r\n" } do
      local c = connect(port, request)
      assert.are.equal("HTTP/1.1 503 Service Unavailable", status(c))
      assert.are.equal("too many connections; try again later\n", c:read("*a"))
      c:close()
    end
    assert.are.equal(1, count(p:stdout(), "the cap"))
    assert.matches("live: 3 connections open, the cap %(LIVE_MAX_CONNECTIONS%): answering 503 to more\n", p:stdout())
    -- One closes: its slot is free at once, and a new stream is served.
    cons[1]:close()
    assert.is_true(p:wait_for("stream closed %(2 open%)"), p:stdout())
    cons[1] = connect(port, GET_EVENTS)
    assert.are.equal("HTTP/1.1 200 OK", status(cons[1]))
    sqlite_write(db, "INSERT INTO items VALUES (1, 'capped', 1);")
    for i = 1, 3 do
      local ids = read_events(cons[i], 1)
      assert.are.equal(1, #ids)
      assert.matches("^%x+%-1$", ids[1])
    end
    for _, c in ipairs(cons) do c:close() end
    cons = {}
    assert.is_true(p:wait_for("stream closed %(0 open%)"), p:stdout())
    p:stop()
  end)

  it("closes a connection that has not sent a whole request within LIVE_REQUEST_TIMEOUT", function()
    local db = sqlite_db("deadline")
    local p, port = live("sqlite:///" .. db, "items", "LIVE_REQUEST_TIMEOUT=1")
    -- Wait until the server closes con, writing a byte every 0.2 s if trickle; returns the
    -- seconds from since (nil: still open at since + limit) and what the server sent.
    local function closed(con, since, limit, trickle)
      local got = ""
      while H.now() < since + limit do
        if trickle then con:write("a") end
        con:settimeout(0.2)
        local data, why = con:read(-4096)
        if data then
          got = got .. data
        elseif why ~= ETIMEDOUT then
          return H.now() - since, got
        else
          con:clearerr()
        end
      end
      return nil, got
    end
    local since = H.now()
    local half = connect(port, "GET /events HTTP/1.1\r\n")
    local silent = connect(port)
    local trickle = connect(port, "GET /events HTTP/1.1\r\nX-Slow: ")
    finally(function()
      half:close()
      silent:close()
      trickle:close()
      p:kill("KILL")
    end)
    local took, got = closed(trickle, since, 8, true)
    assert.is_truthy(took, "a client trickling its request was not closed in 8 s")
    assert.are.equal("", got)
    assert.is_true(took >= 0.9 and took < 4, took)
    for _, con in ipairs { half, silent } do
      took, got = closed(con, since, 4)
      assert.is_truthy(took, "a client that sent part of a request (or nothing) was not closed in 4 s")
      assert.are.equal("", got)
    end
    p:stop()
  end)
end)
