"""The command-log worker: every command transition becomes one row in ``command_events``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
import psycopg

from iot import messages
from iot.workers import metrics, storage
from iot.workers.app import app

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING"
)


def _insert(conn: psycopg.Connection[Any], event: dict[str, Any]) -> int:
    cur = conn.execute(
        _INSERT,
        (
            uuid.UUID(event["event_id"]),
            uuid.UUID(event["command_id"]),
            uuid.UUID(event["device_id"]),
            event["status"],
            int(event.get("attempt", 0)),
            event["at"],
            orjson.dumps(event.get("detail") or {}).decode(),
        ),
    )
    return cur.rowcount


@app.task(name=messages.COMMAND_LOG_TASK)
def log_event(event: dict[str, Any]) -> int:
    """Store one event; a redelivered event (same event_id) is a no-op. Returns rows added."""
    started = time.perf_counter()
    added = storage.write(messages.COMMAND_LOG_TASK, lambda c: _insert(c, event))
    metrics.EVENTS_STORED.labels(event["status"]).inc(added)
    metrics.TASKS.labels(messages.COMMAND_LOG_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.COMMAND_LOG_TASK).observe(time.perf_counter() - started)
    return added
