"""The commands worker (process ``worker-commandlog``): it stores each command handed over
through `commands data` as a row (and wakes its device's long polls), and stores events that
reach the `commands log` queue. It also runs the history maintenance (``iot.maintenance``:
readings partitions ahead, retention of readings and finished commands) in a thread of its
own, as the owner role."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import redis
from celery.signals import worker_ready

from iot import cache, maintenance, messages
from iot.commands import batch as commands_batch
from iot.commands import store as commands_store
from iot.settings import get_settings
from iot.workers import metrics, storage
from iot.workers.app import app

log = logging.getLogger(__name__)


_redis_lock = threading.Lock()
_redis: redis.Redis | None = None


def _redis_client() -> redis.Redis:
    global _redis
    with _redis_lock:
        if _redis is None:
            s = get_settings()
            _redis = cache.sync_client(s.redis_url, s.redis_timeout_seconds)
        return _redis


def _stored_by_api(command_id: str) -> bool:
    """Whether the API marked the command's row as written (messages.DESCRIPTOR_STORED); False
    when it did not, or Redis cannot say."""
    try:
        raw = _redis_client().get(messages.command_descriptor_key(command_id))
        if not raw:
            return False
        descriptor = orjson.loads(raw)
    except (redis.RedisError, OSError, ValueError):
        return False
    return isinstance(descriptor, dict) and descriptor.get(messages.DESCRIPTOR_STORED) is True


@app.task(name=messages.COMMANDS_STORE_TASK)
def store_command(
    command: dict[str, Any] | None = None, commands: list[dict[str, Any]] | None = None
) -> int:
    """Store one command, or a rollout's ``commands`` sent as one message, in one transaction
    (a redelivery is a no-op); returns how many were new.

    One command whose row the API wrote (messages.DESCRIPTOR_STORED) is acked without a
    statement; otherwise its insert is one statement, atomic by itself, so it runs without
    BEGIN and COMMIT: one round trip instead of three."""
    started = time.perf_counter()
    todo = commands if commands is not None else [command] if command else []
    if len(todo) == 1 and _stored_by_api(todo[0]["id"]):
        added = 0
    else:
        added = storage.write(
            messages.COMMANDS_STORE_TASK,
            lambda c: (
                commands_store.insert(c, todo[0])
                if len(todo) == 1
                else commands_batch.insert_many(c, todo)
            ),
            single_statement=len(todo) == 1,
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
        messages.COMMAND_LOG_TASK,
        lambda c: commands_store.record_event(c, event),
        single_statement=True,
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
