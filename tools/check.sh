#!/bin/sh
# make check: bring up what the specs need, build, run every spec, and end with
# "N passed, N failed, N skipped". Installs only through the machine's package manager, and
# says so. Every spec must run: a skipped spec fails the run (SQLNOTIFY_ALLOW_SKIP=1 to
# allow it while developing).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SANITIZE=${SANITIZE:-}
# The specs get a database of their own, made afresh each run, so they never touch the
# shared `test` database; SQLNOTIFY_TEST_PG_URL points them anywhere else.
OWN_DB=sqlnotify_check
PG_URL=${SQLNOTIFY_TEST_PG_URL:-postgresql://root@127.0.0.1/$OWN_DB}

say() { echo "check: $*"; }

# How many workers run the spec files (below, "specs"): checked before anything is touched.
JOBS=${SQLNOTIFY_CHECK_JOBS:-2}
case "$JOBS" in ''|*[!0-9]*|0) echo "check: SQLNOTIFY_CHECK_JOBS must be a number from 1, got $JOBS" >&2
  echo "0 passed, 1 failed"; exit 1 ;; esac
if [ -n "${SQLNOTIFY_TEST_PG_URL:-}${SQLNOTIFY_TEST_MYSQL_URL:-}" ]; then
  if [ -n "${SQLNOTIFY_CHECK_JOBS:-}" ] && [ "$JOBS" -gt 1 ]; then
    echo "check: SQLNOTIFY_CHECK_JOBS=$JOBS needs databases of check's own; unset SQLNOTIFY_TEST_PG_URL" \
      "and SQLNOTIFY_TEST_MYSQL_URL, or run one worker" >&2
    echo "0 passed, 1 failed"; exit 1
  fi
  JOBS=1
fi

# ----- packages -----
sh tools/deps.sh check || { echo "0 passed, 1 failed"; exit 1; }

