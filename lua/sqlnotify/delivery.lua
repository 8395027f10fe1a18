--- sqlnotify.delivery: when an event is done (SPEC §8.1). Handlers run as coroutines of the
-- runtime; an event is done when every subscribed handler returned, and a raise is retried
-- with backoff, then dead-lettered. Events of one key (table + primary key) run strictly one
-- after the other; different keys side by side up to `concurrency` (events running or
-- waiting for a retry). A durable cursor moves only past the contiguous prefix of events
-- that are done or dead-lettered; while any is in flight the driver holds (src/dialect.h).
--
-- The common case costs what a plain call cost: with nothing in flight, an event's handlers
-- run at once on a pooled coroutine, and only an event that yields or fails gets a record.
local core = require("sqlnotify.core")

local M = {}

local fmt, random, min = string.format, math.random, math.min
local create, resume, yield, running = coroutine.create, coroutine.resume, coroutine.yield, coroutine.running
local isyieldable = coroutine.isyieldable

local DONE, WAIT = {}, {} -- what the runtime's coroutines yield: finished, or waiting for the loop

-- ===== the runtime's coroutines =====

local owner = setmetatable({}, { __mode = "k" }) -- coroutine -> the job (or spawn) it runs
local ours = setmetatable({}, { __mode = "k" })  -- every coroutine of the runtime
-- Weak: a pooled coroutine's stack still holds its last call's arguments (a notifier, an
-- event), which must not be kept alive by the pool; the collector empties it now and then.
local pool, npool = setmetatable({}, { __mode = "v" }), 0
local POOL_MAX = 256

local function body(fn, a, b, c)
  while true do
    fn, a, b, c = yield(DONE, fn(a, b, c))
  end
end

local function worker()
  while npool > 0 do
    local co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    if co then return co end
  end
  local co = create(body)
  ours[co] = true
  return co
end

local function release(co)
  owner[co] = nil
  if npool < POOL_MAX then
    npool = npool + 1
    pool[npool] = co
  end
end

-- Resume co; route what comes back. DONE: the function returned (its results follow), the
-- coroutine goes back to the pool. WAIT: it waits on the loop, which resumes it through
-- M.wake. A foreign yield (coroutine.yield in a handler) or a death is reported as a
-- failure: the coroutine cannot be resumed meaningfully and is dropped.
-- coroutine -> the notifier whose query transaction it opened (n:query): rolled back when
-- the coroutine ends with it still open.
M.tx_owner = setmetatable({}, { __mode = "k" })

local function ended(co)
  local n = M.tx_owner[co]
  if n then
    M.tx_owner[co] = nil
    n:_abandon_tx(co)
  end
end

local function step(co, ...)
  local ok, tag, r1, r2, r3 = resume(co, ...)
  if ok and tag == WAIT then
    return WAIT
  end
  ended(co)
  if ok and tag == DONE then
    release(co)
    return DONE, r1, r2, r3
  end
  owner[co] = nil
  ours[co] = nil
  if ok then
    return DONE, "yielded outside sqlnotify's calls (coroutine.yield in a handler: use sqlnotify.sleep, or a "
      .. "coroutine of your own)"
  end
  return DONE, tostring(tag)
end

local finish -- (job, err): below

-- The loop resumes a waiting coroutine (a timer, a reply): its job goes on from there.
function M.wake(co, ...)
  local job = owner[co]
  local tag, r1, r2, r3 = step(co, ...)
  if tag ~= DONE or not job then return end
  if job.spawn then
    if r1 then core.log("error", "spawned coroutine failed: " .. r1) end
  elseif job.co == co then
    finish(job, r1, r2, r3)
  end
end

