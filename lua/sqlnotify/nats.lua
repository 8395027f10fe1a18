--- sqlnotify.nats: NATS and JetStream publishing (SPEC §8.2), a thin layer over the NATS C
-- client driven by our loop (src/nats.c). The calls that wait for an answer (publish, request)
-- yield the calling handler; a failure returns nil, "sqlnotify: nats: ..." so assert() makes it
-- a retry. A bad URL, option or argument raises at the caller's line.
--
--   local nc = sqlnotify.nats{ url = "nats://127.0.0.1:4222", timeout = 5 }
--   local ack = assert(nc:publish("orders.created", ev:json(), { msg_id = tostring(ev.seq) }))
--   -- ack = { stream = "ORDERS", seq = 42, duplicate = false }
local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local error_level = require("sqlnotify.filters").error_level

local fmt = string.format

local M = {}

local function bad(level, ...)
  error("sqlnotify: nats: " .. fmt(...), error_level(level + 1))
end

-- "user:password@host" loses its password: what messages and logs show.
local function scrub(url)
  return (url:gsub("^(%a+://[^:/@]*):[^@/]*@", "%1:***@"))
end

-- nats://[user[:pass]@]host[:port], tls:// likewise; several servers separated by commas.
local function check_url(url, level)
  if type(url) ~= "string" then bad(level + 1, "url must be a string like \"nats://127.0.0.1:4222\", got %s", type(url)) end
  for one in (url .. ","):gmatch("([^,]*),") do
    local scheme, rest = one:match("^%s*(%a+)://(.*)$")
    if scheme ~= "nats" and scheme ~= "tls" then
      bad(level + 1, "url %q must start with nats:// or tls://", scrub(one))
    end
    local hostport = rest:gsub("^[^@/]*@", ""):gsub("/$", "")
    local host, port = hostport:match("^([%w%.%-]+):(%d+)$")
    if not host then host, port = hostport:match("^(%[[%x:]+%]):(%d+)$") end
    if not host then host = hostport:match("^[%w%.%-]+$") or hostport:match("^%[[%x:]+%]$") end
    if not host or (port and (tonumber(port) < 1 or tonumber(port) > 65535)) then
      bad(level + 1, "url %q: expected %s://[user:password@]host[:port]", scrub(one), scheme)
    end
  end
end

local function check_seconds(name, v, default, level)
  if v == nil then return default end
  if type(v) ~= "number" or not (v > 0 and v < 1e6) then
    bad(level + 1, "%s must be a number of seconds above 0, got %s", name, type(v) == "number" and tostring(v) or type(v))
  end
  return v
end

-- A subject to publish to: tokens separated by dots, no wildcard, no space or control byte
-- (they would break the protocol line). Subjects found good are remembered (up to 256, then
-- forgotten together): a relay publishes to a few, and the eight searches cost 1.5 us a call.
local good_subjects, n_good = {}, 0

local function check_subject(s, level)
  if good_subjects[s] then return end
  if type(s) ~= "string" then bad(level + 1, "subject must be a string, got %s", type(s)) end
  if s == "" or s:find("[%s%c]") or s:find("^%.") or s:find("%.$") or s:find("%.%.")
      or s:find("^[*>]%.") or s:find("%.[*>]%.") or s:find("%.[*>]$") or s == "*" or s == ">" then
    bad(level + 1, "subject %q: expected dot-separated tokens without spaces, control bytes or wildcards", s)
  end
  if n_good >= 256 then good_subjects, n_good = {}, 0 end
  good_subjects[s], n_good = true, n_good + 1
end

local function check_data(d, level)
  if d == nil then return "" end
  if type(d) ~= "string" then bad(level + 1, "data must be a string, got %s (ev:json() gives one)", type(d)) end
  return d
end

local Client = {}
Client.__index = Client
Client.__name = "sqlnotify.nats"

local function handle(self, level)
  if getmetatable(self) ~= Client then bad(level + 1, "this is a method: call it with a colon, nc:publish(...)") end
  if self._closed then bad(level + 1, "this client is closed") end
  return self._h
end

local PUB_OPTS = { msg_id = true, stream = true }

