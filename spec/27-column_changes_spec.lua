-- A watched column renamed or dropped under a running host (issue 26 item 2), and watches of
-- extra_columns = "*" following their table (SPEC 8.5): on PostgreSQL (the plpgsql trigger
-- and the C one of sqlnotify_capture, live and durable), SQLite and MySQL/MariaDB, through
-- the real binary. The other columns keep arriving, the log names the column once at error
-- level (never "row too large"), the running notifier makes its trigger again for the table
-- as it is; "*" carries a column added and stops carrying one dropped.
-- PostgreSQL: schema spec27 (consumers s27_*); MySQL: tables s27_*; SQLite: a file per test.
local H = require("helper")
local fmt = string.format
local MYSQL_URL = os.getenv("SQLNOTIFY_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/sqlnotify_check"

-- The watcher: arg[1] url, arg[2] consumer ("-": live), arg[3] and arg[4] the users and items
-- tables. Prints one line per event: table (without MySQL's prefix s27_), operation, id, the
-- extra columns (sorted), the old ones, "truncated".
local HOST = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, consumer, users, items = arg[1], arg[2], arg[3], arg[4]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil, verify_interval = 0.3 })
local function pairs_of(t)
  local out = {}
  for k, v in pairs(t or {}) do out[#out + 1] = k .. "=" .. tostring(v) end
  table.sort(out)
  return table.concat(out, " ")
end
local function show(ev)
  print(string.format("%s %s %s [%s]%s%s", (ev.table:gsub("^s27_", "")), ev.operation, tostring(ev.id), pairs_of(ev.extra_columns),
    ev.old and " old [" .. pairs_of(ev.old) .. "]" or "", ev.truncated and " truncated" or ""))
end
n:watch(users, "insert", { extra_columns = { "email", "name", "age" } })
n:watch(users, "update", { extra_columns = { "name" }, old_columns = { "email" }, trigger_columns = { "email", "name" } })
n:watch(items, "insert", { extra_columns = "*" })
n:watch(items, "delete", { extra_columns = "*" })
for _, w in ipairs { { users, "insert" }, { users, "update" }, { items, "insert" }, { items, "delete" } } do
  n:subscribe(w[1], w[2], show)
end
assert(n:start())
print("ready")
]]

