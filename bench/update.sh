#!/bin/sh
# bench/update.sh BUILD URL — the old-values figures of make bench (issue 12): the throughput
# of an UPDATE watch with two old_columns against the same watch without, on PostgreSQL, in
# one process, runs alternating so load from elsewhere falls on both. Two rows: from the
# UPDATE's start to the last handler (the writer's trigger, NOTIFY and delivery: what a
# watched write costs end to end) and delivery alone (events/s into Lua from the first event
# to the last, after the commit: the host's decoding and dispatch).
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
  while :; do
    c=$(grep -c "$1" "$TMP/out" 2>/dev/null) || true   # no file yet: no count at all
    [ "${c:-0}" -lt "$2" ] || break
    i=$((i + 1)); [ $i -lt 2400 ] || { echo "bench: update.lua stalled: $(tail -3 "$TMP/err")" >&2; exit 1; }
    sleep 0.05
  done
}
wait_lines '^ready' 1
k=0
while [ $k -lt "$RUNS" ]; do
  k=$((k + 1))
  for t in upd_plain upd_old; do
    t0=$(date +%s.%N)
    psql -q "$URL" -c "SET synchronous_commit = off; UPDATE sqlnotify_bench.$t SET t0 = t0 + 1, note = 'v$k'" >/dev/null
    wait_lines "^run $t " $k
    echo "$t $t0 $(grep "^run $t " "$TMP/out" | tail -1 | sed -n 's/.* last=\([0-9.]*\).*/\1/p')" >>"$TMP/e2e"
  done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
med() { grep "^run $1 " "$TMP/out" | sed -n 's/.* rate=\([0-9.]*\).*/\1/p' | median; }
e2e() { awk -v t="$1" -v n="$N" '$1 == t { print n / ($3 - $2) }' "$TMP/e2e" | median; }
plain=$(med upd_plain) old=$(med upd_old) eplain=$(e2e upd_plain) eold=$(e2e upd_old)
awk -v p="$plain" -v o="$old" -v ep="$eplain" -v eo="$eold" -v n="$N" -v r="$RUNS" 'BEGIN {
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "PG UPDATE to handler/s, 2 old cols vs none", sprintf("%.0f/s", ep), sprintf("%.0f/s", eo), sprintf("%.2fx", eo / ep), ">= 0.90x", (eo / ep >= 0.9) ? "yes" : "NO"
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "PG UPDATE delivery/s, 2 old cols vs none", sprintf("%.0f/s", p), sprintf("%.0f/s", o), sprintf("%.2fx", o / p), "-", "-"
  printf "  (%d runs of %d updated rows each; left column: the same watch without old_columns)\n", r, n }'
