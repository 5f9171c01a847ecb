"""The chaos fleet's timeline (chaos/fleet.py): how long requests failed after a fault began,
the figure an HA experiment reports as its failover time."""

from __future__ import annotations

from chaos.fleet import Timeline


def _at(t: Timeline, second: int, kind: str, ok: bool) -> None:
    (t.ok if ok else t.err)[second][kind] += 1


def test_errors_for_ends_with_the_last_failing_second_inside_the_fault() -> None:
    t = Timeline()
    start = 1000.4
    _at(t, 999, "poll", False)  # before the fault: not counted
    _at(t, 1003, "command", False)
    _at(t, 1017, "ack", False)
    _at(t, 1018, "poll", True)
    _at(t, 1030, "poll", False)  # after the fault's end: not counted
    assert t.errors_for(start, 1030.0) == 17.6  # the end of second 1017, from 1000.4


def test_errors_for_is_zero_when_nothing_failed() -> None:
    t = Timeline()
    _at(t, 1005, "poll", True)
    assert t.errors_for(1000.0, 1030.0) == 0.0
