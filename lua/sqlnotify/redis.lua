--- sqlnotify.redis: a Redis client for handlers (SPEC §8.2), over hiredis's asynchronous
-- context on the runtime's loop (src/redis.c).
--
--   local r = sqlnotify.redis{ url = "redis://:secret@127.0.0.1:6379/0", timeout = 5 }
--   r:call("DEL", "product:" .. ev.id)             -- inside a handler: yields until the reply
--   r:pipeline({ { "SET", "a", "1" }, { "INCR", "b" } })  -- sent at once, one wait
--
-- Replies: a status or bulk string as a string, an integer as an integer, an array as a list,
-- the nil reply as sqlnotify.null (so `assert` passes a missing key), an error nested in an
-- array (EXEC) as { err = "ERR ..." }. An error reply returns nil, "sqlnotify: redis: ERR ...";
-- a transport failure (refused, timeout, connection lost) nil, "sqlnotify: redis: ...".
local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local filters = require("sqlnotify.filters")

local M = {}

local fmt, type, select = string.format, type, select
local await, error_level = delivery.await, filters.error_level

local function bad(level, ...)
  error("sqlnotify: " .. fmt(...), error_level(level + 1))
end

-- What a message may show of a URL: never the password.
local function scrub(url)
  return (url:gsub("^(%a[%w+.-]*://[^:/@]*):[^@/]*@", "%1:***@"))
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- redis://[[user]:password@]host[:port][/db] -> host, port, user, password, db. level: the caller's.
local function parse_url(url, level)
  if type(url) ~= "string" then bad(level + 1, "redis needs url = \"redis://host:port/db\", got %s", type(url)) end
  local shown = fmt("%q", scrub(url))
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then bad(level + 1, "redis url %s: expected redis://[:password@]host[:port][/db]", shown) end
  scheme = scheme:lower()
  if scheme == "rediss" then
    bad(level + 1, "redis url %s: TLS (rediss://) is not supported by this build's hiredis", shown)
  elseif scheme ~= "redis" then
    bad(level + 1, "redis url %s: the scheme must be redis://, got %s://", shown, scheme)
  end
  if rest:find("[?#]") then bad(level + 1, "redis url %s: query options are not supported (use the options table)", shown) end
  local auth, hostport, path = rest:match("^([^@/]*)@([^/]*)(.*)$")
  if not auth then hostport, path = rest:match("^([^/]*)(.*)$") end
  local user, password
  if auth then
    user, password = auth:match("^([^:]*):(.*)$")
    if not user then user, password = "", auth end -- redis://secret@host: the password alone
    user = user ~= "" and unescape(user) or nil
    password = unescape(password)
    if password == "" then password = nil end
  end
  local host, port = hostport:match("^%[([^%]]+)%]:?(.*)$") -- [::1]:6379
  if not host then host, port = hostport:match("^([^:]*):?(.*)$") end
  if host == "" then host = "127.0.0.1" end
  local portn = 6379
  if port ~= "" then
    portn = port:find("^%d+$") and tonumber(port)
    if not portn or portn < 1 or portn > 65535 then
      bad(level + 1, "redis url %s: the port must be a whole number from 1 to 65535, got %q", shown, port)
    end
  end
  local db = 0
  local dbs = path:match("^/(.*)$")
  if dbs and dbs ~= "" then
    db = dbs:find("^%d+$") and #dbs <= 7 and tonumber(dbs)
    if not db then
      bad(level + 1, "redis url %s: the database number must be a whole number from 0, got %q", shown, dbs)
    end
  end
  if user and not password then bad(level + 1, "redis url %s: a user needs a password (user:password@)", shown) end
  return host, math.tointeger(portn), user, password, math.tointeger(db)
end
M._parse_url = parse_url

local Client = {}
Client.__index = Client
Client.__name = "sqlnotify.redis client"

