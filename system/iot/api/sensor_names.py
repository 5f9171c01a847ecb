"""The cap on the distinct sensor names of a device (``IOT_MAX_SENSORS_PER_DEVICE``), checked
before ``POST /sensors`` answers 201, without a round trip on the hot path.

Each replica remembers, per device, the sensor names it knows: filled from the device's
latest-readings hash in Redis (``HKEYS``) the first time the replica meets the device, then
grown by every name it accepts. A request whose names are all known costs a set comparison
(about 1 µs); a round trip only when the replica meets a device it does not remember, or, while
it could not read the device's names from Redis, a name new to it. nginx sends a device to the
same replica every time, so that replica's memory sees every name the device sends, accepted
ones included before the sensors worker has stored them.

A refused request is refused whole (422; nothing of it is published). A name is remembered when
its request passes the check, before the broker confirms: a request answered 503 still counts
its names (the device retries them).

Redis down, slow, or erring: readings are never refused for it. The device's names are then the
ones this replica accepted since it met the device; Redis is asked again (at most every
``retry_seconds``, so an outage does not add a timeout to every request) when the device next
sends a name the replica does not know. Consequence: through an outage (or with a cold cache:
a flushed Redis, before ``iotctl cache rebuild``) a device may pass the cap by at most the cap
again; once Redis answers, the names it holds count and new ones beyond the cap are refused.
Postgres is not asked: ingest must keep working while Postgres is down.

The memory is bounded (least recently used devices are forgotten beyond ``max_devices``, as
many as the replica's device-token cache holds): a forgotten device costs one more ``HKEYS``.
About 1 KB per device with a few sensors (names are interned: the usual names are shared).
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from iot.api import metrics
from iot.errors import CacheUnavailable, InvalidInput

LoadNames = Callable[[str], Awaitable[set[str]]]
SHOWN_NAMES = 5  # new names a refusal lists


class TooManySensors(InvalidInput):
    """422: the request brings sensor names beyond the device's cap."""


@dataclass(slots=True)
class _Known:
    names: set[str] = field(default_factory=set)
    verified: bool = False  # read from Redis; else only what this replica accepted


def refusal(cap: int, known: int, new: Collection[str]) -> str:
    """The 422's detail: the cap, its setting, and the names refused (the first few)."""
    shown = sorted(new)[:SHOWN_NAMES]
    more = f" and {len(new) - len(shown)} more" if len(new) > len(shown) else ""
    return (
        f"too many sensors: a device may have at most {cap} distinct sensor names "
        f"(IOT_MAX_SENSORS_PER_DEVICE); this device has {known}, and this request adds "
        f"{', '.join(shown)}{more}. Nothing of the request was accepted; readings of the "
        "device's existing sensors are."
    )


class SensorNames:
    """Each device's known sensor names in this replica; see the module's docstring."""

    def __init__(
        self,
        load: LoadNames,
        cap: int,
        max_devices: int,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.cap = cap
        self._max_devices = max_devices
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._redis_again_at = 0.0

    def __len__(self) -> int:
        return len(self._known)

    async def admit(self, device_id: str, names: Collection[str]) -> None:
        """Let readings with these sensor names through, remembering the new ones.

        Raises:
            TooManySensors: the new names would take the device past the cap.
        """
        known = self._known.get(device_id)
        if known is not None:
            self._known.move_to_end(device_id)
            if known.names.issuperset(names):
                return
        if known is None or not known.verified:
            loaded = await self._names_in_redis(device_id)
            known = self._remember(device_id, loaded)  # again: others ran during the await
        new = {n for n in names if n not in known.names}
        if not new:
            return
        if len(known.names) + len(new) > self.cap:
            raise TooManySensors(refusal(self.cap, len(known.names), new))
        known.names.update(sys.intern(n) for n in new)

    async def _names_in_redis(self, device_id: str) -> set[str] | None:
        """The device's names in Redis; None when Redis failed (or failed moments ago)."""
        if self._clock() < self._redis_again_at:
            return None
        try:
            return await self._load(device_id)
        except CacheUnavailable:
            metrics.CACHE_ERRORS.inc()
            self._redis_again_at = self._clock() + self._retry_seconds
            return None

    def _remember(self, device_id: str, loaded: set[str] | None) -> _Known:
        known = self._known.get(device_id)
        if known is None:
            known = self._known[device_id] = _Known()
            while len(self._known) > self._max_devices:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(device_id)
        if loaded is not None:
            known.names.update(sys.intern(n) for n in loaded)
            known.verified = True
        return known
