-- The operator's consumer commands through the real binary (SPEC §8.4): `--consumers URL`,
-- `--drop-consumer URL NAME`, `--uninstall URL [--yes]` and the readers `--list` names, on
-- PostgreSQL, SQLite and MariaDB, each in a database of its own made here and dropped after
-- (--uninstall takes everything of ours in a database).
local H = require("helper")
local sqlnotify = require("sqlnotify")
local fmt = string.format

local SUFFIX = tostring(os.time() % 100000) .. tostring(math.random(100, 999))

local run = H.run_host

-- A durable consumer on table t32: prints "ready", "got <id>" per insert and "dead <id>" for
-- a dead letter; consumer s32_a fails on id 13, s32_b asks for column v too (its own capture).
local WATCHER = [[
local sqlnotify = require("sqlnotify")
local url, consumer = arg[1], arg[2]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, retry = { attempts = 1 } })
n:watch("t32", "insert", consumer == "s32_b" and { extra_columns = { "v" } } or nil)
n:subscribe("t32", "insert", function(ev)
  if ev.id == 13 and consumer == "s32_a" then error("boom") end
  print("got " .. ev.id)
end)
n:on("dead_letter", function(ev) print("dead " .. tostring(ev.id)) end)
assert(n:start())
print("ready")
]]

local function watcher(url, consumer)
  local p = H.host(WATCHER, { url, consumer })
  assert.is_true(p:wait_for("ready\n", 30), p:stderr())
  return p
end

