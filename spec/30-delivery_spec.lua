-- Delivery (SPEC §8.1), through the real host on PostgreSQL, SQLite and MySQL: an event is
-- done when its handlers return; a raise is retried with backoff, then dead-lettered and
-- replayed after a reload; per-key order always, other keys side by side with concurrency;
-- kill -9 during a backoff and during a waiting handler redelivers; SIGTERM lets handlers in
-- flight finish. Rows: id (the key) and v, inserted then updated three times in one commit,
-- so each key has four events (v = 0..3) and delivery order is i1..i5, then each update's five.
local H = require("helper")
local sqlnotify = require("sqlnotify")

local fmt, q = string.format, H.shell_quote

-- The watcher. Its mode comes from a file read at each (re)load: "ok", "fail3" (key 1's events
-- fail their first three attempts), "always" (key 1's always fail), "slow" (key 1 waits
-- 60 s, key 2 fails forever), "sleep1" (every handler waits 1 s), "nowait" (nobody yields; key 1's
-- events always fail). It prints "start id v try",
-- "done id v", "dead id v attempts".
local WATCHER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, conc, attempts, modefile = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5], arg[6]
local f = assert(io.open(modefile))
local mode = f:read("l")
f:close()
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil, concurrency = conc,
  retry = { attempts = attempts == "inf" and math.huge or tonumber(attempts),
    delay = mode == "sleep1fail" and 30 or 0.05, max_delay = mode == "sleep1fail" and 30 or 0.2 },
  shutdown_grace = 5 })
n:watch(tbl, "insert", { extra_columns = { "v" } })
n:watch(tbl, "update", { extra_columns = { "v" } })
local tries = {}
local function handler(ev)
  local id, v = ev.id, ev.extra_columns.v
  local t = (tries[id .. ":" .. v] or 0) + 1
  tries[id .. ":" .. v] = t
  print(string.format("start %d %d %d", id, v, t))
  if mode ~= "nowait" then sqlnotify.sleep(0.01) end
  if mode == "nowait" and id == 1 then error("key 1 waits for a retry") end
  if mode == "fail3" and id == 1 and t <= 3 then error("transient " .. id) end
  if mode == "always" and id == 1 then error({ code = 42 }) end -- not a string
  if mode == "slow" and id == 1 then sqlnotify.sleep(60) end
  if mode == "slow" and id == 2 then error("forever") end
  if mode == "sleep1" then sqlnotify.sleep(1) end
  if mode == "sleep1fail" then sqlnotify.sleep(1) if id == 1 then error("fails in the grace") end end
  if mode == "sleep60" then sqlnotify.sleep(60) end
  if mode == "binary" and id == 1 then error("bad \255 byte\0 end", 0) end
  print(string.format("done %d %d", id, v))
end
n:subscribe(tbl, "insert", handler)
n:subscribe(tbl, "update", handler)
n:on("dead_letter", function(ev, info)
  print(string.format("dead %d %d %d", ev.id, ev.extra_columns.v, info.attempts))
end)
assert(n:start())
if mode == "replay" then
  sqlnotify.after(0.1, function() print("replaying " .. assert(n:replay_dead_letters())) end)
  sqlnotify.every(0.1, function()
    local left = #assert(n:dead_letters())
    if left == 0 then print("no dead letters left") end
  end)
end
print("ready " .. mode)
]]

-- batch = 3 subscriptions (inserts, updates) of one table. Mode "failfirst": the first call
-- fails; "key1": every batch holding a key-1 event fails. It prints "batch k try ids",
-- "batchdone ids" and "dead id v attempts" (ids: id:v,id:v,...).
local BATCHER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, modefile = arg[1], arg[2], arg[3], arg[4]
local f = assert(io.open(modefile))
local mode = f:read("l")
f:close()
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, concurrency = 8,
  retry = { attempts = 3, delay = 0.05, max_delay = 0.1 } })
n:watch(tbl, "insert", { extra_columns = { "v" } })
n:watch(tbl, "update", { extra_columns = { "v" } })
local calls = 0
local function handler(evs)
  calls = calls + 1
  local parts, key1 = {}, false
  for i, ev in ipairs(evs) do
    parts[i] = ev.id .. ":" .. ev.extra_columns.v
    key1 = key1 or ev.id == 1
  end
  local ids = table.concat(parts, ",")
  print(string.format("batch %d %s", calls, ids))
  sqlnotify.sleep(0.02)
  if mode == "failfirst" and calls == 1 then error("the first call fails") end
  if mode == "key1" and key1 then error("key 1") end
  print("batchdone " .. ids)
end
n:subscribe(tbl, "insert", { batch = 3 }, handler)
n:subscribe(tbl, "update", { batch = 3 }, handler)
n:on("dead_letter", function(ev, info)
  print(string.format("dead %d %d %d", ev.id, ev.extra_columns.v, info.attempts))
end)
assert(n:start())
if mode == "replay" then
  sqlnotify.after(0.1, function() print("replaying " .. assert(n:replay_dead_letters())) end)
end
print("ready " .. mode)
]]

