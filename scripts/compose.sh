#!/usr/bin/env bash
# The Compose bundle (compose/): render its configuration, build its images, run it, test it.
#
#   scripts/compose.sh render   configuration from the native stack's templates (compose/.rendered)
#   scripts/compose.sh build    the Debian base (debootstrap, cached) and our images
#   scripts/compose.sh up       render, build, start everything but Grafana and wait for health
#   scripts/compose.sh down     stop and remove the containers and volumes
#   scripts/compose.sh test     up, a reading and a command through its nginx, down (make compose-test)
#   scripts/compose.sh build-services   only the images of RabbitMQ, Postgres and Redis (the
#                               integration tests' IOT_TEST_BACKEND=containers runs them)
#   scripts/compose.sh with-engine CMD...   CMD with a Docker engine (make test-containers)
#
# A Docker engine is used when one answers; otherwise, as root with Debian's docker.io
# installed, this script starts dockerd (storage driver vfs) itself and stops it again when it
# is done (only that dockerd, by its pid). IOT_COMPOSE_CLUSTER=1 runs RabbitMQ as a three-node
# cluster (compose/docker-compose.cluster.yml); IOT_COMPOSE_HA=1 the HA data tier
# (compose/docker-compose.ha.yml: Patroni, etcd, Sentinel, haproxy), whose test also kills the
# Postgres primary and the Redis master, then cuts the primary's host off the network, and
# checks a reading and a command again after each failover. IOT_COMPOSE_BASE builds on another base image
# (default: the debootstrap one, iot-debian:bookworm; `debian:12-slim` where a registry answers).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-iotcompose}
# vfs copies a whole image for every container: creating several takes longer than 60 s.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}
export IOT_COMPOSE_BASE=${IOT_COMPOSE_BASE:-iot-debian:bookworm}
export IOT_COMPOSE_HTTP_PORT=${IOT_COMPOSE_HTTP_PORT:-38080}
RENDERED=compose/.rendered
BUILD=compose/images  # the build context: wheels/ and bin/ are added (git-ignored)
STATE=var/compose  # the log of a dockerd this script starts, pip's Python and log
# Debian's docker CLI matches its engine; another one earlier on PATH may not.
DOCKER=$(command -v /usr/bin/docker || command -v docker || true)
export DOCKER
COMPOSE=(docker-compose -f compose/docker-compose.yml)
# IOT_COMPOSE_CLUSTER=1: the three-node RabbitMQ cluster (compose/docker-compose.cluster.yml).
if [[ "${IOT_COMPOSE_CLUSTER:-}" == 1 ]]; then
  COMPOSE+=(-f compose/docker-compose.cluster.yml)
fi
# Every service but Grafana, whose image no registry gives us here (docker-compose config
# validates it; `docker-compose up` starts it where its image can be pulled).
SERVICES=(rabbitmq postgres redis toxiproxy migrate api-1 api-2 worker-sensors
          worker-commandlog flower nginx prometheus alertmanager postgres-exporter
          redis-exporter nginx-exporter)
if [[ "${IOT_COMPOSE_CLUSTER:-}" == 1 ]]; then SERVICES+=(rabbitmq-2 rabbitmq-3 rabbitmq-cluster); fi
# IOT_COMPOSE_HA=1: the HA data tier (compose/docker-compose.ha.yml).
HA_MEMBERS=(etcd-1 etcd-2 etcd-3 patroni-1 patroni-2 redis-1 redis-2 sentinel-1 sentinel-2 sentinel-3)
if [[ "${IOT_COMPOSE_HA:-}" == 1 ]]; then
  COMPOSE+=(-f compose/docker-compose.ha.yml)
  SERVICES+=("${HA_MEMBERS[@]}")
fi

say() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'compose: %s\n' "$*" >&2; exit 1; }

started_dockerd=""
stop_own_dockerd() {
  if [[ -n "$started_dockerd" ]] && kill -0 "$started_dockerd" 2>/dev/null; then
    say "stopping the dockerd this script started (pid $started_dockerd)"
    kill "$started_dockerd"
    for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
  fi
}

need_engine() {
  command -v docker-compose >/dev/null || die "docker-compose is missing: run IOT_SETUP_DOCKER=1 scripts/setup.sh"
  [[ -n "$DOCKER" ]] || die "the docker client is missing: run IOT_SETUP_DOCKER=1 scripts/setup.sh"
  if "$DOCKER" version >/dev/null 2>&1; then return; fi
  [[ $EUID -eq 0 && -x /usr/sbin/dockerd ]] \
    || die "no Docker engine answers and this script cannot start one (needs root and docker.io)"
  mkdir -p "$STATE"
  say "no Docker engine answers: starting dockerd --storage-driver=vfs (log: $STATE/dockerd.log)"
  # nice 19: image builds and the stack share the machine with whatever else runs here.
  nice -n 19 /usr/sbin/dockerd --storage-driver=vfs --pidfile "$ROOT/$STATE/dockerd.pid" \
    >"$STATE/dockerd.log" 2>&1 &
  started_dockerd=$!
  trap stop_own_dockerd EXIT
  for _ in $(seq 60); do
    "$DOCKER" version >/dev/null 2>&1 && return
    kill -0 "$started_dockerd" 2>/dev/null || break
    sleep 1
  done
  tail -5 "$STATE/dockerd.log" >&2
  die "dockerd did not start (this machine may not allow containers); see $STATE/dockerd.log"
}

