-- The binding's fast payload decoder against the general lua-cjson path: for every
-- payload it takes, it must give the very event the general path gives; anything else
-- it must hand back (false). Hostile input is the reliability spec's; here, agreement.
local H = require("helper") -- luacheck: ignore
local sqlnotify = require("sqlnotify")
local core = require("sqlnotify.core")

local W = { schema = "s", table = "t", op = "insert", pk = { "a", "b" }, extra = { "e", "é x", 'q"' },
  truncated_log = {} }
local W1 = { schema = "s", table = "t", op = "insert", pk = { "id" }, extra = { "v" }, truncated_log = {} }

-- A notifier-like object whose log is captured, to call the two decoders directly.
local function decoder()
  local logs = {}
  local self = setmetatable({ _log = function(_, level, ...) logs[#logs + 1] = level .. " " .. string.format(...) end },
    { __index = getmetatable(sqlnotify.notifier{ url = "sqlite:///" .. H.tmpfile(".db") .. "?mode=rwc", use_logger = false }) })
  return self, logs
end

local function strip(ev)
  if ev then ev.timestamp = nil end
  return ev
end

describe("payload decoding", function()
  local d = decoder()

  local agree = {
    '{"id": {"a": 1, "b": "x"}, "x": {"e": "plain"}}',
    '{"id":{"a":-9223372036854775808,"b":"\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"},"x":{"é x":2.5,"q\\"":null}}',
    '{"id": {"b": "k", "a": 9007199254740993}, "x": {"e": true, "é x": false}}',
    '{"id": {"a": 1.0, "b": 2e3}, "x": {}}',
    '{"id": {"a": 1, "b": 2}}',
    '{"id": {"a": 1, "b": 2}, "x": null, "t": true}',
    '{"t": true}',
    '{"id": {"a": 1}, "x": {"e": 1}}',
    '{"id": {"a": 1, "b": 2, "zz": 3}, "x": {"e": "1", "other": 4}}',
    '  {"id" : { "a" : 1 , "b" : 2 } , "x" : { "e" : 1e300 } }  ',
  }

  it("gives the same event as the general path for the shapes triggers send", function()
    for i, p in ipairs(agree) do
      local fast = core.decode(p, W.pk, W.extra)
      assert.is_true(fast, "fast path taken for payload " .. i)
      assert.are.same(strip(d:_event_general(W, "c", p, 0)), strip(d:_event(W, "c", p, 0)), "payload " .. i)
    end
    local fast, id = core.decode('{"id": {"id": 7}, "x": {"v": "w"}}', W1.pk, W1.extra)
    assert.are.same({ true, 7 }, { fast, id })
  end)

  it("hands everything else to the general path", function()
    for _, p in ipairs {
      '{"id": {"a": {"n": 1}, "b": 2}}', '{"id": {"a": [1], "b": 2}}', '{"x": {"e": {"deep": true}}, "id": {"a": 1}}',
      '{"id": {"a": 1, "b": 2}, "other": 1}', '{"id": {"a": NaN, "b": 2}}', '{"id": {"a": 1, "b": 2}',
      '{"id": {"a": 1, "b": 2}} trailing', '[1, 2]', '"text"', '', '{"id": {"a": "\\ud800", "b": 2}}',
      '{"id": {"a": "bad\\q", "b": 2}}', '{"id": {"a": 1 "b": 2}}', '{"id": {"a": 01x, "b": 2}}',
      '{"id": {"a": "raw\ncontrol", "b": 2}}',
    } do
      assert.is_false(core.decode(p, W.pk, W.extra), p)
    end
  end)

  it("agrees with the general path on 20,000 mutations of valid payloads", function()
    math.randomseed(20261124)
    local alphabet = '{}[]",:\\ 0123456789.eE+-tfnulxabid\128\195\169'
    local taken = 0
    for n = 1, 20000 do
      local p = agree[(n % #agree) + 1]
      for _ = 1, math.random(1, 3) do
        local at = math.random(1, #p + 1)
        local op = math.random(3)
        local ch = alphabet:sub(math.random(#alphabet), math.random(#alphabet)):sub(1, 1)
        if op == 1 then p = p:sub(1, at - 1) .. ch .. p:sub(at)
        elseif op == 2 then p = p:sub(1, at - 1) .. p:sub(at + 1)
        else p = p:sub(1, at - 1) .. ch .. p:sub(at + 1) end
      end
      if core.decode(p, W.pk, W.extra) then
        taken = taken + 1
        local general = strip(d:_event_general(W, "c", p, 0))
        local fast = strip(d:_event(W, "c", p, 0))
        if general ~= nil then assert.are.same(general, fast, p) end
      end
    end
    assert.is_true(taken > 1000, "the fast path took " .. taken)
  end)
end)
