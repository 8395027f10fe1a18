#!/bin/sh
# make bench: sqlnotify-lua against a bare libpq listener on the same notifications,
# then SQLite with a writer in another process; prints one table of medians and ratios.
#
#   sh bench/run.sh [BUILD]        (BUILD: the directory holding sqlnotify-lua; default build)
#
# Environment:
#   SQLNOTIFY_BENCH_PG_URL  PostgreSQL to use (default postgresql://root@127.0.0.1/test);
#                           the bench makes and drops its own schema, sqlnotify_bench
#   BENCH_RUNS              runs per figure, the median is reported (default 5)
#   BENCH_LAT_N             single-row commits per latency run (default 1000)
#   BENCH_BULK_N            rows in the one commit of a throughput run (default 200000)
#   BENCH_KEEP              a directory: keep the raw outputs there
#
# PostgreSQL: sqlnotify-lua (bench/watch.lua) installs its triggers; bench/bare_listener
# LISTENs on the same channels, so both receive every notification. Latency runs are
# single-row commits from a server-side loop about 2 ms apart, each row stamped by
# clock_timestamp(); each listener takes now - stamp. Throughput runs are one INSERT of
# BENCH_BULK_N rows; events/s is counted from the first to the last event a listener
# handles. The throughput runs add up to the long run (a million events by default) in
# which the host's RSS is read at 10% of the events and at the end.
# SQLite: bench/sqlite_writer (another process) writes; sqlnotify-lua reads.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
RUNS=${BENCH_RUNS:-5}
LAT_N=${BENCH_LAT_N:-1000}
BULK_N=${BENCH_BULK_N:-200000}
WARM_N=200
T0=$(date +%s.%N)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  psql -q "$URL" -c 'DROP SCHEMA IF EXISTS sqlnotify_bench CASCADE' >/dev/null 2>&1 || true
  if [ -n "${BENCH_KEEP:-}" ]; then mkdir -p "$BENCH_KEEP" && cp "$TMP"/*.out "$TMP"/*.err "$BENCH_KEEP"/ 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$HOST" ] || die "$HOST not built (run make)"

# ----- helpers -----
CFLAGS="-O2 -Wall -Wextra -Werror"
PQ_CFLAGS=$(pkg-config --cflags libpq 2>/dev/null || echo "-I$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)")
PQ_LIBS=$(pkg-config --libs libpq 2>/dev/null || echo -lpq)
cc $CFLAGS $PQ_CFLAGS -o "$TMP/bare_listener" bench/bare_listener.c $PQ_LIBS || die "cannot build bench/bare_listener.c"
cc $CFLAGS -o "$TMP/sqlite_writer" bench/sqlite_writer.c -lsqlite3 || die "cannot build bench/sqlite_writer.c"

# wait_for FILE PATTERN COUNT SECONDS: until FILE has COUNT lines matching PATTERN.
wait_for() {
  i=0
  while :; do
    c=$(grep -c "$2" "$1" 2>/dev/null) || true
    [ "${c:-0}" -lt "$3" ] || break
    i=$((i + 1))
    if [ $i -gt $(($4 * 20)) ]; then
      say "timed out waiting for '$2' x$3 in $(basename "$1")"
      tail -5 "$1" "${1%.out}.err" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.05
  done
}

# median FILE CHANNEL FIELD SKIP: median of FIELD= over the "run CHANNEL" lines of FILE after the first SKIP.
median() {
  grep "^run $2 " "$1" | tail -n +$(($4 + 1)) | sed -n "s/.* $3=\([0-9.]*\).*/\1/p" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# counts FILE CHANNEL SKIP: the n= of each run, to check nothing was lost.
counts() { grep "^run $2 " "$1" | tail -n +$(($3 + 1)) | sed -n 's/.* n=\([0-9]*\).*/\1/p' | sort -u | tr '\n' ' '; }

