--- sqlnotify.kafka: a Kafka producer over librdkafka, its events served on sqlnotify's loop.
--
--   local k = sqlnotify.kafka{ brokers = "127.0.0.1:9092", client_id = "relay" }
--   assert(k:produce("orders", ev:json(), { key = tostring(ev.id) }))  -- in a handler: yields until acked
--
-- librdkafka connects and retries on its own up to the client's timeout; the idempotent
-- producer (on by default) keeps its retries from duplicating. A message not delivered by
-- then returns nil, err (so the event is retried: at least once). See docs/clients.md.
local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local error_level = require("sqlnotify.filters").error_level

local fmt = string.format

local M = {}

local function bad(level, ...)
  error("sqlnotify: kafka: " .. fmt(...), error_level(level + 1))
end

local Client = {}
Client.__index = Client

local OPTIONS = { brokers = true, client_id = true, timeout = true, acks = true, idempotence = true,
                  linger_ms = true, config = true }

-- librdkafka properties an option of ours sets (aliases included): config may not set them too.
local OWNED = {
  ["bootstrap.servers"] = "brokers", ["metadata.broker.list"] = "brokers",
  ["client.id"] = "client_id",
  ["message.timeout.ms"] = "timeout", ["delivery.timeout.ms"] = "timeout",
  ["acks"] = "acks", ["request.required.acks"] = "acks",
  ["enable.idempotence"] = "idempotence",
  ["linger.ms"] = "linger_ms", ["queue.buffering.max.ms"] = "linger_ms",
  ["log.queue"] = false, -- the loop serves librdkafka's log lines
}

-- Values never shown: the C side writes *** for them (or for what is left of one) in every
-- message and log line of librdkafka's that quotes them.
local function secret(key)
  return key:find("password", 1, true) or key:find("secret", 1, true) or key:find("%.pem$")
    or key:find("oauthbearer.config", 1, true) or key:find("jaas", 1, true)
end

-- "host:port,host:port" (port 9092 when left out; an IPv6 address in brackets).
local function check_brokers(s, level)
  if type(s) ~= "string" then bad(level + 1, "brokers must be a string \"host:port,...\", got %s", type(s)) end
  local n = 0
  for item in (s .. ","):gmatch("([^,]*),") do
    item = item:match("^%s*(.-)%s*$")
    local host, port = item:match("^%[([%x:.]+)%]:?(%d*)$")
    if not host then host, port = item:match("^([%w.%-_]+):?(%d*)$") end
    if not host then bad(level + 1, "brokers %q: expected host:port, comma-separated", s) end
    local p = port ~= "" and tonumber(port) or 9092
    if p < 1 or p > 65535 then bad(level + 1, "brokers %q: port %d out of range", s, p) end
    n = n + 1
  end
  if n == 0 then bad(level + 1, "brokers %q: expected host:port, comma-separated", s) end
  return s
end

local function positive(v, what, level)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
    bad(level + 1, "%s must be a number of seconds above zero, got %s", what, tostring(v))
  end
  return v
end

