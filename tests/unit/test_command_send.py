"""POST /commands' one statement before the publish (no network, no services): the device's
owner and pending count answer both 404 and 429, the owner mirror in Redis stands in while
Postgres is down (then the cap is not counted), and the core applies the cap to that count."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iot import cache
from iot.api import access
from iot.api.deps import Principal, State
from iot.commands import service
from iot.commands.service import Commands
from iot.commands.wakeups import Wakeups
from iot.errors import DatabaseUnavailable, NotFound, QueueFull

DEVICE = uuid.uuid4()
OWNER = uuid.uuid4()
ALICE = Principal("user", OWNER, username="alice")
BOB = Principal("user", uuid.uuid4(), username="bob")
ADMIN = Principal("user", uuid.uuid4(), is_admin=True, username="root")


class FakeRedis:
    """The owner mirror (``device-owners``) and the command descriptors, in memory."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.values: dict[str, bytes] = {}

    async def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    async def hset(self, key: str, field: str, value: str) -> None:
        self.hashes.setdefault(key, {})[field] = value

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ex: int) -> None:
        self.values[key] = value


class FakePostgres:
    """Answers the statement as told (None: down); counts what was asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.up = True
        self.devices: dict[uuid.UUID, tuple[uuid.UUID, int]] = {DEVICE: (OWNER, 2)}
        self.asked: list[str] = []

        @contextlib.asynccontextmanager
        async def connection(pool: Any) -> AsyncIterator[object]:
            if not self.up:
                raise DatabaseUnavailable("database unavailable")
            yield object()

        async def owner_and_pending(
            conn: Any, device_id: uuid.UUID, owner_id: uuid.UUID | None
        ) -> dict[str, Any] | None:
            self.asked.append("owner_and_pending")
            found = self.devices.get(device_id)
            if found is None or owner_id not in (None, found[0]):
                return None
            return {"owner_id": found[0], "pending": found[1]}

        async def store_accepted(conn: Any, command: dict[str, Any]) -> int:
            self.asked.append("store_accepted")
            return 1

        async def get_command(conn: Any, command_id: uuid.UUID) -> None:
            self.asked.append("get_command")  # the Idempotency-Key's look-up: not stored

        monkeypatch.setattr(access.db, "connection", connection)
        monkeypatch.setattr(service.store, "get_command", get_command)
        monkeypatch.setattr(access.commands_sql, "owner_and_pending", owner_and_pending)
        monkeypatch.setattr(service.store, "store_accepted", store_accepted)


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch) -> FakePostgres:
    return FakePostgres(monkeypatch)


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


def _state(redis: FakeRedis) -> State:
    return State(None, None, None, redis, {})  # type: ignore[arg-type]


def _pending(redis: FakeRedis, who: Principal, device: uuid.UUID = DEVICE) -> int | None:
    return asyncio.run(access.visible_device_pending(_state(redis), who, device))


def test_the_owner_and_an_admin_get_the_count_and_the_owner_is_mirrored(pg, redis) -> None:
    assert _pending(redis, ALICE) == 2
    assert redis.hashes[cache.OWNERS_KEY] == {str(DEVICE): str(OWNER)}
    assert _pending(redis, ADMIN) == 2
    assert pg.asked == ["owner_and_pending"] * 2  # one statement each


@pytest.mark.parametrize("who", [BOB, ADMIN])
def test_an_unknown_or_foreign_device_is_not_found_as_today(pg, redis, who) -> None:
    device = uuid.uuid4() if who is ADMIN else DEVICE
    with pytest.raises(NotFound) as caught:
        _pending(redis, who, device)
    assert caught.value.detail == "no such device"


def test_while_postgres_is_down_the_mirror_decides_and_nothing_is_counted(pg, redis) -> None:
    _pending(redis, ALICE)  # mirrored while Postgres answered
    pg.up = False
    assert _pending(redis, ALICE) is None
    assert _pending(redis, ADMIN) is None
    with pytest.raises(DatabaseUnavailable):  # not the caller's: 503, as before
        _pending(redis, BOB)
    with pytest.raises(DatabaseUnavailable):  # not mirrored: cannot tell, 503
        _pending(redis, ADMIN, uuid.uuid4())


def _core(redis: FakeRedis, published: list[dict[str, Any]]) -> Commands:
    async def publish(queue: str, task: str, body: dict[str, Any]) -> str:
        published.append(body["command"])
        return "confirmed"

    wakeups = Wakeups("postgresql://never-connected")
    return Commands(None, publish, redis, wakeups, max_attempts=5, queue_cap=3)  # type: ignore[arg-type]


def _send(core: Commands, pending: int | None, key: str | None = None) -> dict[str, Any]:
    return asyncio.run(core.send(OWNER, DEVICE, "open", {}, 60, key, pending=pending))


def test_the_cap_refuses_before_the_publish_and_the_row_is_written_after_it(pg, redis) -> None:
    published: list[dict[str, Any]] = []
    core = _core(redis, published)
    with pytest.raises(QueueFull, match=r"full \(3 pending\)"):
        _send(core, 3)
    assert published == [] and pg.asked == []
    sent = _send(core, 2)
    assert published == [sent] and pg.asked == ["store_accepted"]


def test_uncounted_while_postgres_is_down_the_command_is_accepted(pg, redis) -> None:
    published: list[dict[str, Any]] = []
    core = _core(redis, published)
    pg.up = False
    sent = _send(core, None)
    assert published == [sent] and pg.asked == []  # the worker stores its row later


def test_a_retry_with_its_idempotency_key_is_answered_even_when_the_queue_is_full(
    pg, redis
) -> None:
    published: list[dict[str, Any]] = []
    core = _core(redis, published)
    first = _send(core, 0, key="k-1")
    assert _send(core, 3, key="k-1") == first
    assert len(published) == 1
