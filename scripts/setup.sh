#!/usr/bin/env bash
# Install what the stack needs on Debian 12 (as root): Debian packages (chromium for the web
# app's browser tests), the Python virtualenv, and toxiproxy built from its Go module. Safe to run
# again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TOXIPROXY_VERSION=v2.9.0
PACKAGES=(rabbitmq-server postgresql redis-server nginx prometheus prometheus-alertmanager
          prometheus-postgres-exporter prometheus-redis-exporter prometheus-nginx-exporter
          supervisor openssl wrk python3-venv chromium docker-compose)
# The Compose bundle's engine and base image (`make compose-test`); `make test` needs only
# docker-compose (it validates compose/docker-compose.yml).
if [[ "${IOT_SETUP_DOCKER:-}" == 1 ]]; then PACKAGES+=(docker.io debootstrap); fi
# The failover engines (`iotctl ha bench-engines`, docs/ha-engines.md) only when asked:
# `scripts/setup.sh --ha` or IOT_SETUP_HA=1.
SETUP_HA="${IOT_SETUP_HA:-}"
for arg in "$@"; do [[ "$arg" == --ha ]] && SETUP_HA=1; done

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  apt-get update -q
  # Keep Debian's own services from starting on their default ports: we run our own instances.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [[ ! -x .venv/bin/iotctl || pyproject.toml -nt .venv/.installed ]]; then
  echo "==> installing the Python package and its dependencies into .venv"
  [[ -d .venv ]] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi

mkdir -p var/bin
if [[ ! -x var/bin/toxiproxy-server || "$(cat var/bin/toxiproxy-server.version 2>/dev/null)" != "$TOXIPROXY_VERSION" ]]; then
  echo "==> building toxiproxy ${TOXIPROXY_VERSION} from its Go module"
  tmp=$(mktemp -d)
  GOBIN="$tmp" GOFLAGS=-mod=mod go install "github.com/Shopify/toxiproxy/v2/cmd/server@${TOXIPROXY_VERSION}"
  mv "$tmp/server" var/bin/toxiproxy-server
  rmdir "$tmp"
  echo "$TOXIPROXY_VERSION" > var/bin/toxiproxy-server.version
fi
# The MicroPython interpreter (WebAssembly port) that runs the firmware's protocol tests.
if [[ ! -d firmware/node_modules/@micropython || firmware/package-lock.json -nt firmware/node_modules ]]; then
  echo "==> installing MicroPython (npm) for the firmware tests"
  (cd firmware && npm ci --no-audit --no-fund --loglevel=error)
  touch firmware/node_modules
fi
if [[ "$SETUP_HA" == 1 ]]; then bash scripts/setup-ha.sh; fi
echo "==> setup complete"