# ----- PostgreSQL -----
if [ -z "${SQLNOTIFY_TEST_PG_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing the PostgreSQL server (postgresql)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/tmp/sqlnotify-apt.log 2>&1 \
      || { cat /tmp/sqlnotify-apt.log >&2; echo "0 passed, 1 failed"; exit 1; }
  fi
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  say "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster "$ver" main start
  i=0; while ! pg_isready -q -h 127.0.0.1 -p 5432 && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
fi
ADMIN_URL=postgresql://$(id -un)@127.0.0.1/postgres
if [ -z "${SQLNOTIFY_TEST_PG_URL:-}" ] && ! psql "$ADMIN_URL" -Atc 'select 1' >/dev/null 2>&1; then
  # A fresh cluster: let this user in as a superuser (trust on loopback is the Debian default).
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    su postgres -c "psql -Atc \"select 1 from pg_roles where rolname='$(id -un)'\"" | grep -q 1 \
      || su postgres -c "createuser -s $(id -un)"
  fi
fi
# Each worker (below, "specs") has a PostgreSQL and a MariaDB database of its own, made
# afresh; where SQLNOTIFY_TEST_PG_URL or SQLNOTIFY_TEST_MYSQL_URL names one, there is one
# worker, and that database is the one its URL names.
MYSQL_URL=${SQLNOTIFY_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/$OWN_DB}
# of_worker URL K: worker K's database on URL's server (the first worker's is URL's own)
of_worker() { if [ "$2" = 1 ]; then echo "$1"; else echo "${1%/*}/${OWN_DB}_$2"; fi; }
# own_pg K: worker K's PostgreSQL database made afresh, with the triggers in C (pgext/)
# created there at their current version
own_pg() {
  db=$OWN_DB; [ "$1" = 1 ] || db=${OWN_DB}_$1
  psql "$ADMIN_URL" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null 2>&1 \
    || { echo "check: cannot create the database $db on 127.0.0.1:5432" >&2; return 1; }
  sh tools/pgext.sh "$(of_worker "$PG_URL" "$1")"
}
k=1
while [ -z "${SQLNOTIFY_TEST_PG_URL:-}" ] && [ $k -le "$JOBS" ]; do
  own_pg $k || { echo "0 passed, 1 failed"; exit 1; }
  k=$((k + 1))
done
if ! psql "$PG_URL" -Atc 'select 1' >/dev/null 2>&1; then
  echo "check: cannot reach PostgreSQL at $PG_URL" >&2
  echo "0 passed, 1 failed"; exit 1
fi
sh tools/mariadb.sh || { echo "0 passed, 1 failed"; exit 1; }  # MariaDB for the MySQL specs: the URL's, or worker 1's
k=2
while [ $k -le "$JOBS" ]; do
  sh tools/mariadb.sh "$(of_worker "$MYSQL_URL" $k)" || { echo "0 passed, 1 failed"; exit 1; }
  k=$((k + 1))
done

# ----- build -----
make --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" SANITIZE="$SANITIZE" BUILD="$BUILD" all || { echo "0 passed, 1 failed"; exit 1; }

# ----- specs -----
# The spec files run in SQLNOTIFY_CHECK_JOBS workers side by side (2 by default: most of a
# spec's time is spent waiting on servers and timers, not on the CPU), each on the databases
# made above, so that a spec sees only what its own worker made; everything else a spec makes
# (schemas, roles, clusters, ports) is named per spec file already. A worker takes the next
# file no worker has taken, the largest first. Where a URL names a database, one worker runs:
# the others' databases would be made on a server that is not ours.
export SQLNOTIFY_BUILD="$BUILD" SANITIZE
preload=""
if [ -n "$SANITIZE" ]; then
  # The module is loaded by lua5.4, which is not built with the sanitizers: preload their
  # runtimes into busted only (spec/helper.lua drops them for every command it runs).
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  # lua5.4 and busted are not ours: leaks are checked on the host binary, in the specs that run it.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi

# The arguments: spec files and folders (spec/ when none), and busted's options for each file.
work=$(mktemp -d /tmp/sqlnotify-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
: >"$work/files"
n=$#
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  if [ -d "$a" ]; then find "$a" -name '*_spec.lua' >>"$work/files"
  elif [ -f "$a" ]; then echo "$a" >>"$work/files"
  else set -- "$@" "$a"; fi
done
[ -s "$work/files" ] || find spec -name '*_spec.lua' >>"$work/files"
# shellcheck disable=SC2046
ls -S $(cat "$work/files") >"$work/order"

# worker K [busted options]: run the files nobody took yet, each one's TAP printed whole when
# it ends; a file busted did not finish (no plan line) counts as one failure.
worker() {
  wk=$1; shift
  pg=$(of_worker "$PG_URL" "$wk") my=$(of_worker "$MYSQL_URL" "$wk")
  while read -r f; do
    id=$(echo "$f" | tr / _)
    mkdir "$work/taken.$id" 2>/dev/null || continue
    out="$work/out.$id"
    t0=$(date +%s)
    SQLNOTIFY_TEST_PG_URL=$pg SQLNOTIFY_TEST_MYSQL_URL=$my LD_PRELOAD="$preload" \
      busted --lua=lua5.4 -o TAP "$@" "$f" >"$out" 2>&1
    grep -q '^1\.\.' "$out" || echo "not ok - busted did not finish $f" >>"$out"
    ( flock 9; echo "# $f ($(($(date +%s) - t0)) s, worker $wk)"; cat "$out" ) 9>"$work/print"
  done <"$work/order"
}
k=1
while [ $k -le "$JOBS" ]; do worker $k "$@" & k=$((k + 1)); done
wait
cat "$work"/out.* >"$work/all"
skipped=$(grep -c '^ok [0-9]* - # SKIP' "$work/all")
passed=$(($(grep -c '^ok ' "$work/all") - skipped))
failed=$(grep -c '^not ok ' "$work/all")
if [ "$skipped" -gt 0 ] && [ "${SQLNOTIFY_ALLOW_SKIP:-0}" != 1 ]; then
  echo "check: $skipped spec(s) skipped; every spec must run here (see the SKIP lines above)" >&2
  failed=$((failed + skipped))
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