render() {
  say "rendering the configuration from the native stack's templates into $RENDERED"
  .venv/bin/python compose/render.py "$RENDERED"
}

build() {
  if [[ "$IOT_COMPOSE_BASE" == iot-debian:* ]]; then
    bash scripts/compose-base.sh "$IOT_COMPOSE_BASE"
  fi
  say "building the wheels of the project and its dependencies ($BUILD/wheels)"
  rm -rf "$BUILD/wheels" && mkdir -p "$BUILD/wheels" "$BUILD/bin" "$STATE"
  # Resolved by Debian 12's python3, the one the image runs: dependencies can differ by
  # Python version (redis needs async-timeout before 3.11.3; .venv's Python may be newer).
  [[ -x "$STATE/python/bin/pip" ]] || /usr/bin/python3 -m venv "$STATE/python" \
    || die "cannot make a virtualenv with /usr/bin/python3 (apt-get install python3-venv)"
  nice -n 19 "$STATE/python/bin/pip" wheel -q --wheel-dir "$BUILD/wheels" . >"$STATE/pip.log" 2>&1 \
    || { tail -20 "$STATE/pip.log" >&2; die "pip wheel failed"; }
  [[ -x var/bin/toxiproxy-server ]] || die "var/bin/toxiproxy-server is missing: run make setup"
  cp var/bin/toxiproxy-server "$BUILD/bin/toxiproxy-server"
  say "building the images on $IOT_COMPOSE_BASE (nice 19)"
  nice -n 19 "${COMPOSE[@]}" build --build-arg BASE="$IOT_COMPOSE_BASE" 2>&1 \
    | grep --line-buffered -E '^(Building [a-z0-9-]+$|Successfully tagged|Step [0-9]+/[0-9]+ : FROM)|rror' || true
  for image in $("${COMPOSE[@]}" config | awk '/^ +image: iot-/{print $2}' | sort -u); do
    "$DOCKER" image inspect "$image" >/dev/null 2>&1 || die "image $image was not built"
  done
}

# The backing services' images only: no wheels, no toxiproxy, no Python image.
build_services() {
  if [[ "$IOT_COMPOSE_BASE" == iot-debian:* ]]; then
    bash scripts/compose-base.sh "$IOT_COMPOSE_BASE"
  fi
  say "building the images of rabbitmq, postgres and redis on $IOT_COMPOSE_BASE (nice 19)"
  nice -n 19 "${COMPOSE[@]}" build --build-arg BASE="$IOT_COMPOSE_BASE" rabbitmq postgres redis 2>&1 \
    | grep --line-buffered -E '^(Building [a-z0-9-]+$|Successfully tagged)|rror' || true
  for image in $("${COMPOSE[@]}" config | awk '/^ +image: iot-(rabbitmq|postgres|redis):/{print $2}' | sort -u); do
    "$DOCKER" image inspect "$image" >/dev/null 2>&1 || die "image $image was not built"
  done
}

