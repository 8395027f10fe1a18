-- Volume and order on PostgreSQL: a 5,000-row commit and 200 single-row commits over
-- two tables arrive all, once each, in commit order.
local H = require("helper")

local S = "spec02"

describe("delivery on PostgreSQL", function()
  local n

  setup(function()
    H.fresh_schema(S)
    H.psql([[
      CREATE TABLE spec02.a (id int PRIMARY KEY, v text);
      CREATE TABLE spec02.b (id int PRIMARY KEY, v text);
    ]])
  end)

  teardown(function()
    if n then n:cleanup(); n:close() end
    H.drop_schema(S)
  end)

  it("delivers 5,000 rows in one commit and 200 single-row commits over two tables once each, in commit order", function()
    n = H.pg_notifier()
    local got = {}
    local function rec(ev) got[#got + 1] = ev.table .. ":" .. ev.operation .. ":" .. ev.id .. ":" .. ev.extra_columns.v end
    for _, t in ipairs { "a", "b" } do
      n:watch(S .. "." .. t, "insert", { extra_columns = { "v" } })
      n:watch(S .. "." .. t, "update", { extra_columns = { "v" } })
      n:subscribe(S .. "." .. t, "insert", rec)
      n:subscribe(S .. "." .. t, "update", rec)
    end
    assert(n:start())

    local expected, sql = {}, {
      "BEGIN;",
      "INSERT INTO spec02.a SELECT g, 'big' FROM generate_series(1, 2500) g;",
      "INSERT INTO spec02.b SELECT g, 'big' FROM generate_series(1, 2500) g;",
      "COMMIT;",
    }
    for i = 1, 2500 do expected[#expected + 1] = "a:insert:" .. i .. ":big" end
    for i = 1, 2500 do expected[#expected + 1] = "b:insert:" .. i .. ":big" end
    for i = 1, 200 do
      local t = i % 2 == 1 and "a" or "b"
      if i % 4 == 0 then
        sql[#sql + 1] = string.format("UPDATE spec02.%s SET v = 'u%d' WHERE id = %d;", t, i, i)
        expected[#expected + 1] = string.format("%s:update:%d:u%d", t, i, i)
      else
        sql[#sql + 1] = string.format("INSERT INTO spec02.%s VALUES (%d, 's%d');", t, 10000 + i, i)
        expected[#expected + 1] = string.format("%s:insert:%d:s%d", t, 10000 + i, i)
      end
    end
    H.psql(table.concat(sql, "\n"))
    assert.is_true(H.run_until(function() return #got >= #expected end, 30))
    H.run_for(0.3)
    assert.are.equal(5200, #expected)
    assert.are.equal(#expected, #got)
    for i = 1, #expected do
      if got[i] ~= expected[i] then
        assert.are.equal(expected[i], got[i], "event " .. i)
      end
    end
  end)
end)
