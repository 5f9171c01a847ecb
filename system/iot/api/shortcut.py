"""The hot path of a fleet of devices: a poll (``GET /commands``, short or long) of a device with
nothing pending, answered before FastAPI's routing, validation and dependency injection. A long
poll waits here for the device's notification; when one comes, the full route claims.

It answers only when everything is already known: a valid device token in this replica's auth
cache, parameters that are plainly valid, and a device this replica knows has nothing to claim
(a claim found nothing, no lease of its runs, and no new-command notification came since).
Anything else goes through the full route, which gives the same answer (or the error) the
slow way.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from iot.api.deps import cached_device
from iot.commands import metrics

_ROUTE = SimpleNamespace(path="/commands")  # the route label metrics use


def plain_wait(query: bytes) -> float | None:
    """The ``wait`` of plainly valid poll parameters (0 when absent); None otherwise."""
    wait = 0.0
    try:
        for key, value in parse_qsl(query.decode("ascii"), strict_parsing=False):
            if key == "wait":
                wait = float(value)
                if not 0 <= wait <= 30:
                    return None
            elif key == "limit" and not 1 <= int(value) <= 100:
                return None
            elif key == "lease" and not 1 <= float(value) <= 3600:
                return None
            elif key not in ("wait", "limit", "lease"):
                return None
    except ValueError:
        return None
    return wait


def with_wait(query: bytes, wait: float) -> bytes:
    """The same query with ``wait`` replaced."""
    pairs = [(k, v) for k, v in parse_qsl(query.decode("ascii")) if k != "wait"]
    return urlencode([*pairs, ("wait", f"{wait:.3f}")]).encode("ascii")


async def _woken_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds``. A timer sets it at the end, so no task is
    created or cancelled per wait (``asyncio.wait_for`` does both: thousands of waiting polls
    made that a visible share of a replica's CPU)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        event.set()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        await event.wait()
    finally:
        timer.cancel()
    return not expired


class IdlePollShortcut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/commands"
        ):
            await self.app(scope, receive, send)
            return
        wait = plain_wait(scope.get("query_string", b""))
        commands, device_id = self._idle_device(scope) if wait is not None else (None, None)
        if commands is None or device_id is None or wait is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        woken = False
        if wait > 0:
            # Waiting here costs no query and none of FastAPI's routing; anything that arrives
            # for the device ends the wait and the full route claims it.
            metrics.POLL_WAITERS.inc()
            try:
                with commands.wakeups.waiting(device_id) as event:
                    if not commands.surely_idle(device_id):
                        woken = True
                    else:
                        woken = await _woken_within(event, wait)
            finally:
                metrics.POLL_WAITERS.dec()
            if woken and commands.wakeups.draining and commands.surely_idle(device_id):
                woken = False  # the replica stops: answer now; the device polls elsewhere
        if woken:
            remaining = max(deadline - loop.time(), 0.0)
            scope["query_string"] = with_wait(scope.get("query_string", b""), remaining)
            await self.app(scope, receive, send)
            return
        scope["route"] = _ROUTE
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _idle_device(scope: Scope) -> tuple[Any, str | None]:
        """(the command core, the device id) for a cached device token whose device is surely
        idle; (None, None) otherwise."""
        state: Any = getattr(scope["app"].state, "iot", None)
        if state is None or state.commands is None:
            return None, None
        device = cached_device(state, scope["headers"])
        if device is None:
            return None, None
        device_id = str(device["id"])
        if not state.commands.surely_idle(device_id):
            return None, None
        return state.commands, device_id
