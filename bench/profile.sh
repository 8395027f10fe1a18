#!/bin/sh
# Where the host's time goes while it handles one PostgreSQL commit of many rows
# (the throughput case of `make bench`): runs sqlnotify-lua on bench/watch.lua under a
# profiler and prints the top functions, self and inclusive.
#
#   sh bench/profile.sh [BUILD]
#
# Environment:
#   SQLNOTIFY_BENCH_PG_URL  as for bench/run.sh (default postgresql://root@127.0.0.1/test)
#   BENCH_PROFILER          perf (default; cpu-clock sampling, DWARF call graphs) or callgrind
#   BENCH_PROFILE_N         rows in the commit (default 200000; 20000 under callgrind)
#   BENCH_PROFILE_HOST      another sqlnotify-lua to profile. Debian's liblua5.4 and
#                           lua-cjson are stripped, so their internals show as bare
#                           addresses: link the host objects against a Lua built with -g
#                           (and put a cjson.so built with -g first in LUA_CPATH) to see
#                           luaV_execute, luaH_resize, json_decode and friends by name.
#   BENCH_KEEP              a directory: keep the profile data there
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
HOST=${BENCH_PROFILE_HOST:-$BUILD/sqlnotify-lua}
URL=${SQLNOTIFY_BENCH_PG_URL:-postgresql://root@127.0.0.1/test}
PROFILER=${BENCH_PROFILER:-perf}
if [ "$PROFILER" = callgrind ]; then N=${BENCH_PROFILE_N:-20000}; else N=${BENCH_PROFILE_N:-200000}; fi

die() { echo "profile: $*" >&2; exit 1; }
[ -x "$HOST" ] || die "$HOST not built (run make)"
command -v "$( [ "$PROFILER" = callgrind ] && echo valgrind || echo perf)" >/dev/null ||
  die "$PROFILER is not installed (apt-get install $( [ "$PROFILER" = callgrind ] && echo valgrind || echo linux-perf))"

TMP=$(mktemp -d)
cleanup() {
  [ -n "${PROF_PID:-}" ] && kill "$PROF_PID" 2>/dev/null || true
  psql -q "$URL" -c 'DROP SCHEMA IF EXISTS sqlnotify_bench CASCADE' >/dev/null 2>&1 || true
  if [ -n "${BENCH_KEEP:-}" ]; then mkdir -p "$BENCH_KEEP" && cp "$TMP"/* "$BENCH_KEEP"/ 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {
  i=0
  while :; do
    c=$(grep -c "$2" "$1" 2>/dev/null) || true
    [ "${c:-0}" -lt 1 ] || break
    i=$((i + 1))
    [ $i -le $(($3 * 10)) ] || { tail -5 "$1" "$TMP/host.err" >&2 2>/dev/null; die "timed out waiting for '$2'"; }
    sleep 0.1
  done
}

psql -q -v ON_ERROR_STOP=1 "$URL" -f bench/pg_schema.sql >/dev/null || die "cannot reach PostgreSQL at $URL"
if [ "$PROFILER" = callgrind ]; then
  valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" \
    "$HOST" -l warn bench/watch.lua "$URL" >"$TMP/host.out" 2>"$TMP/host.err" &
else
  perf record -q -e cpu-clock -F 1999 --call-graph dwarf,8192 -o "$TMP/perf.data" -- \
    "$HOST" -l warn bench/watch.lua "$URL" >"$TMP/host.out" 2>"$TMP/host.err" &
fi
PROF_PID=$!
wait_for "$TMP/host.out" '^ready' 120
psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null <<EOF
SET synchronous_commit = off;
INSERT INTO sqlnotify_bench.bulk (note) SELECT 'row ' || g FROM generate_series(1, $N) g;
INSERT INTO sqlnotify_bench.bulk (t0) VALUES (0);
EOF
wait_for "$TMP/host.out" '^run sqlnotify_bench_bulk' 600
psql -q "$URL" -c 'INSERT INTO sqlnotify_bench.lat (t0) VALUES (-1)' >/dev/null
wait "$PROF_PID" || true
PROF_PID=
grep '^run' "$TMP/host.out" | sed 's/^/profile: /'
echo "profile: $N events; the run starts the host, so start-up is in the profile (a few % at most)"
if [ "$PROFILER" = callgrind ]; then
  echo; echo "== self (instructions) =="
  callgrind_annotate "$TMP/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,32p'
  echo; echo "== inclusive (instructions) =="
  callgrind_annotate --inclusive=yes "$TMP/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,52p'
else
  echo; echo "== self (samples) =="
  perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep '%' | head -30
  echo; echo "== inclusive (samples) =="
  perf report -i "$TMP/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep '%' | head -50
fi