# ratio FILE_A FILE_B CHANNEL FIELD SKIP: median over runs of B/A, each run's two figures
# taken on the same notifications at the same moment, so load from elsewhere cancels out.
ratio() {
  grep "^run $3 " "$1" | tail -n +$(($5 + 1)) | sed -n "s/.* $4=\([0-9.]*\).*/\1/p" >"$TMP/ratio.a"
  grep "^run $3 " "$2" | tail -n +$(($5 + 1)) | sed -n "s/.* $4=\([0-9.]*\).*/\1/p" >"$TMP/ratio.b"
  paste "$TMP/ratio.a" "$TMP/ratio.b" | awk '$1 > 0 { print $2 / $1 }' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

field() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p" "$1" | tail -1; }

# ----- PostgreSQL -----
if ! psql -q "$URL" -Atc 'select 1' >/dev/null 2>&1; then
  if [ -z "${SQLNOTIFY_BENCH_PG_URL:-}" ] && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    say "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster "$ver" main start || true
    i=0; while ! psql -q "$URL" -Atc 'select 1' >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
  fi
  psql -q "$URL" -Atc 'select 1' >/dev/null 2>&1 || die "cannot reach PostgreSQL at $URL (set SQLNOTIFY_BENCH_PG_URL)"
fi
PGVER=$(psql -q "$URL" -Atc 'show server_version')

psql -q -v ON_ERROR_STOP=1 "$URL" -f bench/pg_schema.sql >/dev/null || die "cannot create schema sqlnotify_bench"

say "PostgreSQL $PGVER: $RUNS latency runs of $LAT_N commits, $RUNS throughput runs of $BULK_N rows"
"$HOST" -l warn bench/watch.lua "$URL" $((RUNS * BULK_N)) >"$TMP/pg_host.out" 2>"$TMP/pg_host.err" &
HOST_PID=$!
PIDS="$PIDS $HOST_PID"
wait_for "$TMP/pg_host.out" '^ready' 1 30
"$TMP/bare_listener" "$URL" sqlnotify_bench_lat sqlnotify_bench_bulk >"$TMP/pg_bare.out" 2>"$TMP/pg_bare.err" &
PIDS="$PIDS $!"
wait_for "$TMP/pg_bare.out" '^ready' 1 30

# Server-side loop: one commit per row, ~2 ms apart; the row after it ends the run.
# synchronous_commit off: the commit does not wait for the disk, for either listener.
pg_lat() {
  psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<EOF
SET synchronous_commit = off;
DO \$\$ BEGIN
  FOR i IN 1..$1 LOOP
    INSERT INTO sqlnotify_bench.lat DEFAULT VALUES;
    COMMIT;
    PERFORM pg_sleep(0.001);
  END LOOP;
END \$\$;
INSERT INTO sqlnotify_bench.lat (t0) VALUES (0);
EOF
}
pg_bulk() {
  psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<EOF
SET synchronous_commit = off;
TRUNCATE sqlnotify_bench.bulk;
INSERT INTO sqlnotify_bench.bulk (note) SELECT 'row ' || g FROM generate_series(1, $1) g;
INSERT INTO sqlnotify_bench.bulk (t0) VALUES (0);
EOF
}

# Both listeners must finish a run before the next starts: runs never overlap.
k=0
while [ $k -le "$RUNS" ]; do
  if [ $k -eq 0 ]; then pg_lat $WARM_N; else pg_lat "$LAT_N"; fi   # run 0 warms up, not counted
  k=$((k + 1))
  wait_for "$TMP/pg_host.out" '^run sqlnotify_bench_lat ' $k 60
  wait_for "$TMP/pg_bare.out" '^run sqlnotify_bench_lat ' $k 60
done
say "PostgreSQL latency runs done"
k=0
while [ $k -lt "$RUNS" ]; do
  pg_bulk "$BULK_N"
  k=$((k + 1))
  wait_for "$TMP/pg_host.out" '^run sqlnotify_bench_bulk ' $k 120
  wait_for "$TMP/pg_bare.out" '^run sqlnotify_bench_bulk ' $k 120
done
psql -q "$URL" -c 'INSERT INTO sqlnotify_bench.lat (t0) VALUES (-1)' >/dev/null
wait_for "$TMP/pg_host.out" '^quit ' 1 30
wait "$HOST_PID" || die "sqlnotify-lua (PostgreSQL) exited with an error: $(tail -3 "$TMP/pg_host.err")"
say "PostgreSQL throughput runs done"

# ----- SQLite -----
DB=$TMP/bench.db
"$TMP/sqlite_writer" "$DB" init || die "cannot create $DB"
SQLITEVER=$("$TMP/sqlite_writer" "$DB" version)
"$HOST" -l warn bench/watch.lua "sqlite:///$DB" $((RUNS * BULK_N)) >"$TMP/sq_host.out" 2>"$TMP/sq_host.err" &
SQ_PID=$!
PIDS="$PIDS $SQ_PID"
wait_for "$TMP/sq_host.out" '^ready' 1 30
say "SQLite $SQLITEVER: $RUNS latency runs of $LAT_N commits, $RUNS throughput runs of $BULK_N rows"
k=0
while [ $k -le "$RUNS" ]; do
  if [ $k -eq 0 ]; then n=$WARM_N; else n=$LAT_N; fi
  "$TMP/sqlite_writer" "$DB" lat "$n" 1000
  k=$((k + 1))
  wait_for "$TMP/sq_host.out" '^run sqlnotify_bench_lat ' $k 60
done
k=0
while [ $k -lt "$RUNS" ]; do
  "$TMP/sqlite_writer" "$DB" bulk "$BULK_N"
  k=$((k + 1))
  wait_for "$TMP/sq_host.out" '^run sqlnotify_bench_bulk ' $k 120
done
"$TMP/sqlite_writer" "$DB" quit
wait_for "$TMP/sq_host.out" '^quit ' 1 30
wait "$SQ_PID" || die "sqlnotify-lua (SQLite) exited with an error: $(tail -3 "$TMP/sq_host.err")"

# ----- the table -----
B=$TMP/pg_bare.out H=$TMP/pg_host.out S=$TMP/sq_host.out
b50=$(median "$B" sqlnotify_bench_lat p50_us 1)
h50=$(median "$H" sqlnotify_bench_lat p50_us 1)
b99=$(median "$B" sqlnotify_bench_lat p99_us 1)
h99=$(median "$H" sqlnotify_bench_lat p99_us 1)
brate=$(median "$B" sqlnotify_bench_bulk rate 0)
r50=$(ratio "$B" "$H" sqlnotify_bench_lat p50_us 1)
r99=$(ratio "$B" "$H" sqlnotify_bench_lat p99_us 1)
rrate=$(ratio "$B" "$H" sqlnotify_bench_bulk rate 0)
hrate=$(median "$H" sqlnotify_bench_bulk rate 0)
s50=$(median "$S" sqlnotify_bench_lat p50_us 1)
s99=$(median "$S" sqlnotify_bench_lat p99_us 1)
srate=$(median "$S" sqlnotify_bench_bulk rate 0)
hwm=$(field "$H" hwm_kb)
rss10=$(grep '^run sqlnotify_bench_bulk ' "$H" | tail -1 | sed -n 's/.* rss10_kb=\([0-9]*\).*/\1/p')
rss100=$(grep '^run sqlnotify_bench_bulk ' "$H" | tail -1 | sed -n 's/.* rss_kb=\([0-9]*\).*/\1/p')
total=$(grep '^run sqlnotify_bench_bulk ' "$H" | tail -1 | sed -n 's/.* total=\([0-9]*\).*/\1/p')
shwm=$(field "$S" hwm_kb)
srss10=$(grep '^run sqlnotify_bench_bulk ' "$S" | tail -1 | sed -n 's/.* rss10_kb=\([0-9]*\).*/\1/p')
srss100=$(grep '^run sqlnotify_bench_bulk ' "$S" | tail -1 | sed -n 's/.* rss_kb=\([0-9]*\).*/\1/p')
stotal=$(grep '^run sqlnotify_bench_bulk ' "$S" | tail -1 | sed -n 's/.* total=\([0-9]*\).*/\1/p')
ELAPSED=$(echo "$T0 $(date +%s.%N)" | awk '{ printf "%.0f", $2 - $1 }')

echo
echo "sqlnotify-lua bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPU(s), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "PostgreSQL $PGVER, SQLite $SQLITEVER, $(lua5.4 -v 2>&1 | cut -d' ' -f1-2); medians of $RUNS runs (ratio: median of the per-run ratios); latency: $LAT_N commits/run, throughput: $BULK_N rows in one commit"
echo
awk -v b50="$b50" -v h50="$h50" -v b99="$b99" -v h99="$h99" -v br="$brate" -v hr="$hrate" \
    -v r50="$r50" -v r99="$r99" -v rr="$rrate" \
    -v s50="$s50" -v s99="$s99" -v sr="$srate" -v hwm="$hwm" -v r10="$rss10" -v r100="$rss100" -v tot="$total" \
    -v shwm="$shwm" -v sr10="$srss10" -v sr100="$srss100" -v stot="$stotal" '
function yes(c) { return c ? "yes" : "NO" }
function row(m, b, h, r, t, ok) { printf "| %-44s | %11s | %17s | %7s | %-14s | %-4s |\n", m, b, h, r, t, ok }
function us(v) { return sprintf("%.0f us", v) }
function rate(v) { return sprintf("%.0f/s", v) }
function mb(kb) { return sprintf("%.1f MB", kb / 1024) }
BEGIN {
  row("metric", "bare libpq", "sqlnotify-lua", "ratio", "target", "met?")
  print "|----------------------------------------------|-------------|-------------------|---------|----------------|------|"
  row("PG commit-to-handler p50", us(b50), us(h50), sprintf("%.2fx", r50), "<= 1.5x", yes(r50 <= 1.5))
  row("PG commit-to-handler p99", us(b99), us(h99), sprintf("%.2fx", r99), "-", "-")
  row("PG events/s (one commit of rows)", rate(br), rate(hr), sprintf("%.2fx", rr), ">= 200000/s", yes(hr >= 200000))
  row("PG host peak RSS (VmHWM)", "-", mb(hwm), "-", "< 16 MB", yes(hwm < 16384))
  row(sprintf("PG host RSS at 10%% / 100%% of %d events", tot), "-", mb(r10) " / " mb(r100), sprintf("%+.1f MB", (r100 - r10) / 1024), "flat (< +1 MB)", yes(r100 - r10 < 1024))
  row("SQLite other-process commit-to-handler p50", "-", us(s50), "-", "< 2000 us", yes(s50 < 2000))
  row("SQLite other-process commit-to-handler p99", "-", us(s99), "-", "-", "-")
  row("SQLite events/s (one commit of rows)", "-", rate(sr), "-", ">= 100000/s", yes(sr >= 100000))
  row("SQLite host peak RSS (VmHWM)", "-", mb(shwm), "-", "< 16 MB", yes(shwm < 16384))
  row(sprintf("SQLite RSS at 10%% / 100%% of %d events", stot), "-", mb(sr10) " / " mb(sr100), sprintf("%+.1f MB", (sr100 - sr10) / 1024), "flat (< +1 MB)", yes(sr100 - sr10 < 1024))
}'
echo
echo "events per run (all must be equal to what was written: $LAT_N latency, $BULK_N throughput):"
echo "  PG lat: bare $(counts "$B" sqlnotify_bench_lat 1)/ host $(counts "$H" sqlnotify_bench_lat 1)  PG bulk: bare $(counts "$B" sqlnotify_bench_bulk 0)/ host $(counts "$H" sqlnotify_bench_bulk 0)"
echo "  SQLite lat: $(counts "$S" sqlnotify_bench_lat 1) SQLite bulk: $(counts "$S" sqlnotify_bench_bulk 0)"
echo "bench took ${ELAPSED} s; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine widens p99 and the spread)"
sh bench/live.sh "$BUILD" || die "the live example bench (bench/live.sh) failed"
sh bench/mysql.sh "$BUILD" || die "the MySQL/MariaDB bench (bench/mysql.sh) failed"
sh bench/durable.sh "$BUILD" || die "the durable-mode writers bench (bench/durable.sh) failed"
sh bench/update.sh "$BUILD" "$URL" || die "the old-values bench (bench/update.sh) failed"
sh bench/groups.sh "$BUILD" || die "the groups bench (bench/groups.sh) failed"
sh bench/delivery.sh "$BUILD" || die "the delivery bench (bench/delivery.sh) failed"
sh bench/clients.sh "$BUILD" || die "the clients bench (bench/clients.sh) failed"
sh bench/metrics.sh "$BUILD" || die "the --metrics bench (bench/metrics.sh) failed"
sh bench/backfill.sh "$BUILD" || die "the backfill bench (bench/backfill.sh) failed"
