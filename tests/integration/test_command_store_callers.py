"""What other modules ask of the command core's SQL (``store.py``, ``cleanup.py``), on a scratch
database built by the product's migrations: a device's deletion and a person's take their
commands and events with them (and nobody else's), and the wake-ups listener's baseline names
the devices with pending commands. (The retention delete is in test_history_partitions.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from iot.commands import store
from iot.settings import Settings
from iot.sql import devices as devices_sql
from iot.sql import users as users_sql
from loadtest.historybench import scratch_database

pytestmark = pytest.mark.integration


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    with scratch_database(settings, "iot_test_command_store") as scratch:
        yield scratch


async def _person(conn: psycopg.AsyncConnection, name: str) -> uuid.UUID:
    row = await users_sql.create_user(conn, name, "hash", is_admin=False)
    return row["id"]


async def _device(conn: psycopg.AsyncConnection, owner: uuid.UUID) -> uuid.UUID:
    row = await devices_sql.create_device(conn, owner, "d", uuid.uuid4().hex, default_cap=10)
    return row["id"]


async def _command(conn: psycopg.AsyncConnection, device: uuid.UUID, status: str) -> None:
    now = datetime.now(UTC)
    command = {
        "id": str(uuid.uuid4()),
        "device_id": str(device),
        "owner_id": None,
        "name": "blink",
        "args": {},
        "ttl": 60,
        "created_at": now.isoformat(),
        "expires_at": (now + timedelta(minutes=1)).isoformat(),
    }
    assert await store.store_accepted(conn, command) == 1  # the row and its `queued` event
    if status != "queued":
        await conn.execute("UPDATE commands SET status = %s WHERE id = %s", (status, command["id"]))


async def _left(conn: psycopg.AsyncConnection) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """The devices that still have commands, and those that still have events."""
    commands = await (await conn.execute("SELECT DISTINCT device_id FROM commands")).fetchall()
    events = await (await conn.execute("SELECT DISTINCT device_id FROM command_events")).fetchall()
    return {r["device_id"] for r in commands}, {r["device_id"] for r in events}


def test_deleting_a_device_or_a_person_deletes_their_commands_and_no_others(url: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row
        ) as conn:
            alice, bob = await _person(conn, "alice"), await _person(conn, "bob")
            a1, a2, b1 = (
                await _device(conn, alice),
                await _device(conn, alice),
                await _device(conn, bob),
            )
            for device in (a1, a2, b1):
                await _command(conn, device, "queued")
                await _command(conn, device, "succeeded")
            assert await _left(conn) == ({a1, a2, b1}, {a1, a2, b1})

            assert await devices_sql.delete_device(conn, a1, alice)
            assert await _left(conn) == ({a2, b1}, {a2, b1})

            assert await users_sql.delete_user(conn, "bob") == [str(b1)]
            assert await _left(conn) == ({a2}, {a2})

    asyncio.run(scenario())


def test_the_wakeups_baseline_names_the_devices_with_pending_commands(url: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row
        ) as conn:
            owner = await _person(conn, "carol")
            devices = {status: await _device(conn, owner) for status in ("queued", "delivered")}
            done = await _device(conn, owner)
            for status, device in devices.items():
                await _command(conn, device, status)
            await _command(conn, done, "succeeded")
            assert await store.pending_devices(conn) == {str(d) for d in devices.values()}

    asyncio.run(scenario())
