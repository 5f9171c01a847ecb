"""The life of a command as pure rules: no I/O, no clock of its own, no framework.

::

    queued ──claim──> delivered ──ack──> succeeded | failed | rejected
      │  ▲               │  │
      │  └─lease lapses──┘  └─ lease lapsed at the last attempt ──> dead ──requeue──> queued
      ├── ttl passed before (re)delivery ──> expired
      └── owner cancels (queued or delivered, before an ack) ──> cancelled

The storage layer (:mod:`iot.commands.store`) applies these rules to rows; the claim and the
sweep do it set-wise in SQL with the same conditions as :func:`claimable`,
:func:`claim_outcome` and :func:`sweep_outcome`. A property test holds the two together
(``tests/integration/test_command_rules_sql.py``: generated rows in a scratch database, the
production statements run, every row compared with these functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from iot.errors import TransitionRefused  # raised here; part of the one error tree

QUEUED, DELIVERED = "queued", "delivered"
SUCCEEDED, FAILED, REJECTED = "succeeded", "failed", "rejected"
EXPIRED, CANCELLED, DEAD = "expired", "cancelled", "dead"

PENDING = (QUEUED, DELIVERED)
ACK_STATUSES = (SUCCEEDED, FAILED, REJECTED)
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, EXPIRED, CANCELLED, DEAD})


@dataclass(frozen=True)
class Change:
    """What a transition does: the status afterwards, and the event to record (None: none).

    ``status`` equal to the current one with an event means "record, change nothing" (an ack
    that arrives after the command was already expired, dead or cancelled: the device did run
    it, and the timeline says so).
    """

    status: str
    event: str | None


def claimable(status: str, leased_until: datetime | None, now: datetime) -> bool:
    """Whether a poll's claim takes the command: pending, and no lease of it still runs."""
    return status in PENDING and (leased_until is None or leased_until <= now)


def claim_outcome(attempt: int, expires_at: datetime, now: datetime, max_attempts: int) -> str:
    """What a claim does to a claimable command (pending, lease free or lapsed).

    ``attempt`` counts the deliveries so far. Expired first (a command past its ttl is never
    delivered, whatever its attempts), then dead (every attempt used), else delivered again.
    """
    if expires_at <= now:
        return EXPIRED
    if attempt >= max_attempts:
        return DEAD
    return DELIVERED


def sweep_outcome(
    status: str,
    attempt: int,
    expires_at: datetime,
    leased_until: datetime | None,
    now: datetime,
    max_attempts: int,
) -> str | None:
    """What the periodic sweep does to a command nobody claims (an offline device).

    A command whose lease still runs is left alone: its device may still ack it.
    """
    if not claimable(status, leased_until, now):
        return None
    if expires_at <= now:
        return EXPIRED
    if status == DELIVERED and attempt >= max_attempts:
        return DEAD
    return None


def on_ack(status: str, outcome: str) -> Change:
    """A device reports ``outcome`` for a command in ``status``.

    A repeated ack (any ack once one was recorded) changes nothing and records nothing. An ack
    after expiry, death or cancellation is recorded in the timeline; the status stays.

    Raises:
        ValueError: ``outcome`` is not an ack status.
    """
    if outcome not in ACK_STATUSES:
        raise ValueError(f"not an ack status: {outcome!r}")
    if status in ACK_STATUSES:
        return Change(status, None)
    if status in TERMINAL:
        return Change(status, outcome)
    return Change(outcome, outcome)


def on_cancel(status: str) -> Change:
    """The owner cancels a command.

    Raises:
        TransitionRefused: the command is already final (a Conflict: 409 for the owner).
    """
    if status in TERMINAL:
        raise TransitionRefused(status, f"command already {status}")
    return Change(CANCELLED, CANCELLED)


def on_requeue(status: str) -> Change:
    """An operator gives a dead command another round of attempts.

    Raises:
        TransitionRefused: only dead commands can be requeued.
    """
    if status != DEAD:
        raise TransitionRefused(status, f"only dead commands can be requeued (not {status})")
    return Change(QUEUED, QUEUED)