wait_healthy() {  # wait_healthy SECONDS [SERVICE...]: every service of the stack by default
  local deadline=$((SECONDS + ${1:-300})) pending
  local services=("${SERVICES[@]}")
  (($# > 1)) && services=("${@:2}")
  while :; do
    pending=()
    for svc in "${services[@]}"; do
      [[ "$svc" == migrate || "$svc" == rabbitmq-cluster ]] && continue  # one-shots
      id=$("${COMPOSE[@]}" ps -q "$svc")
      state=$("$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      [[ "$state" == healthy ]] || pending+=("$svc:$state")
    done
    ((${#pending[@]} == 0)) && return 0
    ((SECONDS < deadline)) || { echo "not healthy: ${pending[*]}" >&2; return 1; }
    sleep 3
  done
}

up() {
  need_engine
  render
  build
  say "starting the stack (project $COMPOSE_PROJECT_NAME, nginx on 127.0.0.1:$IOT_COMPOSE_HTTP_PORT)"
  "${COMPOSE[@]}" up -d --no-build "${SERVICES[@]}"
  say "waiting until every service is healthy"
  if ! wait_healthy 400; then
    "${COMPOSE[@]}" ps >&2
    "${COMPOSE[@]}" logs --tail=20 >&2
    die "the stack did not become healthy"
  fi
  say "all services healthy"
}

down() {
  need_engine
  say "bringing the stack down (containers, network, volumes)"
  "${COMPOSE[@]}" down -v --remove-orphans
}

smoke() {
  say "a reading and a command through nginx (127.0.0.1:$IOT_COMPOSE_HTTP_PORT)"
  IOT_COMPOSE_URL="http://127.0.0.1:$IOT_COMPOSE_HTTP_PORT" .venv/bin/python compose/smoke.py \
    --exec "${COMPOSE[*]} exec -T api-1"
}

# The HA tier's failovers (IOT_COMPOSE_HA=1): kill -9 the Postgres primary's member, then the
# Redis master's, and after each the smoke test again through the new one; the killed member
# is started again and must rejoin (as a standby, as a replica).
ha_member_of() {  # ha_member_of pg|redis: the member that is primary / master now
  "${COMPOSE[@]}" exec -T api-1 python -c "
import sys
from iot.settings import Settings
from iot.stack import ha
s = Settings(ha=True, ha_hosts=['${IOT_COMPOSE_HA_NET:-10.79.1}.1%d' % i for i in (1, 2, 3)], ha_netns=False)
if sys.argv[1] == 'pg':
    m = ha.primary(s)
    print(m.name if m else '')
else:
    print(' '.join(ha.redis_masters(s)))
" "$1"
}

# new_primary pg|redis VICTIM T0 WHAT: wait until one member other than VICTIM is primary (or
# master), say how long after WHAT (at $SECONDS T0) it took over, and print its name.
new_primary() {
  local kind=$1 victim=$2 t0=$3 what=$4 now
  while :; do
    now=$(ha_member_of "$kind" | tr -d '\r')
    [[ -n "$now" && "$now" != "$victim" && "$now" != *" "* ]] && break
    ((SECONDS - t0 < 120)) || die "no new $kind primary 120 s after the $what"
    sleep 1
  done
  say "$now took over $((SECONDS - t0)) s after the $what" >&2
  echo "$now"
}

failover() {  # failover pg|redis
  local kind=$1 victim t0 now
  victim=$(ha_member_of "$kind" | tr -d '\r')
  [[ -n "$victim" ]] || die "no $kind primary to kill"
  say "kill -9 of $victim (the $kind primary)"
  t0=$SECONDS
  "${COMPOSE[@]}" kill -s KILL "$victim" >/dev/null
  now=$(new_primary "$kind" "$victim" "$t0" kill) || return 1
  smoke || return 1
  "${COMPOSE[@]}" start "$victim" >/dev/null
  wait_healthy 180 "$victim" || die "$victim did not come back"
  say "$victim is back (as $( [[ $kind == pg ]] && echo standby || echo replica ))"
}

# The Postgres primary's host cut off the network (its `etcd-N` container, whose network host
# N's members share, disconnected: a partition, not a kill), then joined again at its address.
cut_primary_host() {
  local victim n net cid t0 now
  victim=$(ha_member_of pg | tr -d '\r')
  [[ -n "$victim" ]] || die "no pg primary whose host to cut"
  n=${victim##*-}
  net="${COMPOSE_PROJECT_NAME}_default"
  cid=$("${COMPOSE[@]}" ps -q "etcd-$n")
  say "cutting host $n off the network (etcd-$n, $victim, redis-$n, sentinel-$n keep running)"
  t0=$SECONDS
  "$DOCKER" network disconnect "$net" "$cid"
  now=$(new_primary pg "$victim" "$t0" cut) || return 1
  smoke || return 1
  "$DOCKER" network connect --ip "${IOT_COMPOSE_HA_NET:-10.79.1}.1$n" "$net" "$cid"
  wait_healthy 180 "etcd-$n" "$victim" || die "host $n did not come back"
  say "host $n is back: $victim follows $now"
}

case "${1:-}" in
  render) render ;;
  build) need_engine; render; build ;;
  build-services) need_engine; render; build_services ;;
  with-engine)
    shift
    need_engine  # a dockerd started here stops when this script ends
    rc=0
    "$@" || rc=$?
    exit "$rc"
    ;;
  up) up ;;
  down) down ;;
  test)
    start=$SECONDS
    need_engine  # a dockerd started here stops when this script ends
    rc=0
    bash "$0" up || rc=$?
    ((rc != 0)) || smoke || rc=$?
    if ((rc == 0)) && [[ "${IOT_COMPOSE_HA:-}" == 1 ]]; then
      (failover pg && failover redis && cut_primary_host) || rc=$?
    fi
    bash "$0" down
    say "make compose-test took $((SECONDS - start)) s"
    ((rc == 0)) || die "the compose test failed"
    say "compose test passed"
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
