"""Per-thread Postgres connections and a write loop that outlasts a database outage.

When Postgres is down the task keeps its message unacked and retries with backoff, so the
worker stops taking new messages and the backlog stays in RabbitMQ (docs/design.md §6 Failure
behaviour), instead of republishing retries or holding countless delayed tasks in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from iot import db
from iot.errors import DatabaseUnavailable
from iot.settings import get_settings
from iot.workers import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
_local = threading.local()
MAX_BACKOFF_SECONDS = 5.0
WRITE_DEADLINE_SECONDS = 15.0  # statement_timeout (10 s) plus a margin


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = db.connect(get_settings().database_url)
        _local.conn = conn
    return conn


def _drop_connection() -> None:
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


class _Watchdog:
    """One thread that severs connections whose write outlived its deadline (a timer thread per
    write cost more CPU than the write of a small batch)."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._next = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> int:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
            self._next += 1
            self._armed[self._next] = (time.monotonic() + seconds, conn)
            return self._next

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [t for t, (deadline, _) in self._armed.items() if deadline <= now]
                expired = [self._armed.pop(t)[1] for t in due]
                if not expired:
                    self._lock.wait(1.0)
            for conn in expired:
                log.warning(
                    "a write outlived %.0f s: severing its connection", WRITE_DEADLINE_SECONDS
                )
                db.sever(conn)


_watchdog = _Watchdog()


def write(
    task: str, work: Callable[[psycopg.Connection[Any]], T], single_statement: bool = False
) -> T:
    """Run ``work`` in a transaction, retrying for as long as Postgres is unavailable.
    ``single_statement``: ``work`` runs one statement, atomic by itself, so it runs without
    BEGIN and COMMIT around it (two round trips fewer per write)."""
    backoff = 0.25
    while True:
        try:
            conn = _connection()
            token = _watchdog.arm(conn, WRITE_DEADLINE_SECONDS)
            try:
                if single_statement:
                    conn.autocommit = True
                    with db.translated():
                        return work(conn)
                conn.autocommit = False
                with db.translated(), conn.transaction():
                    return work(conn)
            finally:
                _watchdog.disarm(token)
        except DatabaseUnavailable as exc:
            _drop_connection()
            metrics.DB_RETRIES.labels(task).inc()
            log.warning("%s: database unavailable (%s); retrying in %.1fs", task, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
