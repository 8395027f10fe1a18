#!/bin/sh
# bench/memory.sh — resident memory of the sqlnotify-lua host over a long run: 1,000,000
# INSERTs through a real trigger, delivered to a Lua handler. Prints VmRSS (from
# /proc/<pid>/status, read by the host itself) at every 10% of the run, and checks that
# the RSS at 100% is within 10% of the RSS at 10% (SPEC §5, §7: steady memory).
#
#   sh bench/memory.sh [BUILD]          BUILD: build (default) or build-address
#   EVENTS=200000 sh bench/memory.sh    a shorter run
# PostgreSQL: SQLNOTIFY_TEST_PG_URL (default postgresql://root@127.0.0.1/test); the run
# uses its own schema bench_mem and drops it at the end. Exit 0 when memory stayed flat.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
URL=${SQLNOTIFY_TEST_PG_URL:-postgresql://root@127.0.0.1/test}
N=${EVENTS:-1000000}
CHUNK=$((N / 10))
HOST="$PWD/$BUILD/sqlnotify-lua"
[ -x "$HOST" ] || { echo "memory: $HOST not built (make${BUILD#build})" >&2; exit 2; }

tmp=$(mktemp -d /tmp/sqlnotify-memory.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    psql "$URL" -X -q -c 'DROP SCHEMA IF EXISTS bench_mem CASCADE' >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

psql "$URL" -X -q -v ON_ERROR_STOP=1 \
    -c 'DROP SCHEMA IF EXISTS bench_mem CASCADE' -c 'CREATE SCHEMA bench_mem' \
    -c 'CREATE TABLE bench_mem.ev (id int PRIMARY KEY, v text)' >/dev/null 2>&1 \
    || { echo "memory: cannot reach PostgreSQL at $URL" >&2; exit 2; }

cat >"$tmp/watch.lua" <<'EOF'
-- Count events; at every tenth of the run print "<events> <VmRSS kB>"; stop at the end.
local sqlnotify = require("sqlnotify")
local N, url = tonumber(arg[1]), arg[2]
local step = N // 10
local function status(key)
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. key .. ":%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end
local n = assert(sqlnotify.notifier{ url = url })
n:watch("bench_mem.ev", "insert", { extra_columns = { "v" } })
local seen, sum = 0, 0
n:subscribe("bench_mem.ev", "insert", function(ev)
  seen = seen + 1
  sum = sum + ev.id -- touch the event as a real handler would
  if seen % step == 0 then
    io.write(string.format("%d %d\n", seen, status("VmRSS")))
    if seen == N then
      assert(sum == N * (N + 1) // 2, "events lost or duplicated")
      io.write(string.format("peak %d\n", status("VmHWM")))
      sqlnotify.stop()
    end
  end
end)
sqlnotify.after(0, function() io.write(string.format("ready %d\n", status("VmRSS"))) end)
EOF

"$HOST" -l warn "$tmp/watch.lua" "$N" "$URL" >"$tmp/out" 2>"$tmp/err" </dev/null &
pid=$!
i=0
while ! grep -q '^ready' "$tmp/out" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 500 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "memory: the host did not start" >&2; cat "$tmp/err" >&2; exit 1
    fi
    sleep 0.02
done

start=$(date +%s.%N)
# Ten transactions of N/10 rows each, through the watch's trigger.
psql "$URL" -X -q -v ON_ERROR_STOP=1 >/dev/null <<EOF
DO \$\$
BEGIN
  FOR c IN 0..9 LOOP
    INSERT INTO bench_mem.ev SELECT i, 'row ' || i FROM generate_series(c * $CHUNK + 1, (c + 1) * $CHUNK) i;
    COMMIT;
  END LOOP;
END \$\$;
EOF

status=0
timeout -s KILL 600 sh -c "while kill -0 $pid 2>/dev/null; do sleep 0.1; done" || status=1
wait "$pid" || status=$?
pid=""
end=$(date +%s.%N)
if [ "$status" != 0 ] || ! grep -q "^$N " "$tmp/out"; then
    echo "memory: the host did not finish (status $status)" >&2
    cat "$tmp/out" "$tmp/err" >&2
    exit 1
fi

awk -v n="$N" -v t0="$start" -v t1="$end" '
    $1 == "ready" { printf "RSS at start:  %7d kB\n", $2; next }
    $1 == "peak"  { peak = $2; next }
    { rss[$1] = $2; printf "RSS at %4.0f%%:  %7d kB  (%d events)\n", 100 * $1 / n, $2, $1 }
    END {
        a = rss[n / 10]; b = rss[n]
        printf "peak RSS:      %7d kB\n", peak
        printf "%d events in %.1f s (%.0f events/s, writes included)\n", n, t1 - t0, n / (t1 - t0)
        d = (b - a) / a * 100
        printf "RSS at 100%% vs 10%%: %+.1f%% (%s)\n", d, (d <= 10 && d >= -10) ? "flat: within 10%" : "NOT within 10%"
        exit (d <= 10 && d >= -10) ? 0 : 1
    }' "$tmp/out"
