"""A long poll that finds every pooled connection in use claims again a little later instead of
answering 503 at once (an overload must not turn into a storm of errors and retries)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iot.commands import service
from iot.commands.service import Commands
from iot.commands.wakeups import Wakeups
from iot.errors import DatabaseBusy

DEVICE = uuid.uuid4()
NOW = datetime.now(UTC)
ROW = {
    "id": uuid.uuid4(),
    "name": "open",
    "args": {},
    "status": "delivered",
    "attempt": 1,
    "created_at": NOW,
    "expires_at": NOW + timedelta(minutes=5),
}


@pytest.fixture
def busy_pool(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first ``n`` connections asked for are refused as busy; then claims find ROW."""
    attempts: list[str] = []

    @contextlib.asynccontextmanager
    async def connection(pool: Any) -> AsyncIterator[object]:
        attempts.append("busy" if len(attempts) < 2 else "ok")
        if attempts[-1] == "busy":
            raise DatabaseBusy("database busy; retry later")
        yield object()

    async def claim(conn: Any, *args: Any) -> tuple[list[dict[str, Any]], None]:
        return [ROW], None

    monkeypatch.setattr(service.db, "connection", connection)
    monkeypatch.setattr(service.store, "claim", claim)
    monkeypatch.setattr(service, "BUSY_RETRY_SECONDS", 0.05)
    return attempts


def _core() -> Commands:
    wakeups = Wakeups("postgresql://never-connected")  # nothing known: every poll claims
    return Commands(None, None, None, wakeups, max_attempts=5, queue_cap=100)  # type: ignore[arg-type]


def test_a_long_poll_rides_out_a_busy_pool_and_gets_its_command(busy_pool: list[str]) -> None:
    got = asyncio.run(_core().poll(DEVICE, wait=5, limit=10, lease=30))
    assert [c["id"] for c in got] == [ROW["id"]]
    assert busy_pool == ["busy", "busy", "ok"]


def test_a_short_poll_still_answers_busy(busy_pool: list[str]) -> None:
    with pytest.raises(DatabaseBusy):
        asyncio.run(_core().poll(DEVICE, wait=0, limit=10, lease=30))
    assert busy_pool == ["busy"]


def test_a_long_poll_out_of_time_answers_nothing_yet(busy_pool: list[str]) -> None:
    assert asyncio.run(_core().poll(DEVICE, wait=0.05, limit=10, lease=30)) == []
    assert busy_pool == ["busy"]  # the command stays stored for the next poll
