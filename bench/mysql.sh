#!/bin/sh
# bench/mysql.sh: sqlnotify-lua on MySQL/MariaDB (make bench runs it from bench/run.sh).
# Prints commit-to-handler latency while rows are committed ~2 ms apart (the poll stays
# fast) and ~50 ms apart (the poll has backed off to idle), events/s for one commit of
# BENCH_BULK_N rows, the host's peak RSS, and what the trigger costs the writers: 8 clients
# of one-row inserts (mariadb-slap) into a watched table against the same table unwatched.
#
#   sh bench/mysql.sh [BUILD]
#
# Environment:
#   SQLNOTIFY_BENCH_MYSQL_URL  default mysql://root@127.0.0.1:3306/sqlnotify_bench (made if missing;
#                              the bench makes and drops its tables lat, bulk and plain there)
#   BENCH_RUNS (default 5), BENCH_LAT_N (default 1000), BENCH_BULK_N (default 200000),
#   BENCH_SLAP_N inserts per writer run (default 8000)
# The rows are written by a stored procedure on the server, each stamped with SYSDATE(6)
# just before its commit; bench/watch.lua (the same handlers as the PostgreSQL bench) takes
# now - stamp. The driver polls (this server has no binary log the reader could follow).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/sqlnotify_bench}
RUNS=${BENCH_RUNS:-5}
LAT_N=${BENCH_LAT_N:-1000}
IDLE_N=$((LAT_N / 10))
BULK_N=${BENCH_BULK_N:-200000}
SLAP_N=${BENCH_SLAP_N:-8000}

say() { echo "bench-mysql: $*" >&2; }
die() { echo "bench-mysql: $*" >&2; exit 1; }

[ -x "$HOST" ] || die "$HOST not built (run make)"
probe=$(mktemp)
echo 'print(select(2, pcall(require("sqlnotify").notifier, { url = "mysql://x@127.0.0.1:1/x", use_logger = false })))' >"$probe"
if "$HOST" "$probe" 2>&1 | grep -q "no MySQL/MariaDB support"; then
  rm -f "$probe"
  say "this build has no MySQL/MariaDB support (install libmariadb-dev and rebuild): skipped"
  exit 0
fi
rm -f "$probe"
SQLNOTIFY_TEST_MYSQL_URL=$URL sh tools/mariadb.sh >&2 || die "no MariaDB at $URL"

