#!/bin/sh
# bench/clients.sh [BUILD]: the clients of SPEC §8.2 (issue 31) through the real binary, each
# against a bare C client of the same library on the same machine and the same server.
# A durable relay (bench/clients.lua: a PostgreSQL consumer, concurrency = 64, ev:json() of
# each inserted row) to
#   NATS JetStream  nc:publish(subject, body, { msg_id })  vs bench/nats_bare.c (js_PublishAsync
#                   + js_PublishAsyncComplete, a Nats-Msg-Id on each)
#   Redis           r:call("SET", key, body)              vs bench/redis_bare.c (pipelined hiredis)
#   HTTP            sqlnotify.http.request POST           vs bench/http_bare.c (libcurl multi)
# and, for where the time goes, the same relay with no call (none: ev:json() and nothing else),
# on private servers of its own: redis-server on 16480, nats-server -js on 14330 (its store in
# a temporary directory), bench/http_sink.c (a C HTTP/1.1 keep-alive responder) on 18190.
# Each round, per client: BENCH_CLI_N rows are inserted while the relay is stopped, the relay
# starts and catches up (events/s: from its first handler to the N-th call that returned, i.e.
# was acknowledged by the server); then single-row commits, each stamped with
# clock_timestamp(), give commit-to-ack (now - stamp once the call returned): BENCH_CLI_LAT_N
# of them 2 ms apart ("busy": writers then skip most wake-ups, the reader's 10 ms gate and poll
# set the figure) and BENCH_CLI_IDLE_N 20 ms apart ("idle": each commit wakes the reader). The
# bare client sends N messages of the size the relay sent, 64 in flight (as the relay's
# concurrency) and with no limit (NATS: the library's default; Redis: all written before a
# reply is read), and BENCH_CLI_LAT_N one at a time (its round trip, for reference). Relay
# and bare alternate which goes first. Ratios: the median of the rounds' own.
# Environment: SQLNOTIFY_BENCH_PG_URL (default postgresql://root@127.0.0.1/test; makes and drops
# the schema sqlnotify_bench_cli and the consumers bench_cli_*), BENCH_CLI_N (20000),
# BENCH_CLI_ROUNDS (3), BENCH_CLI_LAT_N (300), BENCH_CLI_IDLE_N (100). About a minute.
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
N=${BENCH_CLI_N:-20000}
ROUNDS=${BENCH_CLI_ROUNDS:-3}
LAT_N=${BENCH_CLI_LAT_N:-300}
IDLE_N=${BENCH_CLI_IDLE_N:-100}
REDIS_PORT=16480 NATS_PORT=14330 HTTP_PORT=18190
S=sqlnotify_bench_cli
T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

say() { echo "bench-clients: $*" >&2; }
die() { echo "bench-clients: $*" >&2; exit 1; }

