-- PostgreSQL durable mode (a notifier with `consumer`), end to end through the real host:
-- catch-up after downtime, kill -9 under a writer, a long open transaction, start_at, two
-- consumers and drop_consumer, a consumer away past retention, one that stopped coming (named
-- in the log), each consumer's own retention, operators of a writer's search_path, a reload,
-- a server restart, the journal's id sequence cached or moved back, the journal dropped.
-- The journal lives in the database's "sqlnotify" schema; every consumer here is named
-- s21_* and dropped after its test, every table lives in the schema spec21.
local H = require("helper")

local S = "spec21"
local fmt = string.format
local URL = H.pg_url

-- A host script: prints "k id seq" for each insert (and "u k id seq" for each update).
local READER = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, start_at = arg[1], arg[2], arg[3], arg[4]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil,
  start_at = start_at ~= "-" and start_at or nil })
n:watch(tbl, "insert", { extra_columns = { "k" } })
n:watch(tbl, "update", { extra_columns = { "k" } })
n:subscribe(tbl, "insert", function(ev)
  io.write(string.format("i %d %d %d\n", ev.extra_columns.k, ev.id, ev.seq or 0))
end)
n:subscribe(tbl, "update", function(ev)
  io.write(string.format("u %d %d %d\n", ev.extra_columns.k, ev.id, ev.seq or 0))
end)
assert(n:start())
print("ready")
]]

