-- PostgreSQL with the C triggers (sqlnotify_capture.capture() for durable watches, notify() for
-- live ones) against a hostile role and an unlucky operator: forged trigger arguments, a journal
-- changed by hand, a column retyped under a trigger, a sequence moved below zero, a role without
-- the grants, an extension of the version before, a two-phase writer. The user's write goes
-- through and its event arrives, or the statement fails with a sqlnotify: message; the server
-- stays up. Everything happens in a database of its own, spec25_<pid>, made and dropped here,
-- and the two-phase writer in a throwaway cluster (the test server allows no PREPARE).
local H = require("helper")

local PID = H.slurp("/proc/self/stat"):match("^(%d+)") or tostring(os.time())
local DB = "spec25_" .. PID
local ROLE = "spec25_role_" .. PID
local ADMIN = (H.pg_url:gsub("/[^/?]*$", "/postgres"))
local URL = (H.pg_url:gsub("/[^/?]*$", "/" .. DB))

local function sql(text) return H.psql(text, URL) end

local procs = {} -- hosts started here, killed at the end whatever an assertion left running
local function track(p) procs[#procs + 1] = p return p end

-- The function our trigger on rel ("schema.table") calls, as regproc writes it.
local function trigger_fn(rel)
  return sql("SELECT t.tgfoid::regproc::text FROM pg_trigger t WHERE t.tgrelid = '" .. rel .. "'::regclass")
end

-- Starts a host of script with args in an environment without SQLNOTIFY_PG_CAPTURE, waits
-- until it listens, makes one write (when given) and waits for want in its output, stops it.
local function run_host(script, args, write, want)
  local p = track(H.host(script, args, "env -u SQLNOTIFY_PG_CAPTURE"))
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  if write then
    sql(write)
    assert(p:wait_for(want, 10), "no event: " .. p:stderr())
  end
  p:stop()
  return p
end

-- A live watcher of INSERT on s25.<tbl> printing "got <id> <v>"; arg[2] "keep" turns
-- revoke_on_model_change off.
local function insert_watcher(tbl)
  return ([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], revoke_on_model_change = arg[2] ~= "keep" })
n:watch("s25.TBL", "insert", { extra_columns = { "v" } })
n:subscribe("s25.TBL", "insert", function(ev) print("got " .. ev.id .. " " .. ev.extra_columns.v) end)
assert(n:start())
print("ready")
]]):gsub("TBL", tbl)
end

