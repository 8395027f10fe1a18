-- The Lua API on PostgreSQL, in process, where it is PostgreSQL's own: URL schemes, error
-- lines, the notification limit, timers. The cases every dialect shares
-- (events, keys, filters, labels, notify, query, lifecycle) are spec/cases/api.lua, which
-- spec 10 runs on PostgreSQL; the values on the wire are spec/cases/wire.lua (spec 33).
local H = require("helper")
local sqlnotify = require("sqlnotify")

local S = "spec01"

local function setup_tables()
  H.fresh_schema(S)
  H.psql([[
    SET search_path = spec01;
    CREATE TABLE users (id serial PRIMARY KEY, email text, name text, age int);
  ]])
end

local collector = H.collector

describe("sqlnotify (PostgreSQL API)", function()
  local n

  before_each(function()
    setup_tables()
    n = H.pg_notifier()
  end)

  after_each(function()
    if n then
      n:cleanup()
      n:close()
      n = nil
    end
  end)

  teardown(function() H.drop_schema(S) end)

  describe("constants", function()
    it("spells operations both ways", function()
      assert.are.equal("insert", sqlnotify.INSERT)
      assert.are.equal("update", sqlnotify.UPDATE)
      assert.are.equal("delete", sqlnotify.DELETE)
      assert.are.equal(sqlnotify.INSERT, sqlnotify.Operation.INSERT)
      assert.are.equal(sqlnotify.UPDATE, sqlnotify.Operation.UPDATE)
      assert.are.equal(sqlnotify.DELETE, sqlnotify.Operation.DELETE)
    end)
  end)

  describe("log_level", function()
    it("gets and sets the level, refusing an unknown one", function()
      local was = sqlnotify.log_level()
      assert.are.equal("info", was)
      assert.are.equal("debug", sqlnotify.log_level("debug"))
      assert.are.equal("debug", sqlnotify.log_level())
      assert.has_error(function() sqlnotify.log_level("loud") end,
        'sqlnotify: unknown log level "loud" (use error, warn, info or debug)')
      assert.are.equal("info", sqlnotify.log_level(was))
    end)
  end)

  describe("notifier", function()

    it("refuses an unknown URL scheme", function()
      assert.has_error(function() sqlnotify.notifier{ url = "oracle://x/y" } end,
        'sqlnotify: unsupported database URL scheme "oracle" (expected postgresql://, mysql:// or sqlite://)')
    end)

    it("refuses an unknown option", function()
      assert.has_error(function() sqlnotify.notifier{ url = H.pg_url, revoke = true } end,
        'sqlnotify: unknown notifier option "revoke"')
    end)

  end)

  describe("watch and subscribe errors", function()
    it("reports the error at the caller's line", function()
      local ok, e = pcall(function() n:watch(S .. ".nosuch", "insert") end)
      assert.is_false(ok)
      assert.matches("^.-01%-pg_api_spec%.lua:%d+: sqlnotify: unknown table", e)
    end)
  end)

  describe("events", function()

    it("keeps delivering after a handler raises, and logs the error with a traceback", function()
      local got, handler = collector()
      local logs = {}
      n._log = function(_, level, ...) logs[#logs + 1] = { level, string.format(...) } end
      n:watch(S .. ".users", "insert")
      n:subscribe(S .. ".users", "insert", function(ev)
        if ev.id == 1 then error("boom in handler") end
      end)
      n:subscribe(S .. ".users", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id) VALUES (1); INSERT INTO spec01.users (id) VALUES (2);")
      assert.is_true(H.run_until(function() return #got == 2 end))
      assert.are.same({ 1, 2 }, { got[1].id, got[2].id })
      local failures = {}
      for _, l in ipairs(logs) do
        if l[1] == "error" then failures[#failures + 1] = l[2] end
      end
      assert.are.equal(1, #failures)
      assert.matches('^handler for insert on "spec01"%."users" failed for id 1: [^\n]*spec/01%-pg_api_spec%.lua:%d+: '
        .. "boom in handler\nstack traceback:\n", failures[1])
      -- the traceback is the handler's: it ends at its function, without the runtime's frames
      assert.matches("stack traceback:\n\t%[C%]: in function 'error'\n\t[^\n]*spec/01%-pg_api_spec%.lua:%d+: in "
        .. "function <[^\n]*spec/01%-pg_api_spec%.lua:%d+>$", failures[1])
    end)

    it("sends a row too large for a notification as its key, truncated, and the write succeeds", function()
      local got, handler = collector()
      n:watch(S .. ".users", "insert", { extra_columns = { "name" } })
      n:subscribe(S .. ".users", "insert", handler)
      assert(n:start())
      H.psql("INSERT INTO spec01.users (id, name) VALUES (9, repeat('x', 20000))")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.equal(9, got[1].id)
      assert.is_true(got[1].truncated)
      assert.are.same({}, got[1].extra_columns)
      assert.are.equal("20000", H.psql("SELECT length(name) FROM spec01.users WHERE id = 9"):match("%d+"))
    end)
  end)

  describe("notify", function()

    it("refuses a payload over the limit without overflow, giving its size", function()
      n:watch(S .. ".users", "insert", { extra_columns = { "name" } })
      local ok, e = pcall(n.notify, n, S .. ".users", "insert", { id = 1, name = string.rep("y", 9000) })
      assert.is_false(ok)
      assert.matches("sqlnotify: notify payload is 9031 bytes, over the 7999%-byte limit of postgresql notifications %(use use_overflow_table%)$", e)
    end)
  end)

  describe("timers", function()
    it("runs after() once and every() until stopped, and now() has sub-second resolution", function()
      local order = {}
      sqlnotify.after(0.02, function() order[#order + 1] = "after" end)
      local ticks = 0
      local t
      t = sqlnotify.every(0.005, function()
        ticks = ticks + 1
        if ticks == 3 then t:stop() end
      end)
      H.run_for(0.1)
      assert.are.equal(3, ticks)
      assert.are.same({ "after" }, order)
      local a = sqlnotify.now()
      assert.are.equal("float", math.type(a))
      H.sleep(0.002)
      assert.is_true(sqlnotify.now() - a > 0.001)
    end)

    it("returns from run() at once after stop() was called before it", function()
      sqlnotify.stop()
      local ticked = false
      -- a run() that did not return at once would tick this, then be stopped by it
      local t = sqlnotify.every(3, function() ticked = true; sqlnotify.stop() end)
      sqlnotify.run()
      t:stop()
      assert.is_false(ticked)
    end)
  end)
end)
