--- sqlnotify: react to database changes in Lua.
-- The public API, its validation against the live catalog, and event dispatch.
-- The C binding (sqlnotify.core) moves bytes; everything a user sees is here.

local core = require("sqlnotify.core")
local json = require("cjson.safe").new() -- our own instance: the user's cjson settings stay theirs

json.decode_max_depth(64) -- anyone can NOTIFY a watched channel: bound what a payload can nest

local M = {}

M.INSERT, M.UPDATE, M.DELETE = "insert", "update", "delete"
M.Operation = { INSERT = M.INSERT, UPDATE = M.UPDATE, DELETE = M.DELETE }
M.VERSION = core.version

local OPCODES = { insert = 0, update = 1, delete = 2 }
local MAX_CHANNEL = 63 -- PostgreSQL's NAMEDATALEN - 1; used on every dialect so names agree

local fmt, concat, sort = string.format, table.concat, table.sort
local decode, stopping = core.decode, core.stopping
local traceback = debug.traceback

local all_notifiers = {}

-- ===== small helpers =====

local function fail(level, ...)
  error("sqlnotify: " .. fmt(...), level + 1)
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

local function check_op(op, level)
  local name = type(op) == "string" and op:lower() or nil
  if not OPCODES[name] then
    fail(level + 1, "unknown operation %s (use sqlnotify.INSERT, UPDATE or DELETE)",
      type(op) == "string" and fmt("%q", op) or tostring(op))
  end
  return name
end

-- Runs the rate limit of one log: the number of reports suppressed since the last one,
-- or nil while this one is to be suppressed.
local function rate_limit(state, now, interval)
  if now < (state.next_log or 0) then
    state.suppressed = (state.suppressed or 0) + 1
    return nil
  end
  local suppressed = state.suppressed or 0
  state.next_log, state.suppressed = now + interval, 0
  return suppressed
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

