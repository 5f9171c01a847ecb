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
