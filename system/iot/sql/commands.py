"""SQL for ``commands`` and ``command_events``.

The command-log worker is the only writer: it stores each event once (by ``event_id``) and
recomputes the command's status from its whole timeline, so events may arrive in any order.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
import psycopg

from iot.messages import NEVER_AGAIN, TERMINAL

_RANK = {"queued": 0, "delivered": 1}


def fold_status(events: list[dict[str, Any]]) -> tuple[str, int, Any]:
    """(status, attempt, result) from a command's events.

    Events count in time order. A terminal status sticks (the first one wins), except that a
    ``dead`` command requeued by an operator is ``queued`` again.
    """
    status, attempt, result = "queued", 0, None
    ordered = sorted(events, key=lambda e: (e["at"], _RANK.get(e["status"], 2)))
    for e in ordered:
        if status in TERMINAL:
            if status == "dead" and e["status"] == "queued" and e["detail"].get("requeued"):
                status, attempt = "queued", 0
            continue
        if _RANK.get(e["status"], 2) >= _RANK.get(status, 2):
            status = e["status"]
        if e["status"] == "delivered":
            attempt = max(attempt, int(e["attempt"]))
        if e["status"] in ("succeeded", "failed", "rejected"):
            result = e["detail"].get("result")
    return status, attempt, result


def record_event(conn: psycopg.Connection[Any], event: dict[str, Any]) -> int:
    """Store one event and refresh its command's row; returns 1 if the event was new."""
    command = event["command"]
    conn.execute(
        "INSERT INTO commands (id, device_id, owner_id, name, args, ttl_seconds, created_at,"
        " expires_at, status) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, 'queued')"
        " ON CONFLICT (id) DO NOTHING",
        (
            uuid.UUID(command["id"]),
            uuid.UUID(command["device_id"]),
            uuid.UUID(command["owner_id"]) if command.get("owner_id") else None,
            command["name"],
            orjson.dumps(command.get("args") or {}).decode(),
            int(command["ttl"]),
            command["created_at"],
            command["expires_at"],
        ),
    )
    # Serialise concurrent events of one command (the worker runs several threads).
    conn.execute("SELECT 1 FROM commands WHERE id = %s FOR UPDATE", (uuid.UUID(command["id"]),))
    cur = conn.execute(
        "INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING",
        (
            uuid.UUID(event["event_id"]),
            uuid.UUID(event["command_id"]),
            uuid.UUID(event["device_id"]),
            event["status"],
            int(event.get("attempt", 0)),
            event["at"],
            orjson.dumps(event.get("detail") or {}).decode(),
        ),
    )
    added = cur.rowcount
    if added:
        rows = conn.execute(
            "SELECT status, attempt, at, detail FROM command_events WHERE command_id = %s",
            (uuid.UUID(event["command_id"]),),
        ).fetchall()
        status, attempt, result = fold_status([dict(r) for r in rows])
        conn.execute(
            "UPDATE commands SET status = %s, attempt = %s, result = %s::jsonb,"
            " updated_at = now() WHERE id = %s",
            (
                status,
                attempt,
                None if result is None else orjson.dumps(result).decode(),
                uuid.UUID(event["command_id"]),
            ),
        )
    return added


def descriptor_from_row(
    row: dict[str, Any], requeues: int = 0, expires_at: datetime | None = None
) -> dict[str, Any]:
    """The command's descriptor (as in its messages) rebuilt from its ``commands`` row."""
    return {
        "id": str(row["id"]),
        "device_id": str(row["device_id"]),
        "owner_id": str(row["owner_id"]) if row["owner_id"] else None,
        "name": row["name"],
        "args": row["args"],
        "ttl": row["ttl_seconds"],
        "created_at": row["created_at"].isoformat(),
        "expires_at": (expires_at or row["expires_at"]).isoformat(),
        "requeues": requeues,
    }


# ----- reads (API) -----
_COLUMNS = (
    "id, device_id, owner_id, name, args, ttl_seconds, created_at, expires_at, status,"
    " attempt, result, updated_at"
)


async def get_command(conn: psycopg.AsyncConnection[Any], command_id: uuid.UUID) -> Any:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = %s", (command_id,))
    return await cur.fetchone()


async def events_of(conn: psycopg.AsyncConnection[Any], command_id: uuid.UUID) -> list[Any]:
    cur = await conn.execute(
        "SELECT status, attempt, at, detail FROM command_events WHERE command_id = %s"
        " ORDER BY at, stored_at",
        (command_id,),
    )
    return list(await cur.fetchall())


async def device_history(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    statuses: list[str] | None,
) -> list[Any]:
    """A device's commands, newest first; ``before`` is the (created_at, id) cursor."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE device_id = %(d)s"
        " AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))"
        " AND (%(b_at)s::timestamptz IS NULL OR (created_at, id) < (%(b_at)s, %(b_id)s))"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {
            "d": device_id,
            "statuses": statuses,
            "b_at": before[0] if before else None,
            "b_id": before[1] if before else None,
            "limit": limit,
        },
    )
    return list(await cur.fetchall())


async def never_again_statuses(
    conn: psycopg.AsyncConnection[Any], ids: list[uuid.UUID]
) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT id, status FROM commands WHERE id = ANY(%s) AND status = ANY(%s)",
        (ids, list(NEVER_AGAIN)),
    )
    return {str(r["id"]): r["status"] for r in await cur.fetchall()}


# ----- operators (CLI) -----
def by_status(
    conn: psycopg.Connection[Any], device_id: uuid.UUID, statuses: list[str]
) -> list[Any]:
    return conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE device_id = %s AND status = ANY(%s)"
        " ORDER BY created_at, id",
        (device_id, statuses),
    ).fetchall()


def get_many(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> list[Any]:
    return conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE id = ANY(%s) ORDER BY created_at, id", (ids,)
    ).fetchall()
