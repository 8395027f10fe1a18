#!/bin/sh
# tools/pgext.sh URL — build and install the server extension sqlnotify_capture (pgext/)
# into the PostgreSQL server at URL, when that server runs on this machine: installs the
# server's headers (postgresql-server-dev-<major>) through apt if they are missing, builds
# with PGXS and installs into the server's library directory. make check runs it before
# the specs, so that durable triggers there are the C one (spec 24 fails without it).
set -u
cd "$(dirname "$0")/.."
URL=$1
say() { echo "pgext: $*"; }
num=$(psql "$URL" -Atc 'show server_version_num' 2>/dev/null) || { say "cannot reach $URL"; exit 1; }
major=$((num / 10000))
PGC=/usr/lib/postgresql/$major/bin/pg_config
if [ ! -d "/usr/lib/postgresql/$major/lib" ]; then
  say "the server (PostgreSQL $major) is not on this machine: install pgext/ there (see the README)"
  exit 0
fi
if [ ! -x "$PGC" ] || [ ! -f "/usr/include/postgresql/$major/server/postgres.h" ]; then
  say "installing Debian package postgresql-server-dev-$major"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-server-dev-$major") \
    >/tmp/sqlnotify-apt.log 2>&1 || { cat /tmp/sqlnotify-apt.log >&2; say "apt-get failed"; exit 1; }
fi
# with_llvm=no: no bitcode for the server's JIT (it needs clang, and a trigger gains nothing)
make --no-print-directory -s -C pgext PG_CONFIG="$PGC" with_llvm=no install >/tmp/sqlnotify-pgext.log 2>&1 \
  || { cat /tmp/sqlnotify-pgext.log >&2; say "cannot build or install pgext/"; exit 1; }
