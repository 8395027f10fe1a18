#!/bin/sh
# bench/backfill.sh [BUILD]: backfill on PostgreSQL (issue 28), through the real binary and
# bench/backfill.lua (a durable consumer whose "read" handler counts), on a table of
# BENCH_BACKFILL_N rows (id int primary key, v text, n int) with a durable UPDATE watch:
#  1. Rows/s into Lua: from n:backfill to the N-th handler call, chunk 10000 and the default
#     1000, each on a new consumer, against `COPY (SELECT id, v, n ...) TO STDOUT` through
#     psql (the floor: the same rows out of the server, best of 3). Target >= 200000/s.
#  2. The writers' cost: pgbench, BENCH_BACKFILL_CLIENTS clients of one-row UPDATEs of random
#     ids, BENCH_BACKFILL_SECONDS a run, with a backfill (chunk BENCH_BACKFILL_WCHUNK, started
#     again each time it reads the last row, so it runs for the whole pgbench run) against
#     without. One host runs through both, so the table's trigger and its reader are the same
#     in each and only the backfill differs. BENCH_BACKFILL_ROUNDS rounds, the two alternating;
#     the ratio is the median of the rounds' own. Target >= 0.9x, with the default
#     backfill_rate, "auto" (the pace yields to the writers). Then the same with "full" (as fast
#     as it goes) and with BENCH_BACKFILL_RATE rows/s (no target: what the knob buys).
# Environment: SQLNOTIFY_BENCH_PG_URL (default postgresql://root@127.0.0.1/test; makes and
# drops the schema sqlnotify_bench_bf and the consumers bench_bf_*), BENCH_BACKFILL_N
# (1000000), BENCH_BACKFILL_CLIENTS (4), BENCH_BACKFILL_SECONDS (10), BENCH_BACKFILL_ROUNDS
# (3), BENCH_BACKFILL_WCHUNK (1000, the default chunk), BENCH_BACKFILL_RATE (10000). About
# four minutes.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
N=${BENCH_BACKFILL_N:-1000000}
CLIENTS=${BENCH_BACKFILL_CLIENTS:-4}
SECS=${BENCH_BACKFILL_SECONDS:-10}
ROUNDS=${BENCH_BACKFILL_ROUNDS:-3}
WCHUNK=${BENCH_BACKFILL_WCHUNK:-1000}
RATE_LIMIT=${BENCH_BACKFILL_RATE:-10000}
S=sqlnotify_bench_bf
T=$S.t
T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

say() { echo "bench-backfill: $(date +%T) $*" >&2; }
die() { echo "bench-backfill: $*" >&2; exit 1; }