--- sqlnotify.redis{ url =, timeout = 5 } -> a client. It starts connecting on the loop at once
-- and does not wait; a bad URL or option raises here.
function M.new(opts)
  if type(opts) == "string" then opts = { url = opts } end
  if type(opts) ~= "table" then bad(2, "redis needs a table of options { url = \"redis://...\" }, got %s", type(opts)) end
  for k in pairs(opts) do
    if k ~= "url" and k ~= "timeout" then bad(2, "redis: unknown option %s (use url, timeout)", fmt("%q", tostring(k))) end
  end
  local host, port, user, password, db = parse_url(opts.url, 2)
  local timeout = opts.timeout
  if timeout == nil then timeout = 5 end
  if type(timeout) ~= "number" or not (timeout > 0 and timeout < 1e9) then
    bad(2, "redis: timeout must be a number of seconds above 0, got %s", tostring(timeout))
  end
  return setmetatable({ _h = core.redis_new(host, port, user, password, db, timeout, filters.null),
    url = scrub(opts.url) }, Client)
end

setmetatable(M, { __call = function(_, opts) return M.new(opts) end })
M.null = filters.null

local PUBSUB = { subscribe = true, psubscribe = true, ssubscribe = true, unsubscribe = true,
  punsubscribe = true, sunsubscribe = true, monitor = true }

-- Each argument a string or a number; the command not one that changes the connection's mode.
local function check_args(level, what, ...)
  local n = select("#", ...)
  if n == 0 then bad(level + 1, "%s needs a command, e.g. r:call(\"GET\", key)", what) end
  for i = 1, n do
    local v = select(i, ...)
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" then
      bad(level + 1, "%s: argument %d must be a string or a number, got %s", what, i, tv)
    end
  end
  local name = (...)
  if type(name) == "string" and PUBSUB[name:lower()] then
    bad(level + 1, "%s: %s changes the connection's mode; pub/sub is not supported", what, name:upper())
  end
end

local function handle(self, level)
  local h = type(self) == "table" and rawget(self, "_h")
  if not h then bad(level + 1, "redis: call the methods with a colon (r:call, not r.call)") end
  if rawget(self, "_closed") then bad(level + 1, "redis: this client is closed (%s)", self.url) end
  return h
end

local function start_call(h, ...) return h:call(...) end
local function start_pipeline(h, cmds, reply) return h:pipeline(cmds, reply) end

--- r:call(cmd, ...) -> the reply | nil, "sqlnotify: redis: ..." (yields the calling handler).
function Client:call(...)
  local h = handle(self, 2)
  check_args(2, "redis call", ...)
  return await("redis call", start_call, h, ...)
end

--- r:pipeline({ {cmd, ...}, ... }) -> a list with one reply per command, in order. When a
-- command got an error reply: nil, "sqlnotify: redis: pipeline command i of n failed: ERR ...",
-- and the list (with { err = "..." } in that place). A transport failure: nil, message.
function Client:pipeline(cmds)
  local h = handle(self, 2)
  if type(cmds) ~= "table" or #cmds == 0 then
    bad(2, "redis pipeline needs a non-empty list of commands, e.g. { {\"SET\", \"a\", \"1\"} }")
  end
  for i = 1, #cmds do
    local c = cmds[i]
    if type(c) ~= "table" then bad(2, "redis pipeline: command %d must be a list, got %s", i, type(c)) end
    check_args(2, fmt("redis pipeline command %d", i), table.unpack(c, 1, #c))
  end
  return await("redis pipeline", start_pipeline, h, cmds)
end

--- r:connected() -> true while the connection is up (AUTH and SELECT done).
function Client:connected()
  return handle(self, 2):connected()
end

--- r:close(): drops the connection; calls in flight or waiting return nil, "sqlnotify: redis: the
-- client was closed". Safe twice. (A client the collector takes, or a state a reload closes,
-- releases everything too.)
function Client:close()
  local h = rawget(self, "_h")
  if h then
    rawset(self, "_closed", true)
    h:close()
  end
end
Client.__close = Client.close

function Client:__tostring()
  return "sqlnotify.redis(" .. self.url .. ")"
end

return M
