"""A healthy stack fires no alert: every rule of monitoring/alerts/ is silent while nothing is
wrong, asked of the live Prometheus that evaluates them.

An alert that is pending may still fire once its `for:` has passed, so the test waits for
pending alerts to fire or clear, and no longer than the longest `for:` of the rules it
checks (about 10 minutes, only while one is pending; nothing pending: a few seconds).

Left out are the alerts that record events of the last minutes or hours rather than a state
of the stack: the tests (and whoever shares the stack) restart components, make commands go
dead and answer errors on purpose, and those alerts then rightly fire for their window.
Their promtool tests (monitoring/alerts/tests/) show each of them silent when healthy.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from iot.settings import Settings
from iot.stack.control import Supervisor, prometheus_api, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EVENT_ALERTS = {
    "ComponentRestarted": "a restart in the last 10 minutes",
    "CommandsDead": "a command gone dead in the last 15 minutes",
    "RolloutAborted": "a rollout aborted in the last 15 minutes",
    "ReadingsRefused": "readings refused in the last 10 minutes",
}
EVENT_SUFFIX = "BudgetBurn"  # the SLO burns: errors of the last 5 minutes to 3 days
EVALUATION_SECONDS = 5  # monitoring/prometheus/prometheus.yml: evaluation_interval


def _checked(name: str) -> bool:
    return name not in EVENT_ALERTS and not name.endswith(EVENT_SUFFIX)


def _groups(settings: Settings) -> list[dict[str, Any]]:
    r = prometheus_api(settings, "rules", {"type": "alert"}, timeout=5)
    r.raise_for_status()
    groups: list[dict[str, Any]] = r.json()["data"]["groups"]
    return groups


def _epoch(stamp: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds, `Z`) as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def _active(groups: list[dict[str, Any]]) -> list[tuple[str, dict[str, str], float, float]]:
    """The checked alerts pending or firing: (state, labels, active since, `for:` seconds)."""
    return [
        (alert["state"], alert["labels"], _epoch(alert["activeAt"]), float(rule["duration"]))
        for group in groups
        for rule in group["rules"]
        if _checked(rule["name"])
        for alert in rule.get("alerts", [])
    ]


def _describe(active: list[tuple[str, dict[str, str], float, float]]) -> list[str]:
    return [
        f"{labels['alertname']} {state} since {time.time() - since:.0f}s "
        f"(for: {duration:g}s) {dict(sorted(labels.items()))}"
        for state, labels, since, duration in active
    ]


def test_a_healthy_stack_fires_no_alert(settings: Settings, stack: Supervisor) -> None:
    bad = {n: h.detail for n, h in wait_healthy(settings, None, timeout=90).items() if not h.ok}
    assert not bad, f"the stack is not healthy, nothing to say about its alerts: {bad}"
    started = time.time()
    # Every group of alerts evaluated after the stack was seen healthy: the states describe it
    # as it is now.
    while True:
        groups = [g for g in _groups(settings) if g["rules"]]
        if all(_epoch(g["lastEvaluation"]) > started for g in groups):
            break
        slowest = max(float(g["interval"]) for g in groups)
        assert time.time() < started + 3 * slowest, "Prometheus evaluates no alert rules"
        time.sleep(1)
    checked = [r for g in groups for r in g["rules"] if _checked(r["name"])]
    assert len(checked) >= 30, [r["name"] for r in checked]  # the rules are loaded
    longest = max(float(r["duration"]) for r in checked)
    deadline = started + longest + 3 * EVALUATION_SECONDS
    while True:
        active = _active(groups)
        firing = [a for a in active if a[0] == "firing"]
        assert not firing, f"alerts firing on a healthy stack: {_describe(firing)}"
        if not active:
            return
        # Pending: fires once active for its `for:` unless its condition clears first.
        assert time.time() < deadline, f"still pending after {longest:g}s: {_describe(active)}"
        time.sleep(EVALUATION_SECONDS)
        groups = _groups(settings)
