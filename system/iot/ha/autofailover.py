"""pg_auto_failover 2.0 (Debian's): a monitor on the third host, a Postgres node on each of the
first two. Synchronous by default (the standby counts in the replication quorum); asynchronous
when the standby is taken out of the quorum. Its own timing defaults."""

from __future__ import annotations

import time
from pathlib import Path

from iot.ha.engines import PG_BIN, Engine, EngineError, Member, chown_postgres, role
from iot.ha.netns import Host, Net

MONITOR_PORT = 6460
NODE_PORT = 6461  # node i listens on NODE_PORT + i - 1 (distinct sockets in /var/run/postgresql)


class AutoFailover(Engine):
    name = "pg_auto_failover"

    def __init__(self, net: Net, root: Path, synchronous: bool) -> None:
        super().__init__(net, root / "pgaf", synchronous)
        self.monitor_host: Host | None = None

    def _env(self, home: Path) -> dict[str, str]:
        return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_DATA_HOME": str(home / "share"), "XDG_RUNTIME_DIR": str(home / "run"),
                "PG_CONFIG": str(PG_BIN / "pg_config")}

    def _home(self, name: str) -> Path:
        home = self.root / name
        for sub in ("", "config", "share", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
            chown_postgres(home / sub)
        return home

    def start(self) -> None:
        hosts = self.net.hosts[:3]
        if len(hosts) < 3:
            raise EngineError("pg_auto_failover's bench needs three hosts")
        self.fresh_dir(self.root)
        self.monitor_host = hosts[2]
        home = self._home("monitor")
        self.net.spawn(self.monitor_host, [
            "pg_autoctl", "create", "monitor", "--pgdata", str(home / "pgdata"),
            "--pgport", str(MONITOR_PORT), "--hostname", self.monitor_host.address,
            "--auth", "trust", "--no-ssl", "--pgctl", str(PG_BIN / "pg_ctl"), "--run",
        ], self.root / "log" / "monitor.log", user="postgres", env=self._env(home))
        self._wait_monitor()
        self.members = []
        for i, host in enumerate(hosts[:2], 1):
            node_home = self._home(f"node{i}")
            member = Member(f"node{i}", host, NODE_PORT + i - 1, node_home / "pgdata")
            self.members.append(member)
            self.net.spawn(host, [
                "pg_autoctl", "create", "postgres", "--pgdata", str(member.data_dir),
                "--pgport", str(member.port), "--hostname", host.address,
                "--name", member.name, "--auth", "trust", "--no-ssl", "--pg-hba-lan",
                "--pgctl", str(PG_BIN / "pg_ctl"), "--monitor", self.monitor_uri,
                "--run",
            ], self.root / "log" / f"{member.name}.log", user="postgres",
                env=self._env(node_home))
            if i == 1:
                self._wait_role(member, "primary")
        if not self.synchronous:
            self._wait_role(self.members[1], "standby")
            standby = self.members[1]
            self.net.run(standby.host, [
                "pg_autoctl", "set", "node", "replication-quorum", "false",
                "--pgdata", str(standby.data_dir),
            ], user="postgres", env=self._env(standby.data_dir.parent))

    @property
    def monitor_uri(self) -> str:
        assert self.monitor_host
        return (f"postgres://autoctl_node@{self.monitor_host.address}:{MONITOR_PORT}"
                "/pg_auto_failover?sslmode=disable")

    def _wait_monitor(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        assert self.monitor_host
        while time.monotonic() < deadline:
            try:
                self.net.run(self.monitor_host, [
                    str(PG_BIN / "psql"), "-h", self.monitor_host.address,
                    "-p", str(MONITOR_PORT), "-U", "autoctl_node", "-d", "pg_auto_failover",
                    "-c", "SELECT 1"], timeout=10)
                return
            except Exception:  # noqa: BLE001 - not yet
                time.sleep(1)
        raise EngineError(f"the pg_auto_failover monitor did not answer in {timeout:.0f} s")

    def _wait_role(self, member: Member, wanted: str, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if role(member) == wanted:
                return
            time.sleep(1)
        raise EngineError(f"{member.name} not {wanted} after {timeout:.0f} s")

    def state(self) -> str:
        """The monitor's view (``pg_autoctl show state``), for the report's notes."""
        assert self.monitor_host
        home = self.root / "monitor"
        try:
            return self.net.run(self.monitor_host, [
                "pg_autoctl", "show", "state", "--pgdata", str(home / "pgdata")],
                user="postgres", env=self._env(home), timeout=20)
        except Exception as exc:  # noqa: BLE001 - a note, not a failure
            return f"(no state: {exc})"
