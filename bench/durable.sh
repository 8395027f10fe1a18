#!/bin/sh
# bench/durable.sh: what watching costs the writers on PostgreSQL, in one run: pgbench with
# 8 clients of one-row inserts into a table unwatched, watched in live mode (one NOTIFY per
# row) and watched in durable mode (the journal), with sqlnotify-lua running; durable twice:
# with the journal trigger in C (sqlnotify_capture.capture(), where the server has the extension of
# pgext/) and with the plpgsql trigger (a second host, SQLNOTIFY_PG_CAPTURE=plpgsql). The
# unwatched and durable runs alternate BENCH_DUR_ROUNDS times and each ratio is the median of
# the rounds' (a run on this kind of machine varies by +-10% alone). Then durable
# commit-to-handler latency, idle (single-row commits 20 ms apart) and under the pgbench load.
#
#   sh bench/durable.sh [BUILD]    (make bench runs it at the end of bench/run.sh)
#
# Environment: SQLNOTIFY_BENCH_PG_URL (default postgresql://root@127.0.0.1/test; the bench
# makes and drops the schema sqlnotify_bench_dur and the consumer bench_durable),
# BENCH_DUR_SECONDS per pgbench run (default 10), BENCH_DUR_CLIENTS (default 8),
# BENCH_DUR_ROUNDS (default 3).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
SECS=${BENCH_DUR_SECONDS:-10}
CLIENTS=${BENCH_DUR_CLIENTS:-8}
ROUNDS=${BENCH_DUR_ROUNDS:-3}
S=sqlnotify_bench_dur

say() { echo "bench-durable: $*" >&2; }
die() { echo "bench-durable: $*" >&2; exit 1; }