TMP=$(mktemp -d)
SERVERS="" HOSTPID=""
stop_host() {
  if [ -n "$HOSTPID" ]; then kill "$HOSTPID" 2>/dev/null || true; wait "$HOSTPID" 2>/dev/null || true; fi
  HOSTPID=""
}
cleanup() {
  stop_host
  for p in $SERVERS; do kill "$p" 2>/dev/null || true; done
  for p in $SERVERS; do wait "$p" 2>/dev/null || true; done
  psql -q "$URL" -c "DROP SCHEMA IF EXISTS $S CASCADE; DELETE FROM sqlnotify.consumers WHERE name LIKE 'bench_cli_%'" \
    >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$HOST" ] || die "$HOST not built (run make)"

# ----- the bare clients and the servers: a client whose library or server is missing is skipped -----
CFLAGS="-O2 -Wall -Wextra -Werror -D_GNU_SOURCE"
KINDS="none"
cc $CFLAGS -o "$TMP/http_sink" bench/http_sink.c || die "cannot build bench/http_sink.c"
if pkg-config --exists libnats && command -v nats-server >/dev/null; then
  cc $CFLAGS $(pkg-config --cflags libnats) -o "$TMP/nats_bare" bench/nats_bare.c $(pkg-config --libs libnats) \
    || die "cannot build bench/nats_bare.c"
  KINDS="$KINDS nats"
else say "no libnats (libnats-dev) or nats-server: the NATS rows are skipped"; fi
if pkg-config --exists hiredis && command -v redis-server >/dev/null; then
  cc $CFLAGS $(pkg-config --cflags hiredis) -o "$TMP/redis_bare" bench/redis_bare.c $(pkg-config --libs hiredis) \
    || die "cannot build bench/redis_bare.c"
  KINDS="$KINDS redis"
else say "no hiredis (libhiredis-dev) or redis-server: the Redis rows are skipped"; fi
if pkg-config --exists libcurl; then
  cc $CFLAGS $(pkg-config --cflags libcurl) -o "$TMP/http_bare" bench/http_bare.c $(pkg-config --libs libcurl) \
    || die "cannot build bench/http_bare.c"
  KINDS="$KINDS http"
else say "no libcurl (libcurl4-openssl-dev): the HTTP rows are skipped"; fi
if [ -n "${BENCH_CLI_ONLY:-}" ]; then # e.g. BENCH_CLI_ONLY="none http": those rows only
  only=""; for kind in $KINDS; do case " $BENCH_CLI_ONLY " in *" $kind "*) only="$only $kind" ;; esac; done
  KINDS=${only# }
fi
[ -n "$KINDS" ] || die "no client library to measure"

port_free() { ! (ss -ltnH "sport = :$1" 2>/dev/null | grep -q .); }
# until CMD... succeeds, 10 s at most
until_ok() {
  k=0
  until "$@" >/dev/null 2>&1; do k=$((k + 1)); [ $k -lt 200 ] || return 1; sleep 0.05; done
}
for kind in $KINDS; do
  case $kind in
    nats)
      port_free $NATS_PORT || die "port $NATS_PORT is taken: not starting a private nats-server there"
      mkdir "$TMP/js"
      nats-server -a 127.0.0.1 -p $NATS_PORT -js -sd "$TMP/js" >"$TMP/nats-server.log" 2>&1 &
      SERVERS="$SERVERS $!"
      until_ok "$TMP/nats_bare" nats://127.0.0.1:$NATS_PORT setup BENCH bench \
        || die "nats-server did not start: $(tail -3 "$TMP/nats-server.log")" ;;
    redis)
      port_free $REDIS_PORT || die "port $REDIS_PORT is taken: not starting a private redis-server there"
      redis-server --bind 127.0.0.1 --port $REDIS_PORT --save '' --appendonly no --dir "$TMP" \
        >"$TMP/redis-server.log" 2>&1 &
      SERVERS="$SERVERS $!"
      until_ok redis-cli -p $REDIS_PORT ping || die "redis-server did not start: $(tail -3 "$TMP/redis-server.log")" ;;
    http)
      port_free $HTTP_PORT || die "port $HTTP_PORT is taken: not starting the HTTP sink there"
      "$TMP/http_sink" $HTTP_PORT >"$TMP/http_sink.out" 2>&1 &
      SERVERS="$SERVERS $!"
      until_ok grep -q '^ready' "$TMP/http_sink.out" || die "bench/http_sink did not start" ;;
  esac
done

# ----- PostgreSQL -----
psql -q "$URL" -c "DELETE FROM sqlnotify.consumers WHERE name LIKE 'bench_cli_%'" >/dev/null 2>&1 || true
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<SQL || die "cannot create schema $S at $URL"
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS $S CASCADE;
CREATE SCHEMA $S;
CREATE TABLE $S.nats (id bigserial PRIMARY KEY, note text NOT NULL, t0 double precision);
CREATE TABLE $S.redis (LIKE $S.nats INCLUDING ALL);
CREATE TABLE $S.http (LIKE $S.nats INCLUDING ALL);
CREATE TABLE $S.none (LIKE $S.nats INCLUDING ALL);
SQL
sql() { psql -q -v ON_ERROR_STOP=1 "$URL" -c "SET synchronous_commit = off" -c "$1" >/dev/null; }
# a note of 100 bytes: ev:json() is then about 250 bytes, an outbox row's size
NOTE="repeat('n', 100)"

