"""The commands worker (process ``worker-commandlog``): it stores each command handed over
through `commands data` as a row (and wakes its device's long polls), and stores events that
reach the `commands log` queue. It also runs the history maintenance (``iot.maintenance``:
readings partitions ahead, retention of readings and finished commands) in a thread of its
own, as the owner role."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import worker_ready

from iot import maintenance, messages
from iot.commands import store as commands_store
from iot.workers import metrics, storage
from iot.workers.app import app

log = logging.getLogger(__name__)


@app.task(name=messages.COMMANDS_STORE_TASK)
def store_command(
    command: dict[str, Any] | None = None, commands: list[dict[str, Any]] | None = None
) -> int:
    """Store one command, or a rollout's ``commands`` sent as one message, in one transaction
    (a redelivery is a no-op); returns how many were new."""
    started = time.perf_counter()
    todo = commands if commands is not None else [command] if command else []
    added = storage.write(
        messages.COMMANDS_STORE_TASK,
        lambda c: (
            commands_store.insert(c, todo[0])
            if len(todo) == 1
            else commands_store.insert_many(c, todo)
        ),
    )
    metrics.EVENTS_STORED.labels("queued").inc(added)
    metrics.TASKS.labels(messages.COMMANDS_STORE_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.COMMANDS_STORE_TASK).observe(time.perf_counter() - started)
    return added


@app.task(name=messages.COMMAND_LOG_TASK)
def log_event(event: dict[str, Any]) -> int:
    """Store one event; a redelivered event (same event_id) is a no-op. Returns rows added."""
    started = time.perf_counter()
    added = storage.write(
        messages.COMMAND_LOG_TASK, lambda c: commands_store.record_event(c, event)
    )
    metrics.EVENTS_STORED.labels(event["status"]).inc(added)
    metrics.TASKS.labels(messages.COMMAND_LOG_TASK, "succeeded").inc()
    metrics.TASK_SECONDS.labels(messages.COMMAND_LOG_TASK).observe(time.perf_counter() - started)
    return added


@worker_ready.connect
def _start_maintenance(sender: Any, **_: object) -> None:
    """In the worker that consumes `commands log` (not the sensors workers, which load this
    module too), start the history maintenance loop."""
    if messages.COMMAND_LOG_QUEUE in sender.app.amqp.queues.consume_from:
        maintenance.Runner().start()
        log.info("history maintenance started")
