--- sqlnotify.filters: subscribe's filters. Their shape is checked, their values are
-- judged by the column's class (converted where that is exact, refused where they can
-- never match), and events are matched against them.
local core = require("sqlnotify.core")

local F = {}

local fmt = string.format

-- SQL NULL where a caller asks to see it: filter values, and events with nulls = true.
F.null = core.null or require("cjson.safe").null

-- A value in a message: strings quoted, the rest as Lua prints it.
local function show(v)
  if v == F.null then return "sqlnotify.null" end
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end
F.show = show

-- An event's key in a message: 42, "abc", {1, "x"}; nil for a table without a key.
function F.show_id(id)
  if type(id) ~= "table" then return id ~= nil and show(id) or nil end
  local parts = {}
  for i = 1, #id do parts[i] = show(id[i]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Where sqlnotify's Lua files are: "@/.../sqlnotify/".
local OWN = "@" .. (debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "\0")

--- F.error_level(level) -> the level to give error() for a misuse at `level`, both counted
-- from the function that calls this. Normally `level` itself. But when the public function (the
-- frame below it) was tail-called, as by a module ending in `return sqlnotify.notifier{...}`,
-- Lua kept no frame of its caller: at `level` there may be a C function (require, dofile),
-- where error() names no line. Then the nearest line above stands for it (a tail call to a C
-- function keeps its caller's frame: sqlnotify.io names the very line), unless that line is
-- sqlnotify's own: a handler's tail call names no line rather than one of ours.
function F.error_level(level)
  local info = debug.getinfo(level + 1, "l")
  if not info or info.currentline > 0 or not debug.getinfo(level, "t").istailcall then return level end
  for l = level + 2, math.huge do
    info = debug.getinfo(l, "Sl")
    if not info or info.source:sub(1, #OWN) == OWN then return level end
    if info.currentline > 0 then return l - 1 end
  end
end
local error_level = F.error_level

local function fail(level, ...)
  error("sqlnotify: " .. fmt(...), error_level(level + 1))
end

-- ===== values against column classes =====

-- Each column has a class from the driver's describe (src/dialect.h), the same words on
-- every dialect. A filter value is converted to what the decoder gives for that class where
-- that is exact, so it matches by plain equality in dispatch; a value the class can never
-- hold is refused, unless the table is loose (SQLite without STRICT: any column holds any
-- value), where it is compared as the database would keep it.

-- A number from decimal text ("20", "-1.5", "2e3"; not hex, not "inf"), else nil.
local function number_of(s)
  local t = s:match("^%s*(.-)%s*$")
  if not t:find("^[-+]?%d*%.?%d*[eE]?[-+]?%d*$") or not t:find("%d") then return nil end
  return tonumber(t)
end

-- A number from a number, decimal text or a boolean (1 or 0, as MySQL and SQLite keep
-- one), and whether it was converted; nil for anything else.
local function as_number(v)
  local tv = type(v)
  if tv == "number" then return v, false end
  if tv == "boolean" then return v and 1 or 0, true end
  if tv == "string" then
    local n = number_of(v)
    if n then return n, true end
  end
  return nil
end

-- The decimal text of a number: integers exactly, floats in the fewest digits that read
-- back to the same float (0.1 is "0.1").
local function number_text(v)
  local i = math.tointeger(v)
  if i then return fmt("%d", i) end
  for digits = 15, 17 do
    local s = fmt("%." .. digits .. "g", v)
    if tonumber(s) == v or digits == 17 then return s end
  end
end

-- Decimal text with exactly `scale` digits after the point, as a decimal(p, scale) column
-- prints it; nil when the text is not a decimal or has digits the scale drops.
local function scaled(text, scale)
  local sign, int, frac = text:match("^%s*([-+]?)(%d*)%.?(%d*)%s*$")
  if not sign or int .. frac == "" then return nil end
  if #frac > scale then
    if frac:sub(scale + 1):find("[1-9]") then return nil end
    frac = frac:sub(1, scale)
  end
  int = int:gsub("^0+", "")
  if int == "" then int = "0" end
  if sign == "+" or (int == "0" and not frac:find("[1-9]")) then sign = "" end
  return sign .. int .. (scale > 0 and "." .. frac .. ("0"):rep(scale - #frac) or "")
end

local INFINITIES = { Infinity = math.huge, ["-Infinity"] = -math.huge }

-- Per class: v, scale -> the value to compare and whether it was converted; or nil, a note
-- for the refusal (or nil), and what a loose column would keep instead (or nil: v itself).
local CONVERT = {
  integer = function(v)
    local n, changed = as_number(v)
    if n == nil then return nil end
    local i = math.tointeger(n)
    if i then return i, changed end
    return nil, nil, n
  end,
  float = function(v)
    if INFINITIES[v] then return INFINITIES[v], true end
    local n, changed = as_number(v)
    if n == nil then return nil end
    local f = n + 0.0
    if math.type(n) == "integer" and math.tointeger(f) ~= n then return nil, nil, n end -- beyond 2^53
    return f, changed
  end,
  decimal = function(v, scale)
    local tv = type(v)
    if v == "NaN" or INFINITIES[v] then return v, false end
    if tv ~= "string" and tv ~= "number" then return nil end
    if scale then
      local text = scaled(tv == "number" and number_text(v) or v, scale)
      if text then return text, text ~= v end
      return nil
    end
    if tv == "string" and number_of(v) then return v, false end
    if tv == "number" then
      return nil, "exact decimals arrive as strings of their exact text; give the value as that text"
    end
    return nil
  end,
  boolean = function(v)
    if type(v) == "boolean" then return v, false end
    if v == "true" or v == "false" then return v == "true", true end
    return nil
  end,
  text = function(v)
    if type(v) == "string" then return v, false end
    if math.type(v) == "integer" then return fmt("%d", v), true end
    return nil
  end,
  bytes = function(v)
    if type(v) == "string" then return v, false end
    return nil
  end,
}

-- The filter value v as the column's values arrive, and whether it was converted; nil and
-- a note (or nil) when it can never match.
local function convert(info, col, v)
  local how = CONVERT[info.class_of[col]]
  if how == nil or v == F.null then return v, false end -- json, other: not judged
  local cv, changed_or_note, kept = how(v, info.scale_of[col])
  if cv ~= nil then return cv, changed_or_note end
  if info.loose then
    if kept ~= nil then return kept, kept ~= v end
    return v, false
  end
  return nil, changed_or_note
end

-- ===== shape =====

local KEYS = { column = true, value = true, old = true }

--- filters = {{column=, value=, old=}, ...} checked against the watch w (schema, op,
-- carried, oldset) and its table's catalog info (class_of, scale_of, loose). warn(fmt, ...)
-- tells of a converted value. Returns the filters as dispatch uses them.
function F.check(list, w, info, warn, level)
  if list == nil then return {} end
  local shape = "filters must be a list of {column = name, value = v}"
  if type(list) ~= "table" then fail(level + 1, "%s, got %s", shape, type(list)) end
  if list.column ~= nil or list.value ~= nil then
    fail(level + 1, "%s; for one filter write filters = {{column = %s, value = ...}}", shape, show(list.column))
  end
  local n = #list
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail(level + 1, "%s, not a table with key %s (write {{column = %s, value = ...}})", shape, show(k), show(k))
    end
  end
  local out = {}
  for i, f in ipairs(list) do
    if type(f) ~= "table" then fail(level + 1, "filters[%d] must be {column = name, value = v}, got %s", i, type(f)) end
    for k in pairs(f) do
      if not KEYS[k] then fail(level + 1, "filters[%d] has unknown key %s (use column, value, old)", i, show(k)) end
    end
    local col = f.column
    if type(col) ~= "string" then fail(level + 1, "filters[%d] needs a column name, got %s", i, type(col)) end
    if f.old ~= nil and type(f.old) ~= "boolean" then fail(level + 1, "filters[%d].old must be a boolean", i) end
    if not info.columns[col] then fail(level + 1, "unknown column %q in filters of table %s", col, w.name) end
    if f.old then
      if not w.oldset[col] then
        fail(level + 1, "filter column %q with old = true is not in old_columns of the %s watch on %s", col, w.op,
          w.name)
      end
    elseif not w.carried[col] then
      fail(level + 1, "filter column %q is not carried by the %s watch on %s (add it to extra_columns)", col, w.op,
        w.name)
    end
    local v = f.value
    if v == nil or v ~= v then fail(level + 1, "filters[%d] needs a value (sqlnotify.null for SQL NULL)", i) end
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" and tv ~= "boolean" and v ~= F.null then
      fail(level + 1, "filters[%d] value must be a string, number, boolean or sqlnotify.null, got %s", i, tv)
    end
    local ctype = info.type_of[col] or ""
    local cv, note = convert(info, col, v)
    if cv == nil then
      local scale = info.scale_of[col]
      fail(level + 1, "filter value %s on column %q of %s can never match: the column is %s, class %s%s%s", show(v),
        col, w.name, ctype, info.class_of[col], scale and fmt(" (scale %d)", scale) or "", note and "; " .. note or "")
    end
    if note then
      warn("filter value %s on column %q of %s (%s) is compared as %s", show(v), col, w.name, ctype, show(cv))
    end
    out[i] = { column = col, value = cv, old = f.old == true, key = f.old and "old\0" .. col or col }
  end
  return out
end

-- ===== matching =====

local null = F.null

--- The value an event has for a filter's column, and whether the event tells it at all
-- (a truncated row carries its key only, none carries a column gone from the table).
function F.event_value(w, ev, f)
  if w.goneset[f.column] then return nil, false end
  if f.old then
    local old = ev.old
    if old == nil or ev.truncated then return nil, false end
    return old[f.column], true
  end
  local i = w.pkindex[f.column]
  if i then
    local id = ev.id
    if ev.truncated and id == nil then return nil, false end
    if #w.pk == 1 then return id, true end
    return id and id[i], true
  end
  if ev.truncated then return nil, false end
  return ev.extra_columns[f.column], true
end
local event_value = F.event_value

--- The first filter of sub the event does not pass (with the event's value and whether it
-- had one), or nil when it passes them all. sqlnotify.null matches SQL NULL: the sentinel
-- with nulls = true, else a carried column's nil.
function F.mismatch(sub, w, ev, nulls)
  local filters = sub.filters
  for i = 1, #filters do
    local f = filters[i]
    local v, known = event_value(w, ev, f)
    local want = f.value
    local ok
    if not known then
      ok = false
    elseif want == null then
      ok = v == null or (v == nil and not nulls)
    else
      ok = v == want
    end
    if not ok then return f, v, known end
  end
  return nil
end

-- ===== the index: which subscriptions of a channel an event may match =====
-- A channel's subscriptions with filters are filed by their first filter (dispatch then looks
-- one value up instead of testing each); those without a filter are in all. What a filter is
-- filed under (its key, its values) is this file's alone: an operator that matches several
-- values is filed under each.

local function by_seq(a, b) return a.seq < b.seq end

--- new_index() -> { all = {subs}, by = {key -> {value -> {subs}}}, cols = {first filters} }
function F.new_index()
  return { all = {}, by = {}, cols = {} }
end

local function append(sub, list)
  list[#list + 1] = sub
  local lists = sub.lists or {}
  lists[#lists + 1] = list
  sub.lists = lists
end

--- index_add(ix, sub): file sub (with its checked filters) in the index.
function F.index_add(ix, sub)
  local f = sub.filters[1]
  if not f then return append(sub, ix.all) end
  local byv = ix.by[f.key]
  if not byv then
    byv = {}
    ix.by[f.key] = byv
    ix.cols[#ix.cols + 1] = f
  end
  local list = byv[f.value]
  if not list then
    list = {}
    byv[f.value] = list
  end
  append(sub, list)
end

--- index_remove(ix, sub): take sub out of every list it is filed in.
function F.index_remove(_, sub)
  for _, list in ipairs(sub.lists or {}) do
    for i = #list, 1, -1 do
      if list[i] == sub then table.remove(list, i) end
    end
  end
  sub.lists = nil
end

--- candidates(ix, w, ev, nulls) -> the subscriptions the event may match, in subscription
-- order (filters not yet tested: mismatch does), or nil when none. Not to be changed.
function F.candidates(ix, w, ev, nulls)
  local cands = ix.all
  if #ix.cols == 0 then return cands end
  local merged, sources = nil, #cands > 0 and 1 or 0
  for _, f in ipairs(ix.cols) do
    local v, known = event_value(w, ev, f)
    if known and v == nil and not nulls then v = null end
    local l = v ~= nil and v == v and ix.by[f.key][v]
    if l and #l > 0 then
      if sources == 0 then
        cands = l
      else
        merged = merged or table.move(cands, 1, #cands, 1, {})
        table.move(l, 1, #l, #merged + 1, merged)
      end
      sources = sources + 1
    end
  end
  if merged then
    table.sort(merged, by_seq)
    return merged
  end
  return sources > 0 and cands or nil
end

--- indexed(ix) -> every subscription in the index, in subscription order, each once.
function F.indexed(ix)
  local subs, seen = table.move(ix.all, 1, #ix.all, 1, {}), {}
  for _, byv in pairs(ix.by) do
    for _, l in pairs(byv) do
      for _, sub in ipairs(l) do
        if not seen[sub] then
          seen[sub] = true
          subs[#subs + 1] = sub
        end
      end
    end
  end
  table.sort(subs, by_seq)
  return subs
end

return F
