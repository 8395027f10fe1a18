-- A test HTTP/1.1 server for spec 31: lua5.4 http_server.lua PORT MODE LOGFILE.
-- Each request is recorded as one JSON line in LOGFILE (method, path, status, the body's
-- length, the body itself when under 64 KB, its first and last 16 bytes, and the headers
-- content-type, x-key). Modes: "ok" answers 200 "ok"; "503x2" answers 503 to the first two
-- attempts of each distinct body, then 200; "hang" reads the request and never answers;
-- "big" answers 200 with a 10 MB body (BIG bytes of "0123456789"...). Keep-alive throughout.
local cqueues = require("cqueues")
local socket = require("cqueues.socket")
local cjson = require("cjson")

local port, mode, logfile = tonumber(arg[1]), arg[2], arg[3]
assert(port and mode and logfile, "usage: http_server.lua PORT MODE LOGFILE")
local BIG = 10 * 1024 * 1024

local log = assert(io.open(logfile, "a"))
local attempts = {} -- body -> how many times it came
local big_body = ("0123456789"):rep(BIG // 10)

local function record(t)
  log:write(cjson.encode(t), "\n")
  log:flush()
end

local function answer(sock, status, body)
  local reason = status == 200 and "OK" or status == 503 and "Service Unavailable" or "Other"
  sock:write(string.format("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n"
    .. "X-Served-By: spec31\r\nX-Twice: a\r\nX-Twice: b\r\n\r\n", status, reason, #body))
  sock:write(body)
  sock:flush()
end

local function serve(sock)
  sock:setmode("b", "b")
  while true do
    local line = sock:read("*L")
    if not line then return end
    local method, path = line:match("^(%S+) (%S+) HTTP/1%.%d\r?\n$")
    if not method then return end
    local headers = {}
    while true do
      local h = sock:read("*L")
      if not h then return end
      if h == "\r\n" or h == "\n" then break end
      local name, value = h:match("^([^:]+):%s*(.-)%s*\r?\n$")
      if name then headers[name:lower()] = value end
    end
    local len = tonumber(headers["content-length"] or "0")
    local body = len > 0 and sock:read(len) or ""
    if not body or #body ~= len then return end
    if mode == "hang" then
      record({ method = method, path = path, status = 0, len = #body, body = body })
      cqueues.sleep(3600)
      return
    end
    local status, out = 200, "ok"
    if mode == "503x2" then
      attempts[body] = (attempts[body] or 0) + 1
      if attempts[body] <= 2 then status = 503 end
    elseif mode == "big" then
      out = big_body
    end
    record({ method = method, path = path, status = status, len = #body, body = #body < 65536 and body or nil,
      head = body:sub(1, 16), tail = body:sub(-16), ["content-type"] = headers["content-type"],
      ["x-key"] = headers["x-key"] })
    answer(sock, status, out)
  end
end

local cq = cqueues.new()
local srv = assert(socket.listen("127.0.0.1", port))
cq:wrap(function()
  for con in srv:clients() do
    cq:wrap(function()
      local ok, err = pcall(serve, con)
      if not ok then io.stderr:write("http_server: ", tostring(err), "\n") end
      con:close()
    end)
  end
end)
io.stdout:write("listening on ", port, " mode ", mode, "\n")
io.stdout:flush()
assert(cq:loop())
