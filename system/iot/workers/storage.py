"""Per-thread Postgres connections and a write loop that outlasts a database outage.

When Postgres is down the task keeps its message unacked and retries with backoff, so the
worker stops taking new messages and the backlog stays in RabbitMQ (DESIGN §5), instead of
republishing retries or holding countless delayed tasks in memory.
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


def write(task: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
    """Run ``work`` in a transaction, retrying for as long as Postgres is unavailable."""
    backoff = 0.25
    while True:
        try:
            conn = _connection()
            watchdog = threading.Timer(WRITE_DEADLINE_SECONDS, db.sever, args=(conn,))
            watchdog.start()
            try:
                with db.translated(), conn.transaction():
                    return work(conn)
            finally:
                watchdog.cancel()
        except DatabaseUnavailable as exc:
            _drop_connection()
            metrics.DB_RETRIES.labels(task).inc()
            log.warning("%s: database unavailable (%s); retrying in %.1fs", task, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
