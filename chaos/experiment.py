"""Run one experiment: steady state, fault, rollbacks, recovery, drain, check, report.

An experiment is data (``chaos/experiments/<name>.yml``)::

    title: RabbitMQ unreachable
    description: ...
    method:    [{action: proxy_disable, target: rabbitmq}]   # applied together at fault start
    rollbacks: [{action: proxy_enable, target: rabbitmq}]    # always run, in order
    fault_seconds: 10          # the short form (make test); --duration or --long override
    long_fault_seconds: 60     # the long form (make chaos)
    recovery_bound: 60         # seconds from rollback to steady state again; after them
                               # no alert may still fire (one that fired and resolved may)
    expect_alert: [RabbitMQDown]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from chaos import alertwindows, probes, rollout
from chaos.actions import Actions
from chaos.fleet import Timeline
from chaos.identity import Identity
from chaos.ledger import Ledger, check, loss_problems
from iot.settings import Settings
from loadtest.background import BackgroundLoad, LoadOptions
from loadtest.runner import LoadError

EXPERIMENTS = Path(__file__).parent / "experiments"
CLUSTER = EXPERIMENTS / "cluster"  # need `iotctl up --cluster` (three RabbitMQ nodes)
HA = EXPERIMENTS / "ha"  # need `iotctl up --ha` (Patroni, Sentinel, haproxy)
UNSAFE = Path(__file__).parent / "unsafe"  # deliberately unsafe runs that must FAIL the check
WARMUP_SECONDS = 5
WARMUP_WINDOWS = 3  # the steady state must hold for one whole window within this many
WARMUP_WINDOWS_LOADED = 6  # the same under a background load (a busy system settles slower)
QUIET_SECONDS = 3  # no errors for this long (and a small backlog) = recovered
BACKLOG_RECOVERED = 200  # messages; or twice the largest backlog seen before the fault
DRAIN_TIMEOUT = 120
CHECK_TIMEOUT = 60
ALERT_CLEAR_SECONDS = 90  # before the fault, how long to wait for expected alerts to clear
ALERT_GRACE_SECONDS = 45  # after the fault ends, how long an expected alert may still take
# Alerts that stay firing long after their cause (ComponentRestarted: ten minutes after any
# restart) are not waited out; the sampler's baseline tells them apart by instance and value
# (ComponentRestarted's value is the newest restart's time, new with every restart). Still
# firing after the recovery window, they do not fail the run either.
STICKY_ALERTS = frozenset({"ComponentRestarted"})


class ExperimentError(RuntimeError):
    """The experiment could not run (not: it ran and found loss)."""


@dataclass
class Experiment:
    name: str
    title: str
    description: str
    method: list[dict[str, Any]]
    rollbacks: list[dict[str, Any]]
    fault_seconds: float = 10
    long_fault_seconds: float = 60
    recovery_bound: float = 60
    expect_alert: list[str] = field(default_factory=list)
    devices: int = 20
    command_rate: float = 5.0
    rollout: dict[str, Any] | None = None  # a rollout to the fleet through the fault (rollout.py)


def load(name: str, folder: Path = EXPERIMENTS) -> Experiment:
    path = folder / f"{name}.yml"
    for other in (CLUSTER, HA) if folder == EXPERIMENTS else ():
        if not path.exists():
            path = other / f"{name}.yml"
    if not path.exists():
        raise ExperimentError(f"no experiment {name!r}; `iotctl chaos list` shows them")
    data = yaml.safe_load(path.read_text())
    try:
        return Experiment(name=name, **data)
    except TypeError as exc:
        raise ExperimentError(f"{path}: {exc}") from exc


def names() -> list[str]:
    """The experiments for any stack (the matrix of `make test`)."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yml"))


def cluster_names() -> list[str]:
    """The experiments that need the RabbitMQ cluster."""
    return sorted(p.stem for p in CLUSTER.glob("*.yml"))


def ha_names() -> list[str]:
    """The experiments that need the highly available data tier."""
    return sorted(p.stem for p in HA.glob("*.yml"))


def for_stack(settings: Settings) -> list[str]:
    """Every experiment this stack can run: the matrix, and the cluster's and the HA tier's
    when it runs them."""
    return (
        names()
        + (cluster_names() if settings.rabbitmq_cluster else [])
        + (
            [n for n in ha_names() if settings.ha_netns or not n.startswith("ha-cut-")]
            if settings.ha
            else []
        )
    )


