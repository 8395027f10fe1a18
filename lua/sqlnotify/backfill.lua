--- sqlnotify.backfill: the rows a table had before (SPEC §8.3). A backfill reads its table in
-- key order, one chunk per transaction, and writes each chunk's rows into the journal as
-- events of the table's "read" watch (its channel is this consumer's alone), beside the
-- changes the triggers write. From there they take the delivery path every event takes:
-- retries, dead letters, concurrency, a group's shares, and an acknowledgement that survives
-- kill -9. Where the chunk stands is saved in the same transaction as its rows
-- (sqlnotify.backfills), so a backfill resumes from the last chunk that committed, and no
-- chunk is written twice.
--
-- Consistent with the stream, per key: a chunk locks its rows for its transaction (NOWAIT: it
-- never waits on a writer, so it is never in a deadlock, and a writer waits at most one
-- chunk). A change committed before the lock was taken was written to the journal before
-- the chunk's row, and the row carries its result; a change to a locked row commits after
-- the chunk, and its journal row comes after the chunk's. SQLite has one writer at a time:
-- the chunk's transaction is all it needs. docs/design.md has the argument. On PostgreSQL a
-- chunk's lock, copy and save are one statement (backfill_chunk), so its rows stay locked for
-- that statement and the commit only.
--
-- On PostgreSQL, a member that holds every share of its consumer reads its chunks into memory
-- instead (backfill_read): no lock, no row written but a mark per share into the journal,
-- after the chunk's snapshot. The chunk waits for its marks; a change of one of its keys that
-- arrives meanwhile drops that key's row (the change is as new as the row, or newer); then its
-- rows go to the queue. Where it ends is saved once its rows are done, so kill -9 reads it again.
--
-- These are methods of the notifier: notifier.lua copies them in and binds its helpers.
local core = require("sqlnotify.core")
local statements = require("sqlnotify.statements")
local delivery = require("sqlnotify.delivery")
local json = require("cjson.safe").new()

local fmt, concat = string.format, table.concat

local fail, one_line, check_notifier, check_options, error_level -- notifier.lua's, bound by B.bind

local Notifier = {}
local B = { methods = Notifier } -- the module; MARK_WAIT is a field of it, for the specs

local DEFAULT_CHUNK = 1000
local MAX_CHUNK = 100000
local PROGRESS_EVERY = 5  -- seconds between two progress lines
local PACE_TICK = 0.5     -- seconds at most between two steps while a chunk waits for the rate
local AHEAD = 2           -- chunks written and not yet seen arriving before the next waits
local IDLE_AHEAD = 1      -- seconds without a read row arriving after which the next chunk goes anyway,
                          -- where consumers are groups (other members hold the shares its rows went to)
local FAIL_SAY_AFTER = 10 -- seconds of failing chunks before a warning (a held row fails a few)
local MEM_AHEAD = 3       -- chunks read into memory and not yet done before the next waits
local MARK_WAIT = 30      -- seconds a chunk read into memory waits for its marks before it is read again,
                          -- counted from when the reader last moved below them
