-- Backfill (SPEC §8.3, issue 28) under writers and kill -9, on PostgreSQL, SQLite and MySQL,
-- through the real host: a table of 10,000 rows (id, ver, v), a writer process updating,
-- inserting and deleting random keys of 1..12000 the whole time, a durable consumer with
-- start_at = "snapshot" killed with kill -9 half way through its backfill and started again.
-- Afterwards the last state each key reached in what the handlers printed is the table's,
-- and each watcher's output is, per key, a history the table can have had: a read row never
-- follows a newer change nor comes back after a delete, a delete carries the version the row
-- last had, an update a newer one. The writer's versions come from one counter, so per key
-- they only grow. Tables are spec34.bf, bf, s34_bf; consumers s34_*.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt = string.format

local ROWS, KEYS, CHUNK = 10000, 12000, 1000
-- every PACE-th event the handler takes 1 ms: the backfill lasts long enough (a few seconds) for
-- the writer to meet it
local PACE = 2

-- The watcher: every change and every backfilled row as "E op id ver v" (a delete's ver and
-- v are the old row's); every pace-th event it takes a millisecond more, as handlers with
-- work to do would. With arg[5] = "clock" each line ends with " @" and sqlnotify.now() when
-- the handler began (microseconds; the clock every process of the machine reads); arg[6],
-- when given, is the member's lease (s); with arg[7] = "spin" the millisecond is spent in the
-- handler without yielding, as work on the CPU would.
local WATCHER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, pace, handled = arg[1], arg[2], arg[3], tonumber(arg[4]), 0
local clock, lease = arg[5] == "clock", tonumber(arg[6])
if arg[7] == "spin" then
  sqlnotify = setmetatable({ sleep = function(s)
    local t = sqlnotify.now() + s
    repeat until sqlnotify.now() >= t
  end }, { __index = sqlnotify })
end
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, start_at = "snapshot", lease = lease })
for _, op in ipairs({ "insert", "update", "delete" }) do n:watch(tbl, op, { extra_columns = { "ver", "v" } }) end
local function show(ev)
  io.write(string.format("E %s %s %s %s%s\n", ev.operation, tostring(ev.id), tostring(ev.extra_columns.ver),
    tostring(ev.extra_columns.v), clock and string.format(" @%.6f", sqlnotify.now()) or ""))
  handled = handled + 1
  if handled % pace == 0 then sqlnotify.sleep(0.001) end
end
for _, op in ipairs({ "read", "insert", "update", "delete" }) do n:subscribe(tbl, op, show) end
assert(n:start())
print("ready")
]]

-- The writer: a write every 5 ms on a random key, each with the next version; a duplicate
-- key or a missing row is fine. It prints "W op id ver ok|failed" (the history of a key
-- when the spec fails).
local WRITER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, param, seed, keys = arg[1], arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5])
local n = assert(sqlnotify.notifier{ url = url })
local function p(i) return param == "$" and "$" .. i or "?" end
local sql = {
  update = string.format("UPDATE %s SET ver = %s, v = %s WHERE id = %s", tbl, p(1), p(2), p(3)),
  delete = string.format("DELETE FROM %s WHERE id = %s", tbl, p(1)),
  insert = string.format("INSERT INTO %s (id, ver, v) VALUES (%s, %s, %s)", tbl, p(1), p(2), p(3)),
}
local ops = { "update", "delete", "insert" }
math.randomseed(seed)
local ver = 0
sqlnotify.every(0.005, function()
  ver = ver + 1
  local op, id = ops[math.random(3)], math.random(keys)
  local ok
  if op == "update" then ok = n:query(sql.update, ver, "v" .. ver, id)
  elseif op == "delete" then ok = n:query(sql.delete, id)
  else ok = n:query(sql.insert, id, ver, "v" .. ver) end
  io.write(string.format("W %s %d %d %s\n", op, id, ver, ok and "ok" or "failed"))
end)
print("ready")
]]

