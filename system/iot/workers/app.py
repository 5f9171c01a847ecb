"""The Celery application shared by the workers (``celery -A iot.workers.app worker -Q ...``).

Reliability settings, and why:

- ``task_acks_late``: a message is acked only after its task finished, so a worker killed
  mid-task leaves it in RabbitMQ to be delivered again.
- ``task_reject_on_worker_lost``: if the process running a task dies, the message is requeued
  instead of acked.
- ``worker_prefetch_multiplier`` = 4: at most 4 unacked messages per thread (the sensors
  worker: 8 threads, 32 messages; the command worker: one thread, which keeps commands in the
  order accepted). Each sensors message is a batch of up to 5,000 readings, so a small prefetch
  keeps throughput (the round trip is amortised over the batch) while bounding what a crash
  sends back to the queue and what one busy worker holds away from the others.
- Tasks are idempotent (unique keys in Postgres), so a redelivery is harmless.
- No publisher confirms on the workers' connections: a worker publishes only task events (for
  Flower), and those may be lost. With confirms on, the event dispatcher's lock was held while
  a task thread waited for a confirm, the consumer's thread waited on that lock, heartbeats
  stopped and RabbitMQ closed both connections (missed heartbeats) - twice in 50 s after a
  Redis slowdown, with the queue growing meanwhile.
"""

from __future__ import annotations

import functools
import random

from celery import Celery
from celery.signals import worker_ready
from celery.worker.consumer import Consumer
from kombu import Exchange, Queue

from iot import heap, messages
from iot.settings import get_settings

settings = get_settings()
exchange = Exchange(messages.EXCHANGE, type="direct", durable=True)

# kombu connects to the first URL of the list first: each worker starts at a random node.
_nodes = settings.broker_url.split(";")
app = Celery(
    "iot",
    broker=";".join(random.sample(_nodes, len(_nodes))),
    include=["iot.workers.sensors", "iot.workers.commandlog"],
)
app.conf.update(
    task_queues=[
        Queue(messages.SENSORS_QUEUE, exchange, routing_key=messages.SENSORS_QUEUE, durable=True),
        Queue(
            messages.COMMANDS_DATA_QUEUE,
            exchange,
            routing_key=messages.COMMANDS_DATA_QUEUE,
            durable=True,
            queue_arguments=messages.COMMANDS_DATA_ARGS,
        ),
        Queue(
            messages.COMMAND_LOG_QUEUE,
            exchange,
            routing_key=messages.COMMAND_LOG_QUEUE,
            durable=True,
        ),
    ],
    task_routes={
        messages.SENSORS_TASK: {"queue": messages.SENSORS_QUEUE},
        messages.COMMANDS_STORE_TASK: {"queue": messages.COMMANDS_DATA_QUEUE},
        messages.COMMAND_LOG_TASK: {"queue": messages.COMMAND_LOG_QUEUE},
    },
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=True,
    worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
    worker_concurrency=settings.worker_concurrency,
    worker_send_task_events=settings.worker_task_events,
    task_send_sent_event=False,
    # With the RabbitMQ cluster, the broker URL lists every node (`amqp://a;amqp://b;...`):
    # after a lost connection kombu tries another node.
    broker_failover_strategy="shuffle",
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_heartbeat=10,
    worker_hijack_root_logger=False,
    worker_cancel_long_running_tasks_on_connection_loss=True,
)


class QuickReconnectConsumer(Consumer):
    """Reconnect to the broker within about 2 s after an outage (Celery's default backs off to
    30 s, which would stretch every RabbitMQ recovery by up to half a minute).

    Without Celery's native delayed delivery: once a quorum queue (`commands.data`) is
    consumed, it declares 28 `celery_delayed_*` quorum queues for ETA tasks, which we never
    send; each costs broker memory and start-up time for nothing.
    """

    class Blueprint(Consumer.Blueprint):
        default_steps = [
            step for step in Consumer.Blueprint.default_steps if "delayed_delivery" not in step
        ]

    def ensure_connected(self, conn):  # type: ignore[no-untyped-def]
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=0.5, interval_step=0.5, interval_max=2
        )
        return super().ensure_connected(conn)


app.conf.worker_consumer = "iot.workers.app:QuickReconnectConsumer"


@worker_ready.connect
def _settle_heap(**_: object) -> None:
    # consuming: Celery, kombu and the task modules are loaded and stay (iot/heap.py)
    heap.settle()
