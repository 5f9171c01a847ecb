"""A rollout's pure rules (iot/rollouts/rules.py)."""

from __future__ import annotations

import pytest

from iot.errors import TransitionRefused
from iot.rollouts import rules


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [
        ("scheduled", "start", "running"),
        ("running", "pause", "paused"),
        ("paused", "resume", "running"),
        ("paused", "approve", "running"),
        ("scheduled", "cancel", "cancelled"),
        ("running", "cancel", "cancelled"),
        ("paused", "cancel", "cancelled"),
    ],
)
def test_a_person_moves_a_rollout_along_its_states(state: str, action: str, after: str) -> None:
    assert rules.act(state, action) == after


@pytest.mark.parametrize("final", sorted(rules.FINAL))
@pytest.mark.parametrize("action", ["start", "pause", "resume", "approve", "cancel"])
def test_a_finished_rollout_changes_no_more(final: str, action: str) -> None:
    with pytest.raises(TransitionRefused):
        rules.act(final, action)


def test_a_running_rollout_cannot_be_resumed_nor_started_again() -> None:
    for action in ("resume", "start"):
        with pytest.raises(TransitionRefused, match="running rollout cannot be"):
            rules.act("running", action)


def test_phase_ends_by_percentage_reach_every_target() -> None:
    assert rules.phase_ends(1000, [1, 10, 100]) == [10, 100, 1000]
    assert rules.phase_ends(250, [1, 10, 100]) == [3, 25, 250]  # rounded up: never empty
    assert rules.phase_ends(5, [1, 10, 100]) == [1, 2, 5]  # each phase takes one more at least
    assert rules.phase_ends(40, [10, 50]) == [4, 40]  # a short list still ends at every target
    assert rules.phase_ends(0, [1, 100]) == [0, 0]


def test_phase_ends_by_count() -> None:
    assert rules.phase_ends(1000, [10, 100, 1000], counts=True) == [10, 100, 1000]
    assert rules.phase_ends(50, [10, 100], counts=True) == [10, 50]


def test_the_order_is_stable_and_differs_between_rollouts() -> None:
    devices = [f"d{i}" for i in range(200)]
    one = rules.order("r1", devices)
    assert one == rules.order("r1", list(reversed(devices)))  # same rollout, same order
    assert sorted(one) == sorted(devices)
    assert one[:10] != rules.order("r2", devices)[:10]  # another rollout, another first phase


def test_the_rate_holds_and_the_first_command_goes_at_once() -> None:
    assert rules.allowance(60, 0, 0) == 1
    assert rules.allowance(60, 30, 1) == 30  # 1 + 30 in 30 s at 60/min, one already sent
    assert rules.allowance(60, 30, 31) == 0
    assert rules.allowance(600, 6, 0) == 61
    assert rules.allowance(0, 100, 0) == 0


def test_abort_when_the_failure_share_crosses_the_threshold() -> None:
    criteria = rules.Criteria(max_failure_share=0.2, min_finished=10)
    quiet = {"succeeded": 8, "failed": 2, "queued": 50}
    assert rules.abort_reason(quiet, quiet, criteria) is None  # 20 % is not over 20 %
    bad = {"succeeded": 7, "failed": 2, "refused": 1}
    reason = rules.abort_reason(bad, bad, criteria)
    assert reason is not None and reason.startswith("phase: 3 of 10")
    # below the minimum of finished commands nothing is judged yet
    assert rules.abort_reason({"failed": 5}, {"failed": 5}, criteria) is None
    # a healthy phase in a rollout that went bad overall
    assert rules.abort_reason({"succeeded": 10}, {"succeeded": 20, "dead": 10}, criteria) == (
        "overall: 10 of 30 finished commands ended badly (33% > 20%)"
    )


def test_a_phase_is_finished_when_every_command_is_final() -> None:
    assert rules.phase_finished({"succeeded": 3, "failed": 1, "cancelled": 1}, 5)
    assert not rules.phase_finished({"succeeded": 3, "delivered": 1, "queued": 1}, 5)
