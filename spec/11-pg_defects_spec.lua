-- The PostgreSQL driver against the defects found in review (issue 10: #3 large rows and
-- ALTER TABLE, #4 names, #5 the user's transaction, #6 deadlines, #11 passwords, #12
-- values, #14 overflow, #15 the listener around a loss), describe() (issue 16 item 8),
-- drop/list/verify (issue 16 item 12), permission problems (SPEC §5) and old values
-- (issue 12). Payloads are read raw through the binding's handle (sqlnotify.core), as
-- the trigger sent them, so these tests check the driver and nothing after it.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")

local S = "spec11"
local fmt = string.format
local DB = H.pg_url:match("/([^/?]+)$") or H.pg_url:match("/([^/?]+)%?")
-- Roles are the cluster's, not the database's: named for this file, dropped after it.
local OWNER, OTHER = "sn_pg_spec11_owner", "sn_pg_spec11_other"

local function url_with(url, param)
  return url .. (url:find("?", 1, true) and "&" or "?") .. param
end

local url_as = H.pg_url_as

local function count(sql, url)
  return tonumber(H.psql(sql, url):match("%-?%d+"))
end

-- A handle of the binding on the test database: got collects {channel, payload} for
-- every event and {"reconnected", may_have_missed} for every notice that the listener
-- is back, in the order they came.
local function raw(url, opts)
  local h = assert(core.open(url or H.pg_url, opts or { use_logger = os.getenv("SQLNOTIFY_VERBOSE") ~= nil }))
  local r = { h = h, got = {} }
  h:set_dispatch(function(batch, n)
    for i = 1, 2 * n, 2 do r.got[#r.got + 1] = { batch[i], batch[i + 1] } end
  end)
  h:set_reconnected(function(outage, missed)
    assert(math.type(outage) == "float" and outage >= 0, "outage " .. tostring(outage))
    r.got[#r.got + 1] = { "reconnected", missed }
  end)
  return r
end

local OPS = { insert = 0, update = 1, delete = 2 }

-- A watch as init.lua hands it to the binding.
local function watch(tbl, op, o)
  o = o or {}
  local schema = o.schema or S
  return {
    schema = schema, table = tbl, op = op, opcode = OPS[op], label = o.label,
    channel = o.channel or ("sqlnotify_" .. (o.label or (schema .. "_" .. tbl .. "_" .. op))),
    pk = o.pk or { "id" }, extra = o.extra or {}, trigger = o.trigger or {}, old = o.old or {},
    overflow = o.overflow or false, marker = o.marker or "m1",
  }
end

local function install(r, w, replace)
  local st = assert(r.h:install(w, replace ~= false))
  assert(r.h:listen(w.channel))
  return st
end

local function wait_got(r, n, timeout)
  assert.is_true(H.run_until(function() return #r.got >= n end, timeout or 10), "events: " .. #r.got)
  H.run_for(0.1) -- and nothing more
end

local function sorted(list)
  table.sort(list, function(a, b) return a[1] .. "\0" .. a[2] < b[1] .. "\0" .. b[2] end)
  return list
end

-- Our triggers on one table: "trigger|function" lines.
local function triggers_on(schema, tbl)
  return H.psql(fmt([[SELECT t.tgname || '|' || t.tgfoid::regprocedure FROM pg_trigger t
    WHERE t.tgrelid = '%s.%s'::regclass AND NOT t.tgisinternal ORDER BY 1]], schema, tbl))
end

describe("the PostgreSQL driver", function()
  local made

  local function track(r)
    made[#made + 1] = r
    return r
  end

  setup(function()
    H.psql(fmt([[DO $$ BEGIN
      IF EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN DROP OWNED BY %s; DROP ROLE %s; END IF;
      IF EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN DROP OWNED BY %s; DROP ROLE %s; END IF;
    END $$]], OWNER, OWNER, OWNER, OTHER, OTHER, OTHER))
  end)

  before_each(function()
    made = {}
    for _, s in ipairs { "spec11_x_y", "spec11_x", "spec11_own", "spec11_ovf" } do H.drop_schema(s) end
    H.fresh_schema(S)
    H.psql([[
      SET search_path = spec11;
      CREATE TABLE a (id int PRIMARY KEY, v text);
      CREATE TABLE b (id int PRIMARY KEY, v text);
    ]])
  end)

  after_each(function()
    for _, r in ipairs(made) do r.h:close() end
    made = nil
  end)

  teardown(function()
    for _, s in ipairs { S, "spec11_x_y", "spec11_x", "spec11_own", "spec11_ovf" } do H.drop_schema(s) end
    H.psql(fmt([[DO $$ BEGIN
      IF EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN DROP OWNED BY %s; DROP ROLE %s; END IF;
      IF EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN DROP OWNED BY %s; DROP ROLE %s; END IF;
    END $$]], OWNER, OWNER, OWNER, OTHER, OTHER, OTHER))
  end)

  describe("a large row (issue 10 #3)", function()
    it("lets a 128 MiB bytea into a watched table and delivers the row, reading only the watched columns", function()
      H.psql("CREATE TABLE spec11.big (id int PRIMARY KEY, name text, body bytea)")
      local r = track(raw())
      local small = watch("big", "insert", { extra = { "name" } })
      local all = watch("big", "insert", { label = "spec11_big_all", extra = { "name", "body" } })
      install(r, small)
      install(r, all)
      H.psql("INSERT INTO spec11.big VALUES (1, 'n', convert_to(repeat('a', 128 * 1024 * 1024), 'UTF8'))")
      wait_got(r, 2, 60)
      assert.are.same(sorted {
        { "sqlnotify_spec11_big_insert", '{"x": {"name": "n"}, "id": {"id": 1}}' },
        -- the one that carries the body cannot: its key, truncated
        { "sqlnotify_spec11_big_all", '{"t": true, "id": {"id": 1}}' },
      }, sorted(r.got))
      assert.are.equal(134217728, count("SELECT octet_length(body) FROM spec11.big WHERE id = 1"))
    end)

    it("keeps writes working when watched columns are dropped, renamed or retyped, and says what it cannot send", function()
      H.psql("CREATE TABLE spec11.alt (id int PRIMARY KEY, a text, b int, c text, d int)")
      local r = track(raw())
      local ins = watch("alt", "insert", { extra = { "a", "b" } })
      local upd = watch("alt", "update", { extra = { "a" }, trigger = { "c" }, old = { "d" } })
      local del = watch("alt", "delete", { extra = { "b" } })
      for _, w in ipairs { ins, upd, del } do install(r, w) end
      -- one session: its plans are cached before each change
      H.psql([[
        INSERT INTO spec11.alt VALUES (1, 'a1', 1, 'c1', 1);
        UPDATE spec11.alt SET c = 'c2', d = 2 WHERE id = 1;
        ALTER TABLE spec11.alt ALTER COLUMN b TYPE bigint;
        INSERT INTO spec11.alt VALUES (2, 'a2', 2, 'c', 2);
        ALTER TABLE spec11.alt RENAME COLUMN a TO a_renamed;
        INSERT INTO spec11.alt VALUES (3, 'a3', 3, 'c', 3);
        UPDATE spec11.alt SET c = 'c3' WHERE id = 1;
        ALTER TABLE spec11.alt RENAME COLUMN a_renamed TO a;
        ALTER TABLE spec11.alt DROP COLUMN d;
        UPDATE spec11.alt SET c = 'c4' WHERE id = 1;
        ALTER TABLE spec11.alt DROP COLUMN c;
        UPDATE spec11.alt SET a = 'no trigger column left' WHERE id = 1;
        DELETE FROM spec11.alt WHERE id = 2;
        ALTER TABLE spec11.alt RENAME COLUMN id TO ident;
        INSERT INTO spec11.alt VALUES (5, 'a5', 5);
      ]])
      wait_got(r, 8)
      local I, U, D = ins.channel, upd.channel, del.channel
      assert.are.same({
        { I, '{"x": {"a": "a1", "b": 1}, "id": {"id": 1}}' },
        { U, '{"o": {"d": 1}, "x": {"a": "a1"}, "id": {"id": 1}}' },
        { I, '{"x": {"a": "a2", "b": 2}, "id": {"id": 2}}' }, -- retyped: whole
        { I, '{"x": {"b": 3}, "id": {"id": 3}}' },             -- renamed: the other columns
        { U, '{"o": {"d": 2}, "x": {}, "id": {"id": 1}}' },
        { U, '{"o": {}, "x": {"a": "a1"}, "id": {"id": 1}}' }, -- an old column dropped: as an extra column
        { D, '{"x": {"b": 2}, "id": {"id": 2}}' },             -- (no event: the trigger column is gone)
        { I, '{"t": true}' },                                 -- the key renamed: nothing of the row
      }, r.got)
      assert.are.equal("1|no trigger column left|1\n3|a3|3\n5|a5|5\n",
        H.psql("SELECT ident, a, b FROM spec11.alt ORDER BY 1"))
    end)
  end)

  describe("names (issue 10 #4, issue 16 item 12)", function()
    it("names trigger and function after the table and operation, apart for x_y.t and x.y_t", function()
      H.psql([[CREATE SCHEMA spec11_x_y; CREATE TABLE spec11_x_y.t (id int PRIMARY KEY);
               CREATE SCHEMA spec11_x; CREATE TABLE spec11_x.y_t (id int PRIMARY KEY);]])
      local r = track(raw())
      -- with overflow a live watch keeps its plpgsql function; without, it calls the extension's C one
      install(r, watch("t", "insert", { schema = "spec11_x_y", channel = "sqlnotify_spec11_chan_1", overflow = true }))
      install(r, watch("t", "update", { schema = "spec11_x_y", channel = "sqlnotify_spec11_chan_3" }))
      install(r, watch("y_t", "insert", { schema = "spec11_x", channel = "sqlnotify_spec11_chan_2", overflow = true }))
      local one, two = triggers_on("spec11_x_y", "t"), triggers_on("spec11_x", "y_t")
      assert.matches("^sqlnotify_t_insert_%x%x%x%x%x%x%x%x%x%x%x%x|spec11_x_y%.sqlnotify_t_insert_%x+%(%)\n"
        .. "sqlnotify_t_update_%x%x%x%x%x%x%x%x%x%x%x%x|sqlnotify_capture%.notify%(%)\n$", one)
      assert.matches("^sqlnotify_y_t_insert_%x%x%x%x%x%x%x%x%x%x%x%x|spec11_x%.sqlnotify_y_t_insert_%x+%(%)\n$", two)
      H.psql("INSERT INTO spec11_x_y.t VALUES (1); INSERT INTO spec11_x.y_t VALUES (2);")
      wait_got(r, 2)
      assert.are.same({
        { "sqlnotify_spec11_chan_1", '{"x": {}, "id": {"id": 1}}' },
        { "sqlnotify_spec11_chan_2", '{"x": {}, "id": {"id": 2}}' },
      }, r.got)
    end)

    it("keeps a long unicode table name readable within 63 bytes", function()
      local long = string.rep("ü", 30) -- 60 bytes: a name PostgreSQL keeps whole
      H.psql(fmt('CREATE TABLE spec11."%s" (id int PRIMARY KEY)', long))
      local r = track(raw())
      install(r, watch(long, "delete", { channel = "sqlnotify_spec11_long" }))
      local name = H.psql(fmt([[SELECT tgname FROM pg_trigger WHERE tgrelid = 'spec11."%s"'::regclass]], long))
      assert.are.equal("sqlnotify_" .. string.rep("ü", 16) .. "_delete_", name:sub(1, 50))
      assert.matches("^%x%x%x%x%x%x%x%x%x%x%x%x\n$", name:sub(51))
    end)

    it("refuses a channel_label another table's or operation's watch uses, naming it", function()
      local n1 = H.pg_notifier()
      finally(function() n1:close() end)
      n1:watch(S .. ".a", "insert", { channel_label = "spec11_shared" })
      assert(n1:start())
      local got, handler = H.collector()
      n1:subscribe(S .. ".a", "insert", { channel_label = "spec11_shared" }, handler)
      local msg = 'sqlnotify: channel "sqlnotify_spec11_shared" is already used by the insert watch on '
        .. '"spec11"."a"; give this watch its own channel_label'
      for _, case in ipairs { { S .. ".b", "insert" }, { S .. ".a", "update" } } do
        local n2 = H.pg_notifier()
        n2:watch(case[1], case[2], { channel_label = "spec11_shared" })
        local ok, err = n2:start()
        assert.is_nil(ok)
        assert.are.equal(msg, err)
        n2:close()
      end
      assert.are.equal("", triggers_on(S, "b"))
      -- the first watch was not touched
      H.psql("INSERT INTO spec11.a VALUES (1, 'x')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(1, got[1].id)
      n1:cleanup()
      n1:close()
    end)

    it("repairs a function rewritten by hand at the next install, even with revoke_on_model_change off", function()
      local r = track(raw())
      local w = watch("a", "insert", { extra = { "v" }, overflow = true }) -- a function of its own
      assert.are.equal("created", install(r, w))
      assert.is_true(r.h:verify(w))
      local fn = H.psql("SELECT tgfoid::regprocedure FROM pg_trigger WHERE tgrelid = 'spec11.a'::regclass")
      -- the comment stays: only the source says it was changed
      H.psql(fmt("CREATE OR REPLACE FUNCTION %s RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
        fn:match("[^\n]+")))
      assert.is_false(r.h:verify(w))
      assert.are.equal("replaced", r.h:install(w, false))
      assert.is_true(r.h:verify(w))
      assert.are.equal("unchanged", r.h:install(w, false))
      H.psql("INSERT INTO spec11.a VALUES (1, 'back')")
      wait_got(r, 1)
      assert.are.same({ { w.channel, '{"x": {"v": "back"}, "id": {"id": 1}}' } }, r.got)
    end)

    it("replaces an install of the first naming (sqlnotify_<16 hex of the channel>), found by its marker", function()
      local w = watch("a", "insert", { extra = { "v" } })
      local old = "sqlnotify_" .. core.hash(w.channel)
      H.psql(fmt([[
        CREATE FUNCTION spec11.%s() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN PERFORM pg_notify('%s', '{"id": {"id": 0}}'); RETURN NULL; END $$;
        CREATE TRIGGER %s AFTER INSERT ON spec11.a FOR EACH ROW EXECUTE FUNCTION spec11.%s();
        COMMENT ON FUNCTION spec11.%s() IS 'sqlnotify:1:0123456789abcdef';
        COMMENT ON TRIGGER %s ON spec11.a IS 'sqlnotify:1:0123456789abcdef';
      ]], old, w.channel, old, old, old, old))
      local r = track(raw())
      assert.are.equal("replaced", install(r, w, false))
      local now = triggers_on(S, "a")
      assert.matches("^sqlnotify_a_insert_%x+|sqlnotify_capture%.notify%(%)\n$", now)
      assert.are.equal(0, count(fmt("SELECT count(*) FROM pg_proc WHERE proname = '%s'", old)))
      H.psql("INSERT INTO spec11.a VALUES (1, 'once')")
      wait_got(r, 1)
      assert.are.same({ { w.channel, '{"x": {"v": "once"}, "id": {"id": 1}}' } }, r.got)
    end)
  end)

  describe("the user's transaction (issue 10 #5)", function()
    it("is neither committed nor shared by a watch installed, a list or a drop while it is open", function()
      H.psql("CREATE TABLE spec11.c (id int PRIMARY KEY)")
      local n = H.pg_notifier()
      finally(function() n:close() end) -- a failure here must not leave the transaction open
      local got, handler = H.collector()
      n:watch(S .. ".a", "insert")
      n:watch(S .. ".c", "insert")
      assert(n:start())
      assert(n:query("BEGIN"))
      assert(n:query("INSERT INTO spec11.a (id, v) VALUES (1, 'in the transaction')"))
      n:watch(S .. ".b", "insert") -- installs its trigger now
      n:subscribe(S .. ".b", "insert", handler)
      assert(n:query("ROLLBACK"))
      assert.are.equal(0, count("SELECT count(*) FROM spec11.a"))
      -- the same for a list and a drop
      assert(n:query("BEGIN"))
      assert(n:query("INSERT INTO spec11.a (id, v) VALUES (2, 'in the transaction')"))
      assert.is_true(#assert(n._h:list()) >= 3)
      assert.are.equal(1, n._h:drop(S, "c"))
      assert.are.same({ { n = 1 } }, n:query("SELECT count(*)::int AS n FROM spec11.a"))
      assert(n:query("ROLLBACK"))
      assert.are.equal(0, count("SELECT count(*) FROM spec11.a"))
      H.psql("INSERT INTO spec11.b VALUES (7, 'b')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(7, got[1].id)
      n:cleanup()
      n:close()
    end)
  end)

  describe("deadlines (issue 10 #6, #15)", function()
    local function proxy() return H.pg_proxy(DB) end

    it("refuses a bad sqlnotify_statement_timeout, and libpq never sees the parameter", function()
      local _, err = sqlnotify.notifier{ url = url_with(H.pg_url, "sqlnotify_statement_timeout=soon"), use_logger = false }
      assert.are.equal('sqlnotify: invalid sqlnotify_statement_timeout "soon" in the URL (a number of seconds above zero)',
        err)
      local n = H.pg_notifier{ url = url_with(H.pg_url, "sqlnotify_statement_timeout=2.5&application_name=spec11") }
      assert.are.same({ { app = "spec11" } }, n:query("SELECT current_setting('application_name') AS app"))
      n:close()
    end)

    it("times out statements and connection attempts on a server that stops answering, and comes back", function()
      local p = proxy()
      finally(p.stop)
      local url = fmt("postgresql://root@127.0.0.1:%d/%s?connect_timeout=2&sqlnotify_statement_timeout=1", p.port, DB)
      local target = fmt('database "%s" on 127.0.0.1:%d', DB, p.port)
      local r = track(raw(url))
      local w = watch("a", "insert", { extra = { "v" } })
      install(r, w)
      assert.are.same({ { one = 1 } }, r.h:query("SELECT 1 AS one"))
      p.stall()
      local rows, err = r.h:query("SELECT 2")
      assert.is_nil(rows)
      assert.are.equal("sqlnotify: statement on " .. target .. " timed out after 1 s (sqlnotify_statement_timeout "
        .. "in the URL); the query connection was closed", err)
      rows, err = r.h:query("SELECT 3")
      assert.is_nil(rows)
      assert.are.equal("sqlnotify: cannot connect to " .. target .. ": timed out after 2 s (connect_timeout)", err)
      -- listen() does not claim to listen while it cannot (#15)
      local ok
      ok, err = r.h:listen("sqlnotify_spec11_more")
      assert.is_nil(ok)
      assert.matches("timed out", err)
      ok, err = r.h:listen("sqlnotify_spec11_more")
      assert.is_nil(ok)
      assert.are.equal("sqlnotify: cannot connect to " .. target .. ": timed out after 2 s (connect_timeout)", err)
      ok, err = r.h:install(watch("b", "insert"), true)
      assert.is_nil(ok)
      assert.matches("timed out", err)
      -- the loop is free: a timer ticks
      local ticks = 0
      local t = sqlnotify.every(0.1, function() ticks = ticks + 1 end)
      assert.is_true(H.run_until(function() return ticks >= 3 end, 5))
      t:stop()
      p.resume()
      assert.are.same({ { four = 4 } }, r.h:query("SELECT 4 AS four"))
      -- the listener comes back by itself, says so once, and delivers again
      assert.is_true(H.run_until(function() return #r.got >= 1 end, 20))
      H.psql("INSERT INTO spec11.a VALUES (1, 'after')")
      wait_got(r, 2)
      assert.are.same({ { "reconnected", true }, { w.channel, '{"x": {"v": "after"}, "id": {"id": 1}}' } }, r.got)
    end)

    it("delivers what was read just before the listener's connection was lost, then says it is back", function()
      local app = "spec11_loss_" .. math.random(1e9)
      local r = track(raw(url_with(H.pg_url, "application_name=" .. app)))
      assert(r.h:listen("sqlnotify_spec11_c1"))
      -- the statistics view can lag behind a statement that just ran: wait for it
      local pid
      local deadline = H.now() + 10
      repeat
        pid = H.psql(fmt([[SELECT pid FROM pg_stat_activity WHERE application_name = '%s'
          AND query LIKE 'LISTEN%%']], app)):match("^(%d+)\n$")
        if not pid then H.sleep(0.02) end
      until pid or H.now() > deadline
      assert(pid, "the listener's backend is not in pg_stat_activity")
      -- the loop does not run meanwhile: the notification and the server's goodbye wait in our socket
      H.psql(fmt([[SELECT pg_notify('sqlnotify_spec11_c1', 'before the loss'); SELECT pg_sleep(0.3);
        SELECT pg_terminate_backend(%s);]], pid))
      assert(r.h:listen("sqlnotify_spec11_c2")) -- finds the connection gone, comes back, listens on both
      H.psql("SELECT pg_notify('sqlnotify_spec11_c2', 'after')")
      wait_got(r, 3)
      assert.are.same({
        { "sqlnotify_spec11_c1", "before the loss" },
        { "reconnected", true },
        { "sqlnotify_spec11_c2", "after" },
      }, r.got)
    end)
  end)

  describe("passwords (issue 10 #11)", function()
    it("never shows the password of a URL libpq cannot parse, nor a \"?\" target", function()
      local cases = {
        { "postgresql://root:hunter2@[127.0.0.1/test", 'sqlnotify: invalid PostgreSQL URL '
          .. '"postgresql://root:***@[127.0.0.1/test": end of string reached when looking for matching "]" in IPv6 '
          .. 'host address in URI' },
        { "postgresql://root:hunter%zz2@127.0.0.1/test",
          'sqlnotify: invalid PostgreSQL URL "postgresql://root:***@127.0.0.1/test": invalid percent-encoded token' },
        { "postgresql://root@127.0.0.1/test?password=hunter2&bogus=1",
          'sqlnotify: invalid PostgreSQL URL "postgresql://root@127.0.0.1/test?password=***&bogus=1": invalid URI '
          .. 'query parameter' },
      }
      for _, case in ipairs(cases) do
        local n, err = sqlnotify.notifier{ url = case[1], use_logger = false }
        assert.is_nil(n)
        assert.are.equal(case[2], err)
        assert.is_nil(err:find("hunter", 1, true))
        assert.is_nil(err:find('"?"', 1, true))
      end
    end)
  end)

  describe("values (issue 10 #12)", function()
    it("sends integers exactly, floats that read back the same, numeric with every digit, bytea as hex", function()
      H.psql([[CREATE TABLE spec11.v (id bigint PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8,
        n numeric, b bytea, bo bool, arr float8[], ts timestamptz)]])
      local r = track(raw())
      local w = watch("v", "insert", { extra = { "i2", "i8", "f4", "f8", "n", "b", "bo", "arr", "ts" } })
      install(r, w)
      -- a writer whose settings would change the text of floats and bytea
      H.psql([[SET extra_float_digits = 0; SET bytea_output = 'escape'; SET TimeZone = 'UTC';
        INSERT INTO spec11.v VALUES
          (9007199254740993, -32768, -9223372036854775808, 0.1, 0.1::float8 + 0.2::float8,
           123456789012345678901234567890.123456789, '\x00ff10', true, '{1.5,NaN,Infinity,NULL}',
           '2024-01-02 03:04:05.678+00'),
          (2, NULL, NULL, 'NaN', '-Infinity', 'NaN', '', false, '{}', NULL),
          (3, 0, 9223372036854775807, 3.4028235e38, 5e-324, 'Infinity', NULL, NULL, NULL, NULL);]])
      wait_got(r, 3)
      local x = {}
      for i, ev in ipairs(r.got) do x[i] = ev[2] end
      assert.are.same({
        '{"x": {"b": "\\\\x00ff10", "n": 123456789012345678901234567890.123456789, "bo": true, "f4": 0.1, '
          .. '"f8": 0.30000000000000004, "i2": -32768, "i8": -9223372036854775808, '
          .. '"ts": "2024-01-02T03:04:05.678+00:00", "arr": [1.5, "NaN", "Infinity", null]}, '
          .. '"id": {"id": 9007199254740993}}',
        '{"x": {"b": "\\\\x", "n": "NaN", "bo": false, "f4": "NaN", "f8": "-Infinity", "i2": null, "i8": null, '
          .. '"ts": null, "arr": []}, "id": {"id": 2}}',
        '{"x": {"b": null, "n": "Infinity", "bo": null, "f4": 340282350000000000000000000000000000000, "f8": 0.'
          .. string.rep("0", 323) .. '5, "i2": 0, "i8": 9223372036854775807, "ts": null, "arr": null}, '
          .. '"id": {"id": 3}}',
      }, x)
      assert.are.equal(0.1 + 0.2, tonumber(r.got[1][2]:match('"f8": ([%d.e+-]+)')))
      assert.are.equal(5e-324, tonumber(r.got[3][2]:match('"f8": ([%d.e+-]+)')))
    end)

    it("sends an empty key for a table without one (INSERT only)", function()
      H.psql("CREATE TABLE spec11.log (at int, msg text)")
      local r = track(raw())
      local w = watch("log", "insert", { pk = {}, extra = { "msg" } })
      install(r, w)
      local ok, err = r.h:install(watch("log", "update", { pk = {} }), true)
      assert.is_nil(ok)
      assert.are.equal("sqlnotify: a table without a key can only be watched for INSERT", err)
      -- (two equal rows in one transaction would arrive once: NOTIFY folds equal payloads)
      H.psql("INSERT INTO spec11.log VALUES (1, 'one'), (1, 'two')")
      wait_got(r, 2)
      assert.are.same({ { w.channel, '{"x": {"msg": "one"}, "id": {}}' }, { w.channel, '{"x": {"msg": "two"}, "id": {}}' } },
        r.got)
    end)
  end)

  describe("the overflow table (issue 10 #14)", function()
    it("fetches by id and channel: a reference forged on another channel is logged and skipped", function()
      local p = H.host([==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = arg[1] })
        for _, t in ipairs { "spec11.a", "spec11.b" } do
          n:watch(t, "insert", { extra_columns = { "v" }, use_overflow_table = true })
          n:subscribe(t, "insert", function(ev) print(ev.table, ev.id, #ev.extra_columns.v) end)
        end
        sqlnotify.after(0, function() print("ready") end)
      ]==], { H.pg_url })
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql("INSERT INTO spec11.a VALUES (1, repeat('a', 20000))")
      assert.is_true(p:wait_for("a\t1\t20000\n"), p:stderr())
      local id = H.psql("SELECT id FROM spec11.sqlnotify_overflow WHERE channel = 'sqlnotify_spec11_a_insert'")
        :match("^(%d+)\n$")
      H.psql(fmt([[SELECT pg_notify('sqlnotify_spec11_b_insert', 'sqlnotify:overflow:%s');
        INSERT INTO spec11.b VALUES (2, 'small');]], id))
      assert.is_true(p:wait_for("b\t2\t5\n"), p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\na\t1\t20000\nb\t2\t5\n", p:stdout())
      local line = fmt('warn  sqlnotify: overflow payload %s for channel "sqlnotify_spec11_b_insert" is not in '
        .. '"spec11"."sqlnotify_overflow" (pruned, deleted, or parked for another channel); event skipped\n', id)
      assert.is_truthy(p:stderr():find(line, 1, true), p:stderr())
      p:assert_clean()
    end)

    it("lives in the watched table's schema, so a role that may not create in public can use it", function()
      H.psql(fmt([[CREATE ROLE %s LOGIN; REVOKE CREATE ON SCHEMA public FROM %s;
        CREATE SCHEMA spec11_own AUTHORIZATION %s;
        SET ROLE %s; CREATE TABLE spec11_own.t (id int PRIMARY KEY, v text); RESET ROLE;]], OWNER, OWNER, OWNER, OWNER))
      assert.are.equal("f\n", H.psql(fmt("SELECT has_schema_privilege('%s', 'public', 'CREATE')", OWNER)))
      local n = H.pg_notifier{ url = url_as(OWNER) }
      finally(function() n:close() end)
      local got, handler = H.collector()
      n:watch("spec11_own.t", "insert", { extra_columns = { "v" }, use_overflow_table = true })
      n:subscribe("spec11_own.t", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec11_own.t VALUES (1, repeat('v', 9000))", url_as(OWNER))
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(9000, #got[1].extra_columns.v)
      assert.is_false(got[1].truncated)
      assert.are.equal(1, count("SELECT count(*) FROM spec11_own.sqlnotify_overflow"))
      n:cleanup()
      n:close()
    end)

    it("lives in the notifier's overflow_schema when it names one", function()
      H.psql("CREATE SCHEMA spec11_ovf")
      local r = track(raw(nil, { use_logger = false, overflow_schema = "spec11_ovf" }))
      local w = watch("a", "insert", { extra = { "v" }, overflow = true })
      install(r, w)
      assert.is_true(r.h:notify(w.channel, '{"id": {"id": 8}, "x": {"v": "' .. string.rep("n", 9000) .. '"}}', true))
      H.psql("INSERT INTO spec11.a VALUES (1, repeat('v', 9000))")
      wait_got(r, 2)
      -- parked as jsonb: it comes back in jsonb's own order
      assert.are.same({ { w.channel, '{"x": {"v": "' .. string.rep("n", 9000) .. '"}, "id": {"id": 8}}' },
        { w.channel, '{"x": {"v": "' .. string.rep("v", 9000) .. '"}, "id": {"id": 1}}' } }, r.got)
      assert.are.equal(2, count("SELECT count(*) FROM spec11_ovf.sqlnotify_overflow"))
      assert.are.equal("\n", H.psql("SELECT to_regclass('spec11.sqlnotify_overflow')"))
    end)
  end)

  describe("describe (issue 16 item 8)", function()
    it("marks views and materialized views, and lists unique indexes without WHERE or expressions", function()
      H.psql([[
        CREATE TABLE spec11.keys (id int, email text, a int, b int, lower_email text);
        CREATE UNIQUE INDEX keys_email ON spec11.keys (email);
        CREATE UNIQUE INDEX keys_ba ON spec11.keys (b, a);
        CREATE UNIQUE INDEX keys_partial ON spec11.keys (id) WHERE id > 0;
        CREATE UNIQUE INDEX keys_expr ON spec11.keys (lower(lower_email));
        CREATE VIEW spec11.kv AS SELECT * FROM spec11.keys;
        CREATE MATERIALIZED VIEW spec11.km AS SELECT 1 AS x;
      ]])
      local r = track(raw())
      assert.are.same({
        { "table", "spec11", "keys" },
        { "column", "id", "integer", "1", "integer" }, { "column", "email", "text", "2", "text" },
        { "column", "a", "integer", "3", "integer" }, { "column", "b", "integer", "4", "integer" },
        { "column", "lower_email", "text", "5", "text" },
        -- each column of these keys can hold NULL: such a key cannot order a backfill
        { "unique", "b", "keys_ba", "1", "nullable" }, { "unique", "a", "keys_ba", "2", "nullable" },
        { "unique", "email", "keys_email", "1", "nullable" },
      }, r.h:describe(S, "keys"))
      assert.are.same({ "table", "spec11", "kv", "view" }, r.h:describe(S, "kv")[1])
      assert.are.same({ "table", "spec11", "km", "view" }, r.h:describe(S, "km")[1])
      assert.are.same({}, r.h:describe(S, "nothing"))
    end)
  end)

  describe("permission problems (SPEC §5)", function()
    it("say in one line what to grant or change when the role may not create the trigger", function()
      H.psql(fmt([[CREATE ROLE %s LOGIN; GRANT USAGE ON SCHEMA spec11 TO %s;
        CREATE TABLE spec11.perm (id int PRIMARY KEY);]], OTHER, OTHER))
      local r = track(raw(url_as(OTHER)))
      local w = watch("perm", "insert")
      local head = 'sqlnotify: cannot create the trigger for insert on "spec11"."perm": '
      local steps = {
        { "", "permission denied for schema spec11 (GRANT USAGE, CREATE ON SCHEMA \"spec11\" TO " .. OTHER .. ")" },
        { "GRANT CREATE ON SCHEMA spec11 TO " .. OTHER, "permission denied for table perm (run as the table's owner, "
          .. 'or GRANT TRIGGER ON "spec11"."perm" TO ' .. OTHER .. ")" },
        { "GRANT TRIGGER ON spec11.perm TO " .. OTHER, "must be owner of relation perm (run as the table's owner, or "
          .. 'ALTER TABLE "spec11"."perm" OWNER TO ' .. OTHER .. ")" },
      }
      for _, step in ipairs(steps) do
        if step[1] ~= "" then H.psql(step[1]) end
        local ok, err = r.h:install(w, true)
        assert.is_nil(ok)
        assert.are.equal(head .. step[2], err)
      end
      assert.are.equal("", triggers_on(S, "perm"))
      H.psql("ALTER TABLE spec11.perm OWNER TO " .. OTHER)
      assert.are.equal("created", r.h:install(w, true))
    end)

    it("say that a view cannot be watched", function()
      H.psql("CREATE VIEW spec11.av AS SELECT * FROM spec11.a")
      local r = track(raw())
      local ok, err = r.h:install(watch("av", "insert"), true)
      assert.is_nil(ok)
      assert.are.equal('sqlnotify: cannot create the trigger for insert on "spec11"."av": it is a view; views cannot '
        .. "be watched (watch the tables it reads from)", err)
    end)
  end)

  describe("drop, list and verify (issue 16 item 12)", function()
    it("lists every trigger of ours: table, operation, channel, names, columns and when it was installed", function()
      local r = track(raw())
      install(r, watch("a", "insert", { extra = { "v" } }))
      install(r, watch("a", "update", { label = "spec11_upd", extra = { "v" }, trigger = { "v" }, old = { "v" } }))
      install(r, watch("b", "delete", { overflow = true })) -- the plpgsql trigger: a function of its own
      local mine = {}
      for _, row in ipairs(assert(r.h:list())) do
        if row[1] == S then mine[#mine + 1] = row end
      end
      assert.are.equal(3, #mine)
      local want = {
        { "a", "insert", "sqlnotify_spec11_a_insert", "id | x: v" },
        { "a", "update", "sqlnotify_spec11_upd", "id | x: v | when: v | old: v" },
        { "b", "delete", "sqlnotify_spec11_b_delete", "id | overflow" },
      }
      for i, row in ipairs(mine) do
        assert.are.same({ S, want[i][1], want[i][2], want[i][3] }, { row[1], row[2], row[3], row[4] })
        assert.matches("^sqlnotify_" .. want[i][1] .. "_" .. want[i][2] .. "_%x+$", row[5])
        assert.are.equal(i == 3 and "spec11." .. row[5] .. "()" or "sqlnotify_capture.notify()", row[6])
        assert.are.equal(want[i][4], row[7])
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", row[8])
      end
    end)

    it("verifies a watch: true as installed, false when changed behind us or dropped, or when the watch differs", function()
      local r = track(raw())
      local w = watch("a", "insert", { extra = { "v" } })
      assert.is_false(r.h:verify(w))
      install(r, w)
      assert.is_true(r.h:verify(w))
      assert.is_false(r.h:verify(watch("a", "insert", { extra = { "v" }, marker = "m2" })))
      H.psql("ALTER TABLE spec11.a DISABLE TRIGGER ALL")
      assert.is_false(r.h:verify(w))
      H.psql("ALTER TABLE spec11.a ENABLE TRIGGER ALL")
      assert.is_true(r.h:verify(w))
      H.psql(fmt("DROP TRIGGER %s ON spec11.a", triggers_on(S, "a"):match("^([^|]+)")))
      assert.is_false(r.h:verify(w))
      assert.is_false(r.h:verify(watch("nothing", "insert")))
    end)

    it("drops one table's triggers (search_path without a schema), a schema's, and nothing else", function()
      H.psql("CREATE TABLE spec11.c (id int PRIMARY KEY); CREATE SCHEMA spec11_x; CREATE TABLE spec11_x.a (id int PRIMARY KEY)")
      local r = track(raw(url_with(H.pg_url, "options=-csearch_path%3Dspec11")))
      -- with overflow: the plpgsql trigger and its function; without: the C trigger, no function
      install(r, watch("a", "insert", { overflow = true }))
      install(r, watch("a", "delete"))
      install(r, watch("b", "insert", { overflow = true }))
      install(r, watch("a", "insert", { schema = "spec11_x", overflow = true }))
      -- an install of the first naming on c
      H.psql([[CREATE FUNCTION spec11.sqlnotify_0123456789abcdef() RETURNS trigger LANGUAGE plpgsql
          AS $$BEGIN RETURN NULL; END$$;
        CREATE TRIGGER sqlnotify_0123456789abcdef AFTER INSERT ON spec11.c FOR EACH ROW
          EXECUTE FUNCTION spec11.sqlnotify_0123456789abcdef();
        COMMENT ON TRIGGER sqlnotify_0123456789abcdef ON spec11.c IS 'sqlnotify:1:0123456789abcdef';
        COMMENT ON FUNCTION spec11.sqlnotify_0123456789abcdef() IS 'sqlnotify:1:0123456789abcdef';
        -- a trigger of the user's
        CREATE FUNCTION spec11.mine() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
        CREATE TRIGGER mine AFTER INSERT ON spec11.a FOR EACH ROW EXECUTE FUNCTION spec11.mine();]])
      local function functions(schema)
        return count(fmt([[SELECT count(*) FROM pg_proc WHERE pronamespace = '%s'::regnamespace
          AND proname LIKE 'sqlnotify%%']], schema))
      end
      assert.are.equal(3, functions(S))
      assert.are.equal(2, r.h:drop(nil, "a"))
      assert.are.equal("mine|spec11.mine()\n", triggers_on(S, "a"))
      assert.are.equal(2, functions(S))
      assert.are.equal(2, count("SELECT count(*) FROM pg_proc WHERE pronamespace = 'sqlnotify_capture'::regnamespace"))
      assert.are.equal(2, r.h:drop(S))
      assert.are.equal(0, functions(S))
      assert.are.equal("", triggers_on(S, "b"))
      assert.are.equal("", triggers_on(S, "c"))
      assert.are.equal(1, functions("spec11_x"))
      assert.matches("^sqlnotify_a_insert_", triggers_on("spec11_x", "a"))
      assert.are.equal(0, r.h:drop(S, "a"))
    end)
  end)

  describe("old values and key changes (issue 12)", function()
    it("sends the OLD values of old_columns in \"o\", and the old key in \"oid\" when the key changed", function()
      H.psql("CREATE TABLE spec11.acct (id int PRIMARY KEY, email text, plan text)")
      local r = track(raw())
      local w = watch("acct", "update", { extra = { "email" }, old = { "email", "plan" } })
      install(r, w)
      H.psql([[
        INSERT INTO spec11.acct VALUES (1, 'a@x', 'free');
        UPDATE spec11.acct SET email = 'b@x' WHERE id = 1;
        UPDATE spec11.acct SET plan = NULL WHERE id = 1;
        UPDATE spec11.acct SET plan = 'pro' WHERE id = 1;
        UPDATE spec11.acct SET id = 2 WHERE id = 1;
      ]])
      wait_got(r, 4)
      local c = w.channel
      assert.are.same({
        { c, '{"o": {"plan": "free", "email": "a@x"}, "x": {"email": "b@x"}, "id": {"id": 1}}' },
        { c, '{"o": {"plan": "free", "email": "b@x"}, "x": {"email": "b@x"}, "id": {"id": 1}}' },
        { c, '{"o": {"plan": null, "email": "b@x"}, "x": {"email": "b@x"}, "id": {"id": 1}}' },
        { c, '{"o": {"plan": "pro", "email": "b@x"}, "x": {"email": "b@x"}, "id": {"id": 2}, "oid": {"id": 1}}' },
      }, r.got)
    end)

    it("counts old values in the 7999-byte limit: the keys, truncated, or the whole through the overflow table", function()
      H.psql("CREATE TABLE spec11.doc (a int, b text, note text, PRIMARY KEY (a, b)); INSERT INTO spec11.doc VALUES (1, 'k', repeat('x', 3000))")
      local r = track(raw())
      local plain = watch("doc", "update", { pk = { "a", "b" }, extra = { "note" }, old = { "note" } })
      local ovf = watch("doc", "update", { label = "spec11_doc_ovf", pk = { "a", "b" }, extra = { "note" },
        old = { "note" }, overflow = true })
      install(r, plain)
      install(r, ovf)
      local n, m = string.rep("n", 5000), string.rep("m", 5000)
      H.psql(fmt([[UPDATE spec11.doc SET note = '%s';
        UPDATE spec11.doc SET note = '%s', a = 2;]], n, m))
      wait_got(r, 4)
      local by = { [plain.channel] = {}, [ovf.channel] = {} }
      for _, ev in ipairs(r.got) do table.insert(by[ev[1]], ev[2]) end
      assert.are.same({
        '{"t": true, "id": {"a": 1, "b": "k"}}',
        '{"t": true, "id": {"a": 2, "b": "k"}, "oid": {"a": 1, "b": "k"}}',
      }, by[plain.channel])
      assert.are.same({
        '{"o": {"note": "' .. string.rep("x", 3000) .. '"}, "x": {"note": "' .. n .. '"}, "id": {"a": 1, "b": "k"}}',
        '{"o": {"note": "' .. n .. '"}, "x": {"note": "' .. m .. '"}, "id": {"a": 2, "b": "k"}, "oid": {"a": 1, "b": "k"}}',
      }, by[ovf.channel])
    end)
  end)
end)