target() {
  case $1 in
    nats) echo "nats://127.0.0.1:$NATS_PORT|bench.relay" ;;
    redis) echo "redis://127.0.0.1:$REDIS_PORT/0" ;;
    http) echo "http://127.0.0.1:$HTTP_PORT/hook" ;;
    none) echo - ;;
  esac
}
# start_host KIND: the relay, until its "ready"
start_host() {
  touch "$TMP/$1.out"
  "$HOST" -l warn bench/clients.lua "$URL" "$S.$1" "bench_cli_$1" "$1" "$(target "$1")" "$N" \
    >>"$TMP/$1.out" 2>>"$TMP/$1.err" &
  HOSTPID=$!
  k=0
  until [ "$(grep -c '^ready' "$TMP/$1.out" || true)" -gt "${2:-0}" ]; do
    k=$((k + 1)); [ $k -lt 400 ] || die "the $1 relay did not start: $(tail -3 "$TMP/$1.err")"; sleep 0.05
  done
}
# wait_for KIND PATTERN COUNT SECONDS
wait_for() {
  k=0
  while [ "$(grep -c "$2" "$TMP/$1.out" || true)" -lt "$3" ]; do
    k=$((k + 1))
    [ $k -lt $(($4 * 50)) ] || die "the $1 relay: no '$2' x$3 after $4 s: $(tail -3 "$TMP/$1.err")"
    sleep 0.02
  done
}
size() { sed -n 's/^run .* size=\([0-9]*\).*/\1/p' "$TMP/$1.out" | tail -1; }
# bare KIND ROUND: the bare client's runs of one round
bare() {
  sz=$(size "$1")
  case $1 in
    nats)
      u=nats://127.0.0.1:$NATS_PORT
      "$TMP/nats_bare" $u pub bench.bare "$N" "$sz" 64 "b64-$2" >>"$TMP/nats.b64"
      "$TMP/nats_bare" $u pub bench.bare "$N" "$sz" 0 "bmax-$2" >>"$TMP/nats.bmax"
      "$TMP/nats_bare" $u lat bench.bare "$LAT_N" "$sz" "blat-$2" >>"$TMP/nats.blat" ;;
    redis)
      redis-cli -p $REDIS_PORT flushall >/dev/null
      "$TMP/redis_bare" $REDIS_PORT pub "$N" "$sz" 64 "b64" >>"$TMP/redis.b64"
      "$TMP/redis_bare" $REDIS_PORT pub "$N" "$sz" 0 "bmax" >>"$TMP/redis.bmax"
      "$TMP/redis_bare" $REDIS_PORT lat "$LAT_N" "$sz" "blat" >>"$TMP/redis.blat" ;;
    http)
      u=http://127.0.0.1:$HTTP_PORT/hook
      "$TMP/http_bare" $u pub "$N" "$sz" 64 >>"$TMP/http.b64"
      "$TMP/http_bare" $u lat "$LAT_N" "$sz" >>"$TMP/http.blat" ;;
    none) ;;
  esac
}
# relay KIND ROUND: the relay's catch-up of N rows, then LAT_N single-row commits
relay() {
  sql "INSERT INTO $S.$1 (note) SELECT $NOTE FROM generate_series(1, $N)"
  start_host "$1" "$2"
  wait_for "$1" '^run ' "$2" 120
  psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<EOF
SET synchronous_commit = off;
DO \$\$ BEGIN
  FOR i IN 1..$LAT_N LOOP
    INSERT INTO $S.$1 (note, t0) VALUES ('busy', extract(epoch FROM clock_timestamp()));
    COMMIT;
    PERFORM pg_sleep(0.002);
  END LOOP;
  PERFORM pg_sleep(0.05);
  FOR i IN 1..$IDLE_N LOOP
    INSERT INTO $S.$1 (note, t0) VALUES ('idle', extract(epoch FROM clock_timestamp()));
    COMMIT;
    PERFORM pg_sleep(0.02);
  END LOOP;
END \$\$;
INSERT INTO $S.$1 (note, t0) VALUES ('end', 0);
EOF
  wait_for "$1" '^lat ' "$2" 60
  stop_host
}

for kind in $KINDS; do
  say "$kind: the consumer bench_cli_$kind, then $ROUNDS rounds of $N rows caught up, $LAT_N commits, the bare client"
  start_host "$kind" 0 # makes the consumer and its trigger: what is inserted from now on is its
  stop_host
  r=0
  while [ $r -lt "$ROUNDS" ]; do
    r=$((r + 1))
    if [ $((r % 2)) = 1 ]; then
      relay "$kind" $r
      bare "$kind" $r
    else
      bare "$kind" $r
      relay "$kind" $r
    fi
  done
done

