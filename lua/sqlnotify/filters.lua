--- sqlnotify.filters: subscribe's filters. Their shape is checked, their values are
-- compared with the column's catalog type (converted where that is exact, refused where
-- they can never match), and events are matched against them.
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

-- ===== values against column types =====

-- PostgreSQL: what a column's type lets a value be compared with, and a numeric's scale.
-- nil: not judged (json, timestamps, arrays, ...).
local function pg_class(t)
  if t == "smallint" or t == "integer" or t == "bigint" then return "integer" end
  if t == "real" or t == "double precision" then return "float" end
  if t == "boolean" then return "boolean" end
  if t == "bytea" then return "bytes" end
  if t == "text" or t == "uuid" or t == "name" or t:find("^character") then return "text" end
  if t:find("^numeric") then return "numeric", tonumber(t:match("^numeric%(%d+,(%d+)%)$")) end
  return nil
end

-- SQLite: the column's affinity, by the rules of SQLite's documentation, in their order.
local function sqlite_affinity(t)
  t = t:lower()
  if t:find("int", 1, true) then return "integer" end
  if t:find("char", 1, true) or t:find("clob", 1, true) or t:find("text", 1, true) then return "text" end
  if t == "" or t:find("blob", 1, true) then return "blob" end
  if t:find("real", 1, true) or t:find("floa", 1, true) or t:find("doub", 1, true) then return "real" end
  return "numeric"
end

-- Decimal text with exactly `scale` digits after the point, as PostgreSQL prints a
-- numeric(p, scale); nil when the text is not a decimal or has digits the scale drops.
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

local function pg_value(ctype, v)
  local class, scale = pg_class(ctype)
  local tv = type(v)
  if class == nil then return v end
  if class == "integer" then
    if tv == "number" and math.tointeger(v) then return math.tointeger(v) end
    if tv == "string" and v:find("^%s*[-+]?%d+%s*$") and math.tointeger(tonumber(v)) then
      return math.tointeger(tonumber(v)), true
    end
  elseif class == "float" then
    if tv == "number" then return v + 0.0 end
    if tv == "string" and tonumber(v) then return tonumber(v) + 0.0, true end
  elseif class == "numeric" then -- arrives as a string of the value's exact text
    if tv == "string" and (v == "NaN" or v == "Infinity" or v == "-Infinity") then return v end
    if scale and (tv == "string" or tv == "number") then
      local text = scaled(tv == "number" and fmt("%.17g", v) or v, scale)
      if text and (tv == "string" or tonumber(text) == v) then return text, text ~= v end
    elseif tv == "string" and tonumber(v) then
      return v
    end
    if tv == "number" and not scale then
      return nil, "numeric values arrive as strings of their exact text; give the value as that text"
    end
  elseif class == "boolean" then
    if tv == "boolean" then return v end
    if v == "true" or v == "false" then return v == "true", true end
  elseif class == "text" then
    if tv == "string" then return v end
    if math.type(v) == "integer" then return fmt("%d", v), true end
  elseif class == "bytes" then
    if tv == "string" then return v end
  end
  return nil
end

-- SQLite keeps any value in any column, converting by affinity on the way in: a filter
-- value is converted the same way, and never refused.
local function sqlite_value(ctype, v)
  local aff = sqlite_affinity(ctype)
  local tv = type(v)
  if aff == "blob" then return v end
  if aff == "text" then
    if math.type(v) == "integer" then return fmt("%d", v), true end
    if tv == "number" then
      local s = fmt("%.15g", v)
      return s:find("^%-?%d+$") and s .. ".0" or s, true
    end
    return v
  end
  if tv == "boolean" then return v and 1 or 0, true end
  local n = tv == "string" and tonumber(v) or nil
  if n and tv == "string" and not v:find("^%s*[-+]?[%d.]+[eE]?[-+]?%d*%s*$") then n = nil end -- no hex
  if aff == "real" then
    if tv == "number" then return v + 0.0 end
    if n then return n + 0.0, true end
    return v
  end
  if tv == "number" then return math.tointeger(v) or v end
  if n then return math.tointeger(n) or n, true end
  return v
end

-- ===== shape =====

local KEYS = { column = true, value = true, old = true }

--- filters = {{column=, value=, old=}, ...} checked against the watch w (schema, op,
-- carried, oldset) and its table's catalog info. warn(fmt, ...) tells of a converted value.
-- Returns the filters as dispatch uses them.
function F.check(list, w, info, dialect, warn, level)
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
    local ctype, cv, note = info.type_of[col] or "", v, nil
    if v ~= F.null then
      if dialect == "sqlite" then cv, note = sqlite_value(ctype, v) else cv, note = pg_value(ctype, v) end
    end
    if cv == nil then
      fail(level + 1, "filter value %s on column %q of %s can never match: the column is %s%s", show(v), col, w.name,
        ctype, note and "; " .. note or "")
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
-- (a truncated row carries its key only).
function F.event_value(w, ev, f)
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

return F
