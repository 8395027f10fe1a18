#!/bin/sh
# make check: bring up what the specs need, build, run every spec, and end with
# "N passed, N failed". Installs only through the machine's package manager, and says so.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SANITIZE=${SANITIZE:-}
PG_URL=${SQLNOTIFY_TEST_PG_URL:-postgresql://root@127.0.0.1/test}

say() { echo "check: $*"; }

# ----- packages -----
need="lua5.4 liblua5.4-dev libpq-dev libsqlite3-dev libev-dev lua-cjson lua-busted luarocks pkg-config make gcc sqlite3 postgresql-client socat"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  if [ "$(id -u)" != 0 ]; then echo "check: run as root, or: apt-get install$missing" >&2; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/tmp/sqlnotify-apt.log 2>&1 \
    || { cat /tmp/sqlnotify-apt.log >&2; echo "0 passed, 1 failed"; exit 1; }
fi

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
if ! psql "$PG_URL" -Atc 'select 1' >/dev/null 2>&1; then
  # A fresh cluster: let root in (trust on loopback is the Debian default for local tests) and make the database.
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    su postgres -c "psql -Atc \"select 1 from pg_roles where rolname='$(id -un)'\"" | grep -q 1 \
      || su postgres -c "createuser -s $(id -un)"
    su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
      || su postgres -c "createdb -O $(id -un) test"
  fi
fi
if ! psql "$PG_URL" -Atc 'select 1' >/dev/null 2>&1; then
  echo "check: cannot reach PostgreSQL at $PG_URL" >&2
  echo "0 passed, 1 failed"; exit 1
fi

# ----- build -----
make --no-print-directory SANITIZE="$SANITIZE" BUILD="$BUILD" all || { echo "0 passed, 1 failed"; exit 1; }

# ----- specs -----
export SQLNOTIFY_BUILD="$BUILD" SQLNOTIFY_TEST_PG_URL="$PG_URL" SANITIZE
preload=""
if [ -n "$SANITIZE" ]; then
  # The module is loaded by lua5.4, which is not built with the sanitizers: preload their
  # runtimes into busted only (spec/helper.lua drops them for every command it runs).
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  # lua5.4 and busted are not ours: leaks are checked on the host binary, in the specs that run it.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
out=$(mktemp)
LD_PRELOAD="$preload" busted --lua=lua5.4 -o TAP "$@" spec 2>&1 | tee "$out"
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
if ! grep -q '^1\.\.' "$out"; then failed=$((failed + 1)); fi   # busted itself failed to run
rm -f "$out"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