--- sqlnotify.sleep(seconds): yields the calling handler (or spawned coroutine) for that long.
function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error(fmt("sqlnotify: sleep needs a number of seconds, got %s", type(seconds) == "number" and tostring(seconds)
      or type(seconds)), 2)
  end
  local co = running()
  if not ours[co] then
    error("sqlnotify: sleep must be called from a handler or a coroutine of sqlnotify.spawn", 2)
  end
  if not isyieldable() then
    error("sqlnotify: sleep called where the handler cannot yield (inside a metamethod or a C function)", 2)
  end
  core.after(seconds, function() M.wake(co) end)
  return yield(WAIT)
end

--- sqlnotify.waiter() -> w: w:wait() yields the calling handler until w:wake(...) is called
-- (from anywhere: a cqueues coroutine, a timer, another handler), and returns wake's
-- arguments; a wake before the wait makes the wait return at once. One wake per waiter.
local Waiter = {}
Waiter.__index = Waiter

function M.waiter()
  return setmetatable({}, Waiter)
end

function Waiter:wait()
  if self.vals then return table.unpack(self.vals, 1, self.vals.n) end
  local co = running()
  if not ours[co] then
    error("sqlnotify: wait must be called from a handler or a coroutine of sqlnotify.spawn", 2)
  end
  if not isyieldable() then
    error("sqlnotify: wait called where the handler cannot yield (inside a metamethod or a C function)", 2)
  end
  if self.co then error("sqlnotify: this waiter is waited on already", 2) end
  self.co = co
  return yield(WAIT)
end

function Waiter:wake(...)
  if self.vals then return false end
  local vals = table.pack(...)
  self.vals = vals
  local co = self.co
  if co then
    self.co = nil
    -- resumed from the loop, never from inside whoever woke it (a cqueues coroutine)
    core.after(0, function() M.wake(co, table.unpack(vals, 1, vals.n)) end)
  end
  return true
end

--- sqlnotify.spawn(fn, ...): runs fn as a coroutine of the loop (it may sleep, and use the
-- calls that yield). An error is logged. Returns nothing.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error(fmt("sqlnotify: spawn needs a function, got %s", type(fn)), 2) end
  local co = worker()
  local rec = { spawn = true }
  owner[co] = rec
  local args = table.pack(...)
  local tag, err = step(co, function()
    local ok, e = xpcall(fn, debug.traceback, table.unpack(args, 1, args.n))
    if not ok then return tostring(e) end
  end)
  if tag == DONE and err then core.log("error", "spawned coroutine failed: " .. err) end
end

--- delivery.await(what, start, ...) -> the reply's values: how a client's call yields. start(...,
-- reply) begins the request on the loop and returns true, or nil and an error (returned as
-- they are); reply(...) is called once, later, from the loop, with what the call returns.
-- what names the call in the error raised outside a handler or a spawned coroutine.
function M.await(what, start, ...)
  local co = running()
  if not ours[co] or not isyieldable() then
    error(fmt("sqlnotify: %s must be called from a handler or a coroutine of sqlnotify.spawn%s", what,
      ours[co] and " (not inside a metamethod or a C function)" or ""), 3)
  end
  local n = select("#", ...)
  local args = { ... }
  args[n + 1] = function(...) M.wake(co, ...) end
  local ok, err = start(table.unpack(args, 1, n + 1))
  if not ok then return nil, err end
  return yield(WAIT)
end

-- True while the calling code may wait (a handler or a spawned coroutine of the runtime).
function M.can_wait()
  return ours[running()] == true and isyieldable()
end

-- ===== options =====

-- A durable consumer retries by default; a live notifier only when asked (it acknowledges
-- nothing, and a retry holds back every later event of a notifier with concurrency 1).
M.DEFAULT_RETRY = { attempts = 10, delay = 0.5, max_delay = 60 }
M.LIVE_RETRY = { attempts = 1, delay = 0.5, max_delay = 60 }

local error_level = require("sqlnotify.filters").error_level

local function bad(level, ...)
  error("sqlnotify: " .. fmt(...), error_level(level + 1))
end