--- nc:publish(subject, data[, { msg_id =, stream = }]) -> { stream =, seq =, duplicate = } | nil, err.
-- A JetStream publish: returns once the stream stored it (msg_id: the Nats-Msg-Id header, so the
-- stream drops a redelivery within its duplicate window; stream: the stream expected to take it).
function Client:publish(subject, data, opts)
  local h = handle(self, 2)
  check_subject(subject, 2)
  data = check_data(data, 2)
  local msg_id, stream
  if opts ~= nil then
    if type(opts) ~= "table" then bad(2, "publish options must be a table { msg_id =, stream = }, got %s", type(opts)) end
    for k in pairs(opts) do
      if not PUB_OPTS[k] then bad(2, "unknown publish option %s (use msg_id, stream)", fmt("%q", tostring(k))) end
    end
    msg_id, stream = opts.msg_id, opts.stream
    if math.type(msg_id) == "integer" then msg_id = tostring(msg_id) end
    if msg_id ~= nil and (type(msg_id) ~= "string" or msg_id == "" or msg_id:find("[\r\n]")) then
      bad(2, "msg_id must be a non-empty string (or an integer) without line breaks, got %s",
        type(msg_id) == "string" and fmt("%q", msg_id) or type(msg_id))
    end
    if stream ~= nil and (type(stream) ~= "string" or stream == "" or stream:find("[%s%c%.%*>]")) then
      bad(2, "stream must be a stream name, got %s", type(stream) == "string" and fmt("%q", stream) or type(stream))
    end
  end
  -- not a tail call: await raises at its caller's caller, which must be this frame's caller
  local r, err = delivery.await("nc:publish", h.publish, h, subject, data, msg_id, stream)
  if r == nil then return nil, err end
  return r
end

--- nc:publish_core(subject, data) -> true | nil, err: core NATS, no acknowledgement; true once
-- cnats buffered it (sent on the loop; kept while reconnecting, up to cnats's buffer).
function Client:publish_core(subject, data)
  local h = handle(self, 2)
  check_subject(subject, 2)
  data = check_data(data, 2)
  return h:publish_core(subject, data)
end

--- nc:request(subject, data[, timeout]) -> the reply's data | nil, err.
function Client:request(subject, data, timeout)
  local h = handle(self, 2)
  check_subject(subject, 2)
  data = check_data(data, 2)
  if timeout ~= nil then timeout = check_seconds("timeout", timeout, nil, 2) end
  local r, err = delivery.await("nc:request", h.request, h, subject, data, timeout)
  if r == nil then return nil, err end
  return r -- one value: cjson.decode(assert(nc:request(...))) works
end

--- nc:status() -> "connected" | "connecting" | "reconnecting" | "closed" (after close()) | ...
-- (a connection cnats closed, refusing credentials, is replaced: "reconnecting" meanwhile)
function Client:status()
  return self._h:status()
end

--- nc:close(): the calls waiting get nil, "sqlnotify: nats: ... the client was closed".
function Client:close()
  -- the handle stays: the calls waiting are answered from the loop through it
  self._h:close()
  self._closed = true
end

function Client:__tostring()
  return fmt("sqlnotify.nats (%s, %s)", self.where, self:status())
end

local OPTS = { url = true, timeout = true, connect_timeout = true, name = true }

--- sqlnotify.nats{ url =, timeout = 5, connect_timeout = 2, name = } -> client (a server down or
-- refusing is retried in the background: not an error)
local function new(_, opts)
  if type(opts) ~= "table" then bad(2, "sqlnotify.nats needs a table { url = \"nats://host:port\" }, got %s", type(opts)) end
  for k in pairs(opts) do
    if not OPTS[k] then bad(2, "unknown option %s (use url, timeout, connect_timeout, name)", fmt("%q", tostring(k))) end
  end
  check_url(opts.url, 2)
  local timeout = check_seconds("timeout", opts.timeout, 5, 2)
  local ctimeout = check_seconds("connect_timeout", opts.connect_timeout, 2, 2)
  if opts.name ~= nil and type(opts.name) ~= "string" then bad(2, "name must be a string, got %s", type(opts.name)) end
  local where = scrub(opts.url)
  local h, err = core.nats_new(opts.url, where, timeout, ctimeout, opts.name)
  if not h then return nil, err end
  return setmetatable({ _h = h, where = where, timeout = timeout }, Client)
end

return setmetatable(M, { __call = new })
