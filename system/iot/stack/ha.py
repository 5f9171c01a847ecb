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

Three hosts (``IOT_HA_HOSTS``; by default all of them IOT_HOST): host N runs etcd-N and
Sentinel N, and patroni-N and redis-N for N = 1, 2. With ``IOT_HA_NETNS`` the hosts are
network namespaces of this machine (``ha_hosts.py``), so that one can be cut off for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from iot.settings import Settings
from iot.stack.placement import role_of

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


@dataclass(frozen=True)
class PgMember:
    name: str  # patroni-1, patroni-2: its program's name too
    port: int
    rest_port: int
    home: Path  # var/ha/<name>: patroni.yml, pgpass
    data_dir: Path
    socket_dir: Path
    host: str  # the address it listens on and is reached at


def host_of(s: Settings, n: int) -> str:
    """The address of the data tier's host ``n`` (1-3)."""
    return s.ha_hosts[n - 1] if s.ha_hosts else s.host


def on_host(s: Settings, n: int, command: list[str], user: str | None = None) -> list[str]:
    """``command`` as the supervisor runs it on host ``n``: unchanged on this machine (the
    supervisor switches to ``user``), inside host ``n``'s namespace with ``IOT_HA_NETNS``."""
    if not s.ha_netns:
        return command
    from iot.stack import ha_hosts

    return ha_hosts.host(n).exec_argv(*command, user=user)


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
        out.append(PgMember(f"patroni-{i}", port, rest, home, data, run, host_of(s, i)))
    return out


ENGINES = ("/usr/bin/patroni", "/usr/bin/etcd", "/usr/sbin/haproxy", "/usr/bin/redis-sentinel")


def engines_installed() -> bool:
    """Whether the programs ``--ha`` runs are installed (``scripts/setup.sh --ha``)."""
    return all(Path(p).exists() for p in ENGINES)


def etcd_cluster(s: Settings) -> str:
    return ",".join(
        f"etcd-{i}=http://{host_of(s, i)}:{peer}" for i, peer in enumerate(ETCD_PEER_PORTS, 1)
    )


def etcd_clients(s: Settings) -> list[str]:
    """host:port of every etcd member's client listener."""
    return [f"{host_of(s, i)}:{p}" for i, p in enumerate(ETCD_CLIENT_PORTS, 1)]


def sentinels(s: Settings) -> list[tuple[str, int]]:
    """(host, port) of every Sentinel."""
    return [(host_of(s, i), p) for i, p in enumerate(SENTINEL_PORTS, 1)]


def etcd_command(s: Settings, i: int) -> list[str]:
    client, peer = ETCD_CLIENT_PORTS[i - 1], ETCD_PEER_PORTS[i - 1]
    h = host_of(s, i)
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


