"""SQL for the ``users`` table. A person's devices' commands belong to the command core and go
through it (:mod:`iot.commands.cleanup`)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from iot.commands import cleanup as commands_cleanup
from iot.errors import Conflict


async def create_user(
    conn: psycopg.AsyncConnection[Any],
    username: str,
    password_hash: str,
    is_admin: bool,
    max_devices: int | None = None,
) -> dict[str, Any]:
    """Insert a user (``max_devices`` None: the default cap on devices).

    Raises:
        Conflict: the name is taken.
    """
    try:
        cur = await conn.execute(
            "INSERT INTO users (id, username, password_hash, is_admin, max_devices)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id, username, is_admin, created_at",
            (uuid.uuid4(), username, password_hash, is_admin, max_devices),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"user {username!r} already exists") from exc
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def get_user_by_name(
    conn: psycopg.AsyncConnection[Any], username: str
) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id, username, password_hash, is_admin FROM users WHERE username = %s", (username,)
    )
    row = await cur.fetchone()
    return dict(row) if row else None


async def set_password(
    conn: psycopg.AsyncConnection[Any], username: str, password_hash: str
) -> bool:
    cur = await conn.execute(
        "UPDATE users SET password_hash = %s WHERE username = %s", (password_hash, username)
    )
    return cur.rowcount == 1


async def list_users(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT id, username, is_admin, max_devices, created_at FROM users ORDER BY username"
    )
    return [dict(r) for r in await cur.fetchall()]


async def get_user(conn: psycopg.AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, Any] | None:
    """Who an access token names, as the database knows them now; None when deleted."""
    cur = await conn.execute("SELECT id, username, is_admin FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return dict(row) if row else None


async def update_user(
    conn: psycopg.AsyncConnection[Any], username: str, changes: dict[str, Any]
) -> bool:
    """Set ``is_admin`` and/or ``max_devices`` (None: back to the default). A change of the
    admin flag holds at once on every replica (a trigger announces it, migration 0006)."""
    allowed = {k: v for k, v in changes.items() if k in ("is_admin", "max_devices")}
    if not allowed:
        return True
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in allowed
    )
    cur = await conn.execute(
        sql.SQL("UPDATE users SET {} WHERE username = %(username)s").format(sets),
        {**allowed, "username": username},
    )
    return cur.rowcount == 1


async def delete_user(conn: psycopg.AsyncConnection[Any], username: str) -> list[str] | None:
    """Delete a person with their devices (and those devices' readings, commands and events);
    returns the ids of the devices deleted, None when there is no such person. Their access
    tokens and their devices' tokens stop working at once on every replica (a trigger
    announces each deletion, migration 0006)."""
    async with conn.transaction():
        cur = await conn.execute("SELECT id FROM users WHERE username = %s FOR UPDATE", (username,))
        row = await cur.fetchone()
        if row is None:
            return None
        user_id = row["id"]
        cur = await conn.execute(
            "SELECT id::text AS id FROM devices WHERE owner_id = %s", (user_id,)
        )
        device_ids = [r["id"] for r in await cur.fetchall()]
        await conn.execute(
            "DELETE FROM readings WHERE device_id IN (SELECT id FROM devices WHERE owner_id = %s)",
            (user_id,),
        )
        await commands_cleanup.delete_of_owner(conn, user_id)
        await conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return device_ids
