-- PostgreSQL: h:hold and h:ack on a durable consumer, the runtime's way to let handlers
-- finish after deliver returned (the cases of 29-hold_mysql_spec.lua, and a group's). The
-- notifier's dispatch is replaced on the instance, so the tests drive hold and ack as the
-- scheduler does: hold from inside deliver, ack and release later from timers. Held: nothing
-- more is fetched, acks are written as they come, a lost connection or a stop keeps them, the
-- shares of the events in flight stay the member's; released: what was not acked comes
-- again. Then the real host killed with kill -9 while held. Tables live in spec29p, consumers
-- are named s29p_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local S = "spec29p"
local fmt = string.format
local sql = H.psql

local function url_with(url, param)
  return url .. (url:find("?", 1, true) and "&" or "?") .. param
end

local function fresh(tbl)
  sql(fmt("DROP TABLE IF EXISTS %s.%s; CREATE TABLE %s.%s (id bigserial PRIMARY KEY, k int NOT NULL);",
    S, tbl, S, tbl))
end

local function insert(tbl, from, to)
  sql(fmt("INSERT INTO %s.%s (k) SELECT g FROM generate_series(%d, %d) g ORDER BY g", S, tbl, from, to))
end

-- The furthest position a consumer's shares hold (what a restart or another member reads
-- from): an ack moves every share of the page's group to the acked journal id.
local function saved_pos(name)
  return tonumber(sql(fmt("SELECT COALESCE(max(pos), 0) FROM sqlnotify.shares WHERE consumer = '%s'", name))
    :match("%d+"))
end

-- Running the loop meanwhile (the reader writes from it).
local function wait_pos(name, want, timeout)
  H.run_until(function() return saved_pos(name) == want end, timeout or 5)
  return saved_pos(name)
end