-- the marks of this process's chunks: no mark of another process, or one left by an earlier run
B.MARK_WAIT = MARK_WAIT
local MARK = fmt("mark %08x%08x ", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
local marks = 0

-- The key of a table in sqlnotify.backfills: schema.table as the notifier names it.
local function tbl_of(w) return w.schema .. "." .. w.table end

-- A key value kept as text with its Lua type, so that it goes back as it came.
local function key_text(v)
  if math.type(v) == "integer" then return "i" .. v end
  if math.type(v) == "float" then return "f" .. fmt("%.17g", v) end
  if type(v) == "boolean" then return v and "bt" or "bf" end
  return "s" .. tostring(v)
end

local function key_value(t)
  local tag, s = t:sub(1, 1), t:sub(2)
  if tag == "i" then return math.tointeger(s) end
  if tag == "f" then return tonumber(s) end
  if tag == "b" then return s == "t" end
  return s
end

local function encode_key(row, n)
  local out = {}
  for i = 1, n do out[i] = key_text(row["k" .. i]) end
  return json.encode(out)
end

local function decode_key(text)
  local t = text and json.decode(text)
  if type(t) ~= "table" then return nil end
  local out = {}
  for i, s in ipairs(t) do out[i] = key_value(s) end
  return out
end

-- The statements of one backfill, from its dialect's templates: the columns it reads are
-- those of its watch the table has now.
local function build(n, w, where, chunk)
  local s = statements.of(n)
  local q = function(name) return statements.quote(n, name) end
  n:_forget_table(w.info)
  local got, info = pcall(n._table, n, { schema = w.schema, table = w.table }, 1)
  if not got then return nil, info end
  w.info = info -- what the next build forgets
  local cols = {}
  for _, c in ipairs(w.xcols) do
    if info.columns[c] and not w.pkindex[c] then cols[#cols + 1] = c end
  end
  for _, c in ipairs(w.pk) do
    if not info.columns[c] then return nil, fmt("key column %q of %s is gone", c, w.name) end
  end
  local payload, hash = n._h:row_sql({ schema = w.schema, table = w.table, channel = w.channel, wire = w.wire,
    capture = w.capture, marker = w.marker, opcode = 0, pk = w.pk, extra = cols })
  if not payload then return nil, hash end
  local keys, keys_as, np = {}, {}, #w.pk
  local ckeys, ckeys_desc, key_text = {}, {}, {}
  for i, c in ipairs(w.pk) do
    keys[i] = "r." .. q(c)
    keys_as[i] = "r." .. q(c) .. " AS k" .. i
    ckeys[i], ckeys_desc[i] = "k" .. i, "k" .. i .. " DESC"
    key_text[i] = "'s' || k" .. i .. "::text" -- of r0's columns, for the chunk's last row only
  end
  local function bound(op, first)
    local p = {}
    for i = 1, np do p[i] = fmt(s.param, first + i - 1) end
    return fmt("(%s) %s (%s)", concat(keys, ", "), op, concat(p, ", "))
  end
  local holes = {
    table = q(w.schema) .. "." .. q(w.table), keys = concat(keys, ", "), keys_as = concat(keys_as, ", "),
    where = where or "1 = 1", payload = payload, hash = hash or "0", limit = tostring(math.tointeger(chunk)),
    ckeys = concat(ckeys, ", "), ckeys_desc = concat(ckeys_desc, ", "),
    key_text = "pg_catalog.json_build_array(" .. concat(key_text, ", ") .. ")::text",
  }
  local function fill(text, extra)
    return (text:gsub("{([%w_]+)}", function(k) return extra[k] or holes[k] end))
  end
  local truth = "1 = 1"
  if s.backfill_chunk then -- the chunk in one statement (PostgreSQL), or into memory
    return {
      count = fill(s.backfill_count, {}),
      chunk_first = fill(s.backfill_chunk, { after = truth }),
      chunk_next = fill(s.backfill_chunk, { after = bound(">", 4) }),
      read_first = s.backfill_read and fill(s.backfill_read, { after = truth }),
      read_next = s.backfill_read and fill(s.backfill_read, { after = bound(">", 4) }),
      nkeys = np,
    }
  end
  return {
    count = fill(s.backfill_count, {}),
    lock_first = fill(s.backfill_lock, { after = truth }),
    lock_next = fill(s.backfill_lock, { after = bound(">", 1) }),
    copy_first = fill(s.backfill_copy, { after = truth, upto = bound("<=", 2) }),
    copy_next = fill(s.backfill_copy, { after = bound(">", 2), upto = bound("<=", 2 + np) }),
    nkeys = np,
  }
end

-- A statement of ours, its table made first when it is missing.
local function run(n, key, ...) return statements.run_made(n, "backfill_create", key, ...) end

-- A statement on the backfills' connection h: asynchronous where the driver has it.
local function querier(h)
  return function(sql, ...)
    local rows, err, in_tx = delivery.await("a backfill", h.query_start, h, sql, ...)
    if rows == nil and err == false then return h:query(sql, ...) end -- no asynchronous call here
    return rows, err, in_tx
  end
end

local function count_of(v) return math.tointeger(tonumber(v) or 0) or 0 end

-- Start (mode "start": over any earlier one) or, for start_at = "snapshot", make once ("snapshot")
-- w's backfill; then run it when it is running. true, or nil and why; nothing is written when
-- the condition or the table cannot be read.
function Notifier:_backfill_begin(w, where, chunk, mode)
  local plan, err = build(self, w, where, chunk)
  if not plan then return nil, err end
  local rows
  rows, err = self._h:query(plan.count)
  if not rows then
    return nil, fmt("backfill of %s cannot read the table%s: %s", w.name,
      where and fmt(" where %s", where) or "", one_line(err):gsub("^sqlnotify: ", ""))
  end
  local total = count_of(rows[1] and rows[1].n)
  local job = self._backfills[w]
  if job and job.in_chunk then
    -- its chunk holds the backfill's row (PostgreSQL: on the other connection, in a
    -- transaction the loop must finish): made again in its turn, after that chunk
    job.replace = { where = where, chunk = chunk, total = total, mode = mode }
    return true
  end
  return self:_backfill_make(w, mode, where, chunk, total, plan)
end

-- Write w's backfill (mode as _backfill_begin's) and take it up.
function Notifier:_backfill_make(w, mode, where, chunk, total, plan)
  local rows, err = run(self, mode == "start" and "backfill_start" or "backfill_snapshot", self._consumer, tbl_of(w),
    w.wire, where, chunk, total)
  if not rows then return nil, err end
  return self:_backfill_resume(w, plan)
end

