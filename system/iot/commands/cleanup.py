"""Deleting commands with their events: all of a device's when it goes (``sql/devices.py``),
all of a person's devices' when they go (``sql/users.py``), both in the caller's transaction;
and finished ones past their retention (the history maintenance, ``iot.maintenance``, as the
owner role). The rest of the command tables' SQL is in :mod:`iot.commands.store`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row


async def delete_of_device(conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID) -> None:
    """Delete a device's commands and events, in the caller's transaction (the device's)."""
    for table in ("commands", "command_events"):
        await conn.execute(f"DELETE FROM {table} WHERE device_id = %s", (device_id,))


async def delete_of_owner(conn: psycopg.AsyncConnection[Any], owner_id: uuid.UUID) -> None:
    """Delete the commands and events of every device of a person, in the caller's
    transaction (the person's, before their devices go)."""
    for table in ("commands", "command_events"):
        await conn.execute(
            f"DELETE FROM {table} WHERE device_id IN (SELECT id FROM devices WHERE owner_id = %s)",
            (owner_id,),
        )


FINISHED = ("succeeded", "failed", "rejected", "expired", "cancelled", "dead")
# As spelled in the partial index commands_finished_idx (migration 0005), so the planner uses it.
_FINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in FINISHED) + ")"
FINISHED_BATCH = 5000


def delete_finished(
    conn: psycopg.Connection[Any], older_than: datetime, batch: int = FINISHED_BATCH
) -> int:
    """Delete finished commands last updated before ``older_than``, with their events, a batch
    per transaction (the history maintenance's retention, ``iot.maintenance``, as the owner
    role); returns the commands deleted."""
    total = 0
    while True:
        with conn.transaction():
            ids = [
                r[0]
                for r in conn.cursor(row_factory=tuple_row)
                .execute(
                    "DELETE FROM commands WHERE id IN (SELECT id FROM commands"
                    f" WHERE status IN {_FINISHED_SQL} AND updated_at < %s LIMIT %s)"
                    " RETURNING id",
                    (older_than, batch),
                )
                .fetchall()
            ]
            if ids:
                conn.execute("DELETE FROM command_events WHERE command_id = ANY(%s)", (ids,))
        total += len(ids)
        if len(ids) < batch:
            return total
