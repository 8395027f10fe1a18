#!/bin/sh
# make demo-live: scripts/examples/live.lua on a throwaway SQLite file, with a row written
# every second by the script's own timer; prints the page's address and serves until
# interrupted (Ctrl-C). Installs what it needs through the package manager, as make check does.
#   LIVE_PORT  the port to serve on (default 8080; 0 picks a free one)
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}

need="lua5.4 liblua5.4-dev libpq-dev libsqlite3-dev libev-dev lua-cjson lua-cqueues pkg-config make gcc"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "demo-live: installing Debian packages:$missing"
  if [ "$(id -u)" != 0 ]; then echo "demo-live: run as root, or: apt-get install$missing" >&2; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/tmp/sqlnotify-apt.log 2>&1 \
    || { cat /tmp/sqlnotify-apt.log >&2; exit 1; }
fi
make --no-print-directory SANITIZE="${SANITIZE:-}" BUILD="$BUILD" all >/dev/null || exit 1

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 0' INT TERM
echo "demo-live: a throwaway database in $dir; stop with Ctrl-C"
"$BUILD/sqlnotify-lua" -l warn scripts/examples/live.lua --demo "sqlite:///$dir/live.db?mode=rwc" items "${LIVE_PORT:-8080}"
