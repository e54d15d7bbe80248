#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1:${PGPORT:-55432} (trust auth, data in /tmp) and prints its URL.
# Idempotent: safe to run while it is up. Installs the Debian server package if it is missing.
set -euo pipefail
PGROOT=${PGROOT:-/tmp/pgtest}
PGPORT=${PGPORT:-55432}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$PGROOT"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$PGROOT"
[ -s "$PGROOT/data/PG_VERSION" ] || as_pg "$PGBIN/initdb" -D "$PGROOT/data" -U postgres \
  --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 --no-instructions >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1 ||
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 60 \
    -o "-p $PGPORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
# A server left running by someone else may still be recovering from an unclean stop: wait until it
# accepts connections (bounded), rather than failing on the first query.
for _ in $(seq 1 600); do
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break
  sleep 0.2
done
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qtAc "SELECT 1 FROM pg_database WHERE datname='app'" | grep -q 1 ||
  as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres app
echo "postgres://postgres@127.0.0.1:$PGPORT/app"
