--- sqlnotify.mqtt: MQTT publishing (QoS 0 and 1) over libmosquitto, driven by sqlnotify's loop.
--
--   local mq = sqlnotify.mqtt{ url = "mqtt://user:pass@127.0.0.1:1883", client_id = "relay" }
--   assert(mq:publish("orders/created", ev:json(), { qos = 1 }))   -- in a handler: yields until PUBACK
--
-- The connection is made in the background and remade after a loss (backoff up to 5 s); a
-- publish waits for it up to its timeout. A QoS 1 message in flight when the connection drops
-- returns nil, err (so the event is retried: at least once). See docs/clients.md.
local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local error_level = require("sqlnotify.filters").error_level

local fmt = string.format

local M = {}

local function bad(level, ...)
  error("sqlnotify: mqtt: " .. fmt(...), error_level(level + 1))
end

local Client = {}
Client.__index = Client

local OPTIONS = { url = true, client_id = true, keepalive = true, timeout = true, clean_session = true,
                  cafile = true, capath = true, insecure = true }

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- mqtt://[user[:pass]@]host[:port][/] and mqtts://... -> a table of core.mqtt_new options.
local function parse_url(url, level)
  if type(url) ~= "string" then bad(level + 1, "url must be a string, got %s", type(url)) end
  local scheme, rest = url:match("^(%a+)://(.*)$")
  local shown = url:gsub("^(%a+://[^:/@]*):[^@/]*@", "%1:***@")
  if scheme ~= "mqtt" and scheme ~= "mqtts" then
    bad(level + 1, "url %q must start with mqtt:// or mqtts://", shown)
  end
  local o = { tls = scheme == "mqtts" }
  local auth, hostport = rest:match("^(.*)@([^@]*)$")
  if not auth then hostport = rest end
  if auth then
    local u, p = auth:match("^([^:]*):(.*)$")
    o.username, o.password = unescape(u or auth), p and unescape(p)
  end
  hostport = hostport:gsub("/$", "")
  local host, port = hostport:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([%w.%-_]+):?(%d*)$") end
  if not host then
    bad(level + 1, "url %q: expected mqtt://[user:password@]host[:port]", shown)
  end
  o.host = host
  o.port = port ~= "" and tonumber(port) or (o.tls and 8883 or 1883)
  if o.port < 1 or o.port > 65535 then bad(level + 1, "url %q: port %d out of range", shown, o.port) end
  o.name = (host:find(":", 1, true) and "[" .. host .. "]" or host) .. ":" .. o.port
  return o
end

--- sqlnotify.mqtt{url =, client_id =, keepalive = 30, timeout = 10, clean_session = true,
-- cafile =, capath =, insecure = false} -> client. Connects in the background.
function M.new(opts)
  if type(opts) ~= "table" then bad(2, "options must be a table {url = ...}, got %s", type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then bad(2, "unknown option %s", fmt("%q", tostring(k))) end
  end
  local o = parse_url(opts.url, 2)
  local cid = opts.client_id
  if cid ~= nil and (type(cid) ~= "string" or cid == "" or #cid > 65535) then
    bad(2, "client_id must be a non-empty string")
  end
  o.client_id = cid
  local ka = opts.keepalive == nil and 30 or opts.keepalive
  if math.type(ka) ~= "integer" or ka < 5 or ka > 65535 then
    bad(2, "keepalive must be an integer number of seconds from 5 to 65535, got %s", tostring(ka))
  end
  o.keepalive = ka
  local timeout = opts.timeout == nil and 10 or opts.timeout
  if type(timeout) ~= "number" or not (timeout > 0) or timeout == math.huge then
    bad(2, "timeout must be a number of seconds above zero, got %s", tostring(timeout))
  end
  if opts.clean_session ~= nil and type(opts.clean_session) ~= "boolean" then
    bad(2, "clean_session must be a boolean")
  end
  o.clean_session = opts.clean_session ~= false
  if not o.clean_session and cid == nil then
    bad(2, "clean_session = false needs a client_id (the broker keeps the session under it)")
  end
  for _, k in ipairs({ "cafile", "capath" }) do
    if opts[k] ~= nil then
      if type(opts[k]) ~= "string" then bad(2, "%s must be a string", k) end
      if not o.tls then bad(2, "%s is for mqtts:// URLs", k) end
      o[k] = opts[k]
    end
  end
  o.insecure = opts.insecure == true
  local ok, c = pcall(core.mqtt_new, o)
  if not ok then bad(2, "%s", (tostring(c):gsub("^sqlnotify: ", ""):gsub("^mqtt: ", ""))) end
  return setmetatable({ _c = c, _timeout = timeout, _name = o.name }, Client)
end

setmetatable(M, { __call = function(_, opts) return M.new(opts) end })

local PUBLISH_OPTIONS = { qos = true, retain = true, timeout = true }

--- mq:publish(topic, payload[, {qos = 0|1, retain = false, timeout =}]) -> true | nil, err.
-- QoS 0: true once written or queued; QoS 1: true once the broker's PUBACK came. Yields.
function Client:publish(topic, payload, opts)
  if getmetatable(self) ~= Client then bad(2, "publish needs a client: call it as mq:publish(...)") end
  if type(topic) ~= "string" then bad(2, "topic must be a string, got %s", type(topic)) end
  if topic == "" or #topic > 65535 or topic:find("[#+%z]") or not utf8.len(topic) then
    bad(2, "bad publish topic %q (non-empty UTF-8, no wildcards + or #, no NUL)", topic)
  end
  if type(payload) ~= "string" then bad(2, "payload must be a string, got %s", type(payload)) end
  local qos, retain, timeout = 0, false, self._timeout
  if opts ~= nil then
    if type(opts) ~= "table" then bad(2, "publish options must be a table {qos =, retain =}") end
    for k in pairs(opts) do
      if not PUBLISH_OPTIONS[k] then bad(2, "unknown publish option %s", fmt("%q", tostring(k))) end
    end
    if opts.qos ~= nil then
      if opts.qos ~= 0 and opts.qos ~= 1 then bad(2, "qos must be 0 or 1, got %s", tostring(opts.qos)) end
      qos = math.tointeger(opts.qos)
    end
    if opts.retain ~= nil then
      if type(opts.retain) ~= "boolean" then bad(2, "retain must be a boolean") end
      retain = opts.retain
    end
    if opts.timeout ~= nil then
      local t = opts.timeout
      if type(t) ~= "number" or not (t > 0) or t == math.huge then
        bad(2, "timeout must be a number of seconds above zero, got %s", tostring(t))
      end
      timeout = t
    end
  end
  if self._closed then bad(2, "publish on a closed client") end
  local ok, err = delivery.await("mq:publish", self._c.publish, self._c, topic, payload, qos, retain, timeout)
  if ok then return true end
  return nil, err
end

--- mq:connected() -> true while the broker accepted the connection.
function Client:connected()
  return not self._closed and self._c:connected()
end

--- mq:close(): disconnects; publishes still waiting return nil, err.
function Client:close()
  if not self._closed then
    self._closed = true
    self._c:close()
  end
end

Client.__close = Client.close
Client.__name = "sqlnotify.mqtt"

function Client:__tostring()
  return fmt("sqlnotify.mqtt(%s)%s", self._name, self._closed and " closed" or "")
end

return M
