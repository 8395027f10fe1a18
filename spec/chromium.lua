-- spec/chromium.lua — a headless Chromium driven through the DevTools protocol over
-- --remote-debugging-pipe (JSON messages ended by a NUL byte, on two FIFOs), so a spec
-- can wait for a page's DOM to reach a state instead of guessing how long to wait.
local H = require("helper")
local cjson = require("cjson")

local q = H.shell_quote
local C = {}
C.__index = C

-- Start Chromium with a fresh profile. Raises when it is not installed: a missing
-- browser fails the spec, it does not skip it.
function C.start()
  if not H.sh("command -v chromium >/dev/null") then
    error("chromium is not installed (make check installs it: apt-get install chromium)", 2)
  end
  local dir = H.tmpfile(".chromium")
  assert(H.sh("mkdir -p " .. q(dir) .. "/profile && mkfifo " .. q(dir) .. "/in " .. q(dir) .. "/out"))
  local self = setmetatable({ dir = dir, id = 0 }, C)
  -- `timeout` bounds every read below: a hung browser ends, and its pipe reads end of file.
  assert(H.sh("timeout 300 chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="
    .. q(dir .. "/profile") .. " --remote-debugging-pipe --window-size=1000,640 about:blank 3<"
    .. q(dir .. "/in") .. " 4>" .. q(dir .. "/out") .. " >" .. q(dir .. "/log") .. " 2>&1 </dev/null & echo $! >"
    .. q(dir .. "/pid")))
  self.tx = assert(io.open(dir .. "/in", "w"))
  self.rx = assert(io.open(dir .. "/out", "r"))
  return self
end

local function receive(self)
  local buf = {}
  while true do
    local c = self.rx:read(1)
    if not c then error("chromium exited:\n" .. H.slurp(self.dir .. "/log"), 3) end
    if c == "\0" then return cjson.decode(table.concat(buf)) end
    buf[#buf + 1] = c
  end
end

-- One command; its result (events in between are dropped).
function C:call(method, params, session)
  self.id = self.id + 1
  self.tx:write(cjson.encode { id = self.id, method = method, params = params or {}, sessionId = session }, "\0")
  self.tx:flush()
  repeat
    local msg = receive(self)
    if msg.id == self.id then
      if msg.error then error(method .. ": " .. msg.error.message, 2) end
      return msg.result
    end
  until false
end

-- Open url in a new tab; returns the session that talks to it.
function C:open(url)
  local target = self:call("Target.createTarget", { url = url })
  return self:call("Target.attachToTarget", { targetId = target.targetId, flatten = true }).sessionId
end

-- The value of a JavaScript expression in the page (JSON-able values only).
function C:eval(session, expression)
  local r = self:call("Runtime.evaluate", { expression = expression, returnByValue = true }, session)
  if r.exceptionDetails then error("page: " .. cjson.encode(r.exceptionDetails), 2) end
  return r.result.value
end

-- A PNG of the page at path.
function C:screenshot(session, path)
  local shot = self:call("Page.captureScreenshot", { format = "png" }, session)
  H.spit(path .. ".b64", shot.data)
  assert(H.sh("base64 -d " .. q(path .. ".b64") .. " >" .. q(path) .. " && rm " .. q(path .. ".b64")))
  return path
end

function C:close()
  pcall(self.call, self, "Browser.close")
  if self.tx then self.tx:close() end
  if self.rx then self.rx:close() end
  self.tx, self.rx = nil, nil
  H.sh("kill " .. (H.slurp(self.dir .. "/pid"):match("%d+") or "0") .. " 2>/dev/null")
end

return C
