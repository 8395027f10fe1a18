-- Cache invalidation: each change of a table deletes its row's cached copy in Redis
-- (product:<id>), from a durable consumer, so a Redis restart loses no invalidation: a
-- failed call raises, and the event is retried until Redis answers again.
--
-- Run it:  sqlnotify-lua scripts/examples/redis_cache.lua [DATABASE_URL [TABLE [REDIS_URL]]]
--   e.g.   sqlnotify-lua scripts/examples/redis_cache.lua sqlite:///shop.db products redis://127.0.0.1:6379/0
--   DATABASE_URL default $DATABASE_URL; TABLE default "products"; REDIS_URL default $REDIS_URL,
--   else redis://127.0.0.1:6379/0 (redis://:password@host:port/db for AUTH and SELECT).
local sqlnotify = require("sqlnotify")

local url = arg[1] or os.getenv("DATABASE_URL")
if not url then
  io.stderr:write("usage: sqlnotify-lua scripts/examples/redis_cache.lua DATABASE_URL [TABLE [REDIS_URL]]\n")
  os.exit(2)
end
local tbl = arg[2] or "products"
local r = sqlnotify.redis{ url = arg[3] or os.getenv("REDIS_URL") or "redis://127.0.0.1:6379/0", timeout = 5 }

local n = assert(sqlnotify.notifier{ url = url, consumer = "redis_cache_" .. tbl:gsub("%W", "_"),
  concurrency = 64, retry = { attempts = math.huge, delay = 0.2, max_delay = 10 } })

for _, op in ipairs({ "insert", "update", "delete" }) do
  n:watch(tbl, op)
  n:subscribe(tbl, op, function(ev)
    assert(r:call("DEL", "product:" .. ev.id)) -- nil, "sqlnotify: redis: ..." -> retried
  end)
end

assert(n:start())