def run(
    exp: Experiment,
    settings: Settings,
    fault_seconds: float | None = None,
    progress: Callable[[str], None] = print,
    load: LoadOptions | None = None,
) -> dict[str, Any]:
    """Run the experiment; returns the report (a dict). Raises ExperimentError if it cannot.

    With ``load``, that many locust devices (``loadtest/``, through nginx) run from before the
    steady-state check until the experiment's fleet has drained. The ledger still covers the
    experiment's own fleet; the load's failures are reported per phase (before, during and
    after the fault), and its readings answered 201 must all be in Postgres too.
    """
    if load is None:
        return _run(exp, settings, fault_seconds, progress)
    background = BackgroundLoad(load)
    progress(f"[{exp.name}] load: starting {load.devices} locust devices")
    try:
        background.start(lambda m: progress(f"[{exp.name}] load: {m}"))
    except LoadError as exc:
        raise ExperimentError(f"the load could not start: {exc}") from exc
    report: dict[str, Any] = {}
    figures: dict[str, Any] | None = None
    try:
        report = _run(exp, settings, fault_seconds, progress, background)
    finally:
        windows = _load_windows(report, background.ready_at or time.time())
        try:
            figures = background.finish(windows, lambda m: progress(f"[{exp.name}] load: {m}"))
        except LoadError as exc:
            if report:  # the experiment ran: its verdict must say the load report is missing
                report.setdefault("problems", []).append(f"load: {exc}")
                report["passed"] = False
            progress(f"[{exp.name}] load: {exc}")
    if figures is not None:
        report["load"] = figures
        missing = figures["readings"].get("missing")
        if missing is None:
            report["problems"].append("load: its readings could not be compared with Postgres")
        elif missing:
            report["problems"].append(f"load: {missing} readings answered 201 not in Postgres")
        report["passed"] = not report["problems"]
    return report


def _load_windows(report: dict[str, Any], ready_at: float) -> dict[str, tuple[float, float]]:
    """The phases of an experiment the load figures are given for (epoch s): from the load's
    devices all running to the fault, the fault, from its end to recovery, from recovery to
    the end of the drain, and all of it."""
    if "fault_start" not in report:
        return {}
    start, end = report["fault_start"], report["fault_end"]
    recovered = end + (report.get("recovery_seconds") or 0.0)
    drained = max(report.get("drained_at") or recovered, recovered)
    return {
        "before": (min(ready_at, start), start),
        "fault": (start, end),
        "recovery": (end, recovered),
        "after": (recovered, drained),
        "whole": (min(ready_at, start), drained),
    }


