"""The load test's devices, without locust: each runs the firmware's protocol core
(``iotcore.Device``: buffer, run-once ids, acks, backoff, the one copy of the device protocol)
and keeps a ledger of what the API accepted from it; a pool hands them out to the locust users
of one process. The locust users in ``loadtest/locustfiles/`` drive these over
``loadtest/rawhttp.py``; unit tests drive them directly.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from iotcore.core import Device, Registry

SENSORS = ("temperature", "humidity", "pressure", "co2", "battery", "light", "voltage", "rssi")
COMMAND_NAMES = ("open_valve", "close_valve", "set_interval", "reboot", "blink")


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


def load_registry() -> Registry:
    """The emulated devices' command handlers: every command the operator sends succeeds and
    changes nothing (``set_interval`` included: the load's shape must not change under it);
    any other name is rejected, as on a board."""
    registry = Registry()
    for name in COMMAND_NAMES:
        registry.add(name, lambda device, args: None)
    return registry


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
    """One registered device: the firmware's protocol core (``iotcore.Device``: its readings
    buffer, run-once ids, acks, backoff) and the load test's ledger of what the API accepted.
    It outlives the locust users that emulate it one after the other (e.g. when a spike ends
    and starts again).

    The core sends readings oldest first, so the timestamps of readings not yet accepted wait
    in ``pending`` in the same order: a batch answered 201 takes as many from its front."""

    index: int
    id: str
    token: str
    buffer_limit: int = 10_000
    last_ms: int = 0
    dropped: int = 0
    accepted: Accepted = field(default_factory=Accepted)
    pending: deque[int] = field(default_factory=deque)
    core: Device | None = None

    def device(
        self,
        registry: Registry,
        config: dict[str, Any],
        events: Callable[..., None] | None = None,
        batch: int = 5,
        rng: random.Random | None = None,
    ) -> Device:
        """The protocol core, made on first use: it samples ``batch`` readings every
        ``config["reading_interval_s"]``, the first at a random point of the first interval
        (so that a fleet started at once spreads its requests)."""
        if self.core is None:
            rng = rng or random.Random()
            cfg = {"buffer_max": self.buffer_limit, **config}
            self.core = Device(
                self.token,
                registry,
                config=cfg,
                sample=lambda core: self.measure(time.time(), batch, rng),
                events=events,
            )
            interval_ms = int(cfg.get("reading_interval_s", 10) * 1000)
            self.core.due["sample"] += int(rng.uniform(0, interval_ms))
        return self.core

    def next_ms(self, now: float) -> int:
        """A timestamp (ms) later than every earlier one of this device."""
        self.last_ms = max(int(now * 1000), self.last_ms + 1)
        return self.last_ms

    def measure(self, now: float, count: int, rng: random.Random) -> None:
        """Take ``count`` readings now (one sensor each, each with its own timestamp) into the
        core's buffer; what the buffer drops past its limit is counted as dropped."""
        core = self.core
        assert core is not None
        before = core.buffer.dropped
        for i in range(count):
            ms = self.next_ms(now)
            core.add_reading(SENSORS[i % len(SENSORS)], round(rng.uniform(0, 100), 3), ms)
            self.pending.append(ms)
        for _ in range(core.buffer.dropped - before):
            self.pending.popleft()
            self.dropped += 1

    def sent(self, n: int) -> None:
        """The API answered 201 for the ``n`` oldest readings not yet accepted."""
        self.accepted.add([self.pending.popleft() for _ in range(min(n, len(self.pending)))])

    def refused(self, n: int) -> None:
        """The API refused the ``n`` oldest for good (not retryable): count them dropped."""
        for _ in range(min(n, len(self.pending))):
            self.pending.popleft()
            self.dropped += 1

    @property
    def unsent(self) -> int:
        return len(self.pending)


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