-- retry = {attempts =, delay =, max_delay =} checked, defaults from base. level: the caller's.
function M.check_retry(r, base, level)
  if r == nil then return base end
  if type(r) ~= "table" then bad(level + 1, "retry must be a table {attempts =, delay =, max_delay =}, got %s", type(r)) end
  for k in pairs(r) do
    if k ~= "attempts" and k ~= "delay" and k ~= "max_delay" then
      bad(level + 1, "unknown retry option %s (use attempts, delay, max_delay)", fmt("%q", tostring(k)))
    end
  end
  local a = r.attempts
  if a == nil then a = base.attempts end
  if type(a) ~= "number" or not (a >= 1) or (a ~= math.huge and math.type(a) ~= "integer" and a ~= math.floor(a)) then
    bad(level + 1, "retry.attempts must be a whole number from 1 (math.huge: never give up), got %s", tostring(a))
  end
  local d, m = r.delay, r.max_delay
  if d == nil then d = base.delay end
  if m == nil then m = math.max(base.max_delay, d) end
  if type(d) ~= "number" or not (d >= 0 and d < math.huge) then
    bad(level + 1, "retry.delay must be a number of seconds from 0, got %s", tostring(d))
  end
  if type(m) ~= "number" or not (m >= d and m < math.huge) then
    bad(level + 1, "retry.max_delay must be a number of seconds, at least retry.delay, got %s", tostring(m))
  end
  return { attempts = a, delay = d, max_delay = m }
end

function M.check_concurrency(c, level)
  if c == nil then return 1 end
  if math.type(c) ~= "integer" or c < 1 or c > 100000 then
    bad(level + 1, "concurrency must be a whole number from 1 to 100000, got %s",
      type(c) == "number" and tostring(c) or type(c))
  end
  return c
end

-- ===== one notifier's events =====

local LIVE_BOUND = 10000 -- live events held in memory (waiting or retrying) before retries are given up

-- The key of an event: its table and primary key; events of a table without one share the table's.
local function key_of(w, ev)
  local id = ev.id
  if id == nil then return w.name end
  if type(id) ~= "table" then return w.name .. "\0" .. tostring(id) end
  local parts = { w.name }
  for i = 1, #id do parts[i + 1] = tostring(id[i]) end
  return table.concat(parts, "\0")
end
M.key_of = key_of

local Queue = {}
Queue.__index = Queue

-- n: the notifier (it runs handlers: n:_run(w, ev, subs) -> nil or err, failed subs).
function M.queue(n, concurrency, retry, grace)
  return setmetatable({
    n = n, limit = concurrency, retry = retry, grace = grace,
    active = 0,           -- jobs running or waiting for a retry
    keys = {},            -- key -> the jobs waiting behind the one in flight (present: the key is busy)
    ready = {}, rh = 1, rt = 0, -- jobs whose turn came, waiting for a slot (FIFO)
    pend = {}, ph = 1, pt = 0, -- durable: jobs delivered and not yet acked, in delivery order
    bufs = {},            -- batch = N subscription -> its events waiting for a batch {h =, t =, ...}
    lives = {},           -- live jobs not over (one waiting for a retry is nowhere else)
    pos = 0,              -- the delivery order of jobs and batch items
    batches = {},         -- batch jobs not over (their retry timers stop at a reset)
    held = false, live = 0, gen = 0,
  }, Queue)
end

local function backoff(r, attempt)
  local d = min(r.max_delay, r.delay * 2 ^ (attempt - 1))
  return d / 2 + random() * d / 2 -- doubling, with jitter
end

local start -- (q, job)

