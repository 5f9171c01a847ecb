"""The configurations of the HA data tier's members (``iotctl up --ha``, stack/ha.py has the
members, their ports and the cluster's state): Patroni's, Redis's and the Sentinels' first
files, haproxy's, written under var/ by :func:`render`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from iot.settings import Settings
from iot.stack.ha import (
    HAPROXY_STATS_PORT,
    REDIS_MASTER_NAME,
    REDIS_PORTS,
    SCOPE,
    SENTINEL_PORTS,
    SENTINEL_QUORUM,
    PgMember,
    etcd_clients,
    host_of,
    pg_members,
)

TTL_SECONDS = 15
LOOP_WAIT_SECONDS = 3
RETRY_TIMEOUT_SECONDS = 6


def patroni_config(s: Settings, member: PgMember, parameters: dict[str, str]) -> dict[str, Any]:
    """Member ``member``'s Patroni configuration. The settings the stack's single Postgres has
    on its command line are the cluster's parameters here (Patroni owns postgresql.conf), with
    ``parameters`` (the WAL archive's) added."""
    h = member.host
    return {
        "scope": SCOPE,
        "name": member.name,
        "restapi": {
            "listen": f"{h}:{member.rest_port}",
            "connect_address": f"{h}:{member.rest_port}",
        },
        "etcd": {"hosts": etcd_clients(s)},
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
    every TCP client with a password, replication included: from this machine, and from each
    host of the data tier (the members replicate from each other; in namespaces, this
    machine's processes come from the bridge's address); the product's other machines from
    ``IOT_HA_CLIENT_NETWORKS`` (no replication)."""
    sources = [s.host, *s.ha_hosts]
    if s.ha_netns:
        from iot.stack import ha_hosts

        sources.append(ha_hosts.GATEWAY)
    unique = [f"{a}/32" for a in dict.fromkeys(sources)]
    return [
        "local all all trust",
        "local replication all trust",
        *(f"host replication replicator {a} scram-sha-256" for a in unique),
        *(f"host all all {a} scram-sha-256" for a in [*unique, *s.ha_client_networks]),
    ]


def redis_conf(s: Settings, i: int) -> str:
    """Member ``i``'s redis.conf: the single Redis's settings on its own port; member 2 starts
    as member 1's replica (Sentinel rewrites ``replicaof`` after a failover)."""
    port = REDIS_PORTS[i - 1]
    lines = [
        "# Rendered by `iotctl up --ha` when missing; Sentinel rewrites it after a failover.",
        f"bind {host_of(s, i)}",
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
        lines.append(f"replicaof {host_of(s, 1)} {REDIS_PORTS[0]}")
    return "\n".join(lines) + "\n"


def sentinel_conf(s: Settings, i: int) -> str:
    """Sentinel ``i``'s first configuration (it rewrites its file with what it learns)."""
    return (
        "\n".join(
            [
                "# Rendered by `iotctl up --ha` when missing; Sentinel rewrites it.",
                f"bind {host_of(s, i)}",
                f"port {SENTINEL_PORTS[i - 1]}",
                "daemonize no",
                f"dir {s.var}/ha/sentinel-{i}",
                f"sentinel monitor {REDIS_MASTER_NAME} {host_of(s, 1)} {REDIS_PORTS[0]} "
                f"{SENTINEL_QUORUM}",
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
        f"    server {m.name} {m.host}:{m.port} check port {m.rest_port}" for m in pg_members(s)
    ]
    redis_servers = [
        f"    server redis-{i} {host_of(s, i)}:{port} check"
        for i, port in enumerate(REDIS_PORTS, 1)
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
            _give_postgres(d)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path.name if path.parent == conf else f"{path.parent.name}.yml")
        path.chmod(0o600)  # passwords
        if path.name == "patroni.yml":
            _give_postgres(path)
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


def _give_postgres(path: Path) -> None:
    """Make ``path`` the postgres user's. Left as it is where that cannot be done: rendering
    for containers (compose/render.py) as a user other than root, or on a machine without
    Postgres's packages; the containers' own directories belong to postgres already."""
    if os.geteuid() != 0:
        return
    try:
        shutil.chown(path, "postgres", "postgres")
    except LookupError:
        return
