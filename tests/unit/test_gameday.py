"""The game day's plan and judgements (chaos/gameday.py): reproducible schedules that never
act twice on one target at once, when an accepted item is due, alert detection and recovery."""

from __future__ import annotations

import math

import pytest

from chaos import gameday, gameday_report
from chaos.gameday_run import catalog, parse_halt_on
from loadtest.prom import Slo

KINDS = [
    gameday.Kind("kill-postgres", ({"action": "kill", "target": "postgres"},), (), ("A",)),
    gameday.Kind("postgres-latency", ({"action": "toxic_add", "target": "postgres"},), ()),
    gameday.Kind("redis-down", ({"action": "proxy_disable", "target": "redis"},), ()),
    gameday.Kind("kill-api-1", ({"action": "kill", "target": "api-1"},), ()),
]


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a = gameday.schedule(7, 3600, KINDS)
    assert a == gameday.schedule(7, 3600, KINDS)
    assert a != gameday.schedule(8, 3600, KINDS)
    assert len(a) >= 60 and gameday.overlaps(a) > 10


@pytest.mark.parametrize("seed", range(20))
def test_windows_never_share_a_target_and_respect_the_concurrency(seed: int) -> None:
    by_name = {k.name: k for k in KINDS}
    windows = gameday.schedule(seed, 1800, KINDS, max_concurrent=2, mean_gap=5)
    for w in windows:
        assert 30 <= w.start and w.end <= 1800 - 30 + 1e-6
        active = [v for v in windows if v is not w and v.start <= w.start < v.end]
        assert len(active) < 2
        for v in active:
            assert not (by_name[v.kind].targets & by_name[w.kind].targets), (v, w)


def test_an_item_is_due_after_base_or_after_the_heal_of_the_faults_around_it() -> None:
    assert gameday.due(100, [], base=30, bound=60) == 130
    assert gameday.due(100, [(200, 260)], base=30, bound=60) == 130  # the fault came later
    assert gameday.due(100, [(110, 150)], base=30, bound=60) == 210  # heal + bound
    assert gameday.due(100, [(50, 120)], base=30, bound=60) == 180  # accepted during it
    # a chain: the second fault starts before the first one's deadline
    assert gameday.due(100, [(110, 150), (200, 300)], base=30, bound=60) == 360
    assert gameday.due(100, [(90, None)], base=30, bound=60) == math.inf  # still active
    assert gameday.due(100, [(10, 40)], base=30, bound=60) == 130  # healed long before


def test_time_to_detect_counts_only_alerts_that_start_with_the_fault() -> None:
    w = gameday.Window(0, "kill-postgres", 0, 10, started=1000, ended=1010, expect_alert=["A"])
    spans = gameday.spans([(990, {"B"}), (1005, {"A", "B"}), (1020, set())])
    assert [(s.name, s.start, s.end) for s in spans] == [("B", 990, 1020), ("A", 1005, 1020)]
    assert gameday.time_to_detect(w, spans, grace=60) == {"A": 5.0}
    late = gameday.spans([(1100, {"A"})])
    assert gameday.time_to_detect(w, late, grace=60) == {"A": None}


def test_time_to_recover_is_from_the_heal_to_three_quiet_seconds() -> None:
    w = gameday.Window(0, "redis-down", 0, 10, started=1000, ended=1010)
    errors = [(1010.0, 4), (1011.0, 2), (1012.0, 0), (1013.0, 0), (1014.0, 0), (1015.0, 0)]
    assert gameday.time_to_recover(w, errors) == 2.0
    assert gameday.time_to_recover(w, [(1010.0, 1), (1011.0, 1)]) is None


def test_the_catalog_and_the_halt_bounds() -> None:
    names = {k.name for k in catalog([], cluster=False)}
    assert "kill-postgres" in names and "redis-latency" in names
    assert not any(n.startswith("rollout-") for n in names)
    assert "auto-ack-consumer" not in names
    assert [k.name for k in catalog(["auto-ack-consumer"], cluster=False)] == ["auto-ack-consumer"]
    assert parse_halt_on("api-availability=200, ingest-lag=50") == {
        "api-availability": 200.0,
        "ingest-lag": 50.0,
    }
    with pytest.raises(ValueError, match="SLO=BURN_RATE"):
        parse_halt_on("api-availability")


class FakeProm:
    """Answers an SLO's error ratio by the window's end time, and one event a second."""

    def __init__(self, ratios: dict[float, float]) -> None:
        self.ratios = ratios

    def scalar(self, expr: str, at: float) -> float:
        return self.ratios.get(at, 0.0) if expr.startswith("ERR") else 1.0


def test_a_fault_that_spends_a_page_of_budget_without_any_alert_is_a_silent_breach() -> None:
    slos = [Slo("api-availability", 0.999, "ERR[5m]", "EV[5m]")]
    faults = [
        # 120 s at half the answers failing: burn 500x over 150 s, 2.9 % of the 30-day budget
        {"index": 0, "kind": "postgres-timeout", "started": 1000.0, "ended": 1120.0},
        # the same, but an alert started 40 s in
        {"index": 1, "kind": "redis-timeout", "started": 2000.0, "ended": 2120.0},
        # a 10 s blip at the same ratio: 0.5 % of the budget, less than a page is for
        {"index": 2, "kind": "kill-api-1", "started": 3000.0, "ended": 3010.0},
    ]
    alerts = [
        # ComponentRestarted from an earlier kill, still firing: sticky, does not count
        {"name": "ComponentRestarted", "start": 900.0, "end": 1500.0},
        {"name": "DependencyProbeFailing", "start": 2040.0, "end": 2200.0},
    ]
    r = {"faults": faults, "alerts": alerts, "ended_at": 4000.0}
    prom = FakeProm({1150.0: 0.5, 2150.0: 0.5, 3040.0: 0.5})
    silent = gameday_report.judge_faults(r, prom, slos, frozenset({"ComponentRestarted"}))
    assert [b["window"] for b in silent] == [0]
    assert faults[0]["slos_broken"]["api-availability"]["burn"] == 500.0
    assert faults[0]["alerts_during"] == []
    assert faults[1]["alerts_during"] == ["DependencyProbeFailing"]
    assert faults[2]["slos_broken"]["api-availability"]["spent"] < gameday_report.PAGE_SPEND


class FakeAlerts:
    def __init__(self, firing: list[dict[str, str]]) -> None:
        self.firing = firing

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        return [(labels, 1.0) for labels in self.firing]


def test_an_alert_still_within_its_own_window_is_not_left_firing() -> None:
    r = {"healed_at": 1000.0, "alerts_quiet_after_heal_s": 465.0, "alerts_before": ["Old"]}
    prom = FakeAlerts(
        [
            # the 6h/30m page: its 30-minute short window still holds the faults
            {"alertname": "CommandLatencyBudgetBurn", "long": "6h", "short": "30m"},
            # a 1-minute rate alert 465 s after the heal: it should have cleared
            {"alertname": "APIHighErrorRate"},
            {"alertname": "ComponentRestarted", "instance": "127.0.0.1:8101"},
            {"alertname": "Old"},
        ]
    )
    left, within = gameday_report.left_firing(r, prom, frozenset({"ComponentRestarted"}))
    assert left == ["APIHighErrorRate"]
    assert within == ["CommandLatencyBudgetBurn"]