--- sqlnotify.kafka{brokers =, client_id = "sqlnotify", timeout = 10, acks = "all",
-- idempotence = true, linger_ms = 5, config = {["librdkafka.property"] = value}} -> client.
-- Connects in the background.
function M.new(opts)
  if type(opts) ~= "table" then bad(2, "options must be a table {brokers = ...}, got %s", type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then bad(2, "unknown option %s", fmt("%q", tostring(k))) end
  end
  local brokers = check_brokers(opts.brokers, 2)
  local cid = opts.client_id == nil and "sqlnotify" or opts.client_id
  if type(cid) ~= "string" or cid == "" then bad(2, "client_id must be a non-empty string") end
  local timeout = positive(opts.timeout == nil and 10 or opts.timeout, "timeout", 2)
  local acks = opts.acks == nil and "all" or opts.acks
  if acks == -1 then acks = "all" end
  if acks ~= "all" and acks ~= 0 and acks ~= 1 then
    bad(2, "acks must be \"all\", 1 or 0, got %s", type(acks) == "string" and fmt("%q", acks) or tostring(acks))
  end
  local idem = opts.idempotence
  if idem ~= nil and type(idem) ~= "boolean" then bad(2, "idempotence must be a boolean") end
  idem = idem ~= false
  if idem and acks ~= "all" then
    bad(2, "acks = %d needs idempotence = false (an idempotent producer waits for every in-sync replica)", acks)
  end
  local linger = opts.linger_ms == nil and 5 or opts.linger_ms
  if math.type(linger) ~= "integer" or linger < 0 or linger > 900000 then
    bad(2, "linger_ms must be an integer from 0 to 900000, got %s", tostring(linger))
  end
  local timeout_ms = math.ceil(timeout * 1000)
  if timeout_ms > 0x7fffffff then bad(2, "timeout must be at most 2147483 s (librdkafka's limit), got %g", timeout) end
  timeout_ms = math.tointeger(timeout_ms)
  if timeout_ms <= linger then
    bad(2, "timeout (%g s) must be longer than linger_ms (%d ms)", timeout, linger)
  end
  local conf = { "bootstrap.servers", brokers, "client.id", cid, "message.timeout.ms", fmt("%d", timeout_ms),
    "acks", acks == "all" and "all" or fmt("%d", acks), "enable.idempotence", tostring(idem),
    "linger.ms", tostring(linger) }
  local secrets = {}
  if opts.config ~= nil then
    if type(opts.config) ~= "table" then bad(2, "config must be a table {[\"property\"] = value}") end
    local keys, values = {}, {}
    for k, v in pairs(opts.config) do
      if type(k) ~= "string" then bad(2, "config: property names are strings, got %s", type(k)) end
      local owner = OWNED[k]
      if owner then bad(2, "config: %q is set by the option %s", k, owner) end
      if owner == false then bad(2, "config: %q is sqlnotify's to set", k) end
      local tv = type(v)
      if tv == "boolean" then
        v = tostring(v)
      elseif math.type(v) == "integer" then
        v = fmt("%d", v)
      elseif tv == "number" then
        v = fmt("%.17g", v)
      elseif tv ~= "string" then
        bad(2, "config: %q must be a string, number or boolean, got %s", k, tv)
      end
      if secret(k) and v ~= "" then secrets[#secrets + 1] = v end
      keys[#keys + 1] = k
      values[k] = v
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      conf[#conf + 1] = k
      conf[#conf + 1] = values[k]
    end
  end
  local ok, c = pcall(core.kafka_new, brokers, timeout, conf, secrets)
  if not ok then bad(2, "%s", (tostring(c):gsub("^sqlnotify: ", ""):gsub("^kafka: ", ""))) end
  return setmetatable({ _c = c, _timeout = timeout, _name = brokers }, Client)
end

setmetatable(M, { __call = function(_, opts) return M.new(opts) end })

local PRODUCE_OPTIONS = { key = true, headers = true, partition = true, timeout = true }

--- k:produce(topic, value[, {key =, headers = {name = value}, partition =, timeout =}])
-- -> true | nil, err. Yields until the broker acknowledged the message (per acks).
function Client:produce(topic, value, opts)
  if getmetatable(self) ~= Client then bad(2, "produce needs a client: call it as k:produce(...)") end
  if type(topic) ~= "string" then bad(2, "topic must be a string, got %s", type(topic)) end
  if #topic > 249 or not topic:find("^[%w._%-]+$") or topic == "." or topic == ".." then
    bad(2, "bad topic %q (1 to 249 of a-z A-Z 0-9 . _ -)", topic)
  end
  local key, hdrs, partition, timeout = nil, nil, -1, self._timeout
  if opts ~= nil then
    if type(opts) ~= "table" then
      bad(2, "produce options must be a table {key =, headers =, partition =, timeout =}")
    end
    for k in pairs(opts) do
      if not PRODUCE_OPTIONS[k] then bad(2, "unknown produce option %s", fmt("%q", tostring(k))) end
    end
    key = opts.key
    if key ~= nil then
      if type(key) == "number" then
        key = math.type(key) == "integer" and fmt("%d", key) or tostring(key)
      elseif type(key) ~= "string" then
        bad(2, "key must be a string or a number, got %s", type(key))
      end
    end
    if opts.headers ~= nil then
      if type(opts.headers) ~= "table" then bad(2, "headers must be a table {name = value}") end
      local names = {}
      for name, v in pairs(opts.headers) do
        if type(name) ~= "string" or name == "" or name:find("%z") then
          bad(2, "header names must be non-empty strings without NUL, got %s", fmt("%q", tostring(name)))
        end
        if type(v) ~= "string" then bad(2, "header %q must be a string, got %s", name, type(v)) end
        names[#names + 1] = name
      end
      table.sort(names)
      hdrs = {}
      for _, name in ipairs(names) do
        hdrs[#hdrs + 1] = name
        hdrs[#hdrs + 1] = opts.headers[name]
      end
    end
    if opts.partition ~= nil then
      local p = opts.partition
      if math.type(p) ~= "integer" or p < 0 or p > 0x7fffffff then
        bad(2, "partition must be an integer from 0, got %s", tostring(p))
      end
      partition = p
    end
    if opts.timeout ~= nil then
      timeout = positive(opts.timeout, "timeout", 2)
      if timeout > self._timeout then
        bad(2, "timeout %g is above the client's (%g s, librdkafka's message.timeout.ms)", timeout, self._timeout)
      end
    end
  end
  if value ~= nil and type(value) ~= "string" then
    bad(2, "value must be a string (or nil, with a key: a tombstone), got %s", type(value))
  end
  if value == nil and key == nil then bad(2, "value nil (a tombstone) needs a key") end
  if self._closed then bad(2, "produce on a closed client") end
  local ok, err = delivery.await("k:produce", self._c.produce, self._c, topic, value, key, hdrs, partition, timeout)
  if ok then return true end
  return nil, err
end

--- k:close(): purges what librdkafka holds, without waiting for the brokers; produce calls
-- still waiting return nil, err.
function Client:close()
  if not self._closed then
    self._closed = true
    self._c:close()
  end
end

Client.__close = Client.close
Client.__name = "sqlnotify.kafka"

function Client:__tostring()
  return fmt("sqlnotify.kafka(%s)%s", self._name, self._closed and " closed" or "")
end

M.version = core.kafka_version

return M