local function events(p)
  local out = {}
  for op, id, ver, v in p:stdout():gmatch("E (%a+) (%d+) (%d+) (%S+)\n") do
    out[#out + 1] = { op = op, id = tonumber(id), ver = tonumber(ver), v = v }
  end
  return out
end

local function reads(p)
  local out = {}
  for id in p:stdout():gmatch("E read (%d+) ") do out[#out + 1] = id end
  return out
end

-- Lines "id<sep>ver" into id -> ver.
local function rows_of(text)
  local out, count = {}, 0
  for id, ver in text:gmatch("(%d+)[|\t](%d+)") do
    out[tonumber(id)] = tonumber(ver)
    count = count + 1
  end
  return out, count
end

-- The state folded from the outputs in order: the last event of each key wins.
local function fold(...)
  local state = {}
  for _, list in ipairs({ ... }) do
    for _, e in ipairs(list) do
      if e.op == "delete" then state[e.id] = nil else state[e.id] = e.ver end
    end
  end
  return state
end

-- The keys where a and b differ, in order.
local function differing(a, b)
  local seen, out = {}, {}
  for _, t in ipairs({ a, b }) do
    for id in pairs(t) do
      if not seen[id] and a[id] ~= b[id] then out[#out + 1] = id end
      seen[id] = true
    end
  end
  table.sort(out)
  return out
end

local function count(t)
  local c = 0
  for _ in pairs(t) do c = c + 1 end
  return c
end

-- The keys of the read rows in the lists, as a set.
local function read_keys(...)
  local out = {}
  for _, list in ipairs({ ... }) do
    for _, e in ipairs(list) do if e.op == "read" then out[e.id] = true end end
  end
  return out
end

-- What each process printed about one key.
local function history(id, named)
  local out = {}
  for _, pn in ipairs(named) do
    local pat = pn[2] == "writer" and "W %a+ " .. id .. " [^\n]*" or "E %a+ " .. id .. " [^\n]*"
    local lines = {}
    for line in pn[1]:stdout():gmatch(pat) do lines[#lines + 1] = line end
    out[#out + 1] = fmt("    %s: %s", pn[2], table.concat(lines, "; "))
  end
  return table.concat(out, "\n")
end

-- Per key, one watcher's output must be a history the table can have had: a read is the
-- row as the key's last event left it (and comes once), an insert follows a delete with a
-- newer version, an update follows a present row with a newer one, a delete carries the
-- version the row had. The first event of a key may be anything (what came before the
-- consumer, or before the acknowledgement a restart replays from). v is always "v" .. ver.
local function violations(list)
  local last, read, bad = {}, {}, {}
  for i, e in ipairs(list) do
    local p, why = last[e.id], nil
    if e.v ~= "v" .. e.ver then
      why = fmt("v is %s", e.v)
    elseif e.op == "read" then
      if read[e.id] then why = "read twice"
      elseif p and not (p.present and p.ver == e.ver) then why = "the read row is not the last state" end
      read[e.id] = true
    elseif e.op == "insert" then
      if p and not (not p.present and e.ver > p.ver) then why = "an insert of a present key or an older version" end
    elseif e.op == "update" then
      if p and not (p.present and e.ver > p.ver) then why = "an update of a deleted key or to an older version" end
    elseif e.op == "delete" then
      if p and not (p.present and e.ver == p.ver) then why = "a delete of a deleted key or of another version" end
    else
      why = "unknown operation"
    end
    if why then bad[#bad + 1] = { id = e.id, line = i, why = why } end
    last[e.id] = { present = e.op ~= "delete", ver = e.ver }
  end
  return bad
end

-- How many keys, in one watcher's output or the other, had a change before their read row,
-- and how many a change after it.
local function met(...)
  local before, after = {}, {}
  for _, list in ipairs({ ... }) do
    local changed, read = {}, {}
    for _, e in ipairs(list) do
      if e.op == "read" then
        read[e.id] = true
        if changed[e.id] then before[e.id] = true end
      else
        changed[e.id] = true
        if read[e.id] then after[e.id] = true end
      end
    end
  end
  return count(before), count(after)
end

-- The last state per key (state, folded from the handlers' output) is the table's.
local function assert_state_is(state, table_now, named, context)
  local diff = differing(state, table_now)
  if #diff == 0 then return end
  local lines = {}
  for i = 1, math.min(10, #diff) do
    local id = diff[i]
    lines[i] = fmt("  key %d: the handlers end with %s, the table has %s\n%s", id,
      state[id] and "ver " .. state[id] or "no row", table_now[id] and "ver " .. table_now[id] or "no row",
      history(id, named))
  end
  error(fmt("%d keys differ from the table %s; the first:\n%s", #diff, context, table.concat(lines, "\n")))
end

-- Every key no writer touched (version 0 in the table) was read, as it was, in one of the
-- lists; returns how many there are.
local function assert_untouched_read(table_now, context, ...)
  local read0, untouched, missing = {}, 0, {}
  for _, list in ipairs({ ... }) do
    for _, e in ipairs(list) do
      if e.op == "read" then read0[e.id] = read0[e.id] or e.ver == 0 end
    end
  end
  for id, ver in pairs(table_now) do
    if ver == 0 then
      untouched = untouched + 1
      if not read0[id] then missing[#missing + 1] = id end
    end
  end
  table.sort(missing)
  assert.is_true(untouched > ROWS // 2, context) -- the writer cannot have reached most keys
  assert.are.same({}, { table.unpack(missing, 1, 10) }, fmt("untouched keys never read (%d)", #missing))
  return untouched
end

local dialects = {
  {
    name = "PostgreSQL", consumer = "s34_pg", param = "$", in_memory = true,
    url = function() return H.pg_url end,
    watched = "spec34.bf", written = "spec34.bf", listed = "spec34.bf",
    create = function()
      H.fresh_schema("spec34")
      H.psql(fmt("CREATE TABLE spec34.bf (id int PRIMARY KEY, ver bigint NOT NULL, v text NOT NULL);"
        .. " INSERT INTO spec34.bf SELECT g, 0, 'v0' FROM generate_series(1, %d) g;", ROWS))
    end,
    contents = function() return H.psql("SELECT id, ver FROM spec34.bf ORDER BY id") end,
    drop = function() H.drop_schema("spec34") end,
  },
  {
    name = "SQLite", consumer = "s34_sqlite", param = "?",
    url = function(db) return "sqlite:///" .. db end,
    watched = "bf", written = "bf", listed = "main.bf",
    create = function(db)
      H.sqlite_cli(db, fmt("PRAGMA journal_mode = wal;"
        .. " CREATE TABLE bf (id integer PRIMARY KEY, ver integer NOT NULL, v text NOT NULL);"
        .. " WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < %d)"
        .. " INSERT INTO bf SELECT i, 0, 'v0' FROM g;", ROWS))
    end,
    contents = function(db) return H.sqlite_cli(db, "SELECT id, ver FROM bf ORDER BY id;") end,
    drop = function(db) H.sqlite_cli(db, "DROP TABLE IF EXISTS bf;") end,
  },
  {
    name = "MySQL", consumer = "s34_mysql", param = "?",
    url = function() return H.mysql_url end,
    watched = H.my.db .. ".s34_bf", written = "s34_bf", listed = H.my.db .. ".s34_bf",
    create = function()
      local values = {}
      for i = 1, ROWS do values[i] = fmt("(%d, 0, 'v0')", i) end
      H.mysql("DROP TABLE IF EXISTS s34_bf;"
        .. " CREATE TABLE s34_bf (id int PRIMARY KEY, ver bigint NOT NULL, v varchar(32) NOT NULL);"
        .. " INSERT INTO s34_bf (id, ver, v) VALUES " .. table.concat(values, ", ") .. ";")
    end,
    contents = function() return H.mysql("SELECT id, ver FROM s34_bf ORDER BY id") end,
    drop = function() H.mysql("DROP TABLE IF EXISTS s34_bf") end,
  },
}

for _, d in ipairs(dialects) do
  describe("a snapshot backfill on " .. d.name .. " under writers and kill -9", function()
    local procs, db, probe = {}, nil, nil
    local function track(p) procs[#procs + 1] = p return p end
    after_each(function()
      local admin = assert(sqlnotify.notifier{ url = d.url(db), use_logger = false })
      if probe then probe:close() probe = nil end
      H.reap(procs, admin, "s34_")
      admin:close()
      d.drop(db)
    end)

    it("ends with the table's contents per key, and no read row after a newer change", function()
      db = d.name == "SQLite" and H.fresh_sqlite("backfill34") or nil
      d.create(db)
      local url, seed = d.url(db), math.random(1, 1 << 30)
      local writer = track(H.host(WRITER, { url, d.written, d.param, tostring(seed), tostring(KEYS) }))
      assert(writer:wait_for("ready\n", 20), "the writer did not start: " .. writer:stderr())
      assert(writer:wait_for("W [^\n]*\n" .. ("W [^\n]*\n"):rep(19), 20), "the writer does not write: " .. writer:stderr())

      local function watcher()
        local p = track(H.host(WATCHER, { url, d.watched, d.consumer, tostring(PACE) }))
        assert(p:wait_for("ready\n", 20), "the watcher did not start: " .. p:stderr())
        return p
      end
      local w1 = watcher()
      -- half way: once half the rows are done (in the journal on SQLite and MySQL, where what it
      -- printed lags behind by up to a fetch, 5,000 events, enough for it to finish first; on
      -- PostgreSQL read into memory, so that the rows in flight are printed and not yet done)
      probe = assert(sqlnotify.notifier{ url = url, consumer = d.consumer, use_logger = false })
      local function progress() return (probe:backfills() or {})[1] or { done = 0 } end
      local deadline = H.now() + 60
      while progress().done < ROWS // 2 and H.now() < deadline and not w1:exited() do H.sleep(0.02) end
      local at = progress()
      w1:kill("KILL")
      w1:wait()
      w1:assert_clean()
      assert.are.equal("running", at.state, w1:stderr())
      assert.is_true(at.done >= ROWS // 2, w1:stderr())
      local printed = #reads(w1)
      assert.is_true(printed > 0 and printed < ROWS, fmt("watcher 1 printed %d rows (%d done)", printed, at.done))
      local w2 = watcher()
      assert.is_true(w2:wait_for("backfill of [^\n]* done", 60, "err"), "watcher 2 did not finish:\n" .. w2:stderr())
      writer:stop()

      local done, here = w2:stderr():match("backfill of [^\n]* done: (%d+) rows, (%d+) read by this process")
      done, here = tonumber(done), tonumber(here)
      assert(done, "watcher 2 did not say how many rows it read:\n" .. w2:stderr())

      -- until the handlers reach the table's state and print as many keys read as the chunks
      -- counted: the state alone can be reached first, by the changes, with the read rows of
      -- changed keys still on their way
      local table_now, e1, e2, distinct
      deadline = H.now() + 60
      repeat
        H.sleep(0.2)
        table_now = rows_of(d.contents(db))
        e1, e2 = events(w1), events(w2)
        distinct = read_keys(e1, e2)
      until (#differing(fold(e1, e2), table_now) == 0 and count(distinct) >= done) or H.now() > deadline
        or w2:exited()
      local named = { { w1, "watcher 1" }, { w2, "watcher 2" }, { writer, "writer" } }
      local context = fmt("(seed %d; the table has %d keys; watcher 1 printed %d events, watcher 2 %d)",
        seed, count(table_now), #e1, #e2)

      -- the last state per key is the table's
      assert_state_is(fold(e1, e2), table_now, named, context)

      -- per key, each watcher's output is a history the table can have had
      for i, list in ipairs({ e1, e2 }) do
        local bad = violations(list)
        if #bad > 0 then
          local lines = {}
          for j = 1, math.min(10, #bad) do
            lines[j] = fmt("  key %d, line %d: %s\n%s", bad[j].id, bad[j].line, bad[j].why, history(bad[j].id, named))
          end
          error(fmt("%d events of watcher %d out of order %s; the first:\n%s", #bad, i, context,
            table.concat(lines, "\n")))
        end
      end

      -- the writer met the backfill: keys changed before their read row and keys changed after it
      local before, behind = met(e1, e2)
      assert.is_true(before > 0 and behind > 0,
        fmt("keys changed before their read: %d, after it: %d %s", before, behind, context))

      -- every key no writer touched was read, as it was
      local untouched = assert_untouched_read(table_now, context, e1, e2)

      -- watcher 1 started the backfill; watcher 2 took it up after the chunks that committed
      local total = tonumber(w1:stderr():match("backfill of [^\n]*: reading (%d+) rows in chunks of " .. CHUNK .. "\n"))
      assert(total, "watcher 1 did not say it started the backfill:\n" .. w1:stderr())
      for _, p in ipairs({ w1, w2 }) do -- a lone member reads into memory on PostgreSQL
        assert.are.equal(d.in_memory or false, p:stderr():find(": chunks read into memory", 1, true) ~= nil, p:stderr())
      end
      local after, of = w2:stderr():match("backfill of [^\n]*: resuming after (%d+) of (%d+) rows in chunks of "
        .. CHUNK .. "\n")
      assert(after, "watcher 2 did not say it resumed:\n" .. w2:stderr())
      after, of = tonumber(after), tonumber(of)
      assert.are.equal(total, of)
      assert.is_nil(w2:stderr():find(": reading %d+ rows"))
      if not d.in_memory then -- whole chunks, each committed with its rows (in memory: the rows sent)
        assert.are.equal(0, after % CHUNK)
      end
      assert.is_true(after >= at.done, "resumed after " .. after) -- what had committed when it was killed
      assert.is_true(done > after, w2:stderr()) -- watcher 2 read chunks of its own
      assert.are.equal(done - after, here)
      -- every row a chunk counted is a read row; PostgreSQL's copy may add rows inserted into
      -- the chunk's range after its lock
      assert.is_true(count(distinct) >= done, fmt("%d keys read, %d rows counted", count(distinct), done))
      assert.is_true(done >= untouched)

      -- and n:backfills() says so
      local list = assert(probe:backfills())
      assert.are.equal(1, #list)
      assert.are.same({ table = d.listed, state = "done", done = done, total = total, chunk = CHUNK },
        { table = list[1].table, state = list[1].state, done = list[1].done, total = list[1].total,
          chunk = list[1].chunk })
      assert.is_nil(list[1].where)
      w2:stop()
    end)
  end)
end

-- A second member joins a PostgreSQL consumer whose lone member is reading its backfill into
-- memory. While that member holds chunks read into memory it keeps every share (the driver's
-- keep), so no change of one of their keys is delivered by the newcomer before the read row;
-- it then sees the newcomer's lease and reads the next chunks through the journal, and the
-- shares balance once the chunks in memory are done. Both processes print when each handler
-- began, on sqlnotify.now(): the machine's clock, which both read. That orders one key's
-- events across them: a share moves only after the handlers of its events returned and were
-- acknowledged (a page in flight keeps its shares through the balancing), and the new holder
-- fetches that key's later events only after it took the share, so the handler of a key's
-- later event began after the earlier one's had. The handlers spin rather than sleep: a member
-- whose handlers yield keeps the shares of the page in flight, busy with read rows to the
-- backfill's end, and that would keep the shares in place without the keep.
local JOIN_PACE = 1 -- a millisecond an event: the backfill lasts about 10 s
local JOIN_LEASE = 3 -- a lease step a second: the shares move within about 2 s of the keep's end

-- What a watcher started with "clock" printed, with when each handler began.
local function timed_events(p)
  local out = {}
  for op, id, ver, v, t in p:stdout():gmatch("E (%a+) (%d+) (%d+) (%S+) @([%d.]+)\n") do
    out[#out + 1] = { op = op, id = tonumber(id), ver = tonumber(ver), v = v, t = tonumber(t) }
  end
  return out
end

-- Two processes' events in one list by when their handlers began, each process's in its order.
local function merged(a, b)
  local out, i, j = {}, 1, 1
  while a[i] or b[j] do
    if b[j] == nil or (a[i] and a[i].t <= b[j].t) then
      out[#out + 1], i = a[i], i + 1
    else
      out[#out + 1], j = b[j], j + 1
    end
  end
  return out
end

describe("a snapshot backfill on PostgreSQL that a second member joins", function()
  local pg = dialects[1]
  local procs, probe = {}, nil
  local function track(p) procs[#procs + 1] = p return p end
  after_each(function()
    local admin = assert(sqlnotify.notifier{ url = H.pg_url, use_logger = false })
    if probe then probe:close() probe = nil end
    H.reap(procs, admin, "s34_")
    admin:close()
    pg.drop()
  end)

  it("while it reads into memory loses no row, reads none twice, and none after a newer change", function()
    pg.create()
    local url, seed, consumer = H.pg_url, math.random(1, 1 << 30), "s34_join"
    local writer = track(H.host(WRITER, { url, pg.written, pg.param, tostring(seed), tostring(KEYS) }))
    assert(writer:wait_for("ready\n", 20), "the writer did not start: " .. writer:stderr())
    assert(writer:wait_for("W [^\n]*\n" .. ("W [^\n]*\n"):rep(19), 20), "the writer does not write: " .. writer:stderr())

    local function watcher()
      local p = track(H.host(WATCHER, { url, pg.watched, consumer, tostring(JOIN_PACE), "clock", tostring(JOIN_LEASE),
        "spin" }))
      assert(p:wait_for("ready\n", 20), "the watcher did not start: " .. p:stderr())
      return p
    end
    local w1 = watcher()
    assert(w1:wait_for("backfill of [^\n]*: chunks read into memory", 20, "err"), w1:stderr())
    probe = assert(sqlnotify.notifier{ url = url, consumer = consumer, use_logger = false })
    local function progress() return (probe:backfills() or {})[1] or { done = 0 } end
    -- the shares member process p holds, by the consumer's list (none: {})
    local function held(p)
      for _, c in ipairs(assert(probe:consumers())) do
        if c.name == consumer then
          for m, shares in pairs(c.holders or {}) do
            if m:find(":" .. p.pid .. ":", 1, true) then return shares end
          end
        end
      end
      return {}
    end

    -- a quarter done (saved: the chunks read into memory ahead of it are not yet)
    local deadline = H.now() + 30
    while progress().done < ROWS // 4 and H.now() < deadline and not w1:exited() do H.sleep(0.02) end
    assert.is_true(progress().done >= ROWS // 4, w1:stderr())
    assert.are.equal(16, #held(w1))
    local w2 = watcher()
    local joined = progress() -- w2's lease is current by now: n:start() took it
    assert.are.equal("running", joined.state, w1:stderr())
    assert.is_true(joined.done < ROWS * 3 // 4, fmt("%d rows done when watcher 2 joined", joined.done))

    -- the backfill ends, and by then or soon after both members hold shares
    deadline = H.now() + 40
    local function finished() return (w1:stderr() .. w2:stderr()):find("backfill of [^\n]* done") ~= nil end
    while not (finished() and #held(w1) > 0 and #held(w2) > 0) and H.now() < deadline
        and not w1:exited() and not w2:exited() do
      H.sleep(0.05)
    end
    assert.is_true(finished(), "the backfill did not finish:\n" .. w1:stderr() .. w2:stderr())
    local h1, h2 = #held(w1), #held(w2)
    assert.is_true(h1 > 0 and h2 > 0 and h1 + h2 == 16, fmt("shares: %d and %d", h1, h2))
    writer:stop()

    local table_now, e1, e2
    deadline = H.now() + 60
    repeat
      H.sleep(0.2)
      table_now = rows_of(pg.contents())
      e1, e2 = timed_events(w1), timed_events(w2)
    until #differing(fold(merged(e1, e2)), table_now) == 0 or H.now() > deadline or w1:exited() or w2:exited()
    local all = merged(e1, e2)
    local named = { { w1, "watcher 1" }, { w2, "watcher 2" }, { writer, "writer" } }
    local context = fmt("(seed %d; the table has %d keys; watcher 1 printed %d events, watcher 2 %d)",
      seed, count(table_now), #e1, #e2)
    -- no lease ran out under the handlers (a lapsed lease loses its shares, kept or not)
    for i, p in ipairs({ w1, w2 }) do
      assert.is_nil(p:stderr():find(" lost shares ", 1, true), fmt("watcher %d lost shares:\n%s", i, p:stderr()))
    end

    -- the last state per key, in the order the handlers began, is the table's
    assert_state_is(fold(all), table_now, named, context)

    -- per key, both watchers' events together are a history the table can have had: no read
    -- row after a newer change, none read twice, whichever member delivered them
    local bad = violations(all)
    if #bad > 0 then
      local lines = {}
      for j = 1, math.min(10, #bad) do
        lines[j] = fmt("  key %d, event %d of both: %s\n%s", bad[j].id, bad[j].line, bad[j].why,
          history(bad[j].id, named))
      end
      error(fmt("%d events out of order across the members %s; the first:\n%s", #bad, context,
        table.concat(lines, "\n")))
    end
    local before, behind = met(all)
    assert.is_true(before > 0 and behind > 0,
      fmt("keys changed before their read: %d, after it: %d %s", before, behind, context))

    -- every key no writer touched was read, as it was
    assert_untouched_read(table_now, context, all)

    -- the join came during the backfill: watcher 1 read into memory and, once watcher 2's lease
    -- was current, went the journal's way; watcher 2 never read into memory, took shares from
    -- watcher 1 and delivered events of their keys, read rows among them
    local s1, s2 = w1:stderr(), w2:stderr()
    local switched = s1:match("(%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z) [^\n]*: chunks go through the journal\n")
    assert(switched, "watcher 1 never went the journal's way:\n" .. s1)
    assert.is_nil(s2:find(": chunks read into memory", 1, true), s2)
    local gave = s1:match("(%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z) [^\n]*member [^\n]*:" .. w1.pid
      .. ":%x+ gave up shares [^\n]*: to balance the group\n")
    assert(gave, "watcher 1 gave up no share:\n" .. s1)
    assert.matches("member [^\n]*:" .. w2.pid .. ":%x+ took shares ", s2)
    -- the chunks in memory were done before a share left (the keep): the log's times say so
    assert.is_true(gave >= switched, fmt("shares given up at %s, the chunks in memory done at %s", gave, switched))
    local r2 = 0
    for _, e in ipairs(e2) do if e.op == "read" then r2 = r2 + 1 end end
    assert.is_true(#e2 > 0 and r2 > 0, fmt("watcher 2 printed %d events, %d read rows %s", #e2, r2, context))
    assert.are.equal("done", progress().state)
    w1:stop()
    w2:stop()
  end)
end)
