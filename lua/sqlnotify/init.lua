--- sqlnotify: react to database changes in Lua.
-- The module a script requires: the notifier (notifier.lua, with dispatch.lua for what an
-- event does), the loop and its timers, handlers that wait (delivery.lua), the clients of
-- SPEC §8.2 (loaded on first use) and the metrics. The C binding (sqlnotify.core) moves bytes.

local core = require("sqlnotify.core")
local filters = require("sqlnotify.filters")
local delivery = require("sqlnotify.delivery")
local metrics = require("sqlnotify.metrics")
local N = require("sqlnotify.notifier")

local M = N.M
local fail, in_host, live_notifiers = N.fail, N.in_host, N.live_notifiers
local fmt, error_level = string.format, filters.error_level
local stopping = core.stopping

-- ===== loop =====

--- sqlnotify.run(): the loop, until sqlnotify.stop() or SIGINT/SIGTERM (the host runs its own).
function M.run()
  -- core.run's errors name its caller's line: re-raised from here, that stays the script's
  local ok, err = pcall(core.run)
  if not ok then error(err, error_level(2)) end
  if not in_host() then M._finish() end
end

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

-- ===== handlers that wait =====

M.sleep, M.spawn, M.waiter = delivery.sleep, delivery.spawn, delivery.waiter

-- The clients of the systems handlers feed (SPEC §8.2), loaded on first use:
-- sqlnotify.http, sqlnotify.redis, sqlnotify.nats, sqlnotify.mqtt, sqlnotify.kafka.
local CLIENTS = { http = true, redis = true, nats = true, mqtt = true, kafka = true }
setmetatable(M, { __index = function(t, k)
  if not CLIENTS[k] then return nil end
  local mod = require("sqlnotify." .. k)
  rawset(t, k, mod)
  return mod
end })

--- sqlnotify.stopping() -> true once SIGINT/SIGTERM (or sqlnotify.stop()) asked the loop to stop.
function M.stopping()
  return stopping()
end

--- sqlnotify.metrics{listen = ADDR}: serve /metrics (Prometheus), /health and /ready on ADDR
-- ("127.0.0.1:9464", ":9464") from the loop; raises when the address cannot be bound. The host
-- does the same with --metrics ADDR.
function M.metrics(opts)
  return metrics.serve(opts, 2)
end

-- Whichever server runs (--metrics, sqlnotify.metrics{}) answers from the newest state.
core.metrics_hook(function(path) return metrics.respond(path, live_notifiers()) end)

-- SIGINT/SIGTERM: how long the handlers in flight may take (0: none, stop at once). The
-- loop stops when the last of them finished (Notifier:_stopping) or the grace ran out.
core.set_stop_hook(function()
  local grace = 0
  for _, n in ipairs(live_notifiers()) do
    if n._started and n._q:running() > 0 and n._q.grace > grace then grace = n._q.grace end
  end
  return grace
end)

return M
