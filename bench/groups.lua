-- bench/groups.lua URL TABLE CONSUMER: a member of a group whose handler sleeps 1 ms per
-- event (work that waits, not computes: luasystem's sleep, which busted brings), and prints
-- one line per event.
local sqlnotify = require("sqlnotify")
local system = require("system")
io.stdout:setvbuf("line")
local url, tbl, consumer = arg[1], arg[2], arg[3]
local n = assert(sqlnotify.notifier{ url = url, consumer = consumer, lease = 3 })
n:watch(tbl, "insert")
n:subscribe(tbl, "insert", function(ev)
  system.sleep(0.001)
  io.write(ev.id, "\n")
end)
assert(n:start())
print("ready")
