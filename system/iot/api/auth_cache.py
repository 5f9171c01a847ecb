"""A replica's cache of device credentials as the ASGI shortcuts read it: who a request's
device token belongs to when the cache already knows, with no round trip. ``deps`` fills the
cache (``_credential``); this module only reads it, and imports nothing of the API, so the
shortcuts (``ingest``, ``shortcut``) and ``deps`` all depend on it and not on each other."""

from __future__ import annotations

import time
from typing import Any, Protocol

from iot import security


class HasDeviceCache(Protocol):
    """What :func:`cached_device` needs of the replica's state (``deps.State``)."""

    device_cache: dict[str, tuple[float, dict[str, Any]]]


_DEVICE_BEARER = b"bearer " + security.DEVICE_TOKEN_PREFIX.encode()


def cached_device(
    state: HasDeviceCache, headers: list[tuple[bytes, bytes]]
) -> dict[str, Any] | None:
    """The device whose token a request carries, when this replica's auth cache holds a fresh
    entry for it; None otherwise (the full route then authenticates). For the ASGI shortcuts,
    which answer only what is already known."""
    auth = next((v for k, v in headers if k == b"authorization"), b"")
    if auth[:11].lower() != _DEVICE_BEARER:
        return None
    hit = state.device_cache.get(security.hash_device_token(auth[7:].decode("latin-1")))
    if hit is None or hit[0] <= time.monotonic():
        return None
    return hit[1]