-- A channel name of at most 63 bytes: readable prefix, hash of the whole when cut.
local function channel_name(full)
  if #full <= MAX_CHANNEL then return full end
  local cut = MAX_CHANNEL - 17
  -- never cut inside a UTF-8 sequence
  while cut > 0 and (full:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return full:sub(1, cut) .. "_" .. core.hash(full)
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
      self.dialect_name == "postgresql" and " (not found in search_path)" or "")
  end
  info = { schema = rows[1][2], table = rows[1][3], columns = {}, colnames = {}, types = {}, pk = {}, uniques = {} }
  for i = 2, #rows do
    local kind, a, b = rows[i][1], rows[i][2], rows[i][3]
    if kind == "column" then
      info.columns[a] = true
      info.colnames[#info.colnames + 1] = a
      info.types[#info.types + 1] = b or ""
    elseif kind == "pk" then
      info.pk[#info.pk + 1] = a
    elseif kind == "unique" then
      local u = info.uniques[b] or {}
      info.uniques[b] = u
      u[#u + 1] = a
    end
  end
  info.name = qname(info.schema, info.table)
  self._tables[key] = info
  return info
end

local function check_columns(info, list, what, level)
  if list == nil then return {} end
  if type(list) ~= "table" then fail(level + 1, "%s must be a list of column names", what) end
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

-- ===== notifier =====

local NOTIFIER_OPTIONS = {
  url = true, revoke_on_model_change = true, cleanup_on_start = true, use_logger = true, retention = true,
  consumer = true, start_at = true,
}

--- sqlnotify.notifier{url=, revoke_on_model_change=, cleanup_on_start=, use_logger=, retention=}
-- Returns the notifier, or nil and a message when the database cannot be reached.
function M.notifier(opts)
  opts = check_options(opts, NOTIFIER_OPTIONS, "notifier", 2)
  local url = opts.url
  if url == nil then url = os.getenv("DATABASE_URL") end
  if url == nil then fail(2, "no url given and DATABASE_URL is not set") end
  if type(url) ~= "string" then fail(2, "url must be a string, got %s", type(url)) end
  if opts.retention ~= nil and (type(opts.retention) ~= "number" or opts.retention <= 0) then
    fail(2, "retention must be a number of seconds above zero")
  end
  if opts.consumer ~= nil and (type(opts.consumer) ~= "string" or opts.consumer == "") then
    fail(2, "consumer must be a non-empty string")
  end
  if opts.start_at ~= nil and opts.start_at ~= "end" and opts.start_at ~= "beginning" then
    fail(2, "start_at must be \"end\" or \"beginning\", got %s",
      type(opts.start_at) == "string" and fmt("%q", opts.start_at) or tostring(opts.start_at))
  end
  local h, err = core.open(url, { use_logger = opts.use_logger ~= false, retention = opts.retention,
    consumer = opts.consumer, start_at = opts.start_at })
  if not h then return nil, err end
  local self = setmetatable({
    _h = h,
    dialect_name = h:dialect(),
    _revoke = opts.revoke_on_model_change ~= false,
    _cleanup_on_start = opts.cleanup_on_start == true,
    _tables = {},
    _watches = {},     -- in watch order
    _by_key = {},      -- schema \0 table \0 op \0 label -> watch
    _by_channel = {},  -- channel -> watch
    _subs = {},        -- channel -> { all = {...}, by = {col -> {value -> {...}}}, cols = {...}, n = count }
    _seq = 0,
    _started = false,
    _ever_started = false,
  }, Notifier)
  h:set_dispatch(function(batch, n, ts, seqs) return self:_dispatch(batch, n, ts, seqs) end)
  all_notifiers[#all_notifiers + 1] = self
  return self
end

function Notifier:_log(level, ...)
  self._h:log(level, fmt(...))
end

local function watch_key(schema, table, op, label)
  return concat({ schema, table, op, label or "" }, "\0")
end

local WATCH_OPTIONS = {
  extra_columns = true, trigger_columns = true, primary_keys = true, channel_label = true, use_overflow_table = true,
}

--- n:watch(table, operation, {extra_columns=, trigger_columns=, primary_keys=, channel_label=, use_overflow_table=})
function Notifier:watch(t, op, opts)
  check_notifier(self, 2)
  op = check_op(op, 2)
  opts = check_options(opts, WATCH_OPTIONS, "watch", 2)
  local info = self:_table(t, 2)
  local extra = check_columns(info, opts.extra_columns, "extra_columns", 2)
  local trigger = check_columns(info, opts.trigger_columns, "trigger_columns", 2)
  if #trigger > 0 and op ~= M.UPDATE then
    fail(2, "trigger_columns only applies to UPDATE watches, not %s on %s", op, info.name)
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
    if #pk == 0 then fail(2, "table %s has no primary key; pass primary_keys naming a unique key", info.name) end
  end
  local label = opts.channel_label
  if label ~= nil and (type(label) ~= "string" or label == "") then
    fail(2, "channel_label must be a non-empty string")
  end
  if opts.use_overflow_table ~= nil and type(opts.use_overflow_table) ~= "boolean" then
    fail(2, "use_overflow_table must be a boolean")
  end
  local channel = channel_name("sqlnotify_" .. (label or (info.schema .. "_" .. info.table .. "_" .. op)))

  local w = {
    schema = info.schema, table = info.table, name = info.name, op = op, opcode = OPCODES[op],
    channel = channel, label = label, pk = pk, extra = extra, trigger = trigger,
    overflow = opts.use_overflow_table == true, pkindex = {}, carried = {}, truncated_log = {},
  }
  for i, c in ipairs(pk) do w.pkindex[c] = i; w.carried[c] = true end
  for _, c in ipairs(extra) do w.carried[c] = true end
  -- The marker changes when the watch or the table's columns change (revoke_on_model_change).
  w.marker = core.hash(concat({
    "v1", w.schema, w.table, op, channel, concat(pk, "\1"), concat(extra, "\1"), concat(trigger, "\1"),
    tostring(w.overflow), concat(info.colnames, "\1"), concat(info.types, "\1"),
  }, "\0"))

  local other = self._by_channel[channel]
  if other then
    if other.marker == w.marker then return self end -- the same watch twice
    fail(2, "channel %q is already used by the %s watch on %s; give this watch its own channel_label",
      channel, other.op, other.name)
  end
  self._watches[#self._watches + 1] = w
  self._by_channel[channel] = w
  self._by_key[watch_key(w.schema, w.table, op, label)] = w
  if self._started then
    local ok, err = self:_install(w)
    if ok then ok, err = self._h:listen(channel) end
    if not ok then fail(2, "%s", (err:gsub("^sqlnotify: ", ""))) end
  end
  return self
end

function Notifier:_install(w)
  local status, err = self._h:install(w, self._revoke)
  if not status then return nil, err end
  if status == "created" or status == "replaced" then
    self:_log("info", "trigger for %s on %s %s (channel %s)", w.op, w.name, status, w.channel)
  elseif status == "kept" then
    self:_log("warn",
      "trigger for %s on %s differs from this watch; kept as it is because revoke_on_model_change is false",
      w.op, w.name)
  else
    self:_log("debug", "trigger for %s on %s unchanged", w.op, w.name)
  end
  return true
end

-- The watch a subscribe/notify refers to, or a clear error.
function Notifier:_find_watch(t, op, label, level)
  local info = self:_table(t, level + 1)
  if label ~= nil and type(label) ~= "string" then fail(level + 1, "channel_label must be a string") end
  local w = self._by_key[watch_key(info.schema, info.table, op, label)]
  if not w then
    fail(level + 1, "no watch for %s on %s%s (call watch first)", op, info.name,
      label and fmt(" with channel_label %q", label) or "")
  end
  return w, info
end

local SUBSCRIBE_OPTIONS = { filters = true, channel_label = true }

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

--- n:subscribe(table, operation, [opts,] handler) -> subscription
function Notifier:subscribe(t, op, opts, handler)
  check_notifier(self, 2)
  if handler == nil and callable(opts) then opts, handler = nil, opts end
  op = check_op(op, 2)
  opts = check_options(opts, SUBSCRIBE_OPTIONS, "subscribe", 2)
  if not callable(handler) then
    fail(2, "subscribe needs a handler function, got %s", type(handler))
  end
  local w, info = self:_find_watch(t, op, opts.channel_label, 2)
  local filters = {}
  if opts.filters ~= nil then
    if type(opts.filters) ~= "table" then fail(2, "filters must be a list of {column=, value=}") end
    for i, f in ipairs(opts.filters) do
      if type(f) ~= "table" or type(f.column) ~= "string" then
        fail(2, "filters[%d] must be {column = name, value = v}", i)
      end
      if not info.columns[f.column] then
        fail(2, "unknown column %q in filters of table %s", f.column, w.name)
      end
      if not w.carried[f.column] then
        fail(2, "filter column %q is not carried by the %s watch on %s (add it to extra_columns)", f.column, op, w.name)
      end
      if f.value == nil or f.value ~= f.value then fail(2, "filters[%d] needs a value", i) end
      filters[i] = { column = f.column, value = f.value }
    end
  end
  self._seq = self._seq + 1
  local sub = { seq = self._seq, handler = handler, filters = filters, watch = w, active = true }
  local chan = self._subs[w.channel]
  if not chan then
    chan = { all = {}, by = {}, cols = {}, n = 0 }
    self._subs[w.channel] = chan
  end
  local list
  if #filters == 0 then
    list = chan.all
  else
    -- Index by the first filter: dispatch looks up one value instead of scanning.
    local f = filters[1]
    local byv = chan.by[f.column]
    if not byv then
      byv = {}
      chan.by[f.column] = byv
      chan.cols[#chan.cols + 1] = f.column
    end
    list = byv[f.value]
    if not list then
      list = {}
      byv[f.value] = list
    end
  end
  list[#list + 1] = sub
  chan.n = chan.n + 1
  sub.list, sub.chan = list, chan
  return setmetatable(sub, M.Subscription)
end

M.Subscription = {}
M.Subscription.__index = M.Subscription

--- sub:unsubscribe(): no more events for this handler. Safe to call twice.
function M.Subscription:unsubscribe()
  if not self.active then return end
  self.active = false
  for i, s in ipairs(self.list) do
    if s == self then
      table.remove(self.list, i)
      break
    end
  end
  self.chan.n = self.chan.n - 1
end

-- ===== dispatch =====

local TRUNCATED_LOG_INTERVAL = 10 -- seconds between two warnings about one channel's truncated rows

-- A truncated row is the user's data lost on the way: say so, once per channel and interval.
function Notifier:_warn_truncated(w, channel, now)
  local suppressed = rate_limit(w.truncated_log, now, TRUNCATED_LOG_INTERVAL)
  if not suppressed then return end
  self:_log("warn", "row too large for a notification on channel %s; delivered its key only (%s)%s", channel,
    w.overflow and "the overflow table could not be written" or "use_overflow_table = true sends it whole",
    suppressed > 0 and fmt(" (and %d more since the last report)", suppressed) or "")
end

-- The event of a payload, decoded by the binding (the one decoder of the wire format in
-- src/dialect.h, with a plan made once per watch), or nil after logging why it is skipped.
function Notifier:_event(w, channel, payload, ts)
  local plan = w.plan
  if not plan then
    plan = core.plan(w, w.info or self:_table({ schema = w.schema, table = w.table }, 1), self.dialect_name,
      self._nulls)
    w.plan = plan
  end
  local ev, why = decode(plan, payload, channel, ts)
  if not ev then
    self:_log("warn", "skipping malformed payload on channel %s: %s: %s", channel, why, shorten(payload))
    return nil
  end
  if ev.truncated then self:_warn_truncated(w, channel, ts) end
  return ev
end

local function event_value(w, ev, col)
  local i = w.pkindex[col]
  if i then
    if #w.pk == 1 then return ev.id end
    return ev.id and ev.id[i]
  end
  return ev.extra_columns[col]
end

local function by_seq(a, b) return a.seq < b.seq end

local ERROR_LOG_INTERVAL = 10 -- seconds between two reports of one handler's failures

-- A handler that fails on every event costs one log line per interval, not a flood.
function Notifier:_handler_failed(sub, ev, err)
  local suppressed = rate_limit(sub, core.now(), ERROR_LOG_INTERVAL)
  if not suppressed then return end
  self:_log("error", "handler for %s on %s failed%s: %s", ev.operation, sub.watch.name,
    suppressed > 0 and fmt(" (and %d more failure(s) of this handler since the last report)", suppressed) or "",
    tostring(err))
end

function Notifier:_call(sub, ev)
  local ok, err = xpcall(sub.handler, traceback, ev)
  if not ok then self:_handler_failed(sub, ev, err) end
end

local function matches(sub, w, ev)
  local filters = sub.filters
  for i = 1, #filters do
    local f = filters[i]
    if event_value(w, ev, f.column) ~= f.value then return false end
  end
  return true
end

-- Subscribers of one event, in subscription order, filters applied.
function Notifier:_deliver(chan, w, ev)
  local cands = chan.all
  if #chan.cols > 0 then
    local merged, sources = nil, #cands > 0 and 1 or 0
    for _, col in ipairs(chan.cols) do
      local v = event_value(w, ev, col)
      local list = v ~= nil and v == v and chan.by[col][v]
      if list and #list > 0 then
        if sources == 0 then
          cands = list
        else
          merged = merged or table.move(cands, 1, #cands, 1, {})
          table.move(list, 1, #list, #merged + 1, merged)
        end
        sources = sources + 1
      end
    end
    if merged then
      sort(merged, by_seq)
      cands = merged
    elseif sources == 0 then
      return
    end
  end
  -- Copy when a handler could change the list under us (unsubscribe in a handler).
  local n = #cands
  if n == 1 then
    local sub = cands[1]
    if sub.active and matches(sub, w, ev) then self:_call(sub, ev) end
    return
  end
  local list = table.move(cands, 1, n, 1, {})
  for i = 1, n do
    local sub = list[i]
    if sub.active and matches(sub, w, ev) then self:_call(sub, ev) end
  end
end


-- Called by the binding with a batch: batch[2i-1] channel, batch[2i] payload, seqs[i] its
-- journal position (durable mode). Returns how many events it went through.
function Notifier:_dispatch(batch, n, ts, seqs)
  local by_channel, subs = self._by_channel, self._subs
  for i = 1, 2 * n, 2 do
    if stopping() then return (i - 1) // 2 end -- SIGINT/SIGTERM arrived: no handler starts after it
    local channel = batch[i]
    local w = by_channel[channel]
    local chan = w and subs[channel]
    if chan and chan.n > 0 and self._started then
      local ev = self:_event(w, channel, batch[i + 1], ts)
      if ev and seqs then ev.seq = seqs[(i + 1) // 2] end
      local all = chan.all
      if ev and chan.n == 1 and #all == 1 then
        self:_call(all[1], ev) -- the common case, one subscriber without filters: no list building
      elseif ev then
        self:_deliver(chan, w, ev)
      end
    end
  end
  return n
end

-- ===== lifecycle =====

--- n:start(): install triggers and begin listening. Returns the notifier, or nil and a message.
function Notifier:start()
  check_notifier(self, 2)
  if self._started then return self end
  local h = self._h
  if self._cleanup_on_start then
    local n, err = h:uninstall_all()
    if not n then return nil, err end
    self:_log("info", "cleanup_on_start: dropped %d sqlnotify trigger(s)", n)
  end
  for _, w in ipairs(self._watches) do
    local ok, err = self:_install(w)
    if not ok then return nil, err end
  end
  for _, w in ipairs(self._watches) do
    local ok, err = h:listen(w.channel)
    if not ok then return nil, err end
  end
  self._started, self._ever_started = true, true
  self:_log("info", "listening on %d channel(s) of %s", #self._watches, h:target())
  return self
end

--- n:stop(): stop listening; triggers stay.
function Notifier:stop()
  check_notifier(self, 2)
  if not self._started then return self end
  self._h:stop()
  self._started = false
  return self
end

--- n:cleanup(): drop the triggers and functions of this notifier's watches.
function Notifier:cleanup()
  check_notifier(self, 2)
  for _, w in ipairs(self._watches) do
    local ok, err = self._h:uninstall(w)
    if not ok then return nil, err end
  end
  return true
end

--- n:close(): stop and release the connections (also done by the garbage collector).
function Notifier:close()
  if self._closed then return end
  self._started = false
  self._closed = true
  self._h:close()
end

local NOTIFY_OPTIONS = { channel_label = true, use_overflow_table = true }

--- n:notify(table, operation, payload, {channel_label=, use_overflow_table=})
-- payload is a row: {column = value}; it must carry the primary key(s).
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
    if w.pkindex[k] then ids[k] = v else x[k] = v end
  end
  for _, c in ipairs(w.pk) do
    if ids[c] == nil then fail(2, "notify payload lacks primary key column %q of %s", c, w.name) end
  end
  local text, err = json.encode({ id = ids, x = next(x) and x or nil })
  if not text then fail(2, "notify payload cannot be sent as JSON: %s", err) end
  local overflow = opts.use_overflow_table
  if overflow == nil then overflow = w.overflow end
  local max = self._h:max_payload()
  if max > 0 and #text > max and not overflow then
    fail(2, "notify payload is %d bytes, over the %d-byte limit of %s notifications (use use_overflow_table)",
      #text, max, self.dialect_name)
  end
  return self._h:notify(w.channel, text, overflow)
end

--- n:consumers() -> { {name=, lag_events=, lag_seconds=, members=, last_seen=}, ... } | nil, message
function Notifier:consumers()
  check_notifier(self, 2)
  local rows, err = self._h:consumers()
  if not rows then return nil, err end
  for i, r in ipairs(rows) do
    rows[i] = { name = r[1], lag_events = math.tointeger(tonumber(r[2])), lag_seconds = tonumber(r[3]),
      members = math.tointeger(tonumber(r[4])), last_seen = r[5] }
  end
  return rows
end

--- n:drop_consumer(name) -> true (dropped) | false (no such consumer) | nil, message
function Notifier:drop_consumer(name)
  check_notifier(self, 2)
  if type(name) ~= "string" or name == "" then fail(2, "drop_consumer needs a consumer name") end
  return self._h:drop_consumer(name)
end

--- n:query(sql, ...) -> rows | nil, message. One statement, parameters $1.. (PostgreSQL) or ? (SQLite).
function Notifier:query(sql, ...)
  check_notifier(self, 2)
  if type(sql) ~= "string" then fail(2, "query needs an SQL string, got %s", type(sql)) end
  return self._h:query(sql, ...)
end

-- ===== loop =====

M.run = core.run
M.stop = core.stop
M.now = core.now
local LEVELS = { error = true, warn = true, info = true, debug = true }

--- sqlnotify.log_level([level]) -> the current level ("error", "warn", "info" or "debug")
function M.log_level(level)
  if level ~= nil and not LEVELS[level] then
    fail(2, "unknown log level %s (use error, warn, info or debug)", fmt("%q", tostring(level)))
  end
  return core.log_level(level)
end

local function check_timer_args(name, seconds, fn)
  if type(seconds) ~= "number" then fail(3, "%s needs a number of seconds, got %s", name, type(seconds)) end
  if type(fn) ~= "function" then fail(3, "%s needs a function, got %s", name, type(fn)) end
end

--- sqlnotify.after(seconds, fn) -> timer (with :stop())
function M.after(seconds, fn)
  check_timer_args("after", seconds, fn)
  return core.after(seconds, fn)
end

--- sqlnotify.every(seconds, fn) -> timer (with :stop())
function M.every(seconds, fn)
  check_timer_args("every", seconds, fn)
  if seconds <= 0 then fail(2, "every needs a period above zero") end
  return core.every(seconds, fn)
end

-- sqlnotify.io(fd, mode, fn), sqlnotify.cqueues(cq), sqlnotify.step(): validated in src/io.c
M.io, M.cqueues, M.step = core.io, core.cqueues, core.step

-- The host calls this after the script ran: start what the script created and did not start.
function M._autostart()
  for _, n in ipairs(all_notifiers) do
    if not n._ever_started and not n._closed then
      local ok, err = n:start()
      if not ok then error(err, 0) end
    end
  end
end

return M