def _run(
    exp: Experiment,
    settings: Settings,
    fault_seconds: float | None,
    progress: Callable[[str], None],
    background: BackgroundLoad | None = None,
) -> dict[str, Any]:
    fault_seconds = fault_seconds if fault_seconds is not None else exp.fault_seconds
    if exp.name in cluster_names() and not settings.rabbitmq_cluster:
        raise ExperimentError(f"{exp.name} needs the RabbitMQ cluster: `iotctl up --cluster`")
    if exp.name in ha_names() and not settings.ha:
        raise ExperimentError(f"{exp.name} needs the HA data tier: `iotctl up --ha`")
    load_status = background.status if background is not None else None
    actions = Actions(settings)
    sampler = probes.Sampler(settings)
    progress(f"[{exp.name}] steady state: waiting for every component to be healthy")
    bad = probes.unhealthy(settings, 120)
    if bad:
        raise ExperimentError(f"steady state not met, unhealthy: {bad}")
    actions.reset_all()
    # An expected alert still pending or firing from an earlier fault would be counted as
    # this fault's detection: wait for it to clear first.
    must_clear = [a for a in exp.expect_alert if a not in STICKY_ALERTS]
    lingering = probes.wait_alerts_clear(settings, must_clear, ALERT_CLEAR_SECONDS)
    if lingering:
        progress(f"[{exp.name}] warning: still active from before: {', '.join(sorted(lingering))}")
    identity = Identity(settings, exp.devices)
    ledger, timeline, fleet = identity.fleet(exp.command_rate)
    report: dict[str, Any] = {
        "experiment": exp.name,
        "title": exp.title,
        "description": exp.description,
        "method": exp.method,
        "rollbacks": exp.rollbacks,
        "fault_seconds": fault_seconds,
        "recovery_bound_seconds": exp.recovery_bound,
        "expected_alerts": exp.expect_alert,
    }
    try:
        fleet.start()
        progress(
            f"[{exp.name}] warm-up: {len(identity.devices)} devices, "
            f"{exp.command_rate:g} commands/s, for {WARMUP_SECONDS}s"
        )
        windows = WARMUP_WINDOWS if background is None else WARMUP_WINDOWS_LOADED
        report["warmup_seconds"] = _warm_up(sampler, timeline, progress, exp.name, windows)

        under_way = None
        if exp.rollout is not None:
            under_way = rollout.begin(
                settings.base_url, identity, ledger, exp.rollout, exp.name, progress
            )
        sampler.start_fault()
        fault_start = time.time()
        progress(
            f"[{exp.name}] fault on for {fault_seconds:g}s: "
            + ", ".join(f"{a['action']} {a['target']}" for a in exp.method)
        )
        try:
            for a in exp.method:
                actions.run(**a)
            if actions.resolved:
                progress(f"[{exp.name}] targets: {actions.resolved}")
            _sample_for(
                sampler, fault_seconds, progress, exp.name, timeline, fault_start, load_status
            )
        finally:
            for a in exp.rollbacks:
                actions.run(**a)
            actions.reset_all()
        fault_end = time.time()
        progress(
            f"[{exp.name}] fault removed; waiting for recovery (bound {exp.recovery_bound:g}s)"
        )
        recovered_at = _wait_recovery(
            sampler,
            timeline,
            fault_end,
            exp.recovery_bound + 30,
            lambda m: progress(f"[{exp.name}] {m}"),
            _backlog_limit(sampler.backlog, fault_start),
            load_status,
        )
        recovery = None if recovered_at is None else max(recovered_at - fault_end, 0.0)

        fleet.stop_load.set()
        progress(
            f"[{exp.name}] draining: every accepted command executed and acked, "
            "every reading accepted"
        )
        drain_start = last_report = time.time()
        while not fleet.drained() and time.time() - drain_start < DRAIN_TIMEOUT:
            sampler.sample()
            time.sleep(1)
            if time.time() - last_report >= 5:
                last_report = time.time()
                progress(
                    f"[{exp.name}]   draining for {last_report - drain_start:3.0f}s: "
                    f"{fleet.buffered_readings()} readings buffered, backlog "
                    f"{sampler.backlog[-1][1]}" + _with_load(load_status)
                )
        drained = fleet.drained()
        drained_at = time.time()
        fleet.stop()
        if background is not None:  # its devices finish their requests while we check
            background.stop()
        # Alerts need a scrape and an evaluation (5 s each) after the symptom, plus their
        # `for:`; a process restarted by the supervisor is seen only once it is scraped again.
        while (
            any(a not in sampler.first_fired for a in exp.expect_alert)
            and time.time() < fault_end + ALERT_GRACE_SECONDS
        ):
            sampler.sample()
            time.sleep(1)
        if time.time() < fault_end + exp.recovery_bound:
            progress(f"[{exp.name}] alerts: watching them to the end of the recovery window")
        silence = probes.left_firing(
            sampler,
            fault_end + exp.recovery_bound,
            STICKY_ALERTS,
            healed_at=fault_end,
            windows=alertwindows.load(),
        )
        silent_at = round(time.time() - fault_end, 1)
        if fleet.failure:
            raise ExperimentError(f"the fleet failed: {fleet.failure!r}")
        progress(f"[{exp.name}] checking the ledger against the devices and Postgres")
        counts = _settled_check(ledger, settings)
        detected = {a: round(t - fault_start, 1) for a, t in sampler.first_fired.items()}
        report.update(
            {
                "started_at": fault_start - WARMUP_SECONDS,
                "fault_start": fault_start,
                "fault_end": fault_end,
                "recovery_seconds": None if recovery is None else round(recovery, 1),
                "drained": drained,
                "drain_seconds": round(drained_at - drain_start, 1),
                "drained_at": drained_at,
                "backlog_recovered_below": _backlog_limit(sampler.backlog, fault_start),
                "ledger": ledger.snapshot(),
                "counts": counts,
                "alerts_fired": detected,
                "time_to_detect": {a: detected.get(a) for a in exp.expect_alert},
                "alerts_after_recovery": (
                    None if silence is None else {**silence, "seconds_after_rollback": silent_at}
                ),
                "errors_for_seconds": timeline.errors_for(fault_start, fault_end),
                "timeline": timeline.series(),
                "error_causes": dict(timeline.causes),
                "backlog": sampler.backlog,
                "stolen_by_unsafe_consumer": actions.stolen,
                "targets": actions.resolved,
            }
        )
        problems = loss_problems(counts)
        if under_way is not None:
            problems += rollout.finish(settings.base_url, identity.headers, under_way)
            report["rollout"] = rollout.summary(under_way)
        if not drained:
            problems.append(f"did not drain within {DRAIN_TIMEOUT}s")
        if recovery is None or recovery > exp.recovery_bound:
            problems.append(
                f"recovery {report['recovery_seconds']}s over the bound {exp.recovery_bound:g}s"
            )
        missed = [a for a in exp.expect_alert if a not in detected]
        if missed:
            problems.append(f"expected alert(s) did not fire: {', '.join(missed)}")
        if silence is None:
            problems.append("alerts after the recovery window unknown: Prometheus did not answer")
        elif silence["left_firing"]:
            problems.append(
                f"alert(s) still firing {silent_at:g} s after the rollback (recovery window "
                f"{exp.recovery_bound:g} s): {', '.join(silence['left_firing'])}"
            )
        report["problems"] = problems
        report["passed"] = not problems
        return report
    finally:
        fleet.stop()
        actions.reset_all()
        actions.close()
        try:
            identity.remove()
        except (httpx.HTTPError, psycopg.Error) as exc:
            progress(f"[{exp.name}] warning: could not remove the test devices: {exc}")


