#!/bin/sh
# bench/delivery.sh [BUILD]: what the delivery machinery (handlers as coroutines, per-key order,
# concurrency, retries: lua/sqlnotify/delivery.lua) costs and gives, on a PostgreSQL durable
# consumer, through the real binary; each host (bench/delivery.lua) is one notifier on a table
# of its own, and the hosts of one part run side by side while the writes alternate.
#  1. A handler that never yields (reads the event's fields, counts): events/s of one commit of
#     BENCH_DLV_N rows, first handler to last, with today's options (concurrency 64, the
#     durable default retry) against a plain baseline (concurrency 1, retry.attempts 1: never
#     retried) and against the release before handlers became coroutines (3bfbffd^, built
#     from git into a temporary directory; BENCH_DLV_PREV names another commit, "none" skips
#     it). BENCH_DLV_ROUNDS rounds, each ratio the median of the rounds' own.
#  2. A handler doing sqlnotify.sleep(0.001) (a broker's round trip) on an UPDATE of 1000
#     rows (1000 keys), at concurrency 1, 16 and 64: events/s, and 64 against 1.
#  3. Memory per event in flight: handlers that sleep an hour, 10000 rows committed at once,
#     concurrency 10000; the host's RSS and Lua heap (after a full collection) against before
#     the commit, divided by the events in flight. Durable (its reader holds while any event is
#     in flight, so one fetched page is: about 500), and live (which holds nothing back).
# Environment: SQLNOTIFY_BENCH_PG_URL (default postgresql://root@127.0.0.1/test; makes and drops
# the schema sqlnotify_bench_dlv and the consumers bench_dlv_*), BENCH_DLV_N (100000),
# BENCH_DLV_ROUNDS (5), BENCH_DLV_PREV (3bfbffd^). About a minute.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
N=${BENCH_DLV_N:-100000}
ROUNDS=${BENCH_DLV_ROUNDS:-5}
PREV=${BENCH_DLV_PREV:-3bfbffd^}
HELD=10000
S=sqlnotify_bench_dlv
T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

