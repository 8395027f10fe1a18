#!/bin/sh
# bench/groups.sh [BUILD]: a group on PostgreSQL (issue 13) with one, two and three members
# whose handlers sleep 1 ms per event: events/s from the commit of BENCH_GROUP_N rows (one
# transaction) until every row was handled, once the members have balanced the shares.
# Environment: SQLNOTIFY_BENCH_PG_URL (default postgresql://root@127.0.0.1/test; makes and
# drops the schema sqlnotify_bench_grp and the consumers bench_group_*), BENCH_GROUP_N (3000).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
N=${BENCH_GROUP_N:-3000}
S=sqlnotify_bench_grp
TMP=$(mktemp -d)
PIDS=""
die() { echo "bench-groups: $*" >&2; exit 1; }
stop_members() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  PIDS=""
}
cleanup() {
  stop_members
  psql -q "$URL" -c "DROP SCHEMA IF EXISTS $S CASCADE; DELETE FROM sqlnotify.consumers WHERE name LIKE 'bench_group_%'" \
    >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$HOST" ] || die "$HOST not built (run make)"
lua5.4 -e 'require("system")' 2>/dev/null || die "luasystem (Debian lua-system, with lua-busted) is needed"
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL || die "cannot create schema $S"
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS $S CASCADE;
CREATE SCHEMA $S;
CREATE TABLE $S.t (id bigserial PRIMARY KEY, note text NOT NULL);
SQL
now() { date +%s.%N; }
lines() { cat "$TMP"/out.* 2>/dev/null | wc -l; }
holders() { # the consumer's members holding at least one share
  psql -Atq "$URL" -c "SELECT count(DISTINCT owner) FROM sqlnotify.shares WHERE consumer = '$1' AND owner IS NOT NULL"
}
RESULTS=""
for M in 1 2 3; do
  C=bench_group_$M
  rm -f "$TMP"/out.*
  i=0
  while [ $i -lt $M ]; do
    i=$((i + 1))
    "$HOST" -l warn bench/groups.lua "$URL" "$S.t" "$C" >"$TMP/out.$i" 2>"$TMP/err.$i" &
    PIDS="$PIDS $!"
    k=0
    until grep -q '^ready' "$TMP/out.$i" 2>/dev/null; do
      k=$((k + 1)); [ $k -lt 400 ] || die "member $i did not start: $(cat "$TMP/err.$i")"; sleep 0.05
    done
  done
  k=0
  until [ "$(holders $C)" = "$M" ]; do # balanced: every member holds shares
    k=$((k + 1)); [ $k -lt 400 ] || die "$M members did not share $C"; sleep 0.05
  done
  base=$(lines) # the "ready" lines
  t0=$(now)
  psql -q "$URL" -c "INSERT INTO $S.t (note) SELECT 'row ' || g FROM generate_series(1, $N) g" >/dev/null
  k=0
  until [ $(($(lines) - base)) -ge "$N" ]; do
    k=$((k + 1)); [ $k -lt 6000 ] || die "$M members handled $(($(lines) - base)) of $N"; sleep 0.01
  done
  t1=$(now)
  per=""
  i=0
  while [ $i -lt $M ]; do i=$((i + 1)); per="$per $(($(wc -l <"$TMP/out.$i") - 1))"; done
  stop_members
  RESULTS="$RESULTS$M $(echo "$t0 $t1 $N" | awk '{ printf "%.0f", $3 / ($2 - $1) }')$per
"
done
echo
echo "Groups (PostgreSQL; handlers sleep 1 ms per event; $N events committed at once):"
echo "| members | events/s | speed-up | events per member |"
echo "|---------|----------|----------|-------------------|"
echo "$RESULTS" | awk 'NF { if (!one) one = $2; per = ""; for (i = 3; i <= NF; i++) per = per (i > 3 ? " / " : "") $i;
  printf "| %7d | %8d | %7.2fx | %-17s |\n", $1, $2, $2 / one, per }'
