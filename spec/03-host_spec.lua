-- The sqlnotify-lua host end to end: options, exit codes, arg, auto-start, signals,
-- and an installed host running a script that uses the API on odd names, with
-- writes from psql, checked by its exact stdout.
local H = require("helper")

local S = "spec03"
local LONG = "a_table_name_long_enough_that_its_channel_must_be_hashed_down"

-- Run the host to its end; env: "NAME=value ..." for its environment.
local function run(args, env)
  local out, err = H.tmpfile(".out"), H.tmpfile(".err")
  local argv = {}
  for i, a in ipairs(args) do argv[i] = H.shell_quote(a) end
  local ok, _, code = H.sh("ASAN_OPTIONS=detect_leaks=1 " .. (env or "") .. " " .. H.host_wrapper .. H.shell_quote(H.host_bin) .. " " .. table.concat(argv, " ")
    .. " >" .. out .. " 2>" .. err)
  return ok and 0 or code, H.slurp(out), H.slurp(err)
end

local function script_file(text)
  local path = H.tmpfile(".lua")
  H.spit(path, text)
  return path
end

describe("sqlnotify-lua", function()
  describe("command line", function()
    it("prints its version", function()
      local code, out = run { "--version" }
      assert.are.equal(0, code)
      assert.matches("^sqlnotify%-lua %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)\n$", out)
    end)

    it("prints help with usage, options, an example and exit codes", function()
      local code, out = run { "-h" }
      assert.are.equal(0, code)
      assert.matches("usage: sqlnotify%-lua %[options%] script%.lua", out)
      assert.matches("%-%-log%-level LEVEL", out)
      assert.matches("example:", out)
      assert.matches("exit status: 0 clean stop, 1 the script failed at start%-up, 2 usage error", out)
    end)

    it("exits 2 with a one-line reason on a bad option, a bad level or no script", function()
      local _
      local code, out, err = run { "--bogus", "x.lua" }
      assert.are.same({ 2, "", "sqlnotify: unknown option --bogus (try --help)\n" }, { code, out, err })
      code, _, err = run { "-l", "loud", "x.lua" }
      assert.are.same({ 2, 'sqlnotify: unknown log level "loud"; use error, warn, info or debug (try --help)\n' },
        { code, err })
      code, _, err = run {}
      assert.are.same({ 2, "sqlnotify: no script given (try --help)\n" }, { code, err })
      code, _, err = run { "--log-level" }
      assert.are.same({ 2, "sqlnotify: option --log-level needs a value (try --help)\n" }, { code, err })
    end)

    it("exits 1 with file:line when the script does not load or fails", function()
      local bad = script_file("local x = = 1\n")
      local code, _, err = run { bad }
      assert.are.equal(1, code)
      assert.matches("sqlnotify: " .. bad:gsub("%p", "%%%0") .. ":1: unexpected symbol near '='", err)
      local raising = script_file("local a = 1\nerror('nope')\n")
      code, _, err = run { raising }
      assert.are.equal(1, code)
      assert.matches("sqlnotify: " .. raising:gsub("%p", "%%%0") .. ":2: nope\nstack traceback:", err)
      code, _, err = run { "/nonexistent/script.lua" }
      assert.are.equal(1, code)
      assert.matches("sqlnotify: cannot open /nonexistent/script%.lua", err)
    end)

    it("sets arg as lua does and passes script arguments", function()
      local path = script_file("print(arg[0], arg[1], arg[2], select('#', ...), ...)\n")
      local code, out = run { "-l", "error", path, "one", "two" }
      assert.are.equal(0, code)
      assert.are.equal(path .. "\tone\ttwo\t2\tone\ttwo\n", out)
      -- one spelled like the host's option is still the script's, and the host says so once
      local code2, out2, err2 = run { path, "--metrics", ":9", "--reload" }
      assert.are.same({ 0, path .. "\t--metrics\t:9\t3\t--metrics\t:9\t--reload\n",
        "sqlnotify: warning: --metrics after the script's name is the script's argument (arg[1]); sqlnotify-lua's "
        .. "options go before the script\n" }, { code2, out2, err2 })
    end)

    it("exits 0 when the script stops the loop", function()
      local path = script_file([[
        local sqlnotify = require("sqlnotify")
        sqlnotify.after(0.01, function() print("tick"); sqlnotify.stop() end)
        sqlnotify.run() -- returns at once under the host; the host runs the loop
        print("loaded")
      ]])
      local code, out = run { path }
      assert.are.equal(0, code)
      assert.are.equal("loaded\ntick\n", out)
    end)

    it("exits 0 on a SIGTERM that comes while it stops on its own", function()
      local flag = H.tmpfile(".flag")
      local p = H.host(string.format([[
        local sqlnotify = require("sqlnotify")
        sqlnotify.after(0, function() print("running") end)
        -- nothing is left to wait on: the host stops, and closing the state runs this
        _G.slow = setmetatable({}, { __gc = function()
          io.stdout:write("closing\n")
          io.stdout:flush()
          local deadline = os.time() + 30
          while os.time() < deadline do
            local f = io.open(%q)
            if f then f:close() break end
          end
        end })
      ]], flag))
      assert.is_true(p:wait_for("running\nclosing\n"), p:stderr())
      p:kill("TERM")
      H.sleep(0.05) -- the signal is taken while the state closes
      H.spit(flag, "")
      assert.are.equal(0, p:wait())
      assert.are.equal("running\nclosing\n", p:stdout())
    end)

    it("survives a SIGHUP while the script loads, and reloads once the loop runs", function()
      local flag = H.tmpfile(".flag")
      local p = H.host(string.format([[
        local sqlnotify = require("sqlnotify")
        print("loading")
        local deadline = os.time() + 30
        while os.time() < deadline do -- busy: a signal arrives while the script runs
          local f = io.open(%q)
          if f then f:close() break end
        end
        sqlnotify.after(0, function() print("running") end)
      ]], flag))
      assert.is_true(p:wait_for("loading\n"), p:stderr())
      p:kill("HUP")
      H.spit(flag, "")
      assert.is_true(p:wait_for("loading\n.*running\n"), p:stderr())
      assert.is_true(p:wait_for("reloaded ", 10, "err"), p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      local out = p:stdout()
      assert.are.equal(2, select(2, out:gsub("loading\n", "")), out)
      assert.matches("running\n$", out)
      assert.matches("reloading .- %(SIGHUP%)", p:stderr())
      p:assert_clean()
    end)

    it("prints --help for the tools and refuses their misuse with exit 2", function()
      local code, out = run { "--help" }
      assert.are.equal(0, code)
      assert.matches("sqlnotify%-lua %-%-list URL | %-%-drop URL %[table%] %[%-%-yes%] | %-%-dead%-letters URL %[consumer%] | "
        .. "%-%-lua%-path", out)
      assert.matches("  %-%-dead%-letters URL %[consumer%]\n", out)
      assert.matches("  %-%-list URL  ", out)
      assert.matches("  %-%-drop URL %[table%] %[%-%-yes%]\n", out)
      assert.matches("  %-%-lua%-path  ", out)
      local _, err
      code, _, err = run { "--list" }
      assert.are.same({ 2, "sqlnotify: option --list needs a value (try --help)\n" }, { code, err })
      code, _, err = run { "--drop", "sqlite:///x.db", "t", "u" }
      assert.are.same({ 2, 'sqlnotify: unexpected argument "u" (try --help)\n' }, { code, err })
      code, _, err = run { "--list", "sqlite:///x.db", "t" }
      assert.are.same({ 2, 'sqlnotify: unexpected argument "t" (try --help)\n' }, { code, err })
      code, _, err = run { "--list", "sqlite:///x.db", "--drop", "sqlite:///x.db" }
      assert.are.same({ 2, "sqlnotify: give one of --list, --drop, --dead-letters, --consumers, "
        .. "--drop-consumer and --uninstall (try --help)\n" }, { code, err })
      code, _, err = run { "--lua-path", "x.lua" }
      assert.are.same({ 2, "sqlnotify: --lua-path takes nothing else (try --help)\n" }, { code, err })
    end)
  end)

  describe("examples", function()
    it("runs the JSON-lines example on SQLite: one JSON object a line for writes from another process", function()
      local cjson = require("cjson")
      local db = H.tmpfile(".db")
      assert(H.sh("sqlite3 " .. H.shell_quote(db) .. " 'CREATE TABLE tasks (id INTEGER PRIMARY KEY, t TEXT)'"))
      local p = H.host(H.slurp(H.root .. "/scripts/examples/jsonl.lua"), { "tasks" }, "DATABASE_URL=sqlite:///" .. db)
      assert.is_true(p:wait_for("listening on 3 channel", 10, "err"), p:stderr())
      assert(H.sh("sqlite3 " .. H.shell_quote(db) .. [[ ".timeout 5000" "INSERT INTO tasks VALUES (7, 'a');
        UPDATE tasks SET t = 'b'; DELETE FROM tasks;"]]))
      assert.is_true(p:wait_for('"delete"'), p:stdout())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      local events = {}
      for line in p:stdout():gmatch("[^\n]+") do
        local ev = cjson.decode(line)
        assert.are.equal("number", type(ev.timestamp))
        ev.timestamp = nil
        events[#events + 1] = ev
      end
      assert.are.same({
        { schema = "main", table = "tasks", operation = "insert", id = 7 },
        { schema = "main", table = "tasks", operation = "update", id = 7 },
        { schema = "main", table = "tasks", operation = "delete", id = 7 },
      }, events)
      p:assert_clean()
    end)
  end)

  describe("end to end on PostgreSQL", function()
    local prefix

    setup(function()
      H.fresh_schema(S)
      H.psql(string.format([[
        SET search_path = spec03;
        CREATE TABLE "Mixed Case ""quoted"" tablé" ("Select" int PRIMARY KEY, "e mail" text, "naïve" text, "it's" int);
        CREATE TABLE "%s" (id bigint PRIMARY KEY, v text);
        CREATE TABLE "order" ("from" int, "to" int, qty int, PRIMARY KEY ("from", "to"));
      ]], LONG))
      prefix = H.tmpdir() .. "/prefix"
      assert(H.sh("make -s install BUILD=" .. H.build .. " SANITIZE=" .. (os.getenv("SANITIZE") or "")
        .. " PREFIX=" .. prefix .. " >/dev/null"))
    end)

    teardown(function() H.drop_schema(S) end)

    it("prints exactly the expected events for writes from another client (installed host)", function()
      local script = [==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG"), use_logger = true })
        local odd = { schema = "spec03", table = 'Mixed Case "quoted" tablé' }
        local LONG = "spec03." .. arg[1]
        local seen, expected = 0, tonumber(arg[2])

        local function show(ev)
          local id = type(ev.id) == "table" and table.concat(ev.id, ",") or tostring(ev.id)
          local keys = {}
          for k in pairs(ev.extra_columns) do keys[#keys + 1] = k end
          table.sort(keys)
          for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(ev.extra_columns[k]) end
          print(string.format("%s %s.%s id=%s [%s] via %s", ev.operation, ev.schema, ev.table, id,
            table.concat(keys, " "), #ev.channel <= 63 and "ok-channel" or ev.channel))
          seen = seen + 1
          if seen == expected then
            sqlnotify.after(0.2, function() n:stop(); n:cleanup(); sqlnotify.stop() end)
          end
        end

        n:watch(odd, sqlnotify.INSERT, { extra_columns = { "e mail", "naïve", "it's" } })
         :watch(odd, sqlnotify.Operation.UPDATE, { extra_columns = { "e mail" }, trigger_columns = { "e mail" } })
         :watch(odd, "delete", { channel_label = "odd deletes" })
         :watch(LONG, "insert", { extra_columns = { "v" } })
         :watch("spec03.order", "insert", { extra_columns = { "qty" } })
         :watch("spec03.order", "update", { primary_keys = { "to", "from" } })
        n:subscribe(odd, "insert", show)
        n:subscribe(odd, "update", show)
        n:subscribe(odd, "delete", { channel_label = "odd deletes" }, show)
        n:subscribe(LONG, "insert", { filters = { { column = "v", value = "keep" } } }, show)
        local dropped = n:subscribe("spec03.order", "insert", function() print("never") end)
        dropped:unsubscribe()
        n:subscribe("spec03.order", "insert", show)
        n:subscribe("spec03.order", "update", show)
        assert(n.dialect_name == "postgresql")
        assert(#n:query("SELECT $1::text AS x", "q") == 1)
        local ticks = 0
        local t = sqlnotify.every(0.01, function() ticks = ticks + 1 end)
        sqlnotify.after(0, function()
          assert(sqlnotify.now() > 0)
          n:notify(odd, "insert", { ["Select"] = 0, ["e mail"] = "from notify" })
          print("ready")
        end)
        sqlnotify.after(0.05, function() t:stop() end)
      ]==]
      local path = script_file(script)
      local writes = string.format([[
        SET search_path = spec03;
        INSERT INTO "Mixed Case ""quoted"" tablé" VALUES (1, 'a@x', 'ça', 5);
        UPDATE "Mixed Case ""quoted"" tablé" SET "naïve" = 'no change to e mail' WHERE "Select" = 1;
        UPDATE "Mixed Case ""quoted"" tablé" SET "e mail" = 'b@x' WHERE "Select" = 1;
        INSERT INTO "%s" VALUES (1, 'drop'), (2, 'keep');
        INSERT INTO "order" VALUES (4, 2, 9);
        UPDATE "order" SET qty = 10;
        DELETE FROM "Mixed Case ""quoted"" tablé";
      ]], LONG)
      -- run from another directory with no environment variable but the URL the script reads
      local out, err = H.tmpfile(".out"), H.tmpfile(".err")
      assert(H.sh(string.format("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
        .. "PG=%s %s/bin/sqlnotify-lua %s %s 7 >%s 2>%s </dev/null &",
        H.shell_quote(H.pg_url), prefix, H.shell_quote(path), LONG, out, err)))
      local deadline = H.now() + 10
      while not H.slurp(out):find("ready\n") and H.now() < deadline do H.sleep(0.01) end
      assert.matches("ready\n", H.slurp(out), nil, true)
      H.psql(writes)
      deadline = H.now() + 10
      while not H.slurp(err):find("stopping") and select(2, H.slurp(out):gsub("\n", "")) < 8 and H.now() < deadline do
        H.sleep(0.02)
      end
      H.sleep(0.5)
      assert.are.equal(table.concat({
        "ready",
        'insert spec03.Mixed Case "quoted" tablé id=0 [e mail=from notify] via ok-channel',
        'insert spec03.Mixed Case "quoted" tablé id=1 [e mail=a@x it\'s=5 naïve=ça] via ok-channel',
        'update spec03.Mixed Case "quoted" tablé id=1 [e mail=b@x] via ok-channel',
        "insert spec03." .. LONG .. " id=2 [v=keep] via ok-channel",
        "insert spec03.order id=4,2 [qty=9] via ok-channel",
        "update spec03.order id=2,4 [] via ok-channel",
        'delete spec03.Mixed Case "quoted" tablé id=1 [] via ok-channel',
      }, "\n") .. "\n", H.slurp(out))
      assert.is_nil(H.slurp(err):find("error", 1, true), H.slurp(err))
      -- the script cleaned up its triggers
      assert.are.equal("0", H.psql([[SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'spec03' AND NOT t.tgisinternal]]):match("%d+"))
    end)

    it("starts the notifiers a script did not start, reads DATABASE_URL, and exits 0 on SIGTERM", function()
      local p = H.host([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier())
        n:watch("spec03.order", "delete")
        n:subscribe("spec03.order", "delete", function(ev) print("deleted " .. table.concat(ev.id, ",")) end)
        sqlnotify.after(0, function() print("ready") end)
      ]], {}, "DATABASE_URL=" .. H.shell_quote(H.pg_url))
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql('INSERT INTO spec03."order" VALUES (7, 8, 1); DELETE FROM spec03."order" WHERE "from" = 7;')
      assert.is_true(p:wait_for("deleted 7,8\n"), p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\ndeleted 7,8\n", p:stdout())
      assert.matches("sqlnotify: SIGTERM received, stopping", p:stderr())
      p:assert_clean()
    end)

    it("exits 1 with one line when the script cannot connect, naming the database without the password", function()
      local path = script_file([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = "postgresql://root:hunter2@127.0.0.1:1/test" })
      ]])
      local code, _, err = run { path }
      assert.are.equal(1, code)
      assert.matches('sqlnotify: [^\n]*cannot connect to database "test" on 127%.0%.0%.1:1', err)
      assert.is_nil(err:find("hunter2", 1, true))
    end)

    it("exits 1 with one line, no traceback, when a notifier the host starts cannot start", function()
      -- the watch is validated while its table exists; the host's start then finds it gone
      local path = script_file([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        assert(n:query("CREATE TABLE spec03.gone (id int PRIMARY KEY)"))
        n:watch("spec03.gone", "insert")
        assert(n:query("DROP TABLE spec03.gone"))
        print("loaded")
      ]])
      local code, out, err = run({ path }, "PG=" .. H.shell_quote(H.pg_url))
      assert.are.equal(1, code)
      assert.are.equal("loaded\n", out)
      assert.matches("^%S+ error sqlnotify: [^\n]*gone[^\n]*\n$", err)
      assert.is_nil(err:find("sqlnotify: sqlnotify:", 1, true), err)
    end)

    it("fails a handler that calls sqlnotify.run() with a clear error, and goes on delivering", function()
      H.psql("CREATE TABLE spec03.nest (id int PRIMARY KEY)")
      local p = H.host([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier())
        n:watch("spec03.nest", "insert")
        n:subscribe("spec03.nest", "insert", function(ev)
          print(ev.id)
          sqlnotify.run()
          print("not reached")
        end)
        sqlnotify.after(0, function() print("ready") end)
      ]], {}, "DATABASE_URL=" .. H.shell_quote(H.pg_url))
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql("INSERT INTO spec03.nest VALUES (1), (2); INSERT INTO spec03.nest VALUES (3);")
      assert.is_true(p:wait_for("3\n"), p:stdout())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\n1\n2\n3\n", p:stdout())
      assert.matches('handler for insert on "spec03"."nest" failed[^\n]*: sqlnotify: run%(%) called from inside a '
        .. "handler or callback; the loop is already running\n", p:stderr())
      p:assert_clean()
    end)

    it("lists the triggers with --list URL and drops one table's with --drop URL table", function()
      H.psql("CREATE TABLE spec03.listed (id int PRIMARY KEY)")
      local n = H.pg_notifier()
      n:watch("spec03.listed", "insert")
      assert(n:start())
      n:close()
      local function triggers()
        return H.psql([[SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace s ON s.oid = c.relnamespace
          WHERE s.nspname = 'spec03' AND c.relname = 'listed' AND NOT t.tgisinternal]]):match("%d+")
      end
      assert.are.equal("1", triggers())
      local code, out, err = run { "--list", H.pg_url }
      assert.are.equal(0, code, err)
      assert.matches("listed", out)
      assert.matches("insert", out)
      code, out, err = run { "--drop", H.pg_url, "spec03.listed" }
      assert.are.equal(0, code, err .. out)
      assert.are.equal("0", triggers())
    end)
  end)
  describe("installed with make install", function()
    it("prints with --lua-path the LUA_PATH and LUA_CPATH lines with which plain lua5.4 finds it", function()
      local prefix = H.tmpdir() .. "/luapath"
      local log = H.tmpfile(".log")
      -- a plain build, as a user gets it, even inside make check SANITIZE=address
      assert(H.sh("env -u SANITIZE -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s install BUILD="
        .. H.shell_quote(H.tmpdir() .. "/luapath-build") .. " PREFIX=" .. H.shell_quote(prefix) .. " >" .. log
        .. " 2>&1"), H.slurp(log))
      local out = H.tmpfile(".out")
      assert(H.sh(H.shell_quote(prefix .. "/bin/sqlnotify-lua") .. " --lua-path >" .. out))
      assert.are.equal(string.format("export LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;'\n"
        .. "export LUA_CPATH='%s/lib/lua/5.4/?.so;;'\n", prefix, prefix, prefix), H.slurp(out))
      local probe = script_file([[
        local sqlnotify = require("sqlnotify")
        print(sqlnotify.VERSION, package.searchpath("sqlnotify", package.path),
          package.searchpath("sqlnotify.core", package.cpath))
      ]])
      assert(H.sh("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 sh -c "
        .. H.shell_quote('eval "$(' .. H.shell_quote(prefix .. "/bin/sqlnotify-lua") .. ' --lua-path)" && lua5.4 '
        .. H.shell_quote(probe)) .. " >" .. out .. " 2>&1"), H.slurp(out))
      local version = H.slurp(out):match("^(%S+)\t")
      assert.are.equal(string.format("%s\t%s/share/lua/5.4/sqlnotify/init.lua\t%s/lib/lua/5.4/sqlnotify/core.so\n",
        version, prefix, prefix), H.slurp(out))
      assert.matches("^%d+%.%d+%.%d+$", version)
    end)
  end)
end)