describe("PostgreSQL: the C triggers against hostile and unlucky hands", function()
  local n, got, handler

  setup(function()
    H.psql("DROP DATABASE IF EXISTS " .. DB .. " WITH (FORCE); CREATE DATABASE " .. DB, ADMIN)
    sql([[
CREATE SCHEMA s25;
CREATE TABLE s25.t (id int PRIMARY KEY, v int);
CREATE TABLE s25.r (id int PRIMARY KEY, v int);
]])
    got, handler = H.collector()
    n = H.pg_notifier { url = URL, consumer = "s25", shares = 1 }
    n:watch("s25.t", "insert", { extra_columns = { "v" } })
    n:watch("s25.r", "insert", { extra_columns = { "v" } })
    n:subscribe("s25.t", "insert", handler)
    n:subscribe("s25.r", "insert", handler)
    assert(n:start())
  end)

  teardown(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    if n then n:stop() end
    H.psql("DROP DATABASE IF EXISTS " .. DB .. " WITH (FORCE); DROP ROLE IF EXISTS " .. ROLE, ADMIN)
  end)

  -- Writes rows (id, v) into s25.<tbl> one commit each and waits for their events.
  local function insert_and_wait(tbl, rows)
    local before = #got
    for _, r in ipairs(rows) do sql(string.format("INSERT INTO s25.%s VALUES (%d, %s)", tbl, r[1], r[2])) end
    assert.is_true(H.run_until(function() return #got >= before + #rows end, 10),
      "events: " .. (#got - before) .. " of " .. #rows)
    H.run_for(0.2)
    local out = {}
    for i = before + 1, #got do out[#out + 1] = { id = got[i].id, v = got[i].extra_columns.v } end
    return out
  end

  it("runs with the C trigger here", function()
    assert.are.equal("sqlnotify_capture.capture\nsqlnotify_capture.capture\n", sql(
      "SELECT t.tgfoid::regproc::text FROM pg_trigger t WHERE t.tgrelid IN ('s25.t'::regclass, 's25.r'::regclass) ORDER BY 1") .. "")
  end)

  it("refuses forged trigger arguments with a sqlnotify: error, and the server stays up", function()
    sql([[
CREATE TABLE s25.forged (a int);
CREATE TRIGGER boom AFTER UPDATE ON s25.forged FOR EACH ROW
  EXECUTE FUNCTION sqlnotify_capture.capture('c', '2147483647 2147483647 0 2');
CREATE TRIGGER few AFTER INSERT ON s25.forged FOR EACH ROW EXECUTE FUNCTION sqlnotify_capture.capture('c', '1 0 0 0');
INSERT INTO s25.forged SELECT 1 WHERE false;
]])
    local ok, err = pcall(sql, "INSERT INTO s25.forged VALUES (1)")
    assert.is_false(ok)
    assert.matches('sqlnotify: trigger "few" gives capture%(%) arguments it does not take', err)
    sql("DROP TRIGGER few ON s25.forged; INSERT INTO s25.forged VALUES (1)")
    ok, err = pcall(sql, "UPDATE s25.forged SET a = 2")
    assert.is_false(ok)
    assert.matches('sqlnotify: trigger "boom" gives capture%(%) arguments it does not take', err)
    assert.are.equal("1\n", sql("SELECT 1"))
    ok, err = pcall(sql, "SELECT sqlnotify_capture.capture()")
    assert.is_false(ok)
    assert.matches("sqlnotify: capture%(%) runs only as a trigger", err)
    sql([[
CREATE TRIGGER boomn AFTER UPDATE ON s25.forged FOR EACH ROW
  EXECUTE FUNCTION sqlnotify_capture.notify('c', '1 1 1 2147483647', 'a', 'a', 'a', 'a');
CREATE TRIGGER before_n BEFORE INSERT ON s25.forged FOR EACH ROW
  EXECUTE FUNCTION sqlnotify_capture.notify('c', '1 0 0 0', 'a');
DROP TRIGGER boom ON s25.forged;
]])
    ok, err = pcall(sql, "UPDATE s25.forged SET a = 3")
    assert.is_false(ok)
    assert.matches('sqlnotify: trigger "boomn" gives notify%(%) arguments it does not take', err)
    ok, err = pcall(sql, "INSERT INTO s25.forged VALUES (5)")
    assert.is_false(ok)
    assert.matches("sqlnotify: notify%(%) runs only as an AFTER INSERT, UPDATE or DELETE", err)
    assert.are.equal("1\n", sql("SELECT 1"))
  end)

  it("writes through a journal changed by hand: a column added (its default filled), a partial index, a column dropped",
    function()
    sql([[
ALTER TABLE sqlnotify.journal_0 ADD COLUMN note text NOT NULL DEFAULT 'by hand';
ALTER TABLE sqlnotify.journal_1 ADD COLUMN note text NOT NULL DEFAULT 'by hand';
ALTER TABLE sqlnotify.journal_2 ADD COLUMN note text NOT NULL DEFAULT 'by hand';
]])
    assert.are.same({ { id = 1, v = 10 }, { id = 2, v = 20 } }, insert_and_wait("t", { { 1, 10 }, { 2, 20 } }))
    -- written by the INSERT, not beside the executor: NOT NULL held, the default filled
    assert.are.equal("2|2\n", sql("SELECT count(*), count(*) FILTER (WHERE note = 'by hand') FROM ("
      .. " SELECT note, payload FROM sqlnotify.journal_0 UNION ALL SELECT note, payload FROM sqlnotify.journal_1"
      .. " UNION ALL SELECT note, payload FROM sqlnotify.journal_2) x WHERE payload LIKE '%\"v\": _0}%'"))
    sql([[
ALTER TABLE sqlnotify.journal_0 DROP COLUMN note;
ALTER TABLE sqlnotify.journal_1 DROP COLUMN note;
ALTER TABLE sqlnotify.journal_2 DROP COLUMN note;
CREATE INDEX s25_partial_0 ON sqlnotify.journal_0 (hash) WHERE hash > 0;
CREATE INDEX s25_partial_1 ON sqlnotify.journal_1 (hash) WHERE hash > 0;
CREATE INDEX s25_partial_2 ON sqlnotify.journal_2 (hash) WHERE hash > 0;
]])
    assert.are.same({ { id = 3, v = 30 } }, insert_and_wait("t", { { 3, 30 } }))
    sql("DROP INDEX sqlnotify.s25_partial_0, sqlnotify.s25_partial_1, sqlnotify.s25_partial_2")
    assert.are.same({ { id = 4, v = 40 } }, insert_and_wait("t", { { 4, 40 } }))
  end)

  it("sends a column retyped under the trigger to a type it does not render as to_jsonb writes it", function()
    sql("ALTER TABLE s25.r ALTER v TYPE int[] USING ARRAY[v]")
    assert.are.same({ { id = 1, v = { 1, 2, n = 2 } }, { id = 2, v = { 3, n = 1 } } },
      insert_and_wait("r", { { 1, "ARRAY[1, 2]" }, { 2, "ARRAY[3]" } }))
  end)

  it("never fails a write when the journal's sequence went below zero: the row goes to journal_0", function()
    sql("ALTER SEQUENCE sqlnotify.journal_id MINVALUE -9000000000 RESTART WITH -5000000000")
    sql("INSERT INTO s25.t VALUES (100, 1)")
    assert.are.equal("1\n", sql("SELECT count(*) FROM sqlnotify.journal_0 WHERE id < 0"))
    -- put it back: the reader reads ids from 0 up, so it does not deliver that row
    sql("SELECT setval('sqlnotify.journal_id', (SELECT max(id) FROM sqlnotify.journal));"
      .. " ALTER SEQUENCE sqlnotify.journal_id MINVALUE 1")
  end)

  it("keeps a role that may not use the C trigger in plpgsql and says what to grant; granted, it gets it at the next start",
    function()
    sql(string.format([[
CREATE ROLE %s LOGIN;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA sqlnotify TO %s;
CREATE SCHEMA s25r AUTHORIZATION %s;
SET ROLE %s;
CREATE TABLE s25r.t (id int PRIMARY KEY, v text);
RESET ROLE;
]], ROLE, ROLE, ROLE, ROLE))
    local script = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s25r" })
n:watch("s25r.t", "insert", { extra_columns = { "v" } })
n:subscribe("s25r.t", "insert", function(ev) print("got " .. ev.id .. " " .. ev.extra_columns.v) end)
assert(n:start())
print("ready")
]]
    local as_role = (URL:gsub("^(postgresql://)[^@/]*@", "%1"):gsub("^(postgresql://)", "%1" .. ROLE .. "@"))
    local function kind()
      return sql("SELECT l.lanname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        .. " JOIN pg_language l ON l.oid = p.prolang WHERE t.tgrelid = 's25r.t'::regclass")
    end
    -- a host of script as the role
    local function run(text, write, want) return run_host(text, { as_role }, write, want) end
    local p = run(script)
    assert.matches("durable triggers in plpgsql: this role may not use sqlnotify_capture.capture%(%) %(GRANT USAGE ON "
      .. "SCHEMA sqlnotify_capture and EXECUTE ON FUNCTION sqlnotify_capture.capture%(%) TO it", p:stderr())
    assert.are.equal("plpgsql\n", kind())
    sql("GRANT EXECUTE ON FUNCTION sqlnotify_capture.capture() TO " .. ROLE)
    p = run(script, "INSERT INTO s25r.t VALUES (1, 'x')", "got 1 x\n")
    assert.is_nil(p:stderr():find("durable triggers in plpgsql", 1, true))
    assert.are.equal("c\n", kind())

    -- live mode asks for notify(): the same, with its own grant
    sql("CREATE TABLE s25r.l (id int PRIMARY KEY, v text); ALTER TABLE s25r.l OWNER TO " .. ROLE)
    local live = script:gsub('consumer = "s25r" ', ""):gsub("s25r%.t", "s25r.l")
    local function live_kind() return trigger_fn("s25r.l") end
    p = run(live, "INSERT INTO s25r.l VALUES (1, 'y')", "got 1 y\n")
    assert.matches("live triggers in plpgsql: this role may not use sqlnotify_capture.notify%(%) %(GRANT USAGE ON "
      .. "SCHEMA sqlnotify_capture and EXECUTE ON FUNCTION sqlnotify_capture.notify%(%) TO it", p:stderr())
    assert.matches("^s25r%.sqlnotify_l_insert_", live_kind())
    sql("GRANT EXECUTE ON FUNCTION sqlnotify_capture.notify() TO " .. ROLE)
    p = run(live, "INSERT INTO s25r.l VALUES (2, 'z')", "got 2 z\n")
    assert.is_nil(p:stderr():find("triggers in plpgsql", 1, true))
    assert.are.equal("sqlnotify_capture.notify\n", live_kind())

    -- a reader of the same watch that may not use notify() keeps the C trigger another made,
    -- instead of replacing it (and the other calling its trigger replaced)
    local function oid() return sql("SELECT t.oid FROM pg_trigger t WHERE t.tgrelid = 's25r.l'::regclass") end
    local before = oid()
    sql("REVOKE EXECUTE ON FUNCTION sqlnotify_capture.notify() FROM " .. ROLE)
    p = run(live, "INSERT INTO s25r.l VALUES (3, 'w')", "got 3 w\n")
    assert.are.equal(before, oid())
    assert.are.equal("sqlnotify_capture.notify\n", live_kind())
    assert.is_nil(p:stderr():find("created", 1, true))
    assert.is_nil(p:stderr():find("replaced", 1, true))
  end)

  it("keeps live triggers in plpgsql, with a warning, while notify() is not the extension's C function,"
    .. " and replaces a C trigger that calls it even with revoke_on_model_change off", function()
    sql("CREATE TABLE s25.m (id int PRIMARY KEY, v text)")
    local script = insert_watcher("m")
    local function fn() return trigger_fn("s25.m") end
    run_host(script, { URL })
    assert.are.equal("sqlnotify_capture.notify\n", fn())
    -- an operator's CREATE OR REPLACE: the C trigger calling it would send nothing
    sql("CREATE OR REPLACE FUNCTION sqlnotify_capture.notify() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$")
    for round, id in ipairs { 1, 2 } do
      local p = run_host(script, { URL, round == 1 and "keep" or "replace" },
        string.format("INSERT INTO s25.m VALUES (%d, 'v%d')", id, id), string.format("got %d v%d\n", id, id))
      if round == 1 then
        assert.matches("warn  sqlnotify: live triggers in plpgsql: sqlnotify_capture.notify%(%) is not the extension's C "
          .. "function any more %(replaced by hand%?%); a superuser may put it back: CREATE OR REPLACE FUNCTION "
          .. "sqlnotify_capture.notify%(%) RETURNS trigger LANGUAGE c AS '%$libdir/sqlnotify_capture', 'capture_notify'",
          p:stderr())
        assert.matches("^s25%.sqlnotify_m_insert_", fn())
        -- put back as the warning says
        sql("CREATE OR REPLACE FUNCTION sqlnotify_capture.notify() RETURNS trigger LANGUAGE c"
          .. " AS '$libdir/sqlnotify_capture', 'capture_notify'")
      else
        assert.is_nil(p:stderr():find("triggers in plpgsql", 1, true))
        assert.are.equal("sqlnotify_capture.notify\n", fn())
      end
    end
  end)

  it("replaces a C trigger whose function the server's library lacks (an older build installed over this one)",
    function()
    sql("CREATE TABLE s25.k (id int PRIMARY KEY, v text)")
    local script = insert_watcher("k")
    local function fn() return trigger_fn("s25.k") end
    run_host(script, { URL, "keep" })
    assert.are.equal("sqlnotify_capture.notify\n", fn())
    -- the catalog still says capture_notify, but the library it names has no such symbol:
    -- what a library of version 1 under a catalog of version 2 looks like
    -- (CREATE FUNCTION checks the symbol, so the catalog row is pointed at another library)
    sql("UPDATE pg_proc SET probin = '$libdir/plpgsql' WHERE oid = 'sqlnotify_capture.notify()'::regprocedure")
    local ok, err = pcall(sql, "INSERT INTO s25.k VALUES (1, 'lost')")
    assert.is_false(ok) -- the hazard: every write through the trigger fails, until a reader starts
    assert.matches('could not find function "capture_notify"', err)
    local p = run_host(script, { URL, "keep" }, "INSERT INTO s25.k VALUES (2, 'kept')", "got 2 kept\n")
    assert.matches("warn  sqlnotify: live triggers in plpgsql: sqlnotify_capture.notify%(%) cannot run on this server: "
      .. '.*could not find function "capture_notify".*%(make install%-pgext on the server\'s machine%)', p:stderr())
    assert.matches("^s25%.sqlnotify_k_insert_", fn())
    sql("CREATE OR REPLACE FUNCTION sqlnotify_capture.notify() RETURNS trigger LANGUAGE c"
      .. " AS '$libdir/sqlnotify_capture', 'capture_notify'")
  end)

  it("leaves an extension of version 1 (capture() alone) as it is: durable watches use it, live ones stay in"
    .. " plpgsql and say how to update; once updated, live watches get notify()", function()
    -- last: the C triggers of this file's durable notifier go with the extension
    n:stop()
    n = nil
    sql("DROP EXTENSION sqlnotify_capture CASCADE; CREATE EXTENSION sqlnotify_capture VERSION '1'")
    sql("CREATE TABLE s25.l (id int PRIMARY KEY, v text)")
    local script = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = arg[2] ~= "live" and arg[2] or nil })
n:watch("s25.l", "update", { extra_columns = { "v" }, old_columns = { "v" } })
n:subscribe("s25.l", "update", function(ev) print("got " .. ev.id .. " " .. ev.old.v .. " " .. ev.extra_columns.v) end)
assert(n:start())
print("ready")
]]
    -- the functions of its triggers: the consumer's capture and the live watch's, each its own
    local function fn()
      return sql("SELECT t.tgfoid::regproc::text FROM pg_trigger t WHERE t.tgrelid = 's25.l'::regclass ORDER BY 1")
    end
    local function run(mode, from, to)
      return run_host(script, { URL, mode }, string.format("UPDATE s25.l SET v = '%s'", to),
        string.format("got 1 %s %s\n", from, to)):stderr()
    end
    sql("INSERT INTO s25.l VALUES (1, 'a')")
    local err = run("s25v1", "a", "b")
    assert.are.equal("sqlnotify_capture.capture\n", fn())
    assert.is_nil(err:find("triggers in plpgsql", 1, true))
    err = run("live", "b", "c")
    assert.matches("^s25%.sqlnotify_l_update_%x+\nsqlnotify_capture%.capture\n$", fn())
    assert.matches("live triggers in plpgsql: the database has sqlnotify_capture 1, which has no notify%(%); ALTER "
      .. "EXTENSION sqlnotify_capture UPDATE, once every sqlnotify%-lua reading this database is of this version, "
      .. "gives live watches the C trigger", err)
    assert.are.equal("1\n", sql("SELECT extversion FROM pg_extension WHERE extname = 'sqlnotify_capture'"))
    sql("ALTER EXTENSION sqlnotify_capture UPDATE")
    err = run("live", "c", "d")
    assert.are.equal("sqlnotify_capture.capture\nsqlnotify_capture.notify\n", fn())
    assert.is_nil(err:find("triggers in plpgsql", 1, true))
  end)
