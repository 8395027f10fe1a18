-- bench/metrics.lua DB N: counts the inserts on table t of the SQLite file DB and prints
-- "done <seconds>" from the first event to the N-th (bench/metrics.sh runs it).
local sqlnotify = require("sqlnotify")
local n = assert(sqlnotify.notifier{ url = "sqlite:///" .. arg[1] })
n:watch("t", "insert")
local N, seen, t0 = tonumber(arg[2]), 0, nil
n:subscribe("t", "insert", function(ev)
  if seen == 0 then t0 = sqlnotify.now() end
  seen = seen + ev.id // ev.id
  if seen == N then print(string.format("done %.6f", sqlnotify.now() - t0)) end
end)
sqlnotify.after(0, function() print("ready") end)
