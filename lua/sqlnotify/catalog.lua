--- sqlnotify.catalog: what of sqlnotify's is in a database, for `--list`, `--consumers` and
-- `--uninstall` (SPEC §8.4). The triggers come from the drivers (h:list, h:drop); the rest
-- (journal, consumer and dead-letter tables, PostgreSQL's schema, overflow tables and
-- extension) is found and dropped by the statements below, per dialect.
local M = {}

local SQL = {
  postgresql = {
    reads_exists = "SELECT pg_catalog.to_regclass('sqlnotify.reads') IS NOT NULL AS present",
    reads = "SELECT consumer, channel FROM sqlnotify.reads ORDER BY consumer COLLATE \"C\"",
    -- no statement waits long behind a writer's lock: it fails and says so instead
    prepare = "SET lock_timeout = '5s'",
    table_owner = "SELECT pg_catalog.pg_get_userbyid(c.relowner) AS owner,"
      .. " pg_catalog.pg_has_role(c.relowner, 'MEMBER') AS mine FROM pg_catalog.pg_class c"
      .. " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
    -- our trigger functions (marked by their comment) no trigger uses: a dropped table leaves them
    functions = "SELECT pg_catalog.format('%I.%I()', n.nspname, p.proname) AS name,"
      .. " pg_catalog.pg_get_userbyid(p.proowner) AS owner, pg_catalog.pg_has_role(p.proowner, 'MEMBER') AS mine"
      .. " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
      .. " JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.objsubid = 0"
      .. "  AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
      .. " WHERE d.description LIKE 'sqlnotify:%' AND p.pronargs = 0"
      .. "  AND n.nspname NOT IN ('sqlnotify', 'sqlnotify_capture')"
      .. "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger u WHERE u.tgfoid = p.oid)"
      .. " ORDER BY 1 COLLATE \"C\"",
    overflow = "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name,"
      .. " pg_catalog.pg_get_userbyid(c.relowner) AS owner, pg_catalog.pg_has_role(c.relowner, 'MEMBER') AS mine"
      .. " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
      .. " WHERE c.relname = 'sqlnotify_overflow' AND c.relkind IN ('r', 'p') AND n.nspname <> 'sqlnotify'"
      .. " ORDER BY 1 COLLATE \"C\"",
    -- the schema: its tables, what in it another role owns, and what outside it depends on it
    -- (DROP SCHEMA ... CASCADE would take those along: they are not ours)
    schema = "SELECT pg_catalog.pg_get_userbyid(s.nspowner) AS owner, pg_catalog.pg_has_role(s.nspowner, 'MEMBER') AS mine,"
      .. " (SELECT pg_catalog.string_agg(c.relname, ', ' ORDER BY c.relname COLLATE \"C\") FROM pg_catalog.pg_class c"
      .. "   WHERE c.relnamespace = s.oid AND c.relkind IN ('r', 'p')) AS tables,"
      .. " (SELECT pg_catalog.string_agg(pg_catalog.format('%s (owner %s)', c.relname, pg_catalog.pg_get_userbyid(c.relowner)),"
      .. "   ', ' ORDER BY c.relname COLLATE \"C\") FROM pg_catalog.pg_class c WHERE c.relnamespace = s.oid"
      .. "   AND c.relkind IN ('r', 'p', 'S', 'v') AND NOT pg_catalog.pg_has_role(c.relowner, 'MEMBER')) AS others,"
      .. " (SELECT pg_catalog.string_agg(DISTINCT i.type || ' ' || i.identity, ', ') FROM pg_catalog.pg_depend d"
      .. "   CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) i"
      .. "   WHERE d.deptype = 'n' AND ("
      .. "    (d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid IN"
      .. "      (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace = s.oid))"
      .. "    OR (d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid IN"
      .. "      (SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace = s.oid))"
      .. "    OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid IN"
      .. "      (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typnamespace = s.oid)))"
      -- the schema of the dependent object, or of the table it belongs to
      .. "   AND CASE d.classid"
      .. "    WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN"
      .. "     (SELECT x.relnamespace FROM pg_catalog.pg_class x WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN"
      .. "     (SELECT x.pronamespace FROM pg_catalog.pg_proc x WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_type'::pg_catalog.regclass THEN"
      .. "     (SELECT x.typnamespace FROM pg_catalog.pg_type x WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_attrdef x"
      .. "     JOIN pg_catalog.pg_class c ON c.oid = x.adrelid WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_rewrite x"
      .. "     JOIN pg_catalog.pg_class c ON c.oid = x.ev_class WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_trigger x"
      .. "     JOIN pg_catalog.pg_class c ON c.oid = x.tgrelid WHERE x.oid = d.objid)"
      .. "    WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN (SELECT COALESCE(c.relnamespace, x.connamespace)"
      .. "     FROM pg_catalog.pg_constraint x LEFT JOIN pg_catalog.pg_class c ON c.oid = x.conrelid WHERE x.oid = d.objid)"
      .. "   END IS DISTINCT FROM s.oid) AS dependents"
      .. " FROM pg_catalog.pg_namespace s WHERE s.nspname = 'sqlnotify'",
    extension = "SELECT e.extversion AS version, pg_catalog.pg_get_userbyid(e.extowner) AS owner,"
      .. " pg_catalog.pg_has_role(e.extowner, 'MEMBER') AS mine FROM pg_catalog.pg_extension e"
      .. " WHERE e.extname = 'sqlnotify_capture'",
    -- the extension's schema, which CREATE EXTENSION made and DROP EXTENSION leaves
    capture_schema = "SELECT pg_catalog.pg_get_userbyid(s.nspowner) AS owner,"
      .. " pg_catalog.pg_has_role(s.nspowner, 'MEMBER') AS mine FROM pg_catalog.pg_namespace s"
      .. " WHERE s.nspname = 'sqlnotify_capture'",
    drop_capture_schema = "DROP SCHEMA IF EXISTS sqlnotify_capture",
    drop_function = "DROP FUNCTION IF EXISTS %s",
    drop_table = "DROP TABLE IF EXISTS %s",
    drop_schema = "DROP SCHEMA IF EXISTS sqlnotify CASCADE",
    drop_extension = "DROP EXTENSION IF EXISTS sqlnotify_capture",
    journal_rows = "SELECT count(*) AS n FROM sqlnotify.journal",
  },
  sqlite = {
    reads_exists = "SELECT count(*) AS present FROM sqlite_master WHERE type = 'table' AND name = 'sqlnotify_reads'",
    reads = "SELECT consumer, channel FROM sqlnotify_reads ORDER BY consumer",
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sqlnotify\\_%' ESCAPE '\\'"
      .. " ORDER BY name",
    drop_table = "DROP TABLE IF EXISTS %s",
    -- what opening the file makes (the driver does at every open): rows in it say it was used
    opened = { sqlnotify_changes = "SELECT count(*) AS n FROM sqlnotify_changes",
               sqlnotify_readers = "SELECT count(*) AS n FROM sqlnotify_readers" },
    journal_rows = "SELECT count(*) AS n FROM sqlnotify_changes",
  },
  mysql = {
    reads_exists = "SELECT COUNT(*) AS present FROM information_schema.tables WHERE table_schema = DATABASE()"
      .. " AND table_name = 'sqlnotify_reads'",
    reads = "SELECT consumer, channel FROM sqlnotify_reads ORDER BY consumer",
    prepare = "SET SESSION lock_wait_timeout = 5",
    tables = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = DATABASE()"
      .. " AND table_name LIKE 'sqlnotify\\_%' ORDER BY table_name",
    drop_table = "DROP TABLE IF EXISTS %s",
    journal_rows = "SELECT COUNT(*) AS n FROM sqlnotify_journal",
  },
}

