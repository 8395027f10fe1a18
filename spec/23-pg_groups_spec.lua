-- PostgreSQL groups (issue 13): processes that open a notifier with one consumer name share
-- its shares, through the real host. Three members under a writer with one killed by kill -9;
-- a member cut off by a proxy that stops answering is fenced; a member with slow handlers keeps
-- its lease through a page; the settings' errors.
-- Every consumer here is named s23_* and dropped after its test; tables live in spec23.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local S = "spec23"
local fmt = string.format
local URL = H.pg_url
local DB = H.pg_url:match("/([^/?]+)$") or H.pg_url:match("/([^/?]+)%?")

-- A member: prints "e id v seq time" for each insert and update of the table. arg[5], when
-- given, is a shell command the handler runs once, on the event of row arg[6].
local MEMBER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, lease, cmd, at = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5], tonumber(arg[6])
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, lease = lease })
n:watch(tbl, "insert", { extra_columns = { "v" } })
n:watch(tbl, "update", { extra_columns = { "v" } })
local function show(ev)
  io.write(string.format("e %d %d %d %.6f\n", ev.id, ev.extra_columns.v, ev.seq, sqlnotify.now()))
  if cmd and ev.id == at then
    os.execute(cmd)
    cmd = nil
  end
end
n:subscribe(tbl, "insert", show)
n:subscribe(tbl, "update", show)
assert(n:start())
print("ready")
]]

local procs = {}