# ----- the table -----
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p" "$1"; }
# ratio A B FIELD: the median over rounds of A's FIELD / B's
ratio() { col "$1" "$3" >"$TMP/ra"; col "$2" "$3" >"$TMP/rb"; paste "$TMP/ra" "$TMP/rb" | awk '$2 > 0 { print $1 / $2 }' | median; }
range() { col "$1" "$3" >"$TMP/ra"; col "$2" "$3" >"$TMP/rb"; paste "$TMP/ra" "$TMP/rb" | awk '$2 > 0 { printf "%s%.2f", (NR > 1 ? ", " : ""), $1 / $2 }'; }
med() { col "$1" "$2" | median; }
yes() { awk -v r="$1" -v t="$2" 'BEGIN { print r >= t ? "yes" : "NO" }'; }
echo
echo "Clients (a PostgreSQL durable consumer relaying $N rows caught up, concurrency 64; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPU(s), load at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); medians of $ROUNDS rounds, ratios the median of the rounds' own):"
echo "| client | relay events/s | bare C, 64 in flight | relay / bare 64 | bare C, no limit | relay / bare no limit | target | met? | commit-to-ack p50 / p99, busy (500 commits/s) | idle (50/s) | bare one-at-a-time round trip p50 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for kind in $KINDS; do
  R=$TMP/$kind.out
  grep '^run ' "$R" >"$TMP/$kind.run"
  grep '^lat ' "$R" >"$TMP/$kind.lat"
  lat=$(printf '%.0f / %.0f us | %.0f / %.0f us' "$(med "$TMP/$kind.lat" busy_p50_us)" "$(med "$TMP/$kind.lat" busy_p99_us)" \
    "$(med "$TMP/$kind.lat" idle_p50_us)" "$(med "$TMP/$kind.lat" idle_p99_us)")
  if [ $kind = none ]; then
    printf '| no call (the relay alone: ev:json(), counted), %s B | %.0f | - | - | - | - | - | - | %s | - |\n' \
      "$(size none)" "$(med "$TMP/none.run" rate)" "$lat"
    continue
  fi
  r64=$(ratio "$TMP/$kind.run" "$TMP/$kind.b64" rate)
  case $kind in
    nats) name="NATS JetStream: nc:publish, msg_id / libnats js_PublishAsync ($(pkg-config --modversion libnats), nats-server $(nats-server --version | sed 's/.*v//'))" ;;
    redis) name="Redis: r:call SET / hiredis ($(pkg-config --modversion hiredis), redis-server $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/'))" ;;
    http) name="HTTP: http.request POST / libcurl multi ($(pkg-config --modversion libcurl)), bench/http_sink" ;;
  esac
  if [ -s "$TMP/$kind.bmax" ]; then
    bmax=$(printf '%.0f' "$(med "$TMP/$kind.bmax" rate)")
    rmax=$(printf '%.2fx' "$(ratio "$TMP/$kind.run" "$TMP/$kind.bmax" rate)")
  else bmax=- rmax=-; fi
  printf '| %s, %s B | %.0f | %.0f | %.2fx (rounds %s) | %s | %s | >= 0.70x of bare 64 | %s | %s | %.0f us |\n' \
    "$name" "$(size "$kind")" "$(med "$TMP/$kind.run" rate)" "$(med "$TMP/$kind.b64" rate)" "$r64" "$(range "$TMP/$kind.run" "$TMP/$kind.b64" rate)" \
    "$bmax" "$rmax" "$(yes "$r64" 0.7)" "$lat" "$(med "$TMP/$kind.blat" p50_us)"
done
printf 'messages per run (relay / bare): '
for kind in $KINDS; do
  [ $kind != none ] || continue
  printf '%s %s/ %s(errors %s, retried in the relay: %s); ' "$kind" "$(col "$TMP/$kind.run" n | sort -u | tr '\n' ' ')" \
    "$(cat "$TMP/$kind.b64" "$TMP/$kind.bmax" 2>/dev/null | sed -n 's/^run n=\([0-9]*\).*/\1/p' | sort -u | tr '\n' ' ')" \
    "$(cat "$TMP/$kind.b64" "$TMP/$kind.bmax" 2>/dev/null | sed -n 's/.* errors=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')" \
    "$(col "$TMP/$kind.run" errors | tail -1)"
done
echo "relay from its start to the last ack (wall, median): $(for kind in $KINDS; do printf '%s %.2f s; ' "$kind" "$(med "$TMP/$kind.run" wall)"; done)took $(($(date +%s) - T0)) s"
