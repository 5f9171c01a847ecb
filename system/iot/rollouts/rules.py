"""A rollout's rules, pure: no I/O, no clock of its own.

A rollout sends one command to a fixed set of devices in phases (say 1 %, 10 %, 100 % of the
targets), at most ``rate`` devices a minute, and stops by itself when too many of the commands
it sent end badly. The driver (one actor per rollout at a time) applies these rules on every
tick to what Postgres says; the rules decide, the driver only reads and writes.

::

    scheduled ──start──> running ──pause──> paused ──resume──> running
                           │  ▲                │
                           │  └──approve───────┤ (paused at a phase's end, awaiting approval)
                           ├── every phase sent and finished ──> completed
                           ├── failure share over the threshold ──> aborted
                           └── cancel (also from scheduled or paused) ──> cancelled
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from iot.errors import TransitionRefused

SCHEDULED, RUNNING, PAUSED = "scheduled", "running", "paused"
COMPLETED, ABORTED, CANCELLED = "completed", "aborted", "cancelled"
FINAL = frozenset({COMPLETED, ABORTED, CANCELLED})

# What a person may do, from which state, to which state.
_ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({SCHEDULED}), RUNNING),
    "pause": (frozenset({RUNNING}), PAUSED),
    "resume": (frozenset({PAUSED}), RUNNING),
    "approve": (frozenset({PAUSED, RUNNING}), RUNNING),
    "cancel": (frozenset({SCHEDULED, RUNNING, PAUSED}), CANCELLED),
}

# Command statuses (iot.commands.lifecycle) as a rollout counts them, and ``refused``: a target
# that got no command (the device was at its cap of pending commands, or was deleted).
REFUSED = "refused"
BAD = frozenset({"failed", "rejected", "expired", "dead", REFUSED})
GOOD = frozenset({"succeeded"})
FINISHED = BAD | GOOD | {"cancelled"}


def act(state: str, action: str) -> str:
    """The state after a person's ``action``.

    Raises:
        TransitionRefused: the action does not apply in ``state`` (a final rollout changes no
            more; a running one cannot be resumed, ...).
    """
    allowed, after = _ACTIONS.get(action, (frozenset(), ""))
    if state not in allowed:
        raise TransitionRefused(state, f"a {state} rollout cannot be {_PAST.get(action, action)}")
    return after


_PAST = {
    "start": "started",
    "pause": "paused",
    "resume": "resumed",
    "approve": "approved",
    "cancel": "cancelled",
}


def phase_ends(total: int, phases: Sequence[float], *, counts: bool = False) -> list[int]:
    """How many targets are sent by the end of each phase (cumulative).

    ``phases`` are cumulative percentages of the targets (1, 10, 100) or, with ``counts``,
    cumulative device counts (10, 100, 1000). Every phase holds at least one more device than
    the one before while any are left, and the last phase reaches every target whatever the
    list says, so no device is forgotten by a rounding or a short list.
    """
    ends: list[int] = []
    done = 0
    for p in phases:
        want = int(min(p, total)) if counts else math.ceil(total * min(p, 100.0) / 100.0)
        want = max(want, min(done + 1, total))
        ends.append(want)
        done = want
    if ends:
        ends[-1] = total
    return ends


def order(rollout_id: str, device_ids: Iterable[str]) -> list[str]:
    """The targets in the order a rollout reaches them: shuffled by a hash of the rollout and
    the device (stable across restarts and replicas; each rollout's first phase is a different
    sample of the fleet)."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}:{d}".encode()).digest())


def allowance(rate_per_minute: float, seconds_running: float, sent: int) -> int:
    """How many more commands may go now: ``rate`` a minute since the rollout started (or
    resumed: the driver counts running time only), less those sent. The first one goes at once."""
    if rate_per_minute <= 0:
        return 0
    budget = 1 + math.floor(rate_per_minute * max(seconds_running, 0.0) / 60.0)
    return max(budget - sent, 0)


@dataclass(frozen=True)
class Criteria:
    """When a rollout stops by itself: the share of its finished commands that ended badly
    (failed, rejected, expired, dead, or refused to the rollout) above ``max_failure_share``,
    once at least ``min_finished`` of them finished, in the current phase or overall."""

    max_failure_share: float = 0.2
    min_finished: int = 10


def failure_share(counts: Mapping[str, int]) -> tuple[int, int]:
    """(bad, finished) of a status → count mapping; a command cancelled with its rollout is
    finished and neither good nor bad."""
    bad = sum(n for s, n in counts.items() if s in BAD)
    good = sum(n for s, n in counts.items() if s in GOOD)
    return bad, bad + good


def abort_reason(
    phase_counts: Mapping[str, int], overall: Mapping[str, int], criteria: Criteria
) -> str | None:
    """Why the rollout must stop now, or None."""
    for scope, counts in (("phase", phase_counts), ("overall", overall)):
        bad, judged = failure_share(counts)
        if judged >= criteria.min_finished and bad > criteria.max_failure_share * judged:
            return (
                f"{scope}: {bad} of {judged} finished commands ended badly "
                f"({bad / judged:.0%} > {criteria.max_failure_share:.0%})"
            )
    return None


def phase_finished(counts: Mapping[str, int], size: int) -> bool:
    """Every command of a phase of ``size`` targets was sent and reached a final status."""
    return sum(n for s, n in counts.items() if s in FINISHED) >= size
