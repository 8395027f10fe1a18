#!/bin/sh
# bench/update.sh BUILD URL — the old-values figures of make bench (issue 12): the throughput
# of an UPDATE watch with two old_columns against the same watch without, on PostgreSQL, in
# one process, runs alternating so load from elsewhere falls on both. Two rows: from the
# UPDATE's start to the last handler (the writer's trigger, NOTIFY and delivery: what a
# watched write costs end to end) and delivery alone (events/s into Lua from the first event
# to the last, after the commit: the host's decoding and dispatch). Each ratio is the median
# of the runs' own (run k of one table against run k of the other, taken one after the other),
# so that the machine's drift between runs falls on both sides; the range is printed beside it.
# Then the floor: the host stops (its triggers stay) and bench/bare_listener, a bare libpq
# listener that only finds a number in each payload, takes the same runs of notifications, so
# that what the longer payload costs NOTIFY and libpq alone shows beside what it costs us.
#   BENCH_RUNS (default 21: the runs scatter widely on a small VM) runs of each; BENCH_UPD_N rows per run (default 100000)
set -eu
cd "$(dirname "$0")/.."
BUILD=$1 URL=$2
RUNS=${BENCH_RUNS:-21}
N=${BENCH_UPD_N:-100000}
TMP=$(mktemp -d)
PID="" BPID=""
trap '[ -z "$PID" ] || kill $PID 2>/dev/null; [ -z "$BPID" ] || kill $BPID 2>/dev/null; psql -q "$URL" -c "DROP TABLE IF EXISTS sqlnotify_bench.upd_plain, sqlnotify_bench.upd_old" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS sqlnotify_bench;
DROP TABLE IF EXISTS sqlnotify_bench.upd_plain, sqlnotify_bench.upd_old;
-- no autovacuum: it would start on one table or the other in the middle of a run (each run
-- leaves 100,000 dead rows) and take one of the two CPUs; each run starts from a VACUUM instead
CREATE TABLE sqlnotify_bench.upd_plain (id bigint PRIMARY KEY, t0 bigint NOT NULL, note text NOT NULL)
  WITH (autovacuum_enabled = false);
CREATE TABLE sqlnotify_bench.upd_old (LIKE sqlnotify_bench.upd_plain INCLUDING ALL) WITH (autovacuum_enabled = false);
INSERT INTO sqlnotify_bench.upd_plain SELECT g, g, 'row ' || g FROM generate_series(1, $N) g;
INSERT INTO sqlnotify_bench.upd_old SELECT * FROM sqlnotify_bench.upd_plain;
SQL
"$BUILD/sqlnotify-lua" -l warn bench/update.lua "$URL" "$N" >"$TMP/out" 2>"$TMP/out.err" &
PID=$!
wait_lines() { # FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN (its .err says why not)
  i=0
  while :; do
    c=$(grep -c "$2" "$1" 2>/dev/null) || true   # no file yet: no count at all
    [ "${c:-0}" -lt "$3" ] || break
    i=$((i + 1)); [ $i -lt 2400 ] || { echo "bench: $1 stalled: $(tail -3 "$1.err")" >&2; exit 1; }
    sleep 0.05
  done
}
wait_lines "$TMP/out" '^ready' 1
k=0
while [ $k -lt "$RUNS" ]; do
  k=$((k + 1))
  for t in upd_plain upd_old; do
    psql -q "$URL" -c "VACUUM sqlnotify_bench.$t" >/dev/null
    t0=$(date +%s.%N)
    psql -q "$URL" -c "SET synchronous_commit = off; UPDATE sqlnotify_bench.$t SET t0 = t0 + 1, note = 'v$k'" >/dev/null
    wait_lines "$TMP/out" "^run $t " $k
    echo "$t $t0 $(grep "^run $t " "$TMP/out" | tail -1 | sed -n 's/.* last=\([0-9.]*\).*/\1/p')" >>"$TMP/e2e"
  done
done

# the floor on the same notifications: the host stopped, bench/bare_listener on its channels
chan() { grep "^run $1 " "$TMP/out" | head -1 | sed -n 's/.* channel=\([^ ]*\).*/\1/p'; }
cplain=$(chan upd_plain) cold=$(chan upd_old)
kill "$PID" && wait "$PID" 2>/dev/null || true
PID=""
cc -O2 -Wall -Wextra -Werror $(pkg-config --cflags libpq 2>/dev/null || echo "-I$(pg_config --includedir)") \
  -o "$TMP/bare_listener" bench/bare_listener.c $(pkg-config --libs libpq 2>/dev/null || echo -lpq)