end)

describe("PostgreSQL: the C trigger and a two-phase writer (a throwaway cluster that allows PREPARE)", function()
  local p, cluster

  teardown(function()
    if p and not p:exited() then p:kill("KILL") p:wait() end
    if cluster then cluster.drop() end
  end)

  it("lets PREPARE TRANSACTION through when the wake-up gate fired in it, holds back no other row while it is"
    .. " prepared, delivers its row once after COMMIT PREPARED, and still wakes the reader at an ordinary commit",
    function()
    local why
    cluster, why = H.pg_cluster(string.format("sqlnotify_spec25_%06d", math.random(0, 999999)), 6500 + math.random(0, 499),
      { "max_prepared_transactions=2" })
    if not cluster then pending("cannot create a throwaway PostgreSQL cluster here: " .. why) return end
    local url = cluster.url
    H.psql("CREATE SCHEMA s25p; CREATE TABLE s25p.t (id int PRIMARY KEY, v int)", url)
    p = H.host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local n = assert(sqlnotify.notifier{ url = arg[1], consumer = "s25p" })
n:watch("s25p.t", "insert", { extra_columns = { "v" } })
n:subscribe("s25p.t", "insert", function(ev) print("got " .. ev.id .. " " .. ev.extra_columns.v) end)
assert(n:start())
print("ready")
]], { url }, "env -u SQLNOTIFY_PG_CAPTURE")
    assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
    assert.are.equal("sqlnotify_capture.capture\n",
      H.psql("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 's25p.t'::regclass", url))

    -- the gate fires in a transaction when its last wake-up is over 10 ms old; the sequence
    -- moving is the proof that it fired in the prepared one
    local function gate() return H.psql("SELECT last_value FROM sqlnotify.wake", url) end
    H.sleep(0.1)
    local before = gate()
    H.psql("BEGIN; INSERT INTO s25p.t VALUES (1, 10); PREPARE TRANSACTION 's25_2pc'", url)
    assert.are_not.equal(before, gate())
    H.sleep(0.5)
    assert.are.equal("ready\n", p:stdout()) -- prepared is not committed
    -- a transaction left prepared (in doubt, for hours maybe) holds back no one else's rows
    H.psql("INSERT INTO s25p.t VALUES (3, 30)", url)
    assert.is_true(p:wait_for("got 3 30\n", 10), p:stderr())
    H.psql("COMMIT PREPARED 's25_2pc'", url)
    assert.is_true(p:wait_for("got 1 10\n", 10), p:stderr())

    -- an ordinary commit still sends the wake-up, from the commit instead of the trigger: a
    -- session that listens on the reader's channel is told of its own commit
    local said = H.psql([[
LISTEN "sqlnotify:journal";
SELECT pg_sleep(0.1);
INSERT INTO s25p.t VALUES (2, 20);
SELECT 'after';
]], url)
    assert.matches('^Asynchronous notification "sqlnotify:journal" received from server process with PID %d+%.\nafter\n$',
      (said:gsub("^\n", ""))) -- pg_sleep's empty row first
    assert.is_true(p:wait_for("got 2 20\n", 10), p:stderr())
    H.sleep(0.3)
    assert.are.equal("ready\ngot 3 30\ngot 1 10\ngot 2 20\n", p:stdout())
    p:stop()
  end)
end)
