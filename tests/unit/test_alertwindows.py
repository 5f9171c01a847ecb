"""How long an alert may outlast its cause (chaos/alertwindows.py), read from the rules."""

from __future__ import annotations

from chaos import alertwindows


def test_windows_come_from_the_rules_and_burn_alerts_from_their_short_window() -> None:
    windows = alertwindows.load()
    assert windows["APIHighErrorRate"] == 60  # rate(...[1m])
    assert windows["IngestLagHigh"] == 120  # rate(...[2m])
    assert windows["RolloutStalled"] == 0  # a gauge: no window, clears at once
    burn = {"labels": {"alertname": "APIAvailabilityBudgetBurn", "short": "5m", "long": "1h"}}
    assert alertwindows.clears_within(burn, windows) == 300 + alertwindows.SLACK_SECONDS
    stalled = {"labels": {"alertname": "RolloutStalled"}}
    assert alertwindows.clears_within(stalled, windows) == 0
