"""What every failover engine offers the bench: its Postgres members, who is primary, killing a
member's postgres, and whether a member follows the primary again. Roles are read from Postgres
itself, not from the engine, so that both engines are judged alike."""

from __future__ import annotations

import os
import pwd
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from iot.ha.netns import Host, Net, kill_tree

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "postgres"
USER = "postgres"


class EngineError(RuntimeError):
    """An engine did not come up, or did not answer as expected."""


@dataclass
class Member:
    name: str
    host: Host
    port: int
    data_dir: Path

    @property
    def address(self) -> str:
        return self.host.address

    def dsn(self, timeout: int = 2) -> str:
        return (f"host={self.address} port={self.port} dbname={DATABASE} user={USER} "
                f"connect_timeout={timeout}")


def role(member: Member) -> str:
    """``primary``, ``standby`` (streaming from a primary), ``recovering`` (in recovery, not
    streaming) or ``down``: asked of the member's Postgres over the bridge."""
    try:
        with psycopg.connect(member.dsn(), autocommit=True) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if in_recovery and not in_recovery[0]:
                return "primary"
            streaming = conn.execute(
                "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            ).fetchone()
            return "standby" if streaming and streaming[0] else "recovering"
    except psycopg.Error:
        return "down"


def postmaster_pid(member: Member) -> int | None:
    try:
        return int((member.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Engine:
    """One engine's cluster on the bench's hosts. Subclasses start and stop it."""

    name = "engine"
    variant = ""  # settings that differ from the engine's defaults, for the report

    def __init__(self, net: Net, root: Path, synchronous: bool) -> None:
        self.net = net
        self.root = root
        self.synchronous = synchronous
        self.members: list[Member] = []

    @property
    def label(self) -> str:
        return f"{self.name} ({'sync' if self.synchronous else 'async'})"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.net.stop_processes()

    def hosts_dsn(self, timeout: int = 2) -> str:
        """The libpq multi-host string of every member, for a client that wants the primary."""
        hosts = ",".join(m.address for m in self.members)
        ports = ",".join(str(m.port) for m in self.members)
        return (f"host={hosts} port={ports} dbname={DATABASE} user={USER} "
                f"connect_timeout={timeout} target_session_attrs=read-write "
                "tcp_user_timeout=3000 keepalives_idle=2 keepalives_interval=1 "
                "keepalives_count=2")

    def roles(self) -> dict[str, str]:
        return {m.name: role(m) for m in self.members}

    def primary(self) -> Member | None:
        found = [m for m in self.members if role(m) == "primary"]
        return found[0] if len(found) == 1 else None

    def wait_healthy(self, timeout: float = 180) -> Member:
        """One primary and every other member streaming from it."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = self.roles()
            if sorted(seen.values()) == ["primary"] + ["standby"] * (len(seen) - 1):
                if self.replication_ready():
                    primary = self.primary()
                    if primary:
                        return primary
            time.sleep(1)
        raise EngineError(f"{self.label} not healthy after {timeout:.0f} s: {seen}")

    def replication_ready(self) -> bool:
        """Sync mode: the primary names a synchronous standby; async: always."""
        if not self.synchronous:
            return True
        primary = self.primary()
        if primary is None:
            return False
        try:
            with psycopg.connect(primary.dsn(), autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN "
                    "('sync', 'quorum')"
                ).fetchone()
                return bool(row and row[0])
        except psycopg.Error:
            return False

    def kill_postgres(self, member: Member) -> None:
        pid = postmaster_pid(member)
        if pid is None:
            raise EngineError(f"no postmaster.pid for {member.name}")
        kill_tree(pid)

    def fresh_dir(self, path: Path) -> Path:
        """An empty folder owned by the postgres user."""
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, mode=0o700)
        chown_postgres(path)
        return path


def chown_postgres(path: Path) -> None:
    pw = pwd.getpwnam(USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
