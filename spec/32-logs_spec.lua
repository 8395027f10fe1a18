-- The log an operator reads, through the real host on PostgreSQL and SQLite: --log-format json
-- (every line one JSON object, a handler's traceback a field), SQLNOTIFY_LOG_FORMAT and
-- SQLNOTIFY_LOG_LEVEL against the options, bad values of each, a durable consumer's backlog at
-- start and the one line saying it caught up, and the standby's waiting line at info.
-- Tables live in the schema spec32 (PostgreSQL) or in files of this spec's own (SQLite); every
-- consumer is named s32_* and dropped after its test.
local H = require("helper")
local cjson = require("cjson")
local sqlnotify = require("sqlnotify")

local S = "spec32"
local fmt = string.format
local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"
local LEVELS = { error = true, warn = true, info = true, debug = true }

-- A host script: a notifier on arg[1] (consumer arg[3], "-": live) watching inserts of table
-- arg[2]; prints "k <k>" for each; a row with k = 2 fails with a message of odd bytes (arg[4]).
local SCRIPT = [==[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local url, tbl, consumer, odd = arg[1], arg[2], arg[3], arg[4] or ""
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer ~= "-" and consumer or nil,
  retry = { attempts = 1 } })
n:watch(tbl, "insert", { extra_columns = { "k" } })
n:subscribe(tbl, "insert", function(ev)
  if ev.extra_columns.k == 2 then error("boom" .. odd .. " \"quoted\"\nsecond line") end
  io.write(string.format("k %d\n", ev.extra_columns.k))
end)
assert(n:start())
print("ready")
]==]

