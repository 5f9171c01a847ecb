"""A replica writes each response in one piece: uvicorn's separate writes of a response's head
and body reach the socket as one write at the end of the event loop's turn, in order, and
nothing held is lost when the connection closes."""

from __future__ import annotations

import asyncio

from iot.api.serve import OneWritePerTurn


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _run(scenario):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        raw = _Transport()
        return await scenario(raw, OneWritePerTurn(raw, asyncio.get_running_loop()))  # type: ignore[arg-type]

    return asyncio.run(main())


def test_head_and_body_leave_as_one_write_after_the_turn() -> None:
    async def scenario(raw, t):  # type: ignore[no-untyped-def]
        t.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
        t.write(b"")  # an empty body part is no write
        t.write(b"{}")
        assert raw.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        return raw.writes

    assert _run(scenario) == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"]


def test_writes_of_later_turns_follow_in_order() -> None:
    async def scenario(raw, t):  # type: ignore[no-untyped-def]
        t.write(b"a")
        await asyncio.sleep(0)
        t.write(b"b")
        t.write(b"c")
        await asyncio.sleep(0)
        return raw.writes

    assert _run(scenario) == [b"a", b"bc"]


def test_close_writes_what_is_held_first() -> None:
    async def scenario(raw, t):  # type: ignore[no-untyped-def]
        t.write(b"last answer")
        t.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return raw.writes, raw.closing

    assert _run(scenario) == ([b"last answer"], True)


def test_a_connection_gone_meanwhile_drops_the_held_bytes() -> None:
    async def scenario(raw, t):  # type: ignore[no-untyped-def]
        t.write(b"never read")
        raw.closing = True  # the peer went away before the turn ended
        await asyncio.sleep(0)
        t.write(b"x")
        t.abort()
        await asyncio.sleep(0)
        return raw.writes, raw.aborted

    assert _run(scenario) == ([], True)


def test_everything_else_is_the_real_transport() -> None:
    async def scenario(raw, t):  # type: ignore[no-untyped-def]
        return t.get_extra_info("peername"), t.is_closing()

    assert _run(scenario) == ("info:peername", False)
