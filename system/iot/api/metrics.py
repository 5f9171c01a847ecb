"""Prometheus metrics of one API process.

Each replica is its own process with its own registry, scraped directly by Prometheus on its
own port (nginx does not expose ``/metrics``), so counts are exact with several replicas.
"""

from __future__ import annotations

import time
from typing import Any

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iot import messages

# No `*_created` series: nothing reads them, and every scrape (each replica every 5 s) paid for
# them; a scrape of a busy replica was about a tenth of its CPU.
prometheus_client.disable_created_metrics()
# Labels come from what clients send only through this fixed set (and route templates), so
# requests with made-up methods or paths cannot grow the number of series without bound.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

REQUESTS = Counter(
    "iot_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "iot_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# (method, route, status) -> its request counter and duration histogram, bounded like the labels
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}
IN_FLIGHT = Gauge("iot_http_requests_in_flight", "HTTP requests being answered")
# Counted in a plain integer (one event loop per process) and read at scrape time: a gauge's
# inc() and dec() take a lock each, twice per request.
_in_flight = [0]
IN_FLIGHT.set_function(lambda: _in_flight[0])
PUBLISHES = Counter(
    "iot_broker_publishes_total",
    "Messages published to RabbitMQ, by result (confirmed, nacked, timeout, failed, ...)",
    ["queue", "result"],
)
# Every series exists from the start at 0, so rate() sees the first failure of a kind (a
# series born with its first increment has no earlier sample to compare with, and the failure
# alerts would wait for the second one).
for _queue in (messages.SENSORS_QUEUE, messages.COMMANDS_DATA_QUEUE, messages.COMMAND_LOG_QUEUE):
    for _result in ("confirmed", "nacked", "timeout", "failed", "unavailable", "unroutable"):
        PUBLISHES.labels(_queue, _result)
PUBLISH_SECONDS = Histogram(
    "iot_broker_publish_confirm_seconds",
    "Time from publish to the broker's confirm",
    ["queue"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
UNAVAILABLE = Counter(
    "iot_unavailable_answers_total",
    "Requests answered 503, by what could not serve them (database_busy: every pooled "
    "connection in use, an overload; database, broker, cache: an outage or a timeout)",
    ["cause"],
)
for _cause in ("broker", "database", "database_busy", "cache", "other"):
    UNAVAILABLE.labels(_cause)
BROKER_CONNECTED = Gauge("iot_broker_connected", "1 while this process holds a broker connection")
READINGS_ACCEPTED = Counter("iot_readings_accepted_total", "Sensor readings answered with 201")
SENSOR_READS = Counter("iot_sensor_reads_total", "GET /sensors answers by source", ["source"])
CACHE_ERRORS = Counter("iot_cache_errors_total", "Redis calls that failed in the API")
DEPENDENCY_ROUNDTRIP = Histogram(
    "iot_dependency_roundtrip_seconds",
    "Time of the dependency probe's fixed exchange with a backing service (one round trip, "
    "2 KiB of answer), on a connection of its own; failed probes are not observed",
    ["dependency"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DEPENDENCY_PROBES = Counter(
    "iot_dependency_probes_total", "Dependency probes started", ["dependency"]
)
DEPENDENCY_PROBE_FAILURES = Counter(
    "iot_dependency_probe_failures_total",
    "Dependency probes that got no full answer in time (timeout, reset, refused)",
    ["dependency"],
)
for _dependency in ("postgres", "redis"):
    DEPENDENCY_PROBES.labels(_dependency)
    DEPENDENCY_PROBE_FAILURES.labels(_dependency)


class MetricsMiddleware:
    """Count and time every request by its route template (not its raw path), and name the
    replica that answered in an ``X-Replica`` header (for operators and failover tests)."""

    def __init__(self, app: ASGIApp, replica: str = "") -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-replica", self.replica)]
            await send(message)

        _in_flight[0] += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _in_flight[0] -= 1
            route = scope.get("route")
            # 405: the path exists but not with this method; counted with the unmatched ones
            path = (getattr(route, "path", None) if status != 405 else None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (method, path, status)
            series = _SERIES.get(key)
            if series is None:  # labels() validates and hashes its values: once per series
                series = (
                    REQUESTS.labels(method, path, str(status)),
                    REQUEST_SECONDS.labels(method, path),
                )
                _SERIES[key] = series
            series[0].inc()
            series[1].observe(time.perf_counter() - started)