TMP=$(mktemp -d)
PID=""
stop_host() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=""
}
drop_consumers() { # those there are (--drop-consumer takes about 2 s, even for none)
  for c in $(psql -Atq "$URL" -c "SELECT name FROM sqlnotify.consumers WHERE name LIKE 'bench\\_bf\\_%'" 2>/dev/null); do
    "$HOST" --drop-consumer "$URL" "$c" >/dev/null 2>&1 || true
  done
}
cleanup() {
  stop_host
  drop_consumers
  psql -q "$URL" -c "SET client_min_messages = warning" -c "DROP SCHEMA IF EXISTS $S CASCADE" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$HOST" ] || die "$HOST not built (run make)"
command -v pgbench >/dev/null || die "pgbench not found"

drop_consumers # left by an interrupted run
say "a table of $N rows"
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL || die "cannot create schema $S"
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS $S CASCADE;
CREATE SCHEMA $S;
CREATE TABLE $T (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
INSERT INTO $T SELECT g, 'row ' || g || ' of the backfill bench', g % 1000 FROM generate_series(1, $N) g;
VACUUM ANALYZE $T;
SQL

now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# host CONSUMER CHUNK MODE [CTL]: start one host, wait for its "ready"
host() {
  c=$1 ch=$2
  shift 2
  "$HOST" -l info bench/backfill.lua "$URL" "$T" "$c" "$ch" "$N" "$@" >"$TMP/host.out" 2>"$TMP/host.err" &
  PID=$!
  k=0
  until grep -q '^ready' "$TMP/host.out" 2>/dev/null; do
    k=$((k + 1)); [ $k -lt 400 ] || die "the host did not start: $(cat "$TMP/host.err")"; sleep 0.05
  done
}
# wait_for PATTERN COUNT SECONDS: until the host printed COUNT lines matching PATTERN
wait_for() {
  k=0
  while [ "$(grep -c "$1" "$TMP/host.out" || true)" -lt "$2" ]; do
    k=$((k + 1))
    [ $k -lt $(($3 * 20)) ] || die "no '$1' x$2 from the host after $3 s: $(tail -3 "$TMP/host.err")"
    sleep 0.05
  done
}

# ----- 1. rows/s into Lua, against COPY -----
say "COPY (SELECT id, v, n FROM $T) TO STDOUT, 3 times"
: >"$TMP/copy"
for i in 1 2 3; do
  a=$(now)
  got=$(psql -q -v ON_ERROR_STOP=1 "$URL" -c "COPY (SELECT id, v, n FROM $T) TO STDOUT" | wc -l)
  b=$(now)
  [ "$got" -eq "$N" ] || die "COPY gave $got rows of $N"
  echo "$a $b" | awk -v n="$N" '{ printf "%.0f\n", n / ($2 - $1) }' >>"$TMP/copy"
done
COPY=$(sort -g "$TMP/copy" | tail -1)

# backfill_once CHUNK: RATE, the rows/s of one backfill of the table on a new consumer
backfill_once() {
  say "a backfill of $N rows, chunk $1"
  host "bench_bf_$1" "$1" once
  wait_for '^run ' 1 120
  stop_host
  "$HOST" --drop-consumer "$URL" "bench_bf_$1" >/dev/null 2>&1 || true
  RATE=$(sed -n "s/^run .* rate=\([0-9]*\).*/\1/p" "$TMP/host.out")
}
backfill_once 10000
R10000=$RATE
backfill_once 1000
R1000=$RATE

# ----- 2. the writers, with and without a backfill -----
# writers RATE: ROUNDS rounds of pgbench without and with a backfill read at RATE rows/s at most
# (0: the default pace, "auto"; "full": as fast as it goes) into $TMP/rounds.RATE: "off on ratio backfill-rows/s" a round
writers() {
CTL=$TMP/ctl
rm -f "$CTL" "$CTL.stat"
host "bench_bf_writers_$1" "$WCHUNK" toggle "$CTL" "$1"
KIND=$(psql -Atq "$URL" -c "SELECT string_agg(DISTINCT l.lanname, ',') FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
  JOIN pg_language l ON l.oid = p.prolang WHERE t.tgrelid = '$T'::regclass AND NOT t.tgisinternal")
[ -n "$KIND" ] || die "no trigger on $T: the host's watch did not install one"
printf '\\set id random(1, %s)\nUPDATE %s SET n = n + 1 WHERE id = :id;\n' "$N" "$T" >"$TMP/update.sql"
pgb() { # the tps of one pgbench run
  pgbench -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$TMP/update.sql" "$URL" 2>"$TMP/pgbench.err" |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
checkpoint() { psql -q "$URL" -c CHECKPOINT >/dev/null 2>&1 || true; }
progress() { cat "$CTL.stat"; }
k=0
until [ -s "$CTL.stat" ]; do
  k=$((k + 1)); [ $k -lt 100 ] || die "the host wrote no $CTL.stat"; sleep 0.05
done
say "pgbench, $CLIENTS clients of one-row updates, $SECS s a run: without and with a backfill (backfill_rate $1) x $ROUNDS"
: >"$TMP/rounds.$1"
IDLES=0
r=0
while [ $r -lt "$ROUNDS" ]; do
  r=$((r + 1))
  checkpoint
  OFF=$(pgb)
  [ -n "$OFF" ] || die "pgbench failed: $(tail -3 "$TMP/pgbench.err")"
  checkpoint
  s0=$(progress | cut -d' ' -f1)
  touch "$CTL"
  k=0
  until [ "$(progress | cut -d' ' -f1)" -gt "$s0" ]; do # the backfill's rows are arriving
    k=$((k + 1)); [ $k -lt 400 ] || die "the backfill did not start: $(tail -3 "$TMP/host.err")"; sleep 0.05
  done
  a=$(progress)
  ON=$(pgb)
  [ -n "$ON" ] || die "pgbench failed: $(tail -3 "$TMP/pgbench.err")"
  sleep 0.25 # the stat file is written every 0.2 s
  b=$(progress)
  rm -f "$CTL"
  IDLES=$((IDLES + 1))
  wait_for '^idle' "$IDLES" 60
  echo "$OFF $ON $a $b" | awk '{ printf "%.0f %.0f %.4f %.0f\n", $1, $2, $2 / $1, ($5 - $3) / ($6 - $4) }' >>"$TMP/rounds.$1"
done
PASSES=$((PASSES + $(grep -c 'backfill of .* done' "$TMP/host.err" || true)))
stop_host
"$HOST" --drop-consumer "$URL" "bench_bf_writers_$1" >/dev/null 2>&1 || true
}
# row RATE TARGET: the table's row of writers RATE
row() {
  f=$TMP/rounds.$1
  awk -v off="$(cut -d' ' -f1 "$f" | median)" -v on="$(cut -d' ' -f2 "$f" | median)" -v wr="$(cut -d' ' -f3 "$f" | median)" \
    -v rate="$(cut -d' ' -f4 "$f" | median)" -v rounds="$(awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $3 }' "$f")" \
    -v limit="$1" -v target="$2" -v wchunk="$WCHUNK" -v c="$CLIENTS" -v secs="$SECS" -v nr="$ROUNDS" 'BEGIN {
    lim = limit == "full" ? ", backfill_rate \"full\"" : limit > 0 ? sprintf(", backfill_rate %d", limit) : ", backfill_rate \"auto\", the default"
    printf "| writers: pgbench -c %d, one-row UPDATEs, %d s, tps with a backfill (chunk %d%s) / without (median of %d rounds) | - | %d / %d tps | %.2fx (rounds %s) | %s | %s |\n",
      c, secs, wchunk, lim, nr, on, off, wr, rounds, target ? ">= 0.9x" : "-", target ? (wr >= 0.9 ? "yes" : "NO") : "-"
    printf "| backfill rows/s while the writers ran (chunk %d%s) | - | %d/s | - | - | - |\n", wchunk, lim, rate
  }'
}
PASSES=0
writers 0
writers full
writers "$RATE_LIMIT"

echo
echo "Backfill (PostgreSQL; $N rows of (id int, v text, n int); a durable consumer, a \"read\" handler that counts):"
echo "| metric | COPY TO STDOUT | sqlnotify-lua | ratio | target | met? |"
echo "|---|---|---|---|---|---|"
awk -v copy="$COPY" -v r10="$R10000" -v r1="$R1000" 'BEGIN {
  printf "| rows/s into Lua, chunk 10000 (n:backfill to the last handler call) | %d/s | %d/s | %.3fx | >= 200000/s | %s |\n",
    copy, r10, r10 / copy, r10 >= 200000 ? "yes" : "NO"
  printf "| rows/s into Lua, chunk 1000 (the default) | %d/s | %d/s | %.3fx | - | - |\n", copy, r1, r1 / copy
}'
row 0 1
row full 0
row "$RATE_LIMIT" 0
echo "trigger on $T: $KIND; backfills that read the whole table while the writers ran: $PASSES"
echo "bench took $(($(date +%s) - T0)) s; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
