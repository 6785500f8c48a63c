#!/bin/sh
# The official mysql image's start-up, for Debian's MariaDB. On an empty data
# folder: the system tables, root's password (MYSQL_ROOT_PASSWORD, a random
# one with MYSQL_RANDOM_ROOT_PASSWORD, none with MYSQL_ALLOW_EMPTY_PASSWORD),
# the database MYSQL_DATABASE and the account MYSQL_USER / MYSQL_PASSWORD with
# every right on it. Then the server, on every address. Started as root, it
# runs the server as mysql (999).
set -eu
if [ "${1#-}" != "$1" ]; then set -- mariadbd "$@"; fi
case "$1" in mariadbd|mysqld) shift ;; *) exec "$@" ;; esac

DATADIR=/var/lib/mysql
if [ "$(id -u)" = 0 ]; then
  mkdir -p /run/mysqld
  chown -R mysql:mysql "$DATADIR" /run/mysqld
  exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" mariadbd "$@"
fi

say() { echo "entrypoint: $*" >&2; }
# The sockets' folder: /run/mysqld, unless what is mounted there is not ours
# to write (podman kube play ignores a pod's fsGroup); then the data folder.
RUNDIR=/run/mysqld
if ! [ -w "$RUNDIR" ]; then RUNDIR=$DATADIR; fi
# A value inside '...' in SQL.
sql_quote() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }

if [ ! -d "$DATADIR/mysql" ]; then
  if [ -n "${MYSQL_ROOT_PASSWORD:-}" ]; then root_pw=$MYSQL_ROOT_PASSWORD
  elif [ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
    root_pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    say "GENERATED ROOT PASSWORD: $root_pw"
  elif [ -n "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ]; then root_pw=
  else
    say "database is uninitialized and no root password option is set: set one of MYSQL_ROOT_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD"
    exit 1
  fi
  say "initializing $DATADIR"
  mariadb-install-db --datadir="$DATADIR" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve >/dev/null
  # A private server (socket only) for the set-up, as the official image does.
  sock=$RUNDIR/init.sock
  mariadbd --datadir="$DATADIR" --skip-networking --socket="$sock" --pid-file="$RUNDIR/init.pid" "$@" &
  pid=$!
  for _ in $(seq 60); do
    if mariadb-admin --socket="$sock" --user=root ping --silent >/dev/null 2>&1; then break; fi
    kill -0 "$pid" 2>/dev/null || { say "the set-up server stopped (above: why)"; exit 1; }
    sleep 1
  done
  {
    echo "DELETE FROM mysql.user WHERE user = '';"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(sql_quote "$root_pw")';"
    if [ -n "${MYSQL_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
      echo "CREATE USER '$(sql_quote "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql_quote "$MYSQL_PASSWORD")';"
      if [ -n "${MYSQL_DATABASE:-}" ]; then
        echo "GRANT ALL ON \`$MYSQL_DATABASE\`.* TO '$(sql_quote "$MYSQL_USER")'@'%';"
      fi
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --socket="$sock" --user=root
  kill "$pid"
  wait "$pid" || true
  say "initialized"
fi

exec mariadbd --datadir="$DATADIR" --bind-address=0.0.0.0 --port=3306 \
  --socket="$RUNDIR/mysqld.sock" --pid-file="$RUNDIR/mysqld.pid" --skip-name-resolve "$@"
