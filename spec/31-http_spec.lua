-- sqlnotify.http (SPEC §8.2), through the real host with SQLite durable consumers, against
-- a test server of our own (spec/support/http_server.lua, cqueues, ports 18090-18099) that
-- records every request: a receiver answering 503 to its first attempts gets every event,
-- exactly once with 200 and in per-key order; a server that never answers times the call out
-- while the loop goes on; a refused connection; 10 MB each way; misuse raised at the line.
-- Over TLS, against `openssl s_server`s with certificates of a test CA made at setup: a name
-- mismatch, insecure = true, cainfo, an unknown CA, a cainfo file that does not exist.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local cjson = require("cjson")

local fmt = string.format
local HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local SERVER = HERE .. "support/http_server.lua"

-- A private test server on port in mode; d.requests() -> what it recorded, in order.
local servers = {}
local function server(port, mode)
  local log = H.tmpdir() .. fmt("/spec31-%d-%s.log", port, mode)
  H.sh("rm -f " .. H.shell_quote(log))
  local d = H.daemon(fmt("lua5.4 %s %d %s %s", H.shell_quote(SERVER), port, mode, H.shell_quote(log)), port)
  servers[#servers + 1] = d
  d.requests = function()
    local out = {}
    local f = io.open(log)
    if not f then return out end
    for line in f:lines() do out[#out + 1] = cjson.decode(line) end
    f:close()
    return out
  end
  return d
end

local procs = {}
local function host(script, args)
  local p = H.host(script, args)
  procs[#procs + 1] = p
  return p
end

-- A SQLite file with table t (id, v), and the host's notifier on it: a durable consumer.
local PRELUDE = [[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
local db, url = arg[1], arg[2]
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. db, consumer = "spec31", concurrency = 4,
  retry = { attempts = 20, delay = 0.05, max_delay = 0.2 } })
n:watch("t", "insert", { extra_columns = { "v" } })
n:watch("t", "update", { extra_columns = { "v" } })
]]

local function fresh_db()
  local db = H.fresh_sqlite("spec31")
  H.sqlite_cli(db, "CREATE TABLE t (id integer PRIMARY KEY, v text NOT NULL);")
  return db
end

local function lines_of(p, tag)
  local out = {}
  for rest in p:stdout():gmatch(tag .. " ([^\n]*)\n") do out[#out + 1] = rest end
  return out
end

describe("sqlnotify.http.request", function()
  after_each(function()
    for _, p in ipairs(procs) do
      if not p:exited() then p:kill("KILL") p:wait() end
    end
    procs = {}
    for _, d in ipairs(servers) do d:stop() end
    servers = {}
  end)

  it("delivers every event to a webhook answering 503 to its first two attempts of each", function()
    local d = server(18090, "503x2")
    local db = fresh_db()
    local p = host(PRELUDE .. [[
local function handler(ev)
  local st, err, code = sqlnotify.http.request{ method = "POST", url = url, timeout = 10, body = ev:json(),
    headers = { ["Content-Type"] = "application/json", ["X-Key"] = ev.id } }
  if not st then print(string.format("failed %d %s %s", ev.id, err, tostring(code))) end
  assert(st, err) -- a 5xx is a failure: retried
  assert(st == 200, "status " .. st)
  print("done " .. ev.id .. " " .. ev.extra_columns.v)
end
n:subscribe("t", "insert", handler)
n:subscribe("t", "update", handler)
assert(n:start())
print("ready")
]], { db, "http://127.0.0.1:18090/hook" })
    assert.is_true(p:wait_for("ready", 10))
    local ins = {}
    for i = 1, 10 do ins[i] = fmt("(%d, 'a%d')", i, i) end
    H.sqlite_cli(db, "INSERT INTO t VALUES " .. table.concat(ins, ", ") .. "; UPDATE t SET v = 'b' || id;")
    assert.is_true(p:wait_count(function() return lines_of(p, "done") end, 20, 60), p:stderr())
    H.sleep(0.3) -- nothing more may come
    p:stop()
    local reqs = d.requests()
    local ok, failed, bodies = {}, 0, {}
    for _, r in ipairs(reqs) do
      assert.are.equal("POST", r.method)
      assert.are.equal("/hook", r.path)
      assert.are.equal("application/json", r["content-type"])
      if r.status == 200 then
        ok[#ok + 1] = r
        assert.is_nil(bodies[r.body], "a body came twice with 200")
        bodies[r.body] = true
      else
        assert.are.equal(503, r.status)
        failed = failed + 1
      end
    end
    assert.are.equal(20, #ok)
    assert.are.equal(40, failed) -- each event's first two attempts
    -- each 503 came back as nil, a message naming it, and the status
    local msgs = lines_of(p, "failed")
    assert.are.equal(40, #msgs)
    assert.matches("^failed %d+ sqlnotify: http POST http://127%.0%.0%.1:18090/hook: the server answered 503 503\n",
      p:stdout():match("failed [^\n]*\n"))
    -- each key's insert reached the receiver before its update, and the bodies are the events
    local seen = {}
    for _, r in ipairs(ok) do
      local ev = cjson.decode(r.body)
      assert.are.equal(fmt("%d", ev.id), r["x-key"])
      local want = seen[ev.id] and "update" or "insert"
      assert.are.equal(want, ev.operation)
      assert.are.equal(fmt("%s%d", want == "insert" and "a" or "b", ev.id), ev.extra_columns.v)
      seen[ev.id] = true
    end
    local keys = 0
    for _ in pairs(seen) do keys = keys + 1 end
    assert.are.equal(10, keys)
  end)

  it("times out on a server that never answers while the loop goes on", function()
    local d = server(18091, "hang")
    local db = fresh_db()
    local p = host(PRELUDE .. [[
local ticks = 0
sqlnotify.every(0.1, function() ticks = ticks + 1 end)
n:subscribe("t", "insert", function(ev)
  if ev.id == 1 then
    local t0, t0ticks = sqlnotify.now(), ticks
    local st, err = sqlnotify.http.request{ url = url, timeout = 1.5 }
    print(string.format("result %s %s", tostring(st), err))
    print(string.format("waited %.1f ticks %d", sqlnotify.now() - t0, ticks - t0ticks))
  else
    print("other " .. ev.id)
  end
end)
assert(n:start())
print("ready")
]], { db, "http://127.0.0.1:18091/h" })
    assert.is_true(p:wait_for("ready", 10))
    H.sqlite_cli(db, "BEGIN; INSERT INTO t VALUES (1, 'x'); INSERT INTO t VALUES (2, 'y'); COMMIT;")
    assert.is_true(p:wait_for("waited", 20), p:stderr())
    p:stop()
    local out = p:stdout()
    assert.matches("result nil sqlnotify: http GET http://127%.0%.0%.1:18091/h: timed out %(", out)
    local waited, ticks = out:match("waited ([%d.]+) ticks (%d+)")
    assert.is_true(tonumber(waited) >= 1.4 and tonumber(waited) < 5, waited)
    assert.is_true(tonumber(ticks) >= 10, ticks) -- a timer fired all along
    -- the other key's event was delivered while key 1's call waited
    assert.is_truthy(out:find("other 2", 1, true) < out:find("result", 1, true))
    assert.are.equal(1, #d.requests())
  end)

  it("returns nil and a message without the password when the connection is refused", function()
    local db = fresh_db()
    local p = host(PRELUDE .. [[
n:subscribe("t", "insert", function(ev)
  local st, err = sqlnotify.http.request{ method = "PUT", url = url, body = "x", timeout = 5 }
  print(string.format("result %s %s", tostring(st), err))
end)
assert(n:start())
print("ready")
]], { db, "http://user:s3cret@127.0.0.1:18092/r" })
    assert.is_true(p:wait_for("ready", 10))
    H.sqlite_cli(db, "INSERT INTO t VALUES (1, 'x');")
    assert.is_true(p:wait_for("result", 10), p:stderr())
    p:stop()
    local res = lines_of(p, "result")
    assert.are.equal(1, #res)
    assert.matches("^nil sqlnotify: http PUT http://user@127%.0%.0%.1:18092/r: .*[Cc]onnect", res[1])
    assert.is_nil(p:stdout():find("s3cret", 1, true))
  end)

  it("receives a 10 MB body whole, sends one whole, and refuses one over max_body", function()
    local d = server(18093, "big")
    local db = fresh_db()
    local p = host(PRELUDE .. [[
n:subscribe("t", "insert", function(ev)
  local st, body, hdrs = assert(sqlnotify.http.request{ url = url .. "/get" })
  print(string.format("got %d %d %s %s %s %s", st, #body, body:sub(1, 10), body:sub(-10), hdrs["x-served-by"],
    hdrs["x-twice"]))
  local big = ("abcdefgh"):rep(10 * 1024 * 1024 // 8)
  st = assert(sqlnotify.http.request{ method = "POST", url = url .. "/post", body = big,
    headers = { ["Content-Type"] = "application/octet-stream" } })
  print("sent " .. st)
  local nope, err = sqlnotify.http.request{ url = url .. "/capped", max_body = 1000000 }
  print(string.format("capped %s %s", tostring(nope), err))
end)
assert(n:start())
print("ready")
]], { db, "http://127.0.0.1:18093" })
    assert.is_true(p:wait_for("ready", 10))
    H.sqlite_cli(db, "INSERT INTO t VALUES (1, 'x');")
    assert.is_true(p:wait_for("capped", 30), p:stderr())
    p:stop()
    assert.are.same({ "200 10485760 0123456789 0123456789 spec31 a, b" }, lines_of(p, "got"))
    assert.are.same({ "200" }, lines_of(p, "sent"))
    assert.are.same({ "nil sqlnotify: http GET http://127.0.0.1:18093/capped: the response body is over max_body"
      .. " (1000000 bytes)" }, lines_of(p, "capped"))
    local reqs = d.requests()
    assert.are.equal(3, #reqs)
    assert.are.same({ "/get", 0 }, { reqs[1].path, reqs[1].len })
    assert.are.same({ "POST", "/post", 10485760, "abcdefghabcdefgh", "abcdefghabcdefgh" },
      { reqs[2].method, reqs[2].path, reqs[2].len, reqs[2].head, reqs[2].tail })
  end)

  it("releases the transfers of a state a reload closed: replies dropped, nothing left", function()
    local d = server(18096, "hang")
    local p = host([[
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("line")
for i = 1, 3 do
  sqlnotify.spawn(function()
    print("reply", sqlnotify.http.request{ url = "http://127.0.0.1:18096/r" .. i, timeout = 60 })
  end)
end
sqlnotify.every(0.1, function() end)
print("loaded")
]])
    for i = 1, 3 do
      assert.is_true(p:wait_count(function() return d.requests() end, 3 * i, 10))
      if i < 3 then p:kill("HUP") end
    end
    p:stop() -- exits 0 with no sanitizer report: every transfer, watcher and reply released
    assert.are.equal(9, #d.requests())
    assert.is_nil(p:stdout():find("reply", 1, true))
    assert.are.equal(3, select(2, p:stdout():gsub("loaded\n", "")))
  end)

  describe("over TLS", function()
    -- A test CA made here by the openssl CLI, and private `openssl s_server -www`s (each
    -- answers any GET with its status page): 18097 with a certificate for wrong.example only,
    -- 18098 with one for 127.0.0.1 / localhost, both signed by the CA; 18099 with one for
    -- 127.0.0.1 signed by another CA. Neither CA is in the system's bundle.
    local dir
    local tls = {}

    local function openssl(args)
      local log = dir .. "/openssl.log"
      local ok = H.sh(fmt("openssl %s >%s 2>&1", args, H.shell_quote(log)))
      assert(ok, "openssl " .. args .. ":\n" .. H.slurp(log))
    end

    local CNF = [[
[req]
distinguished_name = dn
prompt = no
[dn]
CN = %s
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
]]
    local EC = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    local serial = 0

    local function ca(name, cn)
      H.spit(fmt("%s/%s.cnf", dir, name), fmt(CNF, cn))
      openssl(fmt("req -config %s/%s.cnf -x509 -extensions ca %s -keyout %s/%s.key -out %s/%s.pem -days 2",
        dir, name, EC, dir, name, dir, name))
    end

    local function leaf(name, cn, san, by)
      serial = serial + 1
      H.spit(fmt("%s/%s.ext", dir, name), fmt("basicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
        .. "subjectAltName = %s\n", san))
      openssl(fmt("req %s -keyout %s/%s.key -out %s/%s.csr -subj /CN=%s", EC, dir, name, dir, name, cn))
      openssl(fmt("x509 -req -in %s/%s.csr -CA %s/%s.pem -CAkey %s/%s.key -set_serial %d -days 2 -extfile %s/%s.ext"
        .. " -out %s/%s.pem", dir, name, dir, by, dir, by, serial, dir, name, dir, name))
    end

    -- The command line s_server shows at the top of its status page.
    local function command(port, name)
      return fmt("s_server -accept %d -cert %s/%s.pem -key %s/%s.key -www", port, dir, name, dir, name)
    end

    setup(function()
      dir = H.tmpdir() .. "/tls"
      H.sh("rm -rf " .. H.shell_quote(dir) .. " && mkdir " .. H.shell_quote(dir))
      ca("ca", "sqlnotify test CA")
      ca("other", "another test CA")
      leaf("wrong", "wrong.example", "DNS:wrong.example", "ca")
      leaf("right", "localhost", "IP:127.0.0.1, DNS:localhost", "ca")
      leaf("stranger", "localhost", "IP:127.0.0.1, DNS:localhost", "other")
      for port, name in pairs({ [18097] = "wrong", [18098] = "right", [18099] = "stranger" }) do
        tls[#tls + 1] = H.daemon("openssl " .. command(port, name), port)
      end
    end)

    teardown(function()
      for _, d in ipairs(tls) do d:stop() end
      tls = {}
    end)

    -- Runs body (Lua in the host, with call(name, opts) spawning a request) and returns the
    -- results by name: { status, body, ctype } or { err }.
    local function calls(n, body)
      local p = host([[
local sqlnotify = require("sqlnotify")
local cjson = require("cjson")
io.stdout:setvbuf("line")
local dir = arg[1]
local function call(name, opts)
  local st, a, b = sqlnotify.http.request(opts)
  local r = st and { status = st, body = a, ctype = b["content-type"] } or { err = a }
  print("result " .. name .. " " .. cjson.encode(r))
end
sqlnotify.every(1, function() end)
]] .. body, { dir })
      assert.is_true(p:wait_count(function() return lines_of(p, "result") end, n, 30), p:stderr())
      p:stop()
      local out = {}
      for _, line in ipairs(lines_of(p, "result")) do
        local name, json = line:match("^(%S+) (.*)$")
        assert.is_nil(out[name], name)
        out[name] = cjson.decode(json)
      end
      assert.is_nil((p:stdout() .. p:stderr()):find("s3cret", 1, true))
      return out, p
    end

    -- The s_server status page: its command line, the TLS session, and the end.
    local function status_page(r, port, name)
      assert.are.same({ 200, "text/html" }, { r.status, r.ctype }, r.err)
      local head = fmt('<HTML><BODY BGCOLOR="#ffffff">\n<pre>\n\n%s \n', command(port, name))
      assert.are.equal(head, r.body:sub(1, #head))
      assert.matches("\nNew, TLSv1%.3, Cipher is TLS_[%w_]+\n", r.body)
      local tail = "</pre></BODY></HTML>\r\n\r\n"
      assert.are.equal(tail, r.body:sub(-#tail))
    end

    it("refuses a certificate for another name, and takes it with insecure = true", function()
      local r = calls(4, [[
sqlnotify.spawn(function()
  local url = "https://user:s3cret@127.0.0.1:18097/tls"
  call("mismatch", { url = url, cainfo = dir .. "/ca.pem", timeout = 10 })
  call("insecure", { url = url, cainfo = dir .. "/ca.pem", insecure = true, timeout = 10 })
  -- the insecure call's connection or TLS session must not serve a verified one
  call("again", { url = url, cainfo = dir .. "/ca.pem", timeout = 10 })
  call("insecure_only", { url = url, insecure = true, timeout = 10 })
end)
]])
      local mismatch = "sqlnotify: http GET https://user@127.0.0.1:18097/tls: SSL: no alternative certificate subject"
        .. " name matches target host name '127.0.0.1'"
      assert.are.same({ err = mismatch }, r.mismatch)
      assert.are.same({ err = mismatch }, r.again)
      status_page(r.insecure, 18097, "wrong")
      status_page(r.insecure_only, 18097, "wrong")
    end)

    it("takes the right certificate with cainfo, and refuses one of an unknown CA", function()
      local r = calls(5, [[
for _, c in ipairs({
  { "right", { url = "https://127.0.0.1:18098/", cainfo = dir .. "/ca.pem" } },
  { "by_name", { url = "https://localhost:18098/", cainfo = dir .. "/ca.pem" } },
  { "unknown_ca", { url = "https://127.0.0.1:18098/" } },
  { "other_ca", { url = "https://127.0.0.1:18099/", cainfo = dir .. "/ca.pem" } },
  { "other_ca_trusted", { url = "https://127.0.0.1:18099/", cainfo = dir .. "/other.pem" } },
}) do
  c[2].timeout = 10
  sqlnotify.spawn(function() call(c[1], c[2]) end)
end
]])
      status_page(r.right, 18098, "right")
      status_page(r.by_name, 18098, "right")
      status_page(r.other_ca_trusted, 18099, "stranger")
      assert.are.same({ err = "sqlnotify: http GET https://127.0.0.1:18098/: SSL certificate problem: unable to get"
        .. " local issuer certificate" }, r.unknown_ca)
      assert.are.same({ err = "sqlnotify: http GET https://127.0.0.1:18099/: SSL certificate problem: unable to get"
        .. " local issuer certificate" }, r.other_ca)
    end)

    it("returns nil and a message naming a cainfo file that does not exist, and reads it when it does", function()
      H.sh("rm -f " .. H.shell_quote(dir .. "/later.pem"))
      local r = calls(3, [[
sqlnotify.spawn(function()
  local opts = { url = "https://127.0.0.1:18098/", cainfo = dir .. "/later.pem", timeout = 10 }
  call("missing", opts)
  call("unread", { url = opts.url, cainfo = opts.cainfo, insecure = true, timeout = 10 })
  -- the file is read when a connection is made: a retry after it appears succeeds
  local f = assert(io.open(dir .. "/ca.pem"))
  local pem = f:read("a")
  f:close()
  f = assert(io.open(opts.cainfo, "w"))
  f:write(pem)
  f:close()
  call("appeared", opts)
end)
]])
      assert.are.same({ err = fmt("sqlnotify: http GET https://127.0.0.1:18098/: error setting certificate file: %s"
        .. "/later.pem", dir) }, r.missing)
      status_page(r.unread, 18098, "right")
      status_page(r.appeared, 18098, "right")
    end)
  end)

  describe("misuse raises at the caller's line", function()
    local function raised(f)
      local ok, err = pcall(f)
      assert.is_false(ok)
      return err
    end
    local function at(line) return "31%-http_spec%.lua:" .. line .. ": " end
    local url = "http://127.0.0.1:18094/"

    it("refuses unknown options, wrong types, a method with spaces and non-http URLs", function()
      local cases = {
        { { url = url, bogus = 1 }, 'unknown option "bogus"' },
        { { url = url, timeout = "5" }, "timeout must be a number of seconds above zero, got string" },
        { { url = url, timeout = 0 }, "timeout must be a number of seconds above zero, got 0" },
        { { url = url, method = "GE T" }, 'method must be one word %(GET, POST, %.%.%.%), got "GE T"' },
        { { url = "ftp://u:pw@host/x" }, 'bad url "ftp://u:%*%*%*@host/x": not an http:// or https:// URL' },
        { { url = url, headers = { ["X-A"] = "a\r\nX-B: b" } }, 'header X%-A must have a one%-line string value' },
        { { url = url, body = 5 }, "body must be a string, got number" },
        { { url = url, insecure = "yes" }, "insecure must be a boolean, got string" },
        { { url = url, max_body = 1.5 }, "max_body must be an integer of at least 1, got 1.5" },
        { { method = "GET" }, "url must be a string, got nil" },
      }
      for _, c in ipairs(cases) do
        local line = debug.getinfo(1, "l").currentline + 1
        local err = raised(function() local x = sqlnotify.http.request(c[1]) return x end)
        assert.matches("^.*" .. at(line) .. "sqlnotify: http%.request: " .. c[2], err)
      end
    end)

    it("outside a handler names sqlnotify.spawn", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local err = raised(function() local x = sqlnotify.http.request{ url = url } return x end)
      assert.matches(at(line) .. "sqlnotify: sqlnotify%.http%.request must be called from a handler or a"
        .. " coroutine of sqlnotify%.spawn", err)
    end)
  end)
end)
