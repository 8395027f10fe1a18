-- MySQL/MariaDB: h:hold and h:ack on a durable consumer, the runtime's way to let handlers
-- finish after deliver returned. The notifier's dispatch is replaced on the instance, so the
-- tests drive hold and ack as the scheduler will: hold from inside deliver, ack and release
-- later from timers. Held: nothing more is read, acks are saved as they come, a lost
-- connection or a stop keeps them; released: what was not acked comes again. Then the real
-- host killed with kill -9 while held. Tables and consumers are named s29_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

local URL, DB, sql = H.mysql_url, H.my.db, H.mysql

local function notifier(opts)
  opts = opts or {}
  opts.url = opts.url or URL
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  return assert(sqlnotify.notifier(opts))
end

local function fresh(tbl)
  sql(fmt("DROP TABLE IF EXISTS `%s`; CREATE TABLE `%s` (id bigint AUTO_INCREMENT PRIMARY KEY, k int NOT NULL);",
    tbl, tbl))
end

local function insert(tbl, from, to)
  local values = {}
  for k = from, to do values[#values + 1] = fmt("(%d)", k) end
  sql(fmt("INSERT INTO `%s` (k) VALUES %s", tbl, table.concat(values, ", "))) -- one transaction
end

-- The position a consumer's row holds (what a restart or a standby starts from).
local function saved_pos(name)
  return tonumber(sql(fmt("SELECT pos FROM sqlnotify_consumers WHERE name = '%s'", name)):match("%d+"))
end

-- Running the loop meanwhile (the reader saves from it).
local function wait_pos(name, want, timeout)
  H.run_until(function() return saved_pos(name) == want end, timeout or 5)
  return saved_pos(name)
end

-- A notifier on tbl whose dispatch records every event ({id =, seq =} in s.got) and, while
-- s.holding, holds the link and hands back none of them (they stay in flight); otherwise it
-- hands back all of them, as the runtime does today. s.said: what each hold(true) returned.
local function recorder(tbl, consumer)
  local s = { got = {}, said = {}, holding = true }
  s.n = notifier({ consumer = consumer })
  s.n:watch(DB .. "." .. tbl, "insert")
  s.n._dispatch = function(self, batch, cnt, ts, seqs)
    for i = 1, cnt do
      local w = self._by_channel[batch[2 * i - 1]]
      local ev = w and self:_event(w, w.channel, batch[2 * i], ts)
      if ev then s.got[#s.got + 1] = { id = ev.id, seq = seqs and seqs[i] } end
    end
    if not s.holding then return cnt end
    s.said[#s.said + 1] = self._h:hold(true)
    return 0
  end
  assert(s.n:start())
  return s
end

local function ids(list) return H.pluck(list, "id") end
local function seqs(list) return H.pluck(list, "seq") end
local function slice(list, i, j) return table.move(list, i, j, 1, {}) end

describe("h:hold on a MySQL/MariaDB durable consumer", function()
  local made, admin = {}, nil
  before_each(function() admin = notifier() end)
  after_each(function()
    for _, n in ipairs(made) do n:close() end
    made = {}
    for _, c in ipairs(assert(admin:consumers())) do
      if c.name:find("^s29_") then admin:drop_consumer(c.name) end
    end
    admin:close()
    sql("DROP TABLE IF EXISTS s29_acks, s29_redo, s29_lost, s29_stop, s29_live, s29_kill")
  end)
  local function track(s)
    made[#made + 1] = s.n
    return s
  end

  it("delivers nothing more while held, saves each ack as it comes, and reads on when released", function()
    fresh("s29_acks")
    local s = track(recorder("s29_acks", "s29_acks"))
    insert("s29_acks", 1, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    assert.are.same({ true }, s.said)
    local first = seqs(s.got)
    insert("s29_acks", 4, 5) -- written while held: not read until the release
    local positions = {}
    for i = 1, 3 do -- acked one by one from timers; the position each ack saved
      sqlnotify.after(0.3 * i, function() s.n._h:ack(first[i]) end)
      sqlnotify.after(0.3 * i + 0.2, function() positions[i] = saved_pos("s29_acks") end)
    end
    H.run_for(1.2)
    assert.are.same({ 1, 2, 3 }, ids(s.got)) -- the polls while held read nothing
    assert.are.same(first, positions)
    s.holding = false
    assert.is_true(s.n._h:hold(false))
    assert.is_true(H.run_until(function() return #s.got >= 5 end))
    H.run_for(0.3)
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(s.got)) -- each once, in order
    assert.is_true(s.got[4].seq > first[3] and s.got[5].seq > s.got[4].seq)
    assert.are.equal(s.got[5].seq, wait_pos("s29_acks", s.got[5].seq))
  end)

  it("delivers again, in order, exactly the events not acked when it was released", function()
    fresh("s29_redo")
    local s = track(recorder("s29_redo", "s29_redo"))
    insert("s29_redo", 1, 4)
    assert.is_true(H.run_until(function() return #s.got == 4 end))
    local first = seqs(s.got)
    sqlnotify.after(0.1, function() s.n._h:ack(first[1]) end)
    sqlnotify.after(0.3, function()
      s.holding = false
      s.n._h:hold(false)
    end)
    assert.is_true(H.run_until(function() return #s.got >= 7 end))
    H.run_for(0.5)
    assert.are.same({ 1, 2, 3, 4, 2, 3, 4 }, ids(s.got))
    assert.are.same(slice(first, 2, 4), slice(seqs(s.got), 5, 7))
    assert.are.same({ true }, s.said)
    assert.are.equal(first[4], wait_pos("s29_redo", first[4]))
  end)

  it("keeps its acks and reads nothing across a lost connection while held", function()
    fresh("s29_lost")
    local s = track(recorder("s29_lost", "s29_lost"))
    local back = 0
    s.n:on("reconnect", function() back = back + 1 end)
    insert("s29_lost", 1, 4)
    assert.is_true(H.run_until(function() return #s.got == 4 end))
    local first = seqs(s.got)
    s.n._h:ack(first[1])
    assert.are.equal(first[1], wait_pos("s29_lost", first[1]))
    local conns = sql(fmt("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '%s' AND ID <> CONNECTION_ID()", DB))
    for id in conns:gmatch("%d+") do pcall(sql, "KILL CONNECTION " .. id) end
    insert("s29_lost", 5, 5)
    s.n._h:ack(first[2]) -- while the reader is away
    assert.is_true(H.run_until(function() return back > 0 end))
    H.run_for(0.5)
    assert.are.same({ 1, 2, 3, 4 }, ids(s.got))
    assert.are.equal(first[2], wait_pos("s29_lost", first[2])) -- the ack made while away was not lost
    s.holding = false
    s.n._h:hold(false)
    assert.is_true(H.run_until(function() return #s.got >= 7 end))
    H.run_for(0.3)
    assert.are.same({ 1, 2, 3, 4, 3, 4, 5 }, ids(s.got))
  end)

  it("saves the last ack when stopped while held; the next start delivers the rest", function()
    fresh("s29_stop")
    local s = track(recorder("s29_stop", "s29_stop"))
    insert("s29_stop", 1, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    local first = seqs(s.got)
    sqlnotify.after(0.05, function()
      s.n._h:ack(first[2])
      s.n:stop() -- at once: the stop writes it, not the next tick
    end)
    H.run_for(0.2)
    assert.are.equal(first[2], saved_pos("s29_stop"))
    local s2 = track(recorder("s29_stop", "s29_stop"))
    s2.holding = false
    assert.is_true(H.run_until(function() return #s2.got >= 1 end))
    H.run_for(0.3)
    assert.are.same({ 3 }, ids(s2.got))
    assert.are.same({ first[3] }, seqs(s2.got))
  end)

  it("answers false in live mode, where there is nothing to hold, and delivery goes on", function()
    fresh("s29_live")
    local s = track(recorder("s29_live"))
    s.n._dispatch = (function(inner)
      return function(self, batch, cnt, ts, seqs_)
        inner(self, batch, cnt, ts, seqs_)
        return cnt
      end
    end)(s.n._dispatch)
    insert("s29_live", 1, 2)
    assert.is_true(H.run_until(function() return #s.got == 2 end))
    insert("s29_live", 3, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    H.run_for(0.2)
    assert.are.same({ 1, 2, 3 }, ids(s.got))
    assert.are.same({ false, false }, s.said)
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
n._dispatch = function(self, batch, cnt, ts, seqs)
  for i = 1, cnt do
    local w = self._by_channel[batch[2 * i - 1]]
    local ev = self:_event(w, w.channel, batch[2 * i], ts)
    print(string.format("got %d %d", ev.id, seqs[i]))
  end
  if acks == 0 then return cnt end
  print("held " .. tostring(self._h:hold(true)))
  for i = 1, math.min(acks, cnt) do
    local seq = seqs[i]
    sqlnotify.after(0.1 * i, function() self._h:ack(seq) print("acked " .. seq) end)
  end
  return 0
end
assert(n:start())
print("ready")
]=]

describe("the host killed with kill -9 while held", function()
  local procs = {}
  after_each(function()
    local admin = notifier()
    H.reap(procs, admin, "s29_")
    admin:close()
    sql("DROP TABLE IF EXISTS s29_kill")
  end)

  local function host(acks)
    local p = H.host(SCRIPT, { URL, DB .. ".s29_kill", "s29_kill", tostring(acks) })
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
    fresh("s29_kill")
    local p1 = host(2)
    insert("s29_kill", 1, 5)
    assert.is_true(p1:wait_for("acked %d+\nacked %d+\n", 10), p1:stderr())
    local first = seqs(got(p1))
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(got(p1)))
    assert.is_truthy(p1:stdout():find("held true\n", 1, true))
    assert.are.equal(first[2], wait_pos("s29_kill", first[2])) -- written while held
    insert("s29_kill", 6, 7)
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
