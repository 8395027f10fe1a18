-- spec/18-deps_spec.lua — make demo and make check install what they need on a machine
-- without the Debian packages: tools/deps.sh runs with stand-ins for dpkg-query, apt-get
-- and id on PATH, so the install path is exercised without touching the machine.
local H = require("helper")

describe("tools/deps.sh", function()
  local dir, log

  before_each(function()
    dir = H.tmpdir() .. "/deps-" .. tostring(math.random(1e9))
    log = dir .. "/apt.log"
    assert(H.sh("mkdir -p " .. H.shell_quote(dir)))
    -- nothing is installed; apt-get records what it was asked; we are root
    H.spit(dir .. "/dpkg-query", "#!/bin/sh\nexit 1\n")
    H.spit(dir .. "/apt-get", "#!/bin/sh\necho \"apt-get $*\" >> " .. H.shell_quote(log) .. "\n")
    H.spit(dir .. "/id", "#!/bin/sh\necho 0\n")
    assert(H.sh("chmod +x " .. H.shell_quote(dir) .. "/*"))
  end)

  after_each(function() H.sh("rm -rf " .. H.shell_quote(dir)) end)

  local function run(what)
    local p = io.popen("cd " .. H.shell_quote(H.root) .. " && env -u LD_PRELOAD PATH=" .. H.shell_quote(dir)
      .. ":/usr/bin:/bin sh tools/deps.sh " .. what .. " 2>&1; echo \"exit=$?\"")
    local out = p:read("a")
    p:close()
    return out
  end

  it("installs the build's packages for make demo, and says which", function()
    local out = run("build")
    local want = "lua5.4 liblua5.4-dev libpq-dev libsqlite3-dev libev-dev lua-cjson pkg-config make gcc"
    assert.are.equal("deps: installing Debian packages: " .. want .. "\nexit=0\n", out)
    assert.are.equal("apt-get update -qq\napt-get install -y -qq " .. want .. "\n", H.slurp(log))
  end)

  it("installs the test tools as well for make check", function()
    local out = run("check")
    assert.matches("exit=0", out, 1, true)
    assert.matches("install %-y %-qq lua5%.4 .* lua%-busted luarocks sqlite3 postgresql%-client chromium "
      .. "lua%-cqueues socat libmariadb%-dev mariadb%-client libcurl4%-openssl%-dev libhiredis%-dev libnats%-dev "
      .. "libmosquitto%-dev redis%-server nats%-server mosquitto mosquitto%-clients "
      .. "librdkafka%-dev prometheus curl\n$", H.slurp(log))
  end)

  it("refuses an unknown target with a usage line", function()
    assert.are.equal("usage: tools/deps.sh build|live|check\nexit=2\n", run("nonsense"))
  end)

  it("runs before the build in make demo", function()
    local p = io.popen("cd " .. H.shell_quote(H.root) .. " && env -u LD_PRELOAD make -n demo 2>&1")
    local out = p:read("a")
    p:close()
    local deps, build = out:find("tools/deps.sh build", 1, true), out:find("all", 1, true)
    assert.is_truthy(deps)
    assert.is_truthy(build)
    assert.is_true(deps < build)
  end)
end)

describe("the build", function()
  -- make demo builds before make check installs libmariadb-dev: the second build must not
  -- keep the first one's objects, made without the MySQL driver.
  it("is redone when what it was configured with changed", function()
    local build = H.tmpdir() .. "/reconfigured"
    local mysql_url = os.getenv("SQLNOTIFY_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/sqlnotify_check"
    local script, out = H.tmpfile(".lua"), H.tmpfile(".out")
    H.spit(script, string.format([[
      local ok, n = pcall(require("sqlnotify").notifier, { url = %q, use_logger = false })
      print(ok and n and n.dialect_name or n)
      if ok and n then n:close() end]], mysql_url))
    local function run()
      assert(H.sh(string.format("LUA_PATH=%s timeout 20 %s %s >%s 2>&1", H.shell_quote(H.root .. "/lua/?.lua;" .. H.root
        .. "/lua/?/init.lua;;"), H.shell_quote(build .. "/sqlnotify-lua"), H.shell_quote(script), H.shell_quote(out))))
      return H.slurp(out)
    end
    local make = "cd " .. H.shell_quote(H.root) .. " && make -s -j2 all SANITIZE= BUILD=" .. H.shell_quote(build)
    finally(function() H.sh("rm -rf " .. H.shell_quote(build)) end)
    assert(H.sh(make .. " MYSQL_LIBS= MYSQL_CFLAGS= >/dev/null 2>&1"))
    assert.are.equal("sqlnotify: this build has no MySQL/MariaDB support (install libmariadb-dev and rebuild)\n", run())
    assert(H.sh(make .. " >/dev/null 2>&1"))
    assert.are.equal("mysql\n", run())
  end)
end)