-- A notifier on tbl whose dispatch records every event ({id =, seq =} in s.got) and, while
-- s.holding, holds the link (once, as the runtime does) and hands back none of them (they
-- stay in flight); otherwise it hands back all of them. s.said: what each hold(true) returned.
local function recorder(tbl, opts)
  local s = { got = {}, said = {}, holding = true }
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  s.n = H.pg_notifier(opts)
  s.n:watch(S .. "." .. tbl, "insert")
  s.n._dispatch = function(self, batch, cnt, ts, seqs)
    for i = 1, cnt do
      local w = self._by_channel[batch[2 * i - 1]]
      local ev = w and self:_event(w, w.channel, batch[2 * i], ts)
      if ev then s.got[#s.got + 1] = { id = ev.id, seq = seqs and seqs[i] } end
    end
    if not s.holding then return cnt end
    if not s.held then
      s.held = self._h:hold(true)
      s.said[#s.said + 1] = s.held
    end
    return 0
  end
  assert(s.n:start())
  return s
end

local function release(s)
  s.holding, s.held = false, false
  return s.n._h:hold(false)
end

-- A consumer's lag, through notifier admin, once it is 0 (or after timeout seconds): the journal rows of its tables
-- its cursors have not passed.
local function wait_lag(admin, name, timeout)
  local function lag()
    for _, c in ipairs(assert(admin:consumers())) do
      if c.name == name then return c.lag_events end
    end
  end
  H.run_until(function() return lag() == 0 end, timeout or 5)
  return lag()
end

local function ids(list) return H.pluck(list, "id") end
local function seqs(list) return H.pluck(list, "seq") end
local function slice(list, i, j) return table.move(list, i, j, 1, {}) end

describe("h:hold on a PostgreSQL durable consumer", function()
  local made, admin = {}, nil
  setup(function() H.fresh_schema(S) end)
  teardown(function() H.drop_schema(S) end)
  before_each(function() admin = H.pg_notifier() end)
  after_each(function()
    for _, n in ipairs(made) do n:close() end
    made = {}
    for _, c in ipairs(assert(admin:consumers())) do
      if c.name:find("^s29p_") then admin:drop_consumer(c.name) end
    end
    admin:close()
  end)
  local function track(s)
    made[#made + 1] = s.n
    return s
  end

  it("delivers nothing more while held, writes each ack as it comes, and reads on when released", function()
    fresh("acks")
    local s = track(recorder("acks", { consumer = "s29p_acks" }))
    insert("acks", 1, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    assert.are.same({ true }, s.said)
    local first = seqs(s.got)
    insert("acks", 4, 5) -- written while held: not read until the release
    local positions = {}
    for i = 1, 3 do -- acked one by one from timers; the position each ack wrote
      sqlnotify.after(0.3 * i, function() s.n._h:ack(first[i]) end)
      sqlnotify.after(0.3 * i + 0.2, function() positions[i] = saved_pos("s29p_acks") end)
    end
    H.run_for(1.2)
    assert.are.same({ 1, 2, 3 }, ids(s.got)) -- the ticks while held fetch nothing
    assert.are.same(first, positions)
    assert.is_true(release(s))
    assert.is_true(H.run_until(function() return #s.got >= 5 end))
    H.run_for(0.3)
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(s.got)) -- each once, in order
    assert.is_true(s.got[4].seq > first[3] and s.got[5].seq > s.got[4].seq)
  end)

  it("delivers again, in order, exactly the events not acked when it was released", function()
    fresh("redo")
    local s = track(recorder("redo", { consumer = "s29p_redo" }))
    insert("redo", 1, 4)
    assert.is_true(H.run_until(function() return #s.got == 4 end))
    local first = seqs(s.got)
    sqlnotify.after(0.1, function() s.n._h:ack(first[1]) end)
    sqlnotify.after(0.3, function() release(s) end)
    assert.is_true(H.run_until(function() return #s.got >= 7 end))
    H.run_for(0.5)
    assert.are.same({ 1, 2, 3, 4, 2, 3, 4 }, ids(s.got))
    assert.are.same(slice(first, 2, 4), slice(seqs(s.got), 5, 7))
    assert.are.same({ true }, s.said)
    assert.are.equal(0, wait_lag(admin, "s29p_redo")) -- and the redelivered ones were acked
    assert.are.same({ 1, 2, 3, 4, 2, 3, 4 }, ids(s.got))
  end)

  it("keeps its acks and fetches nothing across a lost connection while held", function()
    fresh("lost")
    local app = "s29p_lost_" .. math.random(1e9)
    local s = track(recorder("lost", { consumer = "s29p_lost", url = url_with(H.pg_url, "application_name=" .. app) }))
    local back = 0
    s.n:on("reconnect", function() back = back + 1 end)
    insert("lost", 1, 4)
    assert.is_true(H.run_until(function() return #s.got == 4 end))
    local first = seqs(s.got)
    s.n._h:ack(first[1])
    assert.are.equal(first[1], wait_pos("s29p_lost", first[1]))
    local killed = sql(fmt("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'"
      .. " AND (query LIKE '%%sqlnotify.lease(%%' OR query LIKE '%%sqlnotify.fetch%%' OR query LIKE '%%LISTEN%%')", app))
    assert.are.equal("1", killed:match("%d+")) -- the reader's connection, and only it
    insert("lost", 5, 5)
    s.n._h:ack(first[2]) -- while the reader is away
    assert.is_true(H.run_until(function() return back > 0 end))
    H.run_for(0.5)
    assert.are.same({ 1, 2, 3, 4 }, ids(s.got))
    assert.are.equal(first[2], wait_pos("s29p_lost", first[2])) -- the ack made while away was not lost
    release(s)
    assert.is_true(H.run_until(function() return #s.got >= 7 end))
    H.run_for(0.3)
    assert.are.same({ 1, 2, 3, 4, 3, 4, 5 }, ids(s.got))
  end)

  it("writes the last ack when stopped while held; the next start delivers the rest", function()
    fresh("stop")
    local s = track(recorder("stop", { consumer = "s29p_stop" }))
    insert("stop", 1, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    local first = seqs(s.got)
    sqlnotify.after(0.01, function()
      s.n._h:ack(first[2])
      s.n:stop() -- at once: the stop writes it, not the next tick
    end)
    H.run_for(0.2)
    assert.are.equal(first[2], saved_pos("s29p_stop"))
    local s2 = track(recorder("stop", { consumer = "s29p_stop" }))
    s2.holding = false
    assert.is_true(H.run_until(function() return #s2.got >= 1 end))
    H.run_for(0.3)
    assert.are.same({ 3 }, ids(s2.got))
    assert.are.same({ first[3] }, seqs(s2.got))
  end)

  it("answers false in live mode, where there is nothing to hold, and delivery goes on", function()
    fresh("live")
    local s = track(recorder("live", {}))
    s.n._dispatch = (function(inner)
      return function(self, batch, cnt, ts, seqs_)
        inner(self, batch, cnt, ts, seqs_)
        return cnt
      end
    end)(s.n._dispatch)
    insert("live", 1, 1)
    assert.is_true(H.run_until(function() return #s.got == 1 end))
    insert("live", 2, 2)
    assert.is_true(H.run_until(function() return #s.got == 2 end))
    H.run_for(0.2)
    assert.are.same({ 1, 2 }, ids(s.got))
    assert.are.same({ false, false }, s.said)
  end)

  it("keeps the shares of the events in flight through a renewal when a second member joins", function()
    fresh("group")
    local opts = function() return { consumer = "s29p_group", shares = 2, lease = 1.5 } end
    local a = track(recorder("group", opts()))
    insert("group", 1, 8)
    assert.is_true(H.run_until(function() return #a.got == 8 end))
    local first = seqs(a.got)
    local b = track(recorder("group", opts()))
    b.holding = false
    insert("group", 9, 12) -- written while a is held
    H.run_for(2.5) -- renewals every 0.5 s: without the shares kept, a gives one up to b
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, ids(a.got))
    assert.are.same({}, ids(b.got)) -- b took nothing that was in flight
    local c
    for _, row in ipairs(assert(admin:consumers())) do
      if row.name == "s29p_group" then c = row end
    end
    local nmembers, held = 0, nil
    for _, shares in pairs(c.holders or {}) do
      nmembers = nmembers + 1
      held = shares
    end
    assert.are.equal(1, nmembers) -- a, with both shares
    assert.are.same({ 0, 1 }, held)
    a.n._h:ack(first[2])
    H.run_for(0.2)
    local n = #a.got
    release(a)
    -- then a gives one share up; between them, what was not acked comes once, and what came
    -- while held
    assert.is_true(H.run_until(function() return #a.got - n + #b.got >= 10 end, 10))
    H.run_for(1)
    local again = {}
    for i = n + 1, #a.got do again[#again + 1] = a.got[i] end
    for _, e in ipairs(b.got) do again[#again + 1] = e end
    table.sort(again, function(x, y) return x.id < y.id end)
    assert.are.same({ 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, ids(again))
    assert.are.same(slice(first, 3, 8), slice(seqs(again), 1, 6))
    for _, list in ipairs({ slice(a.got, n + 1, #a.got), b.got }) do -- each member's in journal order
      for i = 2, #list do assert.is_true(list[i].seq > list[i - 1].seq) end
    end
  end)
end)

-- A host script: prints "got id seq" for each event; with acks > 0 it holds every batch and
-- acks its first `acks` events one by one from timers ("acked seq"), else hands them back.
local SCRIPT = [=[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, acks = arg[1], arg[2], arg[3], tonumber(arg[4])
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer })
n:watch(tbl, "insert")
local held, given = false, 0
n._dispatch = function(self, batch, cnt, ts, seqs)
  for i = 1, cnt do
    local w = self._by_channel[batch[2 * i - 1]]
    local ev = self:_event(w, w.channel, batch[2 * i], ts)
    print(string.format("got %d %d", ev.id, seqs[i]))
  end
  if acks == 0 then return cnt end
  if not held then
    held = self._h:hold(true)
    print("held " .. tostring(held))
  end
  for i = 1, cnt do
    if given >= acks then break end
    given = given + 1
    local seq = seqs[i]
    sqlnotify.after(0.1 * given, function() self._h:ack(seq) print("acked " .. seq) end)
  end
  return 0
end
assert(n:start())
print("ready")
]=]

describe("the host killed with kill -9 while held", function()
  local procs = {}
  setup(function() H.fresh_schema(S) end)
  teardown(function() H.drop_schema(S) end)
  after_each(function()
    local admin = H.pg_notifier()
    H.reap(procs, admin, "s29p_")
    admin:close()
  end)

  local function host(acks)
    local p = H.host(SCRIPT, { H.pg_url, S .. ".kill", "s29p_kill", tostring(acks) })
    procs[#procs + 1] = p
    assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
    return p
  end
  local function got(p)
    local out = {}
    for id, seq in p:stdout():gmatch("got (%d+) (%d+)\n") do out[#out + 1] = { id = tonumber(id), seq = tonumber(seq) } end
    return out
  end

  it("has the restart deliver the events not acked, in order, and none of those acked", function()
    fresh("kill")
    local p1 = host(2)
    insert("kill", 1, 5)
    assert.is_true(p1:wait_for("acked %d+\nacked %d+\n", 10), p1:stderr())
    local first = seqs(got(p1))
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(got(p1)))
    assert.is_truthy(p1:stdout():find("held true\n", 1, true))
    assert.are.equal(first[2], wait_pos("s29p_kill", first[2])) -- written while held
    insert("kill", 6, 7)
    H.sleep(0.5)
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(got(p1))) -- nothing read while held
    p1:kill("KILL")
    p1:wait()
    local p2 = host(0)
    assert.is_true(p2:wait_count(got, 5, 20), p2:stderr())
    H.sleep(0.5)
    assert.are.same({ 3, 4, 5, 6, 7 }, ids(got(p2)))
    assert.are.same(slice(first, 3, 5), slice(seqs(got(p2)), 1, 3))
    p2:stop()
  end)
end)
