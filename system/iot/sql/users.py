"""SQL for the ``users`` table."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from iot.errors import Conflict


async def create_user(
    conn: psycopg.AsyncConnection[Any], username: str, password_hash: str, is_admin: bool
) -> dict[str, Any]:
    """Insert a user.

    Raises:
        Conflict: the name is taken.
    """
    try:
        cur = await conn.execute(
            "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, %s)"
            " RETURNING id, username, is_admin, created_at",
            (uuid.uuid4(), username, password_hash, is_admin),
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
        "SELECT id, username, is_admin, created_at FROM users ORDER BY username"
    )
    return [dict(r) for r in await cur.fetchall()]
