"""Wake long polls when their device has new commands: one Postgres ``LISTEN`` per replica.

The commands worker stores a command and ``NOTIFY``s its device id in the same transaction, so
a notification arrives only after the row is visible. Each replica keeps one listening
connection and sets the events of the polls waiting for that device; nothing is queried while
nothing happens.

Notifications sent while the listener is disconnected are lost, so every (re)connection wakes
every waiting poll to claim once more, and forgets what it knew to be idle. A listener whose
connection stops answering is found by a bounded check every few seconds.

The same connection hears ``iot_devices`` (a token rotated, a device deleted), so every
replica's device-auth cache forgets that device at once.

It also knows which devices are *surely idle*: at each (re)connection it reads which devices
have pending commands (one query); every other device is idle until a notification names it,
and a device leaves that set again when a claim finds nothing and no lease of its runs. A poll
of an idle device is answered from memory, with no query; the first polls of thousands of
devices at once (a restart, a fleet coming online) cost no claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from iot import db
from iot.commands import metrics, store
from iot.commands.store import NOTIFY_CHANNEL
from iot.sql.devices import DEVICES_CHANNEL  # payload: a device whose token changed or is gone

log = logging.getLogger(__name__)
CHECK_EVERY_SECONDS = 5.0


class Wakeups:
    """``on_device_changed(device_id)`` is called for a device whose token changed (rotated,
    deleted), and with None whenever changes may have been missed (not listening)."""

    def __init__(
        self,
        database_url: str,
        on_device_changed: Callable[[str | None], None] | None = None,
    ) -> None:
        self._url = database_url
        self._on_device_changed = on_device_changed
        self._waiters: dict[str, set[asyncio.Event]] = {}
        # Devices that may have something to claim; every other device is surely idle, as
        # long as `_known` (listening without a break since the baseline was read).
        self._busy: set[str] = set()
        self._known = False
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._draining = False

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def draining(self) -> bool:
        """The replica is shutting down: polls claim once more and answer, none waits."""
        return self._draining

    def drain(self) -> None:
        """End every wait now, and every wait that begins from now on: a replica that stops
        answers its long polls (nothing, or what one last claim finds) instead of holding
        them until its shutdown timeout cancels them."""
        self._draining = True
        self._wake_all()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="command-wakeups")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ----- the polls' side -----
    @contextlib.contextmanager
    def waiting(self, device_id: str) -> Iterator[asyncio.Event]:
        """An event set when the device may have new commands. Register it *before* claiming,
        so a notification that arrives during the claim is not missed."""
        event = asyncio.Event()
        if self._draining:
            event.set()
        self._waiters.setdefault(device_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(device_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[device_id]

    def mark_idle(self, device_id: str) -> None:
        """A claim found nothing and no lease of the device runs (call only when no
        notification arrived during that claim)."""
        self._busy.discard(device_id)

    def surely_idle(self, device_id: str) -> bool:
        return self._known and device_id not in self._busy

    def notify(self, device_id: str) -> None:
        """The device has new work (from a notification, or this replica's own knowledge)."""
        self._busy.add(device_id)
        for event in self._waiters.get(device_id, ()):
            event.set()

    def _forget(self) -> None:
        """Nothing is known any more: every poll claims until the next baseline."""
        self._known = False
        self._busy = set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    # ----- the listening connection -----
    async def _run(self) -> None:
        backoff = 0.2
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=db.CONNECT_TIMEOUT_SECONDS,
                    application_name="iot-wakeups",
                )
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                await conn.execute(f"LISTEN {DEVICES_CHANNEL}")
                # Listening first, then the baseline: a command stored meanwhile is in the
                # baseline or in a notification read after it.
                self._busy = await store.pending_devices(conn)
                self._known = True
                self._set_listening(True)
                self._wake_all()  # anything sent while we were away: claim again
                log.info("listening for new commands")
                backoff = 0.2
                while True:
                    async for note in conn.notifies(timeout=CHECK_EVERY_SECONDS):
                        if note.channel == DEVICES_CHANNEL:
                            self._device_changed(note.payload)
                            continue
                        metrics.WAKEUPS.inc()
                        self.notify(note.payload)
                    await self._check(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "listen again"
                if self._listening:
                    log.warning("new-command listener lost: %s; reconnecting", exc)
            finally:
                self._forget()
                self._set_listening(False)
                self._wake_all()
                if conn is not None:
                    db.sever(conn)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    @staticmethod
    async def _check(conn: psycopg.AsyncConnection[Any]) -> None:
        """A bounded round trip: a connection that stopped answering is cut and replaced.

        Never prepared: psycopg prepares a query at its sixth run on a connection, which costs
        a second round trip; against a database 1.5 s away that sixth check (40 s after each
        connect) outlived its bound, the listener was cut, every replica forgot which devices
        are idle and every poll claimed (docs/decisions.md, "Commands through a slow
        database")."""
        loop = asyncio.get_running_loop()
        watchdog = loop.call_later(db.CHECK_TIMEOUT_SECONDS, db.sever, conn)
        try:
            await conn.execute("SELECT 1", prepare=False)
        finally:
            watchdog.cancel()

    def _set_listening(self, up: bool) -> None:
        self._listening = up
        metrics.LISTENING.set(1 if up else 0)
        self._device_changed(None)  # what was cached may have changed unseen

    def _device_changed(self, device_id: str | None) -> None:
        if self._on_device_changed is not None:
            self._on_device_changed(device_id)
