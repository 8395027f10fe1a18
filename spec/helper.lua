-- spec/helper.lua — what every spec shares: paths to the build, a psql client for
-- writes made by "another client", schemas and SQLite files per spec file, a way to
-- run the loop until events arrived, and the real host binary run on a script.
local system = require("system")

local H = {}

H.root = os.getenv("PWD") or "."
H.build = os.getenv("SQLNOTIFY_BUILD") or "build"
H.pg_url = os.getenv("SQLNOTIFY_TEST_PG_URL") or "postgresql://root@127.0.0.1/test"

-- The test URL as another role (trust on loopback, as the test cluster is set up).
function H.pg_url_as(role)
  return (H.pg_url:gsub("^(postgresql://)[^@/]*@", "%1"):gsub("^(postgresql://)", "%1" .. role .. "@"))
end
H.host_bin = H.root .. "/" .. H.build .. "/sqlnotify-lua"
-- e.g. SQLNOTIFY_HOST_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full" to check the host
H.host_wrapper = os.getenv("SQLNOTIFY_HOST_WRAPPER") and (os.getenv("SQLNOTIFY_HOST_WRAPPER") .. " ") or ""

package.path = H.root .. "/lua/?.lua;" .. H.root .. "/lua/?/init.lua;" .. H.root .. "/spec/?.lua;" .. package.path
package.cpath = H.root .. "/" .. H.build .. "/?.so;" .. package.cpath

local sqlnotify = require("sqlnotify")
sqlnotify.VERBOSE_TESTS = os.getenv("SQLNOTIFY_VERBOSE")

H.sleep = system.sleep
H.now = system.gettime

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
H.shell_quote = q

local tmpdir
function H.tmpdir()
  if not tmpdir then
    local p = io.popen("env -u LD_PRELOAD mktemp -d /tmp/sqlnotify-spec.XXXXXX")
    tmpdir = p:read("l")
    p:close()
  end
  return tmpdir
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end
H.slurp = slurp

local function spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
H.spit = spit

-- Run a shell command without the sanitizer runtimes that make check preloads into
-- lua5.4 (they hang ordinary tools such as pkill). Returns os.execute's results.
function H.sh(cmd)
  return os.execute("env -u LD_PRELOAD sh -c " .. q(cmd))
end

local counter = 0
local function tmpfile(suffix)
  counter = counter + 1
  return H.tmpdir() .. "/f" .. counter .. (suffix or "")
end
H.tmpfile = tmpfile

-- A path for a new SQLite file under the spec's temporary directory (nothing there yet):
-- prefix names the spec file, a counter the test.
local db_files = 0
function H.fresh_sqlite(prefix)
  db_files = db_files + 1
  local path = H.tmpdir() .. "/" .. prefix .. "-" .. db_files .. ".db"
  H.sh("rm -f " .. q(path) .. "*")
  return path
end

-- Run SQL in the sqlite3 CLI, another process; raises with its output on failure.
function H.sqlite_cli(path, sql)
  local file, out = tmpfile(".sql"), tmpfile(".out")
  spit(file, ".timeout 5000\n.bail on\n" .. sql .. "\n")
  local ok = H.sh("sqlite3 " .. q(path) .. " <" .. q(file) .. " >" .. q(out) .. " 2>&1")
  local text = slurp(out)
  if not ok then error("sqlite3 failed: " .. text, 2) end
  return text
end

-- The real psql, not Debian's wrapper: the wrapper refuses to run at all while any cluster
-- it knows of is half made (the reliability spec creates and drops one).
local PSQL = "psql"
do
  local p = io.popen("env -u LD_PRELOAD sh -c 'ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1'")
  local found = p:read("l")
  p:close()
  if found and found ~= "" then PSQL = found end
end
H.psql_bin = PSQL

-- Run SQL through psql (a separate client and connection). Returns its output;
-- raises with psql's message when a statement fails.
function H.psql(sql, url)
  local file = tmpfile(".sql")
  spit(file, sql)
  local out = tmpfile(".out")
  local ok = H.sh(PSQL .. " -X -q -At -v ON_ERROR_STOP=1 " .. q(url or H.pg_url)
    .. " -f " .. q(file) .. " >" .. q(out) .. " 2>&1")
  local text = slurp(out)
  if not ok then error("psql failed: " .. text, 2) end
  return text