rest=${URL#*://}; auth=${rest%%@*}; rest=${rest#*@}
user=${auth%%:*}; pass=""; case "$auth" in *:*) pass=${auth#*:} ;; esac
hostport=${rest%%/*}; db=${rest#*/}; db=${db%%\?*}
host=${hostport%%:*}; port=3306; case "$hostport" in *:*) port=${hostport#*:} ;; esac
sql() { MYSQL_PWD=$pass mariadb --protocol=tcp -h "$host" -P "$port" -u "$user" -N -B "$db" "$@"; }

TMP=$(mktemp -d)
PID=""
cleanup() {
  [ -z "$PID" ] || kill "$PID" 2>/dev/null || true
  sql -e "DROP TABLE IF EXISTS lat, bulk, plain; DROP PROCEDURE IF EXISTS sqlnotify_bench_lat" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sql <<'EOF' || die "cannot make the bench tables"
DROP TABLE IF EXISTS lat, bulk, plain;
CREATE TABLE lat (id bigint AUTO_INCREMENT PRIMARY KEY, t0 bigint NOT NULL, note varchar(20) NOT NULL);
CREATE TABLE bulk LIKE lat;
CREATE TABLE plain LIKE lat;
DROP PROCEDURE IF EXISTS sqlnotify_bench_lat;
DELIMITER //
CREATE PROCEDURE sqlnotify_bench_lat(n INT, gap DOUBLE)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    INSERT INTO lat (t0, note) VALUES (CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED), 'x');
    DO SLEEP(gap);
    SET i = i + 1;
  END WHILE;
  INSERT INTO lat (t0, note) VALUES (0, 'end');
END//
DELIMITER ;
EOF

"$HOST" -l warn bench/watch.lua "$URL" "$((RUNS * BULK_N))" >"$TMP/host.out" 2>"$TMP/host.err" &
PID=$!
i=0
while ! grep -q '^ready' "$TMP/host.out"; do
  i=$((i + 1)); [ $i -lt 400 ] || die "the host did not start: $(cat "$TMP/host.err")"; sleep 0.05
done

# runs CHANNEL: how many "run CHANNEL" lines the host printed
runs() { grep -c "^run $1 " "$TMP/host.out" || true; }
wait_runs() {
  i=0
  while [ "$(runs "$1")" -lt "$2" ]; do
    i=$((i + 1)); [ $i -lt 6000 ] || die "the host did not report run $2 of $1: $(tail -3 "$TMP/host.err")"; sleep 0.05
  done
}

say "latency: $RUNS x $LAT_N commits ~2 ms apart, then 3 x $IDLE_N ~50 ms apart"
done_lat=0
for r in $(seq 1 "$RUNS"); do
  sql -e "CALL sqlnotify_bench_lat($LAT_N, 0.002)"
  done_lat=$((done_lat + 1)); wait_runs sqlnotify_bench_lat "$done_lat"
done
for r in 1 2 3; do
  sql -e "CALL sqlnotify_bench_lat($IDLE_N, 0.05)"
  done_lat=$((done_lat + 1)); wait_runs sqlnotify_bench_lat "$done_lat"
done

say "throughput: $RUNS x one commit of $BULK_N rows"
if sql -e "SELECT 1 FROM seq_1_to_2" >/dev/null 2>&1; then
  rows="SELECT 1, 'bulk' FROM seq_1_to_$BULK_N"
else # MySQL: no sequence engine
  rows="WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < $BULK_N) SELECT 1, 'bulk' FROM s"
fi
wsecs=""
for r in $(seq 1 "$RUNS"); do
  t0=$(date +%s.%N)
  sql -e "SET SESSION cte_max_recursion_depth = $((BULK_N + 1))" -e "INSERT INTO bulk (t0, note) $rows" 2>/dev/null \
    || sql -e "INSERT INTO bulk (t0, note) $rows"
  t1=$(date +%s.%N)
  sql -e "INSERT INTO bulk (t0, note) VALUES (0, 'end')"
  wait_runs sqlnotify_bench_bulk "$r"
  t2=$(date +%s.%N)
  sql -e "INSERT INTO plain (t0, note) $rows" 2>/dev/null || true
  t3=$(date +%s.%N)
  wsecs="$wsecs $(echo "$t0 $t1 $t2 $t3" | awk '{ printf "%.3f/%.3f", $2 - $1, $4 - $3 }')"
done
sql -e "INSERT INTO lat (t0, note) VALUES (-1, 'quit')"
i=0
while ! grep -q '^quit' "$TMP/host.out"; do
  i=$((i + 1)); [ $i -lt 400 ] || die "the host did not quit"; sleep 0.05
done
wait "$PID" || true
PID=""

say "writers: mariadb-slap, 8 clients, $SLAP_N one-row inserts into plain (unwatched) and lat (watched)"
slap() {
  MYSQL_PWD=$pass mariadb-slap --protocol=tcp -h "$host" -P "$port" -u "$user" --create-schema="$db" \
    --concurrency=8 --iterations=1 --number-of-queries="$SLAP_N" \
    --query="INSERT INTO $1 (t0, note) VALUES (1, 'slap')" 2>/dev/null \
    | sed -n 's/.*Average number of seconds to run all queries: \([0-9.]*\).*/\1/p'
}
# lat is still watched (its trigger stays after the host stopped): the journal gets the rows.
s_plain=$(slap plain); s_lat=$(slap lat)

median() { grep "^run $1 " "$TMP/host.out" | sed -n "$2" | sed -n "s/.* $3=\([0-9.]*\).*/\1/p" | sort -n \
  | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
b50=$(median sqlnotify_bench_lat "1,${RUNS}p" p50_us); b99=$(median sqlnotify_bench_lat "1,${RUNS}p" p99_us)
i50=$(median sqlnotify_bench_lat "$((RUNS + 1)),\$p" p50_us); i99=$(median sqlnotify_bench_lat "$((RUNS + 1)),\$p" p99_us)
rate=$(median sqlnotify_bench_bulk "1,\$p" rate)
hwm=$(sed -n 's/^quit hwm_kb=\([0-9]*\).*/\1/p' "$TMP/host.out")
ns=$(grep "^run sqlnotify_bench_" "$TMP/host.out" | sed -n 's/.* n=\([0-9]*\).*/\1/p' | sort -u | tr '\n' ' ')
ver=$(sql -e "SELECT VERSION()"); binlog=$(sql -e "SELECT @@log_bin")

echo
echo "MySQL/MariaDB ($ver, binary log $( [ "$binlog" = 1 ] && echo on || echo off ): the reader polls)"
awk -v b50="$b50" -v b99="$b99" -v i50="$i50" -v i99="$i99" -v rate="$rate" -v hwm="$hwm" \
    -v sp="$s_plain" -v sl="$s_lat" -v n="$SLAP_N" -v ws="$wsecs" '
function row(m, v, t, ok) { printf "| %-56s | %-16s | %-14s | %-4s |\n", m, v, t, ok }
function yes(c) { return c ? "yes" : "NO" }
BEGIN {
  row("metric", "sqlnotify-lua", "target", "met?")
  print "|----------------------------------------------------------|------------------|----------------|------|"
  row("commit-to-handler p50, commits ~2 ms apart", sprintf("%.0f us", b50), "<= 20000 us", yes(b50 <= 20000))
  row("commit-to-handler p99, commits ~2 ms apart", sprintf("%.0f us", b99), "-", "-")
  row("commit-to-handler p50, commits ~50 ms apart (idle poll)", sprintf("%.0f us", i50), "<= 20000 us", yes(i50 <= 20000))
  row("commit-to-handler p99, commits ~50 ms apart (idle poll)", sprintf("%.0f us", i99), "-", "-")
  row("events/s (one commit of rows)", sprintf("%.0f/s", rate), ">= 50000/s", yes(rate >= 50000))
  row("host peak RSS (VmHWM)", sprintf("%.1f MB", hwm / 1024), "< 16 MB", yes(hwm < 16384))
  if (sp > 0 && sl > 0)
    row("writers: 8 clients one-row inserts, watched/unwatched", sprintf("%.0f/%.0f/s = %.2fx", n / sl, n / sp, sp / sl), "-", "-")
  m = split(ws, w, " ")
  for (k = 1; k <= m; k++) { split(w[k], p, "/"); tw += p[1]; tp += p[2] }
  if (tp > 0) row("one INSERT ... SELECT, unwatched/watched time", sprintf("%.2fx", tp / tw), "-", "-")
}'
echo "events per run (each must be what was written: $LAT_N and $IDLE_N latency, $BULK_N throughput): $ns"
