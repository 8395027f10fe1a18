-- Reliability, end to end through the real sqlnotify-lua host (so the sanitizer build
-- checks the host): the listener's backend killed twice, a throwaway cluster restarted,
-- 100,000 hostile payloads, SIGTERM in the middle of a burst, and a handler that raises
-- on every event. Every test reads the host's exact stdout and its log.
local H = require("helper")

local S = "spec07"
-- Per run, so two runs of this file at once (make check beside a dev run) never meet.
local CLUSTER = string.format("sqlnotify_spec07_%06d", math.random(0, 999999))
local CLUSTER_PORT = 5500 + math.random(0, 499)

-- The URL with a libpq parameter added: a unique application_name finds our backends
-- in pg_stat_activity even when other processes use the same database.
local function url_with(url, param)
  return url .. (url:find("?", 1, true) and "&" or "?") .. param
end

local count = H.count

-- ISO timestamps of log lines (same format and clock as the ticks the scripts write).
local function log_times(err, plain)
  local t = {}
  for line in err:gmatch("[^\n]+") do
    if line:find(plain, 1, true) then t[#t + 1] = line:match("^(%S+Z) ") end
  end
  return t
end

local function wait_count(p, plain, n, timeout)
  local deadline = H.now() + (timeout or 20)
  while count(p:stderr(), plain) < n do
    if H.now() > deadline or p:exited() then return false end
    H.sleep(0.01)
  end
  return true
end

local function wait_lines(p, n, timeout)
  local deadline = H.now() + (timeout or 20)
  while count(p:stdout(), "\n") < n do
    if H.now() > deadline or p:exited() then return false end
    H.sleep(0.01)
  end
  return true
end

-- A watcher that prints each event, writes a timer tick (as an ISO time) to the file
-- arg[1] every 10 ms, runs n:query every 20 ms and prints when it starts failing and
-- when it works again, and prints "ready <query backend pid>" once listening.
local WATCHER = [==[
  local sqlnotify = require("sqlnotify")
  local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
  n:watch("spec07.ev", "insert", { extra_columns = { "v" } })
  n:watch("spec07.other", "insert")
  n:subscribe("spec07.ev", "insert", function(ev) print(string.format("ev %d %s", ev.id, ev.extra_columns.v)) end)
  n:subscribe("spec07.other", "insert", function(ev) print(string.format("other %d", ev.id)) end)
  local ticks = assert(io.open(arg[1], "w"))
  ticks:setvbuf("line")
  sqlnotify.every(0.01, function()
    local t = sqlnotify.now()
    ticks:write(os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)), string.format(".%03dZ\n", math.floor(t % 1 * 1000)))
  end)
  local up = true
  sqlnotify.every(0.02, function()
    local rows, err = n:query("SELECT 1 AS one")
    if rows and rows[1].one == 1 and not up then
      print("query works again")
      up = true
    elseif not rows and up then
      assert(err:find("^sqlnotify: "), err)
      io.stderr:write("query failed: ", err, "\n")
      print("query failed")
      up = false
    end
  end)
  sqlnotify.after(0, function()
    print("ready " .. assert(n:query("SELECT pg_backend_pid() AS pid"))[1].pid)
  end)
]==]

local TABLES = [[
  SET search_path = spec07;
  CREATE TABLE ev (id int PRIMARY KEY, v text);
  CREATE TABLE other (id int PRIMARY KEY);
  CREATE TABLE fz (id int PRIMARY KEY, v text);
]]