-- Take up w's backfill where sqlnotify.backfills says it stands, when it is running.
function Notifier:_backfill_resume(w, plan)
  local rows, err = run(self, "backfill_get", self._consumer, tbl_of(w))
  if not rows then return nil, err end
  local r = rows[1]
  if not r or r.state ~= "running" then return true end
  if r.wire ~= w.wire then
    -- made by a release or a watch whose read rows went to another channel: read them on this one
    self:_log("info", "backfill of %s: its rows go to this watch's channel now", w.name)
  end
  if not plan then
    local e
    plan, e = build(self, w, r.where_sql, count_of(r.chunk))
    if not plan then return nil, e end
  end
  local old = self._backfills[w]
  if old then self:_backfill_drop(old) end
  local job = {
    w = w, plan = plan, chunk = count_of(r.chunk), done = count_of(r.rows_done), total = count_of(r.total),
    where = r.where_sql, wrote = 0, t0 = core.now(), moved = core.now(), said = core.now(), said_done = 0,
    ready = {}, -- chunks read into memory whose marks came, their rows going to the queue
  }
  job.base, job.said_done = job.done, job.done -- the rate counts this run's rows only
  w.arrived = w.arrived or 0
  job.seen, job.base_arrived = w.arrived, w.arrived
  self._backfills[w] = job
  self:_log("info", "backfill of %s: %s %d rows%s in chunks of %d", w.name, job.done > 0 and "resuming after"
    .. fmt(" %d of", job.done) or "reading", job.total, job.where and fmt(" where %s", job.where) or "", job.chunk)
  self:_backfill_go()
  return true
end

-- The connection the backfills' chunks run on, opened for them: a chunk's transaction never
-- waits behind a handler's n:query, nor holds up a dead letter or n:backfills().
function Notifier:_backfill_conn()
  if self._bh then return self._bh end
  local ok, h, err = pcall(core.open, self._url, { use_logger = self._use_logger })
  if not ok then return nil, h end
  self._bh = h
  return h, err
end

function Notifier:_backfill_release()
  if self._bh and next(self._backfills) == nil then
    self._bh:close()
    self._bh = nil
  end
end

-- Run the running backfills in one coroutine of the loop, a step of each in turn, on their
-- own connection (on PostgreSQL without blocking the loop, which delivers the last chunk's rows
-- meanwhile).
function Notifier:_backfill_go()
  if self._bf_running or not self._started then return end
  self._bf_running = true
  local ref = setmetatable({ self }, { __mode = "v" })
  delivery.spawn(function()
    while true do
      local me = ref[1]
      if not me or not me._started or me._closed or next(me._backfills) == nil then break end
      local now, soonest = core.now(), math.huge
      for _, job in pairs(me._backfills) do
        if not job.stopped and (job.at or 0) <= now then
          local ok, delay = pcall(me._backfill_step, me, job)
          if not ok then -- the connection failed under it: said, and tried again
            me:_log("warn", "backfill of %s: %s", job.w.name, (one_line(delay):gsub("^sqlnotify: ", "")))
            if me._bh then me._bh:close() me._bh = nil end
            delay = 1
          end
          job.at = core.now() + (delay or 0)
          me:_backfill_keep()
          if me._forget then me:_backfills_forget(me._forget) end
        end
        if not job.stopped then soonest = math.min(soonest, job.at or 0) end
      end
      local wait = soonest - core.now()
      me = nil
      if wait > 0 and wait < math.huge then delivery.sleep(wait) end
    end
    local me = ref[1]
    if me then
      me._bf_running = false
      me:_backfill_keep()
      me:_backfill_release()
    end
  end)
end

