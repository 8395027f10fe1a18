-- Every change of one table, live in the browser: one HTML page and a Server-Sent Events
-- stream, served with cqueues sockets beside the handlers. Each change goes to every
-- connected browser as one JSON event with an id; a browser that reconnects sends the
-- last id it saw (Last-Event-ID) and is sent what it missed, from a ring of recent events.
--
-- Run it:  make demo-live          (a throwaway SQLite file, writes from a timer)
--   or:    sqlnotify-lua scripts/examples/live.lua [--demo] [URL [TABLE [PORT]]]
--   e.g.   sqlnotify-lua scripts/examples/live.lua postgresql://localhost/shop public.orders 8080
-- then open the printed http://127.0.0.1:PORT/ in a browser.
--   URL    default $DATABASE_URL          TABLE  default $LIVE_TABLE, else "items"
--   PORT   default $LIVE_PORT, else 8080 (0: any free port)   address: $LIVE_HOST, else 127.0.0.1
--   $LIVE_RING  how many recent events a reconnecting browser can catch up on (default 10000)
--   $LIVE_MAX_CONNECTIONS  connections served at once; more are answered 503 (default 1000:
--               the process needs `ulimit -n` a few dozen above it)
--   $LIVE_REQUEST_TIMEOUT  seconds a client has to send its whole request (default 10)
--   --demo      create TABLE if it is missing and change a row of it every second
-- Needs lua-cqueues and lua-cjson (Debian packages).
local sqlnotify = require("sqlnotify")
local cqueues = require("cqueues")
local condition = require("cqueues.condition")
local errno = require("cqueues.errno")
local socket = require("cqueues.socket")
local cjson = require("cjson")

io.stdout:setvbuf("line")

