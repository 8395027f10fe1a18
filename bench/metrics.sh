#!/bin/sh
# bench/metrics.sh [BUILD]: what --metrics costs delivery. A live SQLite watcher counts
# BENCH_MX_N inserts committed at once (bench/metrics.lua), without --metrics and with it while
# curl scrapes /metrics every second (Prometheus: every 15 s); events/s from the first event to the last, in
# BENCH_MX_ROUNDS alternating rounds, and the median of the rounds' on/off ratios (target >= 0.95).
# Environment: BENCH_MX_N (300000), BENCH_MX_ROUNDS (5), BENCH_MX_PORT (19108). make bench runs it last.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
N=${BENCH_MX_N:-300000}
ROUNDS=${BENCH_MX_ROUNDS:-5}
PORT=${BENCH_MX_PORT:-19108}
[ -x "$HOST" ] || { echo "bench-metrics: $HOST not built (run make)" >&2; exit 1; }
TMP=$(mktemp -d)
HPID="" SPID=""
cleanup() {
  [ -z "$SPID" ] || kill "$SPID" 2>/dev/null || true
  [ -z "$HPID" ] || kill "$HPID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
DB=$TMP/bench.db
sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"

wait_for() { # file pattern
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 1200 ] || { echo "bench-metrics: no \"$2\" in $1" >&2; cat "$1" "$1.err" >&2; exit 1; }
    sleep 0.05
  done
}

# one run: prints events/s
run() { # on|off
  out=$TMP/out.$1
  : >"$out"
  if [ "$1" = on ]; then
    "$HOST" --metrics "127.0.0.1:$PORT" bench/metrics.lua "$DB" "$N" >"$out" 2>"$out.err" &
  else
    "$HOST" bench/metrics.lua "$DB" "$N" >"$out" 2>"$out.err" &
  fi
  HPID=$!
  wait_for "$out" ready
  if [ "$1" = on ]; then
    (while :; do curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics"; sleep 1; done) &
    SPID=$!
  fi
  sqlite3 "$DB" "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $N)
                 INSERT INTO t (v) SELECT 'v' || x FROM c"
  wait_for "$out" done
  [ -z "$SPID" ] || { kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""; }
  kill "$HPID"; wait "$HPID" 2>/dev/null || true; HPID=""
  awk -v n="$N" '/^done/ { printf "%.0f\n", (n - 1) / $2 }' "$out"
}

ratios=""
r=1
while [ $r -le "$ROUNDS" ]; do
  off=$(run off)
  on=$(run on)
  ratio=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')
  echo "bench-metrics: round $r: off $off events/s, on (scraped 1/s) $on events/s, ratio $ratio" >&2
  ratios="$ratios $ratio"
  r=$((r + 1))
done
median=$(echo $ratios | tr ' ' '\n' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "metrics: delivery with --metrics against without, median of $ROUNDS rounds of $N events: ${median}x (target >= 0.95)"
