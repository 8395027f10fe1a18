--- sqlnotify.notifier: the notifier (sqlnotify.notifier() and its methods): options, watches
-- and subscriptions checked against the live catalog, triggers installed and kept, the
-- lifecycle, notify, query, consumers and dead letters. What an event does once it arrives is
-- in dispatch.lua; init.lua is the module a script requires, which this file's table becomes.

local core = require("sqlnotify.core")
local filters = require("sqlnotify.filters")
local delivery = require("sqlnotify.delivery")
local dead = require("sqlnotify.dead_letters")
local metrics = require("sqlnotify.metrics")
local dispatch = require("sqlnotify.dispatch")
local backfill = require("sqlnotify.backfill")
local pace = require("sqlnotify.pace")
local json = require("cjson.safe").new() -- our own instance: the user's cjson settings stay theirs

json.decode_max_depth(64) -- anyone can NOTIFY a watched channel: bound what a payload can nest

local M = {}

M.INSERT, M.UPDATE, M.DELETE, M.READ = "insert", "update", "delete", "read"
M.Operation = { INSERT = M.INSERT, UPDATE = M.UPDATE, DELETE = M.DELETE, READ = M.READ }
M.VERSION = core.version

local OPCODES = { insert = 0, update = 1, delete = 2 }
local MAX_CHANNEL = 63 -- PostgreSQL's NAMEDATALEN - 1; used on every dialect so names agree

local fmt, concat, sort = string.format, table.concat, table.sort
local show, error_level = filters.show, filters.error_level
local stopping = core.stopping

-- Every notifier, by creation number. Weak: this list must not keep one alive (n = nil;
-- collectgarbage() closes it). A listening notifier is held by `listening` until it stops.
local all_notifiers = setmetatable({}, { __mode = "k" })
local created = 0
local listening = {} -- luacheck: ignore 241 (held, never read)
-- Under the host, a notifier the script made but did not keep in a variable must still be
-- started after the script ran: held here until _autostart. Plain Lua starts nothing itself.
local pending_autostart = {}

-- SQL NULL where the caller asked to see it (notifier option nulls = true; filter values).
M.null = filters.null

-- The host links the core in and preloads it; a plain Lua state loads it from a .so.
local function in_host()
  if core.host_mode then return core.host_mode() end
  return package.preload["sqlnotify.core"] ~= nil
end

-- ===== small helpers =====

-- A misuse, raised at the caller's line (level 1: the function calling fail).
local function fail(level, ...)
  error("sqlnotify: " .. fmt(...), error_level(level + 1))
end

-- An error from the outside world as one line with one "sqlnotify: " prefix.
local function one_line(err)
  err = tostring(err)
  local at = err:find("sqlnotify: ", 1, true)
  if at then err = err:sub(at) end
  while err:sub(1, 11) == "sqlnotify: " do err = err:sub(12) end
  return "sqlnotify: " .. (err:gsub("%s*\n%s*", " "):gsub("%s+$", ""))
end
M._one_line = one_line

