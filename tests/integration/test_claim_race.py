"""Two polls of one device claiming at the same moment (one device holding two long polls, or a
poll and its retry on another replica): the one that finds the command locked by the other must
not take the device for idle, or its replica would answer that device's polls from memory and
a lease that then lapses (the device never acked) would be redelivered late."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from iot.commands import store

from .conftest import Person, eventually

pytestmark = pytest.mark.integration


def test_a_claim_that_skips_a_command_locked_by_another_claim_looks_again_soon(
    alice: Person, settings
) -> None:
    device = alice.new_device()
    sent = alice.send(device, "switch")
    assert sent.status_code == 201
    url = settings.database_direct_url

    def stored() -> bool:
        with psycopg.connect(url) as c:
            row = c.execute("SELECT count(*) FROM commands WHERE device_id = %s", (device.id,))
            return row.fetchone()[0] == 1  # type: ignore[index]

    eventually(stored, what="the command's row")

    async def race() -> tuple[list, datetime | None, list, datetime | None]:
        first = await psycopg.AsyncConnection.connect(url, row_factory=dict_row)
        second = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
        try:
            # The first claim takes the command and keeps its transaction open: its row stays
            # locked and its lease invisible to others, as during a concurrent claim.
            taken, _ = await store.claim(first, device.id, 10, 60, 5)
            skipped, next_lapse = await store.claim(second, device.id, 10, 60, 5)
            await first.commit()
            # Once the first commits, a claim sees the running lease and waits for its end.
            after, lapse_after = await store.claim(second, device.id, 10, 60, 5)
            return taken, next_lapse, skipped + after, lapse_after
        finally:
            await first.close()
            await second.close()

    before = datetime.now(UTC)
    taken, next_lapse, nothing, lapse_after = asyncio.run(race())
    assert [r["status"] for r in taken] == ["delivered"]
    assert nothing == []
    # Not "idle" (None): look again in about a second, when the other claim has committed.
    assert next_lapse is not None and next_lapse <= before + timedelta(seconds=5)
    assert lapse_after is not None and lapse_after >= before + timedelta(seconds=55)


def test_a_claim_with_nothing_pending_is_idle(alice: Person, settings) -> None:
    device = alice.new_device()

    async def claim() -> tuple[list, datetime | None]:
        async with await psycopg.AsyncConnection.connect(
            settings.database_direct_url, autocommit=True, row_factory=dict_row
        ) as conn:
            return await store.claim(conn, device.id, 10, 60, 5)

    assert asyncio.run(claim()) == ([], None)
