-- SQLite: h:hold and h:ack on a durable consumer, the runtime's way to let handlers finish
-- after deliver returned. The notifier's dispatch is replaced on the instance, so the tests
-- drive hold and ack as the scheduler does: hold from inside deliver, ack and release later
-- from timers. Held: nothing more is read (not even rows other processes commit), acks are
-- saved as they come, the lease stays fresh, a stop keeps the last ack; released: what was
-- not acked comes again. Then the real host killed with kill -9 while held. One SQLite file
-- per test, removed after it; consumers are named s29_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt, q = string.format, H.shell_quote

local path -- the test's file

local function notifier(opts)
  opts = opts or {}
  opts.url = opts.url or "sqlite:///" .. path
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  return assert(sqlnotify.notifier(opts))
end

local function fresh()
  path = H.fresh_sqlite("hold29")
  H.sqlite_cli(path, "PRAGMA journal_mode = wal;\nCREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);")
end

-- Rows from..to in one transaction, written by another process (the sqlite3 CLI).
local function insert(from, to)
  local values = {}
  for k = from, to do values[#values + 1] = fmt("(%d, %d)", k, k) end
  H.sqlite_cli(path, fmt("INSERT INTO items (id, k) VALUES %s;", table.concat(values, ", ")))
end

-- The position a consumer's row holds (what a restart or a standby starts from).
local function saved_pos(name)
  return tonumber(H.sqlite_cli(path, fmt("SELECT position FROM sqlnotify_consumers WHERE name = '%s';", name))
    :match("%d+"))
end

-- Running the loop meanwhile (the reader saves from it).
local function wait_pos(name, want, timeout)
  H.run_until(function() return saved_pos(name) == want end, timeout or 5)
  return saved_pos(name)
end

-- A notifier on items whose dispatch records every event ({id =, seq =} in s.got) and, while
-- s.holding, holds the link (once, as the runtime does) and hands back none of them (they
-- stay in flight); otherwise it hands back all of them. s.said: what each hold(true) returned.
local function recorder(consumer)
  local s = { got = {}, said = {}, holding = true, held = false }
  s.n = notifier({ consumer = consumer })
  s.n:watch("items", "insert")
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

local function ids(list) return H.pluck(list, "id") end
local function seqs(list) return H.pluck(list, "seq") end
local function slice(list, i, j) return table.move(list, i, j, 1, {}) end

describe("h:hold on an SQLite durable consumer", function()
  local made = {}
  after_each(function()
    for _, n in ipairs(made) do n:close() end
    made = {}
    if path then H.sh("rm -f " .. q(path) .. "*") end
  end)
  local function track(s)
    made[#made + 1] = s.n
    return s
  end

  it("delivers nothing more while held, not even what other processes write, saves each ack, reads on when released",
    function()
      fresh()
      local s = track(recorder("s29_acks"))
      insert(1, 3)
      assert.is_true(H.run_until(function() return #s.got == 3 end))
      assert.are.same({ true }, s.said)
      local first = seqs(s.got)
      insert(4, 5) -- written while held: not read until the release
      sqlnotify.after(0.5, function() insert(6, 6) end) -- a second commit, a second wake-up
      local positions = {}
      for i = 1, 3 do -- acked one by one from timers; the position each ack saved
        sqlnotify.after(0.3 * i, function() s.n._h:ack(first[i]) end)
        sqlnotify.after(0.3 * i + 0.2, function() positions[i] = saved_pos("s29_acks") end)
      end
      H.run_for(1.3)
      assert.are.same({ 1, 2, 3 }, ids(s.got)) -- the wake-ups and polls while held read nothing
      assert.are.same(first, positions)
      assert.is_true(release(s))
      assert.is_true(H.run_until(function() return #s.got >= 6 end))
      H.run_for(0.3)
      assert.are.same({ 1, 2, 3, 4, 5, 6 }, ids(s.got)) -- each once, in order
      for i = 4, 6 do assert.is_true(s.got[i].seq > s.got[i - 1].seq) end
      assert.are.equal(s.got[6].seq, wait_pos("s29_acks", s.got[6].seq))
    end)

  it("delivers again, in order, exactly the events not acked when it was released", function()
    fresh()
    local s = track(recorder("s29_redo"))
    insert(1, 4)
    assert.is_true(H.run_until(function() return #s.got == 4 end))
    local first = seqs(s.got)
    sqlnotify.after(0.1, function() s.n._h:ack(first[1]) end)
    sqlnotify.after(0.3, function() release(s) end)
    assert.is_true(H.run_until(function() return #s.got >= 7 end))
    H.run_for(0.5)
    assert.are.same({ 1, 2, 3, 4, 2, 3, 4 }, ids(s.got))
    assert.are.same(slice(first, 2, 4), slice(seqs(s.got), 5, 7))
    assert.are.same({ true }, s.said)
    assert.are.equal(first[4], wait_pos("s29_redo", first[4]))
  end)

  it("keeps its lease fresh while held, so no standby takes the consumer over", function()
    fresh()
    local s = track(recorder("s29_lease"))
    insert(1, 2)
    assert.is_true(H.run_until(function() return #s.got == 2 end))
    H.run_for(2.5) -- no ack at all: only the lease timer writes
    local age = tonumber(H.sqlite_cli(path, "SELECT ((julianday('now') - 2440587.5) * 86400.0) - heartbeat "
      .. "FROM sqlnotify_consumers WHERE name = 's29_lease' AND holder IS NOT NULL;"):match("[%d.]+"))
    assert.is_truthy(age)
    assert.is_true(age < 1.6, "heartbeat " .. age .. " s old")
    assert.are.same({ 1, 2 }, ids(s.got))
    assert.is_true(release(s))
    assert.is_true(H.run_until(function() return #s.got >= 4 end))
    H.run_for(0.3)
    assert.are.same({ 1, 2, 1, 2 }, ids(s.got))
  end)

  it("saves the last ack when stopped while held; the next start delivers the rest", function()
    fresh()
    local s = track(recorder("s29_stop"))
    insert(1, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    local first = seqs(s.got)
    local at_stop
    sqlnotify.after(0.05, function()
      s.n._h:ack(first[2])
      s.n:stop() -- at once: the stop writes it, not a later timer
      at_stop = saved_pos("s29_stop")
    end)
    H.run_for(0.2)
    assert.are.equal(first[2], at_stop)
    assert.are.equal(first[2], saved_pos("s29_stop"))
    local s2 = track(recorder("s29_stop"))
    s2.holding = false
    assert.is_true(H.run_until(function() return #s2.got >= 1 end))
    H.run_for(0.3)
    assert.are.same({ 3 }, ids(s2.got))
    assert.are.same({ first[3] }, seqs(s2.got))
  end)

  it("answers false in live mode, where there is nothing to hold, and delivery goes on", function()
    fresh()
    local s = track(recorder())
    s.n._dispatch = (function(inner)
      return function(self, batch, cnt, ts, seqs_)
        inner(self, batch, cnt, ts, seqs_)
        return cnt
      end
    end)(s.n._dispatch)
    insert(1, 2)
    assert.is_true(H.run_until(function() return #s.got == 2 end))
    insert(3, 3)
    assert.is_true(H.run_until(function() return #s.got == 3 end))
    H.run_for(0.2)
    assert.are.same({ 1, 2, 3 }, ids(s.got))
    assert.are.same({ false, false }, s.said)
  end)
end)

-- A host script: prints "got id seq" for each event; with acks > 0 it holds and acks the
-- first `acks` events one by one from timers ("acked seq"), else hands every event back.
local SCRIPT = [=[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local path, consumer, acks = arg[1], arg[2], tonumber(arg[3])
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. path, consumer = consumer })
n:watch("items", "insert")
local given, held = 0, false
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
    given = given + 1
    if given <= acks then
      local seq = seqs[i]
      sqlnotify.after(0.1 * given, function() self._h:ack(seq) print("acked " .. seq) end)
    end
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
    H.sh("rm -f " .. q(path) .. "*")
  end)

  local function host(acks)
    local p = H.host(SCRIPT, { path, "s29_kill", tostring(acks) })
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
    fresh()
    local p1 = host(2)
    insert(1, 5)
    assert.is_true(p1:wait_for("acked %d+\nacked %d+\n", 10), p1:stderr())
    local first = seqs(got(p1))
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(got(p1)))
    assert.is_truthy(p1:stdout():find("held true\n", 1, true))
    assert.are.equal(first[2], wait_pos("s29_kill", first[2])) -- written while held
    insert(6, 7) -- another process commits while held: not read
    H.sleep(0.5)
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(got(p1)))
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
