"""The degradation sweep (chaos/degrade.py): strengths from the mildest, stopping at the first
that breaks an SLO, with the alerts that started during it; the README table."""

from __future__ import annotations

from typing import Any

from chaos import degrade


class FakeToxiproxy:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def add_toxic(self, proxy: str, toxic_type: str, attributes: dict[str, Any], **kw: Any) -> str:
        self.calls.append(("add", proxy, toxic_type, repr(attributes), repr(kw["toxicity"])))
        return str(kw["name"])

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.calls.append(("remove", proxy, name))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.5)


def test_the_ladder_stops_at_the_first_strength_that_breaks_an_slo() -> None:
    proxy, clock = FakeToxiproxy(), Clock()
    applied: list[float] = []

    def judge(start: float, end: float) -> dict[str, Any]:
        latency = int(proxy.calls[-2][3].split(": ")[1].rstrip("}"))
        applied.append(latency)
        return {"command-latency": {"held": latency < 400}, "ingest-lag": {"held": True}}

    def sample() -> set[tuple[str, str]]:
        # the burn alert fires while the 400 ms toxic is on
        on = proxy.calls and proxy.calls[-1][0] == "add" and "400" in proxy.calls[-1][3]
        return {("CommandLatencyBudgetBurn", "{}")} if on else set()

    steps = degrade.sweep(
        proxy,
        "postgres",
        "latency",
        judge,
        sample,
        hold=10,
        grace=4,
        rest=2,
        progress=lambda m: None,
        clock=clock,
        sleep=clock.sleep,
    )
    assert applied == [25, 50, 100, 200, 400]
    assert [s.broken for s in steps][-1] == ["command-latency"]
    assert steps[-1].alerts == ["CommandLatencyBudgetBurn"]
    assert all(not s.alerts for s in steps[:-1])
    assert [c[0] for c in proxy.calls] == ["add", "remove"] * 5  # every toxic removed
    table = degrade.table(steps)
    assert table[2] == (
        "| postgres | latency | 200 ms | none | 400 ms | command-latency "
        "| CommandLatencyBudgetBurn | – |"
    )


def test_bisect_finds_the_same_strength_in_fewer_trials() -> None:
    # Ladder of 7 (latency): the first breaking index is 4 (400 ms).
    tried: list[int] = []

    def broke(i: int) -> bool:
        tried.append(i)
        return i >= 4

    degrade.order(7, broke, "bisect")
    assert tried == [0, 4, 2, 3]  # 25 held, 400 broke, 100 and 200 held: 400 is the smallest
    assert degrade.order(7, lambda i: i >= 4, "up") == [0, 1, 2, 3, 4]
    assert degrade.order(7, lambda i: i >= 6, "bisect") == [0, 4, 6, 5]
    assert degrade.order(5, lambda i: False, "bisect") == [0, 3, 4]  # none breaks
    assert degrade.order(5, lambda i: True, "bisect") == [0]  # the mildest breaks: one trial


def test_the_table_reads_bisected_steps_in_ladder_order() -> None:
    # Bandwidth narrows as it gets stronger: 256 KB/s held (silent), 64 broke, 16 broke.
    ok = {"ingest-lag": {"held": True}}
    bad = {"ingest-lag": {"held": False, "error_ratio": 0.05, "objective": 0.99}}
    steps = [
        degrade.Step("postgres", "bandwidth", 256, 0, 1, ok),
        degrade.Step("postgres", "bandwidth", 16, 2, 3, bad, ["DependencySlow"]),
        degrade.Step("postgres", "bandwidth", 64, 4, 5, bad, ["DependencySlow"]),
    ]
    assert degrade.table(steps)[2] == (
        "| postgres | bandwidth | 256 KB/s | none | 64 KB/s | ingest-lag (5.0x) | DependencySlow "
        "| IngestLagBudgetBurn ticket (3d/6h > 1x, for 3h) |"
    )


def test_the_burn_rate_alert_if_a_breach_lasts_comes_from_the_rules() -> None:
    rules = degrade.burn_rules()
    assert {r.factor for r in rules} == {14.4, 6.0, 1.0}
    fast = degrade.if_sustained("api-availability", 20.0, rules)
    assert fast == "APIAvailabilityBudgetBurn page (1h/5m > 14.4x, for 2m)"
    assert degrade.if_sustained("ingest-lag", 7.0, rules).startswith(
        "IngestLagBudgetBurn page (6h/30m"
    )
    assert degrade.if_sustained("ingest-lag", 0.5, rules).startswith("none")


def test_a_share_of_connections_is_the_toxicity_and_a_silent_breach_is_flagged() -> None:
    attributes, toxicity = degrade.LADDERS["reset_peer"].toxic_args(0.2)
    assert toxicity == 0.2 and attributes == {"timeout": 500}
    step = degrade.Step("redis", "reset_peer", 0.2, 0, 1, {"api-availability": {"held": False}})
    assert degrade.table([step])[2].endswith("| api-availability | **none** | – |")
