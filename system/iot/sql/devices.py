"""SQL for the ``devices`` table. ``owner_id=None`` means "any owner" (admins).

A device's commands belong to the command core and go through it (:mod:`iot.commands.cleanup`)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from iot.commands import cleanup as commands_cleanup
from iot.errors import AuthError, Forbidden

_COLUMNS = "id, owner_id, name, labels, created_at, token_rotated_at"
DEVICES_CHANNEL = "iot_devices"  # LISTENed to by every API replica (commands/wakeups.py)


async def create_device(
    conn: psycopg.AsyncConnection[Any],
    owner_id: uuid.UUID,
    name: str,
    token_hash: str,
    default_cap: int,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register a device, unless its owner already has as many as they may: their own
    ``max_devices``, else ``default_cap``; admins have no cap. The owner's row is locked
    meanwhile, so registrations at once cannot pass the cap together.

    Raises:
        AuthError: the owner no longer exists.
        Forbidden: the cap is reached.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT is_admin, max_devices FROM users WHERE id = %s FOR UPDATE", (owner_id,)
        )
        owner = await cur.fetchone()
        if owner is None:
            raise AuthError("this person no longer exists")
        cap = default_cap if owner["max_devices"] is None else owner["max_devices"]
        if not owner["is_admin"]:
            # counted after the lock, in a statement of its own: it sees the devices of
            # registrations that held the lock before
            cur = await conn.execute(
                "SELECT count(*) AS n FROM devices WHERE owner_id = %s", (owner_id,)
            )
            count = await cur.fetchone()
            assert count is not None
            if count["n"] >= cap:
                raise Forbidden(
                    f"device limit reached: {cap} devices per person; delete one, or ask an "
                    "administrator to raise your limit"
                )
        cur = await conn.execute(
            f"INSERT INTO devices (id, owner_id, name, token_hash, labels)"
            f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (uuid.uuid4(), owner_id, name, token_hash, Jsonb(labels or {})),
        )
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def get_device(
    conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID, owner_id: uuid.UUID | None
) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE id = %s AND (%s::uuid IS NULL OR owner_id = %s)",
        (device_id, owner_id, owner_id),
    )
    row = await cur.fetchone()
    return dict(row) if row else None


async def set_labels(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    owner_id: uuid.UUID | None,
    labels: dict[str, str],
) -> dict[str, Any] | None:
    """Replace the device's labels; None when there is no such device (of ``owner_id``)."""
    cur = await conn.execute(
        f"UPDATE devices SET labels = %s WHERE id = %s AND (%s::uuid IS NULL OR owner_id = %s)"
        f" RETURNING {_COLUMNS}",
        (Jsonb(labels), device_id, owner_id, owner_id),
    )
    row = await cur.fetchone()
    return dict(row) if row else None


async def matching(
    conn: psycopg.AsyncConnection[Any],
    owner_id: uuid.UUID,
    device_ids: list[uuid.UUID] | None,
    labels: dict[str, str] | None,
) -> list[uuid.UUID]:
    """The ids of ``owner_id``'s devices among ``device_ids`` (when given) whose labels
    contain ``labels`` (when given: the GIN index of migration 0008). A rollout's targets."""
    cur = await conn.execute(
        "SELECT id FROM devices WHERE owner_id = %(owner)s"
        " AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))"
        " AND (%(labels)s::jsonb IS NULL OR labels @> %(labels)s::jsonb)",
        {"owner": owner_id, "ids": device_ids, "labels": None if labels is None else Jsonb(labels)},
    )
    return [r["id"] for r in await cur.fetchall()]


async def list_devices(
    conn: psycopg.AsyncConnection[Any], owner_id: uuid.UUID | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE (%s::uuid IS NULL OR owner_id = %s)"
        " ORDER BY created_at, id LIMIT %s OFFSET %s",
        (owner_id, owner_id, limit, offset),
    )
    return [dict(r) for r in await cur.fetchall()]


# A page of device ids by id: the primary key (every owner's) or the (owner_id, id) index
# (one owner's, migration 0007) walks from the cursor and stops after ``limit`` rows, so a page
# costs its own size whatever the fleet's. Two statements, not one with "owner IS NULL OR":
# a generic plan of that could not use the owner's index.
_PAGE_ALL = "SELECT id FROM devices WHERE id > %(after)s ORDER BY id LIMIT %(limit)s"
_PAGE_OWNER = (
    "SELECT id FROM devices WHERE owner_id = %(owner)s AND id > %(after)s"
    " ORDER BY id LIMIT %(limit)s"
)
_BEFORE_EVERY_ID = uuid.UUID(int=0)  # the nil uuid: below every id we issue (uuid4)


async def device_ids_page(
    conn: psycopg.AsyncConnection[Any],
    owner_id: uuid.UUID | None,
    after: uuid.UUID | None,
    limit: int,
) -> list[uuid.UUID]:
    """At most ``limit`` device ids greater than ``after`` (None: from the first), ascending;
    one owner's devices, or every owner's when ``owner_id`` is None (admins)."""
    params = {"owner": owner_id, "after": after or _BEFORE_EVERY_ID, "limit": limit}
    cur = await conn.execute(_PAGE_ALL if owner_id is None else _PAGE_OWNER, params)
    return [r["id"] for r in await cur.fetchall()]


async def find_by_token_hash(
    conn: psycopg.AsyncConnection[Any], token_hash: str
) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE token_hash = %s", (token_hash,))
    row = await cur.fetchone()
    return dict(row) if row else None


async def rotate_token(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    owner_id: uuid.UUID | None,
    token_hash: str,
) -> dict[str, Any] | None:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE devices SET token_hash = %s, token_rotated_at = now()"
            f" WHERE id = %s AND (%s::uuid IS NULL OR owner_id = %s) RETURNING {_COLUMNS}",
            (token_hash, device_id, owner_id, owner_id),
        )
        row = await cur.fetchone()
        if row:
            await _notify_changed(conn, device_id)
    return dict(row) if row else None


async def delete_device(
    conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID, owner_id: uuid.UUID | None
) -> bool:
    """Delete a device with its stored readings and commands, in one transaction."""
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM devices WHERE id = %s AND (%s::uuid IS NULL OR owner_id = %s)",
            (device_id, owner_id, owner_id),
        )
        if cur.rowcount != 1:
            return False
        await conn.execute("DELETE FROM readings WHERE device_id = %s", (device_id,))
        await commands_cleanup.delete_of_device(conn, device_id)
        await _notify_changed(conn, device_id)
    return True


async def _notify_changed(conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID) -> None:
    """Every replica's auth cache forgets the device when this transaction commits."""
    await conn.execute("SELECT pg_notify(%s, %s)", (DEVICES_CHANNEL, str(device_id)))
