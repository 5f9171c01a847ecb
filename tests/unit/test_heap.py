"""The garbage-collection policy of long-running processes (iot/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from iot import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_moves_what_lives_now_out_of_the_collectors_walk(restored_gc: None) -> None:
    held = [{"n": i} for i in range(1000)]  # alive before settle: frozen with the rest
    heap.settle()
    assert gc.get_freeze_count() >= len(held)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD


def test_cycles_made_after_settle_are_still_collected_by_themselves(restored_gc: None) -> None:
    heap.settle(young=100)
    live: weakref.WeakSet[object] = weakref.WeakSet()

    class Node:
        pass

    for _ in range(10_000):  # garbage cycles only; no explicit gc.collect()
        a, b = Node(), Node()
        a.peer, b.peer = b, a  # type: ignore[attr-defined]
        live.add(a)
    del a, b
    assert len(live) < 1_000  # the collector keeps running: cycles do not pile up