-- "consumers" output with lag_seconds and last_seen put as placeholders of their width (the
-- columns stay aligned); the seconds as numbers.
local function masked(out)
  local secs = {}
  local text = out:gsub("%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ", "YYYY-MM-DDTHH:MM:SSZ")
  text = text:gsub("(\n%S+%s+%d+%s+)(%d+%.%d)", function(head, s)
    secs[#secs + 1] = tonumber(s)
    return head .. "S" .. (" "):rep(#s - 1)
  end)
  return text, secs
end

local backends = {
  {
    name = "PostgreSQL",
    setup = function(b)
      b.db = "sn_s32_" .. SUFFIX
      H.psql(fmt("DROP DATABASE IF EXISTS %s WITH (FORCE)", b.db))
      H.psql(fmt("CREATE DATABASE %s", b.db))
      b.url = H.pg_url:gsub("/[^/?]*(%??[^/]*)$", "/" .. b.db .. "%1")
      b.sql("CREATE TABLE t32 (id int PRIMARY KEY, v text); CREATE TABLE t32_gone (id int PRIMARY KEY)")
      b.schema = "public"
    end,
    sql = function(b, s) return H.psql(s, b.url) end,
    teardown = function(b) H.psql(fmt("DROP DATABASE IF EXISTS %s WITH (FORCE)", b.db)) end,
    shares = "16",
    -- the objects besides the triggers, as --uninstall prints them
    rest = function(b)
      local lines = {}
      if b.leftover then lines[#lines + 1] = fmt("function public.%s (no trigger uses it)", b.leftover) end
      lines[#lines + 1] = "schema sqlnotify (tables consumers, dead_letters, journal_0, journal_1, journal_2, members, "
        .. "reads, shares, state, triggers_made, and everything else in it)"
      if b.sql("SELECT count(*) FROM pg_extension WHERE extname = 'sqlnotify_capture'") == "1\n" then
        lines[#lines + 1] = "extension sqlnotify_capture (version "
          .. b.sql("SELECT extversion FROM pg_extension WHERE extname = 'sqlnotify_capture'"):match("[^\n]+") .. ")"
      end
      if b.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlnotify_capture'") == "1\n" then
        lines[#lines + 1] = "schema sqlnotify_capture (the extension's)"
      end
      return lines
    end,
    -- what of ours is left, straight from the catalog
    left = function(b)
      return b.sql([[SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname LIKE 'sqlnotify%'
        UNION ALL SELECT 'extension ' || extname FROM pg_extension WHERE extname LIKE 'sqlnotify%'
        UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE obj_description(oid, 'pg_proc') LIKE 'sqlnotify%'
        UNION ALL SELECT 'table ' || relname FROM pg_class WHERE relname LIKE 'sqlnotify%'
        UNION ALL SELECT 'event trigger ' || evtname FROM pg_event_trigger WHERE evtname LIKE 'sqlnotify%' ORDER BY 1]])
    end,
  },
  {
    name = "SQLite",
    setup = function(b)
      b.path = H.fresh_sqlite("s32")
      H.sqlite_cli(b.path, "CREATE TABLE t32 (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE t32_gone (id INTEGER PRIMARY KEY);")
      b.url = "sqlite:///" .. b.path
      b.schema = "main"
    end,
    sql = function(b, s) return H.sqlite_cli(b.path, s) end,
    teardown = function() end,
    shares = "-",
    rest = function()
      return { "table sqlnotify_changes", "table sqlnotify_consumers", "table sqlnotify_dead_letters",
        "table sqlnotify_members", "table sqlnotify_readers", "table sqlnotify_reads" }
    end,
    left = function(b)
      return b.sql("SELECT type || ' ' || name FROM sqlite_master WHERE name LIKE 'sqlnotify%' ORDER BY 1;")
    end,
  },
  {
    name = "MariaDB",
    setup = function(b)
      b.db = "sn_s32_" .. SUFFIX
      H.mysql(fmt("DROP DATABASE IF EXISTS %s; CREATE DATABASE %s", b.db, b.db))
      b.url = H.mysql_url:gsub("/[^/?]*(%??[^/]*)$", "/" .. b.db .. "%1")
      b.sql("CREATE TABLE t32 (id INT PRIMARY KEY, v TEXT); CREATE TABLE t32_gone (id INT PRIMARY KEY)")
      b.schema = b.db
    end,
    sql = function(b, s) return H.mysql(fmt("USE %s; %s", b.db, s)) end,
    teardown = function(b) H.mysql(fmt("DROP DATABASE IF EXISTS %s", b.db)) end,
    shares = "-",
    rest = function()
      return { "table sqlnotify_consumers", "table sqlnotify_dead_letters", "table sqlnotify_journal",
        "table sqlnotify_members", "table sqlnotify_pruned", "table sqlnotify_reads" }
    end,
    left = function(b)
      return b.sql(fmt("SELECT CONCAT('table ', table_name) FROM information_schema.tables WHERE table_schema = '%s'"
        .. " AND table_name LIKE 'sqlnotify%%' UNION ALL SELECT CONCAT('trigger ', trigger_name)"
        .. " FROM information_schema.triggers WHERE event_object_schema = '%s' ORDER BY 1", b.db, b.db))
    end,
  },
}

for _, b in ipairs(backends) do
  local raw = b.sql
  b.sql = function(s) return raw(b, s) end
end

describe("sqlnotify-lua's consumer commands", function()
  it("refuses misuse with exit 2 and a bad URL with exit 1", function()
    local cases = {
      { { "--consumers" }, "sqlnotify: option --consumers needs a value (try --help)\n" },
      { { "--drop-consumer", "sqlite:///x.db" }, "sqlnotify: --drop-consumer needs a consumer name after the URL (try --help)\n" },
      { { "--drop-consumer", "sqlite:///x.db", "a", "b" }, 'sqlnotify: unexpected argument "b" (try --help)\n' },
      { { "--consumers", "sqlite:///x.db", "a" }, 'sqlnotify: unexpected argument "a" (try --help)\n' },
      { { "--uninstall", "sqlite:///x.db", "a" }, 'sqlnotify: unexpected argument "a" (try --help)\n' },
      { { "--list", "sqlite:///x.db", "--yes" }, "sqlnotify: --yes goes with --uninstall and --drop only (try --help)\n" },
      { { "--yes", "x.lua" }, "sqlnotify: --yes goes with --uninstall and --drop only (try --help)\n" },
      { { "--uninstall", "sqlite:///x.db", "--consumers", "sqlite:///x.db" },
        "sqlnotify: give one of --list, --drop, --dead-letters, --consumers, --drop-consumer and --uninstall (try --help)\n" },
      { { "--uninstall", "sqlite:///x.db", "--reload" }, "sqlnotify: --reload does not go with --uninstall (try --help)\n" },
    }
    for _, c in ipairs(cases) do
      local code, out, err = run(c[1])
      assert.are.same({ 2, "", c[2] }, { code, out, err }, table.concat(c[1], " "))
    end
    local code, out, err = run { "--uninstall", "postgresql://root:hunter2@127.0.0.1:1/nodb" }
    assert.are.same({ 1, "" }, { code, out })
    assert.matches('^sqlnotify: cannot connect to database "nodb" on 127%.0%.0%.1:1[^\n]*\n$', err)
    assert.is_nil(err:find("hunter2", 1, true))
    code, out = run { "--help" }
    assert.are.equal(0, code)
    assert.matches("\n  %-%-consumers URL  ", out)
    assert.matches("\n  %-%-drop%-consumer URL NAME\n", out)
    assert.matches("\n  %-%-uninstall URL %[%-%-yes%]\n", out)
  end)

  describe("on PostgreSQL, where another role owns some objects", function()
    local db, op, other = "sn_s32r_" .. SUFFIX, "sn_s32_op_" .. SUFFIX, "sn_s32_other_" .. SUFFIX
    local function url_as(role) return (H.pg_url:gsub("//[^@/]*@", "//" .. role .. "@"):gsub("/[^/?]*(%??[^/]*)$", "/" .. db .. "%1")) end

    setup(function()
      H.psql(fmt("CREATE DATABASE %s; CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN; GRANT CREATE ON DATABASE %s TO %s",
        db, op, other, db, op))
      H.psql(fmt("GRANT CREATE ON SCHEMA public TO %s, %s", op, other), url_as("root"))
      H.psql("CREATE TABLE t_op (id int PRIMARY KEY)", url_as(op))
      H.psql("CREATE TABLE t_other (id int PRIMARY KEY)", url_as(other))
    end)

    teardown(function()
      H.psql(fmt("DROP DATABASE IF EXISTS %s WITH (FORCE)", db))
      H.psql(fmt("DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s", op, other))
    end)

    it("says which and why, drops the rest, keeps the journal a trigger left behind may need, and exits 1", function()
      -- op's consumer on its table (the journal is op's), other's live watch on its own
      local script = [[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = arg[1], consumer = arg[3] ~= "-" and arg[3] or nil })
        n:watch(arg[2], "insert")
        assert(n:start())
        sqlnotify.stop()
      ]]
      for _, w in ipairs { { url_as(op), "t_op", "s32_op" }, { url_as(other), "t_other", "-" } } do
        local p = H.host(script, w)
        assert.are.equal(0, p:wait(30), p:stderr())
      end
      local code, out, err = run { "--uninstall", url_as(op) }
      assert.are.equal(0, code, err)
      assert.matches("\n  trigger %S+ on public%.t_other %(insert, live, function %S+%) %[owner " .. other
        .. ": this role cannot drop it%]\n", out)
      code, out, err = run { "--uninstall", url_as(op), "--yes", "--yes" }
      assert.are.equal(1, code)
      assert.matches("^dropped trigger %S+ on public%.t_op %(insert, durable %x+, [^\n]*\ndropped 1 object%(s%) in ", out)
      assert.matches("\nsqlnotify: cannot drop trigger %S+ on public%.t_other [^\n]*: must be owner of [%w ]*t_other\n", "\n" .. err)
      assert.matches("\nsqlnotify: cannot drop schema sqlnotify [^\n]*: kept: a trigger that could not be dropped may "
        .. "still write to it\n", err)
      assert.matches("\nsqlnotify: 2 object%(s%) not dropped\n$", err)
      assert.are.equal("0\n1\n1\n", H.psql([[SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_op'::regclass AND NOT tgisinternal;
        SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_other'::regclass AND NOT tgisinternal;
        SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlnotify']], url_as("root")))
    end)
  end)

  for _, b in ipairs(backends) do
    describe("on " .. b.name, function()
      local target, tag_a, tag_b, procs = nil, nil, nil, {}

      setup(function()
        b:setup()
        local n = assert(sqlnotify.notifier{ url = b.url, use_logger = false })
        target = n._h:target()
        n:close()
      end)

      teardown(function()
        for _, p in ipairs(procs) do if not p:exited() then p:kill("KILL") end end
        b:teardown()
      end)

      it("--list says live or durable and whose, --consumers prints lag, members, shares and dead letters", function()
        -- a live watch's triggers (and, on PostgreSQL, a function its dropped table left behind)
        local n = assert(sqlnotify.notifier{ url = b.url, use_logger = false })
        n:watch("t32", "delete")
        n:watch("t32_gone", "delete")
        assert(n:start())
        for _, r in ipairs(assert(n._h:list())) do
          if r[2] == "t32_gone" and r[6] and not r[6]:find("^sqlnotify_capture%.") then b.leftover = r[6] end
        end
        n:close()
        b.sql("DROP TABLE t32_gone")

        local a, bb = watcher(b.url, "s32_a"), watcher(b.url, "s32_b")
        procs[#procs + 1], procs[#procs + 2] = a, bb
        b.sql("INSERT INTO t32 VALUES (13, 'x')")
        assert.is_true(a:wait_for("dead 13\n", 30), a:stdout() .. a:stderr())
        assert.is_true(bb:wait_for("got 13\n", 30), bb:stdout() .. bb:stderr())
        bb:stop()
        b.sql("INSERT INTO t32 VALUES (1, 'x'); INSERT INTO t32 VALUES (2, 'x')")
        assert.is_true(a:wait_for("got 2\n", 30), a:stdout() .. a:stderr())
        a:stop()
        b.sql("INSERT INTO t32 VALUES (3, 'x')")

        local code, out, err = run { "--list", b.url }
        assert.are.same({ 0, "" }, { code, err })
        local captures = {}
        for line in out:gmatch("[^\n]+") do
          local cap = line:match("^%S+%s+t32%s+%a+%s+%S+%s+(%a.-)%s%s")
          if cap then captures[#captures + 1] = cap end
        end
        table.sort(captures)
        tag_a, tag_b = out:match("durable (%x+) for s32_a"), out:match("durable (%x+) for s32_b")
        assert(tag_a and tag_b and tag_a ~= tag_b, out)
        local expected = { "durable " .. tag_a .. " for s32_a", "durable " .. tag_b .. " for s32_b", "live" }
        table.sort(expected)
        assert.are.same(expected, captures)

        code, out, err = run { "--consumers", b.url }
        assert.are.same({ 0, "" }, { code, err })
        local text, secs = masked(out)
        local sh = fmt("%-6s", b.shares)
        assert.are.equal(
          "consumer  lag_events  lag_seconds  members  shares  last_seen             dead_letters\n"
          .. "s32_a     1           S            0        " .. sh .. "  YYYY-MM-DDTHH:MM:SSZ  1\n"
          .. "s32_b     3           S            0        " .. sh .. "  YYYY-MM-DDTHH:MM:SSZ  0\n"
          .. "2 consumer(s) in " .. target .. "\n", text)
        assert.are.equal(2, #secs)
        assert.is_true(secs[2] >= secs[1] and secs[1] >= 0 and secs[2] < 120, out)
      end)

      it("--drop-consumer forgets one and its own capture, and refuses a missing one", function()
        local n = assert(sqlnotify.notifier{ url = b.url, use_logger = false })
        local gone
        for _, r in ipairs(assert(n._h:list())) do
          if r[4]:find("#" .. tag_b, 1, true) then gone = r end
        end
        n:close()
        assert(gone)
        local code, out, err = run { "--drop-consumer", b.url, "s32_b" }
        assert.are.same({ 0, fmt('dropped consumer "s32_b" in %s: the journal rows only it held are released\n'
          .. "dropped its capture of insert on %s.t32 (channel %s, durable %s)\n", target, b.schema,
          gone[4]:match("^(.*)#"), tag_b), "" }, { code, out, err })
        code, out, err = run { "--consumers", b.url }
        assert.are.same({ 0, "" }, { code, err })
        assert.are.same({ "consumer", "s32_a", "1" }, { out:match("^(%S+)"), out:match("\n(%S+)"),
          out:match("\n(%d+) consumer%(s%)") })
        code, out, err = run { "--drop-consumer", b.url, "s32_b" }
        assert.are.same({ 1, "", fmt('sqlnotify: no consumer "s32_b" in %s\n', target) }, { code, out, err })
        -- the dead letters of a consumer that is there, and of a name that is not
        code, out, err = run { "--dead-letters", b.url, "s32_a" }
        assert.are.same({ 0, "", fmt("\n1 dead letter(s) in %s\n", target) },
          { code, err, out:match("\n[^\n]+\n$") })
        assert.are.same({ 1, "", fmt('sqlnotify: no consumer "s32_b" in %s\n', target) },
          { run { "--dead-letters", b.url, "s32_b" } })
      end)

      it("--uninstall lists exactly our objects, drops nothing without --yes, and everything with it", function()
        local n = assert(sqlnotify.notifier{ url = b.url, use_logger = false })
        local lines = {}
        for _, r in ipairs(assert(n._h:list())) do
          local _, capture = sqlnotify._capture_of(r[4])
          lines[#lines + 1] = fmt("trigger %s on %s.%s (%s, %s%s)", r[5], r[1], r[2], r[3], capture,
            r[6] and ", function " .. r[6] or "")
        end
        n:close()
        assert.are.equal(2, #lines)
        for _, l in ipairs(b.rest(b)) do lines[#lines + 1] = l end
        local before = b.left(b)

        local code, out, err = run { "--uninstall", b.url }
        assert.are.equal(0, code)
        assert.are.equal("sqlnotify objects in " .. target .. ":\n  " .. table.concat(lines, "\n  ") .. "\n"
          .. #lines .. " object(s); --yes drops them\n", out)
        -- the consumer stopped seconds ago: a warning now, a refusal with one --yes
        assert.matches('^sqlnotify: warning: consumer "s32_a" was seen %d+ s ago %(0 live member%(s%)%): %-%-yes '
          .. "refuses while it may run %(stop it first, or give %-%-yes twice%)\n$", err)
        assert.are.equal(before, b.left(b))
        code, out, err = run { "--uninstall", b.url, "--yes" }
        assert.are.equal(1, code)
        assert.are.equal("", out)
        assert.matches('^sqlnotify: consumer "s32_a" was seen %d+ s ago [^\n]*give %-%-yes twice[^\n]*\n'
          .. "sqlnotify: nothing dropped\n$", err)
        assert.are.equal(before, b.left(b))

        code, out, err = run { "--uninstall", b.url, "--yes", "--yes" }
        assert.are.same({ 0, "dropped " .. table.concat(lines, "\ndropped ") .. "\n"
          .. fmt("dropped %d object(s) in %s\n", #lines, target), "" }, { code, out, err })
        assert.are.equal("", b.left(b))
        code, out, err = run { "--uninstall", b.url }
        assert.are.same({ 0, "no sqlnotify objects in " .. target .. "\n", "" }, { code, out, err })
        assert.are.same({ 0, "no consumers in " .. target .. "\n", "" }, { run { "--consumers", b.url } })
      end)

      it("a watcher started after the uninstall makes what it needs again", function()
        local a = watcher(b.url, "s32_a")
        procs[#procs + 1] = a
        b.sql("INSERT INTO t32 VALUES (40, 'x')")
        assert.is_true(a:wait_for("got 40\n", 30), a:stdout() .. a:stderr())
        a:stop()
        local code, out = run { "--consumers", b.url }
        assert.are.equal(0, code)
        assert.matches("\ns32_a%s+0%s+0%.0%s+0%s+", out)
      end)
    end)
  end
end)
