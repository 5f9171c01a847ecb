"""The sensors worker: store readings in Postgres (idempotently), then refresh Redis."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from iot import cache, messages
from iot.errors import CacheUnavailable
from iot.settings import get_settings
from iot.sql import readings as readings_sql
from iot.workers import metrics, storage
from iot.workers.app import app

log = logging.getLogger(__name__)
_redis_lock = threading.Lock()
_redis = None


def _redis_client() -> Any:
    global _redis
    with _redis_lock:
        if _redis is None:
            s = get_settings()
            _redis = cache.sync_client(s.redis_url, s.redis_timeout_seconds)
        return _redis


# What Postgres (or the worker, before sending) refuses in the data itself: retrying cannot
# help. A reading without a sensor, time or value reaches Postgres as NULL.
REFUSED = (psycopg.DataError, psycopg.errors.NotNullViolation, ValueError)


def _insert(todo: list[dict[str, Any]]) -> int:
    return storage.write(
        messages.SENSORS_TASK,
        lambda c: readings_sql.insert_batches(c, todo),
        single_statement=True,
    )


def _insert_each(todo: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """A message holds many devices' batches (the API coalesces requests): when one value is
    refused, every other batch is still stored, one statement each, and only the refused batch
    is dropped (logged and counted). Returns the stored batches and their new rows."""
    kept, stored = [], 0
    for b in todo:
        try:
            stored += _insert([b])
        except REFUSED as exc:
            metrics.READINGS_REFUSED.inc(len(b["readings"]))
            log.error("readings of device %s refused by Postgres, dropped: %s", b["device_id"], exc)
        else:
            kept.append(b)
    return kept, stored


@app.task(name=messages.SENSORS_TASK)
def store(batch: dict[str, Any] | None = None, batches: list[dict[str, Any]] | None = None) -> int:
    """Store the readings of one message (``batches``: several devices' batches coalesced by
    the API; ``batch``: one, as earlier versions sent); returns the number of new rows. A
    redelivered message adds none."""
    started = time.perf_counter()
    todo = batches if batches is not None else [batch] if batch is not None else []
    try:
        try:
            stored = _insert(todo)
        except REFUSED:
            todo, stored = _insert_each(todo)
    except Exception:
        metrics.TASKS.labels(messages.SENSORS_TASK, "failed").inc()
        log.exception("could not store %d batches", len(todo))
        raise
    now = datetime.now(UTC)
    total = 0
    for b in todo:
        metrics.INGEST_LAG.observe((now - datetime.fromisoformat(b["received_at"])).total_seconds())
        total += len(b["readings"])
    metrics.READINGS_STORED.inc(stored)
    metrics.READINGS_DUPLICATE.inc(total - stored)
    try:
        cache.store_latest_many(_redis_client(), [(b["device_id"], b["readings"]) for b in todo])
    except CacheUnavailable as exc:
        # Redis holds derived data only; Postgres has the rows. Count it and move on.
        metrics.CACHE_ERRORS.inc()
        log.warning("latest-readings cache not updated: %s", exc)
    metrics.TASKS.labels(messages.SENSORS_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.SENSORS_TASK).observe(time.perf_counter() - started)
    return stored
