-- SQLite durable consumers, through the real binary: catch-up after downtime, kill -9
-- under a writing process (at-least-once, per-row order), start_at, two consumers,
-- dropping one, a consumer away past retention told what it missed, one that stopped
-- coming named in the log, each consumer's own retention, the standby taking
-- over from a killed holder and from one paused past its lease, n:consumers(), the
-- consumers' table dropped under a running consumer, its file replaced, a watched table
-- dropped and made again (or swapped in by renames) under a running consumer. One SQLite file
-- per test.
local H = require("helper")

local q, fmt = H.shell_quote, string.format
local files = 0

local function fresh_db()
  files = files + 1
  local path = H.tmpdir() .. "/durable22-" .. files .. ".db"
  H.sh("rm -f " .. q(path) .. "*")
  return path
end

-- Run SQL in the sqlite3 CLI (another process); returns its output.
local function cli(path, sql)
  local file, out = H.tmpfile(".sql"), H.tmpfile(".out")
  H.spit(file, ".timeout 5000\n.bail on\n" .. sql .. "\n")
  local ok = H.sh("sqlite3 " .. q(path) .. " <" .. q(file) .. " >" .. q(out) .. " 2>&1")
  local text = H.slurp(out)
  if not ok then error("sqlite3 failed: " .. text, 2) end
  return text
end

-- The same in the background; returns a function telling whether it finished.
local function cli_bg(path, sql)
  local file, out, rc = H.tmpfile(".sql"), H.tmpfile(".out"), H.tmpfile(".rc")
  H.spit(file, ".timeout 5000\n.bail on\n" .. sql .. "\n")
  assert(H.sh("(sqlite3 " .. q(path) .. " <" .. q(file) .. " >" .. q(out) .. " 2>&1; echo $? >" .. q(rc)
    .. ") >/dev/null 2>&1 </dev/null &"))
  return function()
    local code = H.slurp(rc):match("%d+")
    if code and code ~= "0" then error("sqlite3 failed: " .. H.slurp(out), 2) end
    return code ~= nil
  end
end

local function setup(path)
  cli(path, "PRAGMA journal_mode = wal;\nCREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
end

-- A host script: prints "op id k seq" for every insert and update of items (then, with a
-- fifth argument, sleeps that many seconds in the handler).
local READER = [==[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local path, consumer, start_at, retention, pause = arg[1], arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5])
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path,
  consumer = consumer ~= "-" and consumer or nil, start_at = start_at ~= "-" and start_at or nil,
  retention = retention })
for _, op in ipairs { "insert", "update" } do
  n:watch("items", op, { extra_columns = { "k" } })
  n:subscribe("items", op, function(ev)
    io.write(string.format("%s %d %d %d\n", ev.operation, ev.id, ev.extra_columns.k, ev.seq or 0))
    if pause then require("system").sleep(pause) end
  end)
end
assert(n:start())
print("ready")
]==]

local function reader(path, consumer, start_at, retention, pause)
  local p = H.host(READER, { path, consumer or "-", start_at or "-", tostring(retention or 3600), pause })
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  return p
end

-- A consumer of items' inserts, updates and deletes whose check (verify_interval) is an hour
-- away: only the reader's own look at a schema change can put a trigger back in time. Prints
-- "op id k seq". With a third argument "cleanup", n:cleanup() right after the start.
local REMADE = [==[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], consumer = arg[2], verify_interval = 3600 })
for _, op in ipairs { "insert", "update", "delete" } do
  n:watch("items", op, { extra_columns = { "k" } })
  n:subscribe("items", op, function(ev)
    io.write(string.format("%s %d %d %d\n", ev.operation, ev.id, ev.extra_columns.k, ev.seq))
  end)
end
assert(n:start())
if arg[3] == "cleanup" then assert(n:cleanup()) end
print("ready")
]==]

