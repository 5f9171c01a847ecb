"""What a replica knows about idle devices, without a database: nothing before its baseline,
then every device but the busy ones, until a notification names one."""

from __future__ import annotations

import asyncio

from iot.commands.wakeups import Wakeups


def test_idle_knowledge_follows_baseline_notifications_and_claims() -> None:
    w = Wakeups("postgresql://never-connected")
    assert not w.surely_idle("a")  # nothing known yet: every poll claims
    w._busy, w._known = {"a"}, True  # the baseline: only "a" has pending commands
    assert not w.surely_idle("a") and w.surely_idle("b")
    w.notify("b")  # a command was stored for "b"
    assert not w.surely_idle("b")
    w.mark_idle("b")  # its claim found nothing and no lease runs
    assert w.surely_idle("b")
    w._forget()  # the listener lost its connection
    assert not w.surely_idle("b")
    w.mark_idle("b")  # a claim while nothing is known changes nothing
    assert not w.surely_idle("b")


def test_a_notification_wakes_only_that_devices_waiters() -> None:
    async def scenario() -> tuple[bool, bool]:
        w = Wakeups("postgresql://never-connected")
        with w.waiting("a") as a, w.waiting("b") as b:
            w.notify("a")
            return a.is_set(), b.is_set()

    assert asyncio.run(scenario()) == (True, False)


def test_draining_ends_every_wait_and_every_wait_that_begins_later() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        w = Wakeups("postgresql://never-connected")
        with w.waiting("a") as before:
            assert not before.is_set()
            w.drain()
            with w.waiting("b") as after:
                return before.is_set(), after.is_set(), w.draining

    assert asyncio.run(scenario()) == (True, True, True)
