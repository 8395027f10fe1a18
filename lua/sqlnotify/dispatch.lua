--- sqlnotify.dispatch: from a batch of raw events to handler calls (SPEC §2, §8.1). Each
-- payload is decoded by its watch (a table that changed under a watch is read again and the
-- watch adapted), matched against the subscriptions (filters.lua keeps their index), and
-- handed to each; failures are logged, retried and dead-lettered (delivery.lua keeps the
-- queue and the waits). These are methods of the notifier: notifier.lua copies them in and
-- binds the helpers it shares with them.
local core = require("sqlnotify.core")
local filters = require("sqlnotify.filters")
local dead = require("sqlnotify.dead_letters")
local metrics = require("sqlnotify.metrics")
local pace = require("sqlnotify.pace")

local fmt, concat, sort = string.format, table.concat, table.sort
local show, show_id = filters.show, filters.show_id
local decode, stopping = core.decode, core.stopping
local traceback = debug.traceback

-- notifier.lua's, bound by D.bind before any method runs
local fail, one_line, shorten, watch_marker, set_columns, columns_now

-- Runs the rate limit of one log: the number of reports suppressed since the last one,
-- or nil while this one is to be suppressed. A state with suppressed reports is listed in
-- pending (when given) so that the count is printed at stop even if no report follows.
local function rate_limit(state, now, interval, pending)
  if now < (state.next_log or 0) then
    state.suppressed = (state.suppressed or 0) + 1
    if pending and not pending[state] then
      pending[#pending + 1] = state
      pending[state] = true
    end
    return nil
  end
  local suppressed = state.suppressed or 0
  state.next_log, state.suppressed = now + interval, 0
  return suppressed
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end


local Notifier = {} -- the methods, copied into notifier.lua's Notifier

local TRUNCATED_LOG_INTERVAL = 10 -- seconds between two warnings about one channel's truncated rows

-- Why a row arrives truncated: only PostgreSQL's live notifications have a size limit; a
-- journal takes any size, so there it is a value the trigger could not write.
function Notifier:_truncated_cause()
  return self._limited and "too large for a notification" or "that could not be written whole"
end

-- A truncated row is the user's data lost on the way: say so, once per channel and interval.
function Notifier:_warn_truncated(w, channel, now)
  local suppressed = rate_limit(w.truncated_log, now, TRUNCATED_LOG_INTERVAL, self._reports)
  if not suppressed then return end
  self:_log("warn", "row %s on channel %s; delivered its key only%s%s", self:_truncated_cause(), channel,
    not self._limited and "" or w.overflow and " (the overflow table could not be written)"
      or " (use_overflow_table = true sends it whole)",
    suppressed > 0 and fmt(" (and %d more since the last report)", suppressed) or "")
end

-- The plan the decoder reads w's payloads with: the columns they carry now (set_columns).
function Notifier:_plan(w)
  w.plan = core.plan({ schema = w.schema, table = w.table, op = w.op, pk = w.pk, extra = w.xcols, old = w.old,
    all = w.all, gone = w.goneset }, w.info, self._nulls)
  return w.plan
end

-- The event of a payload, decoded by the binding (the one decoder of the wire format in
-- src/dialect.h, with a plan made once per watch), or nil after logging why it is skipped.
-- A payload whose columns are not the plan's (a watched column renamed or dropped, one
-- added to a table watched whole) has the table read again, and is decoded again when the
-- watch changed; a truncated one too, unless a column it names is known to be gone.
-- Every event's methods: ev:json() -> the event as one JSON object (SQL NULL: null; a float
-- JSON cannot carry, NaN or infinite: null).
local evjson = require("cjson.safe").new()
evjson.encode_invalid_numbers("null")
evjson.encode_sparse_array(true)
local EventMeta = { __index = {
  json = function(ev)
    if type(ev) ~= "table" then fail(2, "json is a method: call ev:json(), not ev.json()") end
    return assert(evjson.encode(ev))
  end,
} }

