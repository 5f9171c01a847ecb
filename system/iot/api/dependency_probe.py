"""How slow each link to a backing service is, as this replica sees it.

Every ``INTERVAL_SECONDS`` the replica times one fixed exchange with Postgres and one with
Redis, each on a connection of its own (not the request pools: a pool busy with load would
time the queue for a connection, not the link):

- Postgres: ``SELECT repeat('x', 2048)``: one round trip and 2 KiB back;
- Redis: ``ECHO`` of 2 KiB: one round trip, 2 KiB each way.

2 KiB is of the order of the product's common answers (a command with its events, a
device's latest readings), so a narrow link slows the probe about as much as that traffic:
on a healthy local link the exchange takes about a millisecond; 100 ms of added latency adds
100 ms; a link cut to 16 KB/s adds an eighth of a second. (With 16 KiB it paged for narrow
links that broke no SLO: `iotctl chaos degrade`, docs/decisions.md.) A probe that gets no
answer within ``TIMEOUT_SECONDS``, or whose connection is reset, counts as a failure and its
connection is opened anew next time.

The probe runs in a thread of its own with blocking clients, not on the event loop: a replica
busy with requests delays its loop's callbacks, and the probe would time that queue instead of
the link.

RabbitMQ needs no probe: every publish already waits for its confirm, timed in
``iot_broker_publish_confirm_seconds``.

The alerts DependencySlow and DependencyProbeFailing (monitoring/alerts/dependencies.yml) read
these series and name the link; their thresholds come from ``iotctl chaos degrade``'s table.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from iot import cache, db
from iot.api import metrics

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
TIMEOUT_SECONDS = 5.0
PAYLOAD_BYTES = 2048
_ECHO = b"x" * PAYLOAD_BYTES


class DependencyProbe:
    """The probe thread of one replica: ``start()`` in the app's lifespan, ``stop()`` at its
    end."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self._pg: psycopg.Connection[Any] | None = None
        self._redis: redis.Redis | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dependency-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_SECONDS + 1)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._timed("postgres", self._postgres, self._close_pg)
                self._timed("redis", self._redis_echo, self._close_redis)
                self._stop.wait(max(0.0, INTERVAL_SECONDS - (time.monotonic() - started)))
        finally:
            self._close_pg()
            self._close_redis()

    def _timed(
        self, dependency: str, exchange: Callable[[], None], reset: Callable[[], None]
    ) -> None:
        metrics.DEPENDENCY_PROBES.labels(dependency).inc()
        started = time.monotonic()
        try:
            exchange()
        except Exception as exc:  # noqa: BLE001 - any failure of the link is what we count
            metrics.DEPENDENCY_PROBE_FAILURES.labels(dependency).inc()
            log.debug("%s probe failed: %r", dependency, exc)
            reset()
            return
        elapsed = time.monotonic() - started
        if elapsed > TIMEOUT_SECONDS:  # answered, but past the deadline: a failure too
            metrics.DEPENDENCY_PROBE_FAILURES.labels(dependency).inc()
            return
        metrics.DEPENDENCY_ROUNDTRIP.labels(dependency).observe(elapsed)

    def _postgres(self) -> None:
        if self._pg is None:
            # Opening the connection is timed too: on a slow link it is part of what a
            # replica waits for when its pool refills. connect_timeout bounds it.
            self._pg = db.connect(self.database_url)
            self._pg.autocommit = True
        conn = self._pg
        # A link that stops answering (no reply, no reset) would hold the query for ever:
        # cut the socket at the deadline (the query then fails and the probe counts it).
        watchdog = threading.Timer(TIMEOUT_SECONDS, db.sever, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            row = conn.execute("SELECT repeat('x', %s) AS payload", (PAYLOAD_BYTES,)).fetchone()
        finally:
            watchdog.cancel()
        if row is None or len(row["payload"]) != PAYLOAD_BYTES:
            raise RuntimeError("postgres probe: short answer")

    def _redis_echo(self) -> None:
        if self._redis is None:
            self._redis = cache.sync_client(self.redis_url, TIMEOUT_SECONDS)
        answer = self._redis.echo(_ECHO)
        if len(answer) != PAYLOAD_BYTES:
            raise RuntimeError("redis probe: short answer")

    def _close_pg(self) -> None:
        conn, self._pg = self._pg, None
        if conn is not None:
            db.sever(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def _close_redis(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
