"""A credential look-up that finds every pooled connection in use waits once more before the
request is answered 503 (thousands of devices starting at once each look their token up)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iot import db
from iot.api import deps
from iot.errors import DatabaseBusy


def _pool_busy_for(monkeypatch: pytest.MonkeyPatch, busy: int) -> list[str]:
    attempts: list[str] = []

    @contextlib.asynccontextmanager
    async def connection(pool: Any) -> AsyncIterator[object]:
        attempts.append("busy" if len(attempts) < busy else "ok")
        if attempts[-1] == "busy":
            raise DatabaseBusy("database busy; retry later")
        yield object()

    monkeypatch.setattr(db, "connection", connection)
    return attempts


class _State:
    pool = None


async def _device(conn: object) -> dict[str, Any]:
    return {"id": "d1"}


def test_a_busy_pool_gets_a_second_wait_before_a_503(monkeypatch) -> None:
    attempts = _pool_busy_for(monkeypatch, busy=1)
    found = asyncio.run(deps._look_up(_State(), _device))  # type: ignore[arg-type]
    assert found == {"id": "d1"} and attempts == ["busy", "ok"]


def test_a_pool_busy_through_both_waits_is_a_503(monkeypatch) -> None:
    attempts = _pool_busy_for(monkeypatch, busy=5)
    with pytest.raises(DatabaseBusy):
        asyncio.run(deps._look_up(_State(), _device))  # type: ignore[arg-type]
    assert attempts == ["busy"] * deps.BUSY_LOOKUP_ATTEMPTS