local function truthy(v)
  return v == true or v == "t" or v == "true" or (tonumber(v) or 0) ~= 0
end

local function sql_of(n)
  return SQL[n.dialect_name] or error("sqlnotify: no catalog for " .. tostring(n.dialect_name), 3)
end

-- A table name quoted for SQLite ("") or MySQL (``).
local function quote(n, name)
  if n.dialect_name == "mysql" then return "`" .. name:gsub("`", "``") .. "`" end
  return '"' .. name:gsub('"', '""') .. '"'
end

--- reads(n) -> { [wire channel] = { consumer, ... } } : the consumers that read each durable
-- capture (empty when none was ever recorded, or the table cannot be read).
function M.reads(n)
  local s = sql_of(n)
  local out = {}
  local present = n._h:query(s.reads_exists)
  if not (present and present[1] and truthy(present[1].present)) then return out end
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
  if n.dialect_name == "postgresql" then
    for _, f in ipairs(n._h:query(s.functions) or {}) do
      add { kind = "function", name = f.name, owner = f.owner, mine = f.mine, note = "no trigger uses it",
        sql = s.drop_function:format(f.name) }
    end
    for _, t in ipairs(n._h:query(s.overflow) or {}) do
      add { kind = "table", name = t.name, owner = t.owner, mine = t.mine, journal = true,
        sql = s.drop_table:format(t.name) }
    end
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
    local ext = (n._h:query(s.extension) or {})[1]
    if ext then
      add { kind = "extension", name = "sqlnotify_capture", owner = ext.owner, mine = ext.mine, journal = true,
        note = "version " .. tostring(ext.version), sql = s.drop_extension }
    end
    local cs = (n._h:query(s.capture_schema) or {})[1]
    if cs then
      add { kind = "schema", name = "sqlnotify_capture", owner = cs.owner, mine = cs.mine, journal = true,
        note = "the extension's", sql = s.drop_capture_schema }
    end
  else
    local tables, e = n._h:query(s.tables)
    if not tables then return nil, e end
    for _, t in ipairs(tables) do
      add { kind = "table", name = t.name, journal = true, sql = s.drop_table:format(quote(n, t.name)) }
    end
  end
  -- SQLite: the empty change log that opening the file made, and nothing else, is no install
  if s.opened then
    local bare = true
    for _, o in ipairs(out) do
      local count = s.opened[o.name] and o.kind == "table" and (n._h:query(s.opened[o.name]) or {})[1]
      if not (count and tonumber(count.n) == 0) then bare = false end
    end
    if bare then
      for _, o in ipairs(out) do n._h:query(o.sql) end
      return {}
    end
  end
  return out
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
