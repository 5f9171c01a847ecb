"""The device protocol, the same on MicroPython (ESP32) and CPython (simulator, chaos fleet,
tests). It does no I/O itself: the loops are generators that yield a :class:`Request` (and get
a :class:`Response` back) or a :class:`Sleep`; a driver runs them over a transport (blocking
sockets on the board, httpx on CPython). Times are integer milliseconds: ESP32 floats are
32-bit, too coarse for clocks.

Rules it keeps:
- readings wait in a bounded buffer until a 2xx; when full, the oldest is dropped and counted;
- each command id runs once: recent ids are persisted (flash on the board) before running;
- each ack is retried until a 2xx; a redelivered command is acked again, not run again;
- failures back off exponentially with jitter; a Retry-After is honoured.

This module gathers the core's names in one place (``from iotcore.core import Device``); each
part lives in a module of its own:

| module | what |
|---|---|
| ``device`` | ``Device``: the state and the loops (``run``, ``uploads``, ``commands``) |
| ``effects`` | ``Request``, ``Response``, ``Sleep`` the loops yield, and ``drive`` |
| ``registry`` | ``Registry`` of command handlers, ``Reject`` |
| ``buffer`` | ``ReadingBuffer``: readings until a 2xx |
| ``recent_ids`` | ``RecentIds``: each command runs once |
| ``backoff`` | ``Backoff``, ``retry_after_ms`` |
| ``clock`` | ``Clock``, ``rfc3339`` |
| ``store`` | ``MemoryStore``, ``FileStore`` (flash) |
"""

from iotcore.backoff import Backoff, retry_after_ms, uniform
from iotcore.buffer import ReadingBuffer
from iotcore.clock import SYNCED_AFTER_MS, Clock, rfc3339
from iotcore.device import DEFAULTS, PERMANENT, Device
from iotcore.effects import Request, Response, Sleep, drive
from iotcore.recent_ids import RecentIds
from iotcore.registry import Registry, Reject
from iotcore.store import FileStore, MemoryStore

__all__ = [
    "DEFAULTS",
    "PERMANENT",
    "SYNCED_AFTER_MS",
    "Backoff",
    "Clock",
    "Device",
    "FileStore",
    "MemoryStore",
    "ReadingBuffer",
    "RecentIds",
    "Registry",
    "Reject",
    "Request",
    "Response",
    "Sleep",
    "drive",
    "retry_after_ms",
    "rfc3339",
    "uniform",
]