-- The job's ack record is done: move the cursor over the done prefix; release the hold when
-- nothing is left in flight. A record that batches still wait on (left) is done when they are.
local function acked(q, job)
  if job.left and job.left > 0 then
    job.self_done = true
    return
  end
  job.done = true
  if not job.seq then return end
  local pend, last = q.pend, nil
  while q.ph <= q.pt and pend[q.ph].done do
    last = pend[q.ph].seq
    pend[q.ph] = nil
    q.ph = q.ph + 1
  end
  local n = q.n
  if last and n._started then n._h:ack(last) end
  if n._catchup and q.ph > q.pt then n:_check_caught_up() end
  if q.ph > q.pt and q.held and not q.releasing then
    q.releasing = true
    local gen = q.gen
    core.after(0, function() -- hold(false) is never called from inside a deliver
      q.releasing = false
      if q.gen == gen and q.held and q.ph > q.pt and n._started then
        q.held = false
        n._h:hold(false)
      end
    end)
  end
end

-- A job whose key is free: it starts now if a slot is, else it waits for one (FIFO).
local function admit(q, job)
  if q.active < q.limit and not core.stopping() then
    start(q, job)
  else
    q.rt = q.rt + 1
    q.ready[q.rt] = job
  end
end

-- A slot is free: the next job whose turn came, if any.
local function next_ready(q)
  while q.active < q.limit and q.rh <= q.rt and not core.stopping() do
    local job = q.ready[q.rh]
    q.ready[q.rh] = nil
    q.rh = q.rh + 1
    start(q, job)
  end
end

-- One batch holding a delivered event is over.
local function part_done(q, rec)
  rec.left = rec.left - 1
  if rec.left == 0 and rec.self_done then acked(q, rec) end
end

-- A job let key k go: the next job behind it holds it now, and its turn comes once it holds
-- every key it waits for (an UPDATE that changed the key waits for its old key and its new one).
local function key_free(q, k)
  local wl = q.keys[k]
  if wl and #wl > 0 then
    local nx = table.remove(wl, 1)
    nx.waits = (nx.waits or 1) - 1
    if nx.waits == 0 then
      q.rt = q.rt + 1
      q.ready[q.rt] = nx
    end
  else
    q.keys[k] = nil
  end
end

