"""The command-log worker: every command transition becomes one row in ``command_events``, and
the command's row in ``commands`` follows its timeline."""

from __future__ import annotations

import logging
import time
from typing import Any

from iot import messages
from iot.sql import commands as commands_sql
from iot.workers import metrics, storage
from iot.workers.app import app

log = logging.getLogger(__name__)


@app.task(name=messages.COMMAND_LOG_TASK)
def log_event(event: dict[str, Any]) -> int:
    """Store one event; a redelivered event (same event_id) is a no-op. Returns rows added."""
    started = time.perf_counter()
    added = storage.write(messages.COMMAND_LOG_TASK, lambda c: commands_sql.record_event(c, event))
    metrics.EVENTS_STORED.labels(event["status"]).inc(added)
    metrics.TASKS.labels(messages.COMMAND_LOG_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.COMMAND_LOG_TASK).observe(time.perf_counter() - started)
    return added
