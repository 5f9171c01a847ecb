"""The ingest hot path: readings of many requests share one confirmed publish, and a plainly
valid ``POST /sensors`` is answered before FastAPI's routing, validation and dependencies.

:class:`Coalescer`: each request hands its batch over and waits; batches that arrive while
earlier publishes await their confirms travel together in the next message (at most
``max_in_flight`` messages unconfirmed, at most ``max_readings`` readings a message). Under heavy
load messages grow by themselves; under moderate load a batch lingers up to ``linger`` seconds
for company (or until ``flush_readings`` readings wait), so the broker, the worker and Postgres
see fewer, larger messages for a few milliseconds of latency (figures: docs/decisions.md,
"Ingest"). Every request still answers 201 only
after RabbitMQ confirmed the message that holds its readings; a failure fails every request of
that message with 503 (they retry; the worker's insert ignores what was stored already).

:class:`IngestShortcut`: answers only what the full route would answer the same way - a device
token in this replica's auth cache and a body that is plainly valid (checked here with the
schema's rules, strictly). Anything else goes through the full route, which gives the same
answer or the proper 422.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iot import messages
from iot.api import metrics
from iot.api.auth_cache import cached_device
from iot.api.schemas import EARLIEST, MAX_FUTURE, MAX_READINGS
from iot.errors import IotError, Unavailable

PublishTask = Callable[[str, str, dict[str, Any]], Awaitable[str]]
_ROUTE = SimpleNamespace(path="/sensors")  # the route label metrics use
_SENSOR = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_MAX_BODY = 2 * 1024 * 1024  # larger bodies take the full route (nginx refuses them anyway)


class Coalescer:
    def __init__(
        self,
        publish_task: PublishTask,
        max_in_flight: int = 4,
        max_readings: int = 5000,
        linger: float = 0.0,
        flush_readings: int = 1000,
    ) -> None:
        self._publish_task = publish_task
        self._max_in_flight = max_in_flight
        self._max_readings = max_readings
        self._linger = linger
        self._flush_readings = flush_readings
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._waiting_readings = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0

    async def submit(self, batch: dict[str, Any]) -> None:
        """Publish one device's batch; returns once RabbitMQ confirmed the message holding it.

        Raises:
            BrokerUnavailable: not confirmed (nothing may be assumed stored: retry).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((batch, future))
        self._waiting_readings += len(batch["readings"])
        if self._linger <= 0 or self._waiting_readings >= self._flush_readings:
            self._send_what_fits()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self._linger_over)
        await future

    def _linger_over(self) -> None:
        self._timer = None
        self._send_what_fits()

    def _send_what_fits(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            taken, count = 0, 0
            for batch, _ in self._waiting:
                size = len(batch["readings"])
                if taken and count + size > self._max_readings:
                    break
                count += size
                taken += 1
            group, self._waiting = self._waiting[:taken], self._waiting[taken:]
            self._waiting_readings -= count
            self._in_flight += 1
            asyncio.create_task(self._send(group))
        if not self._waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _send(self, group: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self._publish_task(
                messages.SENSORS_QUEUE, messages.SENSORS_TASK, {"batches": [b for b, _ in group]}
            )
        except Exception as exc:  # noqa: BLE001 - every waiter gets the same failure
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in group:
                if not future.done():
                    future.set_result(None)
        finally:
            self._in_flight -= 1
            self._send_what_fits()


def plain_readings(body: bytes, now: datetime) -> list[dict[str, Any]] | None:
    """The readings of a plainly valid ``{"readings": [...]}`` body, as the workers get them;
    None for anything the full route must judge (it may still be valid, or it is a 422)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.keys() != {"readings"}:
        return None
    items = doc["readings"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_READINGS:
        return None
    latest = now + MAX_FUTURE
    out = []
    for r in items:
        if not isinstance(r, dict) or not _REQUIRED <= r.keys() <= _FIELDS:
            return None
        sensor, value, rid = r["sensor"], r["value"], r.get("id")
        if not isinstance(sensor, str) or not _SENSOR.fullmatch(sensor):
            return None
        if type(value) not in (int, float) or not math.isfinite(value):
            return None
        if "ts" in r:
            ts = r["ts"]
            if not isinstance(ts, str) or not _RFC3339.fullmatch(ts):
                return None
            try:
                when = datetime.fromisoformat(ts)
            except ValueError:
                return None
            if when < EARLIEST or when > latest:
                return None
        else:
            when = now  # a device without a set clock: stamped with the receive time
        if rid is not None and (not isinstance(rid, str) or len(rid) > 64 or "\x00" in rid):
            return None
        out.append({"sensor": sensor, "value": float(value), "ts": when.isoformat(), "id": rid})
    return out


_REQUIRED = frozenset({"sensor", "value"})
_FIELDS = frozenset({"sensor", "value", "ts", "id"})


class IngestShortcut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/sensors"
        ):
            await self.app(scope, receive, send)
            return
        device = self._cached_device(scope)
        if device is None:
            await self.app(scope, receive, send)
            return
        body, more, connected = await _read_body(receive)
        if not connected:
            return  # the client is gone: nothing to answer
        received = datetime.now(UTC)
        readings = None if more else plain_readings(body, received)
        if readings is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        scope["route"] = _ROUTE
        state: Any = scope["app"].state.iot
        batch = {
            "device_id": str(device["id"]),
            "received_at": received.isoformat(),
            "readings": readings,
        }
        try:
            if state.sensor_names is not None:
                await state.sensor_names.admit(batch["device_id"], {r["sensor"] for r in readings})
            await state.ingest.submit(batch)
        except IotError as exc:
            headers = []
            if isinstance(exc, Unavailable):
                metrics.UNAVAILABLE.labels(exc.cause).inc()
                headers.append((b"retry-after", str(state.settings.retry_after_seconds).encode()))
            await _answer(send, exc.status_code, {"detail": exc.detail}, headers)
            return
        metrics.READINGS_ACCEPTED.inc(len(readings))
        await _answer(send, 201, {"accepted": len(readings)})

    @staticmethod
    def _cached_device(scope: Scope) -> dict[str, Any] | None:
        state: Any = getattr(scope["app"].state, "iot", None)
        if state is None or getattr(state, "ingest", None) is None:
            return None
        return cached_device(state, scope["headers"])


async def _read_body(receive: Receive) -> tuple[bytes, bool, bool]:
    """(what was read, whether more body follows, whether the client is still connected).
    Stops early past _MAX_BODY: the full route reads the rest."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > _MAX_BODY:
            return b"".join(chunks), more, True


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that hands what was already read to the full route first, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
