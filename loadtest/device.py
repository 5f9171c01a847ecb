"""What an emulated device keeps between requests, without locust: its readings buffer,
timestamps, the command ids it already ran, its backoff, and what the API accepted from it.

The locust users in ``loadtest/locustfiles/`` drive these; unit tests drive them directly.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SENSORS = ("temperature", "humidity", "pressure", "co2", "battery", "light", "voltage", "rssi")
MAX_READINGS_PER_POST = 1000  # the API's limit per request


_second: list[Any] = [None, ""]  # the last second formatted, shared by every device


def rfc3339_ms(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 in UTC with a ``Z``: 2026-11-29T12:00:00.123Z.
    (The second is formatted once and reused: thousands of devices stamp readings each second.)"""
    second = ms // 1000
    if _second[0] != second:
        _second[0], _second[1] = second, f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%S}"
    return f"{_second[1]}.{ms % 1000:03d}Z"


def parse_time(value: str) -> float:
    """An RFC 3339 time from the API (``Z`` or an offset) as seconds since the epoch.

    Raises:
        ValueError: not an RFC 3339 time.
    """
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return dt.timestamp()


class Backoff:
    """Capped exponential backoff with jitter that never waits less than ``Retry-After``.

    The n-th consecutive failure waits a random time between half and all of
    ``min(cap, base * 2**n)``, or the server's ``Retry-After`` if that is longer (still capped).
    """

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """Count one more failure and return how long to wait before trying again."""
        ceiling = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.cap)
        return delay

    def reset(self) -> None:
        self.failures = 0


def retry_after_seconds(value: str | None) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds form only), or ``None``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class RecentIds:
    """The last ``size`` command ids a device ran: it runs each id once (delivery is at least
    once, so the same command may come back after a lost ack or a lapsed lease)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, command_id: str) -> bool:
        """True (and remember it) if ``command_id`` was not seen recently."""
        if command_id in self._ids:
            self._ids.move_to_end(command_id)
            return False
        self._ids[command_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


@dataclass
class Accepted:
    """What the API answered 201 for, for one device: how many readings and their ts range
    (milliseconds). Timestamps are unique and increasing per device, so the count of rows in
    Postgres between ``first_ms`` and ``last_ms`` must equal ``count``."""

    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, ts_ms: list[int]) -> None:
        if not ts_ms:
            return
        self.count += len(ts_ms)
        lo, hi = min(ts_ms), max(ts_ms)
        self.first_ms = lo if self.first_ms is None else min(self.first_ms, lo)
        self.last_ms = hi if self.last_ms is None else max(self.last_ms, hi)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first_ms": self.first_ms, "last_ms": self.last_ms}


@dataclass
class DeviceState:
    """One registered device and everything it keeps across requests (and across the locust
    users that emulate it one after the other, e.g. when a spike ends and starts again)."""

    index: int
    id: str
    token: str
    buffer_limit: int = 10_000
    buffer: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    last_ms: int = 0
    dropped: int = 0
    seen: RecentIds = field(default_factory=RecentIds)
    accepted: Accepted = field(default_factory=Accepted)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def next_ms(self, now: float) -> int:
        """A timestamp (ms) later than every earlier one of this device."""
        self.last_ms = max(int(now * 1000), self.last_ms + 1)
        return self.last_ms

    def measure(self, now: float, count: int, rng: random.Random) -> int:
        """Take ``count`` readings now (one sensor each, each with its own timestamp) into the
        buffer; the oldest are dropped past ``buffer_limit``. Returns how many were dropped."""
        dropped = 0
        for i in range(count):
            ms = self.next_ms(now)
            reading = {
                "sensor": SENSORS[i % len(SENSORS)],
                "value": round(rng.uniform(0, 100), 3),
                "ts": rfc3339_ms(ms),
            }
            self.buffer.append((ms, reading))
            if len(self.buffer) > self.buffer_limit:
                self.buffer.popleft()
                dropped += 1
        self.dropped += dropped
        return dropped

    def batch(self) -> list[tuple[int, dict[str, Any]]]:
        """The oldest buffered readings, at most what one request may carry (left in place)."""
        n = min(len(self.buffer), MAX_READINGS_PER_POST)
        return [self.buffer[i] for i in range(n)]

    def sent(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """The API answered 201 for ``batch`` (taken by :meth:`batch`): forget and count it."""
        if not batch:
            return
        newest = batch[-1][0]
        while self.buffer and self.buffer[0][0] <= newest:
            self.buffer.popleft()
        self.accepted.add([ms for ms, _ in batch])

    def discard(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """The API refused ``batch`` for good (not retryable): forget it, count it dropped."""
        if not batch:
            return
        newest = batch[-1][0]
        while self.buffer and self.buffer[0][0] <= newest:
            self.buffer.popleft()
            self.dropped += 1


class PoolExhausted(RuntimeError):
    """Every device of this process's slice is already emulated by a running user."""


class DevicePool:
    """The devices one locust process may emulate: every ``workers``-th device of the file,
    starting at ``worker_index`` (process k of P takes k, k+P, k+2P, ...). Users take the lowest
    free index and give it back when they stop, so the devices running at any time are about
    the first N of the file, whichever process runs them (the operator relies on that)."""

    def __init__(
        self, devices: list[dict[str, str]], worker_index: int, workers: int, buffer_limit: int
    ) -> None:
        if workers < 1 or not 0 <= worker_index < workers:
            raise ValueError(
                f"worker index {worker_index} is outside 0..{workers - 1}: set LOAD_WORKERS to "
                "the number of locust worker processes"
            )
        self.states = {
            i: DeviceState(i, d["id"], d["token"], buffer_limit=buffer_limit)
            for i, d in enumerate(devices)
            if i % workers == worker_index
        }
        self._free = sorted(self.states)

    def take(self) -> DeviceState:
        """The free device with the lowest index.

        Raises:
            PoolExhausted: none is free (more users than devices in this process's slice).
        """
        if not self._free:
            raise PoolExhausted(
                f"all {len(self.states)} devices of this process are in use: register more "
                "(iotctl load run --devices N) or run fewer users"
            )
        return self.states[self._free.pop(0)]

    @property
    def in_use(self) -> int:
        return len(self.states) - len(self._free)

    def give_back(self, state: DeviceState) -> None:
        if state.index in self.states and state.index not in self._free:
            self._free.append(state.index)
            self._free.sort()
