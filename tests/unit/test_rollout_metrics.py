"""The rollouts' metrics: every series exists from the start, and what "stalled" measures
(iot.rollouts.metrics.Progress) on a clock of the test's own."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from iot.rollouts import metrics
from iot.rollouts.metrics import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_every_series_is_there_at_zero_before_anything_happens():
    text = generate_latest(REGISTRY).decode()
    for decision in (*metrics.DRIVER_DECISIONS, *metrics.PERSON_DECISIONS):
        assert f'iot_rollout_decisions_total{{decision="{decision}"}}' in text
    for reason in metrics.REFUSALS:
        assert f'iot_rollout_targets_refused_total{{reason="{reason}"}}' in text
    for name in (
        "iot_rollout_commands_sent_total",
        "iot_rollouts_held",
        "iot_rollout_stalled_seconds",
    ):
        assert f"\n{name} " in text


def test_a_rollout_that_changes_is_not_stalled_and_one_that_does_not_is():
    clock = Clock()
    p = Progress(clock)
    p.held(["a", "b"], {}, 10)
    p.note("a", (0, 1))
    p.note("b", (0, 1))
    for sent in range(2, 12):  # a sends one command a tick; b sees nothing change
        clock.now += 1
        p.held(["a", "b"], {}, 10)
        p.note("a", (0, sent))
        p.note("b", (0, 1))
    assert p.count() == 2
    assert p.stalled_seconds() == 10.0
    clock.now += 1
    p.held(["a", "b"], {}, 10)
    p.note("b", (0, 2))  # an ack: b's counts changed
    p.note("a", (0, 11))
    assert p.stalled_seconds() == 1.0


def test_holding_back_on_purpose_is_progress():
    clock = Clock()
    p = Progress(clock)
    p.held(["a"], {}, 10)
    p.note("a", "same")
    for _ in range(100):
        clock.now += 1
        p.held(["a"], {}, 10)
        p.note("a", "same", waiting=True)  # the rate or a phase wait holds it
    assert p.stalled_seconds() == 0.0


def test_a_rollout_taken_over_starts_from_its_last_progress_in_postgres():
    clock = Clock()
    p = Progress(clock)
    assert p.unknown(["a", "b"]) == ["a", "b"]
    p.held(["a", "b"], {"a": clock.now - 600, "b": clock.now + 5}, 10)  # b: clocks differ
    assert p.unknown(["a", "b", "c"]) == ["c"]
    p.note("a", "seen first")  # the first look is no change
    p.note("b", "seen first")
    assert p.stalled_seconds() == 600.0
    clock.now += 1
    p.note("a", "something happened")
    assert p.stalled_seconds() == 1.0


def test_rollouts_no_longer_held_are_forgotten_and_an_expired_lease_holds_nothing():
    clock = Clock()
    p = Progress(clock)
    p.held(["a", "b"], {"a": clock.now - 100, "b": clock.now - 50}, 10)
    p.held(["b"], {}, 10)  # a was paused, finished or taken by another replica
    assert (p.count(), p.stalled_seconds()) == (1, 50.0)
    assert p.unknown(["a"]) == ["a"]
    clock.now += 11  # no tick since: this replica's lease lapsed, another replica drives b
    assert (p.count(), p.stalled_seconds()) == (0, 0.0)
    p.held([], {}, 10)
    assert (p.count(), p.stalled_seconds()) == (0, 0.0)
