--- sqlnotify.http: HTTP(S) requests from handlers, through libcurl's multi interface on the
-- loop (src/http.c). One client per Lua state: connections are reused, HTTP/2 where the
-- server offers it. A handler's call yields until the answer.
--
--   local st, body, headers = sqlnotify.http.request{ method = "POST", url = "https://...",
--     headers = { ["Content-Type"] = "application/json" }, body = ev:json(), timeout = 10 }
--
-- A status below 500 is an answer (st, body, headers with lowercase names): the handler
-- decides what a 404 means. A 5xx, and a transfer that failed (refused, timed out, TLS, DNS, a
-- body over max_body), return nil, "sqlnotify: http METHOD URL: why" (the URL without its
-- password), so that assert(...) makes them a retry; a 5xx's status, body and headers follow.

local core = require("sqlnotify.core")
local delivery = require("sqlnotify.delivery")
local error_level = require("sqlnotify.filters").error_level

local fmt, type = string.format, type

local M = {}

M.DEFAULT_TIMEOUT = 30
M.DEFAULT_CONNECT_TIMEOUT = 10
M.DEFAULT_MAX_BODY = 64 * 1024 * 1024

-- The misuse raised at the line that called request (level 1: request itself).
local function bad(level, ...)
  error("sqlnotify: http.request: " .. fmt(...), error_level(level + 1))
end

local function positive(level, opts, k)
  local v = opts[k]
  if v ~= nil and (type(v) ~= "number" or not (v > 0)) then
    bad(level + 1, "%s must be a number of seconds above zero, got %s", k, type(v) == "number" and tostring(v) or type(v))
  end
end

local function boolean(level, opts, k)
  local v = opts[k]
  if v ~= nil and type(v) ~= "boolean" then bad(level + 1, "%s must be a boolean, got %s", k, type(v)) end
end

local function count(level, opts, k, min)
  local v = opts[k]
  if v ~= nil and (math.type(v) ~= "integer" or v < min) then
    bad(level + 1, "%s must be an integer of at least %d, got %s", k, min, type(v) == "number" and tostring(v) or type(v))
  end
end

local KNOWN = { method = true, url = true, headers = true, body = true, timeout = true, connect_timeout = true,
  insecure = true, cainfo = true, follow = true, max_redirects = true, max_body = true }
local NAMES = "method, url, headers, body, timeout, connect_timeout, insecure, cainfo, follow, max_redirects, max_body"

local checked, nchecked = {}, 0 -- url -> the URL without its password (curl parsed it once)

-- The options as http.c takes them (headers as "Name: value" lines, method upper case), or a
-- raise at the caller's line.
local function check(opts, level)
  if not core.http_check_url then core.http_new() end -- built without libcurl: says what to install
  if type(opts) ~= "table" then bad(level + 1, "needs a table of options {url = ..., ...}, got %s", type(opts)) end
  for k in pairs(opts) do
    if not KNOWN[k] then bad(level + 1, "unknown option %s (options: %s)", fmt("%q", tostring(k)), NAMES) end
  end
  local url = opts.url
  if type(url) ~= "string" then bad(level + 1, "url must be a string, got %s", type(url)) end
  local clean, why = checked[url], nil
  if not clean then
    clean, why = core.http_check_url(url)
    if clean then
      if nchecked >= 256 then checked, nchecked = {}, 0 end -- a relay posts to a few URLs
      checked[url], nchecked = clean, nchecked + 1
    end
  end
  if not clean then
    -- the URL as given may hold a password: name the scheme and host part only
    bad(level + 1, "bad url %q: %s", (url:gsub("^([^:/@]*://[^:/@]*):[^@/]*@", "%1:***@")), why)
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then bad(level + 1, "body must be a string, got %s", type(body)) end
  local method = opts.method
  if method == nil then
    method = body and "POST" or "GET"
  elseif type(method) ~= "string" or not method:find("^[%w!#$%%&'*+.^_`|~-]+$") then
    bad(level + 1, "method must be one word (GET, POST, ...), got %s",
      type(method) == "string" and fmt("%q", method) or type(method))
  end
  method = method:upper()
  local lines, expect = {}, false
  local headers = opts.headers
  if headers ~= nil then
    if type(headers) ~= "table" then bad(level + 1, "headers must be a table {Name = value}, got %s", type(headers)) end
    for name, value in pairs(headers) do
      if type(name) ~= "string" or not name:find("^[%w!#$%%&'*+.^_`|~-]+$") then
        bad(level + 1, "header name %s is not a token", fmt("%q", tostring(name)))
      end
      if type(value) == "number" then value = tostring(value) end
      if type(value) ~= "string" or value:find("[\r\n%z]") then
        bad(level + 1, "header %s must have a one-line string value, got %s", name,
          type(value) == "string" and fmt("%q", value) or type(value))
      end
      if name:lower() == "expect" then expect = true end
      -- curl sends "Name:" with an empty value as a removal; "Name;" sends it empty
      lines[#lines + 1] = value == "" and name .. ";" or name .. ": " .. value
    end
    table.sort(lines) -- the same request, the same bytes
  end
  -- curl would ask large bodies to wait for "100 Continue"; most servers never send it
  if not expect then lines[#lines + 1] = "Expect:" end
  positive(level + 1, opts, "timeout")
  positive(level + 1, opts, "connect_timeout")
  boolean(level + 1, opts, "insecure")
  boolean(level + 1, opts, "follow")
  count(level + 1, opts, "max_redirects", 0)
  count(level + 1, opts, "max_body", 1)
  if opts.cainfo ~= nil and type(opts.cainfo) ~= "string" then
    bad(level + 1, "cainfo must be a file name, got %s", type(opts.cainfo))
  end
  local timeout = opts.timeout or M.DEFAULT_TIMEOUT
  return {
    method = method, url = url, what = method .. " " .. clean, headers = lines, body = body, timeout = timeout,
    connect_timeout = math.min(opts.connect_timeout or M.DEFAULT_CONNECT_TIMEOUT, timeout),
    insecure = opts.insecure, cainfo = opts.cainfo,
    follow = opts.follow or opts.max_redirects ~= nil, max_redirects = opts.max_redirects,
    max_body = opts.max_body or M.DEFAULT_MAX_BODY,
  }
end

local client -- this state's multi handle, made on first use; closed with the state

local function start(o, reply)
  if not client then client = core.http_new() end
  return client:start(o, reply)
end

-- A server error is a failure of the call (its answer follows the message).
local function answer(o, st, body, headers, ...)
  if math.type(st) == "integer" and st >= 500 then
    return nil, fmt("sqlnotify: http %s: the server answered %d", o.what, st), st, body, headers
  end
  return st, body, headers, ...
end

--- sqlnotify.http.request{...} -> status, body, headers | nil, "sqlnotify: ..." [, status, body, headers].
-- Yields the calling handler (or spawned coroutine) until the answer.
function M.request(opts)
  local o = check(opts, 2)
  -- await is not tail-called: its error outside a handler names the line calling request
  return answer(o, delivery.await("sqlnotify.http.request", start, o))
end

--- The libcurl this was built with ("libcurl/7.88.1 OpenSSL/3.0 ... nghttp2/...").
M.version = core.http_version

return M
