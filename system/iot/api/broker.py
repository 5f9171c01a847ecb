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
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from iot import messages
from iot.api import amqp, metrics
from iot.errors import BrokerUnavailable

log = logging.getLogger(__name__)

DURABLE_QUEUES = (messages.SENSORS_QUEUE, messages.COMMANDS_DATA_QUEUE, messages.COMMAND_LOG_QUEUE)
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
        await amqp.keep_connected(
            self._url, "iot-api", self._setup, self._forget, lambda: self._closing, self._heartbeat
        )

    def _forget(self) -> None:
        self._ready.clear()
        metrics.BROKER_CONNECTED.set(0)
        self._connection = self._channel = self._exchange = None

    async def _setup(
        self, connection: AbstractConnection, watch: Callable[[AbstractChannel], None]
    ) -> None:
        """Open the confirm channel and declare the topology both sides use."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        watch(channel)
        exchange = await channel.declare_exchange(
            messages.EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        for name in DURABLE_QUEUES:
            queue = await channel.declare_queue(
                name, durable=True, arguments=messages.QUEUE_ARGUMENTS.get(name)
            )
            await queue.bind(exchange, routing_key=name)
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._ready.set()
        metrics.BROKER_CONNECTED.set(1)

    async def publish(
        self, routing_key: str, body: bytes, headers: dict[str, Any], message_id: str
    ) -> None:
        """Publish to the workers' exchange and wait for the broker's confirm.

        Raises:
            BrokerUnavailable: not connected, no confirm within the timeout, nacked or
                unroutable. The message may or may not have been stored: the caller must
                answer "retry", and consumers are idempotent.
        """
        message = self._message(body, message_id, headers)
        try:
            await self._publish(self._exchange, routing_key, message, routing_key)
        except aiormq.exceptions.DeliveryError as exc:
            raise BrokerUnavailable("message broker refused the message; retry later") from exc

    @staticmethod
    def _message(
        body: bytes, message_id: str, headers: dict[str, Any] | None, expiration_s: float = 0
    ) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=message_id,
            expiration=max(expiration_s, 0.001) if expiration_s else None,
        )

    async def _publish(
        self,
        exchange: AbstractExchange | None,
        routing_key: str,
        message: aio_pika.Message,
        label: str,
    ) -> None:
        """Publish with mandatory routing and wait for the confirm; DeliveryError (nack) is
        left to the caller, every other failure becomes BrokerUnavailable."""
        if not self._ready.is_set() or exchange is None:
            metrics.PUBLISHES.labels(label, "unavailable").inc()
            raise BrokerUnavailable("message broker unavailable; retry later")
        started = time.perf_counter()
        try:
            await exchange.publish(message, routing_key, mandatory=True, timeout=self._timeout)
        except aiormq.exceptions.PublishError as exc:  # a DeliveryError too: check it first
            metrics.PUBLISHES.labels(label, "unroutable").inc()
            raise BrokerUnavailable("message broker could not route the message") from exc
        except aiormq.exceptions.DeliveryError:
            metrics.PUBLISHES.labels(label, "nacked").inc()
            raise
        except _FAILURES as exc:
            result = "timeout" if isinstance(exc, asyncio.TimeoutError) else "failed"
            metrics.PUBLISHES.labels(label, result).inc()
            raise BrokerUnavailable("message broker did not confirm; retry later") from exc
        metrics.PUBLISHES.labels(label, "confirmed").inc()
        metrics.PUBLISH_SECONDS.labels(label).observe(time.perf_counter() - started)

    async def publish_task(self, queue: str, task: str, kwargs: dict[str, Any]) -> str:
        """Publish a Celery task message for the workers; returns its task id."""
        body, headers, task_id = messages.celery_message(task, kwargs)
        await self.publish(queue, body, headers, task_id)
        return task_id
