-- sqlnotify.pace — how fast a process's backfills read while the database's writers work
-- (backfill_rate = "auto", the default; docs/design.md, Backfill).
--
-- A backfill at full speed takes CPU and I/O the writers need. The writers' rate is what the
-- process sees of it: the change events of its watches, those written lately (a backlog read
-- after an outage is not the writers at work). With none, a backfill reads as fast
-- as it goes. When they flow, the backfill holds still for PROBE seconds to measure them alone,
-- then reads at a cap that follows the writers' rate window by window: down (DOWN) when they
-- fall under KEEP of their rate alone, up (UP) when they do not. A second's rate of writers
-- varies by a tenth or so on its own, so windows are long, the rate alone is averaged over
-- probes, and a step down is larger than a step up: noise alone moves the cap down, which
-- errs on the writers' side. The writers are measured alone again every PROBE_EVERY seconds
-- (their own load moves), and the cap is let go when they stop. Pure: the caller gives the
-- clock and the counts, so spec 35 drives it.
local M = {}

local LOOK = 0.25         -- seconds a look for writes spans while there were none
local WINDOW = 2          -- seconds a measure of the writers spans while they flow
local PROBE = 0.5         -- seconds the backfill holds still to measure the writers alone
local PROBE_EVERY = 8     -- seconds between two such measures while writes flow
local KEEP = 0.93         -- the writers' share of their rate alone the backfill leaves them
local DOWN, UP = 0.5, 1.15 -- the cap's change after a window where the writers lost (at most), or did not
local FIRST = 1 / 8       -- the first cap, of the rate read before writes came
local MIN_WRITES = 50     -- writes a second under which writers are not counted as flowing
local MIN_CAP = 100       -- rows/s the cap never goes below: a backfill always ends
local STALE = 3           -- seconds without a step after which the next starts a new window
local FRESH = 5           -- seconds from its write within which a durable change read counts as
-- the writers' (an older one is a backlog read after an outage or a restart: a handler's pace)

local Pace = {}
Pace.__index = Pace

--- pace.new() -> p. p.cap is the rows/s the backfills may read now (nil: as fast as they go).
function M.new()
  return setmetatable({ state = "free" }, Pace)
end

-- A new window from now.
function Pace:_window(now, writes, rows)
  self.t, self.w, self.r = now, writes, rows
end

--- pace.fresh(now, written) -> whether a change read at now counts as the writers' at work: a
-- live one (written nil) does; a durable one when its journal row was written FRESH seconds ago
-- or less, by the database's clock (a later one, a clock ahead, counts too).
function M.fresh(now, written)
  return not written or now - written <= FRESH
end

--- p:step(now, writes, rows) -> seconds to hold still (0: read on at p.cap).
-- writes: the change events the process has seen so far; rows: the rows its backfills read.
function Pace:step(now, writes, rows)
  if not self.t or now - self.t > STALE + PROBE then -- first step, or none for a while
    self:_window(now, writes, rows)
    if self.state == "probe" then self.state = "free" end
    return 0
  end
  local dt = now - self.t
  if self.state == "probe" then
    if now < self.till then return self.till - now end
    local alone = (writes - self.w) / dt
    if alone < MIN_WRITES then -- they stopped: as fast as it goes
      self.state, self.cap, self.base = "free", nil, nil
    else
      self.base = self.base and (self.base + alone) / 2 or alone
      self.state, self.probed = "run", now
      self.cap = self.cap or math.max(self.free * FIRST, MIN_CAP)
    end
    self:_window(now, writes, rows)
    return 0
  end
  if dt < (self.state == "free" and LOOK or WINDOW) then return 0 end
  local wrate, rrate = (writes - self.w) / dt, (rows - self.r) / dt
  if self.state == "free" then
    self:_window(now, writes, rows)
    if wrate < MIN_WRITES then return 0 end
    self.free = math.max(rrate, MIN_CAP)
  elseif wrate < MIN_WRITES then
    self.state, self.cap, self.base = "free", nil, nil
    self:_window(now, writes, rows)
    return 0
  else
    if wrate < KEEP * self.base then -- the further under, the larger the step down
      local down = math.max((wrate / (KEEP * self.base)) ^ 4, DOWN)
      self.cap = math.max(math.min(self.cap, rrate) * down, MIN_CAP)
    elseif rrate >= self.cap * 0.8 then -- the cap held it back: it may go higher
      self.cap = self.cap * UP
    end
    self:_window(now, writes, rows)
    if now - self.probed < PROBE_EVERY then return 0 end
  end
  self.state, self.till = "probe", now + PROBE
  return PROBE
end

return M