function Notifier:_event(w, channel, payload, ts)
  if w.read then w.arrived = w.arrived + 1 end -- a backfill's row: the next chunk waits for them
  local ev, why, flag = decode(w.plan or self:_plan(w), payload, channel, ts)
  local drift = ev and flag
  if not ev and flag then -- a newer wire version: this release cannot read it (nil, the reason)
    return nil, why
  elseif not ev then
    self:_log("warn", "skipping malformed payload on channel %s: %s: %s", channel, why, shorten(payload))
    return nil
  end
  if drift and self:_recheck(w, ts) then ev = decode(w.plan or self:_plan(w), payload, channel, ts) or ev end
  if ev.truncated then
    if #w.gone == 0 then self:_recheck(w, ts) end
    if #w.gone == 0 then self:_warn_truncated(w, channel, ts) end -- else the gone column is what was said
  end
  return setmetatable(ev, EventMeta)
end

local ERROR_LOG_INTERVAL = 10 -- seconds between two reports of one handler's failures (or of one
-- table's unreadable events)

-- An event in a wire version newer than this release reads: said at error level (once per
-- interval, with a count), and a durable consumer's is dead-lettered with the reason, so that
-- an upgraded process replays it (--dead-letters lists it) instead of its being lost.
function Notifier:_newer(w, channel, seq, payload, why)
  local dead_ok, dead_err
  if seq and self._durable then
    if self:_query_taken() then
      dead_err = "the query connection is a handler's now"
    else
      dead_ok, dead_err = dead.write(self, self._consumer, channel, seq, payload, "sqlnotify: " .. why, 0)
    end
  end
  local state = w.newer_said or { what = fmt("reading %s on %s (a newer wire version)", w.op, w.name) }
  w.newer_said = state
  local suppressed = rate_limit(state, core.now(), ERROR_LOG_INTERVAL, self._reports)
  if suppressed then
    self:_log_with({ table = w.name, operation = w.op, error = why }, "error", "cannot read %s on %s%s: %s%s", w.op,
      w.name, suppressed > 0 and fmt(" (and %d more since the last report)", suppressed) or "", why,
      dead_ok and "; dead-lettered" or dead_err and "; it could not be dead-lettered, and is skipped: "
      .. tostring(dead_err) or "; skipped (live)")
  end
end

local RECHECK_INTERVAL = 5 -- seconds between two reads of a table's columns that its events prompt

-- Read w's table from the catalog again (at most once per RECHECK_INTERVAL unless forced) and
-- bring every watch of it up to date (_adapt). true when w changed.
function Notifier:_recheck(w, now, force)
  local key = w.schema .. "\0" .. w.table
  local last = self._rechecked[key]
  if not force then
    if last and now - last < RECHECK_INTERVAL then return false end
    self._rechecked[key] = now
  end
  self:_forget_table(w.info)
  local ok, info = pcall(self._table, self, { schema = w.schema, table = w.table }, 1)
  if not ok then
    self:_log("debug", "cannot read the columns of %s again: %s", w.name, one_line(info):sub(12))
    return false
  end
  local changed = false
  for _, x in ipairs(self._watches) do
    if x.schema == w.schema and x.table == w.table and self:_adapt(x, info) and x == w then changed = true end
  end
  return changed
end

-- While a column a watch names is gone, its table is read again every RECHECK_INTERVAL: a
-- trigger made while it was gone does not read it (the plpgsql one; the C trigger looks it
-- up at each call), so nothing in the events would say that it came back (a column renamed
-- and renamed back). The timer stops when no watch misses a column.
function Notifier:_watch_gone()
  if self._gone_timer or not self._started then return end
  local ref = setmetatable({ self }, { __mode = "v" })
  self._gone_timer = core.every(RECHECK_INTERVAL, function()
    local me = ref[1]
    if not me then return end
    local seen, any = {}, false
    for _, w in ipairs(me._watches) do
      local key = w.schema .. "\0" .. w.table
      if #w.gone > 0 and not seen[key] then
        seen[key] = true
        me:_recheck(w, core.now(), true)
      end
    end
    for _, w in ipairs(me._watches) do any = any or #w.gone > 0 end
    if not any and me._gone_timer then
      me._gone_timer:stop()
      me._gone_timer = nil
    end
  end)