def _warm_up(
    sampler: probes.Sampler,
    timeline: Timeline,
    progress: Callable[[str], None],
    name: str,
    windows: int = WARMUP_WINDOWS,
) -> float:
    """Load the system until one whole warm-up window passes without an error (the steady
    state the hypothesis starts from); returns how long that took.

    Raises:
        ExperimentError: no clean window within ``windows`` tries.
    """
    started = time.time()
    for _ in range(windows):
        window = time.time()
        _sample_for(sampler, WARMUP_SECONDS)
        errors = timeline.errors_between(window, time.time())
        if not errors:
            return round(time.time() - started, 1)
        progress(f"[{name}] {errors} errors during warm-up ({dict(timeline.causes)}); again")
    raise ExperimentError(
        f"steady state not met: errors in each of {windows} warm-up windows"
        f" ({dict(timeline.causes)})"
    )


def _sample_for(
    sampler: probes.Sampler,
    seconds: float,
    progress: Any = None,
    name: str = "",
    timeline: Timeline | None = None,
    since: float = 0.0,
    load_status: Callable[[], str] | None = None,
) -> None:
    end = time.time() + seconds
    last_report = time.time()
    while time.time() < end:
        sampler.sample()
        time.sleep(max(0.0, min(1.0, end - time.time())))
        if progress and timeline and time.time() - last_report >= 5:
            last_report = time.time()
            progress(
                f"[{name}]   {time.time() - since:4.0f}s: "
                f"{timeline.requests_between(since, time.time())} requests, "
                f"{timeline.errors_between(since, time.time())} errors, "
                f"backlog {sampler.backlog[-1][1]}" + _with_load(load_status)
            )


def _with_load(load_status: Callable[[], str] | None) -> str:
    """`` | load ...`` for a progress line when a background load runs."""
    return f" | {load_status()}" if load_status is not None else ""


def _backlog_limit(backlog: list[tuple[float, int | None]], before: float) -> int:
    """The backlog under which the system counts as recovered: BACKLOG_RECOVERED, or twice
    the largest backlog sampled before ``before`` (a loaded system has a standing backlog)."""
    seen = [d for t, d in backlog if t < before and d is not None]
    return max(BACKLOG_RECOVERED, 2 * max(seen, default=0))


def _wait_recovery(
    sampler: probes.Sampler,
    timeline: Timeline,
    since: float,
    limit: float,
    progress: Callable[[str], None] = print,
    backlog_limit: int = BACKLOG_RECOVERED,
    load_status: Callable[[], str] | None = None,
) -> float | None:
    """The first moment after ``since`` from which there were no errors for QUIET_SECONDS and
    the backlog was at most ``backlog_limit``; None if not within ``limit`` seconds."""
    deadline = since + limit
    candidate = since
    last_report = since
    while time.time() < deadline:
        sampler.sample()
        now = time.time()
        if now - last_report >= 5:
            last_report = now
            kinds = timeline.errors_by_kind(now - 5, now)
            causes = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"
            progress(
                f"  +{now - since:3.0f}s after the fault: {sum(kinds.values())} errors in the "
                f"last 5s ({causes}), backlog {sampler.backlog[-1][1]}" + _with_load(load_status)
            )
        if timeline.errors_between(int(candidate), now + 1):
            candidate = now
        depth = sampler.backlog[-1][1]
        if depth is None or depth > backlog_limit:
            candidate = now
        if now - candidate >= QUIET_SECONDS:
            return candidate
        time.sleep(0.5)
    return None


def _settled_check(ledger: Ledger, settings: Settings) -> dict[str, Any]:
    """Run the checker until it is clean or CHECK_TIMEOUT passes (workers may still be writing
    the last rows); the last result counts."""
    deadline = time.time() + CHECK_TIMEOUT
    while True:
        counts = check(ledger, settings.database_direct_url)
        if all(c["clean"] for c in counts.values()) or time.time() > deadline:
            return counts
        time.sleep(1)
