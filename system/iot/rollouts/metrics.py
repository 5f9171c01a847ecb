"""Prometheus metrics of the rollouts (kept in the API process's registry, one per replica).

Counters add up across replicas (``sum``). The two gauges describe what *this* replica drives:
``iot_rollouts_held`` sums across replicas to the running rollouts being driven (a rollout has
one driver at a time), ``iot_rollout_stalled_seconds`` combines with ``max``.

Progress, for ``iot_rollout_stalled_seconds``: a running rollout made progress when, since the
driver's previous tick, it sent a command or refused a target (``sent``), took a decision
(phase, state or the start of a phase wait), or the counts per command status per phase that
the driver computes on every tick changed (a command delivered, acked, expired, dead). A
rollout the driver holds back on purpose (the rate allows no send yet, or a phase wait has
not run out) is making progress too. A paused rollout is not running, so not held: not
counted. When a replica takes a rollout over (a restart, another replica's lease lapsed), the
clock starts at the newest of its last send, last decision and its commands' last change, as
Postgres has them (:func:`iot.rollouts.store.last_progress`), so a restart neither hides
nor invents a stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

DECISIONS = Counter(
    "iot_rollout_decisions_total",
    "Rollout decisions written by this process (the driver's and people's)",
    ["decision"],
)
COMMANDS_SENT = Counter("iot_rollout_commands_sent_total", "Commands sent to a rollout's targets")
TARGETS_REFUSED = Counter(
    "iot_rollout_targets_refused_total",
    "A rollout's targets that got no command (they count as failed)",
    ["reason"],
)
HELD = Gauge("iot_rollouts_held", "Running rollouts this replica drives (holds the lease of)")
STALLED = Gauge(
    "iot_rollout_stalled_seconds",
    "Longest time any running rollout this replica drives has made no progress (0: none held)",
)

# Every decision iot.rollouts writes (the driver's, then a person's actions), from the start,
# so that the first of each on a fresh replica shows in increase() and rate().
DRIVER_DECISIONS = ("created", "advanced", "waiting", "awaiting approval", "completed", "aborted")
PERSON_DECISIONS = ("start", "pause", "resume", "approve", "cancel")
for _decision in (*DRIVER_DECISIONS, *PERSON_DECISIONS):
    DECISIONS.labels(_decision)
# Why a target got no command: the device was deleted (or changed owner), it was at its cap
# of pending commands, or the command core refused the command (a conflict).
REFUSALS = ("deleted", "queue_full", "conflict")
for _reason in REFUSALS:
    TARGETS_REFUSED.labels(_reason)


def decided(decision: str) -> None:
    DECISIONS.labels(decision).inc()


_UNSEEN = object()


class Progress:
    """When each running rollout this replica holds last made progress (see the module)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last: dict[Any, tuple[object, float]] = {}  # rollout -> (what it was, since)
        self._held_until = 0.0

    def unknown(self, rollout_ids: Iterable[Any]) -> list[Any]:
        """Those of ``rollout_ids`` this replica did not hold at its previous tick."""
        return [r for r in rollout_ids if r not in self._last]

    def held(
        self, rollout_ids: Iterable[Any], since: Mapping[Any, float], lease_seconds: float
    ) -> None:
        """A tick holds ``rollout_ids`` for ``lease_seconds``: forget the others; a new one
        made its last progress at ``since`` (epoch seconds; now when absent)."""
        now = self._clock()
        self._last = {
            r: self._last.get(r) or (_UNSEEN, min(since.get(r, now), now)) for r in rollout_ids
        }
        self._held_until = now + lease_seconds

    def note(self, rollout_id: Any, state: Hashable, *, waiting: bool = False) -> None:
        """What the driver sees of a held rollout this tick (anything that changes when it
        makes progress), and whether it holds it back on purpose."""
        now = self._clock()
        before, since = self._last.get(rollout_id, (_UNSEEN, now))
        if waiting or (before is not _UNSEEN and before != state):
            since = now
        self._last[rollout_id] = (state, since)

    def _current(self) -> dict[Any, tuple[object, float]]:
        return self._last if self._clock() <= self._held_until else {}

    def count(self) -> int:
        """Running rollouts held now (none once the last tick's lease ran out)."""
        return len(self._current())

    def stalled_seconds(self) -> float:
        now = self._clock()
        return max((now - since for _, since in self._current().values()), default=0.0)


PROGRESS = Progress()
HELD.set_function(PROGRESS.count)
STALLED.set_function(PROGRESS.stalled_seconds)
