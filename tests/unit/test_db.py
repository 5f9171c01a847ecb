"""The API's database access while Postgres is unreachable: a clear DatabaseUnavailable, and
during an outage requests fail at once instead of each waiting for its own deadline."""

from __future__ import annotations

import asyncio
import socket

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