local function events(p)
  local out = {}
  for op, id, k, seq in p:stdout():gmatch("(%a+) (%d+) (%d+) (%d+)\n") do
    out[#out + 1] = { op = op, id = tonumber(id), k = tonumber(k), seq = tonumber(seq) }
  end
  return out
end

local function wait_events(p, n, timeout) return p:wait_count(events, n, timeout) end

local function ks(list) return H.pluck(list, "k") end

-- The consumers as the API reports them, by name.
local function consumers(path)
  local sqlnotify = require("sqlnotify")
  local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, use_logger = false })
  local rows = assert(n:consumers())
  n:close()
  local by = {}
  for _, r in ipairs(rows) do by[r.name] = r end
  return by, rows
end

describe("SQLite durable consumers", function()
  local procs = {}
  local function track(p)
    procs[#procs + 1] = p
    return p
  end
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then
        p:kill("KILL")
        p:wait()
      end
    end
    procs = {}
  end)

  it("delivers all 500 rows committed while the host was stopped, in commit order, with seq", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "catchup"))
    p:stop()
    assert.matches('consumer "catchup" is new: it starts at the end', p:stderr())
    local ins = {}
    for i = 1, 500 do ins[i] = fmt("INSERT INTO items (k) VALUES (%d);", i) end
    cli(path, table.concat(ins, "\n"))
    local by = consumers(path)
    assert.are.equal(500, by.catchup.lag_events)
    assert.are.equal(0, by.catchup.members)
    p = track(reader(path, "catchup"))
    assert.is_true(wait_events(p, 500))
    assert.are.equal(1, consumers(path).catchup.members)
    H.sleep(0.2)
    p:stop()
    local got = events(p)
    assert.are.equal(500, #got)
    for i, e in ipairs(got) do
      assert.are.equal(i, e.k)
      assert.are.equal("insert", e.op)
      if i > 1 then assert.are.equal(got[i - 1].seq + 1, e.seq) end
    end
    assert.are.equal(0, consumers(path).catchup.lag_events)
  end)

  it("dead-letters an event of a newer wire version, naming the upgrade, and delivers the next one", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "newer"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    -- a writer of a later release: the same row's payload, in wire version 2
    cli(path, "INSERT INTO sqlnotify_changes (channel, payload) SELECT channel, '{\"v\": 2, ' || substr(payload, 2)"
      .. " FROM sqlnotify_changes WHERE seq = (SELECT max(seq) FROM sqlnotify_changes);"
      .. " INSERT INTO items (k) VALUES (3);")
    assert.is_true(wait_events(p, 2), p:stderr())
    assert.are.same({ 1, 3 }, ks(events(p)))
    assert.matches("cannot read insert on \"main\"%.\"items\": it is in wire format version 2, and this sqlnotify%-lua reads up"
      .. " to version 1: upgrade sqlnotify%-lua to the release of the writers' triggers; dead%-lettered\n", p:stderr())
    p:stop()
    local sqlnotify = require("sqlnotify")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, use_logger = false })
    local dl = assert(n:dead_letters{ consumer = "newer" })
    n:close()
    assert.are.equal(1, #dl)
    assert.are.equal('{"v": 2, "id":{"id":1},"x":{"k":1}}', dl[1].payload)
    assert.matches("^sqlnotify: it is in wire format version 2", dl[1].error)
    assert.are.equal(0, dl[1].attempts)
  end)

  it("starts a new consumer at the end or at the beginning of the change log", function()
    local path = fresh_db()
    setup(path)
    -- "beginning" is the oldest row of the consumer's capture: a consumer of the same
    -- columns makes it (a live watch's trigger is a capture of its own)
    local p0 = track(reader(path, "first")) -- installs the triggers
    p0:stop()
    cli(path, "INSERT INTO items (k) VALUES (1); INSERT INTO items (k) VALUES (2);")
    local pe = track(reader(path, "at_end", "end"))
    local pb = track(reader(path, "at_begin", "beginning"))
    cli(path, "INSERT INTO items (k) VALUES (3);")
    assert.is_true(wait_events(pe, 1) and wait_events(pb, 3))
    H.sleep(0.2)
    pe:stop()
    pb:stop()
    assert.are.same({ 3 }, ks(events(pe)))
    assert.are.same({ 1, 2, 3 }, ks(events(pb)))
  end)

  it("loses nothing when the host is killed with kill -9 while another process commits 2,000 rows", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "killed"))
    local function rows(from, to)
      local lines = {}
      for i = from, to do
        lines[#lines + 1] = fmt("INSERT INTO items (k) VALUES (%d);", i)
        if i % 7 == 0 then lines[#lines + 1] = fmt("UPDATE items SET k = k WHERE id = %d;", i) end
      end
      return table.concat(lines, "\n")
    end
    local function finish(done)
      local deadline = H.now() + 60
      while not done() do
        assert(H.now() < deadline, "the writer did not finish")
        H.sleep(0.02)
      end
    end
    -- the writer's first 1,400 rows go on while the host is killed; the last 600 come after
    -- it, so the restart has rows to read even where this machine let the host catch up
    local done = cli_bg(path, rows(1, 1400))
    assert.is_true(wait_events(p, 300))
    p:kill("KILL")
    p:wait()
    local first = events(p)
    local acked = tonumber(cli(path, "SELECT position FROM sqlnotify_consumers WHERE name = 'killed';"):match("%d+"))
    local p2 = track(reader(path, "killed"))
    finish(done)
    finish(cli_bg(path, rows(1401, 2000)))
    local function seen()
      local s = {}
      for _, list in ipairs { first, events(p2) } do
        for _, e in ipairs(list) do
          local key = e.op .. " " .. e.k
          s[key] = (s[key] or 0) + 1
        end
      end
      return s
    end
    local function complete()
      local s = seen()
      for i = 1, 2000 do
        if not s["insert " .. i] then return false end
        if i % 7 == 0 and not s["update " .. i] then return false end
      end
      return true
    end
    local deadline = H.now() + 60
    while not complete() and H.now() < deadline do H.sleep(0.05) end
    assert.is_true(complete(), "rows missing after the restart")
    p2:stop()
    local dup = 0
    for _, c in pairs(seen()) do dup = dup + c - 1 end
    local second = events(p2)
    print(fmt("\n  kill -9 after %d events; every one of 2000 rows delivered, %d twice", #first, dup))
    -- duplicates only from the batch in flight: the restart goes on right after the position
    -- acked before the kill, so the first run up to it plus the second run is every change once
    local once = {}
    for _, e in ipairs(first) do if e.seq <= acked then once[#once + 1] = e end end
    assert.are.equal(#first - #once, dup)
    assert.is_true(#second > 0)
    assert.are.equal(acked + 1, second[1].seq)
    for _, e in ipairs(second) do once[#once + 1] = e end
    assert.are.equal(2000 + 2000 // 7, #once)
    -- commit order: seq strictly increases, so each row's update comes after its insert
    local inserted = {}
    for i, e in ipairs(once) do
      if i > 1 then assert.is_true(e.seq > once[i - 1].seq, "out of commit order at " .. i) end
      if e.op == "insert" then inserted[e.id] = true end
      if e.op == "update" then assert.is_true(inserted[e.id], "update of " .. e.id .. " before its insert") end
    end
  end)

  it("gives every event to each of two consumers, and dropping one releases its rows", function()
    local path = fresh_db()
    setup(path)
    local p1 = track(reader(path, "one"))
    local p2 = track(reader(path, "two"))
    local ins = {}
    for i = 1, 100 do ins[i] = fmt("INSERT INTO items (k) VALUES (%d);", i) end
    cli(path, table.concat(ins, "\n"))
    assert.is_true(wait_events(p1, 100) and wait_events(p2, 100))
    p1:stop()
    local _, rows = consumers(path)
    assert.are.equal(2, #rows)
    assert.are.same({ "one", "two" }, { rows[1].name, rows[2].name })
    assert.are.same({ 0, 1 }, { rows[1].members, rows[2].members })
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", rows[1].last_seen)
    p2:stop()
    assert.are.same(ks(events(p1)), ks(events(p2)))
    assert.are.equal(100, #events(p1))
    -- "one" falls behind: 50 more rows; a live reader with a 0.05 s retention prunes what
    -- nobody holds, and "one" holds all 50
    ins = {}
    for i = 1, 50 do ins[i] = fmt("INSERT INTO items (k) VALUES (%d);", 100 + i) end
    local pr = track(reader(path, "two", nil, 0.05))
    cli(path, table.concat(ins, "\n"))
    assert.is_true(wait_events(pr, 50))
    local function logged() return tonumber(cli(path, "SELECT count(*) FROM sqlnotify_changes;"):match("%d+")) end
    H.sleep(0.5)
    assert.are.equal(50, logged())
    assert.are.equal(50, consumers(path).one.lag_events)
    local sqlnotify = require("sqlnotify")
    local admin = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, use_logger = false })
    assert.is_true(admin:drop_consumer("one"))
    assert.is_false(admin:drop_consumer("one"))
    admin:close()
    assert.is_nil(consumers(path).one)
    local deadline = H.now() + 30
    while logged() > 0 and H.now() < deadline do H.sleep(0.05) end
    assert.are.equal(0, logged())
    pr:stop()
  end)

  it("tells a consumer that was away past its retention which rows it missed", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "gone"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    p:stop()
    local pos = tonumber(cli(path, "SELECT position FROM sqlnotify_consumers WHERE name = 'gone';"):match("%d+"))
    cli(path, "UPDATE sqlnotify_consumers SET last_seen = last_seen - 8 * 86400 WHERE name = 'gone';\n"
      .. "INSERT INTO items (k) VALUES (2); INSERT INTO items (k) VALUES (3);")
    -- a live reader with a short retention prunes what nobody holds any more
    local pruner = track(reader(path, nil, nil, 0.05))
    local deadline = H.now() + 30
    while cli(path, "SELECT count(*) FROM sqlnotify_changes;") ~= "0\n" and H.now() < deadline do H.sleep(0.05) end
    pruner:stop()
    local p2 = track(reader(path, "gone"))
    assert.is_true(p2:wait_for(fmt('consumer "gone" was away longer than the change log of SQLite database "[^"]+" '
      .. "kept its rows: rows %d to %d %%(2 changes%%) were pruned before it read them and are not delivered",
      pos + 1, pos + 2), 20, "err"))
    cli(path, "INSERT INTO items (k) VALUES (4);")
    assert.is_true(wait_events(p2, 1))
    H.sleep(0.2)
    p2:stop()
    assert.are.same({ 4 }, ks(events(p2)))
  end)

  -- A consumer that registered, stopped, and was last seen secs ago.
  local function left_behind(path, name, secs)
    track(reader(path, name)):stop()
    cli(path, fmt("UPDATE sqlnotify_consumers SET last_seen = last_seen - %d WHERE name = '%s';", secs, name))
  end

  it("keeps a consumer's rows for its own retention, whatever the retention of the process that prunes", function()
    local path = fresh_db()
    setup(path)
    left_behind(path, "keep", 60)
    cli(path, "INSERT INTO items (k) VALUES (1); INSERT INTO items (k) VALUES (2); INSERT INTO items (k) VALUES (3);")
    -- another consumer, away after 30 s, in a process pruning every 50 ms
    local short = track(H.host([[
local sqlnotify = require("sqlnotify")
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1], consumer = "short", consumer_retention = 30,
  retention = 0.05 })
n:watch("items", "insert")
n:subscribe("items", "insert", function() end)
assert(n:start())
print("ready")
]], { path }))
    assert(short:wait_for("ready\n", 20), short:stderr())
    H.sleep(1)
    short:stop()
    assert.are.equal("3\n", cli(path, "SELECT count(*) FROM sqlnotify_changes WHERE seq > (SELECT position FROM"
      .. " sqlnotify_consumers WHERE name = 'keep');"))
    local keep = track(reader(path, "keep"))
    assert.is_true(wait_events(keep, 3), keep:stderr())
    keep:stop()
    assert.are.same({ 1, 2, 3 }, ks(events(keep)))
    assert.is_nil(keep:stderr():find("was away longer"))
  end)

  it("names, once, a consumer that stopped coming and so holds back the change log's rows", function()
    local path = fresh_db()
    setup(path)
    left_behind(path, "left", 7200)
    -- a short retention: housekeeping every 50 ms
    local p = track(reader(path, "here", nil, 0.05))
    assert.is_true(p:wait_for("consumers not seen for over 10 minutes still hold the change log's rows in"
      .. ' SQLite database "[^"]+": "left" %(last seen %d%d%d%d%-%d%d%-%d%dT%d%d:%d%dZ%); they keep every row'
      .. " written since until they return or consumer_retention %(604800 s%) runs out: n:drop_consumer%(name%)"
      .. " releases one that is gone for good", 20, "err"), p:stderr())
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    H.sleep(1) -- twenty housekeeping passes
    p:stop()
    local _, times = p:stderr():gsub("consumers not seen", "")
    assert.are.equal(1, times)
    assert.is_nil(p:stderr():find('"here" %(last seen'))
  end)

  it("keeps a second process with the same consumer on standby, which takes over from a killed holder", function()
    local path = fresh_db()
    setup(path)
    local p1 = track(reader(path, "group"))
    local p2 = track(reader(path, "group"))
    assert.is_true(p2:wait_for(fmt('consumer "group" is being read by another process %%(pid %s%%); this one stands by',
      p1.pid), 10, "err"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p1, 1))
    H.sleep(0.2)
    assert.are.same({}, events(p2))
    p1:kill("KILL")
    p1:wait()
    cli(path, "INSERT INTO items (k) VALUES (2);")
    assert.is_true(p2:wait_for(fmt('consumer "group": took over from the process that was reading it %%(pid %s, gone%%)',
      p1.pid), 20, "err"))
    assert.is_true(wait_events(p2, 1))
    H.sleep(0.2)
    p2:stop()
    assert.are.same({ 1 }, ks(events(p1)))
    assert.are.same({ 2 }, ks(events(p2))) -- 1 was handled and saved before the first died
  end)

  it("records a consumer dropped while its process reads it again, and goes on", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "busy"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    local sqlnotify = require("sqlnotify")
    local admin = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, use_logger = false })
    assert.is_true(admin:drop_consumer("busy"))
    admin:close()
    assert.is_true(p:wait_for('consumer "busy" was dropped while this process read it; recorded it again after row 1',
      20, "err"))
    assert.is_falsy(p:stderr():find("took it over", 1, true))
    cli(path, "INSERT INTO items (k) VALUES (2);")
    assert.is_true(wait_events(p, 2))
    local by = consumers(path)
    assert.are.equal(1, by.busy.members)
    p:stop()
    assert.are.same({ 1, 2 }, ks(events(p)))
  end)

  -- p delivered rows 1 and 2 of items: once position 2 is saved, kill -9, row 3 committed, a
  -- new reader of the consumer gets row 3 alone. Returns the new reader, stopped.
  local function saved_killed_again(path, name, p)
    assert.is_true(H.wait_until(function()
      local ok, pos = pcall(cli, path, "SELECT position FROM sqlnotify_consumers WHERE name = '" .. name .. "';")
      return ok and pos == "2\n"
    end, 10))
    p:kill("KILL")
    p:wait()
    cli(path, "INSERT INTO items (k) VALUES (3);")
    local p2 = track(reader(path, name))
    assert.is_true(wait_events(p2, 1))
    H.sleep(0.2)
    p2:stop()
    assert.are.same({ 1, 2 }, ks(events(p)))
    assert.are.same({ 3 }, ks(events(p2)))
    return p2
  end

  -- Every save of the position used to fail unsaid (its statement could not be prepared),
  -- delivery went on, and a kill -9 then lost what was committed after the last save: the
  -- consumer started "new" at the log's end.
  it("makes its table again when it is dropped under a running consumer, so a kill -9 then loses nothing", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "tabled"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    cli(path, "DROP TABLE sqlnotify_consumers;\nINSERT INTO items (k) VALUES (2);")
    assert.is_true(wait_events(p, 2))
    assert.is_true(p:wait_for('consumer "tabled" was dropped while this process read it; recorded it again after row %d',
      20, "err"))
    local p2 = saved_killed_again(path, "tabled", p)
    assert.is_falsy(p2:stderr():find("is new", 1, true))
  end)

  -- The reader reopened a replaced file but recorded nothing there: the same silent saves
  -- as above, and a kill -9 lost what was committed to the new file.
  it("records the consumer in a file that replaced its database, so a kill -9 then loses nothing", function()
    local path = fresh_db()
    cli(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);") -- no -wal left behind by mv
    local p = track(reader(path, "moved"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    cli(path .. ".new", "CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
    assert(H.sh("mv " .. q(path .. ".new") .. " " .. q(path)))
    assert.is_true(p:wait_for('the trigger for update on "main"."items" was missing or changed; re%-created it', 20, "err"))
    local _, news = p:stderr():gsub('consumer "moved" is new: it starts at the end', "")
    assert.are.equal(2, news) -- at its start, and in the new file
    cli(path, "INSERT INTO items (k) VALUES (2);")
    assert.is_true(wait_events(p, 2))
    local p2 = saved_killed_again(path, "moved", p)
    -- the new file's log is made past the cursor, so seq goes on
    assert.are.same({ 1, 2, 3 }, H.pluck(table.move(events(p2), 1, 1, 3, events(p)), "seq"))
  end)

  it("reads from the log's end when the consumer stands past it (a file restored from an older copy)", function()
    local path = fresh_db()
    setup(path)
    local p = track(reader(path, "ahead"))
    cli(path, "INSERT INTO items (k) VALUES (1);")
    assert.is_true(wait_events(p, 1))
    p:stop()
    cli(path, "UPDATE sqlnotify_consumers SET position = 1000 WHERE name = 'ahead';")
    p = track(reader(path, "ahead"))
    assert.is_true(p:wait_for('consumer "ahead" stands at row 1000, past the end of the change log of SQLite database '
      .. '"[^"]+" %(row 1%): the file was restored from an older copy; reading from the log\'s end', 20, "err"))
    cli(path, "INSERT INTO items (k) VALUES (2);")
    assert.is_true(wait_events(p, 1))
    H.sleep(0.2)
    p:stop()
    assert.are.same({ 2 }, ks(events(p)))
    assert.are.equal("2\n", cli(path, "SELECT position FROM sqlnotify_consumers WHERE name = 'ahead';"))
  end)

  -- The holder hands a page to its handlers; stopped in the middle (SIGSTOP) past its lease, it
  -- loses the consumer to the standby, which delivers the page and what follows. Resumed, it
  -- delivered the rest of its page too, without looking at its lease: one row's old values
  -- after the new holder had delivered later ones.
  it("delivers no more of a page once its lease was taken over during a pause (SIGSTOP)", function()
    local path = fresh_db()
    setup(path)
    local p1 = track(reader(path, "paused", nil, nil, 0.05))
    local p2 = track(reader(path, "paused"))
    assert.is_true(p2:wait_for("this one stands by", 10, "err"), p2:stderr())
    local sql = { "BEGIN;", "INSERT INTO items (id, k) VALUES (1, 1);" }
    for k = 2, 30 do sql[#sql + 1] = fmt("UPDATE items SET k = %d WHERE id = 1;", k) end
    sql[#sql + 1] = "COMMIT;"
    cli(path, table.concat(sql, "\n"))
    assert.is_true(wait_events(p1, 3), p1:stderr())
    p1:kill("STOP")
    H.sleep(0.1)
    local before = #events(p1)
    assert.is_true(before < 30)
    assert.is_true(p2:wait_for(fmt('consumer "paused": took over from the process that was reading it %%(pid %s, its '
      .. "lease ran out%%)", p1.pid), 30, "err"), p2:stderr())
    assert.is_true(wait_events(p2, 30), p2:stderr())
    cli(path, "UPDATE items SET k = 31 WHERE id = 1;")
    assert.is_true(wait_events(p2, 31), p2:stderr())
    p1:kill("CONT")
    assert.is_true(p1:wait_for('consumer "paused": another process took it over', 10, "err"), p1:stderr())
    H.sleep(1) -- the rest of its page would be out by now (20 events a second)
    p2:stop()
    p1:stop()
    local want = {}
    for k = 1, 31 do want[k] = k end
    assert.are.same(want, ks(events(p2)))
    assert.are.same({ table.unpack(want, 1, before) }, ks(events(p1)))
  end)

  describe("a watched table dropped and made again, or swapped in by renames", function()
    local function remade(path, consumer, cleanup)
      local p = track(H.host(REMADE, { path, consumer, cleanup }))
      assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
      return p
    end
    local WHEN = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ"
    local function gone_line(consumer, op)
      return fmt('consumer "%s": the trigger for %s on "main"%%."items" was gone %%(its table dropped and made again, '
        .. "or the trigger dropped%%): made it again; changes written to the table between %s and now were not "
        .. "captured\n", consumer, op, WHEN)
    end
    -- the log's lines saying so, and the three triggers back on items
    local function wait_remade(p, consumer)
      for _, op in ipairs { "insert", "update", "delete" } do
        assert.is_true(p:wait_for(gone_line(consumer, op), 20, "err"), p:stderr())
      end
    end
    local function triggers(path, tbl)
      return tonumber(cli(path, fmt("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '%s'"
        .. " AND sql LIKE '%%sqlnotify:%%';", tbl)):match("%d+"))
    end
    local function said(p, pattern)
      local _, times = p:stderr():gsub(pattern, "")
      return times
    end
    local WRITES = "INSERT INTO items (k) VALUES (2); INSERT INTO items (k) VALUES (3);\n"
      .. "UPDATE items SET k = 4 WHERE k = 3; DELETE FROM items WHERE k = 2;"

    it("makes its triggers again at once, so every later change of the new table is delivered", function()
      local path = fresh_db()
      setup(path)
      local p = remade(path, "rebuilt")
      cli(path, "INSERT INTO items (k) VALUES (1);")
      assert.is_true(wait_events(p, 1), p:stderr())
      cli(path, "DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
      wait_remade(p, "rebuilt")
      assert.are.equal(3, triggers(path, "items"))
      cli(path, WRITES)
      assert.is_true(wait_events(p, 5), p:stderr())
      H.sleep(0.3)
      p:stop()
      assert.are.same({
        { op = "insert", id = 1, k = 1, seq = 1 },
        { op = "insert", id = 1, k = 2, seq = 2 },
        { op = "insert", id = 2, k = 3, seq = 3 },
        { op = "update", id = 2, k = 4, seq = 4 },
        { op = "delete", id = 1, k = 2, seq = 5 },
      }, events(p))
      for _, op in ipairs { "insert", "update", "delete" } do assert.are.equal(1, said(p, gone_line("rebuilt", op))) end
      assert.is_nil(p:stderr():find("missing or changed", 1, true))
    end)

    it("makes them again on a copy renamed into the table's place, and not on the old one", function()
      local path = fresh_db()
      setup(path)
      local p = remade(path, "swapped")
      cli(path, "INSERT INTO items (k) VALUES (1);")
      assert.is_true(wait_events(p, 1), p:stderr())
      -- gh-ost's way: a copy, filled, then swapped in by two renames in one transaction (the
      -- old table takes its triggers along under its new name)
      cli(path, "BEGIN; CREATE TABLE items_new (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);\n"
        .. "INSERT INTO items_new SELECT id, k FROM items;\n"
        .. "ALTER TABLE items RENAME TO items_old; ALTER TABLE items_new RENAME TO items; COMMIT;")
      wait_remade(p, "swapped")
      assert.are.same({ 3, 0 }, { triggers(path, "items"), triggers(path, "items_old") })
      cli(path, WRITES .. "\nINSERT INTO items_old (k) VALUES (99); UPDATE items SET k = 5 WHERE id = 1;")
      assert.is_true(wait_events(p, 6), p:stderr())
      H.sleep(0.3)
      p:stop()
      assert.are.same({
        { op = "insert", id = 1, k = 1, seq = 1 },
        { op = "insert", id = 2, k = 2, seq = 2 },
        { op = "insert", id = 3, k = 3, seq = 3 },
        { op = "update", id = 3, k = 4, seq = 4 },
        { op = "delete", id = 2, k = 2, seq = 5 },
        { op = "update", id = 1, k = 5, seq = 6 },
      }, events(p))
      assert.is_nil(p:stderr():find("missing or changed", 1, true))
    end)

    it("makes each once when two processes' consumers of one capture both see the change", function()
      local path = fresh_db()
      setup(path)
      local a, b = remade(path, "left"), remade(path, "right")
      cli(path, "DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
      assert.is_true(H.wait_until(function() return triggers(path, "items") == 3 end, 20))
      H.sleep(0.5) -- the other one's look, too
      assert.are.equal(3, triggers(path, "items"))
      cli(path, WRITES)
      assert.is_true(wait_events(a, 4) and wait_events(b, 4), a:stderr() .. b:stderr())
      H.sleep(0.3)
      a:stop()
      b:stop()
      local want = { "insert 1 2", "insert 2 3", "update 2 4", "delete 1 2" }
      for _, p in ipairs { a, b } do
        local got = {}
        for i, e in ipairs(events(p)) do got[i] = fmt("%s %d %d", e.op, e.id, e.k) end
        assert.are.same(want, got)
      end
      -- each trigger made by one of them, said by that one; nothing failed
      for _, op in ipairs { "insert", "update", "delete" } do
        assert.are.equal(1, said(a, gone_line("left", op)) + said(b, gone_line("right", op)))
      end
      for _, p in ipairs { a, b } do assert.is_nil(p:stderr():find("cannot", 1, true), p:stderr()) end
    end)

    it("forgets them once n:cleanup() dropped them: neither that drop nor a table made again brings them back", function()
      local path = fresh_db()
      setup(path)
      local p = remade(path, "cleaned", "cleanup")
      H.sleep(1)
      assert.are.equal(0, triggers(path, "items"))
      cli(path, "DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);\n"
        .. "INSERT INTO items (k) VALUES (1);")
      H.sleep(1.5)
      assert.are.equal(0, triggers(path, "items"))
      p:stop()
      assert.are.same({}, events(p))
      assert.is_nil(p:stderr():find("was gone", 1, true))
    end)

    it("says once, without failing a write, that a new table without a column the trigger names gets none", function()
      local path = fresh_db()
      setup(path)
      local p = remade(path, "narrow")
      cli(path, "DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, j INTEGER);")
      local line = 'consumer "narrow": the trigger for insert on "main"%."items" was gone %(its table dropped and made '
        .. "again, or the trigger dropped%) and cannot be made again as it was: the table has no column \"k\" now; "
        .. "changes written to the table since " .. WHEN .. " are not captured until the next check %(verify_interval%) "
        .. "adapts the watch to the table\n"
      assert.is_true(p:wait_for(line, 20, "err"), p:stderr())
      -- writes go on (a trigger naming k would fail every one), and another schema change says nothing again
      cli(path, "INSERT INTO items (j) VALUES (1); CREATE TABLE other (x);")
      H.sleep(1.5)
      assert.are.equal(1, said(p, line))
      assert.are.equal(0, triggers(path, "items"))
      assert.is_false(p:exited())
      -- dropped and not made again: the check's, as before; nothing said here
      cli(path, "DROP TABLE items;")
      H.sleep(1.5)
      p:stop()
      assert.are.equal(1, said(p, line))
      assert.are.equal(0, said(p, "was gone %(its table dropped and made again, or the trigger dropped%): made it"))
    end)
  end)

  it("hands over to the standby when the holder stops cleanly", function()
    local path = fresh_db()
    setup(path)
    local p1 = track(reader(path, "pair"))
    local p2 = track(reader(path, "pair"))
    assert.is_true(p2:wait_for("this one stands by", 10, "err"))
    p1:stop()
    assert.is_true(p2:wait_for(fmt('consumer "pair": took over from the process that was reading it %%(pid %s, it stopped%%)',
      p1.pid), 20, "err"))
    cli(path, "INSERT INTO items (k) VALUES (7);")
    assert.is_true(wait_events(p2, 1))
    p2:stop()
    assert.are.same({ 7 }, ks(events(p2)))
  end)
end)
