"""The API's database access while Postgres is unreachable: a clear DatabaseUnavailable, and
during an outage requests fail at once instead of each waiting for its own deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace

import pytest
from psycopg_pool import AsyncConnectionPool

from iot import db
from iot.errors import DatabaseUnavailable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket is closed


def test_an_unreachable_database_fails_once_slowly_then_at_once_until_the_hold_ends(monkeypatch):
    monkeypatch.setattr(db, "API_TIMEOUT_SECONDS", 1.0)  # the deadline, shortened for the test

    async def scenario() -> list[str]:
        url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/none"
        pool = AsyncConnectionPool(url, min_size=1, timeout=1, reconnect_timeout=0, open=False)
        await pool.open(wait=False)
        details = []
        try:
            for pause in (0.0, 0.0, db.OUTAGE_HOLD_SECONDS + 0.2):
                await asyncio.sleep(pause)
                with pytest.raises(DatabaseUnavailable) as caught:
                    async with db.connection(pool):
                        pass
                details.append(caught.value.detail)
        finally:
            await pool.close()
        return details

    first, second, after_hold = asyncio.run(scenario())
    assert first == "database unavailable (no connection)"
    assert second == "database unavailable (failing at once while it is down)"
    assert after_hold == "database unavailable (no connection)"  # it tried the database again


def test_a_use_cut_at_its_deadline_holds_the_pool_down_only_when_nothing_else_answers() -> None:
    """Slow is not down: while other uses of the pool finish in time, one that outlived its
    deadline (several round trips to a slow database) fails alone."""

    class Pool:
        pass

    pool = Pool()
    assert not db._answering(pool)  # type: ignore[arg-type]  # never answered: an outage
    db._answered_at[pool] = time.monotonic()  # type: ignore[index]
    assert db._answering(pool)  # type: ignore[arg-type]
    db._answered_at[pool] = time.monotonic() - db.API_TIMEOUT_SECONDS - 0.1  # type: ignore[index]
    assert not db._answering(pool)  # type: ignore[arg-type]


class _Pool:
    """What `db._connecting_fails` reads of a pool: its size, its limit, its failed connects."""

    def __init__(self, size: int, errors: int = 0, max_size: int = 20) -> None:
        self.size, self.errors, self.max_size = size, errors, max_size

    def get_stats(self) -> dict[str, int]:
        stats = {"pool_size": self.size}
        if self.errors:
            stats["connections_errors"] = self.errors
        return stats


def test_a_full_pool_with_every_connection_in_use_is_busy_not_down() -> None:
    assert db._connecting_fails(_Pool(size=20, errors=3)) is False  # type: ignore[arg-type]


def test_a_pool_still_opening_its_connections_is_busy_not_down() -> None:
    # thousands of devices at once while the pool opens connections one by one: no failed
    # connect, so no fail-fast hold that would answer every request 503 for a second
    assert db._connecting_fails(_Pool(size=7)) is False  # type: ignore[arg-type]


def test_a_short_pool_whose_connects_failed_lately_is_an_outage(monkeypatch) -> None:
    pool = _Pool(size=3, errors=1)
    assert db._connecting_fails(pool) is True  # type: ignore[arg-type]
    # no new failure, but the last one is recent: still an outage (fail fast, no 3 s waits)
    assert db._connecting_fails(pool) is True  # type: ignore[arg-type]
    later = time.monotonic() + db.CONNECT_ERROR_MEMORY_SECONDS + 1
    monkeypatch.setattr(db.time, "monotonic", lambda: later)
    assert db._connecting_fails(pool) is False  # type: ignore[arg-type]  # long ago: opening
    pool.errors = 2
    assert db._connecting_fails(pool) is True  # type: ignore[arg-type]


def test_a_pool_whose_idle_connection_failed_its_check_lately_is_an_outage(monkeypatch) -> None:
    # every connection still counted in the pool, none answering its check: the database is
    # away (black-holed), not busy, so requests fail at once instead of each waiting a check
    pool = _Pool(size=20)
    assert db._connecting_fails(pool) is False  # type: ignore[arg-type]
    db._check_failed_at[pool] = time.monotonic()  # type: ignore[index]
    assert db._connecting_fails(pool) is True  # type: ignore[arg-type]
    later = time.monotonic() + db.CONNECT_ERROR_MEMORY_SECONDS + 1
    monkeypatch.setattr(db.time, "monotonic", lambda: later)
    assert db._connecting_fails(pool) is False  # type: ignore[arg-type]


def test_the_api_pool_opens_every_connection_other_pools_grow() -> None:
    from iot.settings import Settings

    s = Settings(db_pool_size=12)
    assert db.open_pool(s, fixed=True).min_size == 12
    assert db.open_pool(s).min_size == 1


def test_a_connection_used_recently_skips_the_pools_check_unless_the_server_spoke(
    monkeypatch,
) -> None:
    """A round trip saved per use (against a slow database, half of a statement's time); a
    connection the server ended meanwhile (its socket readable: a message or the close) is
    checked all the same, and so is one idle longer than FRESH_SECONDS."""
    checked: list[object] = []

    async def check_connection(conn: object) -> None:
        checked.append(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(check_connection))
    sockets = [socket.socketpair() for _ in range(4)]

    class Conn:
        def __init__(self, sock: socket.socket) -> None:
            self.pgconn = SimpleNamespace(socket=sock.fileno())

    async def scenario() -> None:
        fresh, ended, idle, never = (Conn(ours) for ours, _ in sockets)
        sockets[1][1].close()  # the server's end of `ended` closed: its socket reads EOF
        now = asyncio.get_running_loop().time()
        db._last_used[fresh] = now  # type: ignore[index]
        db._last_used[ended] = now  # type: ignore[index]
        db._last_used[idle] = now - db.FRESH_SECONDS - 0.1  # type: ignore[index]
        for conn in (fresh, ended, idle, never):
            await db._check(conn)  # type: ignore[arg-type]
        assert checked == [ended, idle, never]

    try:
        asyncio.run(scenario())
    finally:
        for ours, server in sockets:
            ours.close()
            server.close()


def test_an_answer_waiting_unread_is_told_apart_from_a_silent_database() -> None:
    """At a query's deadline the connection is cut only when nothing came back: an answer that
    waits unread means the replica's own loop was late (overload), not Postgres silent."""
    ours, server = socket.socketpair()
    with ours, server:
        conn = SimpleNamespace(pgconn=SimpleNamespace(socket=ours.fileno()))
        assert not db.answered(conn)  # type: ignore[arg-type]
        server.sendall(b"an answer")
        assert db.answered(conn)  # type: ignore[arg-type]
    closed = SimpleNamespace(pgconn=SimpleNamespace(socket=-1))
    assert not db.answered(closed)  # type: ignore[arg-type]
