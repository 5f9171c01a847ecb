"""What the running stack exposes to other users of the machine and to the network: every
socket of our processes listens on loopback only (RabbitMQ's Erlang distribution included),
no secret is on a process's command line (``ps`` shows those to every local user) or in a log,
and the files holding secrets are readable by their owner only."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from iot.settings import Settings
from iot.stack.control import Supervisor
from iot.stack.roles import ROLES

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "[::1]", "::1"}
EPMD_PORT = 4369
_PID = re.compile(r"pid=(\d+)")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        tree.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    return tree


def stack_pids(stack: Supervisor) -> set[int]:
    """Every process supervisord runs for us, with all their descendants."""
    tree = _children()
    todo = [p["pid"] for p in stack.info().values() if p["pid"]]
    assert todo, "supervisord runs no process"
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += tree.get(pid, [])
    return seen


def listening() -> list[tuple[str, int, str, set[int]]]:
    """(address, port, ss's process column, pids) of every listening TCP and UDP socket."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    sockets = []
    for line in out.splitlines():
        # netid state recv-q send-q local peer [users:((...))]
        parts = line.split(None, 6)
        address, _, port = parts[4].rpartition(":")
        users = parts[6] if len(parts) > 6 else ""
        sockets.append((address, int(port), users, {int(p) for p in _PID.findall(users)}))
    return sockets


def test_every_socket_of_the_stack_listens_on_loopback_only(
    stack: Supervisor, settings: Settings
) -> None:
    ours = stack_pids(stack)
    sockets = listening()
    # epmd daemonizes (it is not below supervisord); it serves only our RabbitMQ node.
    mine = [s for s in sockets if s[3] & ours or (s[1] == EPMD_PORT and "epmd" in s[2])]
    ports = {s[1] for s in mine}
    expected = {
        settings.http_port,
        settings.https_port,
        settings.rabbitmq_port,
        settings.rabbitmq_dist_port,
        EPMD_PORT,
        settings.postgres_port,
        settings.redis_port,
        settings.flower_port,
        *settings.api_ports,
    }
    assert expected <= ports, f"not found listening: {sorted(expected - ports)}"
    exposed = [f"{a}:{p} {u}" for a, p, u, _ in mine if a not in LOOPBACK]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def _secrets(settings: Settings) -> dict[str, str]:
    values = {
        "secret_key": settings.secret_key,
        "postgres_password": settings.postgres_password,
        "rabbitmq_password": settings.rabbitmq_password,
        "redis_password": settings.redis_password,
        "flower_password": settings.flower_password,
        "monitoring_password": settings.monitoring_password,
        **{f"postgres_{r}_password": settings.postgres_role(r)[1] for r in ROLES},
    }
    assert all(len(v) >= 16 for v in values.values()), "the stack runs with short secrets"
    return values


def test_no_secret_on_a_command_line(stack: Supervisor, settings: Settings) -> None:
    found = []
    for pid in stack_pids(stack):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile
        found += [
            f"{name} in pid {pid}: {args[:80]}"
            for name, v in _secrets(settings).items()
            if v in args
        ]
    assert not found, "\n".join(found)


def test_no_secret_in_a_log(settings: Settings) -> None:
    secrets = {name: v.encode() for name, v in _secrets(settings).items()}
    logs = sorted((settings.var / "log").glob("*.log"))
    assert logs
    found = [
        f"{name} in {log.name}"
        for log in logs
        for name, v in secrets.items()
        if v in log.read_bytes()
    ]
    assert not found, found


def test_files_with_secrets_are_readable_by_their_owner_only(settings: Settings) -> None:
    files = [settings.var / "secrets.env", *sorted((settings.var / "conf").iterdir())]
    loose = [
        f"{f}: {stat.filemode(f.stat().st_mode)}"
        for f in files
        if f.is_file() and f.stat().st_mode & 0o077
    ]
    assert not loose, loose