-- A chunk statement's arguments: args, then the key the chunk goes on after (if any).
local function with_after(args, after, nkeys)
  for i = 1, after and nkeys or 0 do args[#args + 1] = after[i] end
  return args
end

-- A progress line every PROGRESS_EVERY seconds.
function Notifier:_backfill_progress(job, now)
  if now - job.said < PROGRESS_EVERY then return end
  local rate = (job.done - job.said_done) / (now - job.said)
  local left = math.max(job.total - job.done, 0)
  local cap = self._bf_pace and self._bf_pace.cap
  self:_log("info", "backfill of %s: %d of about %d rows (%.0f rows/s%s)%s", job.w.name, job.done, job.total, rate,
    cap and fmt(", paced to at most %.0f for the writers", cap) or "",
    rate > 0 and fmt(", about %.0f s left", left / rate) or "")
  job.said, job.said_done = now, job.done
end

-- One step of a running backfill: a chunk, when this process has seen all but about AHEAD
-- chunks of its rows arrive (read into memory: when fewer than MEM_AHEAD are not done).
-- Returns how long to wait before the next step, or nil.
function Notifier:_backfill_step(job)
  local now, w = core.now(), job.w
  local mem = job.chunks
  if job.cancel and not (mem and #mem > 0) then return self:_backfill_cancel_now(job) end
  local re = job.replace
  if re then
    job.replace = nil
    local ok, err = self:_backfill_make(w, re.mode, re.where, re.chunk, re.total)
    if not ok then self:_log("error", "backfill of %s cannot start: %s", w.name, one_line(err)) end
    return nil
  end
  if w.arrived > job.seen then job.seen, job.moved = w.arrived, now end
  local idle = self._caps.groups and now - job.moved >= IDLE_AHEAD
  local behind = job.wrote - (w.arrived - job.base_arrived) >= job.chunk * AHEAD
  if not mem and behind and not idle then return 0.005 end
  local pace, was = self._bf_pace, self._bf_pace and self._bf_pace.cap
  local hold = pace and pace:step(now, self._seen, self._bf_rows)
  if pace and (pace.cap == nil) ~= (was == nil) then
    self:_log("debug", pace.cap and "backfill pace: writers at about %.0f changes/s alone; reading at most %.0f rows/s"
      or "backfill pace: the writers stopped; reading as fast as it goes", pace.base, pace.cap)
  end
  if hold and hold > 0 then return hold end -- the pace measures the writers alone
  if job.last_n then -- the previous chunk's rows, read from job.last_t0: the next waits for the rate
    local rate = self:_backfill_rate()
    local due = rate and job.last_t0 + job.last_n / rate
    if due and now < due then return math.min(due - now, PACE_TICK) end
    job.last_n = nil
  end
  if job.stale then -- the last chunk failed: the table may have changed (a column renamed, dropped)
    local plan = build(self, w, job.where, job.chunk)
    if plan then job.plan, job.stale = plan, nil end
  end
  job.in_chunk = true
  local t0 = now
  local ok, n, err = pcall(function()
    if not mem and not behind and self:_backfill_in_memory(job) then
      mem, job.chunks = {}, {}
      self:_log("info", "backfill of %s: chunks read into memory (this process holds every share)", w.name)
    end
    return (mem and self._backfill_read or self._backfill_chunk)(self, job)
  end)
  job.in_chunk = false
  if not ok then error(n, 0) end
  if job.stopped or self._forget then return nil end
  now = core.now()
  if n == "wait" then return err end
  if n == nil then
    job.stale = true
    job.failing = job.failing or now
    job.delay = math.min((job.delay or 0.01) * 2, 2)
    if now - job.failing >= FAIL_SAY_AFTER and (not job.warned or now - job.warned >= 60) then
      job.warned = now
      self:_log("warn", "backfill of %s cannot read a chunk (for %.0f s now): %s; trying again", w.name,
        now - job.failing, (one_line(err):gsub("^sqlnotify: ", "")))
    end
    return job.delay * (0.5 + math.random())
  end
  job.failing, job.delay, job.warned = nil, nil, nil
  if n == "gone" then
    self:_backfill_drop(job)
    self._backfills[w] = nil
    self:_log("info", "backfill of %s stopped after %d rows: %s", w.name, job.done, err)
    return nil
  elseif n == "busy" then -- another member of the group reads a chunk
    return 0.2
  elseif n == 0 then
    job.stopped = true
    self._backfills[w] = nil
    local secs = now - job.t0
    self:_log("info", "backfill of %s done: %d rows, %d read by this process in %.1f s (%.0f rows/s)", w.name,
      job.done, job.done - job.base, secs, (job.done - job.base) / math.max(secs, 1e-3))
    return nil
  end
  job.wrote, job.moved = job.wrote + (mem and 0 or n), now
  self._bf_rows = self._bf_rows + n
  self:_backfill_progress(job, now)
  job.last_t0, job.last_n = t0, n -- the next step waits for the rate, if any
  return nil
end

-- The rows/s each running backfill may read now: backfill_rate, or under "auto" the pace's cap
-- shared among them; nil: as fast as it goes. Asked again at every step while a chunk waits
-- for it, so the pace keeps measuring and a cap let go or raised shortens the wait.
function Notifier:_backfill_rate()
  local rate = self._bf_rate
  if not rate and self._bf_pace and self._bf_pace.cap then
    local k = 0
    for _, other in pairs(self._backfills) do k = k + (other.stopped and 0 or 1) end
    rate = self._bf_pace.cap / math.max(k, 1)
  end
  return rate
end

-- ===== chunks read into memory (PostgreSQL, a member holding every share)

-- A chunk waiting for its marks is told of every change its table's events bring meanwhile.
local function track(n, c, name)
  local t = n._bf_track[name]
  if not t then
    t = {}
    n._bf_track[name] = t
  end
  t[#t + 1] = c
end

local function untrack(n, c, name)
  local t = n._bf_track[name]
  if not t then return end
  for i = #t, 1, -1 do
    if t[i] == c then table.remove(t, i) end
  end
  if #t == 0 then n._bf_track[name] = nil end
end

-- The chunks from the i-th on are let go (read again): forgotten, and the rows of one being
-- emitted go no further. Its changes are no longer tracked, so a row left in it could follow
-- a newer change of its key.
local function let_go(n, job, i)
  local ch, ready = job.chunks, job.ready
  for j = #ch, i, -1 do
    local c = ch[j]
    untrack(n, c, job.w.name)
    for k = #ready, 1, -1 do
      if ready[k] == c then table.remove(ready, k) end
    end
    ch[j] = nil
  end
end

-- The job stops; its chunks that wait for their marks are let go (not saved: read again).
function Notifier:_backfill_drop(job)
  job.stopped = true
  for _, c in ipairs(job.chunks or {}) do untrack(self, c, job.w.name) end
  job.chunks, job.ready = nil, {}
  self:_backfill_keep()
end

-- The reader's state (dialect.h, status): whether it is down, and how many shares it holds;
-- nothing when it cannot say.
local function status_of(n)
  local ok, down, held = pcall(n._h.status, n._h)
  if ok then return down, held end
end

-- While a backfill reads into memory, this member keeps every share through the balancing
-- (dialect.h, keep): a member that joins takes none until the rows read are done, so none of
-- them meets a change of its key delivered there meanwhile. It then reads through the
-- journal (_backfill_in_memory counts the members), and the shares balance once it is done.
local function keep_shares(n, on)
  if on ~= (n._bf_keep or false) and n._h then
    n._bf_keep = on
    pcall(n._h.keep, n._h, on)
  end
end

function Notifier:_backfill_keep()
  local any = false
  for _, job in pairs(self._backfills) do
    if job.chunks and not job.stopped then any = true end
  end
  keep_shares(self, any)
end

-- Whether every change of w's table that reaches a handler here carries what its read rows
-- carry, under the same key, to handlers without filters: then a change that came after a
-- chunk's snapshot stands for that key's read row, which is dropped. Else a read row could be
-- dropped for a change its handler never gets (filtered out, or without the row's columns),
-- or kept past one (another key): the chunks go through the journal, in commit order.
local function changes_stand_for_rows(n, w)
  for _, x in ipairs(n._watches) do
    local chan = x ~= w and not x.read and x.schema == w.schema and x.table == w.table and n._subs[x.channel]
    if chan and (chan.n > 0 or chan.nb > 0) then
      if chan.nb > 0 or #chan.all ~= chan.n or #x.pk ~= #w.pk then return false end
      for i = 1, #w.pk do
        if x.pk[i] ~= w.pk[i] then return false end
      end
      if x.op ~= "delete" and not x.all then
        if w.all then return false end
        local has = {}
        for _, c in ipairs(x.extra) do has[c] = true end
        for _, c in ipairs(w.extra) do
          if not has[c] then return false end
        end
      end
    end
  end
  return true
end

-- Whether the next chunk goes into memory: on PostgreSQL, where this member holds every share
-- of its consumer (every change of the table comes here, and every mark), no batch
-- subscription takes the read rows (they go the journal's way, to be batched), and the
-- table's changes stand for its rows (above).
function Notifier:_backfill_in_memory(job)
  if not job.plan.read_first then return false end
  local chan = self._subs[job.w.channel]
  if not chan or chan.n == 0 or chan.nb > 0 then return false end
  if not changes_stand_for_rows(self, job.w) then return false end
  local h = self:_backfill_conn()
  local rows = h and querier(h)(statements.of(self).backfill_shares, self._consumer)
  if not rows or not rows[1] or count_of(rows[1].members) > 1 then return false end -- a member joined
  job.nshares = count_of(rows[1].nshares)
  local down, held = status_of(self)
  if not (down == 0 and held ~= nil and held > 0 and held == job.nshares) then return false end
  keep_shares(self, true) -- before the chunk is read: no share leaves while its rows are out
  return true
end

-- A read row is done (returned, or dead-lettered): its chunk is done with its last.
local function read_done(job)
  local c = job.read
  c.left = c.left - 1
  if c.left == 0 and not c.emitting then c.done = true end
end

local key_of = delivery.key_of

-- A change of the table arrived: a chunk waiting for its marks will not deliver that key's row.
function Notifier:_backfill_touch(track_list, w, ev)
  local key = key_of(w, ev)
  local old = ev.old_id ~= nil and key_of(w, { id = ev.old_id }) or nil
  for i = 1, #track_list do
    local t = track_list[i].touched
    t[key] = true
    if old then t[old] = true end
  end
end

-- Every mark of the chunk came: every change its rows carry has arrived before them. Its rows
-- go to the queue in key order, EMIT_SLICE at a time or less when handlers that run inline take
-- EMIT_TIME (the loop goes on between two: the next chunk is read meanwhile, and lease steps,
-- timers and acks are not held behind a slice of slow handlers); a change of one of its keys
-- that arrives before that key's row went drops the row, as one that arrived before the marks did.
local EMIT_SLICE, EMIT_TIME = 500, 0.05

function Notifier:_backfill_emit(job, c)
  c.emitted, c.emitting, c.pos = true, true, 1
  local ready = job.ready
  ready[#ready + 1] = c
  if job.emitter then return end
  job.emitter = true
  delivery.spawn(function()
    local w, q = job.w, self._q
    local more = { on_done = read_done }
    while ready[1] and not job.stopped and not core.stopping() do
      local cur = ready[1]
      local now, touched, rows = core.now(), cur.touched, cur.rows
      if next(touched) == nil then touched = nil end -- no change came: no key to look up
      more.read = cur
      local i, last, till = cur.pos, math.min(cur.pos + EMIT_SLICE - 1, cur.n), now + EMIT_TIME
      while i <= last do
        local p = rows[i].p
        local ev = self:_event(w, w.channel, p, now)
        i = i + 1
        if ev and not (touched and touched[key_of(w, ev)]) then
          w.mc.delivered = w.mc.delivered + 1
          cur.left, cur.sent = cur.left + 1, cur.sent + 1
          if q:add(w, ev, nil, self._retry, p, w.wire, more) == true then
            cur.left = cur.left - 1 -- its handler ran here: the slice ends when its time is up
            if core.now() >= till then break end
          end
        end
      end
      cur.pos = i
      if cur.pos > cur.n then
        table.remove(ready, 1)
        untrack(self, cur, w.name)
        cur.rows, cur.touched, cur.emitting = nil, nil, false
        if cur.left == 0 then cur.done = true end
      end
      if ready[1] then delivery.sleep(0) end
    end
    job.emitter = nil
  end)
end

-- A mark arrived on the read watch's channel: "mark <process> <chunk> <share>".
function Notifier:_backfill_mark(w, payload)
  local job = self._backfills[w]
  local ch = job and job.chunks
  if not ch then return end
  local token, share = payload:match("^(mark %x+ %d+ )(%d+)$")
  if not token then return end
  for _, c in ipairs(ch) do
    if c.token == token then
      if not c.emitted and not c.seen[share] then
        c.seen[share], c.nseen = true, c.nseen + 1
        if c.nseen >= job.nshares and c.rows then self:_backfill_emit(job, c) end
      end
      return
    end
  end
end

-- One step of a backfill read into memory: the chunks done saved, then the next chunk read.
-- Returns as _backfill_chunk does, or "wait" and how long.
function Notifier:_backfill_read(job)
  local now, w, s, tbl, plan = core.now(), job.w, statements.of(self), tbl_of(job.w), job.plan
  local h, herr = self:_backfill_conn()
  if not h then return nil, herr end
  local q, ch = querier(h), job.chunks
  local nd, rows_done = 0, 0
  while ch[nd + 1] and ch[nd + 1].done do
    nd = nd + 1
    rows_done = rows_done + ch[nd].sent -- a dropped row is not counted: a change of its key came instead
  end
  if nd > 0 then -- the chunks done from the first: where the last ends, in one statement
    local ok, err = q(s.backfill_save_from, ch[nd].kt, rows_done, self._consumer, tbl, ch[1].from_text)
    if not ok then return nil, err end
    if job.stopped then return "wait" end
    if #ok == 0 then -- started again elsewhere (or moved on by another member): from the table's row
      self:_log("info", "backfill of %s: started again elsewhere; the chunks read into memory are let go",
        w.name)
      let_go(self, job, 1)
      return "wait", 0
    end
    for _ = 1, nd do table.remove(ch, 1) end
    job.done = job.done + rows_done
  end
  local below = (self._bf_seq or 0) -- the journal's last id the reader handed over, and when
  local moved = self._bf_seq_at or 0
  for i, c in ipairs(ch) do
    -- while the reader works its way through a backlog below the marks, they are behind it: the
    -- wait counts from when it last moved
    local since = c.mark and below < c.mark and math.max(c.at, moved) or c.at
    if not c.emitted and now - since > B.MARK_WAIT then -- its consumer's shares moved meanwhile
      self:_log("warn", "backfill of %s: a chunk read into memory did not see its marks come in %g s; "
        .. "it is read again", w.name, B.MARK_WAIT)
      let_go(self, job, i)
      job.after, job.ended = c.from, nil
      break
    end
  end
  if job.ended then
    if #ch > 0 then return "wait", 0.005 end
    local ok, err = q(s.backfill_finish, "done", self._consumer, tbl)
    if not ok then return nil, err end
    return 0
  end
  if job.cancel or #ch >= MEM_AHEAD then return "wait", 0.005 end
  if not self:_backfill_in_memory(job) then -- the journal's way, once these are done
    if #ch > 0 then return "wait", 0.005 end
    job.chunks = nil
    job.wrote, job.base_arrived = 0, w.arrived -- the rows emitted from memory count as arrived
    self:_log("info", "backfill of %s: chunks go through the journal", w.name)
    return "wait", 0
  end
  local r, err = self:_backfill_claim(q, s, tbl)
  if r == nil or r == "gone" or r == "busy" then return r, err end
  -- the claim's transaction ends here: the read is one statement, committed by the server
  -- without waiting for this process (whose loop a handler may block on a lock the read took)
  local ok0, err0 = q(s.backfill_commit)
  if not ok0 then
    q(s.backfill_rollback)
    return nil, err0
  end
  local after = job.after
  if #ch == 0 then -- everything read is saved: from where the table says
    after, job.done = decode_key(r.last_key), count_of(r.rows_done)
  end
  marks = marks + 1
  local c = { at = now, from = after, touched = {}, seen = {}, nseen = 0, left = 0, n = 0, sent = 0,
    token = fmt("%s%d ", MARK, marks), from_text = #ch > 0 and ch[#ch].kt or r.last_key }
  track(self, c, w.name)
  ch[#ch + 1] = c -- before the read: its marks may come before the read's answer
  local args = with_after({ w.wire, self._consumer, c.token }, after, plan.nkeys)
  local rows
  rows, err = q(after and plan.read_next or plan.read_first, table.unpack(args, 1, #args))
  if job.stopped then return "wait" end -- stopped while it read (_backfill_drop let c go)
  if not rows or #rows == 0 then -- failed (nothing written), or the table is read to its end
    let_go(self, job, #ch) -- c, the last
    if not rows then return nil, err end
    job.ended = true
    return "wait", 0
  end
  c.rows, c.n, c.kt, c.mark = rows, #rows, rows[#rows].kt, math.tointeger(tonumber(rows[1].mk))
  if c.nseen >= job.nshares then self:_backfill_emit(job, c) end
  job.after = decode_key(c.kt)
  return #rows
end

-- A chunk's rows into the journal, and where it ends saved, in the transaction q runs in: how
-- many rows (0: none left), or nil and the error. In one statement (PostgreSQL's
-- backfill_chunk) or in three (lock, copy, save).
local function chunk_in_one(q, plan, _, wire, consumer, tbl, after)
  local args = with_after({ wire, consumer, tbl }, after, plan.nkeys)
  local rows, err = q(after and plan.chunk_next or plan.chunk_first, table.unpack(args, 1, #args))
  if not rows then return nil, err end
  return count_of(rows[1] and rows[1].n)
end

local function chunk_in_three(q, plan, s, wire, consumer, tbl, after)
  local args = with_after({}, after, plan.nkeys)
  local keys, err = q(after and plan.lock_next or plan.lock_first, table.unpack(args, 1, #args))
  if not keys then return nil, err end
  local got = #keys
  if got == 0 then return 0 end
  local last = keys[got]
  args = with_after({ wire }, after, plan.nkeys)
  for i = 1, plan.nkeys do args[#args + 1] = last["k" .. i] end
  local ok
  ok, err = q(after and plan.copy_next or plan.copy_first, table.unpack(args, 1, #args))
  if ok then ok, err = q(s.backfill_save, encode_key(last, plan.nkeys), got, consumer, tbl) end
  if not ok then return nil, err end
  return got
end

-- A chunk's transaction begun, and the backfill's row claimed for it: the row, or "gone" and
-- why (cancelled, finished or dropped elsewhere), or "busy" (another member holds it), or nil
-- and the error; rolled back unless the row came.
function Notifier:_backfill_claim(q, s, tbl)
  for _, stmt in ipairs(statements.list(s, "backfill_begin")) do
    local ok, err = q(stmt)
    if not ok then
      q(s.backfill_rollback)
      return nil, err
    end
  end
  local rows, err = q(s.backfill_claim, self._consumer, tbl)
  if not rows then
    q(s.backfill_rollback)
    return nil, err
  end
  local r = rows[1]
  if r and r.state == "running" then return r end
  q(s.backfill_rollback)
  if r then return "gone", "it is " .. r.state .. " (elsewhere)" end
  rows = q(s.backfill_get, self._consumer, tbl)
  if rows and rows[1] and rows[1].state == "running" then return "busy" end
  return "gone", rows and rows[1] and ("it is " .. rows[1].state) or "it is gone (its consumer dropped)"
end

-- One chunk in one transaction: how many rows it wrote (0: the table is read to its end, and
-- the backfill is done), "gone" and why, "busy", or nil and the error (as _backfill_claim).
-- A member of a group that holds no share reads none: while another member has chunks read
-- into memory and not yet saved it keeps every share, and a chunk read from the saved
-- position would deliver those rows again (one that holds none cannot deliver them anyway).
function Notifier:_backfill_chunk(job)
  local w, plan, s = job.w, job.plan, statements.of(self)
  local tbl = tbl_of(w)
  local h, herr = self:_backfill_conn()
  if not h then return nil, herr end
  if self._caps.groups and select(2, status_of(self)) == 0 then return "busy" end -- (above)
  local q = querier(h)
  local r, err = self:_backfill_claim(q, s, tbl)
  if r == nil or r == "gone" or r == "busy" then return r, err end
  job.done = count_of(r.rows_done)
  local got
  got, err = (plan.chunk_first and chunk_in_one or chunk_in_three)(q, plan, s, w.wire, self._consumer, tbl,
    decode_key(r.last_key))
  local ok = got
  if got == 0 then ok, err = q(s.backfill_finish, "done", self._consumer, tbl) end
  if ok then ok, err = q(s.backfill_commit) end
  if not ok then
    q(s.backfill_rollback)
    return nil, err
  end
  job.done = job.done + got
  return got
end

-- At start: the backfills of this consumer's "read" watches that are running go on, and with
-- start_at = "snapshot" each table read for the first time is read whole.
function Notifier:_backfills_start()
  for _, w in ipairs(self._reads) do
    local ok, err
    if self._snapshot then
      ok, err = self:_backfill_begin(w, nil, DEFAULT_CHUNK, "snapshot")
    else
      ok, err = self:_backfill_resume(w)
    end
    if not ok then return nil, err end
  end
  self:_backfill_go()
  return true
end

function Notifier:_backfills_stop()
  for w, job in pairs(self._backfills) do
    self:_backfill_drop(job)
    self._backfills[w] = nil
  end
  self._bf_track, self._bf_keep = {}, nil -- a stop leaves nothing tracked, nothing kept
  if self._bh and not self._bf_running then self:_backfill_release() end
end

-- A cancel of a backfill running here, in its turn (its chunk in flight has committed).
function Notifier:_backfill_cancel_now(job)
  local h, err = self:_backfill_conn()
  local ok
  if h then ok, err = h:query(statements.of(self).backfill_finish, "cancelled", self._consumer, tbl_of(job.w)) end
  if not ok then return 1 end -- tried again
  job.stopped = true
  self._backfills[job.w] = nil
  self:_log("info", "backfill of %s cancelled after %d rows", job.w.name, job.done)
  return nil
end

local BACKFILL_OPTIONS = { where = true, chunk = true }

--- n:backfill(table, {where=, chunk=}) -> n: read every row of the table (those where says)
-- into its "read" subscribers, a chunk (1000 rows) at a time, from its first key; over a
-- backfill of the table that ran before. Durable consumers only.
function Notifier:backfill(t, opts)
  check_notifier(self, 2)
  opts = check_options(opts, BACKFILL_OPTIONS, "backfill", 2)
  local where, chunk = opts.where, opts.chunk or DEFAULT_CHUNK
  if where ~= nil and (type(where) ~= "string" or not where:find("%S")) then
    fail(2, "backfill where must be an SQL condition (a non-empty string)")
  end
  if math.type(chunk) ~= "integer" or chunk < 1 or chunk > MAX_CHUNK then
    fail(2, "backfill chunk must be a whole number from 1 to %d", MAX_CHUNK)
  end
  local w = self:_find_watch(t, "read", nil, 2)
  if not self:_query_turn() then
    fail(2, "backfill: the query connection is in use by a handler's statement or transaction; call n:backfill "
      .. "from a handler or a coroutine of sqlnotify.spawn, where it waits its turn (not inside its own transaction)")
  end
  local okc, ok, err = pcall(self._backfill_begin, self, w, where, chunk, "start")
  if self._qlock then self:_query_next() end -- the turn passes on
  if not okc then error(ok, 0) end
  if not ok then error(one_line(err), error_level(2)) end
  return self
end

--- n:backfills() -> { {table=, done=, total=, state=, where=, chunk=, started_at=, updated_at=}, ... }
-- this consumer's backfills, running, done or cancelled | nil, message
function Notifier:backfills()
  check_notifier(self, 2)
  if not self._durable then return {} end
  local rows, err = run(self, "backfill_list", self._consumer)
  if not rows then return nil, one_line(err) end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = { table = r.tbl, done = count_of(r.rows_done), total = count_of(r.total), state = r.state,
      where = r.where_sql, chunk = count_of(r.chunk), started_at = r.started_at, updated_at = r.updated_at }
  end
  return out
end

-- A cancel of a backfill running elsewhere (another process of the group, or none): its row
-- says "cancelled", in the query connection's turn.
local function cancel_stored(self, w)
  local rows, err = run(self, "backfill_get", self._consumer, tbl_of(w))
  if not rows then return nil, one_line(err) end
  local r = rows[1]
  if not r or r.state ~= "running" then return nil, fmt("sqlnotify: no backfill of %s is running", w.name) end
  rows, err = self._h:query(statements.of(self).backfill_finish, "cancelled", self._consumer, tbl_of(w))
  if not rows then return nil, one_line(err) end
  self:_log("info", "backfill of %s cancelled after %d rows", w.name, count_of(r.rows_done))
  return true
end

--- n:cancel_backfill(table) -> true | nil, message: the backfill reads no more chunks (the rows
-- of those it read are still delivered). One running here stops after the chunk it is
-- reading, if any; its state says "cancelled" from then on. One running elsewhere is marked
-- on the query connection: from a handler or a spawned coroutine the call waits its turn there.
function Notifier:cancel_backfill(t)
  check_notifier(self, 2)
  local w = self:_find_watch(t, "read", nil, 2)
  local job = self._backfills[w]
  if job and not job.stopped then
    job.cancel, job.at = true, 0
    return true
  end
  if not self:_query_turn() then
    return nil, "sqlnotify: cancel_backfill: the query connection is in use by a handler's statement or "
      .. "transaction; call n:cancel_backfill from a handler or a coroutine of sqlnotify.spawn, where it waits "
      .. "its turn (not inside its own transaction)"
  end
  local okc, ok, err = pcall(cancel_stored, self, w)
  if self._qlock then self:_query_next() end -- the turn passes on
  if not okc then error(ok, 0) end
  return ok, err
end

-- A dropped consumer's backfills go with it (a missing table: it had none). This consumer's
-- stop here; while one's chunk holds its row, in the runner's turn after that chunk.
function Notifier:_backfills_forget(name)
  if name == self._consumer then
    for _, job in pairs(self._backfills) do
      if job.in_chunk then
        self._forget = name
        return
      end
    end
    self:_backfills_stop()
  end
  self._forget = nil
  local s = statements.of(self)
  if s.backfill_forget then self._h:query(s.backfill_forget, name) end
end



B.DEFAULT_CHUNK = DEFAULT_CHUNK

--- bind(helpers): notifier.lua's helpers these methods use.
function B.bind(h)
  fail, one_line, check_notifier, check_options = h.fail, h.one_line, h.check_notifier, h.check_options
  error_level = h.error_level
end

return B
