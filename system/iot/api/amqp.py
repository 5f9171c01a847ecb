"""One RabbitMQ connection kept alive for as long as the API replica runs.

Both the publisher and command delivery need the same loop: connect, set up channels, wait
until the connection or one of its channels closes (aio-pika's ``closed()`` only resolves on
a *local* close, so the loop listens to close callbacks), forget what was set up, close what is
left and try again with backoff (0.2 s doubling to 5 s).

With a RabbitMQ cluster the URL is kombu's failover list (``amqp://a;amqp://b;amqp://c``):
each process starts at a random node (so replicas spread over the cluster) and, after a loss
or a failed attempt, tries the next one at once; the backoff applies only once every node
failed in a row. A publish is confirmed only once its queue stored it on a majority (quorum)
or on every mirror (classic), so a failover keeps "2xx means durable".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger(__name__)

Setup = Callable[[AbstractConnection, Callable[[AbstractChannel], None]], Awaitable[None]]


async def keep_connected(
    url: str,
    name: str,
    setup: Setup,
    forget: Callable[[], None],
    closing: Callable[[], bool],
    heartbeat: int = 10,
) -> None:
    """Run until cancelled or ``closing()``: ``setup(connection, watch)`` after each connect
    (``watch(channel)`` makes a closing channel count as a lost connection), ``forget()``
    after each loss or failed attempt. ``url`` may list several nodes, ``;``-separated."""
    urls = [u.strip() for u in url.split(";") if u.strip()]
    turn = random.randrange(len(urls))
    failed_in_a_row = 0
    backoff = 0.2
    while not closing():
        url = urls[turn % len(urls)]
        turn += 1
        lost = asyncio.Event()
        connection: AbstractConnection | None = None

        def watch(channel: AbstractChannel, ev: asyncio.Event = lost) -> None:
            channel.close_callbacks.add(lambda *_: ev.set())

        try:
            connection = await aio_pika.connect(
                url, timeout=5, heartbeat=heartbeat, client_properties={"connection_name": name}
            )
            connection.close_callbacks.add(lambda *_, ev=lost: ev.set())
            await setup(connection, watch)
            log.info("%s: connected to %s", name, _where(url))
            backoff = 0.2
            failed_in_a_row = 0
            await lost.wait()
            log.warning("%s: connection to %s lost; reconnecting", name, _where(url))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
            failed_in_a_row += 1
            log.warning("%s: cannot connect to %s: %s", name, _where(url), exc)
        forget()
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 2)
            except Exception as exc:  # noqa: BLE001 - it is being thrown away anyway
                log.info("%s: closing the old connection: %s", name, exc)
        if len(urls) == 1 or (failed_in_a_row and failed_in_a_row % len(urls) == 0):
            await asyncio.sleep(backoff)  # every node failed: back off
            backoff = min(backoff * 2, 5.0)
        else:
            await asyncio.sleep(0.05)  # another node next, at once


def _where(url: str) -> str:
    """host:port of an AMQP URL, without its credentials (for the log)."""
    return url.rsplit("@", 1)[-1].rstrip("/")
