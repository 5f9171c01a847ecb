"""The chaos sampler counts an alert as this fault's detection only when it is new against the
baseline taken at the fault's start: another instance, or another value. ComponentRestarted is
sticky (10 minutes); its value, the newest restart's time, is what makes a second restart of
the same component within the window a new detection."""

from __future__ import annotations

from typing import Any

import pytest

from chaos import probes

WORKER = {
    "alertname": "ComponentRestarted",
    "severity": "ticket",
    "job": "worker",
    "instance": "127.0.0.1:9811",
    "worker": "sensors",
}


def _firing(labels: dict[str, str], value: str) -> dict[str, Any]:
    return {"labels": labels, "state": "firing", "value": value}


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What Prometheus' /api/v1/alerts answers; the test changes it between samples."""
    current: list[dict[str, Any]] = []
    monkeypatch.setattr(probes, "_alerts", lambda settings: list(current))
    monkeypatch.setattr(probes, "backlog", lambda settings: 0)
    return current


def _sampler() -> probes.Sampler:
    return probes.Sampler(settings=None)  # type: ignore[arg-type]  # probes are patched


def test_a_new_restart_time_of_an_alert_already_firing_is_a_detection(alerts):
    alerts.append(_firing(WORKER, "1.79661e+09"))  # restarted before (the cluster tests)
    sampler = _sampler()
    sampler.start_fault()
    sampler.sample()
    assert sampler.first_fired == {}  # the earlier restart is not this fault's
    alerts[:] = [_firing(WORKER, "1.7966106e+09")]  # the kill: a newer start time
    sampler.sample()
    assert set(sampler.first_fired) == {"ComponentRestarted"}


def test_the_same_alert_firing_again_with_the_same_value_is_not(alerts):
    alerts.append(_firing(WORKER, "1.79661e+09"))
    sampler = _sampler()
    sampler.start_fault()
    alerts.clear()  # resolved for a moment
    sampler.sample()
    alerts.append(_firing(WORKER, "1.79661e+09"))  # back, same restart
    sampler.sample()
    assert sampler.first_fired == {}


def test_pending_alerts_and_alerts_before_the_fault_do_not_count(alerts):
    sampler = _sampler()
    alerts.append(_firing(WORKER, "1.79661e+09"))
    sampler.sample()  # before start_fault: no baseline, nothing counted
    assert sampler.first_fired == {}
    sampler.start_fault()
    alerts.append({"labels": {**WORKER, "instance": "127.0.0.1:9812"}, "state": "pending"})
    sampler.sample()
    assert sampler.first_fired == {}


# After the recovery window: what the run left firing fails it; what fired and resolved, what
# fired without a break since before the fault, and ComponentRestarted's ten minutes do not.

BROKER = {"alertname": "RabbitMQDown", "severity": "page", "job": "rabbitmq"}
BURN = {"alertname": "APIAvailabilityBudgetBurn", "severity": "page", "slo": "api-availability"}
STICKY = frozenset({"ComponentRestarted"})


class _Clock:
    """Time for probes: sleeping advances it and runs what the test scheduled for then."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.at: dict[float, Any] = {}

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for when in sorted(t for t in self.at if t <= self.now):
            self.at.pop(when)()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(probes, "time", c)
    return c


def test_an_alert_that_fired_and_resolved_is_not_left_firing(alerts, clock):
    sampler = _sampler()
    sampler.start_fault()
    alerts.append(_firing(BROKER, "0"))
    sampler.sample()
    alerts.clear()  # recovered
    assert probes.left_firing(sampler, clock.now + 30, STICKY) == {
        "left_firing": [],
        "since_before": [],
        "by_design": [],
        "within_window": [],
    }
    assert clock.now == 1_000.0  # nothing pending or firing: no need to wait for the window


def test_an_alert_pending_in_the_window_that_fires_by_its_end_is_left_firing(alerts, clock):
    sampler = _sampler()
    sampler.start_fault()
    alerts.append({"labels": BROKER, "state": "pending"})
    clock.at[1_010.0] = lambda: alerts.__setitem__(0, _firing(BROKER, "1"))
    result = probes.left_firing(sampler, clock.now + 30, STICKY)
    assert result is not None and result["left_firing"] == ["RabbitMQDown"]
    assert clock.now >= 1_030.0  # looked at the end of the window, not before


def test_what_fired_before_the_fault_and_restarts_are_not_counted_against_the_run(alerts, clock):
    restarted_before = {**WORKER, "worker": "commandlog", "instance": "127.0.0.1:9812"}
    alerts += [_firing(BURN, "0.02"), _firing(restarted_before, "1.79661e+09")]
    sampler = _sampler()
    sampler.start_fault()
    sampler.sample()
    alerts[0] = _firing(BURN, "0.03")  # still firing, another value
    alerts += [_firing(WORKER, "1.7966106e+09")]  # the kill's restart
    assert probes.left_firing(sampler, clock.now, STICKY) == {
        "left_firing": [],
        "since_before": ["APIAvailabilityBudgetBurn"],
        "by_design": ["ComponentRestarted"],
        "within_window": [],
    }


def test_an_alert_from_before_that_resolved_and_fired_again_is_the_runs(alerts, clock):
    alerts.append(_firing(BURN, "0.02"))
    sampler = _sampler()
    sampler.start_fault()
    alerts.clear()
    sampler.sample()
    alerts.append(_firing(BURN, "0.05"))
    result = probes.left_firing(sampler, clock.now, STICKY)
    assert result is not None and result["left_firing"] == ["APIAvailabilityBudgetBurn"]


def test_no_answer_from_prometheus_by_the_end_of_the_window_is_unknown(alerts, clock, monkeypatch):
    sampler = _sampler()
    sampler.start_fault()
    monkeypatch.setattr(probes, "_alerts", lambda settings: None)
    assert probes.left_firing(sampler, clock.now + 5, STICKY) is None


def test_an_alert_still_inside_its_own_window_is_not_left_firing_but_after_it_is(alerts, clock):
    windows = {"IngestLagHigh": 120.0, "RolloutStalled": 0.0}
    lag = {"alertname": "IngestLagHigh", "severity": "page"}
    stalled = {"alertname": "RolloutStalled", "severity": "ticket"}
    sampler = _sampler()
    sampler.start_fault()
    burn = {**BURN, "short": "5m", "long": "1h"}
    alerts += [_firing(lag, "30"), _firing(burn, "0.5"), _firing(stalled, "901")]
    healed = clock.now
    result = probes.left_firing(sampler, healed + 45, STICKY, healed_at=healed, windows=windows)
    assert result is not None
    assert result["within_window"] == ["APIAvailabilityBudgetBurn", "IngestLagHigh"]
    assert result["left_firing"] == ["RolloutStalled"]  # a gauge: no window to wait out
    late = probes.left_firing(sampler, healed + 400, STICKY, healed_at=healed, windows=windows)
    assert late is not None
    assert late["left_firing"] == ["APIAvailabilityBudgetBurn", "IngestLagHigh", "RolloutStalled"]
