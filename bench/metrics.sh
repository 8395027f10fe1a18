#!/bin/sh
# bench/metrics.sh [BUILD]: what --metrics costs delivery. A live SQLite watcher counts
# BENCH_MX_N inserts committed at once (bench/metrics.lua), without --metrics and with it while
# one curl scrapes /metrics every second (Prometheus: every 15 s); events/s from the first event to the last, in
# BENCH_MX_ROUNDS alternating rounds, each on a new database file. On a 2-core VM one mode's rounds
# spread over 170k-330k events/s (measured 2026-12-06), far wider than what is measured, so the
# figure is the best round of each mode (the least disturbed, as timeit takes the minimum), with
# the median of the rounds' ratios beside it (target >= 0.95).
# Environment: BENCH_MX_N (300000), BENCH_MX_ROUNDS (9), BENCH_MX_PORT (19108). make bench runs it last.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
N=${BENCH_MX_N:-300000}
ROUNDS=${BENCH_MX_ROUNDS:-9}
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
  rm -f "$DB" "$DB-wal" "$DB-shm"
  sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"
  if [ "$1" = on ]; then
    "$HOST" --metrics "127.0.0.1:$PORT" bench/metrics.lua "$DB" "$N" >"$out" 2>"$out.err" &
  else
    "$HOST" bench/metrics.lua "$DB" "$N" >"$out" 2>"$out.err" &
  fi
  HPID=$!
  wait_for "$out" ready
  # One long-lived scraper, as Prometheus is, in both modes (off: refused), so that both pay for
  # its process alike; a curl started each second cost the "on" rounds some 15% on its own.
  urls=""
  for _ in $(seq 600); do urls="$urls -o /dev/null http://127.0.0.1:$PORT/metrics"; done
  # shellcheck disable=SC2086
  curl -s --rate 1/s $urls &
  SPID=$!
  sqlite3 "$DB" "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $N)
                 INSERT INTO t (v) SELECT 'v' || x FROM c"
  wait_for "$out" done
  [ -z "$SPID" ] || { kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""; }
  kill "$HPID"; wait "$HPID" 2>/dev/null || true; HPID=""
  awk -v n="$N" '/^done/ { printf "%.0f\n", (n - 1) / $2 }' "$out"
}

ratios="" best_off=0 best_on=0
r=1
while [ $r -le "$ROUNDS" ]; do
  off=$(run off)
  on=$(run on)
  ratio=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')
  echo "bench-metrics: round $r: off $off events/s, on (scraped 1/s) $on events/s, ratio $ratio" >&2
  ratios="$ratios $ratio"
  [ "$off" -le "$best_off" ] || best_off=$off
  [ "$on" -le "$best_on" ] || best_on=$on
  r=$((r + 1))
done
median=$(echo $ratios | tr ' ' '\n' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
best=$(awk -v a="$best_on" -v b="$best_off" 'BEGIN { printf "%.3f", a / b }')
echo "metrics: delivery with --metrics against without, best of $ROUNDS rounds of $N events each:" \
  "$best_on against $best_off events/s, ${best}x (target >= 0.95; median of the rounds' ratios ${median}x)"
