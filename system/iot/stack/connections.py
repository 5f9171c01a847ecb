"""Connections as a capacity dimension: how many nginx workers, connection slots, open files and
listen backlogs the edge and the API replicas need to hold a number of long-polling devices.

A device keeps one keep-alive connection to nginx and holds a long poll on it most of the time.
While a poll waits it costs **two connections in nginx** (the device's and the upstream one to
a replica) and **one in the replica**. An idle upstream connection kept for reuse (nginx's
``keepalive`` cache) is one of those upstream connections between two requests, so caching a
worker's whole share adds no connection beyond the peak. Every process may have at most
``fd_limit`` open files (the hard limit, which a process without CAP_SYS_RESOURCE cannot raise),
so more connections need more processes: nginx workers (event loops, mostly idle per
connection: more of them than cores is fine) and API replicas.

:func:`derive` is pure arithmetic (tested without a stack); :func:`for_settings` feeds it the
settings and what this machine allows (the hard open-files limit, ``net.core.somaxconn``).
docs/decisions.md, "Connections (2026-12-07)", explains the numbers.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path

from iot.settings import Settings

# Open files one process may have: the hard limit on the development machine (`ulimit -Hn`).
PROCESS_FD_LIMIT = 20_000
# Connections a waiting long poll holds: the device's and the upstream one in nginx ...
NGINX_CONNECTIONS_PER_DEVICE = 2
# ... and the upstream one in the replica that holds the poll.
API_CONNECTIONS_PER_DEVICE = 1
# Open files a process needs besides its connections: logs, epoll, the other workers' listening
# sockets (reuseport), temporary files of buffered bodies; in a replica its Postgres, Redis and
# RabbitMQ connections and Python's own files.
FD_RESERVE = 256
# nginx connection slots a worker uses for itself: the status listener, its own HTTP and HTTPS
# listeners (reuseport) and the channel to the master.
NGINX_OWN_CONNECTIONS = 4
# A worker is planned at half its open files: connections spread unevenly over workers, and
# devices that reconnect (a network blip) hold their old connection until nginx notices it.
NGINX_PLANNED_SHARE = 0.5
# A replica is planned at 80% of its open files, where ConnectionsNearLimit opens a ticket:
# replicas cost a Python process each, workers of nginx a few megabytes.
API_PLANNED_SHARE = 0.8
MIN_NGINX_WORKERS = 2  # the fixed value before this derivation: the cores of a small machine
MIN_NGINX_WORKER_CONNECTIONS = 1024
NGINX_MIN_BACKLOG = 511  # nginx's default on Linux
API_MIN_BACKLOG = 2048  # uvicorn's default
DEFAULT_SOMAXCONN = 4096  # Linux's default since 5.4
# Source ports one machine has for connections to one address and port (the default
# net.ipv4.ip_local_port_range, 32768-60999): an edge's upstream connections to one replica.
EPHEMERAL_PORTS = 60999 - 32768 + 1
SOMAXCONN_PATH = Path("/proc/sys/net/core/somaxconn")


class ConnectionsError(ValueError):
    """Parameters out of range; the message says which."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What ``iotctl up`` sets for ``devices`` device connections, and what it implies."""

    devices: int
    fd_limit: int
    somaxconn: int
    nginx_workers: int  # worker_processes
    nginx_devices_per_worker: int
    nginx_worker_connections: int  # worker_connections: slots per worker
    nginx_rlimit_nofile: int  # worker_rlimit_nofile
    nginx_keepalive: int  # idle upstream connections cached per worker
    nginx_backlog: int  # listen backlog of each worker's socket (reuseport)
    nginx_device_capacity: int  # devices nginx holds at most, each with a poll waiting
    api_replicas: int  # replicas the devices are spread over
    api_connections_per_replica: int
    api_connections_planned: int  # per replica: API_PLANNED_SHARE of its open files
    api_replicas_needed: int
    api_backlog: int  # uvicorn's listen backlog
    supervisor_minfds: int  # supervisord's minfds: the open-files limit every program inherits

    @property
    def api_replicas_short(self) -> bool:
        """Too few replicas: each would hold more connections than planned."""
        return self.api_replicas < self.api_replicas_needed


