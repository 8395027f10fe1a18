#!/bin/sh
# bench/live.sh: the live example (scripts/examples/live.lua) on SQLite with 1 and with 200
# Server-Sent Events clients connected, while another process commits rows ~2 ms apart.
# Prints, for each, the commit-to-handler latency inside the host (does the loop keep up
# while it also writes to 200 sockets?) and the commit-to-client latency over every client.
#
#   sh bench/live.sh [BUILD]       (make bench runs it after bench/run.sh)
#
# Environment: BENCH_LIVE_N commits per run (default 1000), BENCH_LIVE_CLIENTS (default 200).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=$BUILD/sqlnotify-lua
N=${BENCH_LIVE_N:-1000}
CLIENTS=${BENCH_LIVE_CLIENTS:-200}

say() { echo "bench-live: $*" >&2; }
die() { echo "bench-live: $*" >&2; exit 1; }

TMP=$(mktemp -d)
PID=""
cleanup() {
  [ -z "$PID" ] || kill "$PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$HOST" ] || die "$HOST not built (run make)"
cc -O2 -Wall -Wextra -Werror -o "$TMP/sse_client" bench/sse_client.c || die "cannot build bench/sse_client.c"
cc -O2 -Wall -Wextra -Werror -o "$TMP/sqlite_writer" bench/sqlite_writer.c -lsqlite3 || die "cannot build bench/sqlite_writer.c"

DB=$TMP/live.db
"$TMP/sqlite_writer" "$DB" init || die "cannot create $DB"
"$HOST" -l warn scripts/examples/live.lua "sqlite:///$DB" lat 0 >"$TMP/host.out" 2>"$TMP/host.err" &
PID=$!
i=0
while ! grep -q 'http://127.0.0.1:[0-9]*/' "$TMP/host.out"; do
  i=$((i + 1)); [ $i -lt 200 ] || die "live.lua did not start: $(cat "$TMP/host.err")"; sleep 0.05
done
PORT=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$TMP/host.out")

# run CLIENTS: the clients connect, the writer makes N commits (and an end-of-run row).
run() {
  out=$TMP/clients$1.out
  "$TMP/sse_client" "$PORT" "$1" $((N + 1)) --stamp t0 --timeout 120 >"$out" 2>&1 &
  cpid=$!
  i=0
  while ! grep -q '^ready' "$out"; do
    i=$((i + 1)); [ $i -lt 600 ] || die "clients not ready: $(cat "$out")"; sleep 0.05
  done
  "$TMP/sqlite_writer" "$DB" lat "$N" 2000
  wait "$cpid" || die "clients did not get every event: $(tail -2 "$out")"
}

say "$N commits ~2 ms apart with 1, then $CLIENTS clients"
run 1
run "$CLIENTS"

fig() { sed -n "s/^$2 .* $3=\([0-9]*\).*/\1/p" "$TMP/clients$1.out"; }
echo
echo "live example (SQLite, $N commits ~2 ms apart; latencies in us)"
printf '| %-44s | %9s | %11s |\n' "metric" "1 client" "$CLIENTS clients"
echo "|----------------------------------------------|-----------|-------------|"
for m in "handler_us p50" "handler_us p99" "client_us p50" "client_us p99"; do
  set -- $m
  case $1 in handler_us) what="commit-to-handler $2 (in the host)" ;; *) what="commit-to-client $2 (every client)" ;; esac
  printf '| %-44s | %9s | %11s |\n' "$what" "$(fig 1 "$1" "$2")" "$(fig "$CLIENTS" "$1" "$2")"
done
