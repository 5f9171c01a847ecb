"""Start, stop and inspect the stack through our own supervisord."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import psycopg

from iot.settings import Settings
from iot.stack.processes import Program, external_programs, programs


class ControlError(RuntimeError):
    """The supervisor could not do what was asked; the message says why."""


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = str(path)

    def make_connection(self, host: Any) -> HTTPConnection:
        path = self._path

        class Conn(HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(30)
                self.sock.connect(path)

        conn = Conn("localhost")
        self._connection = (host, conn)  # so Transport.close() closes it
        return conn


class Supervisor:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.conf = s.var / "conf" / "supervisord.conf"
        self.sock = s.var / "run" / "supervisor.sock"
        self.pidfile = s.var / "run" / "supervisord.pid"

    def _call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call to supervisord over its unix socket (closed afterwards)."""
        transport = _UnixTransport(self.sock)
        with xmlrpc.client.ServerProxy("http://localhost", transport=transport) as proxy:
            return getattr(proxy.supervisor, method)(*args)

    def running(self) -> bool:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        try:
            self._call("getState")
            return True
        except (OSError, xmlrpc.client.Error):
            return False

    def start(self) -> None:
        """Start supervisord (which starts every program), or apply a changed config."""
        if self.running():
            self._ctl("update")
            self._ctl("start", "all")
            return
        result = subprocess.run(
            ["/usr/bin/supervisord", "-c", str(self.conf)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ControlError(f"supervisord did not start: {result.stderr or result.stdout}")
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                raise ControlError(
                    f"supervisord did not answer; see {self.s.var}/log/supervisord.log"
                )
            time.sleep(0.2)

    def shutdown(self, timeout: float = 120) -> bool:
        """Stop every program and supervisord itself; returns False if it was not running."""
        if not self.running():
            return False
        pid = int(self.pidfile.read_text().strip())
        self._call("shutdown")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return True
            time.sleep(0.2)
        raise ControlError(f"supervisord (pid {pid}) did not stop within {timeout:.0f}s")

    def info(self) -> dict[str, dict[str, Any]]:
        if not self.running():
            return {}
        return {p["name"]: p for p in self._call("getAllProcessInfo")}

    def signal_program(self, name: str, signal: str) -> None:
        self._ctl("signal", signal, name)

    def stop_program(self, name: str) -> None:
        self._ctl("stop", name)

    def mark_stopping(self, name: str) -> None:
        """Ask the supervisor to stop a program without waiting for it to exit: from then on
        it does not restart the program when its process ends."""
        self._call("stopProcess", name, False)

    def start_program(self, name: str) -> None:
        """Start a program; one already running is fine."""
        try:
            self._ctl("start", name)
        except ControlError as exc:
            if "already started" not in str(exc):
                raise

    def restart_program(self, name: str) -> None:
        self._ctl("restart", name)

    def _ctl(self, *args: str) -> str:
        result = subprocess.run(
            ["/usr/bin/supervisorctl", "-c", str(self.conf), *args], capture_output=True, text=True
        )
        out = (result.stdout + result.stderr).strip()
        if result.returncode != 0 and "ERROR" in out:
            raise ControlError(f"supervisorctl {' '.join(args)}: {out}")
        return out


@dataclass
class Health:
    ok: bool
    detail: str


def probe(p: Program, s: Settings, timeout: float = 2.0) -> Health:
    """Check one program the way its users would reach it."""
    kind, _, target = p.probe.partition(":")
    try:
        if kind == "tcp":
            host, _, port = target.rpartition(":")
            with socket.create_connection((host or s.host, int(port)), timeout=timeout):
                return Health(True, f"port {target} open")
        if kind == "sql":
            with psycopg.connect(s.database_direct_url, connect_timeout=int(timeout)) as conn:
                conn.execute("SELECT 1")
            return Health(True, "accepts queries")
        if kind == "http":
            r = httpx.get(target, timeout=timeout, auth=p.auth)
            if r.status_code == 200:
                return Health(True, "healthy")
            return Health(False, f"HTTP {r.status_code}: {r.text[:120]}")
    except (OSError, httpx.HTTPError, psycopg.Error) as exc:
        return Health(False, f"{exc.__class__.__name__}: {str(exc)[:120]}")
    raise ControlError(f"unknown probe {p.probe!r}")


def wait_healthy(
    s: Settings, names: list[str] | None, timeout: float, progress: Any = None
) -> dict[str, Health]:
    """Probe until every named program is healthy or ``timeout`` passes; return the results."""
    progs = [p for p in programs(s) + external_programs(s) if names is None or p.name in names]
    deadline = time.monotonic() + timeout
    results: dict[str, Health] = {}
    pending = {p.name: p for p in progs}
    while pending:
        for name, p in list(pending.items()):
            results[name] = probe(p, s)
            if results[name].ok:
                del pending[name]
                if progress:
                    progress(name, results[name])
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return results


def rabbitmq_api(
    s: Settings, method: str, path: str, timeout: float = 10, **kw: Any
) -> httpx.Response:
    """One call to our RabbitMQ's management API (``path`` below ``/api/``, vhost ``/`` as
    ``%2F``), with the product's credentials. In the cluster, the first node that answers.

    Raises:
        httpx.HTTPError: no node answered.
    """
    error: httpx.HTTPError | None = None
    for node in s.rabbitmq_nodes:
        try:
            return httpx.request(
                method,
                f"http://{s.rabbitmq_host}:{node.management_port}/api/{path}",
                auth=(s.rabbitmq_user, s.rabbitmq_password),
                timeout=timeout,
                **kw,
            )
        except httpx.TransportError as exc:
            error = exc
    assert error is not None
    raise error


def prometheus_api(
    s: Settings, path: str, params: dict[str, Any] | None = None, timeout: float = 10
) -> httpx.Response:
    """One GET of our Prometheus' HTTP API (``path`` below ``/api/v1/``), with the monitoring
    credentials: what every client of Prometheus uses.

    Raises:
        httpx.HTTPError: no answer.
    """
    return httpx.get(
        f"http://{s.host}:{s.prometheus_port}/api/v1/{path}",
        params=params,
        auth=s.monitoring_auth,
        timeout=timeout,
    )
