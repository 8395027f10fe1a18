-- Hot reload (--reload and SIGHUP) through the real binary, and the luarocks install.
local H = require("helper")

local S = "spec08"

local function script(version, extra)
  return string.format([[
    local sqlnotify = require("sqlnotify")
    local V = %q
    local n = assert(sqlnotify.notifier{ url = os.getenv("PG") })
    n:watch("spec08.t", "insert")
    n:subscribe("spec08.t", "insert", function(ev) print(V .. " " .. ev.id) end)
    %s
    -- once the loop runs: the host has started the notifier (trigger installed, LISTENing)
    sqlnotify.after(0, function() print(V .. " loaded") end)
  ]], version, extra or "")
end

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- A directory of its own: --reload watches every Lua file beside the script.
local dirs = 0
local function script_path()
  dirs = dirs + 1
  local dir = H.tmpdir() .. "/reload" .. dirs
  assert(H.sh("mkdir -p " .. H.shell_quote(dir)))
  return dir .. "/watcher.lua"
end

local function start(text, opts)
  local path = script_path()
  H.host_options = opts or { "--reload" }
  local p = H.host(text, {}, "PG=" .. H.shell_quote(H.pg_url), path)
  H.host_options = nil
  p.path = path
  return p
end

describe("reload", function()
  before_each(function()
    H.fresh_schema(S)
    H.psql("CREATE TABLE spec08.t (id int PRIMARY KEY); CREATE TABLE spec08.u (id int PRIMARY KEY);")
  end)

  teardown(function() H.drop_schema(S) end)

  it("switches handlers when the script is rewritten, losing and repeating nothing of 1,200 commits", function()
    local p = start(script("v1"))
    assert.is_true(p:wait_for("v1 loaded\n"), p:stderr())
    -- 1,200 single-row commits from another client, while the script is rewritten
    assert(H.sh(H.psql_bin .. " -X -q " .. H.shell_quote(H.pg_url) .. [[ -c "DO \$\$ BEGIN FOR i IN 1..1200 LOOP
      INSERT INTO spec08.t VALUES (i); COMMIT; PERFORM pg_sleep(0.002); END LOOP; END \$\$" >/dev/null 2>&1 &]]))
    assert.is_true(p:wait_for("v1 100\n"), p:stdout())
    H.spit(p.path, script("v2"))
    assert.is_true(p:wait_for("v2 loaded\n"), p:stderr())
    assert.is_true(p:wait_for("v2 1200\n", 30), p:stdout())
    p:kill("TERM")
    assert.are.equal(0, p:wait())
    p:assert_clean()

    local seen, version_of, order = {}, {}, {}
    for _, l in ipairs(lines(p:stdout())) do
      local v, id = l:match("^(v%d) (%d+)$")
      if v then
        id = tonumber(id)
        assert.is_nil(seen[id], "event " .. id .. " delivered twice")
        seen[id], version_of[id] = true, v
        order[#order + 1] = id
      end
    end
    assert.are.equal(1200, #order)
    for i = 1, 1200 do assert.are.equal(i, order[i], "commit order") end
    -- one switch: every v1 event before every v2 event, and both handled some
    local switched = false
    for i = 1, 1200 do
      if version_of[i] == "v2" then switched = true end
      if switched then assert.are.equal("v2", version_of[i], "event " .. i) end
    end
    assert.are.equal("v1", version_of[1])
    assert.are.equal("v2", version_of[1200])
    assert.matches("reloading .- %(a file changed%)", p:stderr())
  end)

  it("keeps the old handlers after a broken edit, logging file:line, and takes the next good one", function()
    local p = start(script("v1"))
    assert.is_true(p:wait_for("v1 loaded\n"), p:stderr())
    H.spit(p.path, script("v2") .. "\nlocal x = = 2\n")
    assert.is_true(p:wait_for("reload failed; the previous handlers keep running", 5, "err"), p:stderr())
    assert.matches(p.path:gsub("%p", "%%%0") .. ":%d+: unexpected symbol near '='", p:stderr())
    H.psql("INSERT INTO spec08.t VALUES (1)")
    assert.is_true(p:wait_for("v1 1\n"), p:stdout())
    H.spit(p.path, script("v3"))
    assert.is_true(p:wait_for("v3 loaded\n"), p:stderr())
    H.psql("INSERT INTO spec08.t VALUES (2)")
    assert.is_true(p:wait_for("v3 2\n"), p:stdout())
    p:kill("TERM")
    assert.are.equal(0, p:wait())
    assert.are.equal("v1 loaded\nv1 1\nv3 loaded\nv3 2\n", p:stdout())
    p:assert_clean()
  end)

  it("reloads on SIGHUP without --reload, and installs the watches the new script adds", function()
    local p = start(script("v1"), {})
    assert.is_true(p:wait_for("v1 loaded\n"), p:stderr())
    H.spit(p.path, script("v2", [[
      n:watch("spec08.u", "delete")
      n:subscribe("spec08.u", "delete", function(ev) print(V .. " deleted " .. ev.id) end)
    ]]))
    H.sleep(0.3)
    H.psql("INSERT INTO spec08.t VALUES (1)")
    assert.is_true(p:wait_for("v1 1\n"), p:stdout()) -- no --reload: the edit alone changes nothing
    p:kill("HUP")
    assert.is_true(p:wait_for("v2 loaded\n"), p:stderr())
    H.psql("INSERT INTO spec08.t VALUES (2); INSERT INTO spec08.u VALUES (5); DELETE FROM spec08.u;")
    assert.is_true(p:wait_for("v2 deleted 5\n"), p:stdout())
    p:kill("TERM")
    assert.are.equal(0, p:wait())
    assert.are.equal("v1 loaded\nv1 1\nv2 loaded\nv2 2\nv2 deleted 5\n", p:stdout())
    assert.matches("reloading .- %(SIGHUP%)", p:stderr())
    p:assert_clean()
  end)
end)

describe("luarocks", function()
  it("installs the module and the binary into a tree that works from another directory", function()
    local tree = H.tmpdir() .. "/rocks"
    local log = H.tmpfile(".log")
    -- a plain build, as a user gets it, even inside make check SANITIZE=address; in a copy of
    -- the sources, as a user's download: luarocks runs make with the default BUILD, and the
    -- checkout's build/ is what the specs running beside this one load
    local src = H.tmpdir() .. "/src"
    assert(H.sh("mkdir " .. H.shell_quote(src) .. " && cd " .. H.shell_quote(H.root)
      .. " && tar --exclude='./build*' --exclude=./.git -cf - . | tar -xf - -C " .. H.shell_quote(src)))
    local ok = H.sh("cd " .. H.shell_quote(src) .. " && env -u SANITIZE -u BUILD -u MAKEFLAGS -u MFLAGS -u MAKELEVEL"
      .. " luarocks --lua-version=5.4 --tree=" .. H.shell_quote(tree)
      .. " make --deps-mode=none rockspec/sqlnotify-scm-1.rockspec >" .. log .. " 2>&1")
    assert.is_true(ok == true, H.slurp(log))
    local out = H.tmpfile(".out")
    -- the binary finds its Lua files beside it, with no environment variable
    assert(H.sh("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
      .. H.shell_quote(tree .. "/bin/sqlnotify-lua") .. " --version >" .. out .. " 2>&1"))
    assert.matches("^sqlnotify%-lua %d+%.%d+%.%d+", H.slurp(out))
    -- plain lua5.4 with the tree's paths: require works and a script can run the loop
    local luascript = H.tmpfile(".lua")
    H.spit(luascript, [[
      local sqlnotify = require("sqlnotify")
      sqlnotify.after(0.01, function() print("ran", sqlnotify.VERSION); sqlnotify.stop() end)
      sqlnotify.run()
    ]])
    assert(H.sh("cd / && eval \"$(luarocks --lua-version=5.4 --tree=" .. H.shell_quote(tree) .. " path)\" && lua5.4 "
      .. H.shell_quote(luascript) .. " >" .. out .. " 2>&1"))
    assert.matches("^ran\t%d+%.%d+%.%d+\n$", H.slurp(out))
  end)
end)
