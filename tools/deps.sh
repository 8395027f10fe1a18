#!/bin/sh
# tools/deps.sh build|live|check — install the Debian packages the build (and, for check, the
# specs) need, through apt only, saying what it installs. Shared by make demo and make check,
# so the README's two commands are all the set-up a fresh machine needs.
set -u
what=${1:-build}
build="lua5.4 liblua5.4-dev libpq-dev libsqlite3-dev libev-dev lua-cjson pkg-config make gcc"
case "$what" in
  build) need=$build ;;
  live) need="$build lua-cqueues" ;;
  check) need="$build lua-busted luarocks sqlite3 postgresql-client chromium lua-cqueues socat libmariadb-dev mariadb-client
    libcurl4-openssl-dev libhiredis-dev libnats-dev libmosquitto-dev redis-server nats-server mosquitto mosquitto-clients
    librdkafka-dev prometheus curl" ;;
  *) echo "usage: tools/deps.sh build|live|check" >&2; exit 2 ;;
esac
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
echo "deps: installing Debian packages:$missing"
if [ "$(id -u)" != 0 ]; then echo "deps: run as root, or: apt-get install$missing" >&2; exit 1; fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/tmp/sqlnotify-apt.log 2>&1 \
  || { cat /tmp/sqlnotify-apt.log >&2; echo "deps: apt-get failed (log above)" >&2; exit 1; }
