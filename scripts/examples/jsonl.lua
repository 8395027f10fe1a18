-- JSON lines: every change on the tables named on the command line, one JSON object a line
-- on stdout, for piping into jq, a log shipper or another program. Logs stay on stderr.
--
-- Run it:
--   export DATABASE_URL=postgresql://root@127.0.0.1/test
--   build/sqlnotify-lua -l warn scripts/examples/jsonl.lua users orders | jq .
--   DATABASE_URL=sqlite:///app.db build/sqlnotify-lua scripts/examples/jsonl.lua tasks
-- Each table is watched for insert, update and delete, with its primary key only (a table
-- without a key for insert only: its events have no id).
local sqlnotify = require("sqlnotify")
local cjson = require("cjson")

if #arg == 0 then
  io.stderr:write("usage: sqlnotify-lua scripts/examples/jsonl.lua TABLE [TABLE...]\n")
  os.exit(2)
end

local n = assert(sqlnotify.notifier())
local function emit(ev)
  io.write(cjson.encode({
    schema = ev.schema, table = ev.table, operation = ev.operation, id = ev.id,
    extra_columns = next(ev.extra_columns) and ev.extra_columns or nil,
    timestamp = ev.timestamp, truncated = ev.truncated or nil,
  }), "\n")
  io.flush()
end
for _, t in ipairs(arg) do
  n:watch(t, sqlnotify.INSERT)
  n:subscribe(t, sqlnotify.INSERT, emit)
  -- A table without a key (an append-only log) can be watched for inserts only.
  local ok, err = pcall(n.watch, n, t, sqlnotify.UPDATE)
  if ok then
    n:watch(t, sqlnotify.DELETE)
    n:subscribe(t, sqlnotify.UPDATE, emit)
    n:subscribe(t, sqlnotify.DELETE, emit)
  elseif tostring(err):find("has no primary key", 1, true) then
    io.stderr:write(t, ": no primary key; only inserts are reported\n")
  else
    error(err, 0)
  end
end
