--- sqlnotify.catalog: what of sqlnotify's is in a database, for `--list`, `--consumers` and
-- `--uninstall` (SPEC §8.4). The triggers come from the drivers (h:list, h:drop); the rest
-- (journal, consumer and dead-letter tables, PostgreSQL's schema, overflow tables and
-- extension) is found and dropped by the statements each driver keeps in its statements.sql:
-- what a dialect has no statement for, it does not have.
local M = {}

local statements = require("sqlnotify.statements")

local truthy = statements.truthy

local sql_of = statements.of

--- reads(n) -> { [wire channel] = { consumer, ... } } : the consumers that read each durable
-- capture (empty when none was ever recorded, or the table cannot be read).
function M.reads(n)
  local s = sql_of(n)
  local out = {}
  if not statements.present(n, "reads_exists") then return out end
  for _, r in ipairs(n._h:query(s.reads) or {}) do
    local list = out[r.channel] or {}
    list[#list + 1] = r.consumer
    out[r.channel] = list
  end
  return out
end

--- journal_rows(n) -> the rows in the database's journal (SQLite: its change log), every
-- consumer's, or nil when it cannot be read (no journal yet, or a role that may not read it).
function M.journal_rows(n)
  local ok, rows = pcall(n._h.query, n._h, sql_of(n).journal_rows)
  return ok and rows and rows[1] and math.tointeger(tonumber(rows[1].n)) or nil
end

--- objects(n) -> list | nil, err: every object of sqlnotify's in the database, in the order they
-- are dropped. Each: kind ("triggers" for those of one table, "function", "table", "schema",
-- "extension"), name, and where it applies: triggers (the h:list rows), owner and mine (whether
-- this role may drop it), note, journal (triggers may write to it: kept while any remains),
-- blocked (why it cannot be dropped at all), sql (the DROP statement).
function M.objects(n)
  local s = sql_of(n)
  local rows, err = n._h:list()
  if not rows then return nil, err end
  local out, by_table = {}, {}
  for _, r in ipairs(rows) do
    local key = r[1] .. "\0" .. r[2]
    local o = by_table[key]
    if not o then
      o = { kind = "triggers", schema = r[1], table = r[2], name = r[1] .. "." .. r[2], triggers = {} }
      by_table[key] = o
      out[#out + 1] = o
      if s.table_owner then
        local w = n._h:query(s.table_owner, r[1], r[2])
        if w and w[1] then o.owner, o.mine = w[1].owner, truthy(w[1].mine) end
      end
    end
    o.triggers[#o.triggers + 1] = r
  end
  local function add(o)
    o.mine = o.mine == nil or truthy(o.mine)
    out[#out + 1] = o
    return o
  end
  if s.functions then
    for _, f in ipairs(n._h:query(s.functions) or {}) do
      add { kind = "function", name = f.name, owner = f.owner, mine = f.mine, note = "no trigger uses it",
        sql = s.drop_function:format(f.name) }
    end
  end
  if s.overflow then
    for _, t in ipairs(n._h:query(s.overflow) or {}) do
      add { kind = "table", name = t.name, owner = t.owner, mine = t.mine, journal = true,
        sql = s.drop_table:format(t.name) }
    end
  end
  if s.schema then
    local sc = (n._h:query(s.schema) or {})[1]
    if sc then
      local o = add { kind = "schema", name = "sqlnotify", owner = sc.owner, mine = sc.mine, journal = true,
        note = sc.tables and ("tables " .. sc.tables .. ", and everything else in it") or "and everything in it",
        sql = s.drop_schema }
      if sc.others then o.blocked = "owned by another role: " .. sc.others end
      if sc.dependents then
        o.blocked = (o.blocked and o.blocked .. "; " or "") .. "objects outside it depend on it: " .. sc.dependents
          .. " (drop or change them first)"
      end
    end
  end
  if s.extension then
    local ext = (n._h:query(s.extension) or {})[1]
    if ext then
      add { kind = "extension", name = "sqlnotify_capture", owner = ext.owner, mine = ext.mine, journal = true,
        note = "version " .. tostring(ext.version), sql = s.drop_extension }
    end
  end
  if s.capture_schema then
    local cs = (n._h:query(s.capture_schema) or {})[1]
    if cs then
      add { kind = "schema", name = "sqlnotify_capture", owner = cs.owner, mine = cs.mine, journal = true,
        note = "the extension's", sql = s.drop_capture_schema }
    end
  end
  if s.tables then -- the dialects without a schema of their own: tables named sqlnotify_*
    local tables, e = n._h:query(s.tables)
    if not tables then return nil, e end
    for _, t in ipairs(tables) do
      add { kind = "table", name = t.name, journal = true,
        sql = s.drop_table:format(statements.quote(n, t.name)) }
    end
  end
  -- SQLite: the empty change log that opening the file made, and nothing else, is no install
  -- (a statement "opened.<table>" counts the rows of a table that every open makes)
  local bare = #out > 0
  for _, o in ipairs(out) do
    local stmt = o.kind == "table" and s["opened." .. o.name]
    local count = stmt and (n._h:query(stmt) or {})[1]
    if not (count and tonumber(count.n) == 0) then
      bare = false
      break
    end
  end
  if bare then
    for _, o in ipairs(out) do n._h:query(o.sql) end
    return {}
  end
  return out
end

--- consumers_exist(n) -> whether the consumers may be read without making the journal's tables
-- (MySQL's reader makes them; a dialect without the consumers_exist statement makes nothing).
function M.consumers_exist(n)
  local s = sql_of(n)
  if not s.consumers_exist then return true end
  return statements.present(n, "consumers_exist") == true
end

--- prepare(n): the session settings with which no drop waits long for a lock.
function M.prepare(n)
  local s = sql_of(n)
  if s.prepare then n._h:query(s.prepare) end
end

--- has(objects, kind, name): whether objects (of M.objects) hold this one.
function M.has(objects, kind, name)
  for _, o in ipairs(objects) do
    if o.kind == kind and o.name == name then return true end
  end
  return false
end

return M
