-- The Lua API where a newcomer trips: channel names that cannot collide, notifiers the
-- garbage collector can take, a failed watch after start, views and permissions, filter
-- shapes and values, the reconnect and error hooks, handler failure reports, URLs without
-- a scheme, the debug line per event, keyless tables, NULLs, old_columns, trigger checks.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")

local S = "spec14"
local fmt = string.format

local function url_with(url, param)
  return url .. (url:find("?", 1, true) and "&" or "?") .. param
end

-- The notifier's log lines ("level message"), instead of stderr.
local function capture(n)
  local logs = {}
  n._log = function(_, level, ...) logs[#logs + 1] = level .. " " .. fmt(...) end
  return logs
end

local function grep(logs, plain)
  local out = {}
  for _, l in ipairs(logs) do
    if l:find(plain, 1, true) then out[#out + 1] = l end
  end
  return out
end

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok)
  return (tostring(e):gsub("^[^\n]-:%d+: ", "", 1))
end

local function sqlite_url(path) return "sqlite:///" .. path end

local function setup()
  H.fresh_schema(S)
  H.psql([[
    SET search_path = spec14;
    CREATE TABLE items (id serial PRIMARY KEY, sku text, qty int, price numeric(10,2), amount numeric,
      ratio float8, active boolean, note text, data bytea);
    CREATE TABLE logbook (at timestamptz DEFAULT now(), line text);
    CREATE TABLE coded (code text, label text);
    CREATE UNIQUE INDEX coded_code ON coded (code);
    CREATE VIEW items_view AS SELECT * FROM items;
  ]])
end

describe("sqlnotify usability", function()
  local n

  before_each(function()
    setup()
    n = H.pg_notifier()
  end)

  after_each(function()
    if n and not n._closed then
      n:cleanup()
      n:close()
    end
    n = nil
  end)

  teardown(function()
    H.drop_schema(S)
    H.drop_schema("s14x_y")
    H.drop_schema("s14x")
    H.drop_schema("spec14p")
  end)

  describe("default channel names", function()
    local function channel(m, t, op, opts)
      m:watch(t, op, opts)
      return m._watches[#m._watches].channel
    end

    it("joins plain names and hashes every other tuple, within 63 bytes", function()
      H.fresh_schema("s14x_y")
      local long = ("L"):rep(60)
      H.psql('CREATE TABLE s14x_y.t (id int PRIMARY KEY); CREATE TABLE spec14."' .. long .. '" (id int PRIMARY KEY);')
      assert.are.equal("sqlnotify_spec14_items_insert", channel(n, S .. ".items", "insert"))
      assert.are.equal("sqlnotify_s14x_y_t_insert_" .. core.hash("s14x_y\0t\0insert"),
        channel(n, "s14x_y.t", "insert"))
      local c = channel(n, S .. "." .. long, "update")
      assert.are.equal(("sqlnotify_spec14_" .. long):sub(1, 46) .. "_" .. core.hash("spec14\0" .. long .. "\0update"), c)
      assert.are.equal(63, #c)
      assert.are.equal("sqlnotify_new_items", channel(n, S .. ".items", "update", { channel_label = "new_items" }))
      local label = ("l"):rep(70)
      assert.are.equal(("sqlnotify_" .. label):sub(1, 46) .. "_" .. core.hash("sqlnotify_" .. label),
        channel(n, S .. ".items", "delete", { channel_label = label }))
    end)

    it("takes a channel_label literally: spaces are kept, so \"new users\" and \"new_users\" are two", function()
      local got = {}
      for _, label in ipairs { "new users", "new_users", " new users " } do
        n:watch(S .. ".items", "insert", { channel_label = label })
        n:subscribe(S .. ".items", "insert", { channel_label = label }, function(ev)
          got[#got + 1] = label .. " -> " .. ev.channel .. " " .. ev.id
        end)
      end
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a');")
      assert.is_true(H.run_until(function() return #got >= 3 end))
      H.run_for(0.1)
      table.sort(got)
      assert.are.same({ " new users  -> sqlnotify_ new users  1", "new users -> sqlnotify_new users 1",
        "new_users -> sqlnotify_new_users 1" }, got)
    end)

    it("gives x_y.t and x.y_t channels of their own: each notifier gets only its table's events", function()
      H.fresh_schema("s14x_y")
      H.fresh_schema("s14x")
      H.psql("CREATE TABLE s14x_y.t (id int PRIMARY KEY); CREATE TABLE s14x.y_t (id int PRIMARY KEY);")
      local m = H.pg_notifier()
      finally(function() m:cleanup(); m:close() end)
      local got1, h1 = H.collector()
      local got2, h2 = H.collector()
      n:watch("s14x_y.t", "insert"):subscribe("s14x_y.t", "insert", h1)
      m:watch("s14x.y_t", "insert"):subscribe("s14x.y_t", "insert", h2)
      assert(n:start())
      assert(m:start())
      assert.are_not.equal(n._watches[1].channel, m._watches[1].channel)
      H.psql("BEGIN; INSERT INTO s14x_y.t VALUES (1); INSERT INTO s14x.y_t VALUES (2); COMMIT;"
        .. "INSERT INTO s14x_y.t VALUES (100); INSERT INTO s14x.y_t VALUES (200);")
      -- each listener receives in commit order: once the last row is in, nothing else is due
      assert.is_true(H.run_until(function() return #got1 >= 2 and #got2 >= 2 end))
      local function rows(got)
        local out = {}
        for i, ev in ipairs(got) do out[i] = ev.schema .. "." .. ev.table .. ":" .. ev.id end
        return out
      end
      assert.are.same({ "s14x_y.t:1", "s14x_y.t:100" }, rows(got1))
      assert.are.same({ "s14x.y_t:2", "s14x.y_t:200" }, rows(got2))
    end)
  end)

  describe("garbage collection", function()
    it("collects a notifier that was never started, and its connection", function()
      local m = H.pg_notifier()
      m:watch(S .. ".items", "insert")
      m:subscribe(S .. ".items", "insert", function() end)
      local seen = setmetatable({ m, m._h }, { __mode = "v" })
      m = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.is_nil(seen[1])
      assert.is_nil(seen[2])
    end)

    it("keeps a started notifier until it stops, delivering meanwhile", function()
      local got, handler = H.collector()
      local m = H.pg_notifier()
      m:watch(S .. ".items", "insert"):subscribe(S .. ".items", "insert", handler)
      assert(m:start())
      local seen = setmetatable({ m }, { __mode = "v" })
      m = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.is_not_nil(seen[1])
      H.psql("INSERT INTO spec14.items (sku) VALUES ('kept')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(1, got[1].id)
      seen[1]:stop()
      collectgarbage()
      collectgarbage()
      assert.is_nil(seen[1])
    end)

    it("under the host, starts a notifier the script did not keep in a variable", function()
      local p = H.host([[
        local sqlnotify = require("sqlnotify")
        assert(sqlnotify.notifier{ url = os.getenv("PG") }):watch("spec14.items", "insert")
          :subscribe("spec14.items", "insert", function(ev) print("got " .. ev.id) end)
        collectgarbage()
        collectgarbage()
        sqlnotify.after(0, function() collectgarbage(); print("ready") end)
      ]], {}, "PG=" .. H.shell_quote(H.pg_url))
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a')")
      assert.is_true(p:wait_for("got 1\n"), p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\ngot 1\n", p:stdout())
      p:assert_clean()
    end)
  end)

  describe("a watch after start whose install fails", function()
    it("raises one line, stays unregistered, and the same watch works once the cause is fixed", function()
      H.psql("CREATE TABLE spec14.gone (id int PRIMARY KEY, v text)")
      n:watch(S .. ".gone", "insert")
      assert(n:start())
      H.psql("DROP TABLE spec14.gone")
      local e = err_of(function() n:watch(S .. ".gone", "update") end)
      assert.matches("^sqlnotify: ", e)
      assert.is_nil(e:find("\n", 1, true))
      assert.is_nil(e:find("sqlnotify: sqlnotify:", 1, true))
      H.psql("CREATE TABLE spec14.gone (id int PRIMARY KEY, v text); INSERT INTO spec14.gone VALUES (7, 'a');")
      assert.are.equal('sqlnotify: no watch for update on "spec14"."gone" (call watch first)',
        err_of(function() n:subscribe(S .. ".gone", "update", print) end))
      n:watch(S .. ".gone", "update", { extra_columns = { "v" } })
      local got, handler = H.collector()
      n:subscribe(S .. ".gone", "update", handler)
      H.psql("UPDATE spec14.gone SET v = 'b'")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ 7, "b" }, { got[1].id, got[1].extra_columns.v })
    end)
  end)

  describe("views", function()
    -- needs the drivers' describe to report views (pg and sqlite branches)
    it("are refused by name on PostgreSQL", function()
      assert.are.equal('sqlnotify: "spec14"."items_view" is a view; views cannot be watched (watch the tables under it)',
        err_of(function() n:watch(S .. ".items_view", "insert") end))
    end)

    it("are refused by name on SQLite", function()
      local path = H.tmpfile(".db")
      local m = assert(sqlnotify.notifier{ url = sqlite_url(path) .. "?mode=rwc", use_logger = false })
      finally(function() m:close() end)
      assert(m:query("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
      assert(m:query("CREATE VIEW v AS SELECT * FROM t"))
      assert.are.equal('sqlnotify: "main"."v" is a view; views cannot be watched (watch the tables under it)',
        err_of(function() m:watch("v", "insert") end))
    end)
  end)

  describe("permission errors", function()
    -- A role that may use the schema but does not own the table (a built-in role: the
    -- spec creates none). The driver's wording naming the table comes with the pg branch.
    local function setup_perm()
      H.fresh_schema("spec14p")
      H.psql("CREATE TABLE spec14p.ev (id int PRIMARY KEY); GRANT USAGE, CREATE ON SCHEMA spec14p TO pg_monitor;")
      return url_with(H.pg_url, "options=-c%20role%3Dpg_monitor")
    end

    it("come back from start as one line with one prefix, naming the table", function()
      local m = assert(sqlnotify.notifier{ url = setup_perm(), use_logger = false })
      finally(function() m:close() end)
      m:watch("spec14p.ev", "insert")
      local ok, e = m:start()
      assert.is_nil(ok)
      assert.matches('^sqlnotify: [^\n]*"spec14p"%."ev"', e)
      assert.is_nil(e:find("\n", 1, true))
      assert.is_nil(e:find("sqlnotify: sqlnotify:", 1, true))
    end)

    it("stop the host with one line and status 1, without a traceback", function()
      -- needs the host to print _autostart's message as it is (core branch)
      local p = H.host([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        n:watch("spec14p.ev", "insert")
      ]], {}, "PG=" .. H.shell_quote(setup_perm()))
      assert.are.equal(1, p:wait())
      local err = p:stderr()
      local lines = {}
      for l in err:gmatch("[^\n]+") do
        if not l:find(" info ", 1, true) then lines[#lines + 1] = l end
      end
      assert.are.equal(1, #lines, err)
      assert.matches('^%S+ error sqlnotify: [^\n]*"spec14p"%."ev"', lines[1])
      assert.is_nil(err:find("sqlnotify: sqlnotify:", 1, true))
      assert.is_nil(err:find("traceback", 1, true))
    end)
  end)

  describe("filters", function()
    before_each(function()
      n:watch(S .. ".items", "insert", { extra_columns = { "sku", "qty", "price", "amount", "ratio", "active", "note" } })
    end)

    local function sub(filters)
      return function() n:subscribe(S .. ".items", "insert", { filters = filters }, print) end
    end

    it("say so when the options come after the handler", function()
      assert.are.equal("sqlnotify: subscribe takes its options before the handler: n:subscribe(table, operation, opts, handler)",
        err_of(function() n:subscribe(S .. ".items", "insert", print, { filters = { { column = "sku", value = "A" } } }) end))
    end)

    it("refuse every malformed shape by name", function()
      local shape = "sqlnotify: filters must be a list of {column = name, value = v}"
      local cases = {
        { { sku = "A-1" }, shape .. ', not a table with key "sku" (write {{column = "sku", value = ...}})' },
        { { column = "sku", value = "A-1" }, shape .. '; for one filter write filters = {{column = "sku", value = ...}}' },
        { "sku", shape .. ", got string" },
        { { "sku" }, "sqlnotify: filters[1] must be {column = name, value = v}, got string" },
        { { { column = "sku", value = "A" }, 42 }, "sqlnotify: filters[2] must be {column = name, value = v}, got number" },
        { { { column = "sku", value = "A", op = "=" } }, 'sqlnotify: filters[1] has unknown key "op" (use column, value, old)' },
        { { { col = "sku", value = "A" } }, 'sqlnotify: filters[1] has unknown key "col" (use column, value, old)' },
        { { { value = "A" } }, "sqlnotify: filters[1] needs a column name, got nil" },
        { { { column = "sku" } }, "sqlnotify: filters[1] needs a value (sqlnotify.null for SQL NULL)" },
        { { { column = "sku", value = {} } },
          "sqlnotify: filters[1] value must be a string, number, boolean or sqlnotify.null, got table" },
        { { { column = "sku", value = "A", old = 1 } }, "sqlnotify: filters[1].old must be a boolean" },
        { { { column = "sku", value = "A", old = true } },
          'sqlnotify: filter column "sku" with old = true is not in old_columns of the insert watch on "spec14"."items"' },
      }
      for _, c in ipairs(cases) do
        assert.are.equal(c[2], err_of(sub(c[1])))
      end
      assert.are.equal(0, n._subs[n._watches[1].channel] and n._subs[n._watches[1].channel].n or 0)
    end)

    it("convert a value of the wrong type where that is exact, with a warning, and refuse one that can never match",
      function()
        local logs = capture(n)
        local ok_cases = {
          { "qty", "20", 20, 'filter value "20" on column "qty" of "spec14"."items" (integer) is compared as 20' },
          { "qty", 20.0, 20, nil },
          { "price", 20, "20.00",
            'filter value 20 on column "price" of "spec14"."items" (numeric(10,2)) is compared as "20.00"' },
          { "price", "20.5", "20.50",
            'filter value "20.5" on column "price" of "spec14"."items" (numeric(10,2)) is compared as "20.50"' },
          { "amount", "20.5", "20.5", nil },
          { "ratio", "0.5", 0.5,
            'filter value "0.5" on column "ratio" of "spec14"."items" (double precision) is compared as 0.5' },
          { "active", "true", true,
            'filter value "true" on column "active" of "spec14"."items" (boolean) is compared as true' },
          { "sku", 42, "42", 'filter value 42 on column "sku" of "spec14"."items" (text) is compared as "42"' },
          { "note", sqlnotify.null, sqlnotify.null, nil },
        }
        for _, c in ipairs(ok_cases) do
          local before = #logs
          local s = n:subscribe(S .. ".items", "insert", { filters = { { column = c[1], value = c[2] } } }, print)
          assert.are.equal(c[3], s.filters[1].value)
          assert.are.equal(math.type(c[3]), math.type(s.filters[1].value))
          assert.are.same(c[4] and { "warn " .. c[4] } or {}, { table.unpack(logs, before + 1) })
        end
        local never = {
          { "qty", "abc", 'sqlnotify: filter value "abc" on column "qty" of "spec14"."items" can never match: '
            .. "the column is integer, class integer" },
          { "qty", 2.5, 'sqlnotify: filter value 2.5 on column "qty" of "spec14"."items" can never match: '
            .. "the column is integer, class integer" },
          { "price", 0.125, 'sqlnotify: filter value 0.125 on column "price" of "spec14"."items" can never match: '
            .. "the column is numeric(10,2), class decimal (scale 2)" },
          { "price", "20.001", 'sqlnotify: filter value "20.001" on column "price" of "spec14"."items" can never '
            .. "match: the column is numeric(10,2), class decimal (scale 2)" },
          { "amount", 20, 'sqlnotify: filter value 20 on column "amount" of "spec14"."items" can never match: '
            .. "the column is numeric, class decimal; exact decimals arrive as strings of their exact text; give the value"
            .. " as that text" },
          { "active", 1, 'sqlnotify: filter value 1 on column "active" of "spec14"."items" can never match: '
            .. "the column is boolean, class boolean" },
          { "sku", true, 'sqlnotify: filter value true on column "sku" of "spec14"."items" can never match: '
            .. "the column is text, class text" },
        }
        for _, c in ipairs(never) do
          assert.are.equal(c[3], err_of(sub({ { column = c[1], value = c[2] } })))
        end
      end)

    it("deliver on a converted value and on sqlnotify.null for SQL NULL", function()
      capture(n)
      local got20, h20 = H.collector()
      local gotnull, hnull = H.collector()
      n:subscribe(S .. ".items", "insert", { filters = { { column = "qty", value = "20" } } }, h20)
      n:subscribe(S .. ".items", "insert", { filters = { { column = "note", value = sqlnotify.null } } }, hnull)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (qty, note) VALUES (20, 'x'), (21, NULL), (20, NULL);")
      assert.is_true(H.run_until(function() return #got20 == 2 and #gotnull == 2 end))
      assert.are.same({ 1, 3 }, { got20[1].id, got20[2].id })
      assert.are.same({ 2, 3 }, { gotnull[1].id, gotnull[2].id })
    end)

    it("convert by SQLite's column affinity and never refuse", function()
      local path = H.tmpfile(".db")
      local m = assert(sqlnotify.notifier{ url = sqlite_url(path) .. "?mode=rwc", use_logger = false })
      finally(function() m:close() end)
      local logs = capture(m)
      assert(m:query("CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER, name TEXT, flag BOOLEAN, score REAL)"))
      m:watch("t", "insert", { extra_columns = { "qty", "name", "flag", "score" } })
      local cases = {
        { "qty", "20", 20, 'filter value "20" on column "qty" of "main"."t" (INTEGER) is compared as 20' },
        { "qty", "abc", "abc", nil },
        { "name", 7, "7", 'filter value 7 on column "name" of "main"."t" (TEXT) is compared as "7"' },
        { "flag", true, 1, 'filter value true on column "flag" of "main"."t" (BOOLEAN) is compared as 1' },
        { "score", "1.5", 1.5, 'filter value "1.5" on column "score" of "main"."t" (REAL) is compared as 1.5' },
      }
      for _, c in ipairs(cases) do
        local before = #logs
        local s = m:subscribe("t", "insert", { filters = { { column = c[1], value = c[2] } } }, print)
        assert.are.equal(c[3], s.filters[1].value)
        assert.are.same(c[4] and { "warn " .. c[4] } or {}, { table.unpack(logs, before + 1) })
      end
    end)
  end)

  describe("n:on", function()
    it("refuses an unknown event or a missing handler", function()
      assert.are.equal('sqlnotify: unknown notifier event "connect" (use "reconnect", "error" or "dead_letter")',
        err_of(function() n:on("connect", print) end))
      assert.are.equal('sqlnotify: on("error") needs a handler function, got nil',
        err_of(function() n:on("error") end))
      assert.are.equal(n, n:on("error", print))
    end)

    it("error: gets each handler failure with its event, the raised value and a traceback", function()
      capture(n)
      local errors = {}
      n:on("error", function(message, context) errors[#errors + 1] = { message, context } end)
      n:watch(S .. ".items", "insert")
      n:subscribe(S .. ".items", "insert", { name = "thrower" }, function(ev)
        if ev.id == 1 then error("boom", 0) end
        error({ code = ev.id })
      end)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a'), ('b');")
      assert.is_true(H.run_until(function() return #errors == 2 end))
      assert.are.equal('handler "thrower" for insert on "spec14"."items" failed for id 1: boom', errors[1][1])
      local c = errors[1][2]
      assert.are.same({ "handler", 1, "boom", "insert" }, { c.source, c.event.id, c.error, c.event.operation })
      assert.matches("^boom\nstack traceback:\n", c.traceback)
      assert.matches('^handler "thrower" for insert on "spec14"%."items" failed for id 2: table: ', errors[2][1])
      assert.are.same({ code = 2 }, errors[2][2].error)
    end)

    it("error: gets the connection's own error lines from the loop, with source \"database\"", function()
      local path = H.tmpfile(".db")
      local m = assert(sqlnotify.notifier{ url = sqlite_url(path) .. "?mode=rwc", use_logger = false })
      finally(function() m:close() end)
      assert(m:query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
      m:watch("t", "insert")
      local got, errors = {}, {}
      m:subscribe("t", "insert", function(ev) got[#got + 1] = ev.id end)
      m:on("error", function(message, context) errors[#errors + 1] = { message, context.source } end)
      assert(m:start())
      -- another process removes rows before this reader read them: a gap the reader reports
      assert(H.sh(fmt("sqlite3 %s %s", H.shell_quote(path), H.shell_quote(
        "BEGIN; INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b'); INSERT INTO t VALUES (3, 'c');"
        .. " DELETE FROM sqlnotify_changes WHERE seq = 2; COMMIT;"))))
      assert.is_true(H.run_until(function() return #got == 2 and #errors == 1 end))
      assert.are.same({ 1, 3 }, got)
      assert.are.same({ 'sqlnotify: events lost: row 2 of the change log of SQLite database "' .. path
        .. '" was removed before this reader read it', "database" }, errors[1])
    end)

    it("reconnect: gets the outage and whether events may have been missed", function()
      -- needs the PostgreSQL driver to call sink.reconnected (pg branch)
      local app = "spec14_rc_" .. math.random(1e9)
      local m = H.pg_notifier{ url = url_with(H.pg_url, "application_name=" .. app) }
      finally(function() m:close() end)
      local logs = capture(m)
      local calls = {}
      m:on("reconnect", function(outage, missed) calls[#calls + 1] = { outage, missed, #logs } end)
      m:watch(S .. ".items", "insert")
      assert(m:start())
      H.psql(fmt("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '%s' "
        .. "AND query LIKE 'LISTEN%%'", app))
      assert.is_true(H.run_until(function() return #calls == 1 end))
      assert.are.equal("number", type(calls[1][1]))
      assert.is_true(calls[1][1] >= 0)
      assert.is_true(calls[1][2])
    end)
  end)

  describe("n:is_running()", function()
    it("is true from a successful start until stop or close, and while the listener reconnects", function()
      local app = "spec14_run_" .. math.random(1e9)
      local m = H.pg_notifier{ url = url_with(H.pg_url, "application_name=" .. app) }
      finally(function() m:close() end)
      capture(m)
      local seen = {}
      m:on("error", function(_, ctx) seen[#seen + 1] = ctx.source .. " " .. tostring(m:is_running()) end)
      m:on("reconnect", function() seen[#seen + 1] = "reconnect " .. tostring(m:is_running()) end)
      assert.is_false(m:is_running())
      m:watch(S .. ".items", "insert")
      assert.is_false(m:is_running())
      assert(m:start())
      assert.is_true(m:is_running())
      m:stop()
      assert.is_false(m:is_running())
      assert(m:start())
      assert.is_true(m:is_running())
      H.psql(fmt("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '%s' "
        .. "AND query LIKE 'LISTEN%%'", app))
      assert.is_true(H.run_until(function() return seen[#seen] == "reconnect true" end))
      assert.are.same({ "database true", "reconnect true" }, seen)
      assert.is_true(m:is_running())
      m:close()
      assert.is_false(m:is_running())
    end)

    it("is false after a start that failed, and raises without a notifier", function()
      H.psql("CREATE TABLE spec14.doomed (id int PRIMARY KEY);")
      local m = H.pg_notifier()
      finally(function() m:close() end)
      capture(m)
      m:watch(S .. ".doomed", "insert")
      H.psql("DROP TABLE spec14.doomed;")
      local ok, err = m:start()
      assert.is_nil(ok)
      assert.matches("doomed", err, 1, true)
      assert.is_false(m:is_running())
      assert.are.equal("sqlnotify: method called without a notifier (use n:method(), not n.method())",
        err_of(function() return m.is_running() end))
    end)
  end)

  describe("handler failures", function()
    local function failures(logs)
      local out = {}
      for _, l in ipairs(grep(logs, "handler for insert")) do out[#out + 1] = (l:gsub("\nstack traceback:.*", "")) end
      return out
    end

    -- Three rows in one statement: the first failure is reported, the next two are held
    -- back by the rate limit; a second subscriber stops (or closes) the notifier on the third.
    local function fail_three(finish)
      local logs = capture(n)
      local done = false
      n:watch(S .. ".items", "insert")
      n:subscribe(S .. ".items", "insert", function(ev) error("bad " .. ev.id, 0) end)
      n:subscribe(S .. ".items", "insert", function(ev)
        if ev.id == 3 then
          finish(n)
          done = true
        end
      end)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) SELECT 'x' FROM generate_series(1, 3);")
      assert.is_true(H.run_until(function() return done end))
      return logs
    end

    local expected = {
      'error handler for insert on "spec14"."items" failed for id 1: bad 1',
      'error handler for insert on "spec14"."items": 2 more failure(s) since the last report',
    }

    it("name the subscriber and the row's id, and print the count held back at stop", function()
      local logs = fail_three(function(m) m:stop() end)
      assert.are.same(expected, failures(logs))
      n:close()
      assert.are.same(expected, failures(logs)) -- printed once
    end)

    it("print the count held back at close", function()
      local logs = fail_three(function(m) m:close() end)
      assert.are.same(expected, failures(logs))
    end)

    it("print the count held back when sqlnotify.run() returns", function()
      local logs = capture(n)
      local calls = 0
      n:watch(S .. ".items", "insert", { extra_columns = { "sku" } })
      n:subscribe(S .. ".items", "insert", { name = "audit" }, function(ev)
        calls = calls + 1
        error(ev.extra_columns.sku, 0)
      end)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a'), ('b');")
      assert.is_true(H.run_until(function() return calls == 2 end))
      local lines = {}
      for _, l in ipairs(grep(logs, 'handler "audit"')) do lines[#lines + 1] = (l:gsub("\nstack traceback:.*", "")) end
      assert.are.same({
        'error handler "audit" for insert on "spec14"."items" failed for id 1: a',
        'error handler "audit" for insert on "spec14"."items": 1 more failure(s) since the last report',
      }, lines)
    end)
  end)

  describe("database URLs", function()
    it("without a scheme are refused at the caller's line, never showing a password", function()
      local cases = {
        { "", 'sqlnotify: database URL "" has no scheme (expected postgresql://..., mysql://..., sqlite:///path.db)' },
        { "/var/db/app.db", 'sqlnotify: database URL "/var/db/app.db" has no scheme (expected postgresql://..., '
          .. "mysql://..., sqlite:///path.db)" },
        { "root:hunter2@localhost/db", 'sqlnotify: database URL "root:***@localhost/db" has no scheme (expected '
          .. "postgresql://..., mysql://..., sqlite:///path.db)" },
      }
      for _, c in ipairs(cases) do
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, e = pcall(function() sqlnotify.notifier{ url = c[1] } end)
        assert.is_false(ok)
        assert.are.equal("spec/14-api_usability_spec.lua:" .. line .. ": " .. c[2], e)
      end
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() sqlnotify.notifier{ url = "oracle://u:pw@x/y" } end)
      assert.is_false(ok)
      assert.are.equal("spec/14-api_usability_spec.lua:" .. line
        .. ': sqlnotify: unsupported database URL scheme "oracle" (expected postgresql://, mysql:// or sqlite://)', e)
    end)
  end)

  describe("misuse reached through a tail call or straight from pcall", function()
    local here = "spec/14-api_usability_spec.lua:"

    it("is raised at the nearest line of the caller left on the stack", function()
      -- a module ending in `return sqlnotify.notifier{...}`: its frame is gone when the error is raised
      local cases = {
        { "return sqlnotify.notifier{ url = '' }",
          'sqlnotify: database URL "" has no scheme (expected postgresql://..., mysql://..., sqlite:///path.db)' },
        { "return sqlnotify.notifier{ url = 'oracle://x/y' }",
          'sqlnotify: unsupported database URL scheme "oracle" (expected postgresql://, mysql:// or sqlite://)' },
        { "return sqlnotify.notifier{ url = 'sqlite:///x.db', retention = -1 }",
          "sqlnotify: retention must be a number of seconds above zero" },
        { "return sqlnotify.after('soon', print)", "sqlnotify: after needs a number of seconds, got string" },
        { "return sqlnotify.every(0, print)", "sqlnotify: every needs a period above zero" },
        { "return sqlnotify.log_level('loud')", 'sqlnotify: unknown log level "loud" (use error, warn, info or debug)' },
        { "return n:watch('spec14.nosuch', 'insert')", 'sqlnotify: unknown table "spec14"."nosuch"' },
        { "return n:subscribe('spec14.items', 'insert', function() end)",
          'sqlnotify: no watch for insert on "spec14"."items" (call watch first)' },
        { "n:watch('spec14.items', 'update') return n:subscribe('spec14.items', 'update', { filters = 1 }, print)",
          "sqlnotify: filters must be a list of {column = name, value = v}, got number" },
        { "return sqlnotify.io('x', 'r', print)", -- written in C: the reference
          "sqlnotify: io needs a file descriptor (an integer, or an object with a pollfd method), got string" },
      }
      for _, c in ipairs(cases) do
        local file = H.tmpfile(".lua")
        H.spit(file, "local sqlnotify, n = ...\n" .. c[1] .. "\n")
        local chunk = assert(loadfile(file))
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, e = pcall(chunk, sqlnotify, n)
        assert.is_false(ok)
        -- sqlnotify.io, written in C, keeps the module's own line: a Lua function cannot
        local at = c[1]:find("io(", 1, true) and file .. ":2: " or here .. line .. ": "
        assert.are.equal(at .. c[2], e, c[1])
      end
    end)

    it("names no line when called straight from pcall, as a function written in C does", function()
      assert.are.same({ false, "sqlnotify: io needs a file descriptor (an integer, or an object with a pollfd method), "
        .. "got string" }, { pcall(sqlnotify.io, "x", "r", print) })
      assert.are.same({ false, 'sqlnotify: database URL "" has no scheme (expected postgresql://..., mysql://..., '
        .. "sqlite:///path.db)" }, { pcall(sqlnotify.notifier, { url = "" }) })
      assert.are.same({ false, 'sqlnotify: unknown operation "upsert" (use sqlnotify.INSERT, UPDATE or DELETE)' },
        { pcall(n.watch, n, S .. ".items", "upsert") })
    end)

    it("names no line of sqlnotify's own when a handler tail-called", function()
      local logs = capture(n)
      n:watch(S .. ".items", "insert")
      n:subscribe(S .. ".items", "insert", { name = "tail" }, function() return n:watch(S .. ".nosuch", "insert") end)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a');")
      assert.is_true(H.run_until(function() return #grep(logs, 'handler "tail"') == 1 end))
      assert.are.equal('error handler "tail" for insert on "spec14"."items" failed for id 1: sqlnotify: unknown table '
        .. '"spec14"."nosuch"', (grep(logs, 'handler "tail"')[1]:gsub("\nstack traceback:.*", "")))
    end)
  end)

  describe("-l debug", function()
    it("logs one line per event: which subscribers ran and which filter kept the others out", function()
      local was = sqlnotify.log_level()
      finally(function() sqlnotify.log_level(was) end)
      local logs = capture(n)
      n:watch(S .. ".items", "insert", { extra_columns = { "sku", "qty" } })
      n:subscribe(S .. ".items", "insert", function() end)
      n:subscribe(S .. ".items", "insert", { name = "sku-a", filters = { { column = "sku", value = "A" } } },
        function() end)
      n:subscribe(S .. ".items", "insert", { filters = { { column = "qty", value = 5 } } }, function() end)
      n:subscribe(S .. ".items", "insert", { filters = { { column = "sku", value = "A" }, { column = "qty", value = 2 } } },
        function() end)
      assert(n:start())
      sqlnotify.log_level("debug")
      H.psql("INSERT INTO spec14.items (sku, qty) VALUES ('A', 1), (NULL, 5);")
      assert.is_true(H.run_until(function() return #grep(logs, "debug event ") == 2 end))
      local ch = n._watches[1].channel
      assert.are.same({
        'debug event insert on "spec14"."items" id 1 (channel ' .. ch .. '): ran #1, sku-a; filters did not match: '
          .. "#3 (qty is 1, not 5), #4 (qty is 1, not 2)",
        'debug event insert on "spec14"."items" id 2 (channel ' .. ch .. '): ran #1, #3; filters did not match: '
          .. 'sku-a (sku is sqlnotify.null, not "A"), #4 (sku is sqlnotify.null, not "A")',
      }, grep(logs, "debug event "))
    end)
  end)

  describe("tables without a key", function()
    it("can be watched for INSERT (id = nil, key = {}), not for UPDATE or DELETE", function()
      -- id = nil and key = {} come from the decoder (core branch), "id":{} from the triggers
      assert.are.equal('sqlnotify: table "spec14"."logbook" has no primary key; delete watches need one (pass '
        .. "primary_keys naming a unique key); only INSERT can be watched without a key",
        err_of(function() n:watch(S .. ".logbook", "delete") end))
      local got, handler = H.collector()
      n:watch(S .. ".logbook", "insert", { extra_columns = { "line" } })
      n:subscribe(S .. ".logbook", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec14.logbook (line) VALUES ('one'), ('two');")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ { nil, {}, "one" }, { nil, {}, "two" } },
        { { got[1].id, got[1].key, got[1].extra_columns.line }, { got[2].id, got[2].key, got[2].extra_columns.line } })
    end)

    it("accept primary_keys naming the column of a unique index", function()
      local got, handler = H.collector()
      n:watch(S .. ".coded", "update", { primary_keys = { "code" }, extra_columns = { "label" } })
      n:subscribe(S .. ".coded", "update", handler)
      assert(n:start())
      H.psql("INSERT INTO spec14.coded VALUES ('c1', 'a'); UPDATE spec14.coded SET label = 'b';")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ "c1", "b" }, { got[1].id, got[1].extra_columns.label })
    end)
  end)

  describe("NULLs and keys by name", function()
    -- event.key and nulls = true are the decoder's (core branch)
    it("with nulls = true, a NULL arrives as sqlnotify.null, and a filter on it matches", function()
      local m = H.pg_notifier{ nulls = true }
      finally(function() m:cleanup(); m:close() end)
      local all, h1 = H.collector()
      local nulls, h2 = H.collector()
      m:watch(S .. ".items", "insert", { extra_columns = { "sku", "note" } })
      m:subscribe(S .. ".items", "insert", h1)
      m:subscribe(S .. ".items", "insert", { filters = { { column = "note", value = sqlnotify.null } } }, h2)
      assert(m:start())
      H.psql("INSERT INTO spec14.items (sku, note) VALUES ('a', NULL), ('b', 'x');")
      assert.is_true(H.run_until(function() return #all == 2 end))
      assert.are.equal(sqlnotify.null, all[1].extra_columns.note)
      assert.are.equal("x", all[2].extra_columns.note)
      assert.are.equal(1, #nulls)
      assert.are.equal(1, nulls[1].id)
      assert.are.same({ id = 1 }, all[1].key)
    end)

    it("refuses a bad nulls or verify_interval option", function()
      assert.are.equal("sqlnotify: nulls must be a boolean", err_of(function() H.pg_notifier{ nulls = 1 } end))
      assert.are.equal("sqlnotify: verify_interval must be a number of seconds above zero, or false",
        err_of(function() H.pg_notifier{ verify_interval = 0 } end))
      assert.are.equal("sqlnotify: consumer_retention must be a number of seconds above zero",
        err_of(function() H.pg_notifier{ consumer = "c", consumer_retention = "1 week" } end))
    end)
  end)

  describe("old_columns", function()
    it("are validated like the other column lists, for UPDATE only", function()
      assert.are.equal('sqlnotify: old_columns only applies to UPDATE watches, not insert on "spec14"."items"',
        err_of(function() n:watch(S .. ".items", "insert", { old_columns = { "sku" } }) end))
      assert.are.equal('sqlnotify: old_columns only applies to UPDATE watches, not delete on "spec14"."items"',
        err_of(function() n:watch(S .. ".items", "delete", { old_columns = { "sku" } }) end))
      assert.are.equal('sqlnotify: unknown column "skuu" in old_columns of table "spec14"."items"',
        err_of(function() n:watch(S .. ".items", "update", { old_columns = { "skuu" } }) end))
      assert.are.equal("sqlnotify: old_columns must be a list of column names",
        err_of(function() n:watch(S .. ".items", "update", { old_columns = "sku" }) end))
      n:watch(S .. ".items", "update", { extra_columns = { "sku" }, old_columns = { "sku", "qty" } })
      assert.are.same({ "sku", "qty" }, n._watches[1].old)
    end)

    it("change the trigger's marker", function()
      n:watch(S .. ".items", "update", { extra_columns = { "sku" } })
      local m = H.pg_notifier()
      finally(function() m:close() end)
      m:watch(S .. ".items", "update", { extra_columns = { "sku" }, old_columns = { "sku" } })
      assert.are_not.equal(n._watches[1].marker, m._watches[1].marker)
    end)

    it("notify checks and sends an old table", function()
      n:watch(S .. ".items", "update", { extra_columns = { "sku" }, old_columns = { "sku" } })
      n:watch(S .. ".items", "insert", { extra_columns = { "sku" } })
      assert.are.equal('sqlnotify: notify old has column "qty" that is not in old_columns of the update watch on '
        .. '"spec14"."items"', err_of(function() n:notify(S .. ".items", "update", { id = 1 }, { old = { qty = 1 } }) end))
      assert.are.equal('sqlnotify: notify old has column "sku" that is not in old_columns of the insert watch on '
        .. '"spec14"."items"', err_of(function() n:notify(S .. ".items", "insert", { id = 1 }, { old = { sku = 1 } }) end))
      -- event.old from the decoder (core branch)
      local got, handler = H.collector()
      n:subscribe(S .. ".items", "update", handler)
      assert(n:start())
      assert(n:notify(S .. ".items", "update", { id = 5, sku = "new" }, { old = { sku = "old" } }))
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ 5, { sku = "new" }, { sku = "old" } }, { got[1].id, got[1].extra_columns, got[1].old })
    end)

    it("deliver the old values, and old = true filters match on them", function()
      -- needs old values from the triggers (pg branch) and event.old from the decoder (core branch)
      n:watch(S .. ".items", "update", { extra_columns = { "sku" }, old_columns = { "sku" } })
      local all, h1 = H.collector()
      local from_a, h2 = H.collector()
      n:subscribe(S .. ".items", "update", h1)
      n:subscribe(S .. ".items", "update", { filters = { { column = "sku", value = "a", old = true } } }, h2)
      assert(n:start())
      H.psql("INSERT INTO spec14.items (sku) VALUES ('a'), ('b'); UPDATE spec14.items SET sku = sku || '2';")
      assert.is_true(H.run_until(function() return #all == 2 end))
      assert.are.same({ { "a2", "a" }, { "b2", "b" } },
        { { all[1].extra_columns.sku, all[1].old.sku }, { all[2].extra_columns.sku, all[2].old.sku } })
      assert.are.equal(1, #from_a)
      assert.are.equal(1, from_a[1].id)
    end)
  end)

  describe("trigger checks", function()
    it("log at error level, and tell n:on('error'), when our trigger was dropped by someone else", function()
      -- needs the driver's verify (pg branch)
      local m = H.pg_notifier{ verify_interval = 0.05 }
      finally(function() m:close() end)
      local logs = capture(m)
      local errors = {}
      m:on("error", function(message, context) errors[#errors + 1] = { message, context } end)
      m:watch(S .. ".items", "insert")
      assert(m:start())
      H.run_for(0.2)
      assert.are.same({}, grep(logs, "replaced or dropped"))
      H.psql([[DO $$ DECLARE t text; BEGIN
        SELECT tgname INTO t FROM pg_trigger WHERE tgrelid = 'spec14.items'::regclass AND NOT tgisinternal;
        EXECUTE format('DROP TRIGGER %I ON spec14.items', t); END $$;]])
      assert.is_true(H.run_until(function() return #errors == 1 end))
      local msg = 'trigger for insert on "spec14"."items" was replaced or dropped by someone else (another watcher '
        .. "of this table and operation with other options, or a DROP); its events may be missing or wrong until "
        .. "this notifier is started again"
      assert.are.same({ "error " .. msg }, grep(logs, "replaced or dropped"))
      assert.are.equal(msg, errors[1][1])
      assert.are.same({ "trigger", "spec14", "items", "insert" },
        { errors[1][2].source, errors[1][2].schema, errors[1][2].table, errors[1][2].operation })
      H.run_for(0.2)
      assert.are.equal(1, #errors) -- said once
    end)

    it("check after a reconnect", function()
      -- needs the driver's verify and its reconnect notice (pg branch)
      local app = "spec14_vr_" .. math.random(1e9)
      local m = H.pg_notifier{ url = url_with(H.pg_url, "application_name=" .. app), verify_interval = false }
      finally(function() m:close() end)
      local logs = capture(m)
      local reconnects = 0
      m:on("reconnect", function() reconnects = reconnects + 1 end)
      m:watch(S .. ".items", "delete")
      assert(m:start())
      H.psql([[DO $$ DECLARE t text; BEGIN
        SELECT tgname INTO t FROM pg_trigger WHERE tgrelid = 'spec14.items'::regclass AND NOT tgisinternal;
        EXECUTE format('DROP TRIGGER %I ON spec14.items', t); END $$;]])
      H.run_for(0.1)
      assert.are.same({}, grep(logs, "replaced or dropped")) -- no timer: nothing noticed yet
      H.psql(fmt("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '%s' "
        .. "AND query LIKE 'LISTEN%%'", app))
      assert.is_true(H.run_until(function() return reconnects == 1 end))
      assert.are.same({ 'error trigger for delete on "spec14"."items" was replaced or dropped by someone else '
        .. "(another watcher of this table and operation with other options, or a DROP); its events may be missing "
        .. "or wrong until this notifier is started again" }, grep(logs, "replaced or dropped"))
    end)
  end)
end)
