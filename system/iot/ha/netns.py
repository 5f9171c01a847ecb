"""Test hosts: network namespaces joined by one bridge, each with its own address, so that a
host can be cut off for real (its link down), not through a proxy.

The namespaces, the bridge and every process started in them belong to the bench; ``close``
ends those processes (by the pids ``ip netns pids`` lists, which are ours) and removes them.
Needs root (``ip netns``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "iotha"
SUBNET = "10.77.0"  # 10.77.0.1 the bridge (the client's side), 10.77.0.11.. the hosts
LOADRUN_LOCK = Path("/tmp/loadrun.lock")


class NetError(RuntimeError):
    """A namespace, link or address could not be set up."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def wait_while_measuring(say: object = None) -> None:
    """Someone measures CPU while /tmp/loadrun.lock exists: start nothing until it is gone."""
    told = False
    while LOADRUN_LOCK.exists():
        if not told and callable(say):
            say(f"{LOADRUN_LOCK} exists (a CPU measurement): waiting")
            told = True
        time.sleep(5)


class Measuring(RuntimeError):
    """/tmp/loadrun.lock appeared: someone measures CPU, the bench must go idle."""


def pause_point() -> None:
    """Called in the bench's waits: stop the current run when a CPU measurement starts."""
    if LOADRUN_LOCK.exists():
        raise Measuring(f"{LOADRUN_LOCK} appeared")


def sleep(seconds: float) -> None:
    """``time.sleep`` that gives way to a CPU measurement (raises Measuring)."""
    deadline = time.monotonic() + seconds
    while True:
        pause_point()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


@dataclass
class Host:
    name: str  # the namespace
    address: str
    outer: str  # the veth end on the bridge, in the root namespace

    def argv(self, *command: str, user: str | None = None) -> list[str]:
        """``command`` run inside this host (as ``user`` when given)."""
        prefix = ["ip", "netns", "exec", self.name]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        return [*prefix, *command]

    def exec_argv(self, *command: str, user: str | None = None) -> list[str]:
        """As :meth:`argv`, but every step execs the next (``ip netns exec``, ``setpriv``): the
        pid a supervisor starts is the command's own, so its signals reach the command."""
        prefix = ["/usr/sbin/ip", "netns", "exec", self.name]
        if user:
            prefix += ["/usr/bin/setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                       "--"]
        return [*prefix, *command]


@dataclass
class Net:
    count: int
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # the bench's by default; the stack's hosts (``iotctl up --ha`` with IOT_HA_NETNS) have
    # their own prefix and subnet, so that neither removes the other's
    prefix: str = PREFIX
    subnet: str = SUBNET

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    def planned(self) -> list[Host]:
        return [Host(f"{self.prefix}{i}", f"{self.subnet}.{10 + i}", f"{self.prefix}{i}-o")
                for i in range(1, self.count + 1)]

    def attach(self) -> Net | None:
        """The hosts as an earlier ``open`` left them, without touching them; None when any
        of them is missing."""
        if set(h.name for h in self.planned()) - set(_namespaces(self.prefix)):
            return None
        self.hosts = self.planned()
        self.allow_forwarding()
        return self

    def open(self) -> Net:
        """Create the bridge and ``count`` hosts (left over ones of an earlier run removed)."""
        self.close()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.planned():
            ip("netns", "add", host.name)
            ip("link", "add", host.outer, "type", "veth", "peer", "name", "eth0",
                "netns", host.name)
            ip("link", "set", host.outer, "master", self.bridge)
            ip("link", "set", host.outer, "up")
            ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.name, "link", "set", "eth0", "up")
            ip("-n", host.name, "link", "set", "lo", "up")
            self.hosts.append(host)
        self.allow_forwarding()
        return self

    def _forward_rule(self) -> list[str]:
        return ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    def allow_forwarding(self) -> None:
        """Let the hosts reach each other across the bridge whatever the firewall's FORWARD
        policy. A Docker engine on the machine sets it to DROP and makes bridged traffic pass
        through iptables: without this rule the hosts lose each other (etcd without a
        majority, no primary) as soon as dockerd starts."""
        if shutil.which("iptables") is None:
            return
        rule = self._forward_rule()
        if subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode != 0:
            subprocess.run(["iptables", "-I", *rule], capture_output=True, check=False)

    def host(self, address: str) -> Host:
        return next(h for h in self.hosts if h.address == address)

    def spawn(self, host: Host, command: list[str], log: Path, user: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``host``, its output appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = host.argv(*(["env", *(f"{k}={v}" for k, v in (env or {}).items())]
                           if env else []), *command, user=user)
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, host: Host, command: list[str], user: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run ``command`` inside ``host`` to its end; its output, or NetError."""
        argv = host.argv(*(["env", *(f"{k}={v}" for k, v in (env or {}).items())]
                           if env else []), *command, user=user)
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
        if done.returncode:
            raise NetError(f"{' '.join(command)} in {host.name}: "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    def cut(self, host: Host) -> None:
        """Cut ``host`` off the bridge: its link down, every other host and the client lose it."""
        ip("link", "set", host.outer, "down")

    def heal(self, host: Host) -> None:
        ip("link", "set", host.outer, "up")

    def stop_processes(self, grace: float = 10) -> None:
        """End every process started in the hosts: TERM, then KILL after ``grace`` seconds."""
        pids = self._pids()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._pids():
            time.sleep(0.2)
        for pid in self._pids():
            _signal(pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def _pids(self) -> list[int]:
        pids: list[int] = []
        for name in _namespaces(self.prefix):
            out = ip("netns", "pids", name, check=False).stdout
            pids += [int(p) for p in out.split()]
        return pids

    def close(self) -> None:
        """Processes, namespaces and bridge gone (also those an interrupted run left)."""
        self.stop_processes()
        for name in _links(self.prefix):  # before the namespaces: their peers go with them
            ip("link", "del", name, check=False)
        for name in _namespaces(self.prefix):
            ip("netns", "del", name, check=False)
        if ip("link", "show", self.bridge, check=False).returncode == 0:
            ip("link", "del", self.bridge, check=False)
        if shutil.which("iptables") is not None:
            while subprocess.run(
                ["iptables", "-D", *self._forward_rule()], capture_output=True
            ).returncode == 0:
                pass
        self.hosts.clear()


def _namespaces(prefix: str = PREFIX) -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix)]


def _links(prefix: str = PREFIX) -> list[str]:
    """The veth ends of ``prefix``'s hosts in the root namespace (``iothaN-o``)."""
    out = ip("-br", "link", "show", check=False).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix)
            and line.split()[0].split("@")[0] != f"{prefix}-br0"]


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and then its children at once: a crash of the whole process tree."""
    kids = children(pid)
    _signal(pid, signal.SIGKILL)
    for kid in kids:
        _signal(kid, signal.SIGKILL)
