"""Every transition of a command's life, as pure rules (no network, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iot.commands import lifecycle as lc
from iot.errors import Conflict, TransitionRefused

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
EARLIER = NOW - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("attempt", "expires_at", "outcome"),
    [
        (0, LATER, lc.DELIVERED),  # first delivery
        (4, LATER, lc.DELIVERED),  # fifth delivery, the last allowed
        (5, LATER, lc.DEAD),  # every attempt used, lease lapsed
        (0, EARLIER, lc.EXPIRED),  # ttl passed before the first delivery
        (5, EARLIER, lc.EXPIRED),  # expiry wins over death
        (0, NOW, lc.EXPIRED),  # expires_at is exclusive
    ],
)
def test_claim_outcome(attempt: int, expires_at: datetime, outcome: str) -> None:
    assert lc.claim_outcome(attempt, expires_at, NOW, max_attempts=5) == outcome


@pytest.mark.parametrize(
    ("status", "attempt", "expires_at", "leased_until", "outcome"),
    [
        (lc.QUEUED, 0, LATER, None, None),  # nothing to do yet
        (lc.QUEUED, 0, EARLIER, None, lc.EXPIRED),  # offline device, ttl passed
        (lc.DELIVERED, 2, EARLIER, LATER, None),  # lease runs: the device may still ack
        (lc.DELIVERED, 2, EARLIER, EARLIER, lc.EXPIRED),
        (lc.DELIVERED, 5, LATER, EARLIER, lc.DEAD),  # last lease lapsed
        (lc.DELIVERED, 4, LATER, EARLIER, None),  # claimable again, not dead
        (lc.DELIVERED, 5, LATER, LATER, None),  # last lease still runs
        (lc.SUCCEEDED, 1, EARLIER, None, None),  # final stays final
        (lc.CANCELLED, 0, EARLIER, None, None),
    ],
)
def test_sweep_outcome(
    status: str, attempt: int, expires_at: datetime, leased_until: datetime | None, outcome: str
) -> None:
    assert lc.sweep_outcome(status, attempt, expires_at, leased_until, NOW, 5) == outcome


@pytest.mark.parametrize("pending", lc.PENDING)
@pytest.mark.parametrize("outcome", lc.ACK_STATUSES)
def test_an_ack_finishes_a_pending_command(pending: str, outcome: str) -> None:
    assert lc.on_ack(pending, outcome) == lc.Change(outcome, outcome)


@pytest.mark.parametrize("acked", lc.ACK_STATUSES)
def test_a_repeated_or_conflicting_ack_changes_and_records_nothing(acked: str) -> None:
    for outcome in lc.ACK_STATUSES:
        assert lc.on_ack(acked, outcome) == lc.Change(acked, None)


@pytest.mark.parametrize("final", [lc.EXPIRED, lc.DEAD, lc.CANCELLED])
def test_a_late_ack_is_recorded_but_the_status_stays(final: str) -> None:
    # The device did run it (its lease ran out meanwhile): the timeline must say so.
    assert lc.on_ack(final, lc.SUCCEEDED) == lc.Change(final, lc.SUCCEEDED)


def test_an_ack_must_be_an_ack_status() -> None:
    with pytest.raises(ValueError, match="not an ack status"):
        lc.on_ack(lc.DELIVERED, lc.CANCELLED)


@pytest.mark.parametrize("pending", lc.PENDING)
def test_cancel_a_pending_command(pending: str) -> None:
    assert lc.on_cancel(pending) == lc.Change(lc.CANCELLED, lc.CANCELLED)


@pytest.mark.parametrize("final", sorted(lc.TERMINAL))
def test_cancel_of_a_final_command_is_refused_with_its_status(final: str) -> None:
    with pytest.raises(TransitionRefused) as info:
        lc.on_cancel(final)
    assert info.value.status == final and final in info.value.detail
    assert isinstance(info.value, Conflict) and info.value.status_code == 409  # the one tree


def test_only_dead_commands_are_requeued() -> None:
    assert lc.on_requeue(lc.DEAD) == lc.Change(lc.QUEUED, lc.QUEUED)
    for status in sorted((lc.TERMINAL | set(lc.PENDING)) - {lc.DEAD}):
        with pytest.raises(TransitionRefused, match="only dead"):
            lc.on_requeue(status)


def test_a_whole_life_walks_the_documented_path() -> None:
    """queued → delivered ×5 (leases lapse) → dead → requeued → delivered → succeeded."""
    status, attempt = lc.QUEUED, 0
    timeline = [status]
    while (outcome := lc.claim_outcome(attempt, LATER, NOW, 5)) == lc.DELIVERED:
        attempt += 1
        status = outcome
        timeline.append(status)
    timeline.append(outcome)
    status = lc.on_requeue(outcome).status
    timeline.append(status)
    status = lc.claim_outcome(0, LATER, NOW, 5)
    timeline.append(status)
    timeline.append(lc.on_ack(status, lc.SUCCEEDED).status)
    assert timeline == (
        ["queued"] + ["delivered"] * 5 + ["dead", "queued", "delivered", "succeeded"]
    )