TMP=$(mktemp -d)
PID=""
PLPID=""
cleanup() {
  for p in $PID $PLPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  psql -q "$URL" -c "DROP SCHEMA IF EXISTS $S CASCADE; DELETE FROM sqlnotify.consumers WHERE name IN ('bench_durable', 'bench_durable_pl')" \
    >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$HOST" ] || die "$HOST not built (run make)"
command -v pgbench >/dev/null || die "pgbench not found"

psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<EOF || die "cannot create schema $S"
DROP SCHEMA IF EXISTS $S CASCADE;
CREATE SCHEMA $S;
CREATE TABLE $S.plain (id bigserial PRIMARY KEY, v int, ts float8 DEFAULT extract(epoch FROM clock_timestamp()));
CREATE TABLE $S.live (LIKE $S.plain INCLUDING ALL);
CREATE TABLE $S.dur (LIKE $S.plain INCLUDING ALL);
CREATE TABLE $S.durpl (LIKE $S.plain INCLUDING ALL);
ALTER TABLE $S.live ALTER id SET DEFAULT nextval('$S.plain_id_seq');
ALTER TABLE $S.dur ALTER id SET DEFAULT nextval('$S.plain_id_seq');
ALTER TABLE $S.durpl ALTER id SET DEFAULT nextval('$S.plain_id_seq');
EOF

# The host: a live notifier on $S.live, a durable one on $S.dur printing each event's
# commit-to-handler latency in ms.
cat >"$TMP/watch.lua" <<EOF
local sqlnotify = require("sqlnotify")
io.stdout:setvbuf("full")
local live = assert(sqlnotify.notifier{ url = arg[1] })
live:watch("$S.live", "insert")
live:subscribe("$S.live", "insert", function() end)
assert(live:start())
local dur = assert(sqlnotify.notifier{ url = arg[1], consumer = "bench_durable" })
dur:watch("$S.dur", "insert", { extra_columns = { "ts" } })
dur:subscribe("$S.dur", "insert", function(ev)
  io.write(string.format("%.3f\n", (sqlnotify.now() - ev.extra_columns.ts) * 1000))
end)
assert(dur:start())
sqlnotify.every(0.1, function() io.stdout:flush() end)
print("ready")
io.stdout:flush()
EOF
start_host() {
  "$HOST" -l warn "$TMP/watch.lua" "$URL" >"$TMP/host.out" 2>"$TMP/host.err" &
  PID=$!
  i=0
  while ! grep -q '^ready' "$TMP/host.out"; do
    i=$((i + 1)); [ $i -lt 200 ] || die "the host did not start: $(cat "$TMP/host.err")"; sleep 0.05
  done
}
start_host
KIND=$(psql -Atq "$URL" -c "SELECT l.lanname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
  JOIN pg_language l ON l.oid = p.prolang WHERE t.tgrelid = '$S.dur'::regclass")
[ "$KIND" = c ] || say "the trigger on $S.dur is $KIND, not the C one: is the extension installed (make install-pgext)?"

lines() { grep -c '^[0-9]' "$TMP/host.out" || true; }
# wait_lines N: until the host handled N durable events
wait_lines() {
  i=0
  while [ "$(lines)" -lt "$1" ]; do
    i=$((i + 1)); [ $i -lt 1200 ] || die "the host handled $(lines) of $1 events"; sleep 0.05
  done
}
# p50 of the latency lines from $1 to $2
p50() { sed -n "$1,$2p" "$TMP/host.out" | grep '^[0-9]' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

tps() {
  echo "INSERT INTO $S.$1 (v) VALUES (1);" >"$TMP/$1.sql"
  pgbench -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$TMP/$1.sql" "$URL" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

say "durable latency, idle: 200 commits 20 ms apart"
psql -q "$URL" -c "DO \$\$ BEGIN FOR i IN 1..200 LOOP INSERT INTO $S.dur (v) VALUES (i); COMMIT;
  PERFORM pg_sleep(0.02); END LOOP; END \$\$" >/dev/null
wait_lines 200
IDLE=$(p50 1 200)

# median of the numbers on stdin
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# rounds TABLE: BENCH_DUR_ROUNDS pairs "unwatched durable" tps into $TMP/rounds.TABLE
rounds() {
  k=0
  : >"$TMP/rounds.$1"
  while [ $k -lt "$ROUNDS" ]; do
    k=$((k + 1))
    echo "$(tps plain) $(tps "$1")" >>"$TMP/rounds.$1"
  done
}
say "pgbench, $CLIENTS clients, $SECS s each: live once; unwatched and durable (C trigger) x $ROUNDS"
LIVE=$(tps live)
rounds dur
PLAIN=$(cut -d' ' -f1 "$TMP/rounds.dur" | median)
DUR=$(cut -d' ' -f2 "$TMP/rounds.dur" | median)
R_DUR=$(awk '{ print $2 / $1 }' "$TMP/rounds.dur" | median)
DUR_N=$(psql -Atq "$URL" -c "SELECT count(*) FROM $S.dur")
wait_lines "$DUR_N"
LOADED=$(p50 201 "$DUR_N")


# A million events through the journal, read as they come; then what is left of the journal
# once the reader caught up and rotation went round (a switch every 20 s, maintenance every 5 s).
say "a million events: 20 commits of 50,000 rows, then the journal's size until it is truncated"
BEFORE=$(lines)
psql -q "$URL" -c "DO \$\$ BEGIN FOR i IN 1..20 LOOP INSERT INTO $S.dur (v) SELECT g FROM generate_series(1, 50000) g;
  COMMIT; END LOOP; END \$\$" >/dev/null
i=0
while [ "$(lines)" -lt $((BEFORE + 1000000)) ]; do
  i=$((i + 1)); [ $i -lt 1200 ] || die "the host handled $(($(lines) - BEFORE)) of a million events"; sleep 0.5
done
journal() { psql -Atq "$URL" -c "SELECT n.count, pg_size_pretty(sum(pg_total_relation_size(c.oid)))
  FROM pg_class c, (SELECT count(*) FROM sqlnotify.journal) n(count) WHERE c.relnamespace = 'sqlnotify'::regnamespace
  AND c.relname ~ '^journal_[012]\$' GROUP BY n.count" | sed 's/|/ rows, /'; }
PEAK=$(journal)
i=0
while [ "$(journal | cut -d' ' -f1)" != 0 ] && [ $i -lt 90 ]; do i=$((i + 1)); sleep 1; done
MILLION_AFTER=$(journal)
MILLION_WAIT=$i
MILLION_DEAD=$(psql -Atq "$URL" -c "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables
  WHERE schemaname = 'sqlnotify' AND relname ~ '^journal_'")
# the writers' cost alone: the same durable table with the host (the reader) stopped
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
BEFORE=$(psql -Atq "$URL" -c "SELECT count(*) FROM $S.dur")
DUR_OFF=$(tps dur)
# catch-up: what was written while the reader was stopped, read when it starts again
BACKLOG=$(($(psql -Atq "$URL" -c "SELECT count(*) FROM $S.dur") - BEFORE))
say "catch-up: $BACKLOG events written while the reader was stopped"
T0=$(date +%s.%N)
start_host
wait_lines "$BACKLOG"
CATCHUP=$(echo "$(date +%s.%N) $T0 $BACKLOG" | awk '{printf "%.1f s, %.0f events/s", $1 - $2, $3 / ($1 - $2)}')
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
JROWS=$(psql -Atq "$URL" -c "SELECT count(*) FROM sqlnotify.journal")
DEAD=$(psql -Atq "$URL" -c "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE schemaname = 'sqlnotify'")

# the same durable watch on durpl, its trigger in plpgsql (what a server without the extension
# gets), with its reader alone: a second consumer would also read the first one's rows
cat >"$TMP/watch_pl.lua" <<EOF
local sqlnotify = require("sqlnotify")
local dur = assert(sqlnotify.notifier{ url = arg[1], consumer = "bench_durable_pl" })
dur:watch("$S.durpl", "insert", { extra_columns = { "ts" } })
dur:subscribe("$S.durpl", "insert", function() end)
assert(dur:start())
print("ready")
io.stdout:flush()
EOF
SQLNOTIFY_PG_CAPTURE=plpgsql "$HOST" -l warn "$TMP/watch_pl.lua" "$URL" >"$TMP/pl.out" 2>"$TMP/pl.err" &
PLPID=$!
i=0
while ! grep -q '^ready' "$TMP/pl.out"; do
  i=$((i + 1)); [ $i -lt 200 ] || die "the plpgsql host did not start: $(cat "$TMP/pl.err")"; sleep 0.05
done
KIND_PL=$(psql -Atq "$URL" -c "SELECT l.lanname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
  JOIN pg_language l ON l.oid = p.prolang WHERE t.tgrelid = '$S.durpl'::regclass")
[ "$KIND_PL" = plpgsql ] || die "the trigger on $S.durpl is not plpgsql ($KIND_PL)"
say "pgbench: unwatched and durable (plpgsql trigger, its own reader alone) x $ROUNDS"
rounds durpl
R_DURPL=$(awk '{ print $2 / $1 }' "$TMP/rounds.durpl" | median)
DURPL=$(cut -d' ' -f2 "$TMP/rounds.durpl" | median)
kill "$PLPID"; wait "$PLPID" 2>/dev/null || true; PLPID=""
psql -q "$URL" -c "DELETE FROM sqlnotify.consumers WHERE name = 'bench_durable_pl'" >/dev/null

printf '\nPostgreSQL writers (pgbench -c %s, one-row inserts, %s s a run; median of %s rounds), %s, load %s\n' \
  "$CLIENTS" "$SECS" "$ROUNDS" "$(date -u +%Y-%m-%d)" "$(cut -d' ' -f1-3 /proc/loadavg)"
ratio() { echo "$1 $2" | awk '{printf "%.2f", $1/$2}'; }
printf '  %-36s %10.0f tps\n' "unwatched" "$PLAIN"
printf '  %-36s %10.0f tps  %5s x\n' "live (NOTIFY per row)" "$LIVE" "$(ratio "$LIVE" "$PLAIN")"
printf '  %-36s %10.0f tps  %5.2f x  (target >= 0.80; trigger language %s)\n' "durable, C trigger" "$DUR" "$R_DUR" "$KIND"
printf '  %-36s %10.0f tps  %5.2f x\n' "durable, plpgsql trigger" "$DURPL" "$R_DURPL"
printf '  %-36s %10.0f tps  %5s x  (one run)\n' "durable (C), reader not running" "$DUR_OFF" "$(ratio "$DUR_OFF" "$PLAIN")"
printf '  rounds (unwatched, durable tps): C %s plpgsql %s\n' "$(tr '\n' ';' <"$TMP/rounds.dur")" \
  "$(tr '\n' ';' <"$TMP/rounds.durpl")"
printf '  durable commit-to-handler p50: idle %s ms (target <= 2), under that load %s ms (target <= 20)\n' \
  "$IDLE" "$LOADED"
printf '  journal rows now %s, dead tuples in schema sqlnotify %s\n' "$JROWS" "$DEAD"
printf '  catch-up: %s events written while the reader was stopped, read in %s (host start included)\n' \
  "$BACKLOG" "$CATCHUP"
printf '  a million events: journal %s when the reader caught up; %s %s s later; dead tuples in the journal %s\n' \
  "$PEAK" "$MILLION_AFTER" "$MILLION_WAIT" "$MILLION_DEAD"