local function member(tbl, consumer, lease, url, cmd, at)
  local p = H.host(MEMBER, { url or URL, S .. "." .. tbl, consumer, tostring(lease), cmd, at and tostring(at) })
  procs[#procs + 1] = p
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  return p
end

local function events(p)
  local out = {}
  for id, v, seq, t in p:stdout():gmatch("e (%d+) (%d+) (%d+) ([%d.]+)\n") do
    out[#out + 1] = { id = tonumber(id), v = tonumber(v), seq = tonumber(seq), t = tonumber(t) }
  end
  return out
end

local admin

local function consumer(name)
  for _, c in ipairs(assert(admin:consumers())) do
    if c.name == name then return c end
  end
end

-- The shares member process p holds, by the consumer's list (nil: it holds none).
local function held(name, p)
  local c = consumer(name)
  for m, shares in pairs(c and c.holders or {}) do
    if m:find(":" .. p.pid .. ":", 1, true) then return shares end
  end
end

local function count(list) return list and #list or 0 end

describe("PostgreSQL groups", function()
  setup(function() H.fresh_schema(S) end)
  teardown(function() H.drop_schema(S) end)
  before_each(function() admin = H.pg_notifier() end)
  after_each(function()
    H.reap(procs, admin, "s23_")
    admin:close()
  end)

  it("three members share 3,000 changes to 300 rows; one killed with kill -9 halfway loses its shares to "
    .. "the others within the lease, and every change arrives, each row's in commit order", function()
    H.psql(fmt("CREATE TABLE %s.g (id int PRIMARY KEY, v int NOT NULL)", S))
    local LEASE = 3
    local a = member("g", "s23_group", LEASE)
    assert.is_true(H.run_until(function() return count(held("s23_group", a)) == 16 end, 10))
    local b = member("g", "s23_group", LEASE)
    local c = member("g", "s23_group", LEASE)
    -- balanced: 16 shares over three members, none idle, within a lease period or so
    assert.is_true(H.run_until(function()
      local na, nb, nc = count(held("s23_group", a)), count(held("s23_group", b)), count(held("s23_group", c))
      return na + nb + nc == 16 and na >= 4 and nb >= 4 and nc >= 4
    end, 3 * LEASE), "not balanced: " .. require("cjson").encode(consumer("s23_group").holders))
    assert.are.equal(3, consumer("s23_group").members)
    -- the writer: 300 inserts (v = 0), then nine rounds updating every row (v = 1..9)
    local lines = {}
    for k = 1, 300 do lines[#lines + 1] = fmt("INSERT INTO %s.g VALUES (%d, 0);", S, k) end
    for v = 1, 9 do
      lines[#lines + 1] = "SELECT pg_sleep(0.4);"
      for k = 1, 300 do lines[#lines + 1] = fmt("UPDATE %s.g SET v = %d WHERE id = %d;", S, v, k) end
    end
    local file, done = H.tmpfile(".sql"), H.tmpfile(".done")
    H.spit(file, table.concat(lines, "\n"))
    H.sh(fmt("(%s -X -q %s -f %s >/dev/null 2>&1; echo $? >%s) &", H.psql_bin, H.shell_quote(URL),
      H.shell_quote(file), H.shell_quote(done)))
    local function total() return #events(a) + #events(b) + #events(c) end
    assert.is_true(H.run_until(function() return total() >= 1500 end, 60))
    local shares_a = held("s23_group", a)
    assert.is_true(count(shares_a) > 0)
    a:kill("KILL")
    local killed_at = H.now()
    a:wait()
    -- the killed member's shares move to the other two
    assert.is_true(H.run_until(function()
      return held("s23_group", a) == nil and count(held("s23_group", b)) + count(held("s23_group", c)) == 16
    end, 3 * LEASE))
    local took = H.now() - killed_at
    assert.is_true(took <= LEASE + LEASE / 3 + 1.5, fmt("takeover after %.1f s, lease %d s", took, LEASE))
    local deadline = H.now() + 60
    while H.slurp(done) == "" and H.now() < deadline do H.sleep(0.05) end
    assert.are.equal("0\n", H.slurp(done))
    -- every change at least once, across the group
    local function missing()
      local seen, n = {}, 0
      for _, p in ipairs { a, b, c } do
        for _, e in ipairs(events(p)) do seen[e.id * 100 + e.v] = true end
      end
      for k = 1, 300 do
        for v = 0, 9 do if not seen[k * 100 + v] then n = n + 1 end end
      end
      return n
    end
    assert.is_true(H.run_until(function() return missing() == 0 end, 60), missing() .. " changes missing")
    assert.is_true(H.run_until(function() return consumer("s23_group").lag_events == 0 end, 20))
    b:stop()
    c:stop()
    -- each row's changes in commit order on the merged output (by time of handling): a value
    -- seen for the first time is above every value of that row seen before
    local all, dup = {}, 0
    for i, p in ipairs { a, b, c } do
      for j, e in ipairs(events(p)) do
        e.who, e.n = i, j
        all[#all + 1] = e
      end
    end
    table.sort(all, function(x, y)
      if x.t ~= y.t then return x.t < y.t end
      if x.who ~= y.who then return x.who < y.who end
      return x.n < y.n
    end)
    local top, seen = {}, {}
    for _, e in ipairs(all) do
      local key = e.id * 100 + e.v
      if seen[key] then
        dup = dup + 1
      else
        seen[key] = true
        assert.is_true(e.v > (top[e.id] or -1), fmt("row %d: value %d after %d", e.id, e.v, top[e.id] or -1))
        top[e.id] = e.v
      end
    end
    -- and within each member, each row's values only go up
    for i, p in ipairs { a, b, c } do
      local last = {}
      for _, e in ipairs(events(p)) do
        assert.is_true(e.v > (last[e.id] or -1), fmt("member %d, row %d: %d after %d", i, e.id, e.v, last[e.id] or -1))
        last[e.id] = e.v
      end
    end
    local na, nb, nc = #events(a), #events(b), #events(c)
    print(fmt("\n  member a (killed) %d events, b %d, c %d; %d twice; takeover after %.1f s (lease %d s)",
      na, nb, nc, dup, took, LEASE))
    assert.is_true(dup <= 500, "duplicates beyond the killed member's page in flight")
    -- the survivors both did a share of the work
    assert.is_true(nb >= 300 and nc >= 300, fmt("b %d, c %d", nb, nc))
    -- one survivor or the other (whichever renewed first) says whose shares it took
    local function took_from_a(p)
      return p:stderr():match('consumer "s23_group": member [^\n]*:' .. p.pid .. ':%x+ took shares? [%d, ]+: its '
        .. 'member [^\n]*:' .. a.pid .. ':%x+ is gone')
    end
    assert.is_truthy(took_from_a(b) or took_from_a(c), b:stderr() .. c:stderr())
  end)

  it("fences a member cut off by a proxy that stops answering: its late acknowledgement is refused, and it "
    .. "says it lost its shares", function()
    H.psql(fmt("CREATE TABLE %s.f (id int PRIMARY KEY, v int NOT NULL)", S))
    local p = H.pg_proxy(DB)
    finally(p.stop)
    local LEASE = 2
    -- f reads through the proxy and stalls it from its handler of row 6: the ack of that page
    -- is left unwritten
    local f = member("f", "s23_fence", LEASE, fmt("postgresql://root@127.0.0.1:%d/%s?connect_timeout=1", p.port, DB),
      p.command("STOP"), 6)
    assert.is_true(H.run_until(function() return count(held("s23_fence", f)) == 16 end, 10))
    for k = 1, 5 do H.psql(fmt("INSERT INTO %s.f VALUES (%d, 0)", S, k)) end
    assert.is_true(f:wait_count(events, 5, 20))
    H.psql(fmt("INSERT INTO %s.f VALUES (6, 0)", S))
    assert.is_true(f:wait_count(events, 6, 20))
    -- g, direct, takes every share once f's lease ran out
    local g = member("f", "s23_fence", LEASE)
    assert.is_true(H.run_until(function() return count(held("s23_fence", g)) == 16 end, 4 * LEASE))
    assert.is_true(f:wait_for("lost shares 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15: no lease renewal",
      4 * LEASE, "err"), f:stderr())
    -- g delivers row 6 again (f's unacknowledged page), and what comes next
    H.psql(fmt("INSERT INTO %s.f VALUES (7, 0)", S))
    assert.is_true(g:wait_count(events, 2, 20))
    assert.are.same({ 6, 7 }, H.pluck(events(g), "id"))
    -- f answers again: its acknowledgement comes late and is refused
    p.resume()
    assert.is_true(f:wait_for("its acknowledgement was refused", 20, "err"), f:stderr())
    assert.matches('consumer "s23_fence": member [^\n]*:' .. f.pid .. ':%x+ lost shares [%d, ]+: its '
      .. 'acknowledgement was refused, another member holds them now and delivers their last page again',
      f:stderr())
    -- f handled nothing twice and nothing of g's
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, H.pluck(events(f), "id"))
    -- the group goes on: two members again, rows go to one of them, each once
    assert.is_true(H.run_until(function()
      return count(held("s23_fence", f)) + count(held("s23_fence", g)) == 16 and count(held("s23_fence", f)) > 0
    end, 4 * LEASE))
    for k = 8, 40 do H.psql(fmt("INSERT INTO %s.f VALUES (%d, 0)", S, k)) end
    assert.is_true(H.run_until(function() return #events(f) + #events(g) >= 6 + 2 + 33 end, 20))
    local ids = {}
    for _, e in ipairs(events(f)) do if e.id >= 8 then ids[#ids + 1] = e.id end end
    for _, e in ipairs(events(g)) do if e.id >= 8 then ids[#ids + 1] = e.id end end
    table.sort(ids)
    local want = {}
    for k = 8, 40 do want[#want + 1] = k end
    assert.are.same(want, ids)
    f:stop()
    g:stop()
  end)

  it("shows members and their shares in n:consumers(); a clean stop hands the shares over at once", function()
    H.psql(fmt("CREATE TABLE %s.c (id int PRIMARY KEY, v int NOT NULL)", S))
    local LEASE = 6 -- renewed every 2 s: the handover below comes well before a lease runs out
    local a = member("c", "s23_show", LEASE)
    assert.is_true(H.run_until(function() return count(held("s23_show", a)) == 16 end, 10))
    local c = consumer("s23_show")
    assert.are.equal(16, c.shares)
    assert.are.equal(1, c.members)
    local b = member("c", "s23_show", LEASE)
    assert.is_true(H.run_until(function() return count(held("s23_show", b)) == 8 end, 20))
    assert.are.same({ 0, 1, 2, 3, 4, 5, 6, 7 }, held("s23_show", a))
    assert.are.same({ 8, 9, 10, 11, 12, 13, 14, 15 }, held("s23_show", b))
    assert.matches("member [^\n]*:" .. a.pid .. ":%x+ gave up shares 8, 9, 10, 11, 12, 13, 14, 15: to balance "
      .. "the group", a:stderr())
    assert.matches("member [^\n]*:" .. b.pid .. ":%x+ took shares 8, 9, 10, 11, 12, 13, 14, 15: free", b:stderr())
    -- a stops: b holds all 16 at its next renewal (a third of the lease), not after the lease
    a:stop()
    assert.is_nil(held("s23_show", a))
    assert.is_true(H.run_until(function() return count(held("s23_show", b)) == 16 end, LEASE / 3 + 2))
    -- dropped under a running member: it says so and starts again at the end
    assert.is_true(admin:drop_consumer("s23_show"))
    assert.is_true(b:wait_for('consumer "s23_show" was dropped while member [^\n]*:' .. b.pid .. ":%x+ was reading "
      .. "it; it starts again at the end of the journal", 10, "err"), b:stderr())
    assert.is_true(H.run_until(function() return count(held("s23_show", b)) == 16 end, 10))
    H.psql(fmt("INSERT INTO %s.c VALUES (1, 1)", S))
    assert.is_true(b:wait_count(events, 1, 20))
    assert.are.same({ 1 }, H.pluck(events(b), "id"))
    b:stop()
    assert.are.equal(0, consumer("s23_show").members)
  end)

  -- journal 12: a member reads only while its channels include every other live member's
  local TABLES = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = arg[2], lease = 1.5 })
for tbl in arg[3]:gmatch("[^,]+") do
  n:watch(tbl, "insert")
  n:subscribe(tbl, "insert", function(ev) io.write(string.format("e %s %d\n", ev.table, ev.id)) end)
end
assert(n:start())
print("ready")
]]

  local function tables_member(consumer, list)
    local p = H.host(TABLES, { URL, consumer, list })
    procs[#procs + 1] = p
    assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
    return p
  end

  local function got(p)
    local out = {}
    for t, id in p:stdout():gmatch("e (%S+) (%d+)\n") do out[#out + 1] = t .. " " .. id end
    return out
  end

  local function rows(tbl, from, to)
    local out, sql = {}, {}
    for k = from, to do
      out[#out + 1] = tbl .. " " .. k
      sql[#sql + 1] = fmt("INSERT INTO %s.%s VALUES (%d);", S, tbl, k)
    end
    H.psql(table.concat(sql, "\n"))
    return out
  end

  local function waits_line(consumer, p, other, tbl)
    return fmt('consumer "%s": member [^ ]+:%d:[^ ]+ reads nothing while member [^ ]+:%d:[^ ]+ watches "%s", '
      .. "which it does not: the members of a consumer must watch the same tables and events %%(give each script its own "
      .. "consumer name%%); it reads again when that member stops or watches no more than this one",
      consumer, p.pid, other.pid, tbl:gsub("%p", "%%%0"))
  end

  local function said(p, pattern)
    local _, k = p:stderr():gsub(pattern, "")
    return k
  end

  it("holds members watching different tables to nothing until one stops, so neither passes the other's rows",
    function()
    H.psql(fmt("CREATE TABLE %s.ta (id int PRIMARY KEY); CREATE TABLE %s.tb (id int PRIMARY KEY)", S, S))
    local a = tables_member("s23_tables", S .. ".ta")
    local first = rows("ta", 1, 3)
    assert.is_true(H.run_until(function() return #got(a) == 3 end, 10))
    local b = tables_member("s23_tables", S .. ".tb")
    local wa, wb = waits_line("s23_tables", a, b, "sqlnotify_spec23_tb_insert"), waits_line("s23_tables", b, a, "sqlnotify_spec23_ta_insert")
    assert.is_true(H.run_until(function() return said(a, wa) == 1 and said(b, wb) == 1 end, 10),
      a:stderr() .. b:stderr())
    assert.is_true(H.run_until(function() return held("s23_tables", a) == nil and held("s23_tables", b) == nil end, 5))
    -- written while both wait: nobody reads them, nobody passes them
    local later_a = rows("ta", 4, 7)
    rows("tb", 1, 4)
    H.sleep(2)
    assert.are.same(first, got(a))
    assert.are.same({}, got(b))
    b:kill("TERM")
    b:wait()
    assert.is_true(H.run_until(function() return #got(a) == 7 end, 10), a:stderr())
    for _, r in ipairs(later_a) do first[#first + 1] = r end
    assert.are.same(first, got(a))
    assert.are.equal(1, said(a, 'consumer "s23_tables": member [^ ]+:' .. a.pid .. ":[^ ]+ reads again: no member "
      .. "watches a channel it does not"))
    assert.are.equal(1, said(a, wa))
  end)

  it("moves the work to a new member that watches one more table, and leaves it with the old ones while the "
    .. "new ones watch fewer", function()
    H.psql(fmt("CREATE TABLE %s.tc (id int PRIMARY KEY); CREATE TABLE %s.td (id int PRIMARY KEY)", S, S))
    local old = tables_member("s23_deploy", S .. ".tc")
    local before = rows("tc", 1, 2)
    assert.is_true(H.run_until(function() return #got(old) == 2 end, 10))
    local new = tables_member("s23_deploy", S .. ".tc," .. S .. ".td")
    local wold = waits_line("s23_deploy", old, new, "sqlnotify_spec23_td_insert")
    assert.is_true(H.run_until(function()
      return said(old, wold) == 1 and count(held("s23_deploy", new)) == 16
    end, 10), old:stderr())
    local want = rows("tc", 3, 7)
    for _, r in ipairs(rows("td", 1, 5)) do want[#want + 1] = r end
    assert.is_true(H.run_until(function() return #got(new) == 10 end, 10), new:stderr())
    table.sort(want)
    local have = got(new)
    table.sort(have)
    assert.are.same(want, have)
    assert.are.same(before, got(old))
    -- the other way round: a member that watches fewer tables than the one reading waits
    local fewer = tables_member("s23_deploy", S .. ".tc")
    assert.is_true(H.run_until(function()
      return said(fewer, waits_line("s23_deploy", fewer, new, "sqlnotify_spec23_td_insert")) == 1
    end, 10), fewer:stderr())
    local more = rows("td", 6, 8)
    assert.is_true(H.run_until(function() return #got(new) == 13 end, 10))
    H.sleep(1)
    assert.are.same({}, got(fewer))
    assert.are.same(more, { table.unpack(got(new), 11) })
    assert.are.equal(16, count(held("s23_deploy", new)))
  end)

  it("keeps its lease through a page of slow handlers, so no other member takes a row's later changes first",
    function()
    H.psql(fmt("CREATE TABLE %s.slow (id int PRIMARY KEY, v int NOT NULL)", S))
    -- one share: whoever holds it reads every row; a handler takes 0.4 s, the lease is 1.5 s
    local SLOW = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s23_slow", shares = 1, lease = 1.5 })
n:watch("spec23.slow", "update", { extra_columns = { "v" } })
n:subscribe("spec23.slow", "update", function(ev)
  if arg[2] == "slow" then os.execute("sleep 0.4") end
  io.write(string.format("e %d %d %d %.6f\n", ev.id, ev.extra_columns.v, ev.seq, sqlnotify.now()))
end)
assert(n:start())
print("ready")
]]
    local a = H.host(SLOW, { URL, "slow" })
    procs[#procs + 1] = a
    assert(a:wait_for("ready\n", 20), a:stderr())
    assert.is_true(H.run_until(function() return count(held("s23_slow", a)) == 1 end, 20))
    local b = H.host(SLOW, { URL, "fast" })
    procs[#procs + 1] = b
    assert(b:wait_for("ready\n", 20), b:stderr())
    H.psql(fmt("INSERT INTO %s.slow VALUES (1, 0)", S))
    H.psql(fmt("UPDATE %s.slow SET v = 1; UPDATE %s.slow SET v = 2; UPDATE %s.slow SET v = 3; UPDATE %s.slow SET v = 4;"
      .. " UPDATE %s.slow SET v = 5; UPDATE %s.slow SET v = 6; UPDATE %s.slow SET v = 7; UPDATE %s.slow SET v = 8;",
      S, S, S, S, S, S, S, S))
    assert.is_true(H.run_until(function() return #events(a) + #events(b) >= 8 end, 30), a:stderr() .. b:stderr())
    H.sleep(1)
    a:stop()
    b:stop()
    local all = {}
    for _, e in ipairs(events(a)) do all[#all + 1] = e end
    for _, e in ipairs(events(b)) do all[#all + 1] = e end
    table.sort(all, function(x, y) return x.t < y.t end)
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, H.pluck(all, "v"))
    assert.are.equal(8, #events(a))
    assert.is_nil(a:stderr():find("lost share"), a:stderr())
  end)

  it("refuses bad settings with a clear message", function()
    local function err_of(opts)
      local ok, e = pcall(sqlnotify.notifier, opts)
      assert.is_false(ok)
      return e
    end
    assert.matches("sqlnotify: shares must be a whole number from 1 to 1024",
      err_of { url = URL, consumer = "s23_x", shares = 0 })
    assert.matches("sqlnotify: lease must be a number of seconds from 0.5 to 3600",
      err_of { url = URL, consumer = "s23_x", lease = 0.1 })
    assert.matches("sqlnotify: shares applies to a consumer: set consumer too", err_of { url = URL, shares = 4 })
    local path = H.fresh_sqlite("s23")
    assert.matches("sqlnotify: shares and lease apply to PostgreSQL consumers; on sqlite a second process with "
      .. "the same consumer waits as a standby", err_of { url = "sqlite:///" .. path .. "?mode=rwc", consumer = "x", lease = 5 })
    -- the share count is the consumer's own: another one is refused until it is drained
    H.psql(fmt("CREATE TABLE IF NOT EXISTS %s.c (id int PRIMARY KEY, v int NOT NULL)", S))
    local n = assert(H.pg_notifier { consumer = "s23_count", shares = 4 })
    n:watch(S .. ".c", "insert")
    n:subscribe(S .. ".c", "insert", function() end)
    assert(n:start())
    n:stop()
    n:close()
    assert.are.equal(4, consumer("s23_count").shares)
    local m = assert(H.pg_notifier { consumer = "s23_count", shares = 8 })
    m:watch(S .. ".c", "insert")
    m:subscribe(S .. ".c", "insert", function() end)
    local ok, e = m:start()
    assert.is_nil(ok)
    assert.are.equal('sqlnotify: consumer "s23_count" has 4 shares, not 8: the number changes only by draining '
      .. '(stop its writers, let it catch up, n:drop_consumer("s23_count"), then start it with shares = 8)', e)
    m:close()
  end)
end)