say() { echo "bench-delivery: $*" >&2; }
die() { echo "bench-delivery: $*" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=""
stop_hosts() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  PIDS=""
}
cleanup() {
  stop_hosts
  psql -q "$URL" -c "DROP SCHEMA IF EXISTS $S CASCADE; DELETE FROM sqlnotify.consumers WHERE name LIKE 'bench_dlv_%'" \
    >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$HOST" ] || die "$HOST not built (run make)"

psql -q "$URL" -c "DELETE FROM sqlnotify.consumers WHERE name LIKE 'bench_dlv_%'" >/dev/null 2>&1 || true # none yet on a new database
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL || die "cannot create schema $S"
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS $S CASCADE;
CREATE SCHEMA $S;
CREATE TABLE $S.p_prev (id bigserial PRIMARY KEY, note text NOT NULL);
CREATE TABLE $S.p_base (LIKE $S.p_prev INCLUDING ALL);
CREATE TABLE $S.p_new (LIKE $S.p_prev INCLUDING ALL);
CREATE TABLE $S.c_1 (id int PRIMARY KEY, note text NOT NULL);
INSERT INTO $S.c_1 SELECT g, 'key ' || g FROM generate_series(1, 1000) g;
CREATE TABLE $S.c_16 (LIKE $S.c_1 INCLUDING ALL);
CREATE TABLE $S.c_64 (LIKE $S.c_1 INCLUDING ALL);
CREATE TABLE $S.l_1 (LIKE $S.c_1 INCLUDING ALL);
CREATE TABLE $S.l_16 (LIKE $S.c_1 INCLUDING ALL);
CREATE TABLE $S.l_64 (LIKE $S.c_1 INCLUDING ALL);
INSERT INTO $S.c_16 TABLE $S.c_1;
INSERT INTO $S.c_64 TABLE $S.c_1;
INSERT INTO $S.l_1 TABLE $S.c_1;
INSERT INTO $S.l_16 TABLE $S.c_1;
INSERT INTO $S.l_64 TABLE $S.c_1;
CREATE TABLE $S.h_dur (LIKE $S.p_prev INCLUDING ALL);
CREATE TABLE $S.h_live (LIKE $S.p_prev INCLUDING ALL);
SQL

# The previous release, built from git (its PostgreSQL schema is today's).
PREV_HOST=""
if [ "$PREV" != none ] && git rev-parse -q --verify "$PREV^{commit}" >/dev/null 2>&1; then
  mkdir "$TMP/prev"
  if git archive "$PREV" | tar -x -C "$TMP/prev" && make -s -C "$TMP/prev" -j2 >"$TMP/prev.log" 2>&1; then
    PREV_HOST=$TMP/prev/build/sqlnotify-lua
  else
    say "cannot build $PREV: $(tail -3 "$TMP/prev.log"); its row is skipped"
  fi
else
  say "no commit $PREV here: the previous release's row is skipped"
fi

# host NAME BINARY ARGS...: start one host, wait for its "ready".
host() {
  name=$1 bin=$2
  shift 2
  "$bin" -l warn bench/delivery.lua "$URL" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PIDS="$PIDS $!"
  eval "PID_$name=$!"
  k=0
  until grep -q '^ready' "$TMP/$name.out" 2>/dev/null; do
    k=$((k + 1)); [ $k -lt 400 ] || die "host $name did not start: $(cat "$TMP/$name.err")"; sleep 0.05
  done
}
# wait_for NAME PATTERN COUNT SECONDS
wait_for() {
  k=0
  while [ "$(grep -c "$2" "$TMP/$1.out" || true)" -lt "$3" ]; do
    k=$((k + 1))
    [ $k -lt $(($4 * 50)) ] || die "host $1: no '$2' x$3 after $4 s: $(tail -3 "$TMP/$1.err")"
    sleep 0.02
  done
}
sql() { psql -q -v ON_ERROR_STOP=1 "$URL" -c "SET synchronous_commit = off" -c "$1" >/dev/null; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rates() { sed -n 's/^run .* rate=\([0-9.]*\).*/\1/p' "$TMP/$1.out"; }
# ratio A B: the median over rounds of B's rate / A's
ratio() { rates "$1" >"$TMP/ra"; rates "$2" >"$TMP/rb"; paste "$TMP/ra" "$TMP/rb" | awk '$1 > 0 { print $2 / $1 }' | median; }
range() { rates "$1" >"$TMP/ra"; rates "$2" >"$TMP/rb"; paste "$TMP/ra" "$TMP/rb" | awk '$1 > 0 { printf "%s%.2f", (NR > 1 ? ", " : ""), $2 / $1 }'; }

# ----- 1. a handler that never yields -----
say "1. a handler that never yields: $ROUNDS rounds of one commit of $N rows each, per host"
HOSTS1="base new"
[ -z "$PREV_HOST" ] || { host prev "$PREV_HOST" $S.p_prev insert bench_dlv_prev plain - - "$N"; HOSTS1="prev $HOSTS1"; }
host base "$HOST" $S.p_base insert bench_dlv_base plain 1 1 "$N"
host new "$HOST" $S.p_new insert bench_dlv_new plain 64 - "$N"
r=0
while [ $r -lt "$ROUNDS" ]; do
  r=$((r + 1))
  order=$HOSTS1
  [ $((r % 2)) = 1 ] || order=$(echo "$HOSTS1" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
  for h in $order; do
    sql "INSERT INTO $S.p_$h (note) SELECT 'row ' || g FROM generate_series(1, $N) g"
    wait_for "$h" '^run ' "$r" 60
  done
done
stop_hosts

# ----- 2. sqlnotify.sleep(0.001) over 1000 keys -----
# sleeps is defined before try_wait, which it calls only when run.
# one UPDATE of the 1000 rows at concurrency 1 (about a second); P of them in one commit above.
# Durable (the consumer bench_dlv_c*), then live (the same on tables of their own) for comparison.
P=5
sleeps() { # PREFIX CONSUMER-OR-DASH
  say "2. sqlnotify.sleep(0.001) over 1000 keys at concurrency 1, 16, 64 ($1): $ROUNDS rounds"
  for c in 1 16 64; do
    cons=$2; [ "$cons" = - ] || cons=bench_dlv_$1$c
    if [ $c = 1 ]; then n=1000; else n=$((P * 1000)); fi
    host "$1$c" "$HOST" "$S.$1_$c" update "$cons" sleep $c - $n
  done
  r=0
  while [ $r -lt "$ROUNDS" ]; do
    r=$((r + 1))
    sql "UPDATE $S.$1_1 SET note = 'round $r'"
    try_wait "${1}1" "$r" || break
    for c in 16 64; do
      sql "DO \$\$ BEGIN FOR i IN 1..$P LOOP UPDATE $S.$1_$c SET note = 'round $r pass ' || i; END LOOP; END \$\$"
      try_wait "$1$c" "$r" || break 2
    done
  done
  stop_hosts
}
# try_wait NAME ROUND: the round's run line within 15 s, else NAME is marked unfinished (what it
# handled is in its last progress line) and the rounds of its kind stop.
try_wait() {
  k=0
  while [ "$(grep -c '^run ' "$TMP/$1.out" || true)" -lt "$2" ]; do
    k=$((k + 1))
    if [ $k -gt 750 ]; then
      grep '^progress' "$TMP/$1.out" | tail -1 >"$TMP/$1.unfinished"
      say "host $1: round $2 unfinished after 15 s ($(cat "$TMP/$1.unfinished"))"
      return 1
    fi
    sleep 0.02
  done
}
sleeps c bench_dlv
sleeps l -

# ----- 3. memory per event in flight -----
say "3. memory per event in flight: $HELD rows committed at once, handlers sleeping, concurrency $HELD"
held() { # NAME TABLE CONSUMER: "inflight rss_delta_kb lua_delta_kb"
  host "$1" "$HOST" "$S.$2" insert "$3" hold $HELD - $HELD
  sql "INSERT INTO $S.$2 (note) SELECT 'row ' || g FROM generate_series(1, $HELD) g"
  wait_for "$1" '^held ' 1 60
  eval "kill -KILL \$PID_$1"
  stop_hosts
  awk '/^base / { split($2, a, "="); split($3, b, "="); r = a[2]; l = b[2] }
       /^held / { split($2, i, "="); split($3, a, "="); split($4, b, "="); print i[2], a[2] - r, b[2] - l }' "$TMP/$1.out"
}
HDUR=$(held hdur h_dur bench_dlv_held)
HLIVE=$(held hlive h_live -)

# ----- the table -----
med() { rates "$1" | median; }
echo
echo "Delivery (PostgreSQL durable consumer; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPU(s), load at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); medians of $ROUNDS rounds, ratios the median of the rounds' own):"
echo "| measure | events/s | ratio | target | met? |"
echo "|---|---|---|---|---|"
R_BASE=$(ratio base new)
printf '| never yields, %d rows a commit: concurrency 1, retry.attempts 1 (baseline) | %.0f | - | - | - |\n' "$N" "$(med base)"
printf '| never yields: concurrency 64, default retry (today) | %.0f | %.2fx of baseline (rounds %s) | >= 0.90x | %s |\n' \
  "$(med new)" "$R_BASE" "$(range base new)" "$(awk -v r="$R_BASE" 'BEGIN { print r >= 0.9 ? "yes" : "NO" }')"
if [ -n "$PREV_HOST" ]; then
  R_PREV=$(ratio prev new)
  printf '| never yields: the release before coroutines (%s = %s), no options | %.0f | today %.2fx of it (rounds %s) | >= 0.90x | %s |\n' \
    "$PREV" "$(git rev-parse --short "$PREV")" "$(med prev)" "$R_PREV" "$(range prev new)" \
    "$(awk -v r="$R_PREV" 'BEGIN { print r >= 0.9 ? "yes" : "NO" }')"
fi
dups() { sed -n 's/^dups n=//p' "$TMP/$1.out" | awk '{ s += $1 } END { print s + 0 }'; }
for m in c l; do
  if [ $m = c ]; then kind=durable; else kind="live (for comparison)"; fi
  if ls "$TMP"/$m*.unfinished >/dev/null 2>&1; then
    for f in "$TMP"/$m*.unfinished; do
      h=$(basename "$f" .unfinished)
      printf '| sleep(0.001), 1000 keys, %s, concurrency %s: UNFINISHED, 15 s into a round: %s (handled / delivered again) | - | - | >= 30x | NO |\n' \
        "$kind" "${h#?}" "$(sed 's/progress n=\([0-9]*\) dups=\([0-9]*\)/\1 \/ \2/' "$f")"
    done
    continue
  fi
  R64=$(ratio ${m}1 ${m}64)
  printf '| sleep(0.001), 1000 keys, %s, concurrency 1 (1000 events a round; delivered again: %s) | %.0f | - | - | - |\n' \
    "$kind" "$(dups ${m}1)" "$(med ${m}1)"
  printf '| sleep(0.001), 1000 keys, %s, concurrency 16 (%d events a round; delivered again: %s) | %.0f | %.1fx of concurrency 1 | - | - |\n' \
    "$kind" $((P * 1000)) "$(dups ${m}16)" "$(med ${m}16)" "$(ratio ${m}1 ${m}16)"
  printf '| sleep(0.001), 1000 keys, %s, concurrency 64 (%d events a round; delivered again: %s) | %.0f | %.1fx of concurrency 1 (rounds %s) | >= 30x | %s |\n' \
    "$kind" $((P * 1000)) "$(dups ${m}64)" "$(med ${m}64)" "$R64" "$(range ${m}1 ${m}64)" \
    "$(awk -v r="$R64" 'BEGIN { print r >= 30 ? "yes" : "NO" }')"
done
echo "$HDUR" | awk -v held=$HELD '{ printf "| memory per event in flight, durable (%d committed; in flight: %d) | RSS %+.1f MB, Lua heap %+.1f MB: %.2f kB RSS, %.2f kB heap an event | - | - | - |\n", held, $1, $2 / 1024, $3 / 1024, $2 / $1, $3 / $1 }'
echo "$HLIVE" | awk -v held=$HELD '{ printf "| memory per event in flight, live (%d committed; in flight: %d) | RSS %+.1f MB, Lua heap %+.1f MB: %.2f kB RSS, %.2f kB heap an event | - | - | - |\n", held, $1, $2 / 1024, $3 / 1024, $2 / $1, $3 / $1 }'
echo "events per run: $(for h in $HOSTS1 c1 c16 c64 l1 l16 l64; do printf '%s %s; ' "$h" "$(sed -n 's/^run n=\([0-9]*\).*/\1/p' "$TMP/$h.out" | sort -u | tr '\n' ' ')"; done)took $(($(date +%s) - T0)) s"
