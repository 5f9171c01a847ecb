"""Patroni 3 (Debian's) with a three-member etcd: etcd on every host, a Postgres member on the
first two (a primary and a synchronous standby, or an asynchronous one). Patroni's own timing
defaults (ttl 30 s, loop_wait 10 s, retry_timeout 10 s) unless told otherwise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from iot.ha.engines import PG_BIN, Engine, EngineError, Member, chown_postgres
from iot.ha.netns import Host, Net

PG_PORT = 6451  # member i listens on PG_PORT + i - 1: distinct, so their sockets never clash
ETCD_CLIENT = 2379
ETCD_PEER = 2380
REST_PORT = 8008


class Patroni(Engine):
    name = "patroni"

    def __init__(self, net: Net, root: Path, synchronous: bool, ttl: int = 30,
                 loop_wait: int = 10, retry_timeout: int = 10, dcs: str = "etcd3") -> None:
        super().__init__(net, root / "patroni", synchronous)
        self.timing: dict[str, Any] = {"ttl": ttl, "loop_wait": loop_wait,
                                       "retry_timeout": retry_timeout}
        self.dcs = dcs  # "etcd3" (etcd's v3 API) or "etcd" (its v2 API)
        extra = [f"etcd API {'v2' if dcs == 'etcd' else 'v3'}"] if dcs != "etcd3" else []
        if (ttl, loop_wait, retry_timeout) != (30, 10, 10):
            extra.append(f"ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout}")
        self.variant = f" ({'; '.join(extra)})" if extra else ""

    def start(self) -> None:
        hosts = self.net.hosts[:3]
        if len(hosts) < 3:
            raise EngineError("Patroni's bench needs three hosts (etcd's quorum)")
        self.fresh_dir(self.root)
        cluster = ",".join(f"e{i}=http://{h.address}:{ETCD_PEER}"
                           for i, h in enumerate(hosts, 1))
        for i, host in enumerate(hosts, 1):
            self._etcd(i, host, cluster)
        self._wait_etcd(hosts)
        self.members = [
            Member(f"pg{i}", host, PG_PORT + i - 1, self.root / f"pg{i}" / "data")
            for i, host in enumerate(hosts[:2], 1)
        ]
        for i, member in enumerate(self.members):
            self._patroni(member, hosts)
            if i == 0:  # the first bootstraps the cluster, the second clones it
                self._wait_primary(member)

    def _etcd(self, i: int, host: Host, cluster: str) -> None:
        data = self.root / f"etcd{i}"
        data.mkdir(parents=True, exist_ok=True)
        a = host.address
        self.net.spawn(host, [
            "etcd", "--name", f"e{i}", "--data-dir", str(data),
            "--listen-client-urls", f"http://{a}:{ETCD_CLIENT}",
            "--advertise-client-urls", f"http://{a}:{ETCD_CLIENT}",
            "--listen-peer-urls", f"http://{a}:{ETCD_PEER}",
            "--initial-advertise-peer-urls", f"http://{a}:{ETCD_PEER}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "iot-ha-bench", "--enable-v2=true",
        ], self.root / "log" / f"etcd{i}.log")

    def _wait_etcd(self, hosts: list[Host], timeout: float = 60) -> None:
        endpoints = ",".join(f"http://{h.address}:{ETCD_CLIENT}" for h in hosts)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.net.run(hosts[0], ["etcdctl", "--endpoints", endpoints,
                                        "endpoint", "health"], env={"ETCDCTL_API": "3"},
                             timeout=20)
                return
            except Exception as exc:  # noqa: BLE001 - not yet: try again until the deadline
                if time.monotonic() > deadline:
                    raise EngineError(f"etcd not healthy: {exc}") from exc
                time.sleep(1)

    def config(self, member: Member, hosts: list[Host]) -> dict[str, Any]:
        """The member's Patroni configuration."""
        subnet = f"{hosts[0].address.rsplit('.', 1)[0]}.0/24"
        run_dir = member.data_dir.parent / "run"
        return {
            "scope": "iot-ha-bench",
            "name": member.name,
            "restapi": {"listen": f"{member.address}:{REST_PORT}",
                        "connect_address": f"{member.address}:{REST_PORT}"},
            self.dcs: {"hosts": [f"{h.address}:{ETCD_CLIENT}" for h in hosts]},
            "bootstrap": {
                "dcs": {
                    **self.timing,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_log_hints": "on", "max_connections": 50,
                                       "shared_buffers": "64MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
                "pg_hba": [
                    "local all all trust",
                    f"host all all {subnet} trust",
                    "host all all 127.0.0.1/32 trust",
                    f"host replication replicator {subnet} trust",
                    "host replication replicator 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"{member.address},127.0.0.1:{member.port}",
                "connect_address": f"{member.address}:{member.port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(member.data_dir.parent / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "bench"},
                    "replication": {"username": "replicator", "password": "bench"},
                    "rewind": {"username": "postgres", "password": "bench"},
                },
                "parameters": {"unix_socket_directories": str(run_dir)},
            },
        }

    def _patroni(self, member: Member, hosts: list[Host]) -> None:
        home = member.data_dir.parent
        home.mkdir(parents=True, exist_ok=True)
        chown_postgres(home)
        run_dir = home / "run"
        run_dir.mkdir(exist_ok=True)
        chown_postgres(run_dir)
        conf = home / "patroni.yml"
        conf.write_text(yaml.safe_dump(self.config(member, hosts), sort_keys=False))
        self.net.spawn(member.host, ["/usr/bin/patroni", str(conf)],
                       self.root / "log" / f"{member.name}.log", user="postgres")

    def _wait_primary(self, member: Member, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(member.dsn(), autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row and not row[0]:
                        return
            except psycopg.Error:
                pass
            time.sleep(1)
        raise EngineError(f"{member.name} did not become primary in {timeout:.0f} s")