-- A wire channel as people read it: the declared channel, and whose capture it is ("live",
-- or "durable <12 hex>" for a consumer's shape); see Notifier:watch.
local TAG12 = "^(.*)#(" .. ("%x"):rep(12) .. ")$"
function M._capture_of(wire)
  local plain, tag = wire:match(TAG12)
  if plain then return plain, "durable " .. tag end
  return wire:match("^(.*)#live$") or wire, "live"
end

-- A URL without a scheme for a message: "user:password@host" loses its password.
local function scrub_url(url)
  return (url:gsub("^([^:/@]*):[^@/]*@", "%1:***@"))
end

local function qname(schema, table)
  if schema then return fmt("%q.%q", schema, table) end
  return fmt("%q", table)
end

local function check_options(opts, allowed, what, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(level + 1, "%s options must be a table, got %s", what, type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then fail(level + 1, "unknown %s option %q", what, tostring(k)) end
  end
  return opts
end

-- read: "read" (a backfill's rows, SPEC §8.3) is one too
local function check_op(op, level, read)
  local name = type(op) == "string" and op:lower() or nil
  if not (OPCODES[name] or (read and name == M.READ)) then
    fail(level + 1, "unknown operation %s (use sqlnotify.INSERT, UPDATE or DELETE)",
      type(op) == "string" and fmt("%q", op) or tostring(op))
  end
  return name
end

-- Payload text for a log line: at most 200 bytes, control characters escaped, so that
-- whoever sends a payload cannot write lines of their own into the log.
local function shorten(s)
  local cut = #s > 200 and fmt("... (%d bytes)", #s) or ""
  return s:sub(1, 200):gsub("[%c\\]", function(c) return fmt("\\x%02x", c:byte()) end) .. cut
end

-- ===== names =====

-- "schema.table" splits at the first dot; {schema=, table=} is taken as is.
local function split_name(t, level)
  if type(t) == "table" then
    if type(t.table) ~= "string" or t.table == "" then fail(level + 1, "table name must be a non-empty string") end
    if t.schema ~= nil and type(t.schema) ~= "string" then fail(level + 1, "schema name must be a string") end
    return t.schema, t.table
  end
  if type(t) ~= "string" or t == "" then
    fail(level + 1, "table must be a name or {schema=, table=}, got %s", type(t) == "string" and '""' or type(t))
  end
  local schema, table = t:match("^([^.]*)%.(.*)$")
  if schema and schema ~= "" and table ~= "" then return schema, table end
  return nil, t
end

-- A readable prefix of at most 46 bytes, "_" and a 16-digit hash: 63 bytes at most.
local function hashed_name(readable, hash)
  local cut = math.min(#readable, MAX_CHANNEL - 17)
  -- never cut inside a UTF-8 sequence
  while cut > 0 and (readable:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return readable:sub(1, cut) .. "_" .. hash
end

-- The default channel of a watch. Joined plainly only when no name can hide an "_" or
-- anything else that would let two tuples read the same ("x_y"."t" and "x"."y_t"); any
-- other name gets a hash of the tuple itself.
local function default_channel(schema, table, op)
  local full = "sqlnotify_" .. schema .. "_" .. table .. "_" .. op
  if #full <= MAX_CHANNEL and schema:find("^[A-Za-z0-9]+$") and table:find("^[A-Za-z0-9]+$") then
    return full
  end
  return hashed_name(full, core.hash(concat({ schema, table, op }, "\0")))
end

-- A labelled watch's channel: sqlnotify_<label>, hashed down past 63 bytes.
local function label_channel(label)
  local full = "sqlnotify_" .. label
  if #full <= MAX_CHANNEL then return full end
  return hashed_name(full, core.hash(full))
end

-- ===== catalog =====

local Notifier = {}
Notifier.__index = Notifier

local function check_notifier(self, level)
  if getmetatable(self) ~= Notifier then
    fail(level + 1, "method called without a notifier (use n:method(), not n.method())")
  end
  if self._closed then fail(level + 1, "this notifier is closed") end
  return self
end

-- Describe a table from the live catalog; cached per notifier.
function Notifier:_table(t, level)
  local schema, table = split_name(t, level + 1)
  local key = (schema or "") .. "\0" .. table
  local info = self._tables[key]
  if info then return info end
  local rows, err = self._h:describe(schema, table)
  if not rows then fail(level + 1, "cannot read the catalog for table %s: %s", qname(schema, table), err) end
  if #rows == 0 then
    if schema then fail(level + 1, "unknown table %s", qname(schema, table)) end
    fail(level + 1, "unknown table %q%s", table,
      self._caps.search_path and " (not found in search_path)" or "")
  end
  if rows[1][4] == "view" then
    fail(level + 1, "%s is a view; views cannot be watched (watch the tables under it)", qname(rows[1][2], rows[1][3]))
  end
  -- Each column's class is the driver's (src/dialect.h): "integer", "decimal(2)", ...; a
  -- loose table's columns may also hold values of other classes (SQLite without STRICT).
  info = { schema = rows[1][2], table = rows[1][3], columns = {}, colnames = {}, types = {}, pk = {}, uniques = {},
    nullable = {}, type_of = {}, class_of = {}, scale_of = {}, loose = rows[1][5] == "loose" }
  for i = 2, #rows do
    local kind, a, b = rows[i][1], rows[i][2], rows[i][3]
    if kind == "column" then
      local class = rows[i][5] or "other"
      info.columns[a] = true
      info.colnames[#info.colnames + 1] = a
      info.types[#info.types + 1] = b or ""
      info.type_of[a] = b or ""
      info.class_of[a] = class:match("^[^(]*")
      info.scale_of[a] = tonumber(class:match("^decimal%((%d+)%)$"))
    elseif kind == "pk" then
      info.pk[#info.pk + 1] = a
    elseif kind == "unique" then
      local u = info.uniques[b] or {}
      info.uniques[b] = u
      u[#u + 1] = a
      if rows[i][5] == "nullable" then info.nullable[b] = true end -- a column of it can hold NULL
    end
  end
  info.name = qname(info.schema, info.table)
  self._tables[key] = info
  return info
end

local function check_columns(info, list, what, level)
  if list == nil then return {} end
  if type(list) ~= "table" then
    fail(level + 1, "%s must be a list of column names%s", what, what == "extra_columns" and ' or "*"' or "")
  end
  local n = #list
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > n then fail(level + 1, "%s must be a list of column names", what) end
  end
  local out, seen = {}, {}
  for i, c in ipairs(list) do
    if type(c) ~= "string" then fail(level + 1, "%s[%d] must be a column name, got %s", what, i, type(c)) end
    if not info.columns[c] then fail(level + 1, "unknown column %q in %s of table %s", c, what, info.name) end
    if not seen[c] then
      seen[c] = true
      out[#out + 1] = c
    end
  end
  return out
end

local function same_set(a, b)
  if #a ~= #b then return false end
  local s = {}
  for _, v in ipairs(a) do s[v] = true end
  for _, v in ipairs(b) do if not s[v] then return false end end
  return true
end

local function is_key(info, cols)
  if same_set(cols, info.pk) then return true end
  for _, u in pairs(info.uniques) do
    if same_set(cols, u) then return true end
  end
  return false
end

-- Whether cols are a key no row can have NULL in: the primary key, or a unique key over
-- NOT NULL columns (rows with a NULL there are not told apart, nor ordered, by it).
local function is_key_of_every_row(info, cols)
  if same_set(cols, info.pk) then return true end
  for name, u in pairs(info.uniques) do
    if same_set(cols, u) and not info.nullable[name] then return true end
  end
  return false
end

-- ===== notifier =====

local NOTIFIER_OPTIONS = {
  url = true, revoke_on_model_change = true, cleanup_on_start = true, use_logger = true, retention = true,
  verify_interval = true, nulls = true, overflow_schema = true,
  consumer = true, start_at = true, consumer_retention = true, shares = true, lease = true,
  concurrency = true, retry = true, shutdown_grace = true, backfill_rate = true,
}
local DEFAULT_GRACE = 10 -- seconds in-flight handlers get after SIGTERM/SIGINT

local DEFAULT_VERIFY_INTERVAL = 60 -- seconds between two checks that our triggers are still ours

--- sqlnotify.notifier{url=, revoke_on_model_change=, cleanup_on_start=, use_logger=, retention=,
---   verify_interval=, nulls=, overflow_schema=}
-- Returns the notifier, or nil and a message when the database cannot be reached.
function M.notifier(opts)
  opts = check_options(opts, NOTIFIER_OPTIONS, "notifier", 2)
  local url = opts.url
  if url == nil then url = os.getenv("DATABASE_URL") end
  if url == nil then fail(2, "no url given and DATABASE_URL is not set") end
  if type(url) ~= "string" then fail(2, "url must be a string, got %s", type(url)) end
  if not url:find("://", 1, true) then
    fail(2, "database URL %q has no scheme (expected postgresql://..., mysql://..., sqlite:///path.db)", scrub_url(url))
  end
  if opts.retention ~= nil and (type(opts.retention) ~= "number" or opts.retention <= 0) then
    fail(2, "retention must be a number of seconds above zero")
  end
  if opts.consumer ~= nil and (type(opts.consumer) ~= "string" or opts.consumer == "") then
    fail(2, "consumer must be a non-empty string")
  end
  if opts.consumer_retention ~= nil and (type(opts.consumer_retention) ~= "number" or opts.consumer_retention <= 0) then
    fail(2, "consumer_retention must be a number of seconds above zero")
  end
  if opts.shares ~= nil and (math.type(opts.shares) ~= "integer" or opts.shares < 1 or opts.shares > 1024) then
    fail(2, "shares must be a whole number from 1 to 1024")
  end
  if opts.lease ~= nil and (type(opts.lease) ~= "number" or not (opts.lease >= 0.5 and opts.lease <= 3600)) then
    fail(2, "lease must be a number of seconds from 0.5 to 3600")
  end
  local rate = opts.backfill_rate
  if rate ~= nil and rate ~= "auto" and rate ~= "full" and (type(rate) ~= "number" or not (rate >= 1 and rate < math.huge)) then
    fail(2, 'backfill_rate must be "auto", "full" or a number of rows per second from 1, got %s', tostring(rate))
  end
  for _, k in ipairs({ "shares", "lease", "backfill_rate" }) do
    if opts[k] ~= nil and opts.consumer == nil then fail(2, "%s applies to a consumer: set consumer too", k) end
  end
  if opts.start_at ~= nil and opts.start_at ~= "end" and opts.start_at ~= "beginning" and opts.start_at ~= "snapshot" then
    fail(2, "start_at must be \"end\", \"beginning\" or \"snapshot\", got %s",
      type(opts.start_at) == "string" and fmt("%q", opts.start_at) or tostring(opts.start_at))
  end
  if opts.start_at ~= nil and opts.consumer == nil then fail(2, "start_at applies to a consumer: set consumer too") end
  local verify = opts.verify_interval
  if verify == nil then verify = DEFAULT_VERIFY_INTERVAL end
  if verify ~= false and (type(verify) ~= "number" or verify <= 0 or verify ~= verify) then
    fail(2, "verify_interval must be a number of seconds above zero, or false")
  end
  if opts.nulls ~= nil and type(opts.nulls) ~= "boolean" then fail(2, "nulls must be a boolean") end
  if opts.overflow_schema ~= nil and (type(opts.overflow_schema) ~= "string" or opts.overflow_schema == "") then
    fail(2, "overflow_schema must be a non-empty string")
  end
  local concurrency = delivery.check_concurrency(opts.concurrency, 2)
  local retry = delivery.check_retry(opts.retry, opts.consumer and delivery.DEFAULT_RETRY or delivery.LIVE_RETRY, 2)
  local grace = opts.shutdown_grace
  if grace == nil then grace = DEFAULT_GRACE end
  if type(grace) ~= "number" or not (grace >= 0 and grace < math.huge) then
    fail(2, "shutdown_grace must be a number of seconds from 0, got %s", type(grace) == "number" and tostring(grace)
      or type(grace))
  end
  -- core.open raises on a URL it cannot use: report that at the caller's line too.
  local ok, h, err = pcall(core.open, url, { use_logger = opts.use_logger ~= false, retention = opts.retention,
    overflow_schema = opts.overflow_schema, consumer = opts.consumer, start_at = opts.start_at,
    consumer_retention = opts.consumer_retention, shares = opts.shares, lease = opts.lease })
  if not ok then error(one_line(h), error_level(2)) end
  if not h then return nil, err end
  local caps = h:capabilities()
  if (opts.shares ~= nil or opts.lease ~= nil) and not caps.groups then
    local dialect = h:dialect()
    h:close()
    fail(2, "shares and lease apply to PostgreSQL consumers; on %s a second process with the same consumer "
      .. "waits as a standby", dialect)
  end
  local self = setmetatable({
    _h = h,
    dialect_name = h:dialect(),
    _caps = caps,      -- what the dialect can do (h:capabilities)
    _revoke = opts.revoke_on_model_change ~= false,
    _cleanup_on_start = opts.cleanup_on_start == true,
    _durable = opts.consumer ~= nil,
    _consumer = opts.consumer,
    _log_fields = opts.consumer and { consumer = opts.consumer } or nil,
    _limited = h:max_payload() > 0 and opts.consumer == nil, -- payloads have a size limit (NOTIFY's)
    _nulls = opts.nulls == true,
    _verify_interval = verify,
    _tables = {},
    _rechecked = {},   -- schema \0 table -> when its events last had its columns read again (_recheck)
    _watches = {},     -- in watch order
    _reads = {},       -- the "read" watches (backfills' rows: no trigger), in watch order
    _backfills = {},   -- read watch -> its backfill running here (backfill.lua)
    _bf_track = {},    -- table name -> chunks read into memory waiting for their marks (backfill.lua)
    _snapshot = opts.start_at == "snapshot",
    _bf_rate = type(opts.backfill_rate) == "number" and opts.backfill_rate or nil, -- rows/s a backfill reads at most
    _bf_pace = (opts.backfill_rate or "auto") == "auto" and pace.new() or nil, -- else: a pace that yields to writers
    _bf_rows = 0, _seen = 0, -- rows the backfills read; change events seen (the writers, to the pace)
    _url = url,        -- for the backfills' own connection
    _use_logger = opts.use_logger ~= false,
    _by_key = {},      -- schema \0 table \0 op \0 label -> watch
    _by_channel = {},  -- wire channel (and, durable, the previous release's channel) -> watch
    _subs = {},        -- channel -> { all = {...}, by = {key -> {value -> {...}}}, cols = {...}, n = count,
                       --   batch = {batch = N subscriptions}, nb = their count }
    _on = { reconnect = {}, error = {}, dead_letter = {} },
    _retry = retry,
    _reports = {},     -- rate-limit states with suppressed reports, printed at stop
    _seq = 0,
    _started = false,
    _ever_started = false,
    _target = h:target(),
  }, Notifier)
  self._mconn = metrics.conn(opts.consumer or "", self._target)
  self._q = delivery.queue(self, concurrency, retry, grace)
  -- The binding keeps these functions; through a weak reference they do not keep the notifier.
  local ref = setmetatable({ self }, { __mode = "v" })
  h:set_dispatch(function(batch, n, ts, seqs, written)
    local me = ref[1]
    if me then return me:_dispatch(batch, n, ts, seqs, written) end
    return n
  end)
  h:set_reconnected(function(outage, may_have_missed)
    local me = ref[1]
    if me then return me:_reconnected(outage, may_have_missed) end
  end)
  -- the durable reader saw a trigger gone from its table (MySQL): the check now (none while
  -- verify_interval = false turns the checks off)
  h:set_triggers_gone(function()
    local me = ref[1]
    if me and me._started and me._verify_interval then me:_check_triggers(true) end
  end)
  created = created + 1
  all_notifiers[self] = created
  if in_host() then pending_autostart[#pending_autostart + 1] = self end
  return self
end

-- Notifiers still alive, in creation order.
local function live_notifiers()
  local list = {}
  for n in pairs(all_notifiers) do list[#list + 1] = n end
  sort(list, function(a, b) return all_notifiers[a] < all_notifiers[b] end)
  return list
end
metrics.notifiers = live_notifiers

-- A line of this notifier's (a durable one's names its consumer: a field of the JSON log).
function Notifier:_log(level, ...)
  self._h:log(level, fmt(...), self._log_fields)
end

-- A line with fields (table, operation, error, traceback...) beside the message. Through
-- _log, as every line of a notifier; the text log has the traceback after the message, on
-- the lines that follow, as it always had.
function Notifier:_log_with(fields, level, ...)
  fields.consumer = self._consumer
  local msg = fmt(...)
  if fields.traceback and not core.log_json() then
    msg, fields.traceback = msg .. "\n" .. fields.traceback, nil
  end
  local saved = self._log_fields
  self._log_fields = fields
  self:_log(level, "%s", msg)
  self._log_fields = saved
end

local function watch_key(schema, table, op, label)
  return concat({ schema, table, op, label or "" }, "\0")
end

local WATCH_OPTIONS = {
  extra_columns = true, trigger_columns = true, primary_keys = true, channel_label = true, use_overflow_table = true,
  old_columns = true,
}

-- Drop what the cache knows of a table: its catalog may have changed.
function Notifier:_forget_table(info)
  for k, v in pairs(self._tables) do
    if v == info then self._tables[k] = nil end
  end
end

-- The marker changes when the watch or the table's columns change (revoke_on_model_change).
local function watch_marker(w, info)
  return core.hash(concat({
    "v2", w.schema, w.table, w.op, w.wire, concat(w.pk, "\1"), concat(w.extra, "\1"), concat(w.trigger, "\1"),
    concat(w.old, "\1"), tostring(w.overflow), concat(info.colnames, "\1"), concat(info.types, "\1"),
    w.all and "*" or nil,
  }, "\0"))
end

-- w's extra columns with its table as info describes it (for extra_columns = "*" every column
-- but the key ones, else those it names), and the columns it names that the table no longer
-- has (renamed or dropped), in the watch's order.
local function columns_now(w, info)
  local extra, gone, seen = w.extra, {}, {}
  for _, list in ipairs({ w.pk, w.extra, w.old, w.trigger }) do
    for _, c in ipairs(list) do
      if not info.columns[c] and not seen[c] then
        seen[c] = true
        gone[#gone + 1] = c
      end
    end
  end
  if w.all then
    local key = {}
    extra = {}
    for _, c in ipairs(w.pk) do key[c] = true end
    for _, c in ipairs(info.colnames) do if not key[c] then extra[#extra + 1] = c end end
  end
  return extra, gone
end

-- Set what w's events carry (columns_now): xcols, the extra columns the decoder reads (a
-- column gone too: events written before carry it); carried, those a filter or n:notify may
-- name; gone and goneset; keygone: a key column is gone.
local function set_columns(w, extra, gone)
  w.xcols, w.gone, w.goneset, w.carried, w.plan, w.keygone = extra, gone, {}, {}, nil, false
  for _, c in ipairs(gone) do
    w.goneset[c] = true
    w.keygone = w.keygone or w.pkindex[c] ~= nil
  end
  for _, c in ipairs(w.pk) do w.carried[c] = true end
  for _, c in ipairs(extra) do w.carried[c] = not w.goneset[c] or nil end
end

--- n:watch(table, operation, {extra_columns=, trigger_columns=, old_columns=, primary_keys=, channel_label=,
---   use_overflow_table=})
function Notifier:watch(t, op, opts)
  check_notifier(self, 2)
  op = check_op(op, 2, true)
  opts = check_options(opts, WATCH_OPTIONS, "watch", 2)
  local info = self:_table(t, 2)
  if op == M.READ then
    self:_read_watch(info, opts, 2)
    return self
  end
  local all = opts.extra_columns == "*"
  local extra = all and {} or check_columns(info, opts.extra_columns, "extra_columns", 2)
  local trigger = check_columns(info, opts.trigger_columns, "trigger_columns", 2)
  if #trigger > 0 and op ~= M.UPDATE then
    fail(2, "trigger_columns only applies to UPDATE watches, not %s on %s", op, info.name)
  end
  local old = check_columns(info, opts.old_columns, "old_columns", 2)
  if opts.old_columns ~= nil and op ~= M.UPDATE then
    fail(2, "old_columns only applies to UPDATE watches, not %s on %s", op, info.name)
  end
  local pk
  if opts.primary_keys ~= nil then
    pk = check_columns(info, opts.primary_keys, "primary_keys", 2)
    if #pk == 0 then fail(2, "primary_keys of table %s must name at least one column", info.name) end
    if not is_key(info, pk) then
      fail(2, "primary_keys {%s} of table %s is not its primary key or a unique key",
        concat(pk, ", "), info.name)
    end
  else
    pk = info.pk
    -- An append-only table needs no key to be told of new rows; updates and deletes do.
    if #pk == 0 and op ~= M.INSERT then
      fail(2, "table %s has no primary key; %s watches need one (pass primary_keys naming a unique key); "
        .. "only INSERT can be watched without a key", info.name, op)
    end
  end
  local label = opts.channel_label
  if label ~= nil and (type(label) ~= "string" or label == "") then
    fail(2, "channel_label must be a non-empty string")
  end
  if opts.use_overflow_table ~= nil and type(opts.use_overflow_table) ~= "boolean" then
    fail(2, "use_overflow_table must be a boolean")
  end
  local channel = label and label_channel(label) or default_channel(info.schema, info.table, op)

  -- The capture (SPEC §8.5): a live watch has one per table, operation and label; a durable
  -- one has its own for its shape, so consumers asking for other columns never replace or
  -- narrow one another's trigger. The wire channel is the capture's own: what its trigger
  -- writes and the driver reads. PostgreSQL's live watches keep the plain channel (a NOTIFY
  -- channel others may LISTEN on); every journal and change-log channel carries the capture,
  -- so a live watch's rows and each shape's rows are told apart there.
  local overflow = opts.use_overflow_table == true
  local capture = "live"
  if self._durable then
    capture = core.hash(concat({ "durable", concat(pk, "\1"), all and "*" or concat(extra, "\1"),
      concat(trigger, "\1"), concat(old, "\1"), tostring(overflow) }, "\0")):sub(1, 12)
  end
  local wire = channel
  if self._durable or not self._caps.plain_live then wire = channel .. "#" .. capture end

  local w = {
    schema = info.schema, table = info.table, name = info.name, op = op, opcode = OPCODES[op],
    channel = channel, wire = wire, capture = capture,
    label = label, pk = pk, extra = extra, all = all or nil, trigger = trigger, old = old,
    info = info, overflow = overflow, pkindex = {}, oldset = {},
    mc = metrics.counters(self._consumer or "", info.schema .. "." .. info.table, op),
    truncated_log = { what = "truncated", channel = channel },
  }
  for i, c in ipairs(pk) do w.pkindex[c] = i end
  for _, c in ipairs(old) do w.oldset[c] = true end
  set_columns(w, columns_now(w, info))
  w.marker = watch_marker(w, info)

  local other = self._by_channel[channel] or self._by_channel[wire]
  if other then
    if other.marker == w.marker then return self end -- the same watch twice
    fail(2, "channel %q is already used by the %s watch on %s; give this watch its own channel_label",
      channel, other.op, other.name)
  end
  -- After start: installed and listened to before it is registered, so a failure leaves
  -- nothing behind and the same watch can be made again once the cause is fixed.
  if self._started then
    local ok, err = self:_install(w)
    if ok then
      ok, err = self:_listen(w)
      if not ok then -- best effort: the error below is what matters
        self:_disarm_retry(w)
        self._h:uninstall(w)
      end
    end
    if not ok then
      self:_forget_table(info)
      error(one_line(err), error_level(2))
    end
  end
  self._watches[#self._watches + 1] = w
  self._by_channel[wire] = w
  -- The rows the previous release's trigger wrote (untagged) before this one replaced it.
  if self._durable then self._by_channel[channel] = w end
  self._by_key[watch_key(w.schema, w.table, op, label)] = w
  local read = self._by_key[watch_key(w.schema, w.table, M.READ)]
  if read and read.implicit then self:_read_columns(info, read) end
  return self
end

local READ_OPTIONS = { extra_columns = true, primary_keys = true }

-- The "read" watch of a table (SPEC §8.3): a backfill's rows go on its own channel, this
-- consumer's alone, and it has no trigger. Its columns: those opts names, else every column
-- the table's other watches carry (all of them when one has extra_columns = "*"), and their
-- key. Made by n:watch(table, "read"), or by the first subscribe or backfill that needs it.
function Notifier:_read_watch(info, opts, level)
  local key = watch_key(info.schema, info.table, M.READ)
  local w = self._by_key[key]
  if w then
    if next(opts) ~= nil then fail(level + 1, "the read watch on %s is made already: watch it first", info.name) end
    return w
  end
  if not self._durable then
    fail(level + 1, "a backfill needs a durable consumer: give sqlnotify.notifier{...} a consumer name")
  end
  for k in pairs(opts) do
    if not READ_OPTIONS[k] then fail(level + 1, "%s does not apply to a read watch (on %s)", k, info.name) end
  end
  local all, extra, pk = opts.extra_columns == "*", {}, nil
  if opts.primary_keys ~= nil then
    pk = check_columns(info, opts.primary_keys, "primary_keys", level + 1)
    if #pk == 0 or not is_key(info, pk) then
      fail(level + 1, "primary_keys {%s} of table %s is not its primary key or a unique key", concat(pk, ", "), info.name)
    end
  end
  local implicit = opts.extra_columns == nil
  if not implicit and not all then extra = check_columns(info, opts.extra_columns, "extra_columns", level + 1) end
  if implicit then pk = pk or self:_read_columns(info) end
  pk = pk or info.pk
  if #pk == 0 then
    fail(level + 1, "table %s has no primary key; a backfill reads it in key order (watch(%q, \"read\", "
      .. "{primary_keys = {...}}) names a unique key)", info.name, info.name)
  end
  if not is_key_of_every_row(info, pk) then
    fail(level + 1, "primary_keys {%s} of table %s can be NULL; a backfill reads in key order and needs a key "
      .. "every row has (make its columns NOT NULL)", concat(pk, ", "), info.name)
  end
  local channel = default_channel(info.schema, info.table, M.READ)
  -- the consumer's own: the columns are not in it, so that a watch made later can add its own
  local capture = core.hash(concat({ "read", self._consumer }, "\0")):sub(1, 12)
  w = {
    schema = info.schema, table = info.table, name = info.name, op = M.READ, opcode = 0, read = true,
    channel = channel, wire = channel .. "#" .. capture, capture = capture, pk = pk, extra = extra, all = all or nil,
    trigger = {}, old = {}, info = info, overflow = false, pkindex = {}, oldset = {}, arrived = 0, implicit = implicit,
    mc = metrics.counters(self._consumer, info.schema .. "." .. info.table, M.READ),
    truncated_log = { what = "truncated", channel = channel },
  }
  for i, c in ipairs(pk) do w.pkindex[c] = i end
  if implicit then
    self:_read_columns(info, w)
  else
    set_columns(w, columns_now(w, info))
    w.marker = watch_marker(w, info)
  end
  if self._by_channel[channel] then fail(level + 1, "channel %q is already used on %s", channel, info.name) end
  if self._started then
    local ok, err = self:_listen(w)
    if not ok then error(one_line(err), error_level(level + 1)) end
  end
  self._reads[#self._reads + 1] = w
  self._by_channel[w.wire] = w
  self._by_key[key] = w
  return w
end

-- The columns of the table's watches, for its read watch w made without columns of its own:
-- their extra columns (all, when one has extra_columns = "*"). Without w: the key of the
-- table's first watch, or nil.
function Notifier:_read_columns(info, w)
  local extra, seen, all, pk = {}, {}, false, nil
  for _, x in ipairs(self._watches) do
    if x.schema == info.schema and x.table == info.table then
      pk = pk or x.pk
      all = all or x.all ~= nil
      for _, c in ipairs(x.extra) do
        if not seen[c] then seen[c], extra[#extra + 1] = true, c end
      end
    end
  end
  if not w then return pk end
  w.extra, w.all = extra, all or nil
  set_columns(w, columns_now(w, info))
  w.marker = watch_marker(w, info)
end

-- Listen to a watch's wire channel; a durable one also to its untagged channel, where the
-- previous release's trigger wrote the rows still ahead of the consumer.
function Notifier:_listen(w)
  local ok, err = self._h:listen(w.wire)
  if ok and self._durable then ok, err = self._h:listen(w.channel) end
  w.listened = w.listened or ok
  return ok, err
end

-- An install the table's lock held back ("busy": another session holds it, and our DDL waits
-- for it only briefly, since the table's writers queue behind the waiting DDL) is tried again
-- from a timer: after about RETRY_FIRST s, doubling up to RETRY_MAX s, with jitter.
local RETRY_FIRST, RETRY_MAX = 1, 60

-- Install w's trigger. true when it is in (or, busy, to be tried again: w.retry), or nil and
-- the error.
function Notifier:_install(w)
  local status, err = self._h:install(w, self._revoke)
  if not status then return nil, err end
  if status == "busy" then
    self:_install_later(w, err)
    return true
  end
  -- after a wait for a lock: say that it is in at last
  local r = w.retry
  w.retry = nil
  local late = r and fmt(" at attempt %d, %.1f s after the first", r.attempts + 1, core.now() - r.since) or ""
  w.installed_at = core.now()
  -- a capture read before it was made is this run's own when this notifier listened first (an
  -- install a lock held back): not one lost while the consumer was away
  if status == "restored" and w.listened then status = "created" end
  if status == "created" then
    self:_log("info", "trigger for %s on %s created (channel %s)%s", w.op, w.name, w.channel, late)
  elseif status == "replaced" then -- its marker differed: what it captures, or the release that made it
    self:_log("info", "trigger for %s on %s replaced: the one there captured other columns or options, or an "
      .. "earlier release made it (channel %s)%s", w.op, w.name, w.channel, late)
  elseif status == "restored" then
    -- its trigger went while the consumer was away (--drop, a DROP, a restore): from then on
    -- nothing was captured, and when that was is known only up to the consumer's last visit
    local seen
    for _, c in ipairs(self._h:consumers() or {}) do
      if c[1] == self._consumer then seen = c[5] end
    end
    local msg = fmt("consumer %q: the trigger for %s on %s was missing (dropped while the consumer was away); "
      .. "created it again: changes made between its drop (after %s, when the consumer was last seen) and now were "
      .. "not captured and are not delivered", self._consumer, w.op, w.name, seen or "its last run")
    self:_log("error", "%s", msg)
    self:_emit_error(msg, { source = "trigger", schema = w.schema, table = w.table, operation = w.op,
      channel = w.channel })
  elseif status == "kept" then
    w.lost = true -- not this watch's trigger, and said so here: the periodic check stays quiet
    self:_log("warn",
      "trigger for %s on %s differs from this watch; kept as it is because revoke_on_model_change is false%s",
      w.op, w.name, late)
  else
    self:_log(r and "info" or "debug", "trigger for %s on %s unchanged (channel %s)%s", w.op, w.name, w.channel, late)
  end
  return true
end

-- w's install was held back by a lock (why: whose), or at a retry failed otherwise (failed: a
-- lost connection, a dropped table): say so, and try again later.
function Notifier:_install_later(w, why, failed)
  local r = w.retry or { attempts = 0, since = core.now(), delay = RETRY_FIRST / 2 }
  w.retry = r
  r.attempts = r.attempts + 1
  r.delay = math.min(r.delay * 2, RETRY_MAX)
  r.wait = r.delay * (0.75 + 0.5 * math.random())
  local consumer = self._consumer
  local until_then
  if w.reinstall and not failed then -- made again for a changed table: the one made before is there
    until_then = "the trigger made before captures its changes, with the columns it had"
  elseif consumer then
    until_then = fmt("its changes are not captured for consumer %q: they will never be delivered", consumer)
  else
    until_then = fmt("its %ss are not seen", w.op)
  end
  local msg = fmt("trigger for %s on %s not installed yet: %s; trying again in %.1f s (until then %s)", w.op,
    w.name, one_line(why):sub(12), r.wait, until_then)
  self:_log(failed and "error" or "warn", "%s", msg)
  if failed then
    self:_emit_error(msg, { source = "install", schema = w.schema, table = w.table, operation = w.op,
      channel = w.channel })
  end
  self:_arm_retry(w)
end

-- Start w's retry timer (only while listening: start() arms what its installs left to retry).
function Notifier:_arm_retry(w)
  local r = w.retry
  if not r or r.timer or not self._started then return end
  local ref = setmetatable({ self }, { __mode = "v" })
  r.timer = core.after(r.wait, function()
    local me = ref[1]
    r.timer = nil
    if not me or not me._started or me._closed or me._by_channel[w.wire] ~= w or w.retry ~= r then return end
    local ok, err = me:_install(w)
    if not ok then me:_install_later(w, err, true) end
  end)
end

-- Stop w's retry timer, if any.
function Notifier:_disarm_retry(w)
  local r = w.retry
  if r and r.timer then
    r.timer:stop()
    r.timer = nil
  end
end

-- The watch a subscribe/notify refers to, or a clear error.
function Notifier:_find_watch(t, op, label, level)
  local info = self:_table(t, level + 1)
  if label ~= nil and type(label) ~= "string" then fail(level + 1, "channel_label must be a string") end
  local w = self._by_key[watch_key(info.schema, info.table, op, label)]
  if not w and op == M.READ and label == nil then w = self:_read_watch(info, {}, level + 1) end
  if not w then
    fail(level + 1, "no watch for %s on %s%s (call watch first)", op, info.name,
      label and fmt(" with channel_label %q", label) or "")
  end
  return w, info
end

local SUBSCRIBE_OPTIONS = { filters = true, channel_label = true, name = true, retry = true, batch = true }

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

--- n:subscribe(table, operation, [opts,] handler) -> subscription
--   opts: filters = {{column=, value=, old=}, ...}, channel_label=, name= (for debug logs),
--   retry = {attempts=, delay=, max_delay=}, batch = N (the handler gets a list of up to N
--   events, done or failed together)
function Notifier:subscribe(t, op, opts, handler)
  check_notifier(self, 2)
  if handler == nil and callable(opts) then opts, handler = nil, opts end
  if callable(opts) and type(handler) == "table" then
    fail(2, "subscribe takes its options before the handler: n:subscribe(table, operation, opts, handler)")
  end
  op = check_op(op, 2, true)
  opts = check_options(opts, SUBSCRIBE_OPTIONS, "subscribe", 2)
  if not callable(handler) then
    fail(2, "subscribe needs a handler function, got %s", type(handler))
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then fail(2, "subscribe name must be a string") end
  local batch = opts.batch
  if batch ~= nil and (math.type(batch) ~= "integer" or batch < 1 or batch > 100000) then
    fail(2, "subscribe batch must be a whole number from 1 to 100000, got %s",
      type(batch) == "number" and tostring(batch) or type(batch))
  end
  local w, info = self:_find_watch(t, op, opts.channel_label, 2)
  local checked = filters.check(opts.filters, w, info, function(...) self:_log("warn", ...) end, 2)
  self._seq = self._seq + 1
  local sub = { seq = self._seq, handler = handler, filters = checked, watch = w, active = true,
    name = opts.name or fmt("#%d", self._seq),
    retry = opts.retry ~= nil and delivery.check_retry(opts.retry, self._retry, 2) or nil, batch = batch }
  sub.what = opts.name and fmt("handler %q for %s on %s", opts.name, op, w.name)
    or fmt("handler for %s on %s", op, w.name)
  local chan = self._subs[w.channel]
  if not chan then
    chan = filters.new_index() -- all, by, cols: the handlers of single events (filters.lua)
    chan.n, chan.batch, chan.nb = 0, {}, 0
    self._subs[w.channel] = chan
  end
  if batch then -- matched at dispatch, apart from the handlers of one event
    sub.bkey = "\1batch\0" .. w.name -- one batch at a time per table (delivery.lua)
    chan.batch[#chan.batch + 1] = sub
    chan.nb = chan.nb + 1
    sub.list, sub.chan = chan.batch, chan
    return setmetatable(sub, M.Subscription)
  end
  filters.index_add(chan, sub)
  chan.n = chan.n + 1
  sub.chan = chan
  return setmetatable(sub, M.Subscription)
end

M.Subscription = {}
M.Subscription.__index = M.Subscription

--- sub:unsubscribe(): no more events for this handler. Safe to call twice.
function M.Subscription:unsubscribe()
  if not self.active then return end
  self.active = false
  if self.batch then
    for i, s in ipairs(self.list) do
      if s == self then
        table.remove(self.list, i)
        break
      end
    end
    self.chan.nb = self.chan.nb - 1
  else
    filters.index_remove(self.chan, self)
    self.chan.n = self.chan.n - 1
  end
end

-- ===== dispatch =====

-- The methods that take events from the driver to the handlers: dispatch.lua.
dispatch.bind { fail = fail, one_line = one_line, shorten = shorten, watch_marker = watch_marker,
  set_columns = set_columns, columns_now = columns_now }
for k, f in pairs(dispatch.methods) do Notifier[k] = f end
-- n:backfill and its machinery: backfill.lua.
backfill.bind { fail = fail, one_line = one_line, check_notifier = check_notifier, check_options = check_options,
  error_level = error_level }
for k, f in pairs(backfill.methods) do Notifier[k] = f end
M._event_meta = dispatch.event_meta
local with_traceback = dispatch.with_traceback
-- ===== lifecycle =====

--- n:start(): install triggers and begin listening. Returns the notifier, or nil and a message.
function Notifier:start()
  check_notifier(self, 2)
  if self._started then return self end
  local h = self._h
  if self._cleanup_on_start then
    -- Other processes' triggers go too: each is named in the log, then the count dropped.
    local rows, err = h:list()
    local n
    if rows then n, err = h:drop() end
    if not n then return nil, one_line(err) end
    for _, r in ipairs(rows) do
      local plain, capture = M._capture_of(r[4] or "")
      self:_log("info", "cleanup_on_start: dropped the trigger for %s on %s (%s)", r[3] or "?", qname(r[1], r[2]),
        r[4] and "channel " .. plain .. (capture ~= "live" and ", " .. capture or "") or "trigger " .. r[5])
    end
    self:_log("info", "cleanup_on_start: dropped %d sqlnotify trigger(s)", n)
  end
  for _, w in ipairs(self._watches) do
    local ok, err = self:_install(w)
    if not ok then return nil, one_line(err) end
  end
  for _, list in ipairs({ self._watches, self._reads }) do
    for _, w in ipairs(list) do
      local ok, err = self:_listen(w)
      if not ok then return nil, one_line(err) end
    end
  end
  if self._snapshot and #self._reads == 0 then
    return nil, "sqlnotify: start_at = \"snapshot\" reads the tables subscribed to \"read\", and there is none: "
      .. "subscribe to a table's \"read\" events (or watch it for \"read\")"
  end
  self._started, self._ever_started = true, true
  listening[self] = true -- a listening notifier lives until stop or close
  for _, w in ipairs(self._watches) do self:_arm_retry(w) end
  if self._verify_interval then
    local ref = setmetatable({ self }, { __mode = "v" })
    self._verify_timer = core.every(self._verify_interval, function()
      local me = ref[1]
      if me then me:_check_triggers() end
    end)
  end
  for _, w in ipairs(self._watches) do
    if #w.gone > 0 then self:_watch_gone() break end -- stopped and started again with a column gone
  end
  self:_log("info", "listening on %d channel(s) of %s", #self._watches, h:target())
  if self._durable then self:_backlog() end
  if self._durable then
    local ok, err = self:_backfills_start()
    if not ok then
      self:stop()
      return nil, one_line(err)
    end
    metrics.soon() -- the first scrape has its lag
  end
  return self
end

-- A durable consumer's backlog at start, from one n:consumers() query: the rows of its tables
-- it has not acknowledged. It has caught up when it has been delivered as many events since
-- (handled, skipped or dead-lettered; read again after a reconnect counts twice) and none is
-- in flight: the journal is read in order, so those were the backlog's. Said once.
function Notifier:_backlog()
  self._catchup = nil
  local rows, err = self._h:consumers()
  if not rows then
    self:_log("info", "consumer \"%s\": cannot count its backlog: %s", self._consumer, one_line(err):sub(12))
    return
  end
  for _, r in ipairs(rows) do
    local n, age = math.tointeger(tonumber(r[2])), tonumber(r[3])
    if r[1] == self._consumer and n then
      if n == 0 then
        self:_log("info", "consumer \"%s\" starts with no backlog", self._consumer)
      else
        local oldest = core.now() - (age or 0)
        self:_log("info", "consumer \"%s\" starts %d event(s) behind (oldest from %s.%03dZ)", self._consumer, n,
          os.date("!%Y-%m-%dT%H:%M:%S", math.floor(oldest)), math.floor(oldest % 1 * 1000))
        self._catchup = { behind = n, seen = 0, since = core.now() }
      end
      return
    end
  end
end

-- Called as events are delivered and as the queue empties (delivery.lua).
function Notifier:_check_caught_up()
  local cu = self._catchup
  if cu and cu.seen >= cu.behind and self._q.ph > self._q.pt then
    self._catchup = nil
    self:_log("info", "consumer \"%s\" caught up after %d event(s) in %.1f s", self._consumer, cu.seen,
      core.now() - cu.since)
  end
end

-- Print the counts of reports the rate limits held back (handler failures, truncated rows).
function Notifier:_flush_reports()
  local reports = self._reports
  if #reports == 0 then return end
  self._reports = {}
  for _, st in ipairs(reports) do
    local n = st.suppressed or 0
    st.suppressed = 0
    if n > 0 and st.what == "truncated" then
      self:_log("warn", "%d more row(s) %s on channel %s since the last report", n, self:_truncated_cause(),
        st.channel)
    elseif n > 0 then
      self:_log("error", "%s: %d more failure(s) since the last report", st.what, n)
    end
  end
end

-- What was in flight when the notifier stopped: a durable consumer's events come again at
-- the next start (their acks were never sent), and so do the rows of its backfill read into
-- memory (their chunk is not saved until they are done: it is read again, and a reloaded
-- script's backfill reads it, so they are not handed over); live ones are said with their payloads.
function Notifier:_drop_in_flight()
  local jobs = self._q:reset()
  local live = {}
  for _, job in ipairs(jobs) do
    if not job.seq and not job.replay and not (self._durable and job.w.read) then live[#live + 1] = job end
  end
  local durable = #jobs - #live
  -- a reload: the new script's handlers take the live ones over, in delivery order
  if #live > 0 and self._h and not self._closed then
    local list = {}
    for _, job in ipairs(live) do
      list[#list + 1] = job.channel or job.w.wire
      list[#list + 1] = job.payload or ""
    end
    if self._h:handover(list) then
      self:_log("info", "%d live event(s) in flight go to the reloaded script's handlers", #live)
      live = {}
    end
  end
  if durable > 0 then
    self:_log("info", "%d event(s) in flight when consumer \"%s\" stopped are delivered again at its next start",
      durable, self._consumer or "?")
  end
  for i, job in ipairs(live) do
    if i > 100 then
      self:_log("error", "... and %d more live event(s) not handled", #live - 100)
      break
    end
    self:_log("error", "live event %s on %s not handled at stop (attempt %d): payload %s", job.w.op, job.w.name,
      job.attempt or 1, shorten(job.payload or ""))
  end
end

-- Not listening any more: release what kept it alive and running.
function Notifier:_quiet()
  self._started = false
  listening[self] = nil
  for _, w in ipairs(self._watches) do self:_disarm_retry(w) end
  self:_backfills_stop()
  if self._verify_timer then
    self._verify_timer:stop()
    self._verify_timer = nil
  end
  if self._gone_timer then
    self._gone_timer:stop()
    self._gone_timer = nil
  end
end

--- n:stop(): stop listening; triggers stay.
function Notifier:stop()
  check_notifier(self, 2)
  if not self._started then return self end
  self._h:stop()
  self:_quiet()
  self:_drop_in_flight()
  self:_flush_reports()
  return self
end

--- n:is_running() -> true from a successful n:start() until n:stop() or n:close(). It stays true
-- while the listener reconnects after an outage: the notifier is still running, and delivers again
-- once the connection is back (n:on("error") and n:on("reconnect") tell when it is lost and back).
function Notifier:is_running()
  if getmetatable(self) ~= Notifier then check_notifier(self, 2) end -- raises
  return self._started
end

--- n:cleanup(): drop the triggers and functions of this notifier's watches.
function Notifier:cleanup()
  check_notifier(self, 2)
  for _, w in ipairs(self._watches) do
    local ok, err = self._h:uninstall(w)
    if not ok then return nil, one_line(err) end
  end
  return true
end

--- n:close(): stop and release the connections (also done by the garbage collector).
function Notifier:close()
  if self._closed then return end
  self:_quiet()
  self:_drop_in_flight()
  self:_flush_reports()
  self._closed = true
  self:_backfills_stop()
  if self._bh then self._bh:close() self._bh = nil end
  self._h:close()
end

-- A notifier nobody holds: its counts are printed and its connections closed. The
-- handle's own finalizer runs after this one (it was made first).
function Notifier:__gc()
  pcall(Notifier.close, self)
end

-- ===== checks and hooks =====

local ON_EVENTS = { reconnect = true, error = true, dead_letter = true }

--- n:on("reconnect", fn(outage_seconds, may_have_missed)) / n:on("error", fn(message, context)) -> n
function Notifier:on(name, fn)
  check_notifier(self, 2)
  if not ON_EVENTS[name] then
    fail(2, "unknown notifier event %s (use \"reconnect\", \"error\" or \"dead_letter\")", show(name))
  end
  if not callable(fn) then fail(2, "on(%q) needs a handler function, got %s", name, type(fn)) end
  local list = self._on[name]
  list[#list + 1] = fn
  if name == "error" and #list == 1 then
    -- the connection's own error lines (connection lost, a failed fetch) come from the loop
    local ref = setmetatable({ self }, { __mode = "v" })
    self._h:set_error(function(message)
      local me = ref[1]
      if me then me:_emit_error(message, { source = "database" }) end
    end)
  end
  return self
end

-- Does the server answer? The periodic checks (the triggers here, the consumers' lag in
-- metrics.lua) ask with blocking statements: a server that stalls (its connection open,
-- nothing coming back) would hold the whole loop for each statement's timeout, /health and
-- the handlers with it. So a coroutine first asks SELECT 1 on the query connection, on the
-- loop, and the checks run only once it was answered. Said once an outage (what: whose check
-- waits), in the log and to n:on("error") (source "verify"). true, or false.
function Notifier:_answers(what)
  local ok, rows, err = pcall(self._query_async, self, "SELECT 1")
  if self._closed then return false end
  if ok and rows then
    if self._unanswered then
      self._unanswered = false
      self:_log("info", "%s answers again: its periodic checks run again", self._h:target())
    end
    return true
  end
  if not self._unanswered then
    self._unanswered = true
    local msg = fmt("%s is skipped while %s does not answer: %s", what, self._h:target(),
      (one_line(tostring(ok and err or rows)):gsub("^sqlnotify: ", "")))
    self:_log("warn", "%s", msg)
    self:_emit_error(msg, { source = "verify" })
  end
  return false
end

-- The trigger check (_verify), in a coroutine of its own (its statements wait on the loop),
-- unless one runs. soon: the durable reader saw a trigger it reads gone from a table that is
-- there (MySQL, which has no DDL hook to keep them: a table dropped and made again, or a copy
-- renamed into its place), so the check runs now, not at its next turn, and its window is
-- about a second; one that came while a check ran has it run again.
function Notifier:_check_triggers(soon)
  if self._verifying then
    self._verify_again = self._verify_again or soon
    return
  end
  self._verifying = true
  delivery.spawn(function()
    repeat
      self._verify_again = false
      if self:_answers("checking the triggers") then self:_verify(soon) end
      soon = true -- run again: for a notice
    until not self._verify_again or self._closed
    self._verifying = false
  end)
end

-- Is every trigger still ours? Another process watching the same table and operation with
-- other options, or a hand-made DROP, takes it away; say so once, loudly. The tables' columns
-- are read first: a trigger made again for a table that changed is no one else's doing.
-- soon (a check the durable reader asked for): a watch already found lost is left to the
-- periodic check, which tries again and says so once an interval, however often tables go.
function Notifier:_verify(soon)
  if not self._started or self._closed then return end
  local now, read = core.now(), {}
  for _, w in ipairs(self._watches) do
    local key = w.schema .. "\0" .. w.table
    if not read[key] then
      read[key] = true
      self:_recheck(w, now, true)
    end
  end
  for _, w in ipairs(self._watches) do
    if not (soon and w.lost) then self:_verify_one(w) end
  end
end

-- One watch's part of the check: its trigger ours, or put back (durable) or said lost.
function Notifier:_verify_one(w)
  self:_reinstall_now(w)
  -- not checked: one to be made again for a change of its table, one whose key is gone
  -- nor one a lock held back (not installed yet, so not lost)
  local skip, ok, err = w.reinstall or w.keygone or w.retry, true, nil
  if not skip then ok, err = self._h:verify(w) end
  if ok == nil then
    local msg = fmt("cannot check the trigger for %s on %s: %s", w.op, w.name, one_line(err):sub(12))
    self:_log("warn", "%s", msg)
    self:_emit_error(msg, { source = "verify", schema = w.schema, table = w.table, operation = w.op,
      channel = w.channel })
  elseif not ok and self._durable and self._revoke then
    self:_repair(w)
  elseif not ok and not w.lost then
    w.lost = true
    local msg = fmt("trigger for %s on %s was replaced or dropped by someone else (another watcher of this table "
      .. "and operation with other options, or a DROP); its events may be missing or wrong until this notifier "
      .. "is started again", w.op, w.name)
    self:_log("error", "%s", msg)
    self:_emit_error(msg, { source = "trigger", schema = w.schema, table = w.table, operation = w.op,
      channel = w.channel })
  elseif ok and w.lost and not skip then
    w.lost = false
    self:_log("info", "trigger for %s on %s is this watch's again", w.op, w.name)
  end
  if ok then w.verified_at = core.now() end
end

local function utc(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end

-- A durable consumer's capture went missing or was changed behind it (a DROP, a trigger
-- replaced by hand, a schema restored without it): put it back at once, and say at error
-- level which changes it could not capture, from when it was last seen whole until now.
function Notifier:_repair(w)
  local since, now = w.verified_at or w.installed_at or core.now(), core.now()
  local status, err = self._h:install(w, true)
  local what = fmt("consumer %q: the trigger for %s on %s was missing or changed", self._consumer, w.op, w.name)
  if status == "busy" then -- a lock holds it back: tried again from a timer, said there
    self:_log("error", "%s since %s; re-creating it waits for a lock", what, utc(since))
    self:_install_later(w, err)
    return
  end
  if not status then
    w.lost = true
    local msg = fmt("%s and cannot be re-created: %s; changes from %s on are not being captured", what,
      one_line(err):sub(12), utc(since))
    self:_log("error", "%s", msg)
    self:_emit_error(msg, { source = "trigger", schema = w.schema, table = w.table, operation = w.op,
      channel = w.channel })
    return
  end
  w.lost, w.verified_at = false, now
  local msg = fmt("%s; re-created it: changes between %s and %s (when it was last seen whole, and now) may not "
    .. "have been captured and are not delivered", what, utc(since), utc(now))
  self:_log("error", "%s", msg)
  self:_emit_error(msg, { source = "trigger", schema = w.schema, table = w.table, operation = w.op,
    channel = w.channel })
end

-- The listener is back after an outage: check the triggers, then tell the script.
function Notifier:_reconnected(outage, may_have_missed)
  if self._closed then return end
  self._mconn.reconnects = self._mconn.reconnects + 1
  self:_verify()
  local fns = self._on.reconnect
  for i = 1, #fns do
    local ok, err = xpcall(fns[i], with_traceback, outage, may_have_missed)
    if not ok then
      local raised = dispatch.raised()
      local msg = "reconnect handler failed: " .. tostring(raised)
      self:_log_failure(nil, "reconnect handler", err, raised)
      self:_emit_error(msg, { source = "reconnect", error = raised, traceback = err })
    end
  end
end

-- ===== notify and query =====

local NOTIFY_OPTIONS = { channel_label = true, use_overflow_table = true, old = true }

-- sqlnotify.null goes out as JSON null.
local function json_value(v)
  if v == M.null then return json.null end
  return v
end

--- n:notify(table, operation, payload, {channel_label=, use_overflow_table=, old=})
-- payload is a row: {column = value}; it must carry the primary key(s). old (UPDATE):
-- {column = value} of the watch's old_columns.
function Notifier:notify(t, op, payload, opts)
  check_notifier(self, 2)
  op = check_op(op, 2)
  if type(payload) ~= "table" then
    fail(2, "notify payload must be a table of column = value, got %s", type(payload))
  end
  opts = check_options(opts, NOTIFY_OPTIONS, "notify", 2)
  local w = self:_find_watch(t, op, opts.channel_label, 2)
  local ids, x = {}, {}
  for k, v in pairs(payload) do
    if type(k) ~= "string" or not w.carried[k] then
      fail(2, "notify payload has column %q that the %s watch on %s does not carry", tostring(k), op, w.name)
    end
    if w.pkindex[k] then ids[k] = json_value(v) else x[k] = json_value(v) end
  end
  for _, c in ipairs(w.pk) do
    if ids[c] == nil then fail(2, "notify payload lacks primary key column %q of %s", c, w.name) end
  end
  local old
  if opts.old ~= nil then
    if type(opts.old) ~= "table" then
      fail(2, "notify old must be a table of column = value, got %s", type(opts.old))
    end
    old = {}
    for k, v in pairs(opts.old) do
      if type(k) ~= "string" or not w.oldset[k] then
        fail(2, "notify old has column %q that is not in old_columns of the %s watch on %s", tostring(k), op, w.name)
      end
      old[k] = json_value(v)
    end
  end
  local text, err = json.encode({ id = ids, x = next(x) and x or nil, o = old })
  if not text then fail(2, "notify payload cannot be sent as JSON: %s", err) end
  local overflow = opts.use_overflow_table
  if overflow == nil then overflow = w.overflow end
  local max = self._h:max_payload()
  if max > 0 and #text > max and not overflow then
    fail(2, "notify payload is %d bytes, over the %d-byte limit of %s notifications (use use_overflow_table)",
      #text, max, self.dialect_name)
  end
  return self._h:notify(w.wire, text, overflow)
end

-- "m1=0,1,2;m2=3" -> { m1 = {0, 1, 2}, m2 = {3} }
local function holders(text)
  local out = {}
  for member, list in (text or ""):gmatch("([^;]+)=([%d,]+)") do
    local shares = {}
    for k in list:gmatch("%d+") do shares[#shares + 1] = math.tointeger(tonumber(k)) end
    out[member] = shares
  end
  return out
end

--- n:consumers() -> { {name=, lag_events=, lag_seconds=, members=, last_seen=[, shares=, holders=]}, ... }
---   | nil, message   (shares and holders on PostgreSQL: member -> the shares it holds)
function Notifier:consumers()
  check_notifier(self, 2)
  local rows, err = self._h:consumers()
  if not rows then return nil, err end
  for i, r in ipairs(rows) do
    rows[i] = { name = r[1], lag_events = math.tointeger(tonumber(r[2])), lag_seconds = tonumber(r[3]),
      members = math.tointeger(tonumber(r[4])), last_seen = r[5],
      shares = r[6] and math.tointeger(tonumber(r[6])) or nil, holders = r[6] and holders(r[7]) or nil }
  end
  return rows
end

--- n:drop_consumer(name) -> true (dropped) | false (no such consumer) | nil, message
function Notifier:drop_consumer(name)
  check_notifier(self, 2)
  if type(name) ~= "string" or name == "" then fail(2, "drop_consumer needs a consumer name") end
  local dropped, err = self._h:drop_consumer(name)
  if dropped ~= nil then self:_backfills_forget(name) end
  return dropped, err
end

--- n:query(sql, ...) -> rows | nil, message. One statement, parameters $1.. (PostgreSQL) or ? (SQLite).
-- ===== dead letters =====

local DEAD_OPTIONS = { limit = true, consumer = true, id = true }

local function check_dead_opts(self, opts, what)
  check_notifier(self, 3)
  opts = check_options(opts, DEAD_OPTIONS, what, 3)
  if opts.limit ~= nil and (math.type(opts.limit) ~= "integer" or opts.limit < 1) then
    fail(3, "%s: limit must be a whole number above zero", what)
  end
  if opts.id ~= nil and math.type(opts.id) ~= "integer" then fail(3, "%s: id must be a whole number", what) end
  if opts.consumer ~= nil and type(opts.consumer) ~= "string" then fail(3, "%s: consumer must be a string", what) end
  return opts
end

--- n:dead_letters{limit = 100, consumer =, id =} -> rows (oldest first) | nil, err
-- Each row: id, consumer, channel, seq, payload, error, attempts, failed_at. Default: this
-- notifier's consumer (a live notifier: every consumer's).
function Notifier:dead_letters(opts)
  opts = check_dead_opts(self, opts, "dead_letters")
  local rows, err = dead.list(self, opts.consumer or self._consumer, opts.id, opts.limit or 100)
  if not rows then return nil, one_line(err) end
  return rows
end

--- n:replay_dead_letters{limit =, id =} -> how many were queued | nil, err
-- This consumer's dead letters go through the current handlers again, per-key order kept
-- with the events arriving meanwhile; each is deleted once done, or kept with its attempts
-- counted on when it fails again.
function Notifier:replay_dead_letters(opts)
  opts = check_dead_opts(self, opts, "replay_dead_letters")
  if not self._durable then fail(2, "replay_dead_letters needs a consumer: a live notifier keeps no dead letters") end
  if opts.consumer ~= nil and opts.consumer ~= self._consumer then
    fail(2, "replay_dead_letters replays this notifier's consumer (%q) only", self._consumer)
  end
  if not self._started then return nil, "replay_dead_letters: the notifier is not started" end
  if stopping() then return nil, "replay_dead_letters: stopping" end
  local rows, err = dead.list(self, self._consumer, opts.id, opts.limit or 1000)
  if not rows then return nil, one_line(err) end
  local queued, ts = 0, core.now()
  for _, r in ipairs(rows) do
    local w = self._by_channel[r.channel]
    if not w then
      local plain = M._capture_of(r.channel)
      for _, x in ipairs(self._watches) do
        if x.channel == plain then w = x break end
      end
    end
    local ev, newer
    if w then ev, newer = self:_event(w, w.channel, r.payload, ts) end
    if not ev then
      self:_log("warn", "dead letter %s (channel %s) is not replayed: %s", tostring(r.id), r.channel,
        newer or (w and "its payload cannot be read" or "no watch of this notifier has that channel"))
    else
      ev.seq = r.seq
      queued = queued + 1
      local id = r.id
      self._q:add(w, ev, nil, self._retry, r.payload, r.channel, { replay = id, on_done = function(job)
        if job.dead then return end
        local ok, e = dead.delete(self, id)
        if not ok then self:_log("error", "dead letter %s was replayed but cannot be deleted: %s", id, one_line(e)) end
      end })
    end
  end
  return queued
end

-- Wait at the end of the query connection's queue until _query_next wakes this coroutine.
local function wait_turn(lock)
  local w = delivery.waiter()
  lock.t = lock.t + 1
  lock.waiting[lock.t] = w
  w:wait()
end

-- Whether the query connection is a handler's now: its statement runs, or its transaction is open.
function Notifier:_query_taken()
  local lock = self._qlock
  return lock ~= nil and (lock.busy or lock.owner ~= nil)
end

-- For a call that runs its blocking statements on the query connection (n:backfill): true once
-- the connection is free; from a handler or a spawned coroutine it waits its turn (then the
-- caller runs without yielding, and passes the turn on with _query_next). false: taken, and
-- the caller cannot wait, or holds the transaction itself.
function Notifier:_query_turn()
  local lock, co = self._qlock, coroutine.running()
  while self:_query_taken() do
    if lock.owner == co or not delivery.can_wait() then return false end
    wait_turn(lock)
  end
  return true
end

--- n:query(sql, ...) -> rows | nil, err. In a handler (or a spawned coroutine) on PostgreSQL it
-- yields while the statement runs (libpq's asynchronous calls). The statements of handlers
-- side by side take turns on the one query connection, and a transaction one of them opens
-- (BEGIN) is its own until it ends: the others wait; a handler that returns or fails with
-- its transaction open has it rolled back (logged).
function Notifier:query(sql, ...)
  check_notifier(self, 2)
  if type(sql) ~= "string" then fail(2, "query needs an SQL string, got %s", type(sql)) end
  if delivery.can_wait() and self._async_query ~= false then
    return self:_query_async(sql, ...)
  end
  if self:_query_taken() then
    return nil, "sqlnotify: query: the query connection is in use by a handler's statement or transaction;"
      .. " call n:query from a handler or a coroutine of sqlnotify.spawn, where it waits its turn"
  end
  return self._h:query(sql, ...)
end

-- The query connection's turn: whose statement runs (busy), whose transaction is open
-- (owner), and who waits (a FIFO of waiters).
function Notifier:_query_async(sql, ...)
  local co = coroutine.running()
  local lock = self._qlock
  if not lock then
    lock = { waiting = {}, h = 1, t = 0 }
    self._qlock = lock
  end
  while lock.busy or (lock.owner and lock.owner ~= co) do wait_turn(lock) end
  lock.busy = true
  local h = self._h
  local ok, rows, err, in_tx = pcall(delivery.await, "n:query", h.query_start, h, sql, ...)
  lock.busy = false
  if ok and rows == nil and err == false then -- no asynchronous query here: the blocking one
    self._async_query = false
    ok, rows, err = pcall(h.query, h, sql, ...)
  end
  if in_tx and not lock.owner then
    lock.owner = co
    delivery.tx_owner[co] = self
  elseif not in_tx and lock.owner == co then
    lock.owner = nil
    delivery.tx_owner[co] = nil
  end
  self:_query_next()
  if not ok then error(rows, 0) end
  return rows, err
end

-- The connection is free (no statement, no transaction of another): the next waiter's turn.
function Notifier:_query_next()
  local lock = self._qlock
  if lock.busy or lock.owner or lock.h > lock.t then return end
  local w = lock.waiting[lock.h]
  lock.waiting[lock.h] = nil
  lock.h = lock.h + 1
  w:wake()
end

-- co ended (returned, failed) with its transaction open: roll it back, say so, next turn.
function Notifier:_abandon_tx(co)
  local lock = self._qlock
  if not lock or lock.owner ~= co then return end
  lock.owner = nil
  if self._h and not self._closed then
    local ok, err = self._h:query("ROLLBACK")
    self:_log("warn", "a handler ended with the transaction it opened with n:query still open: rolled back%s",
      ok and "" or " (" .. one_line(err) .. ")")
  end
  self:_query_next()
end

-- ===== the host's hooks =====

-- The host calls this after the script ran: start what the script created and did not start.
-- A failure is raised as one line (the host prints it as it is).
function M._autostart()
  local list = live_notifiers()
  pending_autostart = {}
  for _, n in ipairs(list) do
    if not n._ever_started and not n._closed then
      local ok, err = n:start()
      if not ok then error(one_line(err), 0) end
    end
  end
end

-- The loop ended (the host calls this before it exits; sqlnotify.run() when it returns):
-- print what the rate limits held back.
function M._finish()
  for _, n in ipairs(live_notifiers()) do
    if not n._closed then
      if n._q:busy() then n:_drop_in_flight() end
      n:_flush_reports()
    end
  end
end

-- The host's status line for systemd (STATUS=): what listens now.
function M._status()
  local notifiers, channels = 0, 0
  for _, n in ipairs(live_notifiers()) do
    if n._started then notifiers, channels = notifiers + 1, channels + #n._watches end
  end
  return fmt("listening on %d channel(s) of %d notifier(s)", channels, notifiers)
end

-- A stop was asked for: once no notifier has a handler running, the loop ends.
function Notifier:_stopping()
  if not core.in_grace() then return end -- the signal's own handler stops the loop
  for _, n in ipairs(live_notifiers()) do
    if n._started and n._q:running() > 0 then return end
  end
  core.stop()
end

-- What init.lua adds the loop's functions with: the module's table, and helpers.
return { M = M, fail = fail, one_line = one_line, in_host = in_host, live_notifiers = live_notifiers }
