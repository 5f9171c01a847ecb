"""Sizing from a step ramp: the CPU each component cost per 1,000 devices at each step, fitted
and scaled to another fleet size, reading interval and command rate; and the processes the
fleet's connections need (each device holds a long poll most of the time, every process has a
limited number of open files), the larger of the two deciding.

Pure arithmetic on a ``report.json`` (see :func:`plan`), so it is tested without a stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iot.stack import connections as conn
from loadtest.report import GENERATOR, fit

# Part of this test stack only: the fault-injection proxy every product connection crosses.
NOT_DEPLOYED = ("toxiproxy",)


class PlanError(ValueError):
    """No usable step-ramp report, or parameters out of range; the message says why."""


@dataclass(frozen=True)
class Workload:
    """What each device does: readings every ``interval`` s, long polls of ``poll_wait`` s,
    ``commands_per_hour`` commands."""

    interval: float
    poll_wait: float
    commands_per_hour: float

    def requests_per_second(self) -> float:
        """HTTP requests one device causes per second: a POST /sensors and the long polls of
        each interval, and per command the operator's POST, the poll that returns it early
        and the ack."""
        polls = math.ceil(self.interval / max(self.poll_wait, 1))
        return (1 + polls) / self.interval + 3 * self.commands_per_hour / 3600


def newest_step_report(reports: Path) -> Path:
    """The newest ``report.json`` of a step-ramp run under ``reports``.

    Raises:
        PlanError: none found.
    """
    for path in sorted(reports.glob("*/report.json"), reverse=True):
        try:
            if json.loads(path.read_text())["meta"]["shape"] == "step":
                return path
        except (OSError, ValueError, KeyError):
            continue
    raise PlanError(
        f"no step-ramp report under {reports}: run `iotctl load run devices --shape step` first"
    )


def _group(name: str) -> str:
    return "api" if name.startswith("api-") else name


def connection_needs(
    devices: int,
    nginx_cores: float | None,
    api_replicas_by_cpu: int,
    target_utilisation: float,
    fd_limit: int = conn.PROCESS_FD_LIMIT,
) -> dict[str, Any]:
    """nginx workers and API replicas by connections next to those by CPU: ``devices`` long
    polls waiting at once, ``NGINX_CONNECTIONS_PER_DEVICE`` connections each in nginx and
    ``API_CONNECTIONS_PER_DEVICE`` in a replica, every process under ``fd_limit`` open files
    (iot/stack/connections.py: the arithmetic `iotctl up` renders nginx with)."""
    workers = conn.nginx_workers_needed(devices, fd_limit)
    by_cpu = None if nginx_cores is None else max(1, math.ceil(nginx_cores / target_utilisation))
    replicas = conn.api_replicas_needed(devices, fd_limit)
    api = max(replicas, api_replicas_by_cpu)
    per_replica = math.ceil(devices * conn.API_CONNECTIONS_PER_DEVICE / api)
    return {
        "fd_limit_per_process": fd_limit,
        "nginx_connections_per_device": conn.NGINX_CONNECTIONS_PER_DEVICE,
        "api_connections_per_device": conn.API_CONNECTIONS_PER_DEVICE,
        "nginx_connections": devices * conn.NGINX_CONNECTIONS_PER_DEVICE,
        "nginx_workers_by_connections": workers,
        "nginx_workers_by_cpu": by_cpu,
        "nginx_workers": max(workers, by_cpu or 0),
        "api_replicas_by_connections": replicas,
        "api_replicas_by_cpu": api_replicas_by_cpu,
        "api_replicas": api,
        "upstream_connections_per_replica": per_replica,
        # an edge machine reaches each replica from one address: its source ports bound them
        "edge_machines": max(1, math.ceil(per_replica / conn.EPHEMERAL_PORTS)),
    }


def plan(
    report: dict[str, Any],
    devices: int,
    interval: float,
    commands_per_hour: float = 6.0,
    target_utilisation: float = 0.7,
) -> dict[str, Any]:
    """How many cores, API replicas and workers ``devices`` need, from a step-ramp report.

    The fit uses the steps up to the knee (measurements past it are saturated and would
    understate the cost); with fewer than two such steps, every step. Costs scale with the
    requests per device (:class:`Workload`), the fixed part does not.

    Raises:
        PlanError: parameters out of range, or a report without steps or CPU figures.
    """
    if devices < 1 or interval <= 0 or commands_per_hour < 0:
        raise PlanError("devices must be >= 1, the interval > 0 and commands per hour >= 0")
    if not 0 < target_utilisation <= 1:
        raise PlanError("the target utilisation must be in (0, 1]")
    meta = report["meta"]
    steps = [s for s in report.get("steps", []) if s.get("cpu") and s["devices"] > 0]
    if not steps:
        raise PlanError("the report has no steps with CPU figures")
    knee = (report.get("analysis") or {}).get("knee")
    below = [s for s in steps if knee and s["devices"] <= knee["devices"]]
    used = below if len(below) >= 2 else steps
    measured = Workload(
        float(meta["reading_interval"]), float(meta["poll_wait"]),
        float(meta["commands_per_device_hour"]),
    )  # fmt: skip
    wanted = Workload(interval, float(meta["poll_wait"]), commands_per_hour)
    scale = wanted.requests_per_second() / measured.requests_per_second()
    groups: dict[str, list[tuple[float, float]]] = {}
    per_1000: dict[str, list[list[float]]] = {}
    for s in steps:
        sums: dict[str, float] = {}
        for name, cores in s["cpu"].items():
            if name != "machine":
                sums[_group(name)] = sums.get(_group(name), 0.0) + cores
        for g, cores in sums.items():
            per_1000.setdefault(g, []).append([s["devices"], round(cores / s["devices"] * 1000, 4)])
            if s in used:
                groups.setdefault(g, []).append((float(s["devices"]), cores))
    components = []
    for g in sorted(groups):
        a, b = fit(groups[g])
        cores = a + b * devices * scale
        row: dict[str, Any] = {
            "component": g,
            "cores_per_1000_by_step": per_1000.get(g, []),
            "fixed_cores": round(a, 4),
            "cores_per_1000": round(b * 1000, 4),
            "predicted_cores": round(cores, 3),
        }
        if g == "api" or g.startswith("worker-"):
            row["processes"] = max(1, math.ceil(cores / target_utilisation))
        components.append(row)
    system = [c for c in components if c["component"] not in (GENERATOR, *NOT_DEPLOYED)]
    total = sum(c["predicted_cores"] for c in system)
    by_name = {c["component"]: c for c in components}
    connections = connection_needs(
        devices,
        by_name["nginx"]["predicted_cores"] if "nginx" in by_name else None,
        by_name.get("api", {}).get("processes", 1),
        target_utilisation,
    )
    largest = max(s["devices"] for s in steps)
    warnings = []
    if devices > 4 * largest:
        warnings.append(
            f"{devices:,} devices is {devices / largest:.0f}x the largest measured step "
            f"({largest:,}): a long extrapolation; confirm with a ramp closer to the target"
        )
    for single in ("redis",):
        if single in by_name and by_name[single]["predicted_cores"] > target_utilisation:
            warnings.append(
                f"{single} is single-threaded and would need "
                f"{by_name[single]['predicted_cores']:.2f} cores: shard it"
            )
    if not knee:
        warnings.append(
            "no step of the ramp held every SLO: the costs are from an overloaded stack"
        )
    return {
        "source_run": meta.get("run"),
        "devices": devices,
        "interval": interval,
        "commands_per_device_hour": commands_per_hour,
        "target_utilisation": target_utilisation,
        "load_scale": round(scale, 4),
        "fitted_steps": [s["devices"] for s in used],
        "components": components,
        "total_cores": round(total, 2),
        "cores_to_buy": max(1, math.ceil(total / target_utilisation)),
        "api_replicas": connections["api_replicas"],
        "nginx_workers": connections["nginx_workers"],
        "connections": connections,
        "workers": {
            c["component"]: c["processes"]
            for c in components
            if c["component"].startswith("worker-")
        },
        "generator_cores": by_name.get(GENERATOR, {}).get("predicted_cores"),
        "assumptions": [
            f"measured: {measured.interval:g} s reading interval, {measured.poll_wait:g} s long "
            f"polls, {measured.commands_per_hour:g} commands per device-hour, on "
            f"{report.get('cpus', '?')} cores of the machine that ran the ramp",
            f"load per device scales with its HTTP requests/s: {scale:.3f}x the measured mix "
            "(a POST /sensors and the polls of each interval; 3 requests per command)",
            "each component's CPU is fitted as fixed + per-device cost over the steps "
            f"{', '.join(str(s['devices']) for s in used)} (up to the knee when possible)",
            f"every core is planned at {target_utilisation:.0%} busy; one API replica or "
            "worker process uses at most one core (one Python process each)",
            "RabbitMQ, Postgres and Redis are sized as single nodes by CPU only; memory, disk "
            "and network are not measured here",
            f"connections: every device holds a long poll at once, "
            f"{conn.NGINX_CONNECTIONS_PER_DEVICE} connections in nginx (its own and the "
            f"upstream one) and {conn.API_CONNECTIONS_PER_DEVICE} in a replica; each process "
            f"has at most {connections['fd_limit_per_process']:,} open files, an nginx worker "
            f"is planned at {conn.NGINX_PLANNED_SHARE:.0%} of them and a replica at "
            f"{conn.API_PLANNED_SHARE:.0%}; nginx workers and replicas are the larger of the "
            "counts by CPU and by connections",
            "the load generator is not part of the deployment (shown separately); neither is "
            "toxiproxy (the chaos tests' fault proxy, shown but not counted)",
        ],
        "warnings": warnings,
    }


def render(p: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    lines = [
        f"Plan for {p['devices']:,} devices, readings every {p['interval']:g} s, "
        f"{p['commands_per_device_hour']:g} commands per device-hour "
        f"(from run {p['source_run']}, steps {p['fitted_steps']})",
        "",
        f"{'component':<20} {'cores/1k by step (devices: cores)':<44} {'fixed':>6} "
        f"{'per 1k':>7} {'cores':>7} {'procs':>5}",
    ]
    for c in p["components"]:
        steps = ", ".join(f"{int(d)}: {v:.3f}" for d, v in c["cores_per_1000_by_step"])
        lines.append(
            f"{c['component']:<20} {steps[:44]:<44} {c['fixed_cores']:>6.2f} "
            f"{c['cores_per_1000']:>7.3f} {c['predicted_cores']:>7.2f} "
            f"{c.get('processes', ''):>5}"
        )
    lines += [
        "",
        f"CPU needed: {p['total_cores']:.1f} cores busy -> buy {p['cores_to_buy']} cores "
        f"(at {p['target_utilisation']:.0%})",
        f"API replicas: {p['api_replicas']}   workers: "
        + ", ".join(f"{k} {v}" for k, v in p["workers"].items()),
    ]
    if "connections" in p:
        lines += _render_connections(p["connections"])
    if p.get("generator_cores") is not None:
        lines.append(f"Load generator (locust) for this fleet: {p['generator_cores']:.1f} cores")
    lines += ["", "Assumptions:"] + [f"  - {a}" for a in p["assumptions"]]
    if p["warnings"]:
        lines += ["", "Warnings:"] + [f"  ! {w}" for w in p["warnings"]]
    return "\n".join(lines)


def _render_connections(c: dict[str, Any]) -> list[str]:
    by_cpu = c["nginx_workers_by_cpu"]
    return [
        "",
        f"Connections ({c['fd_limit_per_process']:,} open files per process; a waiting poll "
        f"holds {c['nginx_connections_per_device']} in nginx, {c['api_connections_per_device']} "
        "in a replica):",
        f"  nginx worker processes: {c['nginx_workers_by_connections']} by connections, "
        + (f"{by_cpu} by CPU" if by_cpu is not None else "CPU not measured")
        + f" -> {c['nginx_workers']} ({c['nginx_connections']:,} connections)",
        f"  API replicas: {c['api_replicas_by_connections']} by connections, "
        f"{c['api_replicas_by_cpu']} by CPU -> {c['api_replicas']} "
        f"(~{c['upstream_connections_per_replica']:,} connections each)",
        f"  edge machines: {c['edge_machines']} (an edge reaches each replica from one address, "
        f"{conn.EPHEMERAL_PORTS:,} source ports)",
    ]