def nginx_workers_needed(devices: int, fd_limit: int = PROCESS_FD_LIMIT) -> int:
    """The fewest nginx workers that hold ``devices`` long polls with each worker at
    ``NGINX_PLANNED_SHARE`` of ``fd_limit`` (at least ``MIN_NGINX_WORKERS``).

    Raises:
        ConnectionsError: fewer than one device, or a limit too small for even one.
    """
    if devices < 1:
        raise ConnectionsError("devices must be >= 1")
    budget = math.floor((fd_limit - FD_RESERVE) * NGINX_PLANNED_SHARE) - NGINX_OWN_CONNECTIONS
    per_worker = budget // NGINX_CONNECTIONS_PER_DEVICE
    if per_worker < 1:
        raise ConnectionsError(f"an open-files limit of {fd_limit} leaves no room for connections")
    return max(MIN_NGINX_WORKERS, math.ceil(devices / per_worker))


def api_replicas_needed(devices: int, fd_limit: int = PROCESS_FD_LIMIT) -> int:
    """The fewest API replicas that hold ``devices`` long polls with each replica at
    ``API_PLANNED_SHARE`` of ``fd_limit``."""
    return max(1, math.ceil(devices * API_CONNECTIONS_PER_DEVICE / _api_planned(fd_limit)))


def _api_planned(fd_limit: int) -> int:
    return math.floor((fd_limit - FD_RESERVE) * API_PLANNED_SHARE)


def derive(
    devices: int,
    api_replicas: int,
    fd_limit: int = PROCESS_FD_LIMIT,
    somaxconn: int = DEFAULT_SOMAXCONN,
) -> ConnectionLimits:
    """The connection settings for ``devices`` long-polling devices spread over
    ``api_replicas`` replicas, every process under ``fd_limit`` open files and every listen
    backlog within ``somaxconn``.

    Raises:
        ConnectionsError: a count or limit out of range.
    """
    if api_replicas < 1 or somaxconn < 1:
        raise ConnectionsError("api_replicas and somaxconn must be >= 1")
    if fd_limit < 2 * FD_RESERVE:
        raise ConnectionsError(f"an open-files limit of {fd_limit} is below {2 * FD_RESERVE}")
    workers = nginx_workers_needed(devices, fd_limit)
    share = math.ceil(devices / workers)
    planned = NGINX_CONNECTIONS_PER_DEVICE * share + NGINX_OWN_CONNECTIONS
    # Slots for twice the planned share, so an unlucky worker still has room; never more than
    # its open files allow.
    worker_connections = min(
        fd_limit - FD_RESERVE,
        max(MIN_NGINX_WORKER_CONNECTIONS, math.ceil(planned / NGINX_PLANNED_SHARE)),
    )
    per_replica = math.ceil(devices * API_CONNECTIONS_PER_DEVICE / api_replicas)
    return ConnectionLimits(
        devices=devices,
        fd_limit=fd_limit,
        somaxconn=somaxconn,
        nginx_workers=workers,
        nginx_devices_per_worker=share,
        nginx_worker_connections=worker_connections,
        nginx_rlimit_nofile=min(fd_limit, worker_connections + FD_RESERVE),
        # every upstream connection of the worker's share may stay cached: no reconnect after
        # a wave of polls ends together, and no connection beyond the peak
        nginx_keepalive=share,
        # the worker's whole share reconnecting at once fits its accept queue
        nginx_backlog=min(somaxconn, max(NGINX_MIN_BACKLOG, share)),
        nginx_device_capacity=workers
        * (worker_connections - NGINX_OWN_CONNECTIONS)
        // NGINX_CONNECTIONS_PER_DEVICE,
        api_replicas=api_replicas,
        api_connections_per_replica=per_replica,
        api_connections_planned=_api_planned(fd_limit),
        api_replicas_needed=api_replicas_needed(devices, fd_limit),
        # not by the replica count: `iotctl up --api-replicas N` must not restart the others
        api_backlog=min(somaxconn, max(API_MIN_BACKLOG, devices)),
        supervisor_minfds=fd_limit,
    )


