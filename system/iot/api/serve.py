"""Run one API replica: ``python -m iot.api.serve --host H --port P``.

uvicorn with the options every replica uses, and one change to its shutdown: before it stops
taking requests and waits for open ones, the replica's long polls are answered (nothing, or
what one last claim finds). uvicorn alone would hold them until its graceful-shutdown timeout
and then cancel them with a 500; answered, the devices poll again at once, and nginx sends them
to the other replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from iot import heap
from iot.api.app import create_app

GRACEFUL_SHUTDOWN_SECONDS = 5
# Longer than nginx keeps idle upstream connections (keepalive_timeout), so uvicorn never closes
# one that nginx is about to reuse (a 502).
KEEP_ALIVE_SECONDS = 75


class OneWritePerTurn:
    """A connection's transport whose writes wait for the end of the event loop's turn and then
    go out as one.

    uvicorn writes a response's head and its body separately: two ``send`` calls on the socket,
    each waking nginx, the largest single cost of a small answer in a replica's profile. Held
    until the loop's turn ends they leave as one write (a pipelined response written in the same
    turn joins them). ``close`` writes what is held first; a connection already closing drops it,
    as the transport itself would.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            self._held.append(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response written in one piece (`OneWritePerTurn`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWritePerTurn(transport, self.loop))  # type: ignore[arg-type]


class Replica(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        heap.settle()  # the app and its connections are up: what exists now lives for good

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.app.state, "iot", None)
        if state is not None and state.commands is not None:
            state.commands.drain()
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iot.api.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    app = create_app()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=False,
        loop="uvloop",
        http=Protocol,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # nginx in front: nothing reads the client's address, and a wrapper per request that
        # rewrites it from X-Forwarded-For cost CPU on every request
        proxy_headers=False,
        server_header=False,  # nginx answers for the product; no server software named
    )
    Replica(config, app).run()


if __name__ == "__main__":
    main()
