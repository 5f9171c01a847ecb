"""A game day's plan and its judgements, without any I/O (the runner is ``gameday_run.py``).

The plan is a schedule of fault windows drawn from the experiment catalog
(``chaos/experiments/*.yml``: each experiment's method is a fault, its rollbacks heal it) with
random start, length and overlap, reproducible from its seed. Two windows never act on the same
target at once (a toxic and a kill of the same Postgres would undo each other), and at most
``max_concurrent`` are active together.

The continuous ledger: an item (a reading or a command) accepted at time ``a`` is due, accounted
for (the reading in Postgres, the command executed by its device), ``base`` seconds later, or,
when a fault window overlaps that time, ``bound`` seconds after the heal of the chain of
overlapping windows (:func:`due`). An item past due and not accounted for is a breach, reported
while the game day runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

UNSAFE_KINDS = frozenset({"auto-ack-consumer"})  # the checker's control, never drawn by default


@dataclass(frozen=True)
class Kind:
    """A fault the schedule can draw: an experiment's method and rollbacks."""

    name: str
    method: tuple[dict[str, Any], ...]
    rollbacks: tuple[dict[str, Any], ...]
    expect_alert: tuple[str, ...] = ()

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(str(a["target"]) for a in self.method)


@dataclass
class Window:
    """One fault of the schedule (seconds from the game day's start); ``started`` and
    ``ended`` are the epoch times it really was applied and healed (None: not yet)."""

    index: int
    kind: str
    start: float
    length: float
    started: float | None = None
    ended: float | None = None
    expect_alert: list[str] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.length

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule(
    seed: int,
    duration: float,
    kinds: Sequence[Kind],
    *,
    max_concurrent: int = 2,
    min_length: float = 10,
    max_length: float = 60,
    mean_gap: float = 20,
    lead_in: float = 30,
    tail: float = 30,
) -> list[Window]:
    """Fault windows within ``[lead_in, duration - tail]``: starts spaced by exponential gaps
    (mean ``mean_gap``), lengths uniform in ``[min_length, max_length]``, the kind drawn among
    those whose targets are free and while fewer than ``max_concurrent`` are active (else the
    start moves to the next end). The same arguments give the same windows."""
    if not kinds:
        raise ValueError("no fault kinds to draw from")
    rng = random.Random(seed)
    out: list[Window] = []
    t = lead_in
    last = duration - tail
    by_name = {k.name: k for k in kinds}
    while True:
        t = round(t + (rng.expovariate(1 / mean_gap) if mean_gap > 0 else 0), 1)
        if t >= last:
            break
        active = [w for w in out if w.start <= t < w.end]
        busy = set().union(*(by_name[w.kind].targets for w in active))
        free = [k for k in kinds if not (k.targets & busy)]
        if len(active) >= max_concurrent or not free:
            t = min(w.end for w in active)  # wait for the first active window to heal
            continue
        kind = free[rng.randrange(len(free))]
        length = min(rng.uniform(min_length, max_length), last - t)
        if length < min_length / 2:
            break
        out.append(
            Window(
                len(out),
                kind.name,
                round(t, 1),
                round(length, 1),
                None,
                None,
                list(kind.expect_alert),
            )
        )
    return out


def plan(o: Options, kinds: Sequence[Kind]) -> list[Window]:
    """The schedule a game day of these options draws from ``kinds``."""
    return schedule(
        o.seed,
        o.duration,
        kinds,
        max_concurrent=o.max_concurrent,
        min_length=o.min_length,
        max_length=o.max_length,
        mean_gap=o.mean_gap,
    )


def overlaps(windows: Iterable[Window]) -> int:
    """How many windows start while another one is active."""
    ws = sorted(windows, key=lambda w: w.start)
    return sum(1 for i, w in enumerate(ws) if any(v.start <= w.start < v.end for v in ws[:i]))


def due(
    accepted: float, windows: Iterable[tuple[float, float | None]], base: float, bound: float
) -> float:
    """When an item accepted at ``accepted`` (epoch s) must be accounted for, given the fault
    windows as (started, healed or None while active): ``base`` later, unless a window overlaps
    ``[accepted, deadline]``; then ``bound`` after its heal, and so on along the chain."""
    deadline = accepted + base
    for started, healed in sorted(windows):
        if started > deadline:
            break
        end = math.inf if healed is None else healed
        if end >= accepted:
            deadline = max(deadline, end + bound)
    return deadline


def around(windows: Iterable[Window], t: float, margin: float = 120) -> list[dict[str, Any]]:
    """The applied windows near epoch time ``t`` (for a breach's report)."""
    return [
        {"kind": w.kind, "started": w.started, "ended": w.ended}
        for w in windows
        if w.started is not None
        and w.started <= t + margin
        and (w.ended is None or w.ended >= t - margin)
    ]


@dataclass
class AlertSpan:
    name: str
    start: float
    end: float | None = None


def spans(samples: Iterable[tuple[float, set[Any]]]) -> list[AlertSpan]:
    """Firing intervals from (time, alerts firing then) samples in order. An alert is its name,
    or a (name, identity) pair: the same name with another identity is another span."""
    open_: dict[Any, AlertSpan] = {}
    out: list[AlertSpan] = []
    for t, keys in samples:
        for key in keys - set(open_):
            open_[key] = AlertSpan(key[0] if isinstance(key, tuple) else key, t)
            out.append(open_[key])
        for key in set(open_) - keys:
            open_.pop(key).end = t
    return out


def time_to_detect(window: Window, alerts: Sequence[AlertSpan], grace: float) -> dict[str, Any]:
    """For each alert ``window`` expects: seconds from its start to the first span of that
    alert beginning during the window or within ``grace`` after it (None: missed). A span
    already open when the window started does not count (it fired for something else)."""
    out: dict[str, float | None] = {}
    if window.started is None:
        return {}
    healed = window.ended if window.ended is not None else math.inf
    for name in window.expect_alert:
        starts = [
            s.start
            for s in alerts
            if s.name == name and window.started <= s.start <= healed + grace
        ]
        out[name] = round(min(starts) - window.started, 1) if starts else None
    return out


def time_to_recover(
    window: Window, errors: Sequence[tuple[float, int]], quiet: float = 3
) -> float | None:
    """Seconds from the heal until the fleet saw ``quiet`` seconds without an error answer,
    from its per-second (time, errors) series; None if that never happened."""
    if window.ended is None:
        return None
    since = None
    for t, n in errors:
        if t < window.ended:
            continue
        if n:
            since = None
        elif since is None:
            since = t
        if since is not None and t - since >= quiet:
            return round(max(since - window.ended, 0.0), 1)
    return None


@dataclass
class Options:
    duration: float = 3600
    seed: int = 1
    faults: list[str] = field(default_factory=list)  # empty: the whole catalog
    max_concurrent: int = 2
    min_length: float = 10
    max_length: float = 60
    mean_gap: float = 20
    devices: int = 20
    command_rate: float = 2.0
    load: int = 0
    base: float = 30.0  # seconds an item may take to be accounted for without a fault
    bound: float = 60.0  # ... after the heal of the faults around it
    recovery: float = 60.0
    settle: float = 420.0  # then how long alerts may take to clear (0: not judged)
    halt_on: dict[str, float] = field(default_factory=dict)  # slo -> 5 m burn rate