"$TMP/bare_listener" "$URL" "$cplain" "$cold" >"$TMP/bare" 2>"$TMP/bare.err" &
BPID=$!
wait_lines "$TMP/bare" '^ready' 1
k=0
while [ $k -lt "$RUNS" ]; do
  k=$((k + 1))
  for t in upd_plain upd_old; do
    c=$cplain; [ $t = upd_plain ] || c=$cold
    psql -q "$URL" -c "VACUUM sqlnotify_bench.$t" >/dev/null
    psql -q "$URL" -c "SET synchronous_commit = off; UPDATE sqlnotify_bench.$t SET t0 = t0 + 1, note = 'b$k'" >/dev/null
    psql -q "$URL" -c "SELECT pg_notify('$c', '{\"t0\": 0}')" >/dev/null # the run's end, after its commit
    wait_lines "$TMP/bare" "^run $c " $k
  done
done
brates() { grep "^run $1 " "$TMP/bare" | sed -n 's/.* n=\([0-9]*\) .* rate=\([0-9.]*\).*/\1 \2/p'; }
brates "$cplain" >"$TMP/bpn"; brates "$cold" >"$TMP/bon"
awk -v n="$N" '$1 != n { print "bench: the bare listener counted " $1 " of " n " events in a run" > "/dev/stderr"; exit 1 }' \
  "$TMP/bpn" "$TMP/bon"
cut -d' ' -f2 "$TMP/bpn" >"$TMP/bp"; cut -d' ' -f2 "$TMP/bon" >"$TMP/bo"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
span() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
rates() { grep "^run $1 " "$TMP/out" | sed -n 's/.* rate=\([0-9.]*\).*/\1/p'; }
e2es() { awk -v t="$1" -v n="$N" '$1 == t { print n / ($3 - $2) }' "$TMP/e2e"; }
rates upd_plain >"$TMP/dp"; rates upd_old >"$TMP/do"; e2es upd_plain >"$TMP/ep"; e2es upd_old >"$TMP/eo"
paste "$TMP/do" "$TMP/dp" | awk '{ print $1 / $2 }' >"$TMP/dr"
paste "$TMP/eo" "$TMP/ep" | awk '{ print $1 / $2 }' >"$TMP/er"
paste "$TMP/bo" "$TMP/bp" | awk '{ print $1 / $2 }' >"$TMP/br"
plain=$(median <"$TMP/dp") old=$(median <"$TMP/do") eplain=$(median <"$TMP/ep") eold=$(median <"$TMP/eo")
dr=$(median <"$TMP/dr") er=$(median <"$TMP/er") drs=$(span <"$TMP/dr") ers=$(span <"$TMP/er")
bplain=$(median <"$TMP/bp") bold=$(median <"$TMP/bo") br=$(median <"$TMP/br") brs=$(span <"$TMP/br")
awk -v p="$plain" -v o="$old" -v ep="$eplain" -v eo="$eold" -v dr="$dr" -v er="$er" -v drs="$drs" -v ers="$ers" \
    -v bp="$bplain" -v bo="$bold" -v br="$br" -v brs="$brs" \
    -v n="$N" -v r="$RUNS" 'BEGIN {
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "PG UPDATE to handler/s, 2 old cols vs none", sprintf("%.0f/s", ep), sprintf("%.0f/s", eo), sprintf("%.2fx", er), ">= 0.90x", (er >= 0.9) ? "yes" : "NO"
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "PG UPDATE delivery/s, 2 old cols vs none", sprintf("%.0f/s", p), sprintf("%.0f/s", o), sprintf("%.2fx", dr), "-", "-"
  printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", "bare libpq listener/s, same notifications", sprintf("%.0f/s", bp), sprintf("%.0f/s", bo), sprintf("%.2fx", br), "-", "-"
  printf "  (%d runs of %d updated rows each; left column: the same watch without old_columns; rates: medians;\n", r, n
  printf "  ratios: the median of the runs own, which ranged %s to the handler, %s in delivery and %s\n", ers, drs, brs
  printf "  for the bare listener: the floor, what the longer payload costs NOTIFY and libpq alone)\n" }'
