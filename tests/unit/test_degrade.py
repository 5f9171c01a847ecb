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
        "| postgres | latency | 200 ms | 400 ms | command-latency | CommandLatencyBudgetBurn |"
    )


def test_a_share_of_connections_is_the_toxicity_and_a_silent_breach_is_flagged() -> None:
    attributes, toxicity = degrade.LADDERS["reset_peer"].toxic_args(0.2)
    assert toxicity == 0.2 and attributes == {"timeout": 500}
    step = degrade.Step("redis", "reset_peer", 0.2, 0, 1, {"api-availability": {"held": False}})
    assert degrade.table([step])[2].endswith("| api-availability | **none** |")
