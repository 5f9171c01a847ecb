"""The highly available data tier of ``iotctl up --ha`` (docs/decisions.md, "Postgres failover
engine"; docs/ha-engines.md has the measurements behind the choice).

- **Postgres**: two members under Patroni (a primary and a synchronous standby) with a
  three-member etcd as their consensus store, on etcd's v2 API (Patroni 3.0.2 on the v3 API
  lost acknowledged writes when a cut-off primary came back; on v2 it lost none).
- **Redis**: a master and a replica, watched by three Sentinels (quorum 2) that promote the
  replica when the master is gone.
- **haproxy** listens where the single Postgres and Redis did (``postgres_port``,
  ``redis_port``) and sends each connection to the current primary or master only: Patroni's
  REST API answers ``GET /primary`` with 200 on the primary alone, and a Redis member is
  checked for ``role:master``. Every process of ours keeps its address (toxiproxy, the
  exporters, ``iotctl``) and rides out a failover as it rides out a restart: the connection
  drops (haproxy cuts the sessions of a member marked down), the next one reaches the new
  primary.

Ports on one machine (``HA_*`` below); each member can run elsewhere once ``IOT_HA_HOSTS``
names the machines (not yet: the netns bench in ``iot.ha`` runs them on three hosts).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from iot.settings import Settings

ETCD_CLIENT_PORTS = (2479, 2481, 2483)
ETCD_PEER_PORTS = (2480, 2482, 2484)
PG_PORTS = (5451, 5452)
PATRONI_REST_PORTS = (8451, 8452)
REDIS_PORTS = (6391, 6392)
SENTINEL_PORTS = (26391, 26392, 26393)
SENTINEL_QUORUM = 2
REDIS_MASTER_NAME = "iot"
HAPROXY_STATS_PORT = 8404
SCOPE = "iot"
TTL_SECONDS = 15
LOOP_WAIT_SECONDS = 3
RETRY_TIMEOUT_SECONDS = 6


@dataclass(frozen=True)
class PgMember:
    name: str  # patroni-1, patroni-2: its program's name too
    port: int
    rest_port: int
    home: Path  # var/ha/<name>: patroni.yml, pgpass
    data_dir: Path
    socket_dir: Path


def pg_members(s: Settings) -> list[PgMember]:
    """The Postgres members. The first one's data and socket directories are the single
    Postgres's (var/postgres/data, var/run/postgres): Patroni takes over an existing cluster
    as its first leader, so ``--ha`` keeps the data and ``--no-ha`` goes back to it."""
    out = []
    for i, (port, rest) in enumerate(zip(PG_PORTS, PATRONI_REST_PORTS, strict=True), 1):
        home = s.var / "ha" / f"patroni-{i}"
        data, run = (
            (s.var / "postgres" / "data", s.var / "run" / "postgres")
            if i == 1
            else (home / "data", home / "run")
        )
        out.append(PgMember(f"patroni-{i}", port, rest, home, data, run))
    return out


def etcd_cluster(s: Settings) -> str:
    return ",".join(f"etcd-{i}=http://{s.host}:{peer}" for i, peer in enumerate(ETCD_PEER_PORTS, 1))


def etcd_command(s: Settings, i: int) -> list[str]:
    client, peer = ETCD_CLIENT_PORTS[i - 1], ETCD_PEER_PORTS[i - 1]
    h = s.host
    return [
        "/usr/bin/etcd",
        "--name",
        f"etcd-{i}",
        "--data-dir",
        str(s.var / "ha" / f"etcd-{i}"),
        "--listen-client-urls",
        f"http://{h}:{client}",
        "--advertise-client-urls",
        f"http://{h}:{client}",
        "--listen-peer-urls",
        f"http://{h}:{peer}",
        "--initial-advertise-peer-urls",
        f"http://{h}:{peer}",
        "--initial-cluster",
        etcd_cluster(s),
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        "iot-ha",
        "--enable-v2=true",  # Patroni's `etcd` (v2) store: see the module's docstring
    ]


def patroni_config(s: Settings, member: PgMember, parameters: dict[str, str]) -> dict[str, Any]:
    """Member ``member``'s Patroni configuration. The settings the stack's single Postgres has
    on its command line are the cluster's parameters here (Patroni owns postgresql.conf), with
    ``parameters`` (the WAL archive's) added."""
    h = s.host
    return {
        "scope": SCOPE,
        "name": member.name,
        "restapi": {
            "listen": f"{h}:{member.rest_port}",
            "connect_address": f"{h}:{member.rest_port}",
        },
        "etcd": {"hosts": [f"{h}:{p}" for p in ETCD_CLIENT_PORTS]},
        "bootstrap": {
            "dcs": {
                # A lost primary's leader key lapses TTL_SECONDS after its last renewal and
                # the standby takes it at its next loop: 12-18 s, within the product's promise
                # of commands accepted and delivered again 30 s after the primary is lost.
                # Patroni's defaults (30/10/10) took 20-34 s in docs/ha-engines.md's bench.
                # Its rule: loop_wait + 2 * retry_timeout <= ttl.
                "ttl": TTL_SECONDS,
                "loop_wait": LOOP_WAIT_SECONDS,
                "retry_timeout": RETRY_TIMEOUT_SECONDS,
                "maximum_lag_on_failover": 1048576,
                # A commit waits for the standby: a failover loses no acknowledged write.
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "parameters": {
                        "max_connections": 200,
                        "shared_buffers": "256MB",
                        "log_min_messages": "warning",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        **parameters,
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            "pg_hba": pg_hba(s),
        },
        "postgresql": {
            "listen": f"{h}:{member.port}",
            "connect_address": f"{h}:{member.port}",
            "data_dir": str(member.data_dir),
            "bin_dir": str(s.postgres_bin_dir),
            "pgpass": str(member.home / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": s.postgres_superuser_password},
                "replication": {
                    "username": "replicator",
                    "password": s.postgres_replication_password,
                },
                "rewind": {"username": "postgres", "password": s.postgres_superuser_password},
            },
            "parameters": {"unix_socket_directories": str(member.socket_dir)},
            # Patroni reaches its own Postgres over the socket (trusted): it works before any
            # password is set when it takes over the single Postgres's cluster.
            "use_unix_socket": True,
            "pg_hba": pg_hba(s),
        },
    }


def pg_hba(s: Settings) -> list[str]:
    """Local sockets trusted (as the single Postgres: only root and postgres reach them);
    every TCP client with a password, replication included."""
    return [
        "local all all trust",
        "local replication all trust",
        f"host replication replicator {s.host}/32 scram-sha-256",
        f"host all all {s.host}/32 scram-sha-256",
    ]


def redis_conf(s: Settings, i: int) -> str:
    """Member ``i``'s redis.conf: the single Redis's settings on its own port; member 2 starts
    as member 1's replica (Sentinel rewrites ``replicaof`` after a failover)."""
    port = REDIS_PORTS[i - 1]
    lines = [
        "# Rendered by `iotctl up --ha` when missing; Sentinel rewrites it after a failover.",
        f"bind {s.host}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f"pidfile {s.var}/run/redis-{i}.pid",
        'logfile ""',
        f"dir {s.var}/ha/redis-{i}",
        'save ""',
        "appendonly no",
        "maxmemory 1gb",
        "maxmemory-policy allkeys-lru",
        f"requirepass {s.redis_password}",
        f"masterauth {s.redis_password}",
    ]
    if i > 1:
        lines.append(f"replicaof {s.host} {REDIS_PORTS[0]}")
    return "\n".join(lines) + "\n"


def sentinel_conf(s: Settings, i: int) -> str:
    """Sentinel ``i``'s first configuration (it rewrites its file with what it learns)."""
    return (
        "\n".join(
            [
                "# Rendered by `iotctl up --ha` when missing; Sentinel rewrites it.",
                f"bind {s.host}",
                f"port {SENTINEL_PORTS[i - 1]}",
                "daemonize no",
                f"dir {s.var}/ha/sentinel-{i}",
                f"sentinel monitor {REDIS_MASTER_NAME} {s.host} {REDIS_PORTS[0]} {SENTINEL_QUORUM}",
                f"sentinel auth-pass {REDIS_MASTER_NAME} {s.redis_password}",
                f"sentinel down-after-milliseconds {REDIS_MASTER_NAME} 5000",
                f"sentinel failover-timeout {REDIS_MASTER_NAME} 30000",
                f"sentinel parallel-syncs {REDIS_MASTER_NAME} 1",
                # the Redis exporter scrapes the Sentinels with Redis's password, and the
                # Sentinels use it with each other
                f"requirepass {s.redis_password}",
                f"sentinel sentinel-pass {s.redis_password}",
            ]
        )
        + "\n"
    )


def haproxy_cfg(s: Settings) -> str:
    """haproxy in front of the members: Postgres's and Redis's usual ports, each connection to
    the current primary (Patroni's ``GET /primary``) or master (``role:master``) only."""
    h = s.host
    pg_servers = [
        f"    server {m.name} {h}:{m.port} check port {m.rest_port}" for m in pg_members(s)
    ]
    redis_servers = [
        f"    server redis-{i} {h}:{port} check" for i, port in enumerate(REDIS_PORTS, 1)
    ]
    auth = f"AUTH\\ {s.redis_password}\\r\\n"
    return (
        "\n".join(
            [
                "# Rendered by `iotctl up --ha`.",
                "global",
                "    maxconn 4096",
                "defaults",
                "    mode tcp",
                "    timeout connect 3s",
                "    timeout client 2h",
                "    timeout server 2h",
                "    timeout check 2s",
                # a member marked down has its sessions cut: clients reconnect to the new one
                "    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions",
                "listen postgres",
                f"    bind {h}:{s.postgres_port}",
                "    option httpchk GET /primary",
                "    http-check expect status 200",
                *pg_servers,
                "listen redis",
                f"    bind {h}:{s.redis_port}",
                "    option tcp-check",
                "    tcp-check connect",
                f"    tcp-check send {auth}",
                "    tcp-check expect string +OK",
                "    tcp-check send info\\ replication\\r\\n",
                "    tcp-check expect string role:master",
                "    tcp-check send QUIT\\r\\n",
                "    tcp-check expect string +OK",
                *redis_servers,
                "frontend stats",
                "    mode http",
                f"    bind {h}:{HAPROXY_STATS_PORT}",
                "    http-request use-service prometheus-exporter if { path /metrics }",
                "    stats enable",
                "    stats uri /stats",
            ]
        )
        + "\n"
    )


def program_specs(s: Settings) -> list[dict[str, Any]]:
    """The processes of the HA data tier, as ``processes.Program`` arguments (in place of the
    single ``postgres`` and ``redis``)."""
    h = s.host
    specs: list[dict[str, Any]] = []
    for i, client in enumerate(ETCD_CLIENT_PORTS, 1):
        specs.append(
            {
                "name": f"etcd-{i}",
                "command": etcd_command(s, i),
                "group": "data",
                "priority": 5,
                "probe": f"http:http://{h}:{client}/health",
                "url": f"http://{h}:{client}",
            }
        )
    join = str(Path(__file__).with_name("ha_join.py"))
    etcd = [f"http://{h}:{p}" for p in ETCD_CLIENT_PORTS]
    for i, m in enumerate(pg_members(s)):
        conf = str(m.home / "patroni.yml")
        # the first member takes over (or creates) the cluster; the others wait for it to
        # exist, so that none of them bootstraps an empty one of its own (ha_join.py)
        command = (
            ["/usr/bin/patroni", conf]
            if i == 0
            else ["/usr/bin/python3", join, "patroni", str(m.data_dir), conf, *etcd]
        )
        specs.append(
            {
                "name": m.name,
                "command": command,
                "group": "data",
                "priority": 10,
                # 200 while its Postgres runs, primary or standby
                "probe": f"http:http://{h}:{m.rest_port}/health",
                "url": f"postgresql://{h}:{m.port}/{s.postgres_db}",
                "user": "postgres",
                "stopwaitsecs": 60,
            }
        )
    redis = [
        ("redis", "redis-server", REDIS_PORTS, 10),
        ("sentinel", "redis-sentinel", SENTINEL_PORTS, 11),
    ]
    sentinels = [str(p) for p in SENTINEL_PORTS]
    for kind, binary, ports, priority in redis:
        for i, port in enumerate(ports, 1):
            conf = s.var / "ha" / f"{kind}-{i}" / f"{kind}.conf"
            # a Redis member starts as the replica of whoever the Sentinels name master now
            # (ha_join.py), never as a second master
            command = (
                ["/usr/bin/python3", join, "redis", str(conf), *sentinels]
                if kind == "redis"
                else [f"/usr/bin/{binary}", str(conf)]
            )
            specs.append(
                {
                    "name": f"{kind}-{i}",
                    "command": command,
                    "group": "data",
                    "priority": priority,
                    "probe": f"tcp:{port}",
                    "url": f"redis://{h}:{port}",
                }
            )
    specs.append(
        {
            "name": "haproxy",
            "command": ["/usr/sbin/haproxy", "-db", "-f", str(s.var / "conf" / "haproxy.cfg")],
            "group": "data",
            "priority": 12,
            "probe": "sql",  # a query through it reaches the primary
            "url": f"postgresql://{h}:{s.postgres_port}/{s.postgres_db} (the primary)",
        }
    )
    return specs


def scrape_targets(s: Settings) -> dict[str, str]:
    """Prometheus's targets of the HA members (prometheus.yml's placeholders): Patroni's REST
    API, etcd, haproxy's exporter, the Sentinels (scraped through the Redis exporter). Empty
    lists without ``--ha``."""
    h = s.host
    on = s.ha and "postgres" not in s.external_services

    def listed(ports: tuple[int, ...]) -> str:
        return ", ".join(f'"{h}:{p}"' for p in ports) if on else ""

    return {
        "patroni_targets": listed(PATRONI_REST_PORTS),
        "etcd_targets": listed(ETCD_CLIENT_PORTS),
        "haproxy_targets": listed((HAPROXY_STATS_PORT,)),
        "sentinel_targets": listed(SENTINEL_PORTS),
    }


def render(s: Settings, parameters: dict[str, str]) -> list[str]:
    """Write the members' configurations under var/; returns the names that changed. Redis's
    and Sentinel's files are written only when missing: after a failover they hold who is
    master now, and rendering them again would undo it."""
    changed = []
    conf = s.var / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    files: dict[Path, str] = {conf / "haproxy.cfg": haproxy_cfg(s)}
    for m in pg_members(s):
        config = patroni_config(s, m, parameters)
        files[m.home / "patroni.yml"] = yaml.safe_dump(config, sort_keys=False)
    for m in pg_members(s):  # Patroni runs as postgres: its home, data and socket are its own
        for d in (m.home, m.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path.name if path.parent == conf else f"{path.parent.name}.yml")
        path.chmod(0o600)  # passwords
        if path.name == "patroni.yml":
            shutil.chown(path, "postgres", "postgres")
    once = [
        ("redis", len(REDIS_PORTS), redis_conf),
        ("sentinel", len(SENTINEL_PORTS), sentinel_conf),
    ]
    for kind, count, make in once:
        for i in range(1, count + 1):
            path = s.var / "ha" / f"{kind}-{i}" / f"{kind}.conf"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(make(s, i))
                path.chmod(0o600)
                changed.append(f"{kind}-{i}.conf")
    return changed


def primary(s: Settings, timeout: float = 2.0) -> PgMember | None:
    """The member Patroni says is the primary now (its REST API's ``GET /primary`` answers 200
    on the primary alone), or None."""
    for m in pg_members(s):
        try:
            if (
                httpx.get(f"http://{s.host}:{m.rest_port}/primary", timeout=timeout).status_code
                == 200
            ):
                return m
        except httpx.HTTPError:
            continue
    return None


def switch_back(s: Settings, timeout: float = 90.0) -> str | None:
    """Make patroni-1 the primary again (the single Postgres of ``--no-ha`` runs on its data):
    a switchover through Patroni's REST API when another member leads, then a wait until
    patroni-1 answers as the primary. Returns the member that led before, or None when
    patroni-1 already did.

    Raises:
        NoPrimary: no member leads, or patroni-1 did not become the primary within ``timeout``.
    """
    first = pg_members(s)[0]
    leader = primary(s)
    if leader is None:
        raise NoPrimary("no Postgres member is primary: see `iotctl logs patroni-1`")
    if leader.name == first.name:
        return None
    r = httpx.post(
        f"http://{s.host}:{leader.rest_port}/switchover",
        json={"leader": leader.name, "candidate": first.name},
        timeout=timeout,
    )
    if r.status_code != 200:
        raise NoPrimary(f"Patroni refused the switchover to {first.name}: {r.text.strip()}")
    deadline = time.monotonic() + timeout
    while (now := primary(s)) is None or now.name != first.name:
        if time.monotonic() > deadline:
            raise NoPrimary(f"{first.name} is not the primary {timeout:g} s after the switchover")
        time.sleep(1)
    return leader.name


class NoPrimary(RuntimeError):
    """No Postgres member is primary (a failover in progress, or the cluster not up)."""


def local_postgres(s: Settings, timeout: float = 60.0) -> tuple[Path, int]:
    """(socket directory, port) of the Postgres that this machine's superuser tools use (roles
    and databases, migrations' bootstrap, backups): the single Postgres, or with ``--ha`` the
    current primary (waiting up to ``timeout`` for one).

    Raises:
        NoPrimary: no member became primary within ``timeout``.
    """
    if not s.ha:
        return s.var / "run" / "postgres", s.postgres_port
    deadline = time.monotonic() + timeout
    while True:
        member = primary(s)
        if member is not None:
            return member.socket_dir, member.port
        if time.monotonic() > deadline:
            raise NoPrimary(
                f"no Postgres member is primary after {timeout:g} s: see `iotctl logs patroni-1`"
                " and `iotctl logs patroni-2`"
            )
        time.sleep(1)


def redis_masters(s: Settings, timeout: float = 2.0) -> list[str]:
    """The Redis members (``redis-1``, ...) that say ``role:master`` now."""
    import redis

    out = []
    for i, port in enumerate(REDIS_PORTS, 1):
        client = redis.Redis(
            host=s.host, port=port, password=s.redis_password, socket_timeout=timeout
        )
        try:
            if client.info("replication").get("role") == "master":
                out.append(f"redis-{i}")
        except (redis.RedisError, OSError):
            continue
        finally:
            client.close()
    return out
