"""The API's broker connection with several nodes (the cluster's failover list): nodes that
refuse are skipped at once and the one that answers is used; whichever node the process starts
at. Against the stack's real RabbitMQ node 1; the others are ports where nothing listens."""

from __future__ import annotations

import asyncio
import socket

from aio_pika.abc import AbstractChannel, AbstractConnection

from iot.api import amqp
from iot.settings import Settings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_keep_connected_skips_nodes_that_refuse_and_uses_the_one_that_answers(
    stack, settings: Settings
):
    good = settings.node_url(settings.rabbitmq_nodes[0], direct=True)
    bad = [good.replace(f":{settings.rabbitmq_port}/", f":{closed_port()}/") for _ in range(2)]

    async def connect_once() -> tuple[str, int]:
        done: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        losses = 0
        opened: list[AbstractConnection] = []

        async def setup(connection: AbstractConnection, watch: object) -> None:
            opened.append(connection)
            channel: AbstractChannel = await connection.channel()
            await channel.close()
            if not done.done():
                done.set_result((str(connection.url.port), losses))

        def forget() -> None:
            nonlocal losses
            losses += 1

        task = asyncio.create_task(
            amqp.keep_connected(
                ";".join([bad[0], good, bad[1]]),
                "test-failover",
                setup,
                forget,
                lambda: done.done(),
            )
        )
        try:
            return await asyncio.wait_for(done, 10)
        finally:
            for connection in opened:
                await connection.close()  # ends keep_connected's wait (closing() is true)
            await asyncio.wait_for(task, 10)

    for _ in range(4):  # each run starts at a random node of the three
        port, failed_before = asyncio.run(connect_once())
        assert port == str(settings.rabbitmq_port)
        assert failed_before <= 2  # at most the two refusing nodes, no backoff round
