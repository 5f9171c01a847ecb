"""Prometheus metrics of a worker process (thread pool: one process, one registry).

The HTTP endpoint starts when the worker starts, on ``IOT_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

import logging
import os

import prometheus_client
from celery.signals import worker_init
from prometheus_client import Counter, Histogram, start_http_server

prometheus_client.disable_created_metrics()  # nothing reads `*_created` series

log = logging.getLogger(__name__)

TASKS = Counter("iot_worker_tasks_total", "Tasks finished, by result", ["task", "result"])
TASK_SECONDS = Histogram(
    "iot_worker_task_duration_seconds",
    "Time to run one task (one batch), retries included",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DB_RETRIES = Counter(
    "iot_worker_db_retries_total", "Writes retried because Postgres was unavailable", ["task"]
)
READINGS_STORED = Counter("iot_readings_stored_total", "Readings stored as new rows")
READINGS_REFUSED = Counter(
    "iot_readings_refused_total",
    "Readings Postgres refused as data after the API accepted them (dropped; each is a bug in "
    "the API's validation)",
)
READINGS_DUPLICATE = Counter(
    "iot_readings_duplicate_total", "Readings already stored (redelivery or client retry)"
)
INGEST_LAG = Histogram(
    "iot_ingest_lag_seconds",
    "From the API accepting a batch to its rows committed in Postgres",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
CACHE_ERRORS = Counter("iot_worker_cache_errors_total", "Redis updates that failed")
EVENTS_STORED = Counter("iot_command_events_stored_total", "Command events stored", ["status"])


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    port = int(os.environ.get("IOT_WORKER_METRICS_PORT", "0"))
    # loopback natively; the Compose bundle sets 0.0.0.0 (Prometheus is another container)
    addr = os.environ.get("IOT_WORKER_METRICS_ADDR", "127.0.0.1")
    if port:
        start_http_server(port, addr=addr)
        log.info("metrics on %s:%d", addr, port)
