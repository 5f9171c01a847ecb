"""Probes: the code that observes the system (health, queue depths, alerts). Probes never act."""

from __future__ import annotations

import time
from typing import Any

import httpx

from chaos import alertwindows
from iot.settings import Settings
from iot.stack.control import prometheus_api, rabbitmq_api, wait_healthy

PRODUCT_QUEUES = ("sensors.data", "commands.data", "commands.log")


def unhealthy(settings: Settings, timeout: float) -> dict[str, str]:
    """Wait up to ``timeout`` for every component to be healthy; returns the ones that are not."""
    results = wait_healthy(settings, None, timeout)
    return {name: h.detail for name, h in results.items() if not h.ok}


def backlog(settings: Settings) -> int | None:
    """Messages ready or unacked in the workers' queues (None if RabbitMQ does not answer)."""
    try:
        r = rabbitmq_api(
            settings, "GET", "queues/%2F", timeout=2, params={"columns": "name,messages"}
        )
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    return sum(int(q.get("messages", 0) or 0) for q in r.json() if q["name"] in PRODUCT_QUEUES)


def _alerts(settings: Settings) -> list[dict[str, Any]] | None:
    """Prometheus' pending and firing alerts (None if it does not answer)."""
    try:
        r = prometheus_api(settings, "alerts", timeout=2)
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    alerts: list[dict[str, Any]] = r.json()["data"]["alerts"]
    return alerts


def firing_alerts(settings: Settings) -> set[tuple[str, str]] | None:
    """The alerts Prometheus has firing now, as (name, labels and value) pairs (None if it does
    not answer). The same alert on another instance, or with another value (say,
    ComponentRestarted's newest restart time, new with every restart while the alert was
    already firing), is another pair."""
    alerts = _alerts(settings)
    return None if alerts is None else _pairs(alerts)


def _pairs(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], repr((sorted(a["labels"].items()), a.get("value"))))
        for a in alerts
        if a.get("state") == "firing"
    }


def _key(alert: dict[str, Any]) -> tuple[str, str]:
    """One alert as (name, labels), whatever its value."""
    return alert["labels"]["alertname"], repr(sorted(alert["labels"].items()))


def firing_instances(settings: Settings, by_value: frozenset[str]) -> set[tuple[str, str]] | None:
    """The alerts firing now as (name, labels) pairs, and for the alerts named in ``by_value``
    (name, labels and value): ComponentRestarted's value is the newest restart's time, so a
    second restart while it fires is a new instance (None if Prometheus does not answer)."""
    alerts = _alerts(settings)
    if alerts is None:
        return None
    out = set()
    for a in alerts:
        if a.get("state") == "firing":
            name, labels = _key(a)
            out.add((name, labels + (repr(a.get("value")) if name in by_value else "")))
    return out


def active_alerts(settings: Settings) -> set[str] | None:
    """Names of the alerts Prometheus has pending or firing now (None if it does not answer)."""
    alerts = _alerts(settings)
    return None if alerts is None else {a["labels"]["alertname"] for a in alerts}


def wait_alerts_clear(settings: Settings, names: list[str], timeout: float) -> set[str]:
    """Wait until none of ``names`` is pending or firing (an earlier fault may still hold one);
    returns those still active after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        active = (active_alerts(settings) or set()) & set(names)
        if not active or time.monotonic() > deadline:
            return active
        time.sleep(2)


class Sampler:
    """Samples backlog and firing alerts about once a second, for the report.

    Alerts already firing when the fault starts (say, from an earlier experiment) are the
    baseline: only alerts that start firing after it count as detections of this fault, and
    one of them that keeps firing without a break is not this fault's either (``carried``).
    """

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.backlog: list[tuple[float, int | None]] = []
        self.first_fired: dict[str, float] = {}
        self.baseline: set[tuple[str, str]] | None = None
        self.before: set[tuple[str, str]] = set()  # firing at the fault's start (name, labels)
        self.broken: set[tuple[str, str]] = set()  # of those, seen not firing since
        self.alerts: list[dict[str, Any]] | None = None  # the last sample's, pending or firing

    def start_fault(self) -> None:
        firing = [a for a in _alerts(self.s) or [] if a.get("state") == "firing"]
        self.baseline = _pairs(firing)
        self.before = {_key(a) for a in firing}

    @property
    def carried(self) -> set[tuple[str, str]]:
        """Alerts firing since before the fault without a break."""
        return self.before - self.broken

    def sample(self) -> None:
        now = time.time()
        self.backlog.append((now, backlog(self.s)))
        if self.baseline is None:
            return
        self.alerts = _alerts(self.s)
        if self.alerts is None:
            return
        for name, _labels in _pairs(self.alerts) - self.baseline:
            self.first_fired.setdefault(name, now)
        self.broken |= self.before - {_key(a) for a in self.alerts if a.get("state") == "firing"}


def left_firing(
    sampler: Sampler,
    until: float,
    by_design: frozenset[str],
    healed_at: float | None = None,
    windows: dict[str, float] | None = None,
) -> dict[str, list[str]] | None:
    """The alerts still firing at ``until`` (the end of an experiment's recovery window),
    sampling until then; an alert that fired and resolved meanwhile does not count. By name:
    ``left_firing``, what the run left firing (it failed to leave the system silent);
    ``since_before``, firing without a break since before the fault (not this fault's);
    ``by_design``, the alerts of ``by_design`` (they outlast their cause on purpose, as
    ComponentRestarted does for ten minutes after a restart); ``within_window``, alerts whose
    expression still averages over the fault (``alertwindows``: less than their window has
    passed since ``healed_at``; a game day waits those out). None if Prometheus does not
    answer by ``until``.

    Returns sooner once nothing else is pending or firing: only an alert of a new fault could
    fire before ``until`` then.
    """
    while True:
        sampler.sample()
        alerts, now = sampler.alerts, time.time()
        if alerts is None:
            if now >= until:
                return None
            time.sleep(1)
            continue
        found: dict[str, set[str]] = {
            "left_firing": set(),
            "since_before": set(),
            "by_design": set(),
            "within_window": set(),
        }
        busy = False
        for a in alerts:
            name = a["labels"]["alertname"]
            if name in by_design:
                kind = "by_design"
            elif _key(a) in sampler.carried:
                kind = "since_before"
            elif (
                healed_at is not None
                and windows is not None
                and now - healed_at < alertwindows.clears_within(a, windows)
            ):
                kind = "within_window"
            else:
                kind, busy = "left_firing", True
            if a.get("state") == "firing":
                found[kind].add(name)
        if not busy or now >= until:
            return {kind: sorted(names) for kind, names in found.items()}
        time.sleep(1)
