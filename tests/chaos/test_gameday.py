"""A short game day (``iotctl chaos gameday``, a fixed seed): faults overlapping under a fleet,
the ledger checked while it runs, nothing lost; and the unsafe consumer caught by the
continuous ledger while the game day still runs, not only at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos import gameday, gameday_report, gameday_run
from iot.settings import get_settings

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(900)]

FAULTS = ["kill-api-1", "redis-latency", "postgres-latency", "kill-worker-sensors", "redis-down"]


def test_a_short_game_day_loses_nothing_and_reports_every_fault(tmp_path: Path) -> None:
    o = gameday.Options(
        duration=150,
        seed=11,
        faults=FAULTS,
        max_concurrent=2,
        min_length=10,
        max_length=25,
        mean_gap=8,
        devices=10,
        command_rate=2,
        recovery=45,
        settle=0,  # burn-rate alerts take their 5-minute window to clear: make gameday judges
    )
    report = gameday_run.run(o, get_settings(), tmp_path)
    gameday_report.write(report, tmp_path)
    planned = json.loads((tmp_path / "schedule.json").read_text())["windows"]
    assert [w["kind"] for w in planned] == [f["kind"] for f in report["faults"]]
    assert len(report["faults"]) >= 4 and report["overlapping"] >= 1
    for kind, c in report["counts"].items():
        assert c["lost"] == c["duplicated"] == c["unexpected"] == 0, (kind, c)
    assert report["counts"]["commands"]["accepted"] > 100
    assert report["ledger_checks"] >= 10 and report["breaches"] == []
    assert report["drained"] and report["passed"], report["problems"]
    kills = [f for f in report["faults"] if f["kind"].startswith("kill-")]
    assert all(f["time_to_detect"].get("ComponentRestarted") is not None for f in kills)
    md = (tmp_path / "report.md").read_text()
    assert "| # | kind |" in md and (tmp_path / "timeline.png").stat().st_size > 10_000


def test_the_continuous_ledger_catches_the_unsafe_consumer_while_it_runs(tmp_path: Path) -> None:
    o = gameday.Options(
        duration=100,
        seed=3,
        faults=["auto-ack-consumer"],
        max_concurrent=1,
        min_length=15,
        max_length=20,
        mean_gap=5,
        devices=10,
        command_rate=1,
        base=15,
        bound=20,
        recovery=20,
        settle=0,
    )
    report = gameday_run.run(o, get_settings(), tmp_path)
    assert report["breaches"], "the continuous ledger saw nothing"
    first = report["breaches"][0]
    assert first["at"] < report["healed_at"], "found only after the game day"
    assert first["readings"] > 0 and first["windows"][0]["kind"] == "auto-ack-consumer"
    assert report["counts"]["readings"]["lost"] > 0 and not report["passed"]