-- Each backend: a URL, a fresh table (its name as the script gives it, and as the log's table
-- field says it), an insert of rows k = 1..n, and a notifier to drop consumers with.
local backends = {
  {
    name = "PostgreSQL",
    odd = "\1", shown = "\1", -- a control byte (the dead letter's error is text: UTF-8 only)
    setup = function(tbl)
      H.psql(fmt('CREATE TABLE %s."%s" (id bigserial PRIMARY KEY, k int NOT NULL);', S, tbl))
      return H.pg_url, S .. "." .. tbl, S .. "." .. tbl
    end,
    insert = function(_, tbl, from, to)
      H.psql(fmt('INSERT INTO %s."%s" (k) SELECT g FROM generate_series(%d, %d) g;', S, tbl, from, to))
    end,
  },
  {
    name = "SQLite",
    odd = "\1\255", shown = "\1\u{FFFD}", -- and a byte that is not UTF-8
    setup = function(tbl)
      local path = H.fresh_sqlite("s32")
      H.sqlite_cli(path, fmt('PRAGMA journal_mode = wal;\nCREATE TABLE "%s" (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);',
        tbl))
      return "sqlite:///" .. path, tbl, "main." .. tbl
    end,
    insert = function(url, tbl, from, to)
      H.sqlite_cli(url:sub(11), fmt('WITH RECURSIVE g(x) AS (SELECT %d UNION ALL SELECT x + 1 FROM g WHERE x < %d) '
        .. 'INSERT INTO "%s" (k) SELECT x FROM g;', from, to, tbl))
    end,
  },
  {
    name = "MariaDB",
    odd = "\1", shown = "\1",
    setup = function(tbl)
      tbl = "s32_" .. tbl:gsub("[^%w]", "_") -- the names its tables may have are MariaDB's business
      H.mysql(fmt("DROP TABLE IF EXISTS `%s`; CREATE TABLE `%s` (id int AUTO_INCREMENT PRIMARY KEY, k int NOT NULL);",
        tbl, tbl))
      return H.mysql_url, tbl, H.my.db .. "." .. tbl, tbl
    end,
    insert = function(_, tbl, from, to)
      local rows = {}
      for k = from, to do rows[#rows + 1] = fmt("(%d)", k) end
      H.mysql(fmt("INSERT INTO `%s` (k) VALUES %s;", tbl, table.concat(rows, ", ")))
    end,
    drop = function(tbl) H.mysql(fmt("DROP TABLE IF EXISTS `%s`;", tbl)) end,
  },
}

-- Every line of text, parsed: a list of objects; fails on a line that is not one JSON object
-- of valid UTF-8 with time, level and a one-line message.
local function json_lines(text)
  local out = {}
  for line in text:gmatch("([^\n]*)\n") do
    assert(utf8.len(line), "not UTF-8: " .. line)
    local ok, obj = pcall(cjson.decode, line)
    assert(ok and type(obj) == "table", "not a JSON object: " .. line)
    assert.is_truthy(tostring(obj.time):match(ISO), line)
    assert.is_true(LEVELS[obj.level] == true, line)
    assert.are.equal("string", type(obj.message), line)
    assert.is_nil(obj.message:find("\n"), line)
    out[#out + 1] = obj
  end
  assert.is_true(text == "" or text:sub(-1) == "\n", "a line without its end")
  return out
end

local function count_k(p)
  local n = 0
  for _ in p:stdout():gmatch("k %d+\n") do n = n + 1 end
  return n
end

local function find_line(lines, pattern)
  for _, l in ipairs(lines) do
    if l.message:find(pattern) then return l end
  end
end

-- The line of the script's error(): where the handler's failure says it was raised.
local ERR_LINE = select(2, SCRIPT:sub(1, SCRIPT:find("error%(")):gsub("\n", "")) + 1

local procs = {}
-- The host on a script, with options before the script (opts) and variables (env, "A=b C=d").
local function host(script, args, env, opts)
  local saved = H.host_options
  H.host_options = opts
  local ok, p = pcall(H.host, script, args, env)
  H.host_options = saved
  assert(ok, p)
  procs[#procs + 1] = p
  return p
end

local function started(p)
  assert(p:wait_for("ready\n", 20), "the host did not start: " .. p:stderr())
  return p
end

local function wait_k(p, n)
  assert(p:wait_count(function(x)
    local l = {}
    for k in x:stdout():gmatch("k (%d+)\n") do l[#l + 1] = k end
    return l
  end, n, 30), "events not delivered: " .. p:stdout() .. p:stderr())
end

-- The levels of the text lines of a log (the lines a traceback adds have none).
local function text_levels(text)
  local out = {}
  for level in text:gmatch("%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z (%a+) +sqlnotify: ") do out[#out + 1] = level end
  return out
end

local function distinct(list)
  local seen, out = {}, {}
  for _, v in ipairs(list) do
    if not seen[v] then seen[v], out[#out + 1] = true, v end
  end
  return out
end

local function last_message(p)
  local lines = json_lines(p:stderr())
  return lines[#lines] and lines[#lines].message
end

local tables = 0
local function fresh_name(odd)
  tables = tables + 1
  return odd and fmt("t%d odd \\ é", tables) or fmt("t%d", tables)
end

setup(function() H.fresh_schema(S) end)
teardown(function() H.drop_schema(S) end)

after_each(function()
  for _, p in ipairs(procs) do
    if not p:exited() then p:kill("KILL") p:wait() end
  end
  procs = {}
end)

for _, b in ipairs(backends) do
  describe(b.name, function()
    local admin, url, name, shown, tbl
    before_each(function()
      tbl = fresh_name(true)
      local real
      url, name, shown, real = b.setup(tbl)
      tbl = real or tbl
      admin = assert(sqlnotify.notifier{ url = url, use_logger = false })
    end)
    after_each(function()
      for _, c in ipairs(assert(admin:consumers())) do
        if c.name:sub(1, 4) == "s32_" then admin:drop_consumer(c.name) end
      end
      admin:close()
      if b.drop then b.drop(tbl) end
    end)

    it("--log-format json: one object a line, a handler failure's traceback a field and its message one line",
      function()
      local p = started(host(SCRIPT, { url, name, "s32_json", b.odd }, nil, { "--log-format", "json" }))
      b.insert(url, tbl, 1, 3)
      wait_k(p, 2)
      assert.is_true(p:wait_for("moved to the dead letters", 20, "err"), p:stderr())
      p:stop()
      local lines = json_lines(p:stderr())
      local failed = assert(find_line(lines, "^handler for insert on .* failed for id %d+: "), p:stderr())
      assert.are.equal("error", failed.level)
      assert.are.equal("s32_json", failed.consumer)
      assert.are.equal(shown, failed.table)
      assert.are.equal("insert", failed.operation)
      local where = fmt("%s:%d: ", p.script, ERR_LINE)
      assert.are.equal(where .. "boom" .. b.shown .. " \"quoted\"\nsecond line", failed.error)
      assert.is_truthy(failed.message:find(where .. "boom" .. b.shown .. " \"quoted\" second line", 1, true),
        failed.message)
      assert.are.equal("stack traceback:\n\t", failed.traceback:sub(1, 18))
      assert.is_truthy(failed.traceback:find(p.script .. ":" .. ERR_LINE .. ": in function", 1, true))
      assert.are.equal("s32_json", assert(find_line(lines, "^listening on 1 channel%(s%)")).consumer)
      assert.are.equal("SIGTERM received, stopping", lines[#lines].message)
      -- the key on the dead letter's line too
      assert.are.equal("s32_json", assert(find_line(lines, "moved to the dead letters")).consumer)
    end)

    it("the text format prints the same failure as before: the traceback on the lines after it", function()
      local p = started(host(SCRIPT, { url, name, "-", b.odd }))
      b.insert(url, tbl, 1, 3)
      wait_k(p, 2)
      assert.is_true(p:wait_for("stack traceback", 20, "err"), p:stderr())
      p:stop()
      local where = fmt("%s:%d: ", p.script, ERR_LINE)
      assert.is_truthy(p:stderr():find(" error sqlnotify: handler for insert on [^\n]* failed for id %d+: "
        .. where:gsub("%p", "%%%0") .. "boom" .. b.odd .. " \"quoted\"\nsecond line\nstack traceback:\n\t"), p:stderr())
    end)

    it("SQLNOTIFY_LOG_LEVEL=warn drops the info lines", function()
      local p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_LEVEL=warn"))
      b.insert(url, tbl, 1, 3)
      wait_k(p, 2)
      assert.is_true(p:wait_for("stack traceback", 20, "err"), p:stderr())
      p:stop()
      assert.are.same({ "error" }, text_levels(p:stderr()))
      -- and in JSON
      p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_LEVEL=warn SQLNOTIFY_LOG_FORMAT=json"))
      p:stop()
      assert.are.same({}, json_lines(p:stderr()))
      -- -l wins over it
      p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_LEVEL=error", { "-l", "info" }))
      p:stop()
      assert.are.same({ "info" }, distinct(text_levels(p:stderr())))
    end)

    it("SQLNOTIFY_LOG_FORMAT=json works without the option, and --log-format wins over it", function()
      local p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_FORMAT=json"))
      p:stop()
      local lines = json_lines(p:stderr())
      assert.is_truthy(find_line(lines, "^listening on 1 channel%(s%) of "))
      assert.are.equal("SIGTERM received, stopping", lines[#lines].message)
      p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_FORMAT=json", { "--log-format", "text" }))
      p:stop()
      assert.are.same({ "info" }, distinct(text_levels(p:stderr())))
      assert.is_truthy(p:stderr():find(" info  sqlnotify: listening on 1 channel", 1, true))
      assert.is_nil(p:stderr():find("{", 1, true))
      p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_FORMAT=text", { "--log-format", "json" }))
      p:stop()
      assert.are.equal("SIGTERM received, stopping", last_message(p))
      -- a bad variable is no matter when the option says
      p = started(host(SCRIPT, { url, name, "-" }, "SQLNOTIFY_LOG_FORMAT=yaml", { "--log-format", "json" }))
      p:stop()
      assert.are.equal("SIGTERM received, stopping", last_message(p))
    end)

    it("a durable consumer says its backlog at start, and once that it caught up", function()
      local p = started(host(SCRIPT, { url, name, "s32_backlog" }))
      p:stop()
      assert.is_truthy(p:stderr():find('consumer "s32_backlog" starts with no backlog\n', 1, true), p:stderr())
      assert.is_nil(p:stderr():find("caught up", 1, true))
      local before = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(H.now()) - 2)
      b.insert(url, tbl, 11, 17)
      local after = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(H.now()) + 2)
      p = started(host(SCRIPT, { url, name, "s32_backlog" }))
      wait_k(p, 7)
      assert.is_true(p:wait_for("caught up", 20, "err"), p:stderr())
      b.insert(url, tbl, 21, 23)
      wait_k(p, 10)
      p:stop()
      local err = p:stderr()
      local oldest = err:match('info  sqlnotify: consumer "s32_backlog" starts 7 event%(s%) behind %(oldest from '
        .. '(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ)%)\n')
      assert.is_truthy(oldest, err)
      assert.is_true(oldest >= before and oldest <= after, oldest .. " not in " .. before .. " .. " .. after)
      local said = {}
      for line in err:gmatch("[^\n]*caught up[^\n]*") do said[#said + 1] = line end
      assert.are.equal(1, #said, err)
      assert.is_truthy(said[1]:find(' info  sqlnotify: consumer "s32_backlog" caught up after 7 event%(s%) in '
        .. '%d+%.%d s$'), said[1])
      -- in that order: the backlog, then caught up
      assert.is_true(err:find("starts 7 event", 1, true) < err:find("caught up", 1, true))
    end)
  end)
end

describe("SQLite: a standby", function()
  it("says at info that it waits for the consumer's reader", function()
    local tbl = fresh_name(false)
    local url, name = backends[2].setup(tbl)
    local p1 = started(host(SCRIPT, { url, name, "s32_standby" }))
    local p2 = started(host(SCRIPT, { url, name, "s32_standby" }, nil, { "--log-format", "json" }))
    assert.is_true(p2:wait_for("stands by", 20, "err"), p2:stderr())
    p2:stop()
    p1:stop()
    local line = assert(find_line(json_lines(p2:stderr()), '^consumer "s32_standby" is being read by another process'))
    assert.are.equal("info", line.level)
  end)
end)

describe("bad values", function()
  local function run(env, opts)
    local p = host("print('ran')", {}, env, opts)
    return p:wait(20), p:stderr(), p:stdout()
  end

  it("of --log-format, SQLNOTIFY_LOG_FORMAT and SQLNOTIFY_LOG_LEVEL: exit 2 and one clear line", function()
    assert.are.same({ 2, 'sqlnotify: unknown log format "xml"; use text or json (try --help)\n', "" },
      { run(nil, { "--log-format", "xml" }) })
    assert.are.same({ 2, 'sqlnotify: SQLNOTIFY_LOG_FORMAT="yaml" is not a log format: use text or json (try --help)\n',
      "" }, { run("SQLNOTIFY_LOG_FORMAT=yaml") })
    assert.are.same({ 2, 'sqlnotify: SQLNOTIFY_LOG_LEVEL="lo?d" is not a log level: use error, warn, info or debug '
      .. "(try --help)\n", "" }, { run("SQLNOTIFY_LOG_LEVEL=$(printf 'lo\\001d')") })
    -- a usage error in a JSON log is a JSON line too
    local code, err = run("SQLNOTIFY_LOG_FORMAT=json", { "--bogus" })
    assert.are.equal(2, code)
    local lines = json_lines(err)
    assert.are.equal(1, #lines)
    assert.are.same({ "error", "unknown option --bogus (try --help)" }, { lines[1].level, lines[1].message })
  end)

  it("in plain lua5.4: require fails with the same line; a good one is taken", function()
    local out = H.tmpfile(".out")
    -- (the sanitizer build's module needs the runtimes make check preloads into lua5.4)
    local env = fmt("LUA_PATH=%s LUA_CPATH=%s LD_PRELOAD=%s", H.shell_quote(package.path), H.shell_quote(package.cpath),
      H.shell_quote(os.getenv("LD_PRELOAD") or ""))
    H.sh(fmt("%s SQLNOTIFY_LOG_FORMAT=yaml lua5.4 -e 'require(\"sqlnotify\")' >%s 2>&1", env, out))
    assert.is_truthy(H.slurp(out):find('sqlnotify: SQLNOTIFY_LOG_FORMAT="yaml" is not a log format: use text or json',
      1, true), H.slurp(out))
    H.sh(fmt("%s SQLNOTIFY_LOG_FORMAT=json lua5.4 -e %s >%s 2>&1", env, H.shell_quote(
      "local s = require('sqlnotify') s.after(0, function() error('x\\ny') end) s.after(0.1, s.stop) s.run()"), out))
    local lines = json_lines(H.slurp(out))
    assert.are.equal(1, #lines)
    assert.are.same({ "error", "timer callback failed: (command line):1: x y" }, { lines[1].level, lines[1].message })
    assert.are.equal("stack traceback:\n\t", lines[1].traceback:sub(1, 18))
  end)
end)