end

-- A throwaway PostgreSQL cluster of the newest version in /etc/postgresql, for a spec that
-- must restart a server or set what the shared one does not allow: name (its last digits
-- random, so that runs side by side differ), port, settings ({"guc=value", ...}). Clusters of
-- the same name but for those digits that interrupted runs left (over 15 minutes old: a live
-- run is minutes old at most) are dropped first. Returns {ver, name, port, url, drop = fn}, its
-- database "test" owned by the superuser root, or nil and why it cannot be had here.
function H.pg_cluster(name, port, settings)
  local out = tmpfile(".ls")
  local ver = H.sh("ls /etc/postgresql >" .. out .. " 2>/dev/null") and slurp(out):match("(%d+)%s*$")
  if not ver then return nil, "no PostgreSQL version in /etc/postgresql" end
  local function drop(c)
    H.sh(string.format("timeout -s KILL 60 pg_dropcluster --stop %s %s >/dev/null 2>&1", ver, q(c)))
  end
  H.sh(string.format("for c in $(find /etc/postgresql/%s -mindepth 1 -maxdepth 1 -name %s -mmin +15 -printf '%%f\\n');"
    .. " do timeout -s KILL 60 pg_dropcluster --stop %s \"$c\"; done >/dev/null 2>&1", ver, q((name:gsub("%d+$", "*"))), ver))
  local opts = {}
  for _, setting in ipairs(settings or {}) do opts[#opts + 1] = "-o " .. q(setting) end
  local log = tmpfile(".cluster")
  local ok = H.sh(string.format("timeout -s KILL 120 pg_createcluster %s %s --port %d %s -- --auth=trust >%s 2>&1",
      ver, q(name), port, table.concat(opts, " "), log))
    and H.sh(string.format("timeout -s KILL 60 pg_ctlcluster --skip-systemctl-redirect %s %s start >>%s 2>&1",
      ver, q(name), log))
    and H.sh(string.format("timeout -s KILL 30 psql -X -q -h 127.0.0.1 -p %d -U postgres "
      .. "-c 'CREATE ROLE root SUPERUSER LOGIN' -c 'CREATE DATABASE test OWNER root' >>%s 2>&1", port, log))
  if not ok then
    drop(name)
    return nil, slurp(log):sub(-500)
  end
  return { ver = ver, name = name, port = port, url = string.format("postgresql://root@127.0.0.1:%d/test", port),
           drop = function() drop(name) end }
end

-- The MariaDB the MySQL specs use (SQLNOTIFY_TEST_MYSQL_URL, made by tools/mariadb.sh), the
-- parts of its URL mysql://user[:pass]@host[:port]/db, and the mariadb client's command line
-- for it (another connection: -N -B, tab-separated output).
H.mysql_url = os.getenv("SQLNOTIFY_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/sqlnotify_check"
do
  local rest = H.mysql_url:match("^[%w+]+://(.*)$")
  local auth, hp = rest:match("^(.-)@(.*)$")
  if not auth then auth, hp = "", rest end
  local m = {}
  m.user, m.pass = auth:match("^([^:]*):?(.*)$")
  m.host, m.db = hp:match("^([^/]*)/([^?]*)")
  m.host, m.port = m.host:match("^([^:]*):?(%d*)$")
  m.port = m.port ~= "" and m.port or "3306"
  m.host = m.host ~= "" and m.host or "127.0.0.1"
  m.client = string.format("MYSQL_PWD=%s mariadb --default-character-set=utf8mb4 --protocol=tcp -h %s -P %s -u %s -N -B",
    q(m.pass), q(m.host), q(m.port), q(m.user))
  H.my = m
end

-- Run SQL in the test database through the mariadb client; its output, or raises with it.
function H.mysql(sql)
  local file, out = tmpfile(".sql"), tmpfile(".out")
  spit(file, sql)
  local ok = H.sh(string.format("%s %s <%s >%s 2>&1", H.my.client, q(H.my.db), q(file), q(out)))
  local res = slurp(out)
  if not ok then error("mariadb failed: " .. res, 2) end
  return res
end

-- A fresh schema of this name (dropped with everything in it first).
function H.fresh_schema(name)
  H.psql(string.format('DROP SCHEMA IF EXISTS "%s" CASCADE; CREATE SCHEMA "%s";', name, name))
  return name
end

function H.drop_schema(name)
  H.psql(string.format('DROP SCHEMA IF EXISTS "%s" CASCADE;', name))
end

-- A notifier on the test database, asserting it connected.
function H.pg_notifier(opts)
  opts = opts or {}
  opts.url = opts.url or H.pg_url
  opts.use_logger = opts.use_logger or (os.getenv("SQLNOTIFY_VERBOSE") ~= nil)
  local n, err = sqlnotify.notifier(opts)
  assert(n, err)
  return n
end

-- A list that fills with the events a handler receives, and that handler.
function H.collector()
  local got = {}
  local function handler(ev) got[#got + 1] = ev end
  return got, handler
end

-- Poll cond() (every 20 ms, the loop not running) until it is true or timeout seconds
-- passed; returns cond()'s last value.
function H.wait_until(cond, timeout)
  local deadline = H.now() + timeout
  local v = cond()
  while not v and H.now() < deadline do
    H.sleep(0.02)
    v = cond()
  end
  return v
end

-- How many times plain (no pattern) occurs in text.
function H.count(text, plain)
  local n, at = 0, 1
  while true do
    local i, j = text:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

-- Run the loop until cond() is true or timeout seconds passed. Returns cond().
function H.run_until(cond, timeout)
  timeout = timeout or 10
  if cond() then return true end
  local deadline = H.now() + timeout
  local t = sqlnotify.every(0.005, function()
    if cond() or H.now() > deadline then sqlnotify.stop() end
  end)
  sqlnotify.run()
  t:stop()
  return cond()
end

-- Run the loop for a while (to see that nothing more arrives).
function H.run_for(seconds)
  local t = sqlnotify.after(seconds, sqlnotify.stop)
  sqlnotify.run()
  t:stop()
end

-- A TCP proxy (socat) in front of the PostgreSQL server, for database db, that can be made
-- to stop answering (SIGSTOP: its connections stay open, nothing moves) and to answer again.
-- p.port, p.stall(), p.resume(), p.stop(); p.command(sig): the shell command that signals it.
function H.pg_proxy(db)
  local port = 21000 + math.random(0, 8999)
  local pidfile = tmpfile(".pid")
  assert(H.sh(string.format("socat TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:5432 >/dev/null 2>&1 "
    .. "</dev/null & echo $! >%s", port, q(pidfile))))
  local p = { port = port }
  local deadline = H.now() + 5
  repeat
    p.pid = slurp(pidfile):match("%d+")
  until (p.pid and H.sh(string.format("psql -X -q -Atc 'select 1' %s >/dev/null 2>&1",
      q(string.format("postgresql://root@127.0.0.1:%d/%s", port, db))))) or H.now() > deadline
  assert(p.pid, "socat did not start")
  function p.command(sig)
    return string.format("kill -%s %s; for c in $(pgrep -P %s); do kill -%s $c; done", sig, p.pid, p.pid, sig)
  end
  function p.stall() H.sh(p.command("STOP")) end
  function p.resume() H.sh(p.command("CONT")) end
  function p.stop()
    p.resume()
    H.sh(string.format("for c in $(pgrep -P %s); do kill $c; done; kill %s 2>/dev/null", p.pid, p.pid))
  end
  return p
end

-- ===== the real binary =====

local Proc = {}
Proc.__index = Proc

-- Start the host on a script (text); returns a process with files for stdout/stderr.
function H.host(script, args, env, path)
  path = path or tmpfile(".lua")
  spit(path, script)
  local p = setmetatable({ script = path, out = tmpfile(".stdout"), err = tmpfile(".stderr"),
    pidfile = tmpfile(".pid"), rcfile = tmpfile(".rc") }, Proc)
  local argv = {}
  for _, a in ipairs(args or {}) do argv[#argv + 1] = q(a) end
  -- The sanitizer build checks the host for leaks; lua5.4 running busted is not ours to check.
  local envs = "ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 " .. (env or "")
  -- A detached shell starts the host, records its pid, waits for it and records its status.
  local inner = string.format("%s %s %s %s %s >%s 2>%s </dev/null & echo $! >%s; wait $!; echo $? >%s",
    envs, H.host_wrapper .. q(H.host_bin), table.concat(H.host_options or {}, " "), q(path), table.concat(argv, " "),
    q(p.out), q(p.err), q(p.pidfile), q(p.rcfile))
  assert(H.sh("sh -c " .. q(inner) .. " >/dev/null 2>&1 </dev/null &"))
  local deadline = H.now() + 5
  repeat
    p.pid = slurp(p.pidfile):match("%d+")
    if not p.pid then H.sleep(0.005) end
  until p.pid or H.now() > deadline
  assert(p.pid, "the host did not start")
  return p
end

function Proc:stdout() return slurp(self.out) end
function Proc:stderr() return slurp(self.err) end

-- Wait until stdout (or stderr with which = "err") matches pattern; true or false at timeout.
function Proc:wait_for(pattern, timeout, which)
  local deadline = H.now() + (timeout or 10)
  repeat
    local text = which == "err" and self:stderr() or self:stdout()
    if text:find(pattern) then return true end
    if self:exited() then
      text = which == "err" and self:stderr() or self:stdout()
      return text:find(pattern) ~= nil
    end
    H.sleep(0.01)
  until H.now() > deadline
  return false
end

function Proc:exited()
  return slurp(self.rcfile):match("%d+") ~= nil
end

-- Wait for the host to exit; returns its exit status (nil at timeout, after killing it).
function Proc:wait(timeout)
  local deadline = H.now() + (timeout or 15)
  while not self:exited() do
    if H.now() > deadline then
      self:kill("KILL")
      return nil
    end
    H.sleep(0.01)
  end
  return tonumber(slurp(self.rcfile):match("%d+"))
end

function Proc:kill(sig)
  H.sh(string.format("kill -%s %s 2>/dev/null", sig or "TERM", self.pid))
end

-- Fail on any sanitizer report in the host's stderr.
function Proc:assert_clean()
  local err = self:stderr()
  if err:find("AddressSanitizer") or err:find("LeakSanitizer") or err:find("runtime error:")
      or err:find("==%d+== ") then -- the last: valgrind (SQLNOTIFY_HOST_WRAPPER)
    error("sanitizer report from the host:\n" .. err, 2)
  end
end

-- Stop the host with SIGTERM: it must exit 0 and leave no sanitizer report.
function Proc:stop()
  self:kill("TERM")
  local code = self:wait()
  if code ~= 0 then error(string.format("the host exited with %s:\n%s", tostring(code), self:stderr()), 2) end
  self:assert_clean()
end

-- Wait until #list(self) reaches n (list: what the host printed, parsed), the host exits or
-- the deadline passes. true when reached.
function Proc:wait_count(list, n, timeout)
  local deadline = H.now() + (timeout or 60)
  while #list(self) < n and H.now() < deadline and not self:exited() do H.sleep(0.02) end
  return #list(self) >= n
end

-- After a durable spec's test: kill -9 what is left of the hosts in procs (emptying the list),
-- then drop the consumers whose names start with prefix, through notifier n.
function H.reap(procs, n, prefix)
  for _, p in ipairs(procs) do
    if not p:exited() then p:kill("KILL") p:wait() end
  end
  for i = #procs, 1, -1 do procs[i] = nil end
  for _, c in ipairs(assert(n:consumers())) do
    if c.name:sub(1, #prefix) == prefix then n:drop_consumer(c.name) end
  end
end

-- One field of every table in a list: pluck({{k = 1}, {k = 2}}, "k") is {1, 2}.
function H.pluck(list, field)
  local out = {}
  for i, e in ipairs(list) do out[i] = e[field] end
  return out
end

-- Run the host binary with args to its end (the command-line tools): status, stdout, stderr.
function H.run_host(args)
  local out, err = tmpfile(".out"), tmpfile(".err")
  local argv = {}
  for i, a in ipairs(args) do argv[i] = q(a) end
  local ok, _, code = H.sh("ASAN_OPTIONS=detect_leaks=1 " .. H.host_wrapper .. q(H.host_bin) .. " "
    .. table.concat(argv, " ") .. " >" .. out .. " 2>" .. err)
  return ok and 0 or code, slurp(out), slurp(err)
end

-- A private server for a spec, never the machine's shared one: cmd (a shell command line
-- that runs it in the foreground) is started in the background, and is ready once something
-- accepts on 127.0.0.1:port. d:stop() ends it (TERM, then KILL); d:kill(sig) signals it;
-- d:start() runs it again (a restart); d:log() is its output.
local Daemon = {}
Daemon.__index = Daemon

local function accepts(port)
  return H.sh(string.format("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null", port))
end

function H.daemon(cmd, port, timeout)
  local d = setmetatable({ cmd = cmd, port = port, timeout = timeout or 10, logfile = tmpfile(".log"),
    pidfile = tmpfile(".pid") }, Daemon)
  assert(not accepts(port), string.format("port %d is taken: the spec's private server cannot start", port))
  d:start()
  return d
end

function Daemon:start()
  spit(self.pidfile, "")
  local inner = string.format("exec %s >>%s 2>&1 </dev/null", self.cmd, q(self.logfile))
  assert(H.sh(string.format("sh -c %s >/dev/null 2>&1 </dev/null & echo $! >%s", q(inner), q(self.pidfile))))
  self.pid = slurp(self.pidfile):match("%d+")
  local deadline = H.now() + self.timeout
  while not accepts(self.port) do
    if H.now() > deadline then
      error(string.format("the private server did not start on port %d: %s", self.port, self:log()), 2)
    end
    H.sleep(0.05)
  end
end

function Daemon:kill(sig)
  if self.pid then H.sh(string.format("kill -%s %s 2>/dev/null", sig or "TERM", self.pid)) end
end

-- Whether process pid runs. A zombie does not: the daemon's parent shell has gone, and the
-- process that inherits it may reap it a second or more later (kill -0 still succeeds then).
function H.running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a")
  f:close()
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

function Daemon:stop()
  if not self.pid then return end
  self:kill("TERM")
  local deadline = H.now() + 5
  while H.running(self.pid) and H.now() < deadline do H.sleep(0.02) end
  self:kill("KILL")
  while H.running(self.pid) do H.sleep(0.02) end
  self.pid = nil
end

function Daemon:log() return slurp(self.logfile) end


-- A canonical text of a Lua value, as a chunk: load(H.SER)(sqlnotify.null) returns the function,
-- and a second one that prints an event as a line of it (for host scripts).
-- Keys sorted, strings and numbers as %q writes them (integers as integers, floats as hex
-- floats: -0.0, 1.0 and 0.1 all distinct; infinities as 1e9999), NaN as NAN, the SQL NULL
-- sentinel as NULL. One line: a newline in a string is written \n. Specs that compare
-- events exactly put it in their host scripts too (spec 24, spec/cases/wire.lua).
H.SER = [=[
local null = ...
local function ser(v)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      local ta, tb = type(a), type(b)
      if ta ~= tb then return ta < tb end
      return a < b
    end)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = "[" .. ser(k) .. "]=" .. ser(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return (string.format("%q", v):gsub("\\\n", "\\n"))
  elseif t == "number" then
    if v ~= v then return "NAN" end
    return string.format("%q", v)
  elseif t == "userdata" and v == null then
    return "NULL"
  end
  return tostring(v)
end
-- an event as one line "E <table> <text>", without the fields that differ from run to run
local function show(ev)
  local copy = {}
  for k, v in pairs(ev) do
    if k ~= "channel" and k ~= "timestamp" and k ~= "written_at" and k ~= "seq" and k ~= "table" then copy[k] = v end
  end
  io.write("E ", ev.table, " ", ser(copy), "\n")
end
return ser, show
]=]

return H