local procs = {}
local function track(p) procs[#procs + 1] = p return p end

local function reader(tbl, consumer, start_at, url)
  local p = track(H.host(READER, { url or URL, S .. "." .. tbl, consumer or "-", start_at or "-" }))
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  return p
end

-- The events a host printed: list of {op=, k=, id=, seq=}.
local function events(p)
  local out = {}
  for op, k, id, seq in p:stdout():gmatch("([iu]) (%d+) (%d+) (%d+)\n") do
    out[#out + 1] = { op = op, k = tonumber(k), id = tonumber(id), seq = tonumber(seq) }
  end
  return out
end

local function wait_events(p, n, timeout) return p:wait_count(events, n, timeout) end

-- The events a host printed, each row's first only.
local function distinct(p)
  local set, out = {}, {}
  for _, e in ipairs(events(p)) do
    if not set[e.k] then set[e.k] = true out[#out + 1] = e end
  end
  return out
end

local function ks(list) return H.pluck(list, "k") end

local function fresh(tbl)
  H.psql(fmt("DROP TABLE IF EXISTS %s.%s; CREATE TABLE %s.%s (id bigserial PRIMARY KEY, k int NOT NULL);",
    S, tbl, S, tbl))
end

local function sql(text) return H.psql(text) end

-- A login role of a test's own, and what it owns, gone.
local function drop_role(role)
  sql(fmt([[DO $$ BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN DROP OWNED BY %s; DROP ROLE %s; END IF;
  END $$]], role, role, role))
end

-- Rows of this table's channels still in the journal.
local function journal_rows(tbl)
  return tonumber(sql(fmt("SELECT count(*) FROM sqlnotify.journal WHERE channel LIKE 'sqlnotify_%s_%s_%%'",
    S, tbl)):match("%d+"))
end

-- What a background maintenance pass would do after the rotation period, twice: switch
-- tables, then truncate the ones nobody holds.
local function maintain()
  sql("UPDATE sqlnotify.state SET switched_at = now() - interval '1 hour';"
    .. " SELECT sqlnotify.maintain(604800, 20); SELECT sqlnotify.maintain(604800, 20);"
    .. " UPDATE sqlnotify.state SET switched_at = now() - interval '1 hour';"
    .. " SELECT sqlnotify.maintain(604800, 20); SELECT sqlnotify.maintain(604800, 20);")
end

describe("PostgreSQL durable mode", function()
  local admin
  setup(function()
    H.fresh_schema(S)
  end)
  teardown(function()
    H.drop_schema(S)
  end)
  before_each(function() admin = H.pg_notifier() end)
  after_each(function()
    H.reap(procs, admin, "s21_")
    admin:close()
  end)

  local function consumer(name)
    for _, c in ipairs(assert(admin:consumers())) do
      if c.name == name then return c end
    end
  end

  -- Truncation waits for every consumer of the database: another one (not ours) holds rows.
  local function others()
    for _, c in ipairs(assert(admin:consumers())) do
      if not c.name:find("^s21_") then return c.name end
    end
  end

  it("catches up after downtime: 500 rows committed while the host was stopped arrive in commit order", function()
    fresh("t1")
    local p = reader("t1", "s21_catchup")
    sql(fmt("INSERT INTO %s.t1 (k) VALUES (0)", S))
    assert.is_true(wait_events(p, 1))
    p:stop()
    local lines = {}
    for i = 1, 500 do lines[i] = fmt("INSERT INTO %s.t1 (k) VALUES (%d);", S, i) end
    sql(table.concat(lines, "\n"))
    local c = consumer("s21_catchup")
    assert.are.equal(500, c.lag_events)
    assert.is_true(c.lag_seconds >= 0)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", c.last_seen)
    p = reader("t1", "s21_catchup")
    assert.is_true(wait_events(p, 500), p:stderr())
    assert.is_true(H.run_until(function() return consumer("s21_catchup").lag_events == 0 end, 20))
    assert.are.equal(1, consumer("s21_catchup").members)
    p:stop()
    local got = events(p)
    assert.are.equal(500, #got)
    for i, e in ipairs(got) do
      assert.are.equal(i, e.k)
      assert.is_true(i == 1 or e.seq > got[i - 1].seq)
    end
  end)

  it("loses nothing when the host is killed with kill -9 while another process commits 2,000 rows", function()
    fresh("t2")
    local p = reader("t2", "s21_kill")
    local lines = {}
    for i = 1, 2000 do
      lines[#lines + 1] = fmt("INSERT INTO %s.t2 (k) VALUES (%d);", S, i)
      if i % 10 == 0 then lines[#lines + 1] = fmt("UPDATE %s.t2 SET k = k WHERE k = %d;", S, i - 5) end
      if i % 20 == 0 then lines[#lines + 1] = "SELECT pg_sleep(0.02);" end
    end
    local file, done = H.tmpfile(".sql"), H.tmpfile(".done")
    H.spit(file, table.concat(lines, "\n"))
    H.sh(fmt("(%s -X -q %s -f %s >/dev/null 2>&1; echo $? >%s) &", H.psql_bin, H.shell_quote(URL),
      H.shell_quote(file), H.shell_quote(done)))
    assert.is_true(wait_events(p, 300), p:stderr())
    p:kill("KILL")
    p:wait()
    local first = events(p)
    local p2 = reader("t2", "s21_kill")
    local deadline = H.now() + 60
    while H.slurp(done) == "" and H.now() < deadline do H.sleep(0.05) end
    assert.are.equal("0\n", H.slurp(done))
    local function tally()
      local seen = {}
      for _, list in ipairs { first, events(p2) } do
        for _, e in ipairs(list) do
          local key = e.op .. e.k
          seen[key] = (seen[key] or 0) + 1
        end
      end
      return seen
    end
    local function all()
      local seen = tally()
      for i = 1, 2000 do if not seen["i" .. i] then return false end end
      for i = 10, 2000, 10 do if not seen["u" .. (i - 5)] then return false end end
      return true
    end
    deadline = H.now() + 60
    while not all() and H.now() < deadline do H.sleep(0.05) end
    assert.is_true(all(), "missing events after the restart")
    p2:stop()
    local dup = 0
    for _, c in pairs(tally()) do dup = dup + c - 1 end
    print(fmt("\n  kill -9 after %d events; all 2,200 events delivered, %d twice", #first, dup))
    assert.is_true(dup <= 500) -- at most the page in flight (500 rows)
    -- each row's changes in commit order: its update after its insert, in each process
    for _, list in ipairs { first, events(p2) } do
      local pos = {}
      for i, e in ipairs(list) do
        if e.op == "i" then pos[e.id] = i end
        if e.op == "u" and pos[e.id] then assert.is_true(pos[e.id] < i, "update before insert") end
      end
    end
    -- and the second process delivers in commit order (single-row transactions: id order)
    local second, last, seen = events(p2), 0, {}
    for _, e in ipairs(second) do
      if e.op == "i" and not seen[e.k] then -- a page redelivered after a reconnect repeats itself
        seen[e.k] = true
        assert.is_true(e.k > last, fmt("commit order after the restart: %d after %d (seq %d)", e.k, last, e.seq))
        last = e.k
      end
    end
  end)

  it("loses no row of writers committing side by side, each writer's rows in its commit order", function()
    -- Transactions that are running when the reader takes a snapshot, and whose xids are
    -- above the snapshot's xmax (none below them has finished yet), hold ids the reader has
    -- passed: they must still be read when they commit.
    fresh("t11")
    local p = reader("t11", "s21_side")
    local writers, each = 6, 400
    local dones = {}
    for w = 1, writers do
      dones[w] = H.tmpfile(".done")
      H.sh(fmt("(%s -X -q %s -c %s >/dev/null 2>&1; echo $? >%s) &", H.psql_bin, H.shell_quote(URL),
        H.shell_quote(fmt("DO $$ BEGIN FOR i IN 1..%d LOOP INSERT INTO %s.t11 (k) VALUES (%d * 10000 + i);"
          .. " COMMIT; END LOOP; END $$", each, S, w)), H.shell_quote(dones[w])))
    end
    assert.is_true(H.run_until(function()
      for w = 1, writers do if H.slurp(dones[w]) == "" then return false end end
      return true
    end, 120))
    for w = 1, writers do assert.are.equal("0\n", H.slurp(dones[w])) end
    p:wait_count(distinct, writers * each, 30)
    p:stop()
    local by = {}
    for _, e in ipairs(events(p)) do
      local w = e.k // 10000
      by[w] = by[w] or {}
      by[w][#by[w] + 1] = e.k % 10000
    end
    for w = 1, writers do
      local want = {}
      for i = 1, each do want[i] = i end
      assert.are.same(want, by[w], "writer " .. w)
    end
  end)

  it("does not hold back rows behind a transaction left open, whose own rows arrive after it commits", function()
    fresh("t3")
    local p = reader("t3", "s21_open")
    local holder = H.pg_notifier()
    assert(holder:query("SELECT pg_advisory_lock(212121)"))
    -- the open transaction: inserts k = 100, then waits on the lock we hold
    local done = H.tmpfile(".done")
    local file = H.tmpfile(".sql")
    H.spit(file, fmt("BEGIN; INSERT INTO %s.t3 (k) VALUES (100); SELECT pg_advisory_lock(212121);"
      .. " SELECT pg_advisory_unlock(212121); COMMIT;", S))
    H.sh(fmt("(%s -X -q %s -f %s >/dev/null 2>&1; echo $? >%s) &", H.psql_bin, H.shell_quote(URL),
      H.shell_quote(file), H.shell_quote(done)))
    assert.is_true(H.run_until(function()
      return tonumber(sql(fmt("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        .. " AND query LIKE '%%pg_advisory_lock(212121)%%' AND pid <> pg_backend_pid()"))) == 1
    end, 20))
    for i = 1, 5 do sql(fmt("INSERT INTO %s.t3 (k) VALUES (%d)", S, i)) end
    assert.is_true(wait_events(p, 5), p:stderr())
    H.sleep(3) -- the transaction stays open for 3 s in all
    assert.are.same({ 1, 2, 3, 4, 5 }, ks(events(p)))
    assert.are.equal("", H.slurp(done)) -- still open
    assert(holder:query("SELECT pg_advisory_unlock(212121)"))
    holder:close()
    assert.is_true(wait_events(p, 6), p:stderr())
    sql(fmt("INSERT INTO %s.t3 (k) VALUES (6)", S))
    assert.is_true(wait_events(p, 7), p:stderr())
    p:stop()
    assert.are.equal("0\n", H.slurp(done))
    assert.are.same({ 1, 2, 3, 4, 5, 100, 6 }, ks(events(p)))
  end)

  it("takes the rows of a writer with no grants on the journal, which cannot set a row's transaction or time",
    function()
    local role = "sn_spec21_writer"
    drop_role(role)
    fresh("t9")
    local p = reader("t9", "s21_grants")
    sql(fmt([[CREATE ROLE %s LOGIN; GRANT USAGE ON SCHEMA %s TO %s; GRANT SELECT, INSERT, UPDATE ON %s.t9 TO %s;
      GRANT USAGE ON SEQUENCE %s.t9_id_seq TO %s;]], role, S, role, S, role, S, role))
    local url = H.pg_url_as(role)
    local ok, err = pcall(function()
      H.psql(fmt("INSERT INTO %s.t9 (k) VALUES (1); INSERT INTO %s.t9 (k) VALUES (2);"
        .. " UPDATE %s.t9 SET k = 3 WHERE k = 1;", S, S, S), url)
      assert.is_true(wait_events(p, 3), p:stderr())
      local got = events(p)
      assert.are.same({ "i", "i", "u" }, H.pluck(got, "op"))
      assert.are.same({ 1, 2, 3 }, ks(got))
      -- a journal row with a transaction id of its choosing (one never visible would hold
      -- every table back forever) or a time of its choosing is refused
      for _, col in ipairs { "xid", "created_at" } do
        local okw, why = pcall(H.psql, fmt("INSERT INTO sqlnotify.journal_0 (channel, payload, %s) VALUES"
          .. " ('sqlnotify_x', '{}', %s)", col, col == "xid" and "'99999999'" or "now()"), url)
        assert.is_false(okw)
        assert.matches("permission denied for table journal_0", why)
      end
      -- nor may it change or remove rows
      local okd, whyd = pcall(H.psql, "DELETE FROM sqlnotify.journal_0", url)
      assert.is_false(okd)
      assert.matches("permission denied for table journal_0", whyd)
    end)
    p:stop()
    drop_role(role)
    assert(ok, err)
  end)

  it("reads on as a role that may not maintain the journal, and says so once, not at every pass", function()
    local role = "sn_spec21_reader"
    drop_role(role)
    fresh("t14")
    sql(fmt("CREATE ROLE %s LOGIN; GRANT USAGE, CREATE ON SCHEMA %s TO %s; ALTER TABLE %s.t14 OWNER TO %s;",
      role, S, role, S, role))
    local ok, err = pcall(function()
      -- reading is the journal owner's, and of the roles it lets
      local no = track(H.host(READER, { H.pg_url_as(role), S .. ".t14", "s21_notowner", "-" }))
      local code = no:wait(20)
      assert.is_truthy(code and code ~= 0, "the host did not stop: " .. no:stderr())
      assert.matches('this role may not read the durable journal %(schema "sqlnotify"%): [^\n]*permission denied for'
        .. " function register %(its owner may let it: GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA sqlnotify TO"
        .. " <role>%)", no:stderr())
      sql(fmt("GRANT EXECUTE ON FUNCTION sqlnotify.register(text, boolean, int, float8),"
        .. " sqlnotify.lease(text, text, float8, int, int[], bigint[], text, bigint),"
        .. " sqlnotify.fetch(text, text, int[], bigint[], text, bigint, text[], int),"
        .. " sqlnotify.leave(text, text, int[], bigint[], text, bigint) TO %s", role))
      local started = H.now()
      local p = reader("t14", "s21_notowner", nil, H.pg_url_as(role))
      sql(fmt("INSERT INTO %s.t14 (k) VALUES (1), (2)", S))
      assert.is_true(wait_events(p, 2), p:stderr())
      assert.is_true(p:wait_for("journal maintenance failed on [^\n]*permission denied for function maintain;"
        .. " only the journal's owner may maintain it: rows are removed while a reader of that role runs", 20, "err"),
        p:stderr())
      H.sleep(math.max(0, started + 7 - H.now())) -- a pass at 1 s, then every 5 s
      p:stop()
      local _, times = p:stderr():gsub("journal maintenance failed", "")
      assert.are.equal(1, times)
      assert.are.same({ 1, 2 }, ks(events(p)))
      -- granted journal 9's fetch only: it reads through that one, and says so once
      local _, said = p:stderr():gsub('consumer "s21_notowner": this role may not call sqlnotify.fetch_at %(journal 10%)',
        "")
      assert.are.equal(1, said, p:stderr())
      -- and journal 8's lease: its channels unsaid, said once
      _, said = p:stderr():gsub('consumer "s21_notowner": this role may not call sqlnotify.lease%(text, text, float8, '
        .. "int, int%[%], bigint%[%], text, bigint, int%[%], text%[%]%) %(journal 12%), so its members are not told "
        .. "apart by the tables they watch %(one that watches fewer passes the others' rows%)", "")
      assert.are.equal(1, said, p:stderr())
    end)
    H.reap(procs, admin, "s21_notowner")
    drop_role(role)
    assert(ok, err)
  end)

  it("starts a new consumer at the end or at the beginning of the journal", function()
    fresh("t4")
    local p0 = reader("t4", "s21_first") -- installs the triggers
    sql(fmt("INSERT INTO %s.t4 (k) VALUES (1), (2)", S))
    assert.is_true(wait_events(p0, 2))
    p0:stop()
    local pe = reader("t4", "s21_end", "end")
    local pb = reader("t4", "s21_begin", "beginning")
    sql(fmt("INSERT INTO %s.t4 (k) VALUES (3)", S))
    assert.is_true(wait_events(pe, 1) and wait_events(pb, 3))
    pe:stop()
    pb:stop()
    assert.are.same({ 3 }, ks(events(pe)))
    assert.are.same({ 1, 2, 3 }, ks(events(pb)))
  end)

  it("gives every event to each of two consumers; dropping one releases the rows only it held", function()
    if others() then pending("consumer " .. others() .. " holds journal rows in this database") return end
    fresh("t5")
    local p1 = reader("t5", "s21_one")
    local p2 = reader("t5", "s21_two")
    local rows = {}
    for i = 1, 100 do rows[i] = fmt("(%d)", i) end
    sql(fmt("INSERT INTO %s.t5 (k) VALUES %s", S, table.concat(rows, ", ")))
    assert.is_true(wait_events(p1, 100) and wait_events(p2, 100))
    assert.is_true(H.run_until(function() return consumer("s21_two").lag_events == 0 end, 20))
    p2:stop()
    sql(fmt("INSERT INTO %s.t5 (k) SELECT g FROM generate_series(101, 150) g", S))
    assert.is_true(wait_events(p1, 150))
    assert.is_true(H.run_until(function() return consumer("s21_one").lag_events == 0 end, 20))
    assert.are.equal(50, consumer("s21_two").lag_events)
    maintain()
    -- the 50 rows only s21_two has not read are kept (rows go by whole table: some read ones may stay too)
    assert.are.equal("50\n", sql(fmt("SELECT count(*) FROM sqlnotify.journal WHERE channel LIKE 'sqlnotify_%s_t5_insert#%%'"
      .. " AND (payload::jsonb->'x'->>'k')::int > 100", S)))
    assert.is_true(admin:drop_consumer("s21_two"))
    assert.is_false(admin:drop_consumer("s21_two"))
    assert.is_nil(consumer("s21_two"))
    maintain()
    assert.are.equal(0, journal_rows("t5"))
    p1:stop()
    assert.are.equal(150, #events(p1))
    assert.are.equal(100, #events(p2))
    assert.are.same(ks(events(p2)), { table.unpack(ks(events(p1)), 1, 100) })
  end)

  it("tells a consumer that was away past its retention which rows it missed", function()
    if others() then pending("consumer " .. others() .. " holds journal rows in this database") return end
    fresh("t6")
    local p = reader("t6", "s21_gone")
    sql(fmt("INSERT INTO %s.t6 (k) VALUES (1)", S))
    assert.is_true(wait_events(p, 1))
    assert.is_true(H.run_until(function() return consumer("s21_gone").lag_events == 0 end, 20))
    p:stop()
    sql(fmt("INSERT INTO %s.t6 (k) VALUES (2), (3);"
      .. " UPDATE sqlnotify.consumers SET last_seen = now() - interval '8 days' WHERE name = 's21_gone'", S))
    local lo, hi = sql(fmt("SELECT min(id), max(id) FROM sqlnotify.journal WHERE channel LIKE 'sqlnotify_%s_t6_insert#%%'"
      .. " AND id > (SELECT max(id) FROM sqlnotify.journal WHERE payload LIKE '%%\"k\": 1}%%'"
      .. " AND channel LIKE 'sqlnotify_%s_t6_insert#%%')", S, S)):match("(%d+)|(%d+)")
    assert.is_truthy(lo)
    maintain()
    assert.are.equal(0, journal_rows("t6"))
    local p2 = reader("t6", "s21_gone")
    assert.is_true(p2:wait_for(fmt('consumer "s21_gone" was away longer than the journal kept its rows: 2 events'
      .. " %%(ids %s to %s%%) were removed before it read them and are not delivered", lo, hi), 20, "err"),
      p2:stderr())
    sql(fmt("INSERT INTO %s.t6 (k) VALUES (4)", S))
    assert.is_true(wait_events(p2, 1))
    p2:stop()
    assert.are.same({ 4 }, ks(events(p2)))
  end)

  it("names, once, a consumer that stopped coming and so holds back the journal's rows", function()
    fresh("t13")
    local gone = reader("t13", "s21_left")
    gone:stop()
    sql("UPDATE sqlnotify.consumers SET last_seen = now() - interval '2 hours' WHERE name = 's21_left'")
    local p = reader("t13", "s21_here")
    local said = "consumers not seen for over 10 minutes still hold the journal's rows on [^\n]*\"s21_left\""
      .. " %(last seen %d%d%d%d%-%d%d%-%d%dT%d%d:%d%dZ%)[^\n]*n:drop_consumer%(name%) releases one that is gone"
    assert.is_true(p:wait_for(said, 20, "err"), p:stderr())
    -- maintenance runs every 5 s; the next passes do not say it again within the hour
    sql(fmt("INSERT INTO %s.t13 (k) VALUES (1)", S))
    assert.is_true(wait_events(p, 1))
    H.sleep(6)
    p:stop()
    local _, times = p:stderr():gsub("s21_left", "")
    assert.are.equal(1, times)
    assert.is_nil(p:stderr():find("s21_here\" %(last seen"))
  end)

  it("keeps a consumer's rows for its own retention, whatever the retention of the reader that maintains", function()
    fresh("t15")
    local p = reader("t15", "s21_keep")
    p:stop()
    sql(fmt("UPDATE sqlnotify.consumers SET last_seen = now() - interval '1 minute' WHERE name = 's21_keep';"
      .. " INSERT INTO %s.t15 (k) SELECT g FROM generate_series(1, 5) g;", S))
    -- what a reader with consumer_retention = 30 does at its maintenance passes
    sql("UPDATE sqlnotify.state SET switched_at = now() - interval '1 hour';"
      .. " SELECT sqlnotify.maintain(30, 20); SELECT sqlnotify.maintain(30, 20);"
      .. " UPDATE sqlnotify.state SET switched_at = now() - interval '1 hour';"
      .. " SELECT sqlnotify.maintain(30, 20); SELECT sqlnotify.maintain(30, 20);")
    assert.are.equal(5, journal_rows("t15"))
    p = reader("t15", "s21_keep")
    assert.is_true(wait_events(p, 5), p:stderr())
    p:stop()
    assert.are.same({ 1, 2, 3, 4, 5 }, ks(events(p)))
    assert.is_nil(p:stderr():find("was away longer"))
  end)

  it("runs no operator of the writer's search_path in a trigger, where one would match the types exactly", function()
    sql(fmt([[CREATE TABLE %s.t16 (code varchar(20) PRIMARY KEY, k int NOT NULL);
      CREATE TABLE %s.hits (what text);
      CREATE FUNCTION %s.evil_mod(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO spec21.hits VALUES ('%%'); RETURN pg_catalog.int8mod($1, $2); END $$;
      CREATE OPERATOR %s.%% (leftarg = bigint, rightarg = integer, function = %s.evil_mod);
      CREATE FUNCTION %s.evil_mul(float8, integer) RETURNS float8 LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO spec21.hits VALUES ('*'); RETURN pg_catalog.float8mul($1, $2); END $$;
      CREATE OPERATOR %s.* (leftarg = float8, rightarg = integer, function = %s.evil_mul);
      CREATE FUNCTION %s.evil_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO spec21.hits VALUES ('='); RETURN pg_catalog.texteq($1, $2); END $$;
      CREATE OPERATOR %s.= (leftarg = varchar, rightarg = varchar, function = %s.evil_eq);]],
      S, S, S, S, S, S, S, S, S, S, S))
    local p = track(H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s21_ops" })
for _, op in ipairs { "insert", "update" } do
  n:watch("spec21.t16", op, { extra_columns = { "k" } })
  n:subscribe("spec21.t16", op, function(ev)
    io.write(string.format("%s %s %s %d\n", op, ev.id, ev.old_id or "-", ev.extra_columns.k))
  end)
end
assert(n:start())
print("ready")
]], { URL }))
    assert(p:wait_for("ready\n", 20), p:stderr())
    sql(fmt("SET search_path = %s, public; INSERT INTO t16 VALUES ('a', 1); UPDATE t16 SET code = 'b', k = 2;", S))
    assert.is_true(p:wait_for("update b a 2\n", 20), p:stdout() .. p:stderr())
    p:stop()
    assert.are.equal("insert a - 1\nupdate b a 2\n", p:stdout():gsub("ready\n", ""))
    assert.are.equal("0", sql(fmt("SELECT count(*) FROM %s.hits", S)):match("%d+"))
  end)

  it("keeps the consumer's position across a reload of the script (SIGHUP)", function()
    fresh("t7")
    local p = reader("t7", "s21_reload")
    sql(fmt("INSERT INTO %s.t7 (k) VALUES (1), (2)", S))
    assert.is_true(wait_events(p, 2))
    p:kill("HUP")
    assert.is_true(p:wait_for("ready\n.*ready\n", 20), p:stderr())
    sql(fmt("INSERT INTO %s.t7 (k) VALUES (3), (4)", S))
    assert.is_true(wait_events(p, 4))
    p:stop()
    assert.are.same({ 1, 2, 3, 4 }, ks(events(p)))
  end)

  it("loses nothing across a crash and restart of the PostgreSQL server (a throwaway cluster)", function()
    local cluster, why = H.pg_cluster(fmt("sqlnotify_spec21_%06d", math.random(0, 999999)), 6000 + math.random(0, 499))
    if not cluster then pending("cannot create a throwaway PostgreSQL cluster here: " .. why) return end
    finally(cluster.drop)
    local url, port = cluster.url, cluster.port
    H.psql(fmt("CREATE SCHEMA %s; CREATE TABLE %s.t9 (id bigserial PRIMARY KEY, k int NOT NULL);", S, S), url)
    local p = reader("t9", "s21_restart", nil, url)
    for i = 1, 10 do H.psql(fmt("INSERT INTO %s.t9 (k) VALUES (%d)", S, i), url) end
    assert.is_true(wait_events(p, 10), p:stderr())
    local function lag()
      return H.psql("SELECT lag_events FROM sqlnotify.consumer_list() WHERE name = 's21_restart'", url)
    end
    local deadline = H.now() + 20
    while lag() ~= "0\n" and H.now() < deadline do H.sleep(0.05) end
    assert.are.equal("0\n", lag())
    -- immediate: a crash as far as the server knows (unlogged tables come back empty)
    assert(H.sh(fmt("timeout -s KILL 60 pg_ctlcluster --skip-systemctl-redirect %s %s restart -m immediate >/dev/null 2>&1",
      cluster.ver, cluster.name)), "pg_ctlcluster restart failed")
    for i = 11, 20 do H.psql(fmt("INSERT INTO %s.t9 (k) VALUES (%d)", S, i), url) end
    -- every row once at least: rows that came again count toward no total (distinct)
    assert.is_true(p:wait_count(distinct, 20), p:stderr())
    assert.is_true(p:wait_for("journal reader reconnected to database \"test\" on 127.0.0.1:" .. port, 10, "err"))
    assert.matches("lost the journal reader's connection to database \"test\"", p:stderr())
    p:stop()
    -- The reader commits its cursor without waiting for the disk: a crash of the server may
    -- take back acknowledgements of its last moments, whose rows come again (never a loss).
    local firsts, seen, again, after = {}, {}, 0, {}
    for _, k in ipairs(ks(events(p))) do
      if seen[k] then
        again = again + 1
        assert.is_true(k <= 10, "row " .. k .. " (written after the crash) came twice")
      else
        seen[k] = true
        firsts[#firsts + 1] = k
      end
      if k > 10 then after[#after + 1] = k end
    end
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, firsts)
    assert.are.same({ 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, after)
    print(fmt("\n  server crash: %d event(s) acknowledged in its last moments came again", again))
  end)

  it("carries a row larger than a notification whole, with event.seq, in a notifier of this process", function()
    sql(fmt("CREATE TABLE %s.t10 (id int PRIMARY KEY, body text)", S))
    local n = H.pg_notifier { consumer = "s21_big" }
    local got, handler = H.collector()
    n:watch(S .. ".t10", "insert", { extra_columns = { "body" } })
    n:subscribe(S .. ".t10", "insert", handler)
    assert(n:start())
    sql(fmt("INSERT INTO %s.t10 VALUES (1, repeat('x', 20000)), (2, 'small')", S))
    assert.is_true(H.run_until(function() return #got == 2 end, 20))
    n:close()
    assert.are.same({ 1, 2 }, { got[1].id, got[2].id })
    assert.are.equal(string.rep("x", 20000), got[1].extra_columns.body)
    assert.is_falsy(got[1].truncated)
    assert.are.equal("small", got[2].extra_columns.body)
    assert.is_true(got[1].seq > 0 and got[2].seq > got[1].seq)
  end)

  -- The journal's id sequence must hand out ids in the order writers take them (CACHE 1): the
  -- reader pages from a floor read off the sequence. A session caching 50 ids took its chunk's
  -- end as the sequence's value, then used the ids below it in later transactions, under the
  -- floor: 194 of these 203 rows were never delivered.
  it("delivers every row written while the journal's id sequence has CACHE 50, and puts CACHE 1 back", function()
    fresh("t17")
    local p = reader("t17", "s21_cache")
    sql(fmt("INSERT INTO %s.t17 (k) VALUES (0)", S))
    assert.is_true(wait_events(p, 1), p:stderr())
    finally(function() sql("ALTER SEQUENCE sqlnotify.journal_id CACHE 1") end)
    sql("ALTER SEQUENCE sqlnotify.journal_id CACHE 50")
    sql(fmt("DO $$ BEGIN FOR i IN 1..203 LOOP INSERT INTO %s.t17 (k) VALUES (i); COMMIT; PERFORM pg_sleep(0.01);"
      .. " END LOOP; END $$", S))
    assert.is_true(wait_events(p, 204, 30), p:stderr())
    assert.is_true(p:wait_for("warn  sqlnotify: the journal's id sequence sqlnotify.journal_id had CACHE 50 %(it must"
      .. " be 1[^\n]*%); set it back to CACHE 1", 20, "err"), p:stderr())
    assert.are.equal("1\n", sql("SELECT seqcache FROM pg_sequence WHERE seqrelid = 'sqlnotify.journal_id'::regclass"))
    sql(fmt("INSERT INTO %s.t17 (k) VALUES (204)", S))
    assert.is_true(wait_events(p, 205), p:stderr())
    p:stop()
    local got = events(p)
    assert.are.equal(205, #got)
    for i, e in ipairs(got) do
      assert.are.equal(i - 1, e.k)
      assert.is_true(i == 1 or e.seq > got[i - 1].seq)
    end
  end)

  -- A restore, or a move by logical replication (which does not carry sequences), leaves the
  -- sequence behind the consumers' positions: every row written after it used to be under the
  -- cursor's floor until an idle reader wrote its cursor again (2 s), its seq repeating old ones.
  it("reads on after the journal's id sequence was moved back, says so, and moves it past every position", function()
    fresh("t18")
    local p = reader("t18", "s21_seqback")
    sql("SELECT setval('sqlnotify.journal_id', last_value + 1000) FROM sqlnotify.journal_id")
    sql(fmt("INSERT INTO %s.t18 (k) VALUES (1), (2)", S))
    assert.is_true(wait_events(p, 2), p:stderr())
    local before = events(p)[2].seq
    sql("ALTER SEQUENCE sqlnotify.journal_id RESTART")
    sql(fmt("DO $$ BEGIN FOR i IN 3..12 LOOP INSERT INTO %s.t18 (k) VALUES (i); COMMIT; PERFORM pg_sleep(0.05);"
      .. " END LOOP; END $$", S))
    assert.is_true(wait_events(p, 12, 20), p:stderr())
    local at, pos, now = p:stderr():match("error sqlnotify: the journal's id sequence sqlnotify.journal_id was moved"
      .. " back %(to (%d+), below the position (%d+) of a consumer[^\n]*%): moved it on to (%d+)[^\n]*")
    assert.is_truthy(at, p:stderr())
    assert.is_true(tonumber(at) < before and tonumber(pos) >= before and tonumber(now) > tonumber(pos))
    sql(fmt("INSERT INTO %s.t18 (k) VALUES (13)", S))
    assert.is_true(wait_events(p, 13), p:stderr())
    p:stop()
    local got = events(p)
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 }, ks(got))
    assert.is_true(got[13].seq > tonumber(now))
    local _, times = p:stderr():gsub("was moved back", "")
    assert.are.equal(1, times)
  end)

  -- Dropping schema sqlnotify under a running reader: its reads fail; it makes the journal
  -- again at once, with the watch's trigger where that went with it, and says what was lost.
  -- Writes to a durably watched table fail while the journal is missing (a change is never
  -- dropped silently); the reader is stopped meanwhile (SIGSTOP) so that one surely does.
  it("makes the journal and a trigger dropped with it again at once, under a running reader", function()
    fresh("t19")
    local p = reader("t19", "s21_dropped")
    sql(fmt("INSERT INTO %s.t19 (k) VALUES (1)", S))
    assert.is_true(wait_events(p, 1), p:stderr())
    local trigger = sql(fmt("SELECT tgname FROM pg_trigger WHERE tgrelid = '%s.t19'::regclass AND NOT tgisinternal"
      .. " AND tgtype & 4 = 4", S)):match("[^\n]+")
    p:kill("STOP")
    local ok, why = pcall(function()
      sql(fmt('BEGIN; DROP SCHEMA sqlnotify CASCADE; DROP TRIGGER "%s" ON %s.t19; COMMIT;', trigger, S))
      return sql(fmt("UPDATE %s.t19 SET k = 2 WHERE k = 1", S))
    end)
    p:kill("CONT")
    assert.is_false(ok)
    assert.matches("sqlnotify", why)
    assert.is_true(p:wait_for("error sqlnotify: the durable journal %(schema \"sqlnotify\"%) on database \"[^\"]*\" on "
      .. "[^\n]* was dropped[^\n]*made it again[^\n]*writes to durably watched tables failed[^\n]*consumer"
      .. " \"s21_dropped\" reads the new journal from its beginning", 20, "err"), p:stderr())
    assert.is_true(p:wait_for("error sqlnotify: trigger for insert on \"spec21\".\"t19\" was gone with the journal:"
      .. " made it again", 20, "err"), p:stderr())
    sql(fmt("INSERT INTO %s.t19 (k) VALUES (3); UPDATE %s.t19 SET k = 4 WHERE k = 3", S, S))
    assert.is_true(wait_events(p, 3), p:stderr())
    p:stop()
    local got = events(p)
    assert.are.same({ "i", "i", "u" }, H.pluck(got, "op"))
    assert.are.same({ 1, 3, 4 }, ks(got))
  end)

  it("keeps every change of a watched table dropped and made again, or swapped in by renames, until dropped", function()
    fresh("t20")
    local p = reader("t20", "s21_remade")
    sql(fmt("INSERT INTO %s.t20 (k) VALUES (1)", S))
    assert.is_true(wait_events(p, 1), p:stderr())
    -- a migration's ways: the table made anew and written at once; a copy swapped in by two
    -- renames in one transaction (the old one keeps its triggers under its new name)
    sql(fmt("DROP TABLE %s.t20; CREATE TABLE %s.t20 (id bigserial PRIMARY KEY, k int NOT NULL);"
      .. " INSERT INTO %s.t20 (k) VALUES (2);"
      .. " BEGIN; CREATE TABLE %s.t20_new (LIKE %s.t20 INCLUDING ALL); ALTER TABLE %s.t20 RENAME TO t20_old;"
      .. " ALTER TABLE %s.t20_new RENAME TO t20; INSERT INTO %s.t20 (k) VALUES (3); COMMIT;"
      .. " UPDATE %s.t20 SET k = 4 WHERE k = 3;", S, S, S, S, S, S, S, S, S))
    assert.is_true(wait_events(p, 4), p:stderr())
    p:stop()
    local got = events(p)
    assert.are.same({ "i", "i", "i", "u" }, H.pluck(got, "op"))
    assert.are.same({ 1, 2, 3, 4 }, ks(got))
    local function triggers()
      return tonumber(sql(fmt("SELECT count(*) FROM pg_trigger WHERE tgrelid = '%s.t20'::regclass AND NOT tgisinternal",
        S)):match("%d+"))
    end
    assert.are.equal(2, triggers())
    -- once its consumer is dropped, its triggers go, and a table made again gets none
    assert(admin:drop_consumer("s21_remade"))
    assert.are.equal(0, triggers())
    sql(fmt("DROP TABLE %s.t20, %s.t20_old; CREATE TABLE %s.t20 (id bigserial PRIMARY KEY, k int NOT NULL)", S, S, S))
    assert.are.equal(0, triggers())
    assert.are.equal("0", sql(fmt("SELECT count(*) FROM sqlnotify.triggers_made WHERE schema_name = '%s'"
      .. " AND table_name = 't20'", S)):match("%d+"))
  end)

  it("runs no kept statement when a role that is not a superuser may write them", function()
    local role = "sn_spec21_remaker"
    drop_role(role)
    fresh("t21")
    local p = reader("t21", "s21_granted")
    sql(fmt("INSERT INTO %s.t21 (k) VALUES (1)", S))
    assert.is_true(wait_events(p, 1), p:stderr())
    local ok, err = pcall(function()
      -- a grant (or ALTER DEFAULT PRIVILEGES) that lets another role write the statements the
      -- event trigger runs as a superuser
      sql(fmt("CREATE ROLE %s LOGIN; GRANT SELECT, INSERT ON sqlnotify.triggers_made TO %s", role, role))
      H.psql(fmt("INSERT INTO sqlnotify.triggers_made SELECT schema_name, table_name, 'sn_spec21_evil', channel,"
        .. " ARRAY['ALTER ROLE %s SUPERUSER'] FROM sqlnotify.triggers_made WHERE schema_name = '%s'"
        .. " AND table_name = 't21' LIMIT 1", role, S), H.pg_url_as(role))
      sql(fmt("DROP TABLE %s.t21; CREATE TABLE %s.t21 (id bigserial PRIMARY KEY, k int NOT NULL)", S, S))
      assert.are.equal("f", sql(fmt("SELECT rolsuper FROM pg_roles WHERE rolname = '%s'", role)):match("[tf]"))
    end)
    p:stop()
    sql("DELETE FROM sqlnotify.triggers_made WHERE tgname = 'sn_spec21_evil'")
    drop_role(role)
    assert(ok, err)
  end)

  it("leaves live mode as it was: no journal rows, one NOTIFY per row", function()
    fresh("t8")
    local p = reader("t8")
    sql(fmt("INSERT INTO %s.t8 (k) VALUES (1), (2)", S))
    assert.is_true(wait_events(p, 2))
    p:stop()
    assert.are.same({ 1, 2 }, ks(events(p)))
    assert.are.same({ 0, 0 }, { events(p)[1].seq, events(p)[2].seq })
    assert.are.equal(0, journal_rows("t8"))
  end)
end)

describe("PostgreSQL journal upgrade", function()
  -- A database of its own, made from spec/support/journal-6.sql, dropped after.
  local DB = "sqlnotify_check_j6"
  local url = H.pg_url:gsub("^(postgresql://[^/]*/)[^?]*", "%1" .. DB)
  local function admin(stmt) return H.psql(stmt) end
  local function drop_db()
    admin(fmt("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'", DB))
    admin("DROP DATABASE IF EXISTS " .. DB)
  end
  local p
  before_each(function()
    drop_db()
    admin("CREATE DATABASE " .. DB)
  end)
  after_each(function()
    if p and not p:exited() then p:kill("KILL") p:wait() end
    drop_db()
  end)

  it("brings a journal-6 database to this release's: the rows written before are read once, in order", function()
    H.psql(H.slurp(H.root .. "/spec/support/journal-6.sql"), url)
    -- that release's consumer, registered and behind by what its triggers write now
    H.psql("SELECT * FROM sqlnotify.register('j6', false, 16, 3600);"
      .. " INSERT INTO spec_j6.items VALUES (1, 10), (2, 20); UPDATE spec_j6.items SET k = 11 WHERE id = 1;", url)
    assert.are.equal("sqlnotify journal 6", H.psql("SELECT obj_description('sqlnotify'::regnamespace)", url):match("[^\n]+"))
    p = H.host([[
      local sqlnotify = require("sqlnotify")
      io.stdout:setvbuf("line")
      local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "j6" })
      for _, op in ipairs({ "insert", "update" }) do
        n:watch("spec_j6.items", op, { extra_columns = { "k" } })
        n:subscribe("spec_j6.items", op, function(ev)
          print(string.format("%s %d %d %s", op, ev.id, ev.extra_columns.k, ev.written_at and "at" or "-"))
        end)
      end
      assert(n:start())
      print("ready")
    ]], { url })
    assert.is_true(p:wait_for("ready\n", 20), p:stderr())
    H.psql("INSERT INTO spec_j6.items VALUES (3, 30)", url)
    assert.is_true(p:wait_for("insert 3 30", 20), p:stdout() .. p:stderr())
    H.sleep(0.3)
    p:stop()
    assert.are.equal("insert 1 10 at\ninsert 2 20 at\nupdate 1 11 at\ninsert 3 30 at\n", p:stdout():gsub("ready\n", ""))
    assert.matches('consumer "j6" starts 3 event%(s%) behind', p:stderr())
    assert.are.equal("sqlnotify journal 12", H.psql("SELECT obj_description('sqlnotify'::regnamespace)", url):match("[^\n]+"))
  end)
end)

describe("PostgreSQL journal in a schema another role owns", function()
  -- A database of its own, whose schema sqlnotify a role that is not a superuser made.
  local DB = "sqlnotify_check_owned"
  local role = "sn_spec21_owner"
  local url = H.pg_url:gsub("^(postgresql://[^/]*/)[^?]*", "%1" .. DB)
  local url_as = (url:gsub("^(postgresql://)[^@/]*@", "%1"):gsub("^(postgresql://)", "%1" .. role .. "@"))
  local function drop_db()
    sql(fmt("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'", DB))
    sql("DROP DATABASE IF EXISTS " .. DB)
  end
  local p
  before_each(function()
    drop_db()
    drop_role(role)
    sql("CREATE DATABASE " .. DB)
    sql(fmt("CREATE ROLE %s LOGIN; GRANT CREATE ON DATABASE %s TO %s", role, DB, role))
  end)
  after_each(function()
    if p and not p:exited() then p:kill("KILL") p:wait() end
    drop_db()
    drop_role(role)
  end)

  it("makes no event trigger there and keeps no statements: its owner could run SQL as the superuser", function()
    H.psql("CREATE SCHEMA sqlnotify", url_as)
    H.psql("CREATE TABLE public.items (id int PRIMARY KEY, k int NOT NULL)", url)
    p = H.host(READER, { url, "public.items", "s21_owned", "-" })
    assert.is_true(p:wait_for("ready\n", 20), p:stderr())
    H.psql("INSERT INTO public.items VALUES (1, 10)", url)
    assert.is_true(wait_events(p, 1), p:stderr())
    p:stop()
    assert.are.equal("0", H.psql("SELECT count(*) FROM pg_event_trigger", url):match("%d+"))
    assert.are.equal("0", H.psql("SELECT count(*) FROM sqlnotify.triggers_made", url):match("%d+"))
  end)

  it("makes its journal in a schema an administrator made for it, with no right to create in the database",
    function()
    sql(fmt("REVOKE CREATE ON DATABASE %s FROM %s", DB, role))
    H.psql(fmt("CREATE SCHEMA sqlnotify AUTHORIZATION %s; CREATE TABLE public.items (id int PRIMARY KEY, k int NOT NULL);"
      .. " ALTER TABLE public.items OWNER TO %s; GRANT CREATE ON SCHEMA public TO %s", role, role, role), url)
    p = H.host(READER, { url_as, "public.items", "s21_owned", "-" })
    assert.is_true(p:wait_for("ready\n", 20), p:stderr())
    H.psql("INSERT INTO public.items VALUES (1, 10)", url)
    assert.is_true(wait_events(p, 1), p:stderr())
    p:stop()
    assert.are.same({ 10 }, ks(events(p)))
    assert.are.equal(role, H.psql("SELECT tableowner FROM pg_tables WHERE schemaname = 'sqlnotify'"
      .. " AND tablename = 'journal_0'", url):match("[^\n]+"))
  end)
end)
