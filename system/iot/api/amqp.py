"""One RabbitMQ connection kept alive for as long as the API replica runs.

Both the publisher and command delivery need the same loop: connect, set up channels, wait
until the connection or one of its channels closes (aio-pika's ``closed()`` only resolves on
a *local* close, so the loop listens to close callbacks), forget what was set up, close what is
left and try again with backoff (0.2 s doubling to 5 s).
"""

from __future__ import annotations

import asyncio
import logging
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
    after each loss or failed attempt."""
    backoff = 0.2
    while not closing():
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
            log.info("%s: connected", name)
            backoff = 0.2
            await lost.wait()
            log.warning("%s: connection lost; reconnecting", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
            log.warning("%s: cannot connect: %s", name, exc)
        forget()
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 2)
            except Exception as exc:  # noqa: BLE001 - it is being thrown away anyway
                log.info("%s: closing the old connection: %s", name, exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
