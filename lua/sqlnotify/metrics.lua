--- sqlnotify.metrics: what an operator scrapes (SPEC §8.4). The counts live in one table per
-- (consumer, table, operation), made when a watch is declared: the hot path only adds to its
-- fields (dispatch.lua's _dispatch, _call, _dead_letter; delivery.lua's retry), never allocates.
-- The HTTP server is C (src/metrics.c); it asks respond() for every path but /health.
local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local catalog = require("sqlnotify.catalog")

local M = {}

local fmt, concat, sort = string.format, table.concat, table.sort

-- Seconds, the upper bounds of the handler-start histogram's buckets (src/metrics.c owns them).
local BUCKETS = core.histogram_bounds()
local NB = #BUCKETS

local LAG_EVERY = 5 -- seconds between two reads of the consumers' lag (never on the scrape itself)

-- The histogram is observed only while a server runs (it reads the clock per handler).
M.on = core.metrics_serving() ~= nil

local by_key, list = {}, {} -- (consumer, table, operation) -> counts; in creation order
local conns = {}           -- consumer \0 database -> { reconnects = n }

--- The counts of one (consumer, table, operation): fields delivered, failures, retries, dead,
-- and observe, the handler-start histogram's (observe(since) counts one event).
function M.counters(consumer, tbl, op)
  local key = consumer .. "\0" .. tbl .. "\0" .. op
  local c = by_key[key]
  if c then return c end
  c = { consumer = consumer, table = tbl, op = op, delivered = 0, failures = 0, retries = 0, dead = 0,
    observe = core.histogram() }
  by_key[key] = c
  list[#list + 1] = c
  return c
end

--- The connection counts of one (consumer, database).
function M.conn(consumer, database)
  local key = consumer .. "\0" .. database
  local c = conns[key]
  if not c then
    c = { reconnects = 0 }
    conns[key] = c
  end
  return c
end

-- ===== lag, read from the loop now and then =====

local lag, lag_at, lag_due = {}, -math.huge, false -- consumer -> { events, seconds }
local journal = {} -- database -> rows in its journal

local function refresh(notifiers)
  local fresh, jfresh = {}, {}
  for _, n in ipairs(notifiers) do
    if n._consumer and n._started and not n._closed then
      local ok, down = pcall(n._h.status, n._h)
      -- a lost connection is not waited for, nor a server that does not answer: last figures stay
      local up = ok and down == 0 and n:_answers("reading the consumers' lag")
      if up and not fresh[n._consumer] then
        local okc, rows = pcall(n.consumers, n)
        -- failed (a server that stalls makes each statement wait out its timeout): no second one
        up = okc and rows ~= nil
        for _, r in ipairs(okc and rows or {}) do
          if r.name == n._consumer then fresh[r.name] = { r.lag_events, r.lag_seconds } end
        end
      end
      fresh[n._consumer] = fresh[n._consumer] or lag[n._consumer]
      if jfresh[n._target] == nil then -- false: no figure, now or before
        jfresh[n._target] = up and catalog.journal_rows(n) or journal[n._target] or false
      end
    end
  end
  lag, journal = fresh, {}
  for db, rows in pairs(jfresh) do journal[db] = rows or nil end
end

-- Read the lag off the scrape (it waits for the servers' answers). The first read, made when
-- the metrics are served or a consumer starts, counts only when it found a consumer started.
local function read_lag(notifiers, first)
  lag_due = true
  delivery.spawn(function()
    local ok, err = pcall(refresh, notifiers)
    lag_due = false
    if not first or next(lag) ~= nil then lag_at = core.now() end
    if not ok then error(err, 0) end
  end)
end

-- The live notifiers (notifier.lua sets it: it requires this module).
M.notifiers = function() return {} end

--- A consumer started, or the metrics are served: the lag is read now once, so that the
-- first scrape has it (later ones read it every LAG_EVERY).
function M.soon()
  if not M.on or lag_due or lag_at > -math.huge then return end
  lag_due = true
  core.after(0, function() read_lag(M.notifiers(), true) end)
end

-- ===== the text format =====

local ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
-- A label value: backslash, quote and newline escaped, and a byte that is not part of valid
-- UTF-8 made U+FFFD (as the JSON log does), or Prometheus refuses the whole scrape: table and
-- consumer names are anyone's (SQLite takes any bytes).
local function esc(v)
  v = tostring(v)
  if not utf8.len(v) then
    local out, i = {}, 1
    while i <= #v do
      local _, bad = utf8.len(v, i)
      if not bad then
        out[#out + 1] = v:sub(i)
        break
      end
      out[#out + 1] = v:sub(i, bad - 1) .. "\u{FFFD}"
      i = bad + 1
    end
    v = table.concat(out)
  end
  return (v:gsub('[\\"\n]', ESC))
end

local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" then return tostring(v) end
  return fmt("%.17g", v)
end

local function family(out, name, kind, help)
  out[#out + 1] = fmt("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
end

local function keys_sorted(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks)
  return ks
end

-- One gauge family: a series labelled label="key" for each key whose value(key) is not nil.
local function gauge(out, name, help, label, keys, value)
  family(out, name, "gauge", help)
  for _, k in ipairs(keys) do
    local v = value(k)
    if v then out[#out + 1] = fmt('%s{%s="%s"} %s\n', name, label, esc(k), num(v)) end
  end
end

local function labels(c)
  return fmt('consumer="%s",table="%s",operation="%s"', esc(c.consumer), esc(c.table), esc(c.op))
end

local COUNTERS = {
  { "sqlnotify_events_delivered_total", "delivered", "Events handed to their handlers." },
  { "sqlnotify_handler_failures_total", "failures", "Handler calls that raised an error." },
  { "sqlnotify_retries_total", "retries", "Attempts made again after a failure." },
  { "sqlnotify_dead_letters_total", "dead",
    "Events given up after their last attempt (durable: written to the dead letters; live: logged)." },
}

-- Per notifier started: its database, consumer, state.
local function notifier_states(notifiers)
  local out = {}
  for _, n in ipairs(notifiers) do
    if n._started and not n._closed then
      local ok, down, shares = pcall(n._h.status, n._h)
      out[#out + 1] = { n = n, consumer = n._consumer or "", database = n._target, down = ok and down or 0,
        shares = ok and shares or nil }
    end
  end
  return out
end

function M.render(notifiers)
  local out = {}
  local rows = list
  sort(rows, function(a, b)
    if a.consumer ~= b.consumer then return a.consumer < b.consumer end
    if a.table ~= b.table then return a.table < b.table end
    return a.op < b.op
  end)
  for _, spec in ipairs(COUNTERS) do
    family(out, spec[1], "counter", spec[3])
    for _, c in ipairs(rows) do out[#out + 1] = fmt("%s{%s} %s\n", spec[1], labels(c), num(c[spec[2]])) end
  end
  local h = "sqlnotify_commit_to_handler_seconds"
  family(out, h, "histogram", "Seconds from an event's write to the start of its handler's first attempt: a "
    .. "durable event's from its journal row's time (ev.written_at), a live event's from its receipt (ev.timestamp).")
  for _, c in ipairs(rows) do
    local l, sum, count, cum = labels(c), core.histogram_read(c.observe)
    for i = 1, NB do out[#out + 1] = fmt('%s_bucket{%s,le="%s"} %d\n', h, l, num(BUCKETS[i]), cum[i]) end
    out[#out + 1] = fmt('%s_bucket{%s,le="+Inf"} %d\n%s_sum{%s} %s\n%s_count{%s} %d\n', h, l, count, h, l,
      num(sum), h, l, count)
  end

  -- connections: one series per (consumer, database); up only when every notifier there is
  local states, conn, order = notifier_states(notifiers), {}, {}
  for _, s in ipairs(states) do
    local key = s.consumer .. "\0" .. s.database
    local e = conn[key]
    if not e then
      e = { consumer = s.consumer, database = s.database, up = 1 }
      conn[key] = e
      order[#order + 1] = key
    end
    if s.down > 0 then e.up = 0 end
  end
  for key in pairs(conns) do
    if not conn[key] then
      local consumer, database = key:match("^(.-)%z(.*)$")
      conn[key] = { consumer = consumer, database = database }
      order[#order + 1] = key
    end
  end
  sort(order)
  family(out, "sqlnotify_connection_up", "gauge",
    "1 while the notifier's listener (live) or journal reader (durable) receives, 0 while it reconnects.")
  for _, key in ipairs(order) do
    local e = conn[key]
    if e.up then
      out[#out + 1] = fmt('sqlnotify_connection_up{consumer="%s",database="%s"} %d\n', esc(e.consumer),
        esc(e.database), e.up)
    end
  end
  family(out, "sqlnotify_reconnects_total", "counter", "Times the listener or journal reader came back after an "
    .. "outage.")
  for _, key in ipairs(order) do
    local e = conn[key]
    out[#out + 1] = fmt('sqlnotify_reconnects_total{consumer="%s",database="%s"} %d\n', esc(e.consumer),
      esc(e.database), conns[key] and conns[key].reconnects or 0)
  end

  -- consumers: lag (read now and then, off the scrape), shares held
  local now = core.now()
  if now - lag_at >= LAG_EVERY and not lag_due then read_lag(notifiers) end
  local names = keys_sorted(lag)
  gauge(out, "sqlnotify_lag_events", "Journal events not yet acknowledged by the consumer (its own tables; read "
    .. "every few seconds).", "consumer", names, function(name) return lag[name][1] end)
  gauge(out, "sqlnotify_lag_seconds", "Age in seconds of the consumer's oldest unacknowledged event (read every "
    .. "few seconds).", "consumer", names, function(name) return lag[name][2] end)
  gauge(out, "sqlnotify_journal_rows", "Rows in the database's journal (SQLite: its change log), every consumer's; "
    .. "read every few seconds where a durable consumer of this process runs.", "database", keys_sorted(journal),
    function(db) return journal[db] end)
  local shares = {}
  for _, st in ipairs(states) do
    if st.shares then shares[st.consumer] = (shares[st.consumer] or 0) + st.shares end
  end
  gauge(out, "sqlnotify_shares_held", "Shares of its consumer group this process holds (PostgreSQL).", "consumer",
    keys_sorted(shares), function(name) return shares[name] end)
  return concat(out)
end

-- ===== the endpoints =====

local TEXT = "text/plain; charset=utf-8"

--- /ready: every notifier started is receiving.
function M.ready(notifiers)
  if core.stopping() then return 503, "not ready: stopping\n", TEXT end
  for _, s in ipairs(notifier_states(notifiers)) do
    if s.down > 0 then
      return 503, fmt("not ready: the %s of %s%s has been lost for %.1f s (reconnecting)\n",
        s.n._consumer and "journal reader" or "listener", s.database,
        s.n._consumer and fmt(" (consumer %q)", s.n._consumer) or "", s.down), TEXT
    end
  end
  return 200, "ready\n", TEXT
end

--- The server's hook: path -> status, body, content type.
function M.respond(path, notifiers)
  if path == "/metrics" then return 200, M.render(notifiers), "text/plain; version=0.0.4; charset=utf-8" end
  if path == "/ready" then return M.ready(notifiers) end
  return 404, "not found: try /metrics, /health or /ready\n", TEXT
end

--- sqlnotify.metrics{listen = ADDR}: serve /metrics, /health and /ready on ADDR ("host:port",
-- ":port") from this process's loop. Raises when ADDR cannot be bound.
function M.serve(opts, level)
  level = (level or 1) + 1
  if type(opts) ~= "table" then error(fmt("sqlnotify: metrics needs a table {listen = ADDR}, got %s", type(opts)), level) end
  for k in pairs(opts) do
    if k ~= "listen" then error(fmt("sqlnotify: unknown metrics option %q", tostring(k)), level) end
  end
  if type(opts.listen) ~= "string" then
    error(fmt("sqlnotify: metrics: listen must be an address \"host:port\" or \":port\", got %s", type(opts.listen)),
      level)
  end
  local ok, err = core.metrics_listen(opts.listen)
  if not ok then error(err, level) end
  M.on = true
  M.soon()
  return true
end

return M
