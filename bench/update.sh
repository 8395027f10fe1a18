#!/bin/sh
# bench/update.sh BUILD URL — the old-values figure of make bench (issue 12): UPDATE
# throughput into Lua handlers with two old_columns against none, on PostgreSQL, in one
# process, runs alternating so load from elsewhere falls on both. Prints one table row.
#   BENCH_RUNS (default 5) runs of each; BENCH_UPD_N rows per run (default 100000)
set -eu
cd "$(dirname "$0")/.."
BUILD=$1 URL=$2
RUNS=${BENCH_RUNS:-5}
N=${BENCH_UPD_N:-100000}
TMP=$(mktemp -d)
PID=""
trap '[ -z "$PID" ] || kill $PID 2>/dev/null; psql -q "$URL" -c "DROP TABLE IF EXISTS sqlnotify_bench.upd_plain, sqlnotify_bench.upd_old" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS sqlnotify_bench;
DROP TABLE IF EXISTS sqlnotify_bench.upd_plain, sqlnotify_bench.upd_old;
CREATE TABLE sqlnotify_bench.upd_plain (id bigint PRIMARY KEY, t0 bigint NOT NULL, note text NOT NULL);
CREATE TABLE sqlnotify_bench.upd_old (LIKE sqlnotify_bench.upd_plain INCLUDING ALL);
INSERT INTO sqlnotify_bench.upd_plain SELECT g, g, 'row ' || g FROM generate_series(1, $N) g;
INSERT INTO sqlnotify_bench.upd_old SELECT * FROM sqlnotify_bench.upd_plain;
SQL
"$BUILD/sqlnotify-lua" -l warn bench/update.lua "$URL" "$N" >"$TMP/out" 2>"$TMP/err" &
PID=$!
wait_lines() { # PATTERN COUNT
  i=0
  while [ "$(grep -c "$1" "$TMP/out" 2>/dev/null || true)" -lt "$2" ]; do
    i=$((i + 1)); [ $i -lt 2400 ] || { echo "bench: update.lua stalled: $(tail -3 "$TMP/err")" >&2; exit 1; }
    sleep 0.05
  done
}
wait_lines '^ready' 1
k=0
while [ $k -lt "$RUNS" ]; do
  k=$((k + 1))
  for t in upd_plain upd_old; do
    psql -q "$URL" -c "SET synchronous_commit = off; UPDATE sqlnotify_bench.$t SET t0 = t0 + 1, note = 'v$k'" >/dev/null
    wait_lines "^run $t " $k
  done
done
med() { grep "^run $1 " "$TMP/out" | sed -n 's/.* rate=\([0-9.]*\).*/\1/p' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
plain=$(med upd_plain) old=$(med upd_old)
awk -v p="$plain" -v o="$old" -v n="$N" -v r="$RUNS" 'BEGIN {
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "PG UPDATE events/s, two old_columns vs none", sprintf("%.0f/s", p), sprintf("%.0f/s", o), sprintf("%.2fx", o / p), ">= 0.90x", (o / p >= 0.9) ? "yes" : "NO"
  printf "  (%d runs of %d updated rows each; left column: the same watch without old_columns)\n", r, n }'