-- Writes made by another client, each row its own transaction; and the lines they print.
local function writes(url, from, to)
  local sql, out = {}, {}
  for i = from, to do
    sql[#sql + 1] = string.format("INSERT INTO spec07.ev VALUES (%d, 'v%d');", i, i)
    out[#out + 1] = string.format("ev %d v%d", i, i)
    if i % 3 == 0 then
      sql[#sql + 1] = string.format("INSERT INTO spec07.other VALUES (%d);", i)
      out[#out + 1] = string.format("other %d", i)
    end
  end
  H.psql(table.concat(sql, "\n"), url)
  return out
end

-- 'database "x" on host:port', as the host names it in its log.
local function target_of(p)
  return assert(p:stderr():match("listening on %d+ channel%(s%) of (database .- on %S+)\n"), p:stderr())
end

-- Every outage is in the log twice: when it began, and when it ended with its length and
-- the warning that NOTIFY kept nothing of it; and the timer ticked in between.
local function assert_outages(p, ticks_file, n, target)
  local err = p:stderr()
  local lost = log_times(err, "sqlnotify: lost connection to " .. target .. ": ")
  local back = log_times(err, "sqlnotify: reconnected to " .. target .. " after ")
  assert.are.equal(n, #lost, err)
  assert.are.equal(n, #back, err)
  local warning = "; events committed while disconnected were not received (NOTIFY does not keep them)"
  assert.are.equal(n, count(err, warning), err)
  local ticks = {}
  for t in H.slurp(ticks_file):gmatch("[^\n]+") do ticks[#ticks + 1] = t end
  for i = 1, n do
    assert.is_true(lost[i] <= back[i])
    local during = 0
    for _, t in ipairs(ticks) do
      if t > lost[i] and t < back[i] then during = during + 1 end
    end
    assert.is_true(during > 0, "no timer tick between " .. lost[i] .. " and " .. back[i])
  end
end

describe("reliability (the real host)", function()
  setup(function()
    H.fresh_schema(S)
    H.psql(TABLES)
  end)

  teardown(function() H.drop_schema(S) end)

  describe("a lost listener connection", function()
    it("reconnects after its backend is killed twice, re-LISTENs, and delivers every later event once", function()
      local app = "spec07_kill_" .. math.random(1e9)
      local url = url_with(H.pg_url, "application_name=" .. app)
      local ticks = H.tmpfile(".ticks")
      local p = H.host(WATCHER, { ticks }, "PG=" .. H.shell_quote(url))
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready %d+\n"), p:stderr())
      local qpid = p:stdout():match("ready (%d+)")
      local expected = { "ready " .. qpid }
      -- The one backend of ours that is not the query connection's (a killed one may
      -- linger a moment while it exits).
      local function listener_pid()
        local deadline = H.now() + 3
        local pid
        repeat
          pid = H.psql(string.format([[SELECT pid FROM pg_stat_activity WHERE application_name = '%s'
            AND pid <> %s AND query LIKE 'LISTEN%%']], app, qpid)):match("^(%d+)\n$")
          if not pid then H.sleep(0.02) end
        until pid or H.now() > deadline
        return pid
      end

      for _, l in ipairs(writes(url, 1, 3)) do expected[#expected + 1] = l end
      assert.is_true(wait_lines(p, #expected), p:stderr())
      for round = 1, 2 do
        local lpid = assert(listener_pid(), "the listener's backend is not in pg_stat_activity")
        H.psql("SELECT pg_terminate_backend(" .. lpid .. ")")
        assert.is_true(wait_count(p, "sqlnotify: reconnected to ", round), p:stderr())
        assert.are_not.equal(lpid, listener_pid())
        for _, l in ipairs(writes(url, round * 100 + 1, round * 100 + 6)) do expected[#expected + 1] = l end
        assert.is_true(wait_lines(p, #expected), p:stderr())
      end
      -- The query connection too: killed, it is re-established at the next query.
      H.psql("SELECT pg_terminate_backend(" .. qpid .. ")")
      assert.is_true(wait_count(p, "query connection to ", 1), p:stderr())
      for _, l in ipairs(writes(url, 301, 303)) do expected[#expected + 1] = l end
      assert.is_true(wait_lines(p, #expected), p:stderr())

      H.sleep(0.3) -- nothing more, nothing twice
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal(table.concat(expected, "\n") .. "\n", p:stdout())
      assert_outages(p, ticks, 2, target_of(p))
      assert.matches("lost connection to [^\n]*: terminating connection due to administrator command; reconnecting",
        p:stderr())
      assert.matches("info  sqlnotify: query connection to [^\n]* re%-established", p:stderr())
      assert.is_nil(p:stderr():find("query failed", 1, true), p:stderr())
      p:assert_clean()
    end)
  end)

  describe("hostile payloads", function()
    -- Anyone may NOTIFY a watched channel. 100,000 payloads from a seeded generator, in
    -- classes; the valid ones (known ids) are interleaved with the rest.
    local FUZZ_SQL = [=[
      SELECT setseed(0.0707);
      CREATE TABLE spec07.fuzz AS
      SELECT i, k, CASE
        WHEN k < 5 THEN '{"id":{"id":' || i || '},"x":{"v":"f' || i || '"}}'
        -- invalid JSON: cut short, garbage, control characters, multibyte text
        WHEN k = 5 THEN '{"id":{"id":' || i || left(',"x":{"v":"' || md5(i::text) || '"}}', i % 40)
        WHEN k = 6 THEN CASE i % 4 WHEN 0 THEN md5(i::text) || chr(1 + i % 31) || 'é€😀'
                                   WHEN 1 THEN E'\t\r\n' || i || E'\\x'
                                   WHEN 2 THEN '{"id":{"id":' || i || '},}'
                                   ELSE '' || i || ' ' || i END
        -- nesting deeper than 64
        WHEN k = 7 THEN CASE i % 2 WHEN 0 THEN repeat('[', 65 + i % 300) || i || repeat(']', 65 + i % 300)
                                   ELSE repeat('{"id":', 65 + i % 100) || i || repeat('}', 65 + i % 100) END
        -- wrong types for id and x
        WHEN k = 8 THEN CASE i % 4 WHEN 0 THEN '{"id":' || i || '}'
                                   WHEN 1 THEN '{"id":"' || md5(i::text) || '","x":{}}'
                                   WHEN 2 THEN '{"id":null,"n":' || i || '}'
                                   ELSE '{"id":true,"x":{"v":"' || i || '"}}' END
        WHEN k = 9 THEN CASE i % 2 WHEN 0 THEN '{"id":{"id":' || i || '},"x":' || i || '}'
                                   ELSE '{"id":{"id":' || i || '},"x":"' || md5(i::text) || '"}' END
        -- missing keys, or not an object at all
        WHEN k = 10 THEN CASE i % 5 WHEN 0 THEN '{"x":{"v":"' || i || '"}}'
                                    WHEN 1 THEN '{"n":' || i || '}'
                                    WHEN 2 THEN '[' || i || ']'
                                    WHEN 3 THEN '"' || md5(i::text) || '"'
                                    ELSE '' || i END
        -- 7,999 bytes of garbage
        WHEN k = 11 THEN '#' || left(repeat(md5(i::text), 250), 7998)
        -- overflow references that do not exist (or are not numbers a bigint holds)
        WHEN k = 12 THEN 'sqlnotify:overflow:' || (8000000000000000000 + i)
        WHEN k = 13 THEN CASE i % 3 WHEN 0 THEN 'sqlnotify:overflow:' || (9300000000000000000 + i)
                                    WHEN 1 THEN 'sqlnotify:overflow:' || i || 'x'
                                    ELSE 'sqlnotify:overflow:-' || i END
        -- broken escapes
        ELSE CASE i % 2 WHEN 0 THEN '{"id":{"id":' || i || '},"x":{"v":"\ud800' || i || '"}}'
                        ELSE '{"id":{"id":' || i || '},"x":{"v":"\q' || i || '"}}' END
      END AS payload
      FROM (SELECT i, floor(random() * 15)::int AS k FROM generate_series(1, @N@) i) g;
    ]=]

    it("logs and skips each of 100,000 fuzzed payloads, keeps delivering, and never stalls", function()
      local N = 100000
      H.psql("DROP TABLE IF EXISTS spec07.fuzz;" .. FUZZ_SQL:gsub("@N@", tostring(N)))
      local stats = H.psql("SELECT count(*) FILTER (WHERE k < 5), count(*) FILTER (WHERE k >= 5), "
        .. "max(octet_length(payload)), count(*) FILTER (WHERE k = 12) FROM spec07.fuzz")
      local valid, bad, longest, refs = stats:match("^(%d+)|(%d+)|(%d+)|(%d+)\n$")
      valid, bad = tonumber(valid), tonumber(bad)
      assert.are.equal(N, valid + bad)
      assert.are.equal("7999", longest)
      assert.is_true(bad > 60000 and tonumber(refs) > 5000, stats)
      local expected = {}
      for id in H.psql("SELECT i FROM spec07.fuzz WHERE k < 5 ORDER BY i"):gmatch("%d+") do
        expected[#expected + 1] = "fz " .. id .. " f" .. id
      end

      local p = H.host([==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        n:watch("spec07.fz", "insert", { extra_columns = { "v" } })
        n:subscribe("spec07.fz", "insert", function(ev)
          print(string.format("fz %s %s", ev.id, ev.extra_columns.v))
        end)
        sqlnotify.after(0, function() print("ready") end)
      ]==], { }, "PG=" .. H.shell_quote(H.pg_url))
      finally(function() -- busted keeps one finally per test
        if not p:exited() then p:kill("KILL") end
        H.psql("DROP TABLE IF EXISTS spec07.fuzz")
      end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      local t0 = H.now()
      -- In commit order, 5,000 per transaction (all different: PostgreSQL folds equal
      -- payloads of one transaction into one); then a real write through the trigger.
      H.psql([[
        DO $$
        DECLARE r record;
        BEGIN
          FOR r IN SELECT i, payload FROM spec07.fuzz ORDER BY i LOOP
            PERFORM pg_notify('sqlnotify_spec07_fz_insert', r.payload);
            IF r.i % 5000 = 0 THEN COMMIT; END IF;
          END LOOP;
        END $$;
        INSERT INTO spec07.fz VALUES (0, 'after');
      ]])
      assert.is_true(p:wait_for("fz 0 after\n", 60), p:stderr():sub(-2000))
      local elapsed = H.now() - t0
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      expected[#expected + 1] = "fz 0 after"
      local out = p:stdout()
      assert.are.equal("ready\n" .. table.concat(expected, "\n") .. "\n", out)
      local err = p:stderr()
      -- one warning per bad payload, shortened; no other warnings, no errors
      assert.are.equal(bad, count(err, "Z warn  sqlnotify: "))
      assert.are.equal(bad, count(err, "Z warn  sqlnotify: skipping ") + count(err, "; event skipped\n"))
      assert.are.equal(0, count(err, "Z error "))
      assert.is_true(#err < bad * 400, "log lines are not shortened")
      local chan = "sqlnotify_spec07_fz_insert"
      assert.matches("skipping malformed payload on channel " .. chan .. ": [^\n]*: #%x+%.%.%. %(7999 bytes%)\n", err)
      assert.matches("skipping malformed payload on channel " .. chan .. ": \"id\" is not an object: {\"id\":%d+}\n", err)
      assert.matches("overflow payload 80000000000%d+ for channel \"" .. chan .. "\"[^\n]*; event skipped\n", err)
      p:assert_clean()
      io.stderr:write(string.format("\n# fuzz: %d payloads (%d bad) delivered or skipped in %.1f s\n", N, bad, elapsed))
    end)

    it("skips a key that is missing or not a scalar, and logs a payload with line breaks on one line", function()
      local p = H.host([==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        n:watch("spec07.fz", "insert", { extra_columns = { "v" } })
        n:subscribe("spec07.fz", "insert", function(ev)
          print(string.format("fz %s %s", tostring(ev.id), tostring(ev.extra_columns.v)))
        end)
        sqlnotify.after(0, function() print("ready") end)
      ]==], {}, "PG=" .. H.shell_quote(H.pg_url))
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      local hostile = {
        [[{"id":{}}]], [[{"id":[7]}]], [[{"id":{"id":{"a":1}}}]], [[{"id":{"id":[1]}}]],
        [[{"id":{"other":3},"x":{"v":"a"}}]],
        "line one\n2026-01-01T00:00:00.000Z warn  sqlnotify: reconnected to a forged log line\r",
      }
      local sql = {}
      for _, h in ipairs(hostile) do
        local literal = h:gsub("\\", "\\\\"):gsub("'", "''"):gsub("\n", "\\n"):gsub("\r", "\\r")
        sql[#sql + 1] = "SELECT pg_notify('sqlnotify_spec07_fz_insert', E'" .. literal .. "');"
      end
      sql[#sql + 1] = "INSERT INTO spec07.fz VALUES (-1, 'last');"
      H.psql(table.concat(sql, "\n"))
      assert.is_true(p:wait_for("fz %-1 last\n"), p:stderr())
      H.sleep(0.2)
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\nfz -1 last\n", p:stdout())
      local err = p:stderr()
      assert.are.equal(#hostile, count(err, "Z warn  sqlnotify: skipping "), err)
      -- every line of the log is a line the host wrote: nothing forged by a payload
      for line in err:gmatch("[^\n]*\n") do
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z %a+ +sqlnotify: [^\r]*\n$", line)
      end
      assert.is_nil(err:find("\n2026-01-01T00:00:00.000Z", 1, true), err)
      assert.matches("skipping [^\n]*: line one\\x0a2026%-01%-01T[^\n]* forged log line\\x0d\n", err)
      p:assert_clean()
    end)
  end)

  describe("SIGTERM during a burst", function()
    it("lets the handler in progress finish, closes the connections and exits 0", function()
      local app = "spec07_term_" .. math.random(1e9)
      local p = H.host([==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        n:watch("spec07.ev", "insert", { extra_columns = { "v" } })
        n:subscribe("spec07.ev", "insert", function(ev)
          io.write("event ", ev.id)
          local until_ = sqlnotify.now() + 0.02 -- a handler that takes a while
          while sqlnotify.now() < until_ do end
          io.write(" done\n")
        end)
        sqlnotify.after(0, function() print("ready") end)
      ]==], {}, "PG=" .. H.shell_quote(url_with(H.pg_url, "application_name=" .. app)))
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql("TRUNCATE spec07.ev; INSERT INTO spec07.ev SELECT i, 'b' FROM generate_series(1, 500) i;")
      assert.is_true(p:wait_for("event 5 done\n"), p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait(20))
      local out = p:stdout()
      -- every line whole, in order, from the first event on; the burst was cut short
      local n = 0
      for line in out:gmatch("[^\n]*\n?") do
        if line ~= "" then
          if n == 0 then
            assert.are.equal("ready\n", line)
          else
            assert.are.equal("event " .. n .. " done\n", line)
          end
          n = n + 1
        end
      end
      assert.is_true(n - 1 >= 5 and n - 1 < 500, "events handled: " .. (n - 1))
      assert.matches("info  sqlnotify: SIGTERM received, stopping\n", p:stderr())
      -- the connections are closed: none of this process's sessions is left
      local deadline = H.now() + 5
      repeat
        local left = H.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" .. app .. "'")
        if left == "0\n" then break end
        H.sleep(0.05)
      until H.now() > deadline
      assert.are.equal("0\n", H.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" .. app .. "'"))
      p:assert_clean()
    end)
  end)

  describe("a handler that raises on every event", function()
    it("costs one log line with a traceback, and the other subscribers get all 1,000 events", function()
      local p = H.host([==[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
        n:watch("spec07.other", "insert")
        n:subscribe("spec07.other", "insert", function(ev) error("boom " .. ev.id) end)
        local seen = 0
        n:subscribe("spec07.other", "insert", function(ev)
          seen = seen + 1
          assert(ev.id == seen)
          if seen == 1000 then print("got 1000") end
        end)
        n:subscribe("spec07.other", "insert", function(ev) if ev.id % 250 == 0 then print("third " .. ev.id) end end)
        sqlnotify.after(0, function() print("ready") end)
      ]==], {}, "PG=" .. H.shell_quote(H.pg_url))
      finally(function() if not p:exited() then p:kill("KILL") end end)
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql("TRUNCATE spec07.other; INSERT INTO spec07.other SELECT i FROM generate_series(1, 500) i;"
        .. "INSERT INTO spec07.other SELECT i FROM generate_series(501, 1000) i;")
      assert.is_true(p:wait_for("got 1000\n"), p:stderr())
      H.sleep(0.3)
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal("ready\nthird 250\nthird 500\nthird 750\ngot 1000\nthird 1000\n", p:stdout())
      local err = p:stderr()
      -- one report with the row's id, and the count of the others when the host stops
      assert.are.equal(2, count(err, " sqlnotify: handler for insert on "), err)
      assert.are.equal(0, count(err, "Z warn "), err)
      assert.matches('Z error sqlnotify: handler for insert on "spec07"%."other" failed for id 1: [^\n]*:4: boom 1\n'
        .. "stack traceback:\n", err)
      assert.matches('Z error sqlnotify: handler for insert on "spec07"%."other": 999 more failure%(s%) since the '
        .. "last report\n", err)
      p:assert_clean()
    end)
  end)

  describe("a restarted server", function()
    -- A throwaway cluster of our own (H.pg_cluster): the main one is shared and must not be
    -- restarted.
    it("reconnects after pg_ctlcluster restart; n:query fails while it is down and works after", function()
      local cluster, why = H.pg_cluster(CLUSTER, CLUSTER_PORT)
      if not cluster then
        pending("cannot create a throwaway PostgreSQL cluster here (pg_createcluster as root needed): " .. why)
        return
      end
      local p
      finally(function() -- busted keeps one finally per test
        if p and not p:exited() then p:kill("KILL") end
        cluster.drop()
      end)
      local url = cluster.url
      H.psql("CREATE SCHEMA spec07;" .. TABLES, url)
      local ticks = H.tmpfile(".ticks")
      p = H.host(WATCHER, { ticks }, "PG=" .. H.shell_quote(url))
      assert.is_true(p:wait_for("ready %d+\n"), p:stderr())
      local expected = { p:stdout():match("^(ready %d+)\n") }
      for _, l in ipairs(writes(url, 1, 3)) do expected[#expected + 1] = l end
      assert.is_true(wait_lines(p, #expected), p:stderr())

      assert(H.sh("timeout -s KILL 60 pg_ctlcluster --skip-systemctl-redirect " .. cluster.ver .. " " .. CLUSTER
        .. " restart >/dev/null 2>&1"), "pg_ctlcluster restart failed")
      assert.is_true(wait_count(p, "sqlnotify: reconnected to ", 1, 30), p:stderr())
      assert.is_true(p:wait_for("query works again\n", 10), p:stderr())
      expected[#expected + 1] = "query failed"
      expected[#expected + 1] = "query works again"
      for _, l in ipairs(writes(url, 101, 110)) do expected[#expected + 1] = l end
      assert.is_true(wait_lines(p, #expected), p:stderr())

      H.sleep(0.3)
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal(table.concat(expected, "\n") .. "\n", p:stdout())
      assert.are.equal('database "test" on 127.0.0.1:' .. CLUSTER_PORT, target_of(p))
      assert_outages(p, ticks, 1, target_of(p))
      assert.matches("query failed: sqlnotify: [^\n]+", p:stderr())
      p:assert_clean()
    end)
  end)
end)
