"""The sensors worker: store readings in Postgres (idempotently), then refresh Redis."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

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


@app.task(name=messages.SENSORS_TASK)
def store(batch: dict[str, Any]) -> int:
    """Store a batch; returns the number of new rows. A redelivered batch adds none."""
    started = time.perf_counter()
    try:
        stored = storage.write(messages.SENSORS_TASK, lambda c: readings_sql.insert_batch(c, batch))
    except Exception:
        metrics.TASKS.labels(messages.SENSORS_TASK, "failed").inc()
        log.exception("could not store batch of device %s", batch.get("device_id"))
        raise
    received = datetime.fromisoformat(batch["received_at"])
    metrics.INGEST_LAG.observe((datetime.now(UTC) - received).total_seconds())
    metrics.READINGS_STORED.inc(stored)
    metrics.READINGS_DUPLICATE.inc(len(batch["readings"]) - stored)
    try:
        cache.store_latest(_redis_client(), batch["device_id"], batch["readings"])
    except CacheUnavailable as exc:
        # Redis holds derived data only; Postgres has the rows. Count it and move on.
        metrics.CACHE_ERRORS.inc()
        log.warning("latest-readings cache not updated: %s", exc)
    metrics.TASKS.labels(messages.SENSORS_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.SENSORS_TASK).observe(time.perf_counter() - started)
    return stored