local function lines(p, what)
  local out = {}
  for id, v, x in p:stdout():gmatch(what .. " (%d+) (%d+) ?(%d*)\n") do
    out[#out + 1] = { id = tonumber(id), v = tonumber(v), x = tonumber(x) }
  end
  return out
end
local function done(p) return lines(p, "done") end
local function started(p) return lines(p, "start") end
local function dead(p) return lines(p, "dead") end
local function keys(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = e.id .. ":" .. e.v end
  return out
end

-- Delivery order of the writes below (one commit): inserts, then each update's rows.
local function expected(nkeys)
  local out = {}
  for v = 0, 3 do for id = 1, nkeys do out[#out + 1] = id .. ":" .. v end end
  return out
end

local function sorted(list)
  local c = table.move(list, 1, #list, 1, {})
  table.sort(c)
  return c
end

local procs = {}
local function track(p) procs[#procs + 1] = p return p end
local function stop_all()
  for _, p in ipairs(procs) do
    if not p:exited() then p:kill("KILL") p:wait() end
  end
  for i = #procs, 1, -1 do procs[i] = nil end
end

-- Each dialect: make a table, write to it from another process, name it for watch().
local dialects = {
  {
    name = "PostgreSQL",
    url = function() return H.pg_url end,
    setup = function() H.fresh_schema("spec30") end,
    teardown = function() H.drop_schema("spec30") end,
    create = function(_, t) H.psql(fmt("CREATE TABLE spec30.%s (id int PRIMARY KEY, v int NOT NULL)", t)) end,
    write = function(_, t, nkeys)
      H.psql(fmt("BEGIN; INSERT INTO spec30.%s SELECT g, 0 FROM generate_series(1, %d) g; UPDATE spec30.%s SET v = 1;"
        .. " UPDATE spec30.%s SET v = 2; UPDATE spec30.%s SET v = 3; COMMIT;", t, nkeys, t, t, t))
    end,
    watched = function(t) return "spec30." .. t end,
    insert = function(_, t, id) H.psql(fmt("INSERT INTO spec30.%s VALUES (%d, 0)", t, id)) end,
    -- a table of another shape where the dead letters go, and back
    block_dead = function() H.psql("CREATE SCHEMA IF NOT EXISTS sqlnotify; DROP TABLE IF EXISTS sqlnotify.dead_letters;"
      .. " CREATE TABLE sqlnotify.dead_letters (wrong int)") end,
    unblock_dead = function() H.psql("DROP TABLE sqlnotify.dead_letters") end,
    forget = function(n, consumer)
      n:drop_consumer(consumer)
      -- the table exists once a handler gave up on an event
      H.psql("DO $$ BEGIN IF to_regclass('sqlnotify.dead_letters') IS NOT NULL THEN"
        .. " DELETE FROM sqlnotify.dead_letters WHERE consumer LIKE 's30%'; END IF; END $$")
    end,
  },
  {
    name = "SQLite",
    url = function(db) return "sqlite:///" .. db end,
    setup = function() end,
    teardown = function() end,
    create = function(db, t) H.sqlite_cli(db, fmt("CREATE TABLE %s (id integer PRIMARY KEY, v integer NOT NULL);", t)) end,
    write = function(db, t, nkeys)
      local ins = {}
      for i = 1, nkeys do ins[i] = fmt("(%d, 0)", i) end
      H.sqlite_cli(db, fmt("BEGIN; INSERT INTO %s VALUES %s; UPDATE %s SET v = 1; UPDATE %s SET v = 2;"
        .. " UPDATE %s SET v = 3; COMMIT;", t, table.concat(ins, ", "), t, t, t))
    end,
    watched = function(t) return t end,
    insert = function(db, t, id) H.sqlite_cli(db, fmt("INSERT INTO %s VALUES (%d, 0);", t, id)) end,
    block_dead = function(db) H.sqlite_cli(db, "CREATE TABLE sqlnotify_dead_letters (wrong int);") end,
    unblock_dead = function(db) H.sqlite_cli(db, "DROP TABLE sqlnotify_dead_letters;") end,
    forget = function(n, consumer) n:drop_consumer(consumer) end,
  },
  {
    name = "MySQL",
    url = function() return H.mysql_url end,
    setup = function() end,
    teardown = function() end,
    create = function(_, t)
      H.mysql(fmt("DROP TABLE IF EXISTS s30_%s; CREATE TABLE s30_%s (id int PRIMARY KEY, v int NOT NULL);", t, t))
    end,
    write = function(_, t, nkeys)
      local ins = {}
      for i = 1, nkeys do ins[i] = fmt("(%d, 0)", i) end
      -- ORDER BY id: MySQL updates rows in the order it finds them; the spec wants key order
      H.mysql(fmt("BEGIN; INSERT INTO s30_%s VALUES %s; UPDATE s30_%s SET v = 1 ORDER BY id;"
        .. " UPDATE s30_%s SET v = 2 ORDER BY id; UPDATE s30_%s SET v = 3 ORDER BY id; COMMIT;",
        t, table.concat(ins, ", "), t, t, t))
    end,
    watched = function(t) return "s30_" .. t end,
    insert = function(_, t, id) H.mysql(fmt("INSERT INTO s30_%s VALUES (%d, 0)", t, id)) end,
    block_dead = function() H.mysql("DROP TABLE IF EXISTS sqlnotify_dead_letters;"
      .. " CREATE TABLE sqlnotify_dead_letters (wrong int)") end,
    unblock_dead = function() H.mysql("DROP TABLE sqlnotify_dead_letters") end,
    forget = function(n, consumer)
      n:drop_consumer(consumer)
      if H.mysql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
        .. " AND table_name = 'sqlnotify_dead_letters'"):match("1") then
        H.mysql("DELETE FROM sqlnotify_dead_letters WHERE consumer LIKE 's30%'")
      end
    end,
  },
}

for _, d in ipairs(dialects) do
  describe("delivery on " .. d.name .. " (the real host)", function()
    local db, count = nil, 0
    local modefile
    setup(function() d.setup() end)
    teardown(function() d.teardown() end)
    before_each(function()
      count = count + 1
      db = d.name == "SQLite" and H.fresh_sqlite("delivery30") or nil
      if db then H.sqlite_cli(db, "PRAGMA journal_mode = wal;") end
      modefile = H.tmpfile(".mode")
    end)
    after_each(stop_all)

    local function mode(m) H.spit(modefile, m .. "\n") end
    local function table_name() return "t" .. count end
    local function watcher(t, consumer, conc, attempts, script)
      local p = track(H.host(WATCHER, { d.url(db), d.watched(t), consumer, tostring(conc), tostring(attempts), modefile },
        nil, script))
      assert(p:wait_for("ready ", 20), "the host did not start: " .. p:stderr())
      return p
    end
    local function notifier()
      return assert(sqlnotify.notifier{ url = d.url(db), use_logger = false })
    end
    -- drop the consumer and its dead letters (what a case made)
    local function forget(consumer)
      local n = notifier()
      d.forget(n, consumer)
      n:close()
    end

    for _, conc in ipairs({ 4, 1 }) do
      it(fmt("retries a failing key; every event done once, in key order; concurrency %d %s", conc,
        conc > 1 and "lets other keys by" or "holds them back"), function()
        local t, consumer = table_name(), "s30_retry" .. conc
        d.create(db, t)
        mode("fail3")
        local p = watcher(t, consumer, conc, 5)
        d.write(db, t, 5)
        assert.is_true(p:wait_count(done, 20, 30), p:stdout() .. p:stderr())
        H.sleep(0.3)
        local got = keys(done(p))
        assert.same(sorted(expected(5)), sorted(got)) -- each exactly once
        for id = 1, 5 do -- per key, v in order
          local vs = {}
          for _, e in ipairs(done(p)) do if e.id == id then vs[#vs + 1] = e.v end end
          assert.same({ 0, 1, 2, 3 }, vs)
        end
        -- key 1's events ran 4 times each (3 failures, then done)
        for _, e in ipairs(started(p)) do
          if e.id ~= 1 then assert.equal(1, e.x) end
        end
        assert.equal(32, #started(p)) -- 4 starts for each of key 1's 4 events, 1 for the 16 others
        local pos = {}
        for i, k in ipairs(got) do pos[k] = i end
        if conc > 1 then
          -- the other keys finished while key 1 was retrying its first event
          for id = 2, 5 do assert.is_true(pos[id .. ":3"] < pos["1:0"], table.concat(got, " ")) end
        else
          assert.same(expected(5), got) -- one at a time: commit order, the failing key first
        end
        assert.matches("failed for id 1 %(attempt 1 of 5%): [^\n]*: transient 1\n", p:stderr())
        p:stop()
        forget(consumer)
      end)
    end

    it("dead-letters an event that always fails, and replays it after a reload fixed the handler", function()
      local t, consumer = table_name(), "s30_dead"
      d.create(db, t)
      mode("always")
      local script = H.tmpfile(".lua")
      local p = watcher(t, consumer, 4, 3, script)
      d.write(db, t, 3)
      assert.is_true(p:wait_count(dead, 4, 30), p:stdout() .. p:stderr())
      assert.is_true(p:wait_count(done, 8, 10), p:stdout() .. p:stderr())
      assert.same({ "1:0", "1:1", "1:2", "1:3" }, keys(dead(p)))
      for _, e in ipairs(dead(p)) do assert.equal(3, e.x) end
      local n = notifier()
      local rows = assert(n:dead_letters{ consumer = consumer })
      assert.equal(4, #rows)
      for _, r in ipairs(rows) do
        assert.equal(consumer, r.consumer)
        assert.equal(3, r.attempts)
        assert.matches("table: 0x", r.error) -- a non-string error, kept as text
      end
      -- the tool shows them
      local out = H.tmpfile(".out")
      assert(H.sh(fmt("%s --dead-letters %s %s >%s 2>&1", q(H.host_bin), q(d.url(db)), q(consumer), q(out))))
      assert.matches("4 dead letter%(s%)", H.slurp(out))
      -- fix the handler, reload (SIGHUP), replay
      mode("replay")
      p:kill("HUP")
      assert.is_true(p:wait_for("no dead letters left", 20), p:stdout() .. p:stderr())
      assert.matches("replaying 4\n", p:stdout())
      local after = {}
      for _, e in ipairs(done(p)) do if e.id == 1 then after[#after + 1] = e.v end end
      assert.same({ 0, 1, 2, 3 }, after) -- replayed in order, once each
      assert.same({}, assert(n:dead_letters{ consumer = consumer }))
      p:stop()
      d.forget(n, consumer)
      n:close()
    end)

    it("batch = 3: lists of up to 3 in commit order; a failed batch is retried whole, then dead-lettered", function()
      local consumer = "s30_batch"
      local function batches(p, what)
        local out = {}
        for ids in p:stdout():gmatch(what .. " ([%d:,]+)\n") do
          local list = {}
          for k in ids:gmatch("[^,]+") do list[#list + 1] = k end
          out[#out + 1] = list
        end
        return out
      end
      local function flat(list)
        local out = {}
        for _, b in ipairs(list) do
          assert.is_true(#b >= 1 and #b <= 3, table.concat(b, ","))
          table.move(b, 1, #b, #out + 1, out)
        end
        return out
      end
      for _, m in ipairs({ "failfirst", "key1" }) do
        local t = table_name() .. m
        d.create(db, t)
        mode(m)
        local p = track(H.host(BATCHER, { d.url(db), d.watched(t), consumer .. m, modefile }))
        assert.is_true(p:wait_for("ready ", 20), p:stderr())
        d.write(db, t, 5)
        local want = expected(5)
        if m == "failfirst" then
          assert.is_true(p:wait_count(function() return flat(batches(p, "batchdone")) end, 20, 30),
            p:stdout() .. p:stderr())
          H.sleep(0.3)
          assert.same(want, flat(batches(p, "batchdone"))) -- each once, in commit order
          local calls = batches(p, "batch %d+")
          assert.same(calls[1], calls[2]) -- the failed call came again, the same events
          assert.equal(#batches(p, "batchdone") + 1, #calls)
          assert.same({}, dead(p))
        else
          -- every event ends done or dead; how many die depends on how the batches fell
          assert.is_true(p:wait_count(function()
            local all = flat(batches(p, "batchdone"))
            for _, e in ipairs(dead(p)) do all[#all + 1] = e end
            return all
          end, #want, 30), p:stdout() .. p:stderr())
          H.sleep(0.5)
          local gone = {} -- every event of a failing batch is dead-lettered once, after 3 attempts
          for _, e in ipairs(dead(p)) do
            assert.equal(3, e.x)
            gone[#gone + 1] = e.id .. ":" .. e.v
          end
          local rest = {}
          for _, k in ipairs(want) do
            local is_dead = false
            for _, g in ipairs(gone) do is_dead = is_dead or g == k end
            if not is_dead then rest[#rest + 1] = k end
          end
          assert.same(rest, flat(batches(p, "batchdone")))
          for _, k in ipairs({ "1:0", "1:1", "1:2", "1:3" }) do
            local n = 0
            for _, g in ipairs(gone) do if g == k then n = n + 1 end end
            assert.equal(1, n, k .. " in " .. table.concat(gone, " "))
          end
          assert.equal(#want, #gone + #rest)
          -- replayed after the handler was fixed: each dead letter alone, a list of one
          p:stop()
          mode("replay")
          local p2 = track(H.host(BATCHER, { d.url(db), d.watched(t), consumer .. m, modefile }))
          assert.is_true(p2:wait_for("replaying " .. #gone .. "\n", 20), p2:stdout() .. p2:stderr())
          assert.is_true(p2:wait_count(function() return batches(p2, "batchdone") end, #gone, 20),
            p2:stdout() .. p2:stderr())
          local one = {}
          for _, b in ipairs(batches(p2, "batchdone")) do
            assert.equal(1, #b)
            one[#one + 1] = b[1]
          end
          assert.same(sorted(gone), sorted(one)) -- keys side by side (concurrency 8), each in order:
          local k1 = {}
          for _, k in ipairs(one) do if k:match("^1:") then k1[#k1 + 1] = k end end
          assert.same({ "1:0", "1:1", "1:2", "1:3" }, k1)
          p2:stop()
        end
        p:stop()
        forget(consumer .. m)
      end
    end)

    it("a dead letter that cannot be written holds the position, and is written once the table can be", function()
      local t, consumer = table_name(), "s30_dlbad"
      d.create(db, t)
      d.block_dead(db)
      mode("always")
      local p = watcher(t, consumer, 4, 2)
      d.write(db, t, 2) -- key 1's events always fail; key 2's are done
      assert.is_true(p:wait_for("cannot write the dead letter of insert on [^\n]* id 1 ", 20, "err"), p:stderr())
      assert.is_true(p:wait_count(done, 4, 20), p:stdout() .. p:stderr())
      assert.same({ "2:0", "2:1", "2:2", "2:3" }, keys(done(p)))
      assert.same({}, dead(p))
      -- kill -9 while it waits: the position had not moved past key 1's first event
      p:kill("KILL")
      p:wait()
      local p2 = watcher(t, consumer, 4, 2)
      assert.is_true(p2:wait_count(done, 4, 20), p2:stdout() .. p2:stderr())
      assert.same({ "2:0", "2:1", "2:2", "2:3" }, keys(done(p2)))
      -- the table is fixed (dropped: made again on the next attempt): each written once, in order
      d.unblock_dead(db)
      assert.is_true(p2:wait_count(dead, 4, 30), p2:stdout() .. p2:stderr())
      H.sleep(0.3)
      assert.same({ "1:0", "1:1", "1:2", "1:3" }, keys(dead(p2)))
      local n = notifier()
      assert.equal(4, #assert(n:dead_letters{ consumer = consumer }))
      p2:stop()
      -- everything is acknowledged now: a restart gets nothing again
      local p3 = watcher(t, consumer, 4, 2)
      H.sleep(1)
      assert.same({}, done(p3))
      assert.same({}, dead(p3))
      p3:stop()
      d.forget(n, consumer)
      n:close()
    end)

    it("dead-letters an error of any bytes: an invalid one becomes U+FFFD, the column takes it", function()
      local t, consumer = table_name(), "s30_bin"
      d.create(db, t)
      mode("binary")
      local p = watcher(t, consumer, 4, 2)
      d.write(db, t, 2)
      assert.is_true(p:wait_count(dead, 4, 30), p:stdout() .. p:stderr())
      assert.is_true(p:wait_count(done, 4, 10), p:stdout() .. p:stderr())
      local n = notifier()
      local rows = assert(n:dead_letters{ consumer = consumer })
      assert.equal(4, #rows)
      for _, r in ipairs(rows) do -- the error with its traceback (which ends the message at the NUL)
        assert.equal("bad \239\191\189 byte\nstack traceback:\n", r.error:sub(1, 30))
        assert.is_truthy(utf8.len(r.error))
      end
      p:stop()
      d.forget(n, consumer)
      n:close()
    end)

    it("kill -9 during a backoff and during a waiting handler: on restart those events come again", function()
      local t, consumer = table_name(), "s30_kill"
      d.create(db, t)
      mode("slow")
      local p = watcher(t, consumer, 8, "inf")
      d.write(db, t, 4)
      -- key 1 waits in its handler, key 2 in backoff; keys 3 and 4 go on
      assert.is_true(p:wait_for("start 2 0 3\n", 20), p:stdout() .. p:stderr())
      assert.is_true(p:wait_count(done, 8, 20), p:stdout() .. p:stderr())
      local first = keys(done(p))
      assert.same({ "3:0", "3:1", "3:2", "3:3", "4:0", "4:1", "4:2", "4:3" }, sorted(first))
      p:kill("KILL")
      p:wait()
      mode("ok")
      local p2 = watcher(t, consumer, 8, 3)
      assert.is_true(p2:wait_count(done, 8, 20), p2:stdout() .. p2:stderr())
      H.sleep(0.5)
      local again = keys(done(p2))
      -- keys 1 and 2 never finished: all their events come again; the cursor had not moved
      -- past key 1's first event, so what followed it may come again too (at least once)
      for _, k in ipairs({ "1:0", "1:1", "1:2", "1:3", "2:0", "2:1", "2:2", "2:3" }) do
        local seen = 0
        for _, g in ipairs(again) do if g == k then seen = seen + 1 end end
        assert.equal(1, seen, k .. " in " .. table.concat(again, " "))
      end
      p2:stop()
      forget(consumer)
    end)

    for _, sig in ipairs({ "TERM", "KILL" }) do
      it(fmt("an event waiting for a retry is delivered again after SIG%s, though later ones finished at once",
        sig), function()
        -- key 1 fails; keys 2 and 3, committed after it, finish without yielding: the cursor
        -- must stay before key 1's event, which the next start delivers again
        local t, consumer = table_name(), "s30_wait" .. sig:lower()
        d.create(db, t)
        mode("ok")
        watcher(t, consumer, 16, "inf"):stop() -- the consumer starts here
        for id = 1, 3 do d.insert(db, t, id) end -- three commits
        mode("nowait")
        local p = watcher(t, consumer, 16, "inf")
        assert.is_true(p:wait_for("done 3 0\n", 20), p:stdout() .. p:stderr())
        assert.is_true(p:wait_for("start 1 0 2\n", 20), p:stdout() .. p:stderr())
        assert.same({ "2:0", "3:0" }, keys(done(p)))
        p:kill(sig)
        p:wait()
        if sig == "TERM" then
          assert.matches("1 event%(s%) in flight when consumer \"" .. consumer .. "\" stopped are delivered again",
            p:stderr())
        end
        mode("ok")
        local p2 = watcher(t, consumer, 16, 3)
        assert.is_true(p2:wait_for("done 1 0\n", 20), p2:stdout() .. p2:stderr())
        H.sleep(0.3)
        -- key 1's event once; 2 and 3 may come again (at least once), nothing else
        local got = sorted(keys(done(p2)))
        assert.equal("1:0", got[1], table.concat(got, " "))
        for i = 2, #got do assert.is_truthy(got[i] == "2:0" or got[i] == "3:0", table.concat(got, " ")) end
        p2:stop()
        forget(consumer)
      end)
    end

    it("kill -9 with 64 handlers in flight: every event comes again once, none was acknowledged", function()
      local t, consumer = table_name(), "s30_kill64"
      d.create(db, t)
      mode("sleep60")
      local p = watcher(t, consumer, 64, 3)
      d.write(db, t, 64) -- 256 events; the 64 inserts start at once, the rest wait behind their key
      assert.is_true(p:wait_count(started, 64, 30), p:stdout() .. p:stderr())
      H.sleep(0.2)
      assert.equal(64, #started(p))
      assert.same({}, done(p))
      p:kill("KILL")
      p:wait()
      mode("ok")
      local p2 = watcher(t, consumer, 64, 3)
      assert.is_true(p2:wait_count(done, 256, 30), p2:stdout() .. p2:stderr())
      H.sleep(0.5)
      assert.same(sorted(expected(64)), sorted(keys(done(p2))))
      p2:stop()
      forget(consumer)
    end)

    it("durable events carry written_at, the journal row's time, for a catch-up seconds later; live ones not",
      function()
      local t, consumer = table_name(), "s30_written"
      d.create(db, t)
      local script = [[
        local sqlnotify = require("sqlnotify")
        io.stdout:setvbuf("line")
        local n = assert(sqlnotify.notifier{ url = arg[1], consumer = arg[3] ~= "-" and arg[3] or nil })
        n:watch(arg[2], "insert", { extra_columns = { "v" } })
        n:watch(arg[2], "update", { extra_columns = { "v" } })
        local function show(ev)
          print(string.format("w %d %d %s %.6f", ev.id, ev.extra_columns.v, ev.written_at and
            string.format("%.6f", ev.written_at) or "nil", ev.timestamp))
        end
        n:subscribe(arg[2], "insert", show)
        n:subscribe(arg[2], "update", show)
        assert(n:start())
        print("ready")
      ]]
      local function run(who)
        local p = track(H.host(script, { d.url(db), d.watched(t), who }))
        assert(p:wait_for("ready", 20), "the host did not start: " .. p:stderr())
        return p
      end
      local function written(p)
        local out = {}
        for id, v, at, ts in p:stdout():gmatch("w (%d+) (%d+) (%S+) (%S+)\n") do
          out[#out + 1] = { key = id .. ":" .. v, at = tonumber(at), ts = tonumber(ts) }
        end
        return out
      end
      run(consumer):stop() -- registered: what is written from now on is kept for it
      local live = run("-")
      local t0 = H.now()
      d.write(db, t, 2)
      local t1 = H.now()
      assert.is_true(live:wait_count(written, 8, 20), live:stdout() .. live:stderr())
      for _, e in ipairs(written(live)) do assert.is_nil(e.at, e.key) end
      live:stop()
      H.sleep(1.5)
      local p = run(consumer)
      assert.is_true(p:wait_count(written, 8, 20), p:stdout() .. p:stderr())
      local got = written(p)
      local ks = {}
      for i, e in ipairs(got) do
        ks[i] = e.key
        -- the database's clock is this machine's: written within the write, received 1.5 s later
        assert.is_true(e.at >= t0 - 0.5 and e.at <= t1 + 0.5, fmt("%s written at %.6f, not in [%.6f, %.6f]", e.key,
          e.at, t0, t1))
        assert.is_true(e.ts - e.at >= 1.4, fmt("%s written at %.6f, received at %.6f", e.key, e.at, e.ts))
      end
      assert.same(expected(2), ks)
      p:stop()
      forget(consumer)
    end)

    it("live: a reload hands the events in flight or waiting for a retry to the new handlers, in order", function()
      local t = table_name()
      d.create(db, t)
      mode("slow") -- key 1 waits 60 s in its handler, key 2 fails (retried without end); key 3 is done
      local script = H.tmpfile(".lua")
      local p = watcher(t, "-", 8, "inf", script)
      d.write(db, t, 3)
      assert.is_true(p:wait_for("start 2 0 3\n", 20), p:stdout() .. p:stderr())
      assert.is_true(p:wait_count(done, 4, 20), p:stdout() .. p:stderr())
      assert.same({ "3:0", "3:1", "3:2", "3:3" }, keys(done(p)))
      mode("ok")
      p:kill("HUP")
      assert.is_true(p:wait_count(done, 12, 20), p:stdout() .. p:stderr())
      H.sleep(0.3)
      local after = { table.unpack(keys(done(p)), 5) }
      assert.same(sorted({ "1:0", "1:1", "1:2", "1:3", "2:0", "2:1", "2:2", "2:3" }), sorted(after), p:stderr())
      for _, id in ipairs({ 1, 2 }) do -- each key in commit order
        local vs = {}
        for _, k in ipairs(after) do
          local i, v = k:match("(%d+):(%d+)")
          if tonumber(i) == id then vs[#vs + 1] = tonumber(v) end
        end
        assert.same({ 0, 1, 2, 3 }, vs)
      end
      assert.matches("8 live event%(s%) in flight go to the reloaded script's handlers", p:stderr())
      assert.not_matches("not handled at stop", p:stderr())
      p:stop()
    end)

    it("SIGTERM with handlers in flight: they finish within shutdown_grace, exit 0, not delivered again", function()
      local t, consumer = table_name(), "s30_term"
      d.create(db, t)
      mode("sleep1")
      local p = watcher(t, consumer, 8, 3)
      d.write(db, t, 8) -- 32 events: the first 8 (the inserts) start at once
      assert.is_true(p:wait_count(started, 8, 20), p:stdout() .. p:stderr())
      local t0 = H.now()
      p:kill("TERM")
      assert.equal(0, p:wait(10))
      assert.is_true(H.now() - t0 < 5)
      assert.same(sorted({ "1:0", "2:0", "3:0", "4:0", "5:0", "6:0", "7:0", "8:0" }), sorted(keys(done(p))))
      assert.matches("handlers in flight get up to 5 s", p:stderr())
      -- the restart delivers what had not started, and not what finished
      mode("ok")
      local p2 = watcher(t, consumer, 8, 3)
      assert.is_true(p2:wait_count(done, 24, 20), p2:stdout() .. p2:stderr())
      H.sleep(0.5)
      local want = expected(8)
      assert.same(sorted({ table.unpack(want, 9) }), sorted(keys(done(p2))))
      p2:stop()
      forget(consumer)
    end)

    it("SIGTERM: a handler that fails in the grace ends it as one that returns does, and comes again", function()
      local t, consumer = table_name(), "s30_termfail"
      d.create(db, t)
      mode("sleep1fail")
      local p = watcher(t, consumer, 8, 3)
      d.write(db, t, 2) -- 8 events: the 2 inserts start at once, each key's updates wait for it
      assert.is_true(p:wait_count(started, 2, 20), p:stdout() .. p:stderr())
      local t0 = H.now()
      p:kill("TERM")
      assert.equal(0, p:wait(10))
      -- the grace is 5 s, the retry 30 s on: it ended when the last handler did (it used to wait
      -- for the retry's timer, which did nothing, until the grace's end)
      assert.is_true(H.now() - t0 < 4, fmt("stopped after %.1f s", H.now() - t0))
      assert.same({ "2:0" }, keys(done(p)))
      mode("ok")
      local p2 = watcher(t, consumer, 8, 3)
      -- 2:0 comes again too: the cursor stops at 1:0, before it (at least once)
      assert.is_true(p2:wait_count(done, 8, 20), p2:stdout() .. p2:stderr())
      H.sleep(0.5)
      assert.same(sorted(expected(2)), sorted(keys(done(p2))))
      p2:stop()
      forget(consumer)
    end)
  end)
end

describe("delivery options", function()
  it("refuses concurrency and retry of the wrong type at the caller's line", function()
    local function err_of(opts)
      local ok, e = pcall(function()
        local n = sqlnotify.notifier(opts)
        return n
      end)
      assert.is_false(ok)
      return e
    end
    local base = function(extra)
      local o = { url = H.pg_url, use_logger = false }
      for k, v in pairs(extra) do o[k] = v end
      return o
    end
    assert.matches("30%-delivery_spec.lua:%d+: sqlnotify: concurrency must be a whole number from 1",
      err_of(base{ concurrency = "4" }))
    assert.matches("sqlnotify: concurrency must be", err_of(base{ concurrency = 0 }))
    assert.matches("sqlnotify: retry must be a table", err_of(base{ retry = 3 }))
    assert.matches("sqlnotify: unknown retry option \"tries\"", err_of(base{ retry = { tries = 3 } }))
    assert.matches("sqlnotify: retry.attempts must be a whole number", err_of(base{ retry = { attempts = 0 } }))
    assert.matches("sqlnotify: retry.max_delay must be", err_of(base{ retry = { delay = 5, max_delay = 1 } }))
    assert.matches("sqlnotify: shutdown_grace must be", err_of(base{ shutdown_grace = -1 }))
  end)

  it("refuses a batch that is not a whole number from 1 at the caller's line", function()
    local db = H.fresh_sqlite("delivery30b")
    H.sqlite_cli(db, "CREATE TABLE b (id integer PRIMARY KEY);")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, use_logger = false })
    n:watch("b", "insert")
    for _, bad in ipairs({ 0, "3", 1.5, 100001 }) do
      local ok, e = pcall(function() n:subscribe("b", "insert", { batch = bad }, function() end) end)
      assert.is_false(ok)
      assert.matches("30%-delivery_spec.lua:%d+: sqlnotify: subscribe batch must be a whole number from 1 to 100000, got "
        .. (type(bad) == "number" and tostring(bad) or type(bad)):gsub("%p", "%%%0"), e)
    end
    n:close()
  end)

  it("sleep outside a handler says where it may be called", function()
    local ok, e = pcall(sqlnotify.sleep, 0.01)
    assert.is_false(ok)
    assert.matches("sqlnotify: sleep must be called from a handler or a coroutine of sqlnotify.spawn", e)
  end)
end)

-- An UPDATE that changes a row's key ends the old key and starts the new one: with
-- concurrency, it waits for the old key's events before it as well as the new key's. It used to
-- be ordered with its new key only, so it ran beside an earlier event of the old key, and a
-- handler mirroring the table (delete the old key, write the new) saw the old key's earlier
-- write land after its delete: a row the table no longer has.
describe("an UPDATE of the key with concurrency (PostgreSQL)", function()
  local n
  before_each(function()
    H.fresh_schema("spec30k")
    H.psql("CREATE TABLE spec30k.t (id int PRIMARY KEY, v text); INSERT INTO spec30k.t VALUES (1, 'v'), (2, 'v');")
  end)
  after_each(function()
    if n then
      n:drop_consumer("s30key")
      n:close()
    end
    H.drop_schema("spec30k")
  end)

  it("runs after the old key's events before it, and before the new key's after it", function()
    n = assert(sqlnotify.notifier{ url = H.pg_url, consumer = "s30key", concurrency = 8,
      use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil })
    n:watch("spec30k.t", "update", { extra_columns = { "v" } })
    local log = {}
    n:subscribe("spec30k.t", "update", function(ev)
      local what = fmt("%d%s %s", ev.id, ev.old_id and fmt(" (was %d)", ev.old_id) or "", ev.extra_columns.v)
      log[#log + 1] = "start " .. what
      if ev.extra_columns.v == "slow" then sqlnotify.sleep(0.3) end
      log[#log + 1] = "done " .. what
    end)
    assert(n:start())
    H.psql("BEGIN; UPDATE spec30k.t SET v = 'slow' WHERE id = 1; UPDATE spec30k.t SET id = 101, v = 'moved' WHERE id = 1;"
      .. " UPDATE spec30k.t SET v = 'after' WHERE id = 101; UPDATE spec30k.t SET id = 1, v = 'back' WHERE id = 2;"
      .. " COMMIT;")
    assert.is_true(H.run_until(function() return #log >= 8 end, 10), table.concat(log, "\n"))
    H.run_for(0.2)
    assert.same({
      "start 1 slow",
      "done 1 slow",
      "start 101 (was 1) moved",
      "done 101 (was 1) moved",
      "start 101 after",
      "done 101 after",
      "start 1 (was 2) back", -- key 1 again: after the event that moved key 1 away
      "done 1 (was 2) back",
    }, log)
  end)
end)

describe("ev:json()", function()
  it("gives the event as one JSON object: its fields, SQL NULL as null", function()
    local db = H.fresh_sqlite("delivery30j")
    H.sqlite_cli(db, "CREATE TABLE j (id integer PRIMARY KEY, name text, x real, y real);")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, use_logger = false, nulls = true })
    n:watch("j", "insert", { extra_columns = { "name", "x", "y" } })
    local got
    n:subscribe("j", "insert", function(ev) got = ev:json() sqlnotify.stop() end)
    assert(n:start())
    H.sqlite_cli(db, "INSERT INTO j VALUES (7, NULL, 1.5, 2.25);")
    sqlnotify.run{ timeout = 10 }
    n:close()
    local t = require("cjson").decode((assert(got, "no event")))
    assert.same({ id = 7, schema = "main", table = "j", operation = "insert", channel = t.channel, key = { id = 7 },
      extra_columns = { name = require("cjson").null, x = 1.5, y = 2.25 }, truncated = false,
      timestamp = t.timestamp }, t)
    assert.matches("^sqlnotify_", t.channel)
    assert.is_number(t.timestamp)
    local ok, e = pcall(function() local ev = setmetatable({}, sqlnotify._event_meta) return ev.json() end)
    assert.is_false(ok)
    assert.matches("sqlnotify: json is a method: call ev:json%(%)", e)
  end)
end)

describe("n:query in handlers on PostgreSQL (the real host)", function()
  setup(function() H.fresh_schema("spec30q") end)
  teardown(function() H.drop_schema("spec30q") end)

  it("yields while it runs; side-by-side handlers take turns, each transaction its own", function()
    H.psql("CREATE TABLE spec30q.src (id int PRIMARY KEY); CREATE TABLE spec30q.log (k int, tx bigint)")
    local p = H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], concurrency = 4 })
n:watch("spec30q.src", "insert")
local ticks = 0
sqlnotify.every(0.02, function() ticks = ticks + 1 end)
n:subscribe("spec30q.src", "insert", function(ev)
  assert(n:query("BEGIN"))
  assert(n:query("INSERT INTO spec30q.log VALUES ($1, txid_current())", ev.id))
  local before = ticks
  assert(n:query("SELECT pg_sleep(0.2)"))
  assert(n:query("INSERT INTO spec30q.log VALUES ($1, txid_current())", ev.id))
  print(string.format("ticked %d %s", ev.id, ticks > before and "yes" or "no"))
  if ev.id == 3 then return end -- returns with its transaction open
  local rows, err = n:query("SELECT nosuch FROM spec30q.log")
  print(string.format("error %d %s", ev.id, tostring(err):match("^sqlnotify: [^\n]*nosuch") and "named" or tostring(err)))
  assert(n:query("ROLLBACK TO SAVEPOINT nothing") == nil) -- the failed statement aborted the transaction
  assert(n:query("ROLLBACK"))
  assert(n:query("BEGIN"))
  assert(n:query("INSERT INTO spec30q.log VALUES ($1, txid_current()), ($1, txid_current())", ev.id))
  assert(n:query("COMMIT"))
  print("done " .. ev.id)
end)
assert(n:start())
print("outside " .. n:query("SELECT 41 + 1 AS x")[1].x)
print("ready")
]], { H.pg_url })
    assert.is_true(p:wait_for("ready", 20), p:stderr())
    H.psql("INSERT INTO spec30q.src SELECT generate_series(1, 6)")
    assert.is_true(p:wait_count(function(x) return { x:stdout():match("done 6\n") } end, 1, 30), p:stdout() .. p:stderr())
    H.sleep(0.3)
    p:stop()
    local out = p:stdout()
    assert.matches("outside 42\n", out)
    for id = 1, 6 do
      assert.matches("ticked " .. id .. " yes\n", out) -- the loop ran while the statement did
      if id ~= 3 then
        assert.matches("error " .. id .. " named\n", out)
        assert.matches("done " .. id .. "\n", out)
      end
    end
    assert.not_matches("done 3\n", out)
    -- each handler's rows came from one transaction (none ran inside another's); key 3's was rolled back
    assert.equal("1|2|1\n2|2|1\n4|2|1\n5|2|1\n6|2|1\n",
      H.psql("SELECT k, count(*), count(DISTINCT tx) FROM spec30q.log GROUP BY k ORDER BY k"))
    local _, warns = p:stderr():gsub("a handler ended with the transaction it opened with n:query still open: rolled back", "")
    assert.equal(1, warns)
  end)
end)

describe("n:query in a handler on SQLite", function()
  it("runs the statement (blocking: a local file) and returns its rows", function()
    local db = H.fresh_sqlite("delivery30q")
    H.sqlite_cli(db, "CREATE TABLE q (id integer PRIMARY KEY);")
    local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, use_logger = false })
    n:watch("q", "insert")
    local got, err
    n:subscribe("q", "insert", function()
      got, err = n:query("SELECT count(*) AS c, ? AS p FROM q", "x")
      sqlnotify.stop()
    end)
    assert(n:start())
    H.sqlite_cli(db, "INSERT INTO q VALUES (1), (2);")
    sqlnotify.run()
    n:close()
    assert.is_nil(err)
    assert.same({ { c = 2, p = "x" } }, got)
  end)
end)
