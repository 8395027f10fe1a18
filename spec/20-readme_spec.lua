-- spec/20-readme_spec.lua — the README's PostgreSQL quick start, run as written: its script
-- and its psql lines are taken from README.md, and run by a role that may create a schema
-- but may not create anything in public (PostgreSQL 15's default for non-owners).
local H = require("helper")

local ROLE = "sn_spec20_newcomer"

local function readme()
  local text = H.slurp(H.root .. "/README.md")
  local script = text:match("Save it as `watch%.lua`:\n\n```lua\n(.-)```")
  local shell = text:match("build/sqlnotify%-lua watch%.lua\n# in another terminal:\n(.-)```")
  local first, second = text:match("The watcher prints `([^`]+)`, then `([^`]+)`")
  assert(script and shell and first, "README.md no longer has the quick start this spec runs")
  local psql = {}
  for line in shell:gmatch("[^\n]+") do
    if line:match("^psql ") then psql[#psql + 1] = line end
  end
  return script, psql, first, second:gsub("\n", " ")
end

describe("the README's quick start", function()
  local url

  setup(function()
    local db = H.psql("SELECT current_database()"):match("[^\n]+")
    H.psql(string.format([[DROP SCHEMA IF EXISTS quickstart CASCADE; DROP ROLE IF EXISTS %s;
      CREATE ROLE %s LOGIN; GRANT CREATE ON DATABASE %s TO %s;]], ROLE, ROLE, db, ROLE))
    url = H.pg_url_as(ROLE)
  end)

  teardown(function()
    local db = H.psql("SELECT current_database()"):match("[^\n]+")
    H.psql(string.format([[DROP SCHEMA IF EXISTS quickstart CASCADE;
      REVOKE CREATE ON DATABASE %s FROM %s; DROP ROLE IF EXISTS %s;]], db, ROLE, ROLE))
  end)

  it("works as written for a role that cannot create in public", function()
    local script, psql, first, second = readme()
    -- the premise: this role really cannot write public
    assert.is_falsy(H.sh(H.psql_bin .. " -X -q " .. H.shell_quote(url) .. " -c 'CREATE TABLE public.sn_spec20 (i int)' >/dev/null 2>&1"))
    local p = H.host(script, {}, "DATABASE_URL=" .. H.shell_quote(url))
    finally(function() if not p:exited() then p:kill("KILL") end end)
    assert.is_true(p:wait_for("listening on 2 channel", 15, "err"), p:stderr())
    for _, line in ipairs(psql) do
      assert.is_true(H.sh("export DATABASE_URL=" .. H.shell_quote(url) .. "; " .. line .. " >/dev/null"), line)
    end
    assert.is_true(p:wait_for(second:gsub("%p", "%%%0"), 15), p:stdout())
    assert.are.equal(first .. "\n" .. second .. "\n", p:stdout())
    p:kill("TERM")
    assert.are.equal(0, p:wait())
  end)
end)
