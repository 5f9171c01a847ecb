"""A fleet of simulated devices and operators speaking the real protocol through nginx.

Devices: the firmware's protocol core (``iotcore``) over httpx: readings buffered and POSTed
until a 2xx (backoff with jitter, Retry-After honoured, capped at 2 s here); ``GET /commands``
long-polled; each command id executed once; acks retried until a 2xx. Operators: send
commands with an Idempotency-Key, retrying the same key until 201; read sensors now and then.
Every 2xx goes into the :class:`~chaos.ledger.Ledger`; every answer into the :class:`Timeline`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from iotcore.core import Device, Registry
from iotcore.host import AsyncHttpxTransport, drive_async

from chaos.ledger import Ledger, ReadingKey

RETRY_CAP_SECONDS = 2.0


@dataclass
class Timeline:
    """Answers per second and kind: ok (2xx) or error (anything else, including no answer)."""

    ok: dict[int, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    err: dict[int, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    causes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, ok: bool, cause: str = "") -> None:
        second = int(time.time())
        with self.lock:
            (self.ok if ok else self.err)[second][kind] += 1
            if not ok:
                self.causes[f"{kind}: {cause}"] += 1

    def errors_by_kind(self, start: float, end: float) -> dict[str, int]:
        counts: Counter[str] = Counter()
        with self.lock:
            for s, v in self.err.items():
                if start <= s < end:
                    counts.update(v)
        return dict(counts)

    def errors_between(self, start: float, end: float) -> int:
        return sum(self.errors_by_kind(start, end).values())

    def errors_for(self, start: float, end: float) -> float:
        """Seconds from ``start`` to the end of the last second in [start, end) with an error
        answer (0: none). For a fault held while the system fails over (a primary killed
        and kept down), how long after the fault requests still failed."""
        with self.lock:
            last = max(
                (s for s, v in self.err.items() if start <= s + 1 and s < end and v), default=None
            )
        return 0.0 if last is None else round(max(last + 1 - start, 0.0), 1)

    def requests_between(self, start: float, end: float) -> int:
        with self.lock:
            ok = sum(sum(v.values()) for s, v in self.ok.items() if start <= s < end)
        return ok + self.errors_between(start, end)

    def series(self) -> list[dict[str, Any]]:
        with self.lock:
            seconds = sorted(set(self.ok) | set(self.err))
            return [
                {"t": s, "ok": dict(self.ok.get(s, {})), "err": dict(self.err.get(s, {}))}
                for s in seconds
            ]


@dataclass
class SimDevice:
    """A registered device; ``core`` is its protocol state (the firmware's ``iotcore``)."""

    id: str
    token: str
    core: Any = None
    seq: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _retry_after(r: httpx.Response | None) -> float:
    try:
        value = float(r.headers.get("Retry-After", 0.5)) if r is not None else 0.5
    except ValueError:
        value = 0.5
    return min(max(value, 0.1), RETRY_CAP_SECONDS)


def _key(device_id: str, reading: dict[str, Any]) -> ReadingKey:
    ts = datetime.fromisoformat(reading["ts"])
    return (device_id, reading["sensor"], int(ts.timestamp() * 1_000_000))


def _cause(r: httpx.Response) -> str:
    """The status code, with the API's reason for a refusal to serve (429, 5xx)."""
    if r.status_code < 429:
        return str(r.status_code)
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = None
    return f"{r.status_code} {detail}" if isinstance(detail, str) else str(r.status_code)


class Fleet:
    def __init__(
        self,
        base_url: str,
        devices: list[SimDevice],
        operator_token: str,
        ledger: Ledger,
        timeline: Timeline,
        reading_interval: float = 0.5,
        command_rate: float = 5.0,
        lease: float = 30.0,
        relogin: Callable[[], str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.devices = devices
        self.operator = {"Authorization": f"Bearer {operator_token}"}
        self.relogin = relogin  # a fresh operator token when the old one expires (401)
        self._relogged = 0.0
        self.ledger = ledger
        self.timeline = timeline
        self.reading_interval = reading_interval
        self.command_rate = command_rate
        self.lease = lease
        self.stop_load = threading.Event()  # no new readings or commands
        self.stop_all = threading.Event()  # stop polling and retrying
        self.pending_commands = 0
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    # ----- control from the experiment's thread -----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="fleet", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self.stop_load.set()
        self.stop_all.set()
        if self._thread:
            self._thread.join(timeout)

    def buffered_readings(self) -> int:
        return sum(len(d.core.buffer) for d in self.devices if d.core is not None)

    def drained(self) -> bool:
        return (
            self.buffered_readings() == 0 and self.pending_commands == 0 and self.ledger.drained()
        )

    def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`drained`; returns it."""
        deadline = time.time() + timeout
        while not self.drained() and time.time() < deadline:
            time.sleep(1)
        return self.drained()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by the experiment
            self.failure = exc

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.devices) * 3 + 20)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15, limits=limits) as http:
            tasks = []
            for d in self.devices:
                d.core = self._core(d)
                transport = AsyncHttpxTransport(http, d.token)
                for loop in (d.core.uploads(), d.core.commands()):
                    tasks.append(
                        asyncio.create_task(drive_async(loop, transport, self.stop_all.is_set))
                    )
            tasks += [
                asyncio.create_task(self._operator(http)),
                asyncio.create_task(self._reader(http)),
            ]
            await asyncio.to_thread(self.stop_all.wait)  # set by the experiment's thread
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(
        self, http: httpx.AsyncClient, kind: str, method: str, url: str, **kw: Any
    ) -> httpx.Response | None:
        try:
            r = await http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.timeline.record(kind, False, exc.__class__.__name__)
            return None
        self.timeline.record(kind, r.status_code < 300, _cause(r))
        return r

    # ----- devices: the firmware's protocol core, reading and polling in parallel -----
    def _core(self, d: SimDevice) -> Any:
        registry = Registry()
        registry.add("chaos", lambda core, args: {"by": d.id})

        def sample(core: Any) -> None:
            if not self.stop_load.is_set():
                d.seq += 1
                core.add_reading(f"s{d.seq % 3}", float(d.seq))

        def events(name: str, *args: Any) -> None:
            if name == "response":
                request, response = args
                cause = _cause(response.raw) if response.raw is not None else response.error
                self.timeline.record(request.kind, response.ok(), cause)
            elif name == "sent":
                self.ledger.accept_readings([_key(d.id, r) for r in args[0]])
            elif name == "delivered":  # every delivery: the ledger spots one after the ack
                self.ledger.delivered(args[0]["id"], d.id)
            elif name == "acked":
                self.ledger.ack_accepted(args[0])
            elif name == "refused":
                request, response = args
                self.failure = RuntimeError(
                    f"{request.kind} refused for good: {response.status} {response.body!r}"
                )

        cap_ms = int(RETRY_CAP_SECONDS * 1000)
        config = {
            "reading_interval_s": self.reading_interval,
            "poll_wait_s": 2,
            "poll_limit": 10,
            "lease_s": self.lease,
            "buffer_max": 1_000_000,  # the ledger counts only what was accepted: drop nothing
            "batch_max": 1000,
            "backoff_base_ms": 100,
            "backoff_cap_ms": cap_ms,
            "retry_after_cap_ms": cap_ms,
            "request_timeout_s": 15,
        }
        return Device(d.token, registry, config=config, sample=sample, events=events)

    # ----- operators -----
    async def _operator(self, http: httpx.AsyncClient) -> None:
        interval = 1.0 / self.command_rate
        n = 0
        while not self.stop_load.is_set():
            device = random.choice(self.devices)
            n += 1
            asyncio.create_task(self._send_command(http, device, n))
            await asyncio.sleep(interval)

    async def _send_command(self, http: httpx.AsyncClient, d: SimDevice, n: int) -> None:
        key = str(uuid.uuid4())
        body = {"device_id": d.id, "name": "chaos", "args": {"n": n}, "ttl": 3600}
        self.pending_commands += 1
        try:
            while not self.stop_all.is_set():
                sent_with = self.operator
                headers = {**sent_with, "Idempotency-Key": key}
                r = await self._send(
                    http, "commands", "POST", "/commands", json=body, headers=headers
                )
                if r is not None and r.status_code == 201:
                    self.ledger.accept_command(r.json()["id"], d.id)
                    return
                if r is not None and r.status_code == 401:
                    # the token expired: another task may have a new one already
                    if self.operator is not sent_with or await self._fresh_token():
                        continue
                if r is not None and r.status_code in (400, 401, 403, 404, 422):
                    raise RuntimeError(f"command refused for good: {r.status_code} {r.text}")
                await asyncio.sleep(_retry_after(r))
        finally:
            self.pending_commands -= 1

    async def _fresh_token(self) -> bool:
        """After a 401: a new operator token, at most once a minute (a token refused again
        right after is refused for good)."""
        if self.relogin is None or time.monotonic() - self._relogged < 60:
            return False
        self._relogged = time.monotonic()
        token = await asyncio.to_thread(self.relogin)
        self.operator = {"Authorization": f"Bearer {token}"}
        return True

    async def _reader(self, http: httpx.AsyncClient) -> None:
        while not self.stop_load.is_set():
            d = random.choice(self.devices)
            r = await self._send(
                http,
                "sensor_reads",
                "GET",
                "/sensors",
                params={"device_id": d.id},
                headers=self.operator,
            )
            if r is not None and r.status_code == 401:
                await self._fresh_token()
            await asyncio.sleep(1.0)