-- job takes key k: 1 when it waits behind another job holding it, 0 when it holds it now.
local function take_key(q, job, k)
  local wl = q.keys[k]
  if wl then
    wl[#wl + 1] = job
    return 1
  end
  q.keys[k] = {}
  return 0
end

-- The job is over (done or given up): its keys' next jobs, the slot, the ack.
local function over(q, job)
  q.active = q.active - 1
  if job.items then
    job.done = true
    q.batches[job] = nil
    for _, it in ipairs(job.items) do
      if it.rec then part_done(q, it.rec) end
    end
  elseif not job.seq and not job.replay and not job.read then
    q.live = q.live - 1
    q.lives[job] = nil
  end
  key_free(q, job.key)
  if job.okey then key_free(q, job.okey) end
  if job.seq then acked(q, job) end
  if job.on_done then job.on_done(job) end
  next_ready(q)
  if core.stopping() then q.n:_stopping() end
end

local function give_up(q, job, err)
  local n = q.n
  local ok = n:_dead_letter(job, err)
  if ok then return over(q, job) end
  -- the dead letter could not be written: nothing is lost, it is tried again
  job.timer = core.after(backoff(job.policy, job.attempt), function()
    job.timer = nil
    if q.gen == job.gen then give_up(q, job, err) end
  end)
end

-- After a run: err is nil (every handler returned) or the failure, failed the subscriptions
-- that raised (retried alone).
finish = function(job, err, failed, raw)
  local q = job.q
  job.co = nil
  job.raw = raw
  if q.gen ~= job.gen then return end -- the notifier stopped meanwhile: redelivered or logged
  if not err then return over(q, job) end
  if failed then
    job.subs = failed
    job.policy = q.n:_policy_of(failed)
  end
  local policy = job.policy
  if job.attempt >= policy.attempts or (not job.seq and not job.replay and not job.read and not job.items and q.live > LIVE_BOUND) then
    return give_up(q, job, err)
  end
  local wait = backoff(policy, job.attempt)
  job.timer = core.after(wait, function()
    job.timer = nil
    if q.gen ~= job.gen then return end
    if core.stopping() then return end -- no new attempt after a stop: redelivered (durable) or logged
    job.attempt = job.attempt + 1
    local mc = (job.w or job.sub.watch).mc -- sqlnotify_retries_total
    mc.retries = mc.retries + 1
    start(q, job)
  end)
end

local function run_job(job)
  if job.items then return job.q.n:_run_batch(job) end
  return job.q.n:_run(job.w, job.ev, job.subs, job.attempt, job.replay ~= nil)
end

-- Run the job's handlers on a coroutine; it may finish now or later (M.wake).
start = function(q, job)
  if not job.started then
    job.started = true
    q.active = q.active + 1
  end
  local co = worker()
  job.co = co
  owner[co] = job
  local tag, err, failed, raw = step(co, run_job, job)
  if tag == DONE then finish(job, err, failed, raw) end
end

-- A durable event waits for its ack in delivery order; a live one counts toward the bound.
function Queue:_register(job)
  if job.seq then
    self.pt = self.pt + 1
    self.pend[self.pt] = job
  elseif not job.replay and not job.read then
    self.live = self.live + 1
    self.lives[job] = true
  end
end

-- A new event, in delivery order (payload and channel: what a dead letter keeps; more: fields
-- of the job: a replay's, or a backfill's row read into memory, which runs at once as an
-- event does). Returns true when it is done already. With nothing in flight the
-- handlers run at once, and only an event that waits or fails gets a record.
function Queue:add(w, ev, seq, policy, payload, channel, more)
  local co, tag, err, failed, raw
  if (not more or more.read) and self.active == 0 and self.ph > self.pt then
    co = worker()
    tag, err, failed, raw = step(co, self.n._run, self.n, w, ev)
    if tag == DONE and not err then return true end
  end
  self.pos = self.pos + 1
  local job = { q = self, w = w, ev = ev, seq = seq, key = key_of(w, ev), attempt = 1, policy = policy,
    gen = self.gen, payload = payload, channel = channel, pos = self.pos }
  if ev.old_id ~= nil then -- a changed key: the old key's events before it come first, and it before the next
    local okey = key_of(w, { id = ev.old_id })
    if okey ~= job.key then job.okey = okey end
  end
  if more then for k, v in pairs(more) do job[k] = v end end
  if tag then -- it ran: it waits (its coroutine is the job's now) or it failed
    self:_register(job)
    self.keys[job.key] = {}
    if job.okey then self.keys[job.okey] = {} end
    job.started = true
    self.active = self.active + 1
    if tag == DONE then
      finish(job, err, failed, raw)
    else
      job.co = co
      owner[co] = job
    end
    return job.done, job
  end
  self:_register(job)
  local waits = take_key(self, job, job.key) + (job.okey and take_key(self, job, job.okey) or 0)
  job.waits = waits
  if waits == 0 then admit(self, job) end
  return job.done, job
end

-- A delivered event only batch = N subscriptions take: its ack record, done when they are
-- (nil in live mode).
function Queue:part(seq, left)
  if not seq then return nil end
  self.pt = self.pt + 1
  local rec = { seq = seq, left = left, self_done = true }
  self.pend[self.pt] = rec
  return rec
end

-- ===== batch = N subscriptions =====
-- Their events wait in the subscription's buffer. One batch (up to N events of one
-- subscription, in one call) runs at a time per table, and it never passes an event of the
-- table that another subscription's buffer holds from earlier: each key's events reach the
-- batch handlers in commit order, as they reach the others. A failure retries or
-- dead-letters the whole batch. Each event's ack record waits for the batches holding it.

local function launch(q, bkey)
  if q.keys[bkey] or core.stopping() then return end
  local sub, b, limit = nil, nil, math.huge -- the buffer whose head came first; the next head
  for s, sb in pairs(q.bufs) do
    if s.bkey == bkey then
      local pos = sb[sb.h].pos
      if not b or pos < b[b.h].pos then
        if b then limit = min(limit, b[b.h].pos) end
        sub, b = s, sb
      else
        limit = min(limit, pos)
      end
    end
  end
  if not b then return end
  local items = {}
  while b.h <= b.t and #items < sub.batch and b[b.h].pos < limit do
    items[#items + 1] = b[b.h]
    b[b.h] = nil
    b.h = b.h + 1
  end
  if b.h > b.t then q.bufs[sub] = nil end
  local job = { q = q, items = items, sub = sub, subs = { sub }, key = bkey, attempt = 1,
    policy = sub.retry or q.retry, gen = q.gen }
  job.on_done = function() if q.gen == job.gen then launch(q, bkey) end end
  q.batches[job] = true
  q.keys[job.key] = {}
  admit(q, job)
end

-- item: {w =, ev =, seq =, payload =, channel =, rec =}, in delivery order.
function Queue:buffer(sub, item)
  local b = self.bufs[sub]
  if not b then
    b = { h = 1, t = 0 }
    self.bufs[sub] = b
  end
  self.pos = self.pos + 1
  item.pos = self.pos
  b.t = b.t + 1
  b[b.t] = item
end

-- Start a batch for each table with events waiting and none running.
function Queue:flush()
  local tables = {}
  for sub in pairs(self.bufs) do tables[sub.bkey] = true end
  for bkey in pairs(tables) do launch(self, bkey) end
end

-- A delivered event with nothing to run (no subscriber, skipped): done in its place.
function Queue:skip(seq)
  if self.ph > self.pt then return true end
  self.pt = self.pt + 1
  local job = { seq = seq, done = true }
  self.pend[self.pt] = job
  return false
end

-- Is anything in flight (delivered and not done)?
function Queue:busy()
  return self.active > 0 or self.ph <= self.pt or self.rh <= self.rt or next(self.bufs) ~= nil
end

-- Running handlers (yielded), for the grace at stop.
function Queue:running()
  local n = 0
  for co, job in pairs(owner) do
    if job.q == self and job.co == co then n = n + 1 end
  end
  return n
end

-- What is still in flight: the jobs, for the log at stop (live mode) or a count.
function Queue:pending_jobs()
  local list, seen = {}, {}
  local function add(job)
    if job and not job.done and not seen[job] then
      seen[job] = true
      if job.items then -- a batch: its events, each as a job would say it
        for _, it in ipairs(job.items) do add(it) end
      elseif job.ev then
        list[#list + 1] = job
      end
    end
  end
  for i = self.ph, self.pt do add(self.pend[i]) end
  for co, job in pairs(owner) do if job.q == self and job.co == co then add(job) end end
  for i = self.rh, self.rt do add(self.ready[i]) end
  for _, wl in pairs(self.keys) do for _, job in ipairs(wl) do add(job) end end
  for job in pairs(self.batches) do add(job) end
  for _, b in pairs(self.bufs) do for i = b.h, b.t do add(b[i]) end end
  for job in pairs(self.lives) do add(job) end
  table.sort(list, function(a, b) return (a.pos or 0) < (b.pos or 0) end)
  return list
end

-- Forget everything in flight (stop, close): acks stop here; timers of retries are stopped.
function Queue:reset()
  local jobs = self:pending_jobs()
  for _, job in ipairs(jobs) do
    if job.timer then job.timer:stop() end
  end
  for job in pairs(self.batches) do
    if job.timer then job.timer:stop() end
  end
  for co, job in pairs(owner) do -- a handler still waiting finishes for nobody
    if job.q == self then owner[co] = nil end
  end
  self.gen = self.gen + 1
  self.active, self.live = 0, 0
  self.keys, self.ready, self.rh, self.rt = {}, {}, 1, 0
  self.pend, self.ph, self.pt = {}, 1, 0
  self.bufs, self.batches, self.lives = {}, {}, {}
  self.held = false
  return jobs
end

M.Queue = Queue
return M
