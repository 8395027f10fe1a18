#!/bin/sh
# tools/mariadb.sh — the MariaDB the MySQL specs need (called by tools/check.sh): installs
# mariadb-server from Debian's packages where it is missing, starts it where it is installed
# but stopped, lets this user in over TCP where a fresh install does not, and makes the
# specs' database afresh (SQLNOTIFY_TEST_MYSQL_URL names another one: it is only created
# if missing), or the one its argument names (a second worker's). Installs only through apt,
# and says so.
set -u
URL=${1:-${SQLNOTIFY_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/sqlnotify_check}}
say() { echo "check: $*"; }

# mysql://user[:pass]@host[:port]/db[?...] -> the parts the client needs
rest=${URL#*://}
auth=""
case "$rest" in *@*) auth=${rest%%@*}; rest=${rest#*@} ;; esac
user=${auth%%:*}
pass=""
case "$auth" in *:*) pass=${auth#*:} ;; esac
hostport=${rest%%/*}
db=${rest#*/}
db=${db%%\?*}
host=${hostport%%:*}
port=3306
case "$hostport" in *:*) port=${hostport#*:} ;; esac
[ -n "$user" ] || user=$(id -un)
[ -n "$host" ] || host=127.0.0.1
[ -n "$db" ] && [ "$db" != "$rest" ] || { echo "check: $URL names no database" >&2; exit 1; }

client() { MYSQL_PWD=$pass mariadb --protocol=tcp -h "$host" -P "$port" -u "$user" "$@"; }
up() { mariadb-admin --protocol=tcp -h "$host" -P "$port" -u "$user" ${pass:+-p"$pass"} ping >/dev/null 2>&1 \
  || mariadb-admin ping >/dev/null 2>&1; }

if ! up; then
  if [ ! -x /usr/sbin/mariadbd ]; then
    say "installing the MariaDB server (mariadb-server)"
    if [ "$(id -u)" != 0 ]; then echo "check: run as root, or: apt-get install mariadb-server" >&2; exit 1; fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client) \
      >/tmp/sqlnotify-apt.log 2>&1 || { cat /tmp/sqlnotify-apt.log >&2; exit 1; }
  fi
  if ! up; then
    say "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    i=0; while ! up && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
    up || { echo "check: MariaDB did not come up" >&2; exit 1; }
  fi
fi

# A fresh install lets root in through the socket only: let this user in over TCP too.
if ! client -e 'SELECT 1' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && [ -z "$pass" ]; then
    say "letting $user in over TCP from $host (no password, as the specs' URL says)"
    mariadb -e "CREATE USER IF NOT EXISTS '$user'@'$host'; GRANT ALL PRIVILEGES ON *.* TO '$user'@'$host' WITH GRANT OPTION;" \
      || exit 1
  fi
fi

if [ $# -gt 0 ] || [ -z "${SQLNOTIFY_TEST_MYSQL_URL:-}" ]; then
  client -e "DROP DATABASE IF EXISTS \`$db\`; CREATE DATABASE \`$db\` CHARACTER SET utf8mb4" >/dev/null
else
  client -e "CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8mb4" >/dev/null
fi || { echo "check: cannot create the database $db on $host:$port" >&2; exit 1; }
