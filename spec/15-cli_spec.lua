-- sqlnotify.cli: listing and dropping sqlnotify's triggers (`sqlnotify-lua --list URL`,
-- `sqlnotify-lua --drop URL [table]`), called directly and through the host.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local cli = require("sqlnotify.cli")

local S = "spec15"

-- A file-like object collecting what is written to it.
local function sink()
  local parts = {}
  return {
    write = function(self, ...)
      for _, s in ipairs { ... } do parts[#parts + 1] = tostring(s) end
      return self
    end,
    text = function() return table.concat(parts) end,
  }
end

local function call(f, ...)
  local out, err = sink(), sink()
  local args = table.pack(...)
  args[args.n + 1], args[args.n + 2] = out, err
  local code = f(table.unpack(args, 1, args.n + 2))
  return code, out:text(), err:text()
end

-- The lines starting with prefix, sorted (the columns are aligned, so by table and operation).
local function lines_of(text, prefix)
  local out = {}
  for l in text:gmatch("[^\n]+") do
    if l:sub(1, #prefix) == prefix then out[#out + 1] = l end
  end
  table.sort(out)
  return out
end

local host = H.run_host

describe("sqlnotify.cli on PostgreSQL", function()
  local n, target

  before_each(function()
    H.fresh_schema(S)
    H.psql("CREATE TABLE spec15.items (id int PRIMARY KEY, sku text, qty int); CREATE TABLE spec15.other (id int PRIMARY KEY);")
    n = H.pg_notifier()
    n:watch(S .. ".items", "insert", { extra_columns = { "sku" } })
    n:watch(S .. ".items", "update", { extra_columns = { "sku" }, trigger_columns = { "qty" } })
    n:watch(S .. ".other", "delete")
    assert(n:start())
    target = n._h:target()
  end)

  after_each(function()
    n:close()
    n = nil
  end)

  teardown(function() H.drop_schema(S) end)

  -- needs the PostgreSQL driver's list and drop (pg branch)
  it("list prints a table of every sqlnotify trigger", function()
    local code, out, err = call(cli.list, H.pg_url)
    assert.are.same({ 0, "" }, { code, err })
    local head = out:match("^[^\n]*")
    assert.matches("^schema%s+table%s+operation%s+channel%s+capture%s+trigger%s+function%s+columns%s+installed$", head)
    local mine = lines_of(out, "spec15 ")
    assert.are.equal(3, #mine, out)
    assert.matches("^spec15%s+items%s+insert%s+sqlnotify_spec15_items_insert%s+live%s+sqlnotify_items_insert_%x+%s+", mine[1])
    assert.matches("sku", mine[1])
    assert.matches("^spec15%s+items%s+update%s+sqlnotify_spec15_items_update%s+", mine[2])
    assert.matches("qty", mine[2])
    assert.matches("^spec15%s+other%s+delete%s+sqlnotify_spec15_other_delete%s+", mine[3])
    assert.matches("\n%d+ trigger%(s%) in " .. target:gsub("%p", "%%%0") .. "\n$", out)
  end)

  it("drop removes ours on one table, and says how many", function()
    local code, out, err = call(cli.drop, H.pg_url, "spec15.items")
    assert.are.same({ 0, 'dropped 2 sqlnotify trigger(s) on "spec15"."items"\n', "" }, { code, out, err })
    assert.are.equal("0\n", H.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'spec15.items'::regclass "
      .. "AND NOT tgisinternal"))
    assert.are.equal("1\n", H.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'spec15.other'::regclass "
      .. "AND NOT tgisinternal"))
    assert.are.equal("0\n", H.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace "
      .. "WHERE s.nspname = 'spec15' AND p.proname LIKE '%items%'"))
    local _, listed = call(cli.list, H.pg_url)
    assert.are.equal(1, #lines_of(listed, "spec15 "), listed)
  end)

  it("reports a bad table, URL or server as one line and status 1", function()
    local code, out, err = call(cli.drop, H.pg_url, "spec15.nosuch")
    assert.are.same({ 1, "", 'sqlnotify: unknown table "spec15"."nosuch"\n' }, { code, out, err })
    code, out, err = call(cli.list, "")
    assert.are.same({ 1, "",
      'sqlnotify: database URL "" has no scheme (expected postgresql://..., mysql://..., sqlite:///path.db)\n' }, { code, out, err })
    code, out, err = call(cli.list, "postgresql://root:hunter2@127.0.0.1:1/nodb")
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.matches('^sqlnotify: cannot connect to database "nodb" on 127%.0%.0%.1:1[^\n]*\n$', err)
    assert.is_nil(err:find("hunter2", 1, true))
  end)

  describe("through the host", function()
    -- needs sqlnotify-lua --list/--drop (core branch) and the driver's list and drop (pg branch)
    it("--list and --drop URL table", function()
      local code, out, err = host { "--list", H.pg_url }
      assert.are.same({ 0, "" }, { code, err })
      assert.are.equal(3, #lines_of(out, "spec15 "), out)
      code, out, err = host { "--drop", H.pg_url, "spec15.items" }
      assert.are.same({ 0, 'dropped 2 sqlnotify trigger(s) on "spec15"."items"\n', "" }, { code, out, err })
      code, out, err = host { "--drop", H.pg_url, "spec15.nosuch" }
      assert.are.same({ 1, "", 'sqlnotify: unknown table "spec15"."nosuch"\n' }, { code, out, err })
      code, out, err = host { "--list", "" }
      assert.are.same({ 1, "",
        'sqlnotify: database URL "" has no scheme (expected postgresql://..., mysql://..., sqlite:///path.db)\n' }, { code, out, err })
    end)
  end)
end)

describe("sqlnotify.cli on SQLite", function()
  -- needs the SQLite driver's list and drop (sqlite branch)
  it("lists, drops everything in the file, and says so when there is nothing", function()
    local path = H.tmpfile(".db")
    local url = "sqlite:///" .. path .. "?mode=rwc"
    local n = assert(sqlnotify.notifier{ url = url, use_logger = false })
    finally(function() n:close() end)
    assert(n:query("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)"))
    n:watch("tasks", "insert", { extra_columns = { "title" } })
    n:watch("tasks", "delete")
    assert(n:start())
    local target = n._h:target()
    local code, out, err = call(cli.list, url)
    assert.are.same({ 0, "" }, { code, err })
    local mine = lines_of(out, "main ")
    assert.are.equal(2, #mine, out)
    assert.matches("^main%s+tasks%s+delete%s+sqlnotify_main_tasks_delete%s+", mine[1])
    assert.matches("^main%s+tasks%s+insert%s+sqlnotify_main_tasks_insert%s+", mine[2])
    assert.matches("title", mine[2])
    code, out, err = call(cli.drop, url, nil)
    assert.are.same({ 0, "dropped 2 sqlnotify trigger(s) in " .. target .. "\n", "" }, { code, out, err })
    assert.are.same({}, assert(n:query("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
    code, out, err = call(cli.list, url)
    assert.are.same({ 0, "no sqlnotify triggers in " .. target .. "\n", "" }, { code, out, err })
  end)
end)
