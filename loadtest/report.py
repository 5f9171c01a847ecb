"""The capacity report of one run: per step, what the generator measured, what the stack's
components cost in CPU and what Prometheus saw; then the knee and what saturated first.

Inputs, all in the run folder: ``meta.json`` (the run's parameters), ``steps.jsonl`` (when the
shape started each step), ``samples.jsonl`` (per-second request samples), ``cpu.jsonl`` (CPU
samples) and Prometheus. Outputs: ``report.json`` and ``report.md`` (and the plots of
:mod:`loadtest.plots`). :func:`analyse` is pure, so the knee logic is tested on synthetic steps.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest import cpu, rollout, samples
from loadtest.prom import PromError, Prometheus, load_slos, run_series, step_figures

SATURATED = 0.85  # of a component's capacity
# One Python process (the GIL) or a single-threaded server: at most one core each.
ONE_CORE = ("api-", "worker-", "flower", "redis")
GENERATOR = "generator"
LOAD_CHECKS = ("no-failed-requests", "backlog-stable")
BACKLOG_GROWTH = 1.0  # messages/s a queue may grow by on average over a step and still be stable


# The product's own processes on the data path of a request (toxiproxy only in the default
# profile; under --ha the members, their Postgres, etcd, the Sentinels and haproxy); monitoring
# is the operations bundle beside it.
PRODUCT = (
    "nginx",
    "api-",
    "worker-",
    "postgres",
    "rabbitmq",
    "redis",
    "toxiproxy",
    "patroni-",
    "etcd-",
    "sentinel-",
    "haproxy",
)
MONITORING = ("prometheus", "alertmanager", "flower")


def role_of(component: str) -> str:
    """``generator``, ``product``, ``monitoring`` or ``machine`` (anything else: ``other``)."""
    if component in (GENERATOR, "machine"):
        return component
    if component.endswith("-exporter") or component.startswith(MONITORING):
        return "monitoring"
    if component.startswith(PRODUCT):
        return "product"
    return "other"


def cost_per_request(used: dict[str, float], rps: float) -> dict[str, Any] | None:
    """Milliseconds of CPU per request served: of every component, and summed per role
    (generator, product, monitoring); ``unaccounted`` is the machine's busy time that none of
    them explains (the kernel's network work, other processes). None without requests."""
    if rps <= 0 or not used:
        return None
    per = {name: round(cores * 1000 / rps, 4) for name, cores in used.items()}
    roles: dict[str, float] = {"generator": 0.0, "product": 0.0, "monitoring": 0.0}
    for name, ms in per.items():
        role = role_of(name)
        if role in roles:
            roles[role] += ms
    out: dict[str, Any] = {k: round(v, 4) for k, v in roles.items()}
    if "machine" in per:
        out["machine"] = per["machine"]
        out["unaccounted"] = round(max(0.0, per["machine"] - sum(roles.values())), 4)
    out["components"] = {n: ms for n, ms in sorted(per.items()) if role_of(n) == "product"}
    return out


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``cores = a + b * x`` (x: devices, or requests per second) with ``a, b >=
    0``: a cost that does not grow with x is fixed (``b = 0``, ``a`` = the mean); one whose free
    fit has a negative intercept, or a single point, goes through the origin."""
    pts = [(x, y) for x, y in points if x > 0]
    if not pts:
        return 0.0, 0.0
    sxx = sum(x * x for x, _ in pts)
    sxy = sum(x * y for x, y in pts)
    if len(pts) >= 2:
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        vx = sum((x - mx) ** 2 for x, _ in pts)
        if vx > 0:
            b = sum((x - mx) * (y - my) for x, y in pts) / vx
            a = my - b * mx
            if b <= 0:
                return my, 0.0
            if a >= 0:
                return a, b
    return 0.0, max(sxy / sxx, 0.0)


def marginal_cost(steps: list[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Each role's CPU over the steps fitted as ``fixed cores + ms per request x requests/s``
    (:func:`fit`): the per-request part is what one more request costs, without the fixed
    part (the generator's operator, web viewers and per-second statistics; the product's
    timers and scrapes) that weighs on the small steps. None with fewer than two steps."""
    measured = [s for s in steps if s.get("cpu") and s.get("requests_per_s")]
    if len(measured) < 2:
        return None
    out: dict[str, dict[str, float]] = {}
    for role in ("generator", "product"):
        points = [
            (
                float(s["requests_per_s"]),
                sum(c for n, c in s["cpu"].items() if n != "machine" and role_of(n) == role),
            )
            for s in measured
        ]
        fixed, per_request = fit(points)
        out[role] = {"fixed_cores": round(fixed, 4), "ms_per_request": round(per_request * 1000, 4)}
    return out


def generator_bound(step: dict[str, Any], cpus: int, generator_processes: int) -> bool:
    """True when the generator, not the product, ran out: its own processes at ``SATURATED``
    of their cores, or the machine at ``SATURATED`` and below it without the generator's
    share. Such a step says nothing about the product's capacity."""
    used = step.get("cpu") or {}
    gen = used.get(GENERATOR, 0.0)
    if gen >= SATURATED * capacity(GENERATOR, cpus, generator_processes):
        return True
    machine = used.get("machine", 0.0)
    return machine >= SATURATED * cpus and machine - gen < SATURATED * cpus


def capacity(component: str, cpus: int, generator_processes: int = 1) -> float:
    """How many cores a component can use: one for a single Python process or Redis, the
    number of locust processes for the generator, else the whole machine."""
    if component == GENERATOR:
        return float(max(1, generator_processes))
    if component.startswith(ONE_CORE):
        return 1.0
    return float(cpus)


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The shape's step log as [{index, devices, start, reached, end}] (epoch s)."""
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps: list[dict[str, Any]] = []
    end = None
    for e in events:
        if e["event"] == "step":
            if steps:
                steps[-1]["end"] = e["t"]
            steps.append({"index": e["index"], "devices": e["devices"], "start": e["t"]})
        elif e["event"] == "reached" and steps and steps[-1]["index"] == e["index"]:
            steps[-1]["reached"] = e["t"]
        elif e["event"] == "end" and end is None:
            end = e["t"]
    if steps:
        steps[-1].setdefault("end", end)
    return [s for s in steps if s.get("end")]


def measurement_window(step: dict[str, Any], settle: float) -> tuple[float, float]:
    """The part of a step that is measured: from ``settle`` seconds after its devices were
    all running (at most 30 % of what is left of the step) to its end."""
    begin = step.get("reached") or step["start"]
    begin = min(max(begin, step["start"]), step["end"])
    return begin + min(settle, 0.3 * (step["end"] - begin)), step["end"]


def checks_of(step: dict[str, Any]) -> dict[str, bool | None]:
    """Every check of a step: the monitoring SLOs (None: no events in the window), no failed
    requests, and no queue that kept growing."""
    out: dict[str, bool | None] = {}
    prom = step.get("prometheus") or {}
    for name, slo in (prom.get("slos") or {}).items():
        out[name] = slo.get("held")
    out["no-failed-requests"] = step.get("failures", 0) == 0
    queues = prom.get("queues")
    if queues is not None:
        out["backlog-stable"] = all(
            (q.get("growth_per_s") or 0) <= BACKLOG_GROWTH or (q.get("max_ready") or 0) < 100
            for q in queues.values()
        )
    return out


def saturated(step: dict[str, Any], cpus: int, generator_processes: int) -> list[dict[str, Any]]:
    """Components at or above ``SATURATED`` of their capacity in a step, fullest first (the
    whole machine counts as the component ``machine``)."""
    out = []
    for name, cores in (step.get("cpu") or {}).items():
        cap = capacity(name, cpus, generator_processes)
        if cores >= SATURATED * cap:
            out.append({"component": name, "cores": cores, "capacity": cap})
    return sorted(out, key=lambda s: s["cores"] / s["capacity"], reverse=True)


def _fullest(step: dict[str, Any], cpus: int, generator_processes: int) -> str | None:
    ranked = [
        (cores / capacity(name, cpus, generator_processes), name)
        for name, cores in (step.get("cpu") or {}).items()
        if name not in ("machine", GENERATOR)
    ]
    return max(ranked)[1] if ranked else None


def analyse(steps: list[dict[str, Any]], cpus: int, generator_processes: int = 1) -> dict:
    """The knee and the first component to saturate, from per-step results.

    The knee is the largest step (by devices) such that it and every smaller step held all
    checks. The first saturated component is the fullest component (relative to its capacity:
    one core for a Python process, the machine for the rest) at the first step where any
    component other than the generator reached ``SATURATED`` of its capacity; if no component
    saturated but a check broke, the fullest component at that step, with the check named.
    """
    ordered = sorted(steps, key=lambda s: (s["devices"], s["index"]))
    knee = first_break = first_saturated = None
    generator_saturated = first_generator_bound = None
    for step in ordered:
        checks = step.get("checks") or checks_of(step)
        broken = sorted(name for name, ok in checks.items() if ok is False)
        bound = step.get("generator_bound")
        if bound is None:
            bound = generator_bound(step, cpus, generator_processes)
        if bound and first_generator_bound is None:
            first_generator_bound = {"index": step["index"], "devices": step["devices"]}
        if first_break is None:
            if broken:
                first_break = {
                    "index": step["index"],
                    "devices": step["devices"],
                    "broken": broken,
                    "generator_bound": bool(bound),
                }
            else:
                knee = {"index": step["index"], "devices": step["devices"]}
        hot = saturated(step, cpus, generator_processes)
        system_hot = [h for h in hot if h["component"] != GENERATOR]
        if first_saturated is None and system_hot:
            top = system_hot[0]
            if top["component"] == "machine":
                top = {**top, "largest_user": _fullest(step, cpus, generator_processes)}
            first_saturated = {"index": step["index"], "devices": step["devices"], **top}
        if generator_saturated is None and any(h["component"] == GENERATOR for h in hot):
            generator_saturated = {"index": step["index"], "devices": step["devices"]}
    bottleneck: dict[str, Any] | None = None
    limited = first_break if first_break is not None else first_generator_bound
    if limited is not None and (first_break is None or first_break["generator_bound"]):
        # the generator, not the product, ran out: the product held up to the knee, and what
        # lies beyond it was not measured
        if knee is not None:
            knee["at_least"] = True
        bottleneck = {
            "component": GENERATOR,
            "reason": f"the generator, not the product, saturated with {limited['devices']} "
            "devices: the product was not measured beyond",
        }
    elif first_saturated and (
        first_break is None or first_saturated["devices"] <= first_break["devices"]
    ):
        name = first_saturated.get("largest_user") or first_saturated["component"]
        bottleneck = {
            "component": name,
            "reason": f"{first_saturated['component']} at {first_saturated['cores']:.2f} of "
            f"{first_saturated['capacity']:.0f} core(s) with {first_saturated['devices']} devices",
        }
    elif first_break:
        step = next(s for s in ordered if s["index"] == first_break["index"])
        bottleneck = {
            "component": _fullest(step, cpus, generator_processes),
            "reason": f"{', '.join(first_break['broken'])} broke with {first_break['devices']} "
            "devices (the component named used the largest share of its capacity)",
        }
    return {
        "knee": knee,
        "first_break": first_break,
        "first_saturated": first_saturated,
        "bottleneck": bottleneck,
        "generator_saturated": generator_saturated,
        "generator_bound": first_generator_bound,
    }


def _errors(routes: dict[str, Any]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key, r in routes.items():
        if key == "total" or key.startswith("COMMAND"):
            continue
        for status, n in r["statuses"].items():
            if not status.startswith("2"):
                counts[status] += n
    return dict(sorted(counts.items()))


def build_step(
    step: dict[str, Any],
    rows: list[dict[str, Any]],
    cpu_rows: list[dict[str, Any]],
    prom: Prometheus | None,
    slos: list[Any],
    settle: float,
) -> dict[str, Any]:
    """One step's figures over its measurement window."""
    start, end = measurement_window(step, settle)
    routes = samples.aggregate(rows, start, end)
    total = routes.pop("total", {"count": 0, "failures": 0, "rps": 0.0})
    used = cpu.cores(cpu_rows, start, end)
    devices = step["devices"]
    out: dict[str, Any] = {
        "index": step["index"],
        "devices": devices,
        "window": [round(start, 3), round(end, 3)],
        "seconds": round(end - start, 1),
        "requests_per_s": total["rps"],
        "requests": total["count"],
        "failures": total["failures"],
        "errors_by_status": _errors(routes),
        "routes": routes,
        "cpu": used,
        "generator_cores_per_1000_devices": (
            round(used[GENERATOR] / devices * 1000, 3) if GENERATOR in used and devices else None
        ),
        "cpu_ms_per_request": cost_per_request(used, total["rps"]),
    }
    if prom is not None:
        try:
            out["prometheus"] = step_figures(prom, slos, start, end)
        except PromError as exc:
            out["prometheus"] = {"error": str(exc)}
    out["checks"] = checks_of(out)
    out["held"] = all(ok is not False for ok in out["checks"].values())
    return out


def mark_generator_bound(steps: list[dict[str, Any]], cpus: int, processes: int) -> None:
    """Flag every step where the generator, not the product, ran out (``generator_bound``)."""
    for step in steps:
        step["generator_bound"] = generator_bound(step, cpus, processes)


def build(
    run_dir: Path, prom_url: str | None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build ``report.json`` (and return it) for the run in ``run_dir``.

    ``prom_url`` None skips Prometheus (the SLO checks are then missing from the steps).

    Raises:
        FileNotFoundError: the run folder has no ``meta.json``.
    """
    meta = json.loads((run_dir / "meta.json").read_text())
    rows = list(samples.read(run_dir / "samples.jsonl"))
    cpu_rows = cpu.read(run_dir / "cpu.jsonl")
    steps = read_steps(run_dir / "steps.jsonl")
    if not steps and rows:  # no shape: the whole run is one step
        ts = [r["t"] for r in rows]
        steps = [
            {"index": 0, "devices": meta.get("devices", 0), "start": min(ts), "end": max(ts) + 1}
        ]
    prom = Prometheus(prom_url) if prom_url else None
    slos: list[Any] = []
    if prom is not None:
        try:
            slos = load_slos()
        except PromError as exc:
            log(f"warning: {exc}")
    settle = float(meta.get("reading_interval", 10))
    built = [build_step(s, rows, cpu_rows, prom, slos, settle) for s in steps]
    cpus = max((r.get("cpus", 1) for r in cpu_rows), default=1)
    processes = max(1, int(meta.get("processes") or 1))
    mark_generator_bound(built, cpus, processes)
    report: dict[str, Any] = {
        "meta": meta,
        "cpus": cpus,
        "steps": built,
        "analysis": analyse(built, cpus, processes),
        "marginal_cost": marginal_cost(built),
        "overall": _overall(rows, steps),
        "readings": _ledger_totals(run_dir / "ledger"),
        "restarts": cpu.restarts(cpu_rows),
        "rollout": rollout.summary(run_dir / "rollout.jsonl"),
    }
    if prom is not None and steps:
        try:
            report["series"] = run_series(prom, steps[0]["start"], steps[-1]["end"])
        except PromError as exc:
            log(f"warning: no Prometheus series for the plots: {exc}")
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable))
    return report


def _overall(rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    start = min(r["t"] for r in rows)
    end = max(r["t"] for r in rows) + 1
    return samples.aggregate(rows, start, end)


def _ledger_totals(folder: Path) -> dict[str, Any]:
    """Readings answered 201, dropped (buffer full or refused for good) and left unsent."""
    totals = {"accepted": 0, "dropped": 0, "unsent": 0, "devices": 0}
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        for entry in json.loads(path.read_text()).values():
            totals["accepted"] += entry["count"]
            totals["dropped"] += entry["dropped"]
            totals["unsent"] += entry["unsent"]
            totals["devices"] += 1
    return totals


def read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    """Per device id: readings answered 201 and their ts range (ms), from every process."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        out.update(json.loads(path.read_text()))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return str(value)