end

-- '"a"' or '"a", "b"'
local function quoted_list(list)
  local out = {}
  for i, c in ipairs(list) do out[i] = fmt("%q", c) end
  return concat(out, ", ")
end

-- Bring w up to date with its table as info describes it: a column it names that is gone
-- (renamed or dropped) is said once at error level and no longer read, one back is carried
-- again, extra_columns = "*" follows the table; its trigger is then made again for the table
-- as it is (a new marker). true when anything changed.
function Notifier:_adapt(w, info)
  local extra, gone = columns_now(w, info)
  local was = w.goneset
  w.info = info
  if same_list(gone, w.gone) and same_list(extra, w.xcols) then return false end
  local new, back, trig = {}, {}, 0
  for _, c in ipairs(gone) do
    if not was[c] then new[#new + 1] = c end
  end
  for _, c in ipairs(w.gone) do
    if info.columns[c] then back[#back + 1] = c end
  end
  for _, c in ipairs(w.trigger) do if info.columns[c] then trig = trig + 1 end end
  set_columns(w, extra, gone)
  w.marker = watch_marker(w, info)
  if #new > 0 then
    self:_log("error", "%s %s of %s %s gone (renamed or dropped): %s", #new > 1 and "columns" or "column",
      quoted_list(new), w.name, #new > 1 and "are" or "is",
      w.keygone and fmt("the %s watch's events carry nothing of the row until it is declared again", w.op)
        or fmt("the %s watch's events carry the other columns%s", w.op,
          #w.trigger > 0 and trig == 0 and "; with no trigger column left it fires no more" or ""))
  end
  if #back > 0 then
    self:_log("info", "%s %s of %s %s back: the %s watch carries %s again", #back > 1 and "columns" or "column",
      quoted_list(back), w.name, #back > 1 and "are" or "is", w.op, #back > 1 and "them" or "it")
  end
  if w.all then
    self:_log("info", "the %s watch on %s (extra_columns = \"*\") follows the table's columns: %s", w.op, w.name,
      #extra > 0 and concat(extra, ", ") or "(none but the key)")
  end
  if not w.keygone then self:_reinstall(w) end -- without its key it sends nothing of the row anyway
  if #gone > 0 then self:_watch_gone() end
  return true
end

-- Make w's trigger again for its table as it is now: at once from the loop (not inside the
-- dispatch that noticed the change), or by the next check when that fails.
function Notifier:_reinstall(w)
  local due = w.reinstall
  w.reinstall = true
  if due or not self._started then return end
  local ref = setmetatable({ self }, { __mode = "v" })
  core.after(0, function()
    local me = ref[1]
    if me then me:_reinstall_now(w) end
  end)
end

function Notifier:_reinstall_now(w)
  if not w.reinstall or not self._started or self._closed then return end
  local ok, err = self:_install(w)
  if ok then
    w.reinstall = nil
  else
    self:_log("warn", "cannot make the trigger for %s on %s again for the table as it is now: %s (tried again at "
      .. "the next check)", w.op, w.name, one_line(err):sub(12))
  end
end

local function by_seq(a, b) return a.seq < b.seq end

-- The error a handler raised, beside the traceback xpcall returns.
local raised
local mismatch = filters.mismatch
local function with_traceback(e)
  raised = e
  local msg = tostring(e)
  local tb = traceback(msg, 2)
  -- the frames from the runtime's xpcall on are the runtime's, the same at every failure: the
  -- traceback ends with the handler's own
  local cut = tb:find("\n\t[C]: in function 'xpcall'", #msg + 1, true)
  return cut and tb:sub(1, cut - 1) or tb
end

-- What with_traceback made, as the error and its traceback ("stack traceback:\n..."), so that
-- the JSON log has the traceback as a field and the text log prints it as it always did.
local TB_MARK = "\nstack traceback:\n"
local function split_traceback(err, raw)
  err = tostring(err)
  local msg = tostring(raw)
  if err:sub(1, #msg) == msg and err:sub(#msg + 1, #msg + #TB_MARK) == TB_MARK then
    return msg, err:sub(#msg + 2)
  end
  local at = err:find(TB_MARK, 1, true)
  if at then return err:sub(1, at - 1), err:sub(at + 1) end
  return err, nil
end

-- "<what> failed: <error>", the traceback a field (fields: more of them, or nil).
function Notifier:_log_failure(fields, what, err, raw)
  local msg, tb = split_traceback(err, raw)
  fields = fields or {}
  fields.error, fields.traceback = msg, tb
  self:_log_with(fields, "error", "%s failed: %s", what, msg)
end

-- Every n:on("error") handler, with a message and a table saying where it came from.
function Notifier:_emit_error(message, context)
  local fns = self._on.error
  for i = 1, #fns do
    local ok, err = xpcall(fns[i], with_traceback, message, context)
    if not ok then self:_log_failure(nil, "error handler", err, raised) end
  end
end

-- The ids of a batch's events, for a log line (the first few).
local function batch_ids(evs)
  local ids = {}
  for i = 1, math.min(#evs, 5) do ids[i] = show_id(evs[i].id) or "?" end
  return concat(ids, ", ") .. (#evs > 5 and ", ..." or "")
end

-- A handler that fails on every event costs one log line per interval, not a flood;
-- the count of those not reported is printed with the next report or at stop.
function Notifier:_handler_failed(sub, ev, err, raw, after)
  local id = show_id(ev.id)
  local head = fmt("%s failed%s", sub.what, id and " for id " .. id or ev.id == nil and ev[1] and
    fmt(" for a batch of %d event(s), ids %s", #ev, batch_ids(ev)) or "")
  local suppressed = rate_limit(sub, core.now(), ERROR_LOG_INTERVAL, self._reports)
  if suppressed then
    local msg, tb = split_traceback(err, raw)
    local one = ev.operation == nil and type(ev[1]) == "table" and ev[1] or ev -- (a handler may change it)
    local schema, tname = one.schema, one.table
    self:_log_with({ table = type(tname) == "string" and (type(schema) == "string" and schema .. "." or "") .. tname
      or nil, operation = one.operation, error = msg, traceback = tb }, "error", "%s%s%s: %s", head,
      suppressed > 0 and fmt(" (and %d more failure(s) since the last report)", suppressed) or "", after, msg)
  end
  if #self._on.error > 0 then
    self:_emit_error(head .. ": " .. tostring(raw),
      { source = "handler", event = ev, subscription = sub, error = raw, traceback = err })
  end
end

-- One handler: nil when it returned, else the traceback and the error it raised (logged at
-- once, with the attempt when it is retried).
function Notifier:_call(sub, ev, attempt)
  if sub.batch and ev.operation then ev = { ev } end -- a batch subscription's event replayed alone
  local mc = sub.watch.mc
  if metrics.on and (attempt or 1) == 1 then -- the handler-start histogram: one C call (the hot path)
    local ts = ev.timestamp
    if ts then
      mc.observe(ev.written_at or ts)
    else -- a batch: each of its events, at one time
      local now, observe = core.now(), mc.observe
      for i = 1, #ev do
        local e = ev[i]
        if type(e) == "table" then observe(e.written_at or e.timestamp, now) end
      end
    end
  end
  local ok, err = xpcall(sub.handler, with_traceback, ev)
  if ok then return nil end
  mc.failures = mc.failures + 1
  local raw = raised
  local policy = sub.retry or self._retry
  self:_handler_failed(sub, ev, err, raw, policy.attempts == 1 and "" or fmt(" (attempt %d of %s)", attempt or 1,
    policy.attempts == math.huge and "unlimited" or tostring(policy.attempts)))
  return err, raw
end

-- The active subscriptions of cands whose filters the event passes, appended to list.
local function passing(cands, w, ev, nulls, list)
  for i = 1, #cands do
    local sub = cands[i]
    if sub.active and not mismatch(sub, w, ev, nulls) then list[#list + 1] = sub end
  end
  return list
end

-- Subscribers of one event, in subscription order, filters applied; appended to list.
function Notifier:_matching(chan, w, ev, list)
  local cands = filters.candidates(chan, w, ev, self._nulls)
  if not cands then return list end
  return passing(cands, w, ev, self._nulls, list)
end

-- -l debug: every subscriber of the channel looked at, and one line saying which ran and
-- which filter kept each other one out.
function Notifier:_matching_debug(chan, w, ev, list)
  local subs = filters.indexed(chan)
  local ran, skipped = {}, {}
  for _, sub in ipairs(subs) do
    if sub.active then
      local f, v, known = mismatch(sub, w, ev, self._nulls)
      if f then
        skipped[#skipped + 1] = fmt("%s (%s%s is %s, not %s)", sub.name, f.old and "old " or "", f.column,
          known and show(v == nil and filters.null or v) or "not in the event", show(f.value))
      else
        ran[#ran + 1] = sub.name
        list[#list + 1] = sub
      end
    end
  end
  local id = show_id(ev.id)
  self:_log("debug", "event %s on %s%s (channel %s): ran %s%s", w.op, w.name, id and " id " .. id or "",
    ev.channel or w.channel, #ran > 0 and concat(ran, ", ") or "none",
    #skipped > 0 and "; filters did not match: " .. concat(skipped, ", ") or "")
  return list
end

-- Run the handlers of one event on the calling coroutine (delivery's): all its subscribers,
-- or, for a retry, the subscriptions that failed. Returns nil when every one returned, else
-- the first failure's traceback, the subscriptions that failed, and the first's error value.
function Notifier:_run(w, ev, subs, attempt, with_batches)
  if not subs then
    local chan = self._subs[w.channel]
    if not chan then return nil end
    if with_batches and chan.nb > 0 then -- a replayed event: batch subscriptions get it alone
      subs = self:_batch_matching(chan, w, ev, self:_matching(chan, w, ev, {}))
      sort(subs, by_seq)
      return self:_run(w, ev, subs, attempt)
    end
    if chan.n == 0 then return nil end
    local all = chan.all
    if chan.n == 1 and #all == 1 and not self._debug then -- the common case: no list building
      local sub = all[1]
      local err, raw = self:_call(sub, ev, attempt)
      if not err then return nil end
      return err, { sub }, raw, sub
    end
    subs = self._debug and self:_matching_debug(chan, w, ev, {}) or self:_matching(chan, w, ev, {})
  end
  local first, failed, raw1, sub1
  for i = 1, #subs do
    local sub = subs[i]
    if sub.active then
      local err, raw = self:_call(sub, ev, attempt)
      if err then
        if not first then first, raw1, sub1 = err, raw, sub end
        failed = failed or {}
        failed[#failed + 1] = sub
      end
    end
  end
  return first, failed, raw1, sub1
end

-- The batch = N subscriptions of one event, filters applied; appended to list.
function Notifier:_batch_matching(chan, w, ev, list)
  return passing(chan.batch, w, ev, self._nulls, list)
end

-- Run a batch's handler on the calling coroutine (delivery's): nil when it returned, else
-- what _run returns.
function Notifier:_run_batch(job)
  local sub = job.sub
  if not sub.active then return nil end
  local evs = {}
  for i, it in ipairs(job.items) do evs[i] = it.ev end
  local err, raw = self:_call(sub, evs, job.attempt)
  if err then return err, { sub }, raw, sub end
  return nil
end

-- The message of a failure, without its traceback.
local function message_of(err)
  return (tostring(err):match("^[^\n]*"))
end

-- The event failed on every attempt: into the dead-letter table (durable), or logged with its
-- payload (live). true when that is done; nil when the table could not be written (the caller
-- tries again: nothing is lost).
function Notifier:_dead_letter(job, err)
  if job.items then -- a batch: each of its events, once
    for _, it in ipairs(job.items) do
      if not it.dead then
        it.attempt, it.policy = job.attempt, job.policy
        if not self:_dead_letter(it, err) then return nil end
      end
    end
    job.dead = true
    return true
  end
  local ev, w = job.ev, job.w
  local id = show_id(ev.id)
  local what = fmt("%s on %s%s", w.op, w.name, id and " id " .. id or "")
  local info = { error = err, attempts = job.attempt, channel = job.channel or w.wire, seq = ev.seq,
    payload = job.payload, replayed = job.replay }
  if self._durable then
    if self:_query_taken() then
      return nil -- the query connection is a handler's now (its statement, its transaction): tried again
    end
    local ok, e
    if job.replay then
      ok, e = dead.again(self, job.replay, err, job.attempt)
    else
      ok, e = dead.write(self, self._consumer, info.channel, ev.seq, job.payload or "", err, job.attempt)
    end
    if not ok then
      local now = core.now()
      if now - (self._dl_said or -math.huge) >= ERROR_LOG_INTERVAL then
        self._dl_said = now
        self:_log("error", "cannot write the dead letter of %s (%s); it is tried again, and the consumer's "
          .. "position waits for it", what, one_line(e))
      end
      return nil
    end
    info.id = ok ~= true and ok or nil
  end
  if not job.replay then w.mc.dead = w.mc.dead + 1 end -- a replay failing again stays the one dead letter
  if self._durable or job.attempt > 1 then -- a live event's single failure was said already
    -- one line per interval, however many fail; the count of the others at the next one or at stop
    local st = self._gave_up
    if not st then
      st = { what = self._durable and "events moved to the dead letters" or "live events given up" }
      self._gave_up = st
    end
    local suppressed = rate_limit(st, core.now(), ERROR_LOG_INTERVAL, self._reports)
    local more = suppressed and suppressed > 0 and fmt(" (and %d more since the last report)", suppressed) or ""
    if suppressed and self._durable then
      self:_log("error", "%s failed %d time(s): %s the dead letters (sqlnotify-lua --dead-letters URL %s)%s: %s", what,
        job.attempt, job.replay and "still in" or "moved to", self._consumer, more, message_of(err))
    elseif suppressed then
      self:_log("error", "%s failed %d time(s), given up%s%s: %s; payload: %s", what, job.attempt,
        job.attempt < job.policy.attempts and " (more than 10000 live events held)" or "", more, message_of(err),
        shorten(job.payload or ""))
    end
  end
  job.dead = true
  local fns = self._on.dead_letter
  for i = 1, #fns do
    local ok, e = xpcall(fns[i], with_traceback, ev, info)
    if not ok then self:_log_failure(nil, "dead_letter handler", e, raised) end
  end
  return true
end

-- Called by the binding with a batch: batch[2i-1] channel, batch[2i] payload, seqs[i] its
-- journal position (durable mode). Every event is taken; returns how many of the first ones
-- are done (the binding acks those); the rest are acked as they finish (delivery.lua), the
-- driver holding meanwhile.
function Notifier:_dispatch(batch, n, ts, seqs, written)
  local by_channel, subs, q = self._by_channel, self._subs, self._q
  self._debug = core.log_level() == "debug"
  -- done: how many events from the batch's start are finished, which the caller acknowledges.
  -- An event of an earlier batch still in flight (waiting, or retrying) comes before them all:
  -- then none is, whatever finishes here; the queue's records acknowledge them once it is done.
  local done, prefix, buffered, hi = 0, q.ph > q.pt, false, self._bf_seq or 0
  for i = 1, 2 * n, 2 do
    if stopping() then break end -- SIGINT/SIGTERM arrived: no handler starts after it
    local channel = batch[i]
    local w = by_channel[channel]
    local chan = w and subs[w.channel]
    local seq = seqs and seqs[(i + 1) // 2]
    if seq and seq > hi then hi = seq end
    local wat = written and written[(i + 1) // 2]
    local finished
    if w and w.read and batch[i + 1]:byte(1) ~= 123 then -- no JSON object: a backfill's mark (backfill.lua)
      if self._started then self:_backfill_mark(w, batch[i + 1]) end
      finished = q:skip(seq)
    elseif chan and (chan.n > 0 or chan.nb > 0) and self._started then
      local ev, newer = self:_event(w, w.channel, batch[i + 1], ts)
      if ev and not w.read and pace.fresh(ts, wat) then self._seen = self._seen + 1 end -- the pace's writers
      if newer then self:_newer(w, channel, seq, batch[i + 1], newer) end
      local track = ev and self._bf_track[w.name]
      if track then self:_backfill_touch(track, w, ev) end
      local bsubs = ev and chan.nb > 0 and self:_batch_matching(chan, w, ev, {})
      if bsubs and #bsubs > 0 then -- batch subscriptions take it too: its record waits for them
        w.mc.delivered = w.mc.delivered + 1
        ev.seq, ev.written_at = seq, wat
        local rec
        if chan.n > 0 then
          finished, rec = q:add(w, ev, seq, self._retry, batch[i + 1], channel, { left = #bsubs })
        else
          finished, rec = false, q:part(seq, #bsubs)
        end
        for b = 1, #bsubs do
          q:buffer(bsubs[b], { w = w, ev = ev, seq = seq, payload = batch[i + 1], channel = channel,
            rec = seq and rec or nil })
        end
        buffered = true
      elseif ev and chan.n > 0 then
        w.mc.delivered = w.mc.delivered + 1
        ev.seq, ev.written_at = seq, wat
        finished = q:add(w, ev, seq, self._retry, batch[i + 1], channel)
      elseif ev then
        finished = q:skip(seq)
      else
        finished = q:skip(seq)
      end
    else
      if self._debug and w and self._started then
        self:_log("debug", "event %s on %s (channel %s): no subscriber", w.op, w.name, channel)
      end
      finished = q:skip(seq)
    end
    if prefix and finished then
      done = (i + 1) // 2
    else
      prefix = false
    end
  end
  if buffered then q:flush() end
  -- how far the reader has come, and when it last moved: a chunk read into memory waits for
  -- its marks while the reader works its way through the journal below them (backfill.lua)
  if hi > (self._bf_seq or 0) then self._bf_seq, self._bf_seq_at = hi, core.now() end
  if seqs and q.ph <= q.pt and not q.held then q.held = self._h:hold(true) end
  if self._catchup and seqs then
    self._catchup.seen = self._catchup.seen + n
    self:_check_caught_up()
  end
  return done
end

-- The retry policy of an event whose handlers failed: theirs (the longest), or the notifier's.
function Notifier:_policy_of(subs)
  local p = self._retry
  for i = 1, #subs do
    local r = subs[i].retry
    if r and (p == self._retry or r.attempts > p.attempts) then p = r end
  end
  return p
end

local D = { methods = Notifier, event_meta = EventMeta, with_traceback = with_traceback }

--- bind(helpers): notifier.lua's helpers these methods use.
function D.bind(h)
  fail, one_line, shorten = h.fail, h.one_line, h.shorten
  watch_marker, set_columns, columns_now = h.watch_marker, h.set_columns, h.columns_now
end

--- raised() -> the error the last handler that failed under with_traceback raised.
function D.raised() return raised end

return D