local args, demo = {}, false
for _, a in ipairs(arg) do
  if a == "--demo" then demo = true else args[#args + 1] = a end
end
local URL = args[1] or os.getenv("DATABASE_URL")
local TABLE = args[2] or os.getenv("LIVE_TABLE") or "items"
local PORT = tonumber(args[3] or os.getenv("LIVE_PORT") or 8080)
local HOST = os.getenv("LIVE_HOST") or "127.0.0.1"
local RING = math.tointeger(tonumber(os.getenv("LIVE_RING") or 10000))
local MAX_CONNECTIONS = math.tointeger(tonumber(os.getenv("LIVE_MAX_CONNECTIONS") or 1000))
local REQUEST_TIMEOUT = tonumber(os.getenv("LIVE_REQUEST_TIMEOUT") or 10)
local WRITE_TIMEOUT = 10 -- seconds: a browser that takes nothing for so long is dropped
local HEARTBEAT = 15 -- seconds: a comment line keeps proxies open and finds dead clients
local PIECE = 16384 -- bytes: a stream writes its backlog this much at a time
if not URL then error("live.lua: give a database URL (argument or DATABASE_URL)", 0) end
if not PORT or not RING or RING < 1 or not MAX_CONNECTIONS or MAX_CONNECTIONS < 1 then
  error("live.lua: PORT, LIVE_RING and LIVE_MAX_CONNECTIONS must be integers", 0)
end
if not REQUEST_TIMEOUT or REQUEST_TIMEOUT <= 0 then error("live.lua: LIVE_REQUEST_TIMEOUT must be seconds", 0) end

local n = assert(sqlnotify.notifier { url = URL })
local schema, name = TABLE:match("^([^.]+)%.(.+)$")
if not schema then name = TABLE end

local function quote(id) return '"' .. id:gsub('"', '""') .. '"' end
local qtable = (schema and quote(schema) .. "." or "") .. quote(name)

if demo then
  assert(n:query("CREATE TABLE IF NOT EXISTS " .. qtable .. (n.dialect_name == "postgresql"
    and " (id bigserial PRIMARY KEY, name text NOT NULL, qty integer NOT NULL DEFAULT 0)"
    or " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL DEFAULT 0)")))
end

-- Every column of the table travels with each event.
local columns_sql = {
  postgresql = [[SELECT attname AS name FROM pg_attribute
    WHERE attrelid = to_regclass(CASE WHEN $1 = '' THEN quote_ident($2)
                                      ELSE quote_ident($1) || '.' || quote_ident($2) END)
      AND attnum > 0 AND NOT attisdropped ORDER BY attnum]],
  sqlite = "SELECT name FROM pragma_table_info(?2) WHERE ?1 = ?1 ORDER BY cid",
}
local rows = assert(n:query(columns_sql[n.dialect_name], schema or "", name))
local columns = {}
for i, r in ipairs(rows) do columns[i] = r.name end
if #columns == 0 then error("live.lua: no table " .. TABLE, 0) end

-- ===== the ring of recent events =====
-- Event ids are "<boot>-<n>": n counts the events of this process, boot tells this process
-- from an earlier one, whose n would mean other events. (With a durable consumer the id
-- would be the journal's event.seq, and a browser older than the ring would be caught up
-- from the journal instead of being told it missed events.)
local BOOT = string.format("%x", math.floor(sqlnotify.now() * 1e6))
local ring, head = {}, 0 -- ring[(i - 1) % RING + 1] is the text of event i; head the last i
local arrived = condition.new()

-- cjson writes numbers with 14 significant digits: larger integers go as strings, exact.
local function exact(v)
  if math.type(v) == "integer" and (v >= 1e14 or v <= -1e14) then return tostring(v) end
  return v
end

local function publish(ev)
  local row = {}
  for k, v in pairs(ev.extra_columns) do row[k] = exact(v) end
  local id = ev.id
  if type(id) == "table" then
    local t = {}
    for i, v in ipairs(id) do t[i] = exact(v) end
    id = t
  else
    id = exact(id)
  end
  head = head + 1
  -- "at": when the host received the change, to the microsecond
  ring[(head - 1) % RING + 1] = string.format(
    'id: %s-%d\ndata: {"op":"%s","table":%s,"id":%s,"row":%s,"at":%.6f%s}\n\n', BOOT, head, ev.operation,
    cjson.encode(ev.table), cjson.encode(id), cjson.encode(row), ev.timestamp,
    ev.truncated and ',"truncated":true' or "")
  arrived:signal() -- wakes every stream; they write from the socket coroutines, not here
end

for _, op in ipairs { sqlnotify.INSERT, sqlnotify.UPDATE, sqlnotify.DELETE } do
  n:watch(TABLE, op, { extra_columns = columns })
  n:subscribe(TABLE, op, publish)
end

-- ===== HTTP =====

local PAGE = [[<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>live: {{TABLE}}</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #1d2330; }
h1 { font-size: 1.3em; } code { background: #eef1f6; padding: 0 .3em; border-radius: 3px; }
#status { color: #56607a; } #status.live::before { content: "\25CF  "; color: #1a9c4a; }
table { border-collapse: collapse; margin-top: 1em; min-width: 30em; }
th, td { border-bottom: 1px solid #dde2ea; padding: .35em .8em; text-align: left; }
th { background: #f4f6fa; font-weight: 600; }
tr.insert td:first-child { color: #1a9c4a; } tr.update td:first-child { color: #b07a00; }
tr.delete { color: #9aa2b4; text-decoration: line-through; }
tr.fresh { animation: fresh 1.5s ease-out; }
@keyframes fresh { from { background: #fff3b0; } to { background: transparent; } }
</style></head><body>
<h1>Changes of <code>{{TABLE}}</code>, live</h1>
<p id="status">connecting&hellip;</p>
<table><thead><tr id="head"><th>change</th></tr></thead><tbody id="rows"></tbody></table>
<script>
const head = document.getElementById("head"), body = document.getElementById("rows"),
      status = document.getElementById("status"), byKey = new Map(), cols = [];
let changes = 0;
function show(text, live) { status.textContent = text; status.className = live ? "live" : ""; }
function cell(tr, text, tag) {
  const td = document.createElement(tag || "td"); td.textContent = text; tr.appendChild(td);
}
function column(c) { if (!cols.includes(c)) { cols.push(c); cell(head, c, "th"); } }
{{COLUMNS}}.forEach(column);
const source = new EventSource("events");
source.onopen = () => show("live: " + changes + " changes", true);
// It reconnects by itself, except after an answer other than a stream (503: the server is full).
source.onerror = () => show(source.readyState === EventSource.CLOSED
  ? "refused by the server (too many connections?); reload to try again" : "reconnecting\u2026", false);
source.addEventListener("reset", () => show("some changes were missed while away; showing new ones", true));
source.onmessage = (m) => {
  const ev = JSON.parse(m.data), key = JSON.stringify(ev.id);
  Object.keys(ev.row).forEach(column);
  const tr = document.createElement("tr");
  tr.className = ev.op + " fresh"; tr.dataset.key = key; tr.dataset.event = m.lastEventId;
  cell(tr, ev.truncated ? ev.op + " (row too large to send)" : ev.op);
  for (const c of cols) cell(tr, ev.row[c] === undefined ? "" : String(ev.row[c]));
  const old = byKey.get(key);
  if (old) old.remove();
  byKey.set(key, tr);
  body.insertBefore(tr, body.firstChild);
  changes++; show("live: " + changes + " changes", true);
};
</script></body></html>
]]
-- The table's name goes into HTML, its column names into the script (as JSON, with "<" escaped).
PAGE = PAGE:gsub("{{(%u+)}}", {
  TABLE = (TABLE:gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" })),
  COLUMNS = (cjson.encode(columns):gsub("<", "\\u003c")),
})

local connections, streams = 0, 0

-- The events after Last-Event-ID, or nil when they are no longer all in the ring (or the
-- id is from another process): the browser is then told it missed some.
local function resume_from(last)
  if not last then return head end
  local boot, i = last:match("^(%x+)%-(%d+)$")
  i = math.tointeger(tonumber(i))
  if boot ~= BOOT or not i or i > head or i < head - RING then return nil end
  return i
end

-- The events after pos, as one string of about PIECE bytes (one event at least), and the
-- position after them.
local function piece(pos)
  local parts, size = {}, 0
  while pos < head and size < PIECE do
    pos = pos + 1
    parts[#parts + 1] = ring[(pos - 1) % RING + 1]
    size = size + #parts[#parts]
  end
  return table.concat(parts), pos
end

-- A stream holds a position in the ring, not a copy of its events: what it is behind goes out
-- a piece at a time, each once the socket has taken the previous one, so a browser that stops
-- reading costs the host one piece, however much it has to catch up on.
local function stream(con, last)
  local pos = resume_from(last)
  local ok, why = con:write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    .. "Connection: close\r\n\r\nretry: 1000\n\n", pos and "" or "event: reset\ndata: {}\n\n")
  pos = pos or head
  streams = streams + 1
  print(string.format("live: stream opened (%d open)", streams))
  local gone = { pollfd = con:pollfd(), events = "r" } -- readable: the browser closed (it sends nothing else)
  while ok do
    local behind = head - pos
    if behind > RING then
      print(string.format("live: dropped a stream %d events behind, more than the ring holds; "
        .. "it reconnects and is told it missed some", behind))
      break
    elseif behind > 0 then
      local text
      text, pos = piece(pos)
      ok, why = con:write(text)
      -- More events came while the socket took this piece than it held: the browser reads
      -- slower than they come. Once that puts it past half the ring it is dropped, while its
      -- next event is still in the ring: it reconnects with its Last-Event-ID and resumes.
      if ok and head - pos > math.max(behind, RING // 2) then
        print(string.format("live: dropped a stream falling behind (%d events); it reconnects and resumes",
          head - pos))
        break
      end
    else
      local ready = cqueues.poll(arrived, gone, HEARTBEAT)
      if ready == gone then break end
      if ready ~= arrived then ok, why = con:write(": keepalive\n\n") end
    end
  end
  if why == errno.ETIMEDOUT then
    print(string.format("live: dropped a stream that took nothing for %d s", WRITE_TIMEOUT))
  end
  streams = streams - 1
  print(string.format("live: stream closed (%d open)", streams))
end

-- The request line and the headers, all within REQUEST_TIMEOUT: a client that sends part of a
-- request and stalls, or trickles it, is closed then. Returns method, path, Last-Event-ID, or
-- nothing when no whole request came.
local function request(con)
  local deadline = cqueues.monotime() + REQUEST_TIMEOUT
  local function line()
    local left = deadline - cqueues.monotime()
    if left <= 0 then return nil end
    con:settimeout(left)
    return con:read("*l")
  end
  local method, path = (line() or ""):match("^(%u+) (%S+) HTTP/1%.%d$")
  if not method then return end
  local last
  while true do
    local header = line()
    if not header then return end
    if header == "" then break end
    local k, v = header:match("^([^:]+):%s*(.-)%s*$")
    if k and k:lower() == "last-event-id" then last = v end
  end
  return method, path:gsub("%?.*", ""), last
end

local function respond(con, status, kind, body)
  con:write(string.format("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
    status, kind, #body, body))
end

local function serve(con, refused)
  con:setmode("tl", "bn") -- lines in, and each write goes out whole before it returns
  con:onerror(function(_, _, why) return why end) -- socket errors are returned, never raised
  local method, path, last = request(con)
  con:settimeout(WRITE_TIMEOUT)
  if not method then
    return -- no whole request in time, or the client left
  elseif refused then
    respond(con, "503 Service Unavailable", "text/plain", "too many connections; try again later\n")
  elseif method == "GET" and path == "/events" then
    stream(con, last)
  elseif method == "GET" and path == "/" then
    respond(con, "200 OK", "text/html; charset=utf-8", PAGE)
  else
    respond(con, "404 Not Found", "text/plain", "not found\n")
  end
end

local cq = cqueues.new()
local server = socket.listen { host = HOST, port = PORT, reuseaddr = true }
local listening, why = pcall(server.listen, server)
if not listening then error(string.format("live.lua: cannot serve on %s:%d: %s", HOST, PORT, why), 0) end
local _, addr, port = server:localname()
server:onerror(function(_, _, err) return err end)

-- Accepts for good: out of file descriptors (EMFILE, ENFILE) or memory, it says so once and
-- tries again every 0.1 s; the connections wait in the listen queue meanwhile. Beyond
-- MAX_CONNECTIONS a connection is read and answered 503, which a browser's EventSource
-- takes as final (the page says so).
cq:wrap(function()
  local failing, capped
  while true do
    local con, err = server:accept()
    if con then
      if failing then print("live: accepting connections again") end
      failing = nil
      connections = connections + 1
      local refused = connections > MAX_CONNECTIONS
      if refused and not capped then
        print(string.format("live: %d connections open, the cap (LIVE_MAX_CONNECTIONS): answering 503 to more",
          MAX_CONNECTIONS))
      end
      capped = refused
      cq:wrap(function()
        local ok, failure = pcall(serve, con, refused)
        con:close()
        connections = connections - 1
        if not ok then error(failure, 0) end
      end)
    else
      if not failing then
        print(string.format("live: cannot accept (%s); trying again every 0.1 s", errno.strerror(err)))
      end
      failing = true
      cqueues.sleep(0.1)
    end
  end
end)
sqlnotify.cqueues(cq)
print(string.format("live: %s on http://%s:%d/ (%d columns, last %d events kept for reconnects)",
  TABLE, addr, port, #columns, RING))

if demo then
  local names = { "apples", "pears", "plums", "figs", "limes", "dates", "kiwis", "mangos" }
  local k = 0
  sqlnotify.every(1, function()
    k = k + 1
    local ok, err
    if k % 5 == 0 then
      ok, err = n:query("DELETE FROM " .. qtable .. " WHERE id = (SELECT min(id) FROM " .. qtable .. ")")
    elseif k % 3 == 0 then
      ok, err = n:query("UPDATE " .. qtable .. " SET qty = qty + 1 WHERE id = (SELECT max(id) FROM " .. qtable .. ")")
    else
      local p = n.dialect_name == "postgresql" and "$1, $2" or "?, ?"
      ok, err = n:query("INSERT INTO " .. qtable .. " (name, qty) VALUES (" .. p .. ")", names[k % #names + 1], k)
    end
    if not ok then print("live: demo write failed: " .. tostring(err)) end
  end)
end