-- The log lines of a host without their timestamps.
local function log_lines(p)
  local out = {}
  for l in p:stderr():gmatch("[^\n]+") do out[#out + 1] = (l:gsub("^%S+Z ", "")) end
  return out
end

local function count_log(p, want)
  local k = 0
  for _, l in ipairs(log_lines(p)) do if l == want then k = k + 1 end end
  return k
end

local function wait_until(cond, what, timeout)
  local deadline = H.now() + (timeout or 20)
  while not cond() do
    assert(H.now() < deadline, "timed out waiting for " .. (type(what) == "function" and what() or what))
    H.sleep(0.02)
  end
end

-- Wait for k lines on stdout (after "ready"), then a little longer to see that no more come.
local function events(p, k)
  local function lines()
    local out = {}
    for l in p:stdout():gmatch("[^\n]+") do if l ~= "ready" then out[#out + 1] = l end end
    return out
  end
  wait_until(function() return #lines() >= k or p:exited() end, function()
    return k .. " events: " .. table.concat(lines(), "\n") .. "\n" .. p:stderr()
  end)
  H.sleep(0.4)
  return lines()
end

-- The dialects: exec(sql) runs SQL as another client; users/items name the tables for the
-- host, shown as the runtime names them in its log; immediate: writes right after an ALTER
-- see it (the PostgreSQL triggers read the table as it is), else the test waits until the
-- host made its triggers again.
local function pg_dialect(form, mode)
  local S = "spec27"
  return {
    name = fmt("PostgreSQL, the %s trigger, %s", form, mode), url = H.pg_url, immediate = true,
    consumer = mode == "durable" and "s27_" .. form or "-",
    env = form == "C" and "env -u SQLNOTIFY_PG_CAPTURE" or "SQLNOTIFY_PG_CAPTURE=plpgsql",
    users = S .. ".users", items = S .. ".items", shown = { users = '"spec27"."users"', items = '"spec27"."items"' },
    exec = function(sql) return H.psql("SET search_path = spec27;\n" .. sql) end,
    setup = function()
      H.fresh_schema(S)
      H.psql([[CREATE TABLE spec27.users (id int PRIMARY KEY, email text, name text, age int);
               CREATE TABLE spec27.items (id int PRIMARY KEY, a text, b int);]])
    end,
    teardown = function()
      local n = H.pg_notifier()
      for _, c in ipairs(assert(n:consumers())) do
        if c.name:sub(1, 4) == "s27_" then n:drop_consumer(c.name) end
      end
      n:close()
      H.drop_schema(S)
    end,
    -- the function the insert trigger on users calls
    users_insert_fn = function()
      return H.psql([[SELECT p.pronamespace::regnamespace || '.' || p.proname FROM pg_trigger t
        JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = 'spec27.users'::regclass AND t.tgtype & 4 <> 0]])
    end,
  }
end

local function mysql_dialect()
  local user, host, port, db = MYSQL_URL:match("^[%w+]+://([^:@/]*)[^@/]*@([^:/]*):?(%d*)/([^?]*)")
  local function exec(sql)
    local file, out = H.tmpfile(".sql"), H.tmpfile(".out")
    H.spit(file, sql)
    local ok = H.sh(fmt("mariadb --protocol=tcp -h %s -P %s -u %s -N -B %s <%s >%s 2>&1", host,
      port ~= "" and port or "3306", user, db, file, out))
    local res = H.slurp(out)
    if not ok then error("mariadb failed: " .. res, 2) end
    return res
  end
  local function drop() exec("DROP TABLE IF EXISTS s27_users, s27_items") end
  return {
    name = "MySQL", url = MYSQL_URL, consumer = "-", users = "s27_users", items = "s27_items",
    shown = { users = fmt('"%s"."s27_users"', db), items = fmt('"%s"."s27_items"', db) },
    exec = function(sql) return exec((sql:gsub("%f[%w_]users%f[^%w_]", "s27_users"):gsub("%f[%w_]items%f[^%w_]", "s27_items"))) end,
    setup = function()
      drop()
      exec([[CREATE TABLE s27_users (id int PRIMARY KEY, email text, name text, age int);
             CREATE TABLE s27_items (id int PRIMARY KEY, a text, b int);]])
    end,
    teardown = drop,
  }
end

local function sqlite_dialect()
  local d = { name = "SQLite", consumer = "-", users = "users", items = "items", sqlite = true,
    shown = { users = '"main"."users"', items = '"main"."items"' } }
  d.setup = function()
    d.path = H.fresh_sqlite("s27")
    d.url = "sqlite:///" .. d.path
    H.sqlite_cli(d.path, [[PRAGMA journal_mode = wal;
      CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, age INTEGER);
      CREATE TABLE items (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);]])
  end
  d.exec = function(sql) return H.sqlite_cli(d.path, sql) end
  d.teardown = function() H.sh("rm -f " .. H.shell_quote(d.path) .. "*") end
  return d
end

local function suite(d)
  describe(d.name, function()
    local p

    before_each(function()
      d.setup()
      p = H.host(HOST, { d.url, d.consumer, d.users, d.items }, d.env)
      assert(p:wait_for("ready\n", 30), "the host did not start: " .. p:stderr())
    end)

    after_each(function()
      if p and not p:exited() then p:kill("KILL") p:wait() end
      d.teardown()
    end)

    -- The host made the trigger for op on tbl again (k times in all).
    local function remade(tbl, op, k)
      local line = fmt("info  sqlnotify: trigger for %s on %s replaced", op, d.shown[tbl])
      wait_until(function()
        local n = 0
        for _, l in ipairs(log_lines(p)) do if l:sub(1, #line) == line then n = n + 1 end end
        return n >= k
      end, function() return line .. " (" .. k .. "):\n" .. p:stderr() end)
    end

    local function gone_line(col, op)
      return fmt('error sqlnotify: column "%s" of %s is gone (renamed or dropped): the %s watch\'s events carry '
        .. "the other columns", col, d.shown.users, op)
    end

    local function assert_quiet()
      for _, l in ipairs(log_lines(p)) do
        assert.is_nil(l:find("too large", 1, true), p:stderr())
        assert.is_nil(l:find("written whole", 1, true), p:stderr())
        assert.is_nil(l:find("by someone else", 1, true), p:stderr())
        assert.is_nil(l:find("malformed", 1, true), p:stderr())
      end
    end

    it("keeps sending the other columns of a row when a watched column is renamed or dropped, and says which",
      function()
      d.exec([[INSERT INTO users VALUES (1, 'a@x', 'Ann', 30);
               UPDATE users SET name = 'Anna', email = 'a2@x' WHERE id = 1;]])
      assert.are.same({ "users insert 1 [age=30 email=a@x name=Ann]", "users update 1 [name=Anna] old [email=a@x]" },
        events(p, 2))
      local rename = "ALTER TABLE users RENAME COLUMN email TO mail;\n"
      local writes = [[INSERT INTO users (id, mail, name, age) VALUES (2, 'b@x', 'Bob', 31);
                       UPDATE users SET age = 40 WHERE id = 2;
                       UPDATE users SET name = 'Bo' WHERE id = 2;]]
      if d.immediate then
        d.exec(rename .. writes)
      else
        d.exec(rename)
        remade("users", "insert", 1)
        remade("users", "update", 1)
        d.exec(writes)
      end
      local want = { "users insert 1 [age=30 email=a@x name=Ann]", "users update 1 [name=Anna] old [email=a@x]",
        "users insert 2 [age=31 name=Bob]", "users update 2 [name=Bo] old []" }
      assert.are.same(want, events(p, 4))
      wait_until(function() return count_log(p, gone_line("email", "insert")) == 1
        and count_log(p, gone_line("email", "update")) == 1 end, function() return "the log: " .. p:stderr() end)
      remade("users", "insert", 1)
      remade("users", "update", 1)
      if d.name == "PostgreSQL, the C trigger, live" or d.name == "PostgreSQL, the C trigger, durable" then
        -- made again for the table as it is, still the C trigger
        assert.are.equal(d.consumer == "-" and "sqlnotify_capture.notify\n" or "sqlnotify_capture.capture\n",
          d.users_insert_fn())
      end
      -- from now on the trigger does not read email at all
      d.exec("INSERT INTO users (id, mail, name, age) VALUES (3, 'c@x', 'Cy', 32);")
      want[#want + 1] = "users insert 3 [age=32 name=Cy]"
      assert.are.same(want, events(p, 5))
      if d.sqlite then
        -- SQLite itself refuses to drop a column a trigger reads
        local ok, err = pcall(d.exec, "ALTER TABLE users DROP COLUMN age;")
        assert.is_false(ok)
        assert.matches("error in trigger sqlnotify_users_insert_%x+ after drop column: no such column: NEW.age", err)
      else
        local drop = "ALTER TABLE users DROP COLUMN age;\n"
        local more = "INSERT INTO users (id, mail, name) VALUES (4, 'd@x', 'Di');"
        if d.immediate then
          d.exec(drop .. more)
        else
          d.exec(drop)
          remade("users", "insert", 2)
          d.exec(more)
        end
        want[#want + 1] = "users insert 4 [name=Di]"
        assert.are.same(want, events(p, 6))
        wait_until(function() return count_log(p, gone_line("age", "insert")) == 1 end,
          function() return "the log: " .. p:stderr() end)
        remade("users", "insert", 2)
      end
      H.sleep(0.7) -- two more checks of the triggers: nothing more to say
      assert.are.equal(1, count_log(p, gone_line("email", "insert")))
      assert.are.equal(1, count_log(p, gone_line("email", "update")))
      assert_quiet()
      p:stop()
    end)

    it('follows the table with extra_columns = "*": a column added is carried, one dropped is not', function()
      d.exec("INSERT INTO items VALUES (1, 'one', 1);")
      assert.are.same({ "items insert 1 [a=one b=1]" }, events(p, 1))
      local add = "ALTER TABLE items ADD COLUMN c TEXT;\n"
      local writes = "INSERT INTO items VALUES (2, 'two', 2, 'x');"
      if d.immediate then
        d.exec(add .. writes)
      else
        d.exec(add)
        remade("items", "insert", 1)
        d.exec(writes)
      end
      local want = { "items insert 1 [a=one b=1]", "items insert 2 [a=two b=2 c=x]" }
      assert.are.same(want, events(p, 2))
      local follows = fmt('info  sqlnotify: the insert watch on %s (extra_columns = "*") follows the table\'s '
        .. "columns: ", d.shown.items)
      wait_until(function() return count_log(p, follows .. "a, b, c") == 1 end,
        function() return "the log: " .. p:stderr() end)
      if d.sqlite then
        local ok, err = pcall(d.exec, "ALTER TABLE items DROP COLUMN b;")
        assert.is_false(ok)
        assert.matches("error in trigger sqlnotify_items_%a+_%x+ after drop column: no such column: [NEWOLD]+.b", err)
        d.exec("DELETE FROM items WHERE id = 2;")
        want[#want + 1] = "items delete 2 [a=two b=2 c=x]"
      else
        local drop = "ALTER TABLE items DROP COLUMN b;\n"
        writes = "INSERT INTO items VALUES (3, 'three', 'y');\nDELETE FROM items WHERE id = 3;"
        if d.immediate then
          d.exec(drop .. writes)
        else
          d.exec(drop)
          remade("items", "insert", 2)
          remade("items", "delete", 2)
          d.exec(writes)
        end
        want[#want + 1] = "items insert 3 [a=three c=y]"
        want[#want + 1] = "items delete 3 [a=three c=y]"
        wait_until(function() return count_log(p, follows .. "a, c") == 1 end,
          function() return "the log: " .. p:stderr() end)
      end
      assert.are.same(want, events(p, #want))
      for _, l in ipairs(log_lines(p)) do assert.is_nil(l:match("^error"), p:stderr()) end
      assert_quiet()
      p:stop()
    end)
  end)
end

for _, form in ipairs { "plpgsql", "C" } do
  for _, mode in ipairs { "live", "durable" } do suite(pg_dialect(form, mode)) end
end
suite(sqlite_dialect())
suite(mysql_dialect())
