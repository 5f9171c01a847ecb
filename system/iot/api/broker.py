"""Confirmed publishing to RabbitMQ for the API.

``publish`` returns only after RabbitMQ confirmed the message (persistent message, durable
queue, publisher confirms, mandatory routing). Anything else raises
:class:`BrokerUnavailable`, which the API answers with 503 + Retry-After: a 2xx means durable.

One connection and one confirm channel per API process; publishes from concurrent requests are
in flight together, which is what makes confirms cheap. A background task reconnects with
backoff; while disconnected, ``publish`` fails at once instead of making callers wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from iot import messages
from iot.api import metrics
from iot.errors import BrokerUnavailable

log = logging.getLogger(__name__)

DURABLE_QUEUES = (messages.SENSORS_QUEUE, messages.COMMAND_LOG_QUEUE)
_FAILURES = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    RuntimeError,
    asyncio.TimeoutError,
)


class Publisher:
    def __init__(self, url: str, publish_timeout: float, heartbeat: int = 10) -> None:
        self._url = url
        self._timeout = publish_timeout
        self._heartbeat = heartbeat
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def start(self, wait: float = 5.0) -> None:
        """Start connecting in the background; wait a little for the first connection."""
        self._task = asyncio.create_task(self._run(), name="broker-connection")
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except TimeoutError:
            log.warning("broker not reachable yet; publishing answers 503 until it is")

    async def stop(self) -> None:
        self._closing = True
        if self._task:
            self._task.cancel()
        if self._connection and not self._connection.is_closed:
            await self._connection.close()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._closing:
            try:
                lost = asyncio.Event()
                await self._connect(lost)
                backoff = 0.2
                metrics.BROKER_CONNECTED.set(1)
                await lost.wait()
                log.warning("broker connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
                log.warning("broker connection failed: %s", exc)
            self._ready.clear()
            metrics.BROKER_CONNECTED.set(0)
            await self._close_quietly()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _close_quietly(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 2)
            except Exception as exc:  # noqa: BLE001 - it is being thrown away anyway
                log.info("closing the old broker connection: %s", exc)

    async def _connect(self, lost: asyncio.Event) -> None:
        """Connect, declare the topology, and arrange for ``lost`` to be set when the
        connection or the channel closes for any reason."""
        connection = await aio_pika.connect(
            self._url,
            timeout=5,
            heartbeat=self._heartbeat,
            client_properties={"connection_name": "iot-api"},
        )
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            exchange = await channel.declare_exchange(
                messages.EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
            )
            for name in DURABLE_QUEUES:
                queue = await channel.declare_queue(name, durable=True)
                await queue.bind(exchange, routing_key=name)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._ready.set()
        log.info("broker connected")

    async def publish(
        self, routing_key: str, body: bytes, headers: dict[str, Any], message_id: str
    ) -> None:
        """Publish and wait for the broker's confirm.

        Raises:
            BrokerUnavailable: not connected, no confirm within the timeout, nacked or
                unroutable. The message may or may not have been stored: the caller must
                answer "retry", and consumers are idempotent.
        """
        exchange = self._exchange
        if not self._ready.is_set() or exchange is None:
            metrics.PUBLISHES.labels(routing_key, "unavailable").inc()
            raise BrokerUnavailable("message broker unavailable; retry later")
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message_id,
        )
        started = time.perf_counter()
        try:
            await exchange.publish(message, routing_key, mandatory=True, timeout=self._timeout)
        except aiormq.exceptions.DeliveryError as exc:
            metrics.PUBLISHES.labels(routing_key, "nacked").inc()
            raise BrokerUnavailable("message broker refused the message; retry later") from exc
        except aiormq.exceptions.PublishError as exc:
            metrics.PUBLISHES.labels(routing_key, "unroutable").inc()
            raise BrokerUnavailable("message broker could not route the message") from exc
        except _FAILURES as exc:
            result = "timeout" if isinstance(exc, asyncio.TimeoutError) else "failed"
            metrics.PUBLISHES.labels(routing_key, result).inc()
            raise BrokerUnavailable("message broker did not confirm; retry later") from exc
        metrics.PUBLISHES.labels(routing_key, "confirmed").inc()
        metrics.PUBLISH_SECONDS.labels(routing_key).observe(time.perf_counter() - started)

    async def publish_task(self, queue: str, task: str, kwargs: dict[str, Any]) -> str:
        """Publish a Celery task message for the workers; returns its task id."""
        body, headers, task_id = messages.celery_message(task, kwargs)
        await self.publish(queue, body, headers, task_id)
        return task_id
