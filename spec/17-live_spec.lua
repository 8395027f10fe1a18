-- The live example (scripts/examples/live.lua) end to end, through the real host: a
-- headless Chromium shows rows written by another process, on PostgreSQL and on SQLite
-- (a screenshot of each is kept, its path in the log); 200 concurrent SSE clients each
-- get every one of 1,000 events in order; a client that reconnects with Last-Event-ID
-- gets exactly what it missed. Schema spec17 and SQLite files of this spec only.
local H = require("helper")
local Chromium = require("chromium")
local cjson = require("cjson")

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