def hard_fd_limit() -> int | None:
    """This process' hard open-files limit (inherited by supervisord and every program it
    starts); None when unlimited."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def somaxconn() -> int:
    """``net.core.somaxconn``: the kernel cuts every listen backlog to it."""
    try:
        return int(SOMAXCONN_PATH.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_SOMAXCONN


def effective_fd_limit(s: Settings) -> int:
    """``IOT_PROCESS_FD_LIMIT``, or the machine's hard limit when that is lower."""
    hard = hard_fd_limit()
    return s.process_fd_limit if hard is None else min(s.process_fd_limit, hard)


def replica_count(s: Settings) -> int:
    """The replicas nginx spreads the devices over: this machine's (role api) and those of
    other machines (IOT_API_SERVERS)."""
    here = len(s.api_ports) if "api" in s.roles else 0
    return max(1, here + len(s.api_servers))


def for_settings(s: Settings) -> ConnectionLimits:
    """:func:`derive` for ``IOT_MAX_DEVICE_CONNECTIONS`` on this machine."""
    return derive(s.max_device_connections, replica_count(s), effective_fd_limit(s), somaxconn())


def warnings(s: Settings, limits: ConnectionLimits) -> list[str]:
    """What `iotctl up` should tell the operator: too few replicas for the devices, or a hard
    open-files limit below ``IOT_PROCESS_FD_LIMIT``."""
    out = []
    if limits.fd_limit < s.process_fd_limit:
        out.append(
            f"this machine allows {limits.fd_limit:,} open files per process (ulimit -Hn), "
            f"below IOT_PROCESS_FD_LIMIT={s.process_fd_limit:,}: sized for {limits.fd_limit:,}"
        )
    if limits.api_replicas_short:
        out.append(
            f"{limits.devices:,} device connections (IOT_MAX_DEVICE_CONNECTIONS) over "
            f"{limits.api_replicas} API replicas are {limits.api_connections_per_replica:,} "
            f"each, over the {limits.api_connections_planned:,} planned per replica (80% of "
            f"{limits.fd_limit:,} open files less {FD_RESERVE} of its own): run "
            f"`iotctl up --api-replicas {limits.api_replicas_needed}` (or more replicas on "
            "other machines, IOT_API_SERVERS)"
        )
    return out


def summary(limits: ConnectionLimits) -> str:
    """One line for `iotctl up`: what was set for how many devices."""
    return (
        f"connections: {limits.devices:,} devices -> nginx {limits.nginx_workers} workers x "
        f"{limits.nginx_worker_connections:,} connections (open files "
        f"{limits.nginx_rlimit_nofile:,}, keepalive {limits.nginx_keepalive:,}, backlog "
        f"{limits.nginx_backlog:,}); {limits.api_replicas} API replicas x "
        f"~{limits.api_connections_per_replica:,} (backlog {limits.api_backlog:,}); open files "
        f"per process {limits.supervisor_minfds:,}"
    )


def nginx_limits_metrics(limits: ConnectionLimits) -> str:
    """The Prometheus text nginx serves at ``/limits`` on its status port, as one nginx string
    (``\\n`` escapes): the limits it was configured with, in the same file as the limits
    themselves, so that what Prometheus reads is what the running nginx loaded."""
    metrics = [
        ("worker_processes", "nginx worker processes", limits.nginx_workers),
        (
            "worker_connections",
            "connection slots per nginx worker (client and upstream)",
            limits.nginx_worker_connections,
        ),
        (
            "keepalive_connections",
            "idle upstream connections cached per worker",
            limits.nginx_keepalive,
        ),
        (
            "device_connections_limit",
            "device connections nginx holds with a long poll waiting on each (2 slots per device)",
            limits.nginx_device_capacity,
        ),
        (
            "max_device_connections",
            "device connections it was sized for (IOT_MAX_DEVICE_CONNECTIONS)",
            limits.devices,
        ),
    ]
    lines = []
    for name, help_text, value in metrics:
        lines += [
            f"# HELP iot_nginx_{name} {help_text}",
            f"# TYPE iot_nginx_{name} gauge",
            f"iot_nginx_{name} {value}",
        ]
    return "\\n".join(lines) + "\\n"
