#!/bin/bash
# Start Postgres in its container as the native stack runs it (Debian's postgresql-15, port
# IOT_POSTGRES_PORT, the postgres user): initialise the cluster on first start with trust on
# the local socket (the migrate service creates the roles through it, as `iotctl up` does) and
# scram-sha-256 over TCP from any container of the bundle's network.
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
data=/srv/iot/var/postgres/data
sock=/srv/iot/var/run/postgres
mkdir -p "$data" "$sock"
chown postgres:postgres "$data" "$sock" /srv/iot/var/postgres
if [[ ! -s "$data/PG_VERSION" ]]; then
  runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
fi
exec runuser -u postgres -- "$bin/postgres" -D "$data" -p "${IOT_POSTGRES_PORT:-5442}" \
  -k "$sock" -c listen_addresses='*' -c max_connections=200 -c shared_buffers=256MB \
  -c log_min_messages=warning