def program_specs(s: Settings) -> list[dict[str, Any]]:
    """The processes of the HA data tier, as ``processes.Program`` arguments (in place of the
    single ``postgres`` and ``redis``)."""
    h = s.host
    specs: list[dict[str, Any]] = []
    for i, client in enumerate(ETCD_CLIENT_PORTS, 1):
        specs.append(
            {
                "name": f"etcd-{i}",
                "command": on_host(s, i, etcd_command(s, i)),
                "group": "data",
                "priority": 5,
                "probe": f"http:http://{host_of(s, i)}:{client}/health",
                "url": f"http://{host_of(s, i)}:{client}",
            }
        )
    join = str(Path(__file__).with_name("ha_join.py"))
    etcd = [f"http://{a}" for a in etcd_clients(s)]
    for i, m in enumerate(pg_members(s)):
        conf = str(m.home / "patroni.yml")
        # the first member takes over (or creates) the cluster; the others wait for it to
        # exist, so that none of them bootstraps an empty one of its own (ha_join.py)
        command = (
            ["/usr/bin/patroni", conf]
            if i == 0
            else ["/usr/bin/python3", join, "patroni", str(m.data_dir), conf, *etcd]
        )
        spec = {
            "name": m.name,
            "command": on_host(s, i + 1, command, user="postgres"),
            "group": "data",
            "priority": 10,
            # 200 while its Postgres runs, primary or standby
            "probe": f"http:http://{m.host}:{m.rest_port}/health",
            "url": f"postgresql://{m.host}:{m.port}/{s.postgres_db}",
            "stopwaitsecs": 60,
        }
        if not s.ha_netns:  # in a namespace, setpriv switches (on_host)
            spec["user"] = "postgres"
        specs.append(spec)
    redis = [
        ("redis", "redis-server", REDIS_PORTS, 10),
        ("sentinel", "redis-sentinel", SENTINEL_PORTS, 11),
    ]
    sentinel_args = [f"{a}:{p}" for a, p in sentinels(s)]
    for kind, binary, ports, priority in redis:
        for i, port in enumerate(ports, 1):
            path = str(s.var / "ha" / f"{kind}-{i}" / f"{kind}.conf")
            # a Redis member starts as the replica of whoever the Sentinels name master now
            # (ha_join.py), never as a second master
            command = (
                ["/usr/bin/python3", join, "redis", path, *sentinel_args]
                if kind == "redis"
                else [f"/usr/bin/{binary}", path]
            )
            specs.append(
                {
                    "name": f"{kind}-{i}",
                    "command": on_host(s, i, command),
                    "group": "data",
                    "priority": priority,
                    "probe": f"tcp:{host_of(s, i)}:{port}",
                    "url": f"redis://{host_of(s, i)}:{port}",
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

    def listed(ports: tuple[int, ...], hosts: list[str] | None = None) -> str:
        addresses = hosts or [host_of(s, i) for i in range(1, len(ports) + 1)]
        return ", ".join(f'"{a}:{p}"' for a, p in zip(addresses, ports, strict=True)) if on else ""

    return {
        "patroni_targets": listed(PATRONI_REST_PORTS),
        "etcd_targets": listed(ETCD_CLIENT_PORTS),
        "haproxy_targets": listed((HAPROXY_STATS_PORT,), [h]),  # haproxy: on this machine
        "sentinel_targets": listed(SENTINEL_PORTS),
    }


def postmaster_pid(member: PgMember) -> int | None:
    """The pid of the member's running Postgres (its ``postmaster.pid``), or None."""
    try:
        pid = int((member.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def postmasters(s: Settings) -> dict[str, int]:
    """Each member's running Postgres: ``<member>-postgres`` -> its postmaster's pid. Patroni
    starts Postgres detached (its parent is init), so CPU read from Patroni's process tree
    leaves Postgres out: benches and load reports count these trees too."""
    out = {}
    for m in pg_members(s):
        pid = postmaster_pid(m)
        if pid is not None:
            out[f"{m.name}-postgres"] = pid
    return out


def primary(s: Settings, timeout: float = 2.0) -> PgMember | None:
    """The member Patroni says is the primary now (its REST API's ``GET /primary`` answers 200
    on the primary alone), or None."""
    for m in pg_members(s):
        try:
            if (
                httpx.get(f"http://{m.host}:{m.rest_port}/primary", timeout=timeout).status_code
                == 200
            ):
                return m
        except httpx.HTTPError:
            continue
    return None


def place(s: Settings) -> list[str]:
    """Before the members start: their hosts exist (namespaces with ``IOT_HA_NETNS``), and
    when the members moved to other addresses since they last ran, what holds the old ones
    is removed: etcd's data (its members' peer addresses; Patroni writes the cluster into the
    new etcd from patroni-1's data), Redis's and the Sentinels' files (rendered again), the
    standby's copy (copied again). Returns what was removed."""
    if s.ha_netns:
        from iot.stack import ha_hosts

        ha_hosts.ensure()
    record = s.var / "ha" / "hosts"
    where = ",".join(host_of(s, n) for n in (1, 2, 3)) + "\n"
    # no record: the members ran (if they ever did) before hosts were recorded, on IOT_HOST
    before = record.read_text() if record.exists() else ",".join([s.host] * 3) + "\n"
    removed: list[str] = []
    if before != where:
        for i in range(1, len(ETCD_CLIENT_PORTS) + 1):
            if (s.var / "ha" / f"etcd-{i}").exists():
                shutil.rmtree(s.var / "ha" / f"etcd-{i}")
                removed.append(f"etcd-{i}")
        for kind in ("redis", "sentinel"):
            for conf in sorted((s.var / "ha").glob(f"{kind}-*/{kind}.conf")):
                conf.unlink()
                removed.append(conf.parent.name)
        removed += forget_standbys(s)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(where)
    return removed


def forget_standbys(s: Settings) -> list[str]:
    """Remove the data of every Postgres member but the first, before ``--ha`` starts them
    again after the single Postgres ran on the first one's data: they are behind it by
    everything written meanwhile, and Patroni may promote the synchronous standby it last knew
    before the first member is up (those writes would be lost). Without data a member copies
    the primary afresh (ha_join.py keeps it from bootstrapping a cluster of its own). Returns
    the members whose data was removed."""
    stop_leftover_postgres(s)
    removed = []
    for m in pg_members(s)[1:]:
        if m.data_dir.exists():
            shutil.rmtree(m.data_dir)
            removed.append(m.name)
    return removed


def stop_leftover_postgres(s: Settings, timeout: float = 60.0) -> list[str]:
    """Stop a member's Postgres that outlived its Patroni (by the pid in its data directory's
    postmaster.pid), once the Patroni programs are stopped. Patroni stopped while it was
    restarting its Postgres (a standby after a switchover) leaves that Postgres running: it
    would hold its port and data directory, and patroni-1's is the single Postgres's. Returns
    the members whose Postgres was stopped."""
    stopped = []
    for m in pg_members(s):
        pid = postmaster_pid(m)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGINT)  # a fast shutdown
        except OSError:
            continue  # gone meanwhile
        stopped.append(m.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.5)
    return stopped


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
        f"http://{leader.host}:{leader.rest_port}/switchover",
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
    # and the old leader back as a running standby: stopped while Patroni restarts its
    # Postgres, that Postgres would outlive it
    while time.monotonic() < deadline:
        try:
            state = httpx.get(f"http://{leader.host}:{leader.rest_port}/patroni", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            state = {}
        if state.get("role") == "replica" and state.get("state") == "running":
            break
        time.sleep(1)
    return leader.name


class NoPrimary(RuntimeError):
    """No Postgres member is primary (a failover in progress, or the cluster not up)."""


def superuser_address(s: Settings, timeout: float = 60.0) -> dict[str, Any]:
    """How this machine's superuser tools (roles and databases, backups) reach the Postgres
    primary, as psycopg's connection arguments: over its socket when the primary's member
    runs here (and always without ``--ha``), else over TCP with Patroni's superuser password
    (a machine of the product's roles, the members on machines of their own: IOT_ROLES
    without that host's data-N).

    Raises:
        NoPrimary: no member became primary within ``timeout``.
    """
    if s.ha:
        member = _wait_primary(s, timeout)
        if role_of(member.name) not in s.roles:
            return {
                "host": member.host,
                "port": member.port,
                "password": s.postgres_superuser_password,
            }
    socket_dir, port = local_postgres(s, timeout)
    return {"host": str(socket_dir), "port": port}


def _wait_primary(s: Settings, timeout: float) -> PgMember:
    deadline = time.monotonic() + timeout
    while True:
        member = primary(s)
        if member is not None:
            return member
        if time.monotonic() > deadline:
            raise NoPrimary(
                f"no Postgres member is primary after {timeout:g} s: see `iotctl logs patroni-1`"
                " and `iotctl logs patroni-2` where they run"
            )
        time.sleep(1)


def local_postgres(s: Settings, timeout: float = 60.0) -> tuple[Path, int]:
    """(socket directory, port) of the Postgres that this machine's superuser tools use (roles
    and databases, migrations' bootstrap, backups): the single Postgres, or with ``--ha`` the
    current primary (waiting up to ``timeout`` for one).

    Raises:
        NoPrimary: no member became primary within ``timeout``.
    """
    if not s.ha:
        return s.var / "run" / "postgres", s.postgres_port
    member = _wait_primary(s, timeout)
    return member.socket_dir, member.port


def redis_masters(s: Settings, timeout: float = 2.0) -> list[str]:
    """The Redis members (``redis-1``, ...) that say ``role:master`` now."""
    import redis

    out = []
    for i, port in enumerate(REDIS_PORTS, 1):
        client = redis.Redis(
            host=host_of(s, i), port=port, password=s.redis_password, socket_timeout=timeout
        )
        try:
            if client.info("replication").get("role") == "master":
                out.append(f"redis-{i}")
        except (redis.RedisError, OSError):
            continue
        finally:
            client.close()
    return out
