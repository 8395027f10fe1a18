#!/bin/sh
# make demo-live: scripts/examples/live.lua on a throwaway SQLite file, with a row written
# every second by the script's own timer; prints the page's address and serves until
# interrupted (Ctrl-C). Installs what it needs through the package manager, as make check does.
#   LIVE_PORT  the port to serve on (default 8080; 0 picks a free one)
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}

sh tools/deps.sh live || exit 1
make --no-print-directory SANITIZE="${SANITIZE:-}" BUILD="$BUILD" all >/dev/null || exit 1

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 0' INT TERM
echo "demo-live: a throwaway database in $dir; stop with Ctrl-C"
"$BUILD/sqlnotify-lua" -l warn scripts/examples/live.lua --demo "sqlite:///$dir/live.db?mode=rwc" items "${LIVE_PORT:-8080}"
