#!/usr/bin/env bash
# The failover engines measured by `iotctl ha bench-engines` (docs/ha-engines.md), from Debian 12:
# Patroni with etcd, pg_auto_failover, and what a highly available deployment puts beside them
# (haproxy, pgbouncer, Redis Sentinel). Opt-in: `scripts/setup.sh --ha` or IOT_SETUP_HA=1 runs
# it; `make up` does not. Safe to run again: it only installs what is missing, and no Debian
# service of these packages is left running (the bench starts its own, in namespaces of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(patroni etcd-server etcd-client postgresql-15-auto-failover pg-auto-failover-cli
          haproxy pgbouncer redis-sentinel iproute2)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing the failover engines: ${missing[*]}"
  apt-get update -q
  # Debian's own units must not start on their default ports (2379, 5432, 6379, 26379, ...).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
echo "==> failover engines installed"
