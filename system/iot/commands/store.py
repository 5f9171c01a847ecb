"""Commands in Postgres: the ``commands`` row is the state, ``command_events`` the timeline.

Every change of a row and the event that records it are written in one transaction, so the
status and the timeline never disagree. The hot paths are single statements, one round trip
each (the insert, a claim, an ack: the ack's rules are :func:`lifecycle.on_ack` tabulated into
its statement); the rare ones (cancel, requeue) lock the row, ask :mod:`lifecycle` what to do,
and write.

Sync functions serve the commands worker and ``iotctl``; async ones the API.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import tuple_row

from iot.commands import lifecycle
from iot.errors import NotFound

NOTIFY_CHANNEL = "iot_commands"  # payload: the device id that has new work

_COLUMNS = (
    "id, device_id, owner_id, name, args, ttl_seconds, created_at, expires_at, status,"
    " attempt, result, updated_at, leased_until, requeues"
)

# Stores a command handed over through `commands data` (idempotent: a redelivered message finds
# the row there and does nothing), its `queued` event, and wakes the device's long polls.
# A command for a device deleted meanwhile is dropped.
_INSERT = (
    """
WITH new AS (
    INSERT INTO commands (id, device_id, owner_id, name, args, ttl_seconds, created_at,
                          expires_at, status)
    SELECT %(id)s, %(device)s, %(owner)s, %(name)s, %(args)s::jsonb, %(ttl)s, %(created)s,
           %(expires)s, 'queued'
    WHERE EXISTS (SELECT 1 FROM devices WHERE id = %(device)s)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, device_id, created_at
), logged AS (
    INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)
    SELECT gen_random_uuid(), id, device_id, 'queued', 0, created_at, '{}'::jsonb FROM new
)
SELECT pg_notify('"""
    + NOTIFY_CHANNEL
    + """', device_id::text) FROM new
"""
)

# A poll's claim, in one statement (docs/design.md §5 Commands): the device's claimable commands
# oldest first, locked without waiting for another poll's locks; each becomes expired, dead or
# delivered (lifecycle.claim_outcome), with its event. The last column tells a poll that got nothing
# when to look again: when the next lease of this device lapses (its command is claimable again
# then), or in a second when a pending command was skipped because a concurrent claim of the same
# device holds it (that claim's lease is not visible yet: without this, the poll took the device for
# idle and its replica answered polls from memory past the lease's end).
_CLAIM = """
WITH picked AS (
    SELECT id FROM commands
    WHERE device_id = %(device)s AND status IN ('queued', 'delivered')
      AND (leased_until IS NULL OR leased_until <= now())
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE commands c SET
        status = CASE WHEN c.expires_at <= now() THEN 'expired'
                      WHEN c.attempt >= %(max)s THEN 'dead' ELSE 'delivered' END,
        attempt = CASE WHEN c.expires_at <= now() OR c.attempt >= %(max)s THEN c.attempt
                       ELSE c.attempt + 1 END,
        leased_until = CASE WHEN c.expires_at <= now() OR c.attempt >= %(max)s THEN NULL
                            ELSE now() + %(lease)s * interval '1 second' END,
        updated_at = now()
    FROM picked WHERE c.id = picked.id
    RETURNING c.id, c.device_id, c.name, c.args, c.created_at, c.expires_at, c.status,
              c.attempt
), logged AS (
    INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)
    SELECT gen_random_uuid(), id, device_id, status, attempt, now(),
           CASE WHEN status = 'dead' THEN '{"reason": "max attempts"}'::jsonb
                ELSE '{}'::jsonb END
    FROM claimed
)
SELECT k.id, k.name, k.args, k.created_at, k.expires_at, k.status, k.attempt,
       (SELECT min(CASE WHEN leased_until > now() THEN leased_until
                        ELSE now() + interval '1 second' END)
        FROM commands
        WHERE device_id = %(device)s AND status IN ('queued', 'delivered')
          AND id NOT IN (SELECT id FROM claimed))
       AS next_lapse
FROM (SELECT 1) AS one LEFT JOIN claimed k ON true
ORDER BY k.created_at, k.id
"""

# The sweep: commands nobody claims (their device is offline) still expire and die
# (lifecycle.sweep_outcome). A running lease is left alone.
_SWEEP_EXPIRED = """
WITH due AS (
    SELECT id FROM commands
    WHERE status IN ('queued', 'delivered') AND expires_at <= now()
      AND (leased_until IS NULL OR leased_until <= now())
    ORDER BY expires_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE commands c SET status = 'expired', leased_until = NULL, updated_at = now()
    FROM due WHERE c.id = due.id
    RETURNING c.id, c.device_id, c.attempt
)
INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)
SELECT gen_random_uuid(), id, device_id, 'expired', attempt, now(), '{}'::jsonb FROM done
"""
_SWEEP_DEAD = """
WITH due AS (
    SELECT id FROM commands
    WHERE status = 'delivered' AND leased_until <= now() AND attempt >= %(max)s
    ORDER BY leased_until LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE commands c SET status = 'dead', leased_until = NULL, updated_at = now()
    FROM due WHERE c.id = due.id
    RETURNING c.id, c.device_id, c.attempt
)
INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)
SELECT gen_random_uuid(), id, device_id, 'dead', attempt, now(),
       '{"reason": "max attempts"}'::jsonb
FROM done
"""

# What POST /commands asks before the publish, in one round trip: the device's owner (no row:
# unknown, or not the caller's: ``owner`` NULL means any owner, for admins) and its commands not
# yet final, which the per-device cap counts (the partial index on pending rows answers it).
_OWNER_AND_PENDING = """
SELECT d.owner_id,
       (SELECT count(*) FROM commands c
        WHERE c.device_id = d.id AND c.status IN ('queued', 'delivered')) AS pending
FROM devices d
WHERE d.id = %(device)s AND (%(owner)s::uuid IS NULL OR d.owner_id = %(owner)s)
"""


# A device's ack in one statement (one round trip: a transaction of lock, update, event and
# commit took five, and against a database 1.5 s away outlived the API's 5 s deadline every
# time; docs/decisions.md, "Commands through a slow database"). The rules are not written
# twice: ``rules`` is :func:`lifecycle.on_ack` tabulated for every status and outcome when this
# module loads. The row is locked as the transaction did (a concurrent ack waits, then sees the
# first one's status and changes nothing); a row of another device answers nothing.
def _ack_rules() -> str:
    rows = []
    for status in sorted({*lifecycle.PENDING, *lifecycle.TERMINAL}):
        for outcome in lifecycle.ACK_STATUSES:
            change = lifecycle.on_ack(status, outcome)
            event = f"'{change.event}'" if change.event else "NULL"
            rows.append(f"('{status}', '{outcome}', '{change.status}', {event})")
    return ",\n           ".join(rows)


_ACK = f"""
WITH rules (status, outcome, next, event) AS (
    VALUES {_ack_rules()}
), locked AS (
    SELECT id, device_id, status, attempt FROM commands WHERE id = %(id)s FOR UPDATE
), decided AS (
    SELECT l.id, l.device_id, l.attempt, l.status, r.next, r.event
    FROM locked l JOIN rules r ON r.status = l.status AND r.outcome = %(outcome)s
    WHERE l.device_id = %(device)s
), changed AS (
    UPDATE commands c SET status = d.next, result = %(result)s::jsonb, leased_until = NULL,
                          updated_at = now()
    FROM decided d WHERE c.id = d.id AND d.next <> d.status
), logged AS (
    INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)
    SELECT gen_random_uuid(), id, device_id, event, attempt, now(), %(detail)s::jsonb
    FROM decided WHERE event IS NOT NULL
)
SELECT next AS status FROM decided
"""

_EVENT = (
    "INSERT INTO command_events (event_id, command_id, device_id, status, attempt, at, detail)"
    " VALUES (gen_random_uuid(), %s, %s, %s, %s, now(), %s::jsonb)"
)
_LOCK = "SELECT id, device_id, status, attempt FROM commands WHERE id = %s FOR UPDATE"


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _insert_params(command: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": uuid.UUID(command["id"]),
        "device": uuid.UUID(command["device_id"]),
        "owner": uuid.UUID(command["owner_id"]) if command.get("owner_id") else None,
        "name": command["name"],
        "args": orjson.dumps(command.get("args") or {}).decode(),
        "ttl": int(command["ttl"]),
        "created": command["created_at"],
        "expires": command["expires_at"],
    }


def descriptor_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The command as the API answers it before its row exists, rebuilt from its row."""
    return {
        "id": str(row["id"]),
        "device_id": str(row["device_id"]),
        "owner_id": str(row["owner_id"]) if row["owner_id"] else None,
        "name": row["name"],
        "args": row["args"],
        "ttl": row["ttl_seconds"],
        "created_at": row["created_at"].isoformat(),
        "expires_at": row["expires_at"].isoformat(),
    }


async def store_accepted(conn: psycopg.AsyncConnection[Any], command: dict[str, Any]) -> int:
    """The API's write of a command RabbitMQ just confirmed: the same idempotent insert as the
    commands worker's (which then finds the row and does nothing); returns 1 if it was new."""
    cur = await conn.execute(_INSERT, _insert_params(command))
    return cur.rowcount


# ----- the commands worker -----
def insert(conn: psycopg.Connection[Any], command: dict[str, Any]) -> int:
    """Store a command from `commands data`; returns 1 if it was new (0: a redelivery, or its
    device is gone). Wakes the device's long polls on commit."""
    cur = conn.execute(_INSERT, _insert_params(command))
    return cur.rowcount


def record_event(conn: psycopg.Connection[Any], event: dict[str, Any]) -> int:
    """Store one event from the `commands log` queue (by event id, so a redelivery is a no-op).
    The row's status is not touched: every status change writes its own event."""
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
    return cur.rowcount


# ----- operators (iotctl) -----
def by_status(
    conn: psycopg.Connection[Any], device_id: uuid.UUID, statuses: list[str]
) -> list[Any]:
    return conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE device_id = %s AND status = ANY(%s)"
        " ORDER BY created_at, id",
        (device_id, statuses),
    ).fetchall()


def requeue(
    conn: psycopg.Connection[Any], device_id: uuid.UUID, ids: list[uuid.UUID] | None, by: str
) -> list[dict[str, Any]]:
    """Give dead commands of a device (all of them, or ``ids``) a fresh ttl and attempt count,
    in one transaction; returns the requeued rows.

    Raises:
        NotFound: an id is not a command of this device.
        TransitionRefused: one of ``ids`` is not dead (nothing is requeued).
    """
    with conn.transaction():
        if ids:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE id = ANY(%s) AND device_id = %s"
                " ORDER BY created_at, id FOR UPDATE",
                (ids, device_id),
            ).fetchall()
            missing = {str(i) for i in ids} - {str(r["id"]) for r in rows}
            if missing:
                listed = ", ".join(sorted(missing))
                raise NotFound(f"not commands of device {device_id}: {listed}")
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE device_id = %s AND status = 'dead'"
                " ORDER BY created_at, id FOR UPDATE",
                (device_id,),
            ).fetchall()
        for r in rows:
            lifecycle.on_requeue(r["status"])
        for r in rows:
            conn.execute(
                "UPDATE commands SET status = 'queued', attempt = 0, leased_until = NULL,"
                " requeues = requeues + 1, expires_at = now() + ttl_seconds * interval '1 second',"
                " updated_at = now() WHERE id = %s",
                (r["id"],),
            )
            detail = {"requeued": r["requeues"] + 1, "by": by}
            conn.execute(_EVENT, (r["id"], r["device_id"], lifecycle.QUEUED, 0, _json(detail)))
        if rows:
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(device_id)))
    return [dict(r) for r in rows]


# ----- the API -----
async def claim(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    limit: int,
    lease_seconds: float,
    max_attempts: int,
) -> tuple[list[dict[str, Any]], datetime | None]:
    """Claim the device's next commands; returns (claimed rows, oldest first, each with its
    new ``status``: delivered, expired or dead; when to look again: the next running lease's
    end, or about a second from now for a pending command this claim did not take - one a
    concurrent claim of the same device holds locked, or one past ``limit``). None: nothing
    else is pending, the device is idle until something arrives."""
    cur = await conn.execute(
        _CLAIM,
        {"device": device_id, "limit": limit, "lease": lease_seconds, "max": max_attempts},
    )
    rows = await cur.fetchall()
    next_lapse = rows[0]["next_lapse"] if rows else None
    return [dict(r) for r in rows if r["id"] is not None], next_lapse


async def sweep(
    conn: psycopg.AsyncConnection[Any], max_attempts: int, limit: int
) -> tuple[int, int]:
    """Expire and kill what no poll claims; returns (expired, dead). Both statements go in one
    round trip (a pipeline)."""
    async with conn.pipeline():
        expired = await conn.execute(_SWEEP_EXPIRED, {"limit": limit})
        dead = await conn.execute(_SWEEP_DEAD, {"limit": limit, "max": max_attempts})
    return expired.rowcount, dead.rowcount


async def ack(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    outcome: str,
    result: dict[str, Any] | None,
) -> str | None:
    """Record a device's outcome in one statement (:data:`_ACK`); returns the status
    afterwards, or None when the device has no such command.

    Raises:
        ValueError: ``outcome`` is not an ack status.
    """
    if outcome not in lifecycle.ACK_STATUSES:
        raise ValueError(f"not an ack status: {outcome!r}")
    cur = await conn.execute(
        _ACK,
        {
            "id": command_id,
            "device": device_id,
            "outcome": outcome,
            "result": _json(result),
            "detail": _json({"result": result}),
        },
    )
    row = await cur.fetchone()
    return None if row is None else str(row["status"])


async def cancel(
    conn: psycopg.AsyncConnection[Any],
    command_id: uuid.UUID,
    by: str,
    unstored: dict[str, Any] | None,
) -> str | None:
    """Cancel a command; returns ``cancelled``, or None when there is no such command.

    ``unstored`` is the command's descriptor when it was accepted but may still be on its way
    through `commands data`: its row is written here first (the worker's insert then finds it).

    Raises:
        TransitionRefused: the command is already final.
    """
    async with conn.transaction():
        row = await (await conn.execute(_LOCK, (command_id,))).fetchone()
        if row is None and unstored is not None:
            await store_accepted(conn, unstored)
            row = await (await conn.execute(_LOCK, (command_id,))).fetchone()
        if row is None:
            return None
        change = lifecycle.on_cancel(row["status"])
        await conn.execute(
            "UPDATE commands SET status = %s, leased_until = NULL, updated_at = now()"
            " WHERE id = %s",
            (change.status, command_id),
        )
        await conn.execute(
            _EVENT, (command_id, row["device_id"], change.event, row["attempt"], _json({"by": by}))
        )
        return change.status


async def owner_and_pending(
    conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID, owner_id: uuid.UUID | None
) -> dict[str, Any] | None:
    """The device's ``owner_id`` and ``pending``, how many of its commands are not yet final
    (the per-device cap counts these), in one statement (:data:`_OWNER_AND_PENDING`); None
    when there is no such device or ``owner_id`` does not own it (None: any owner, admins)."""
    cur = await conn.execute(_OWNER_AND_PENDING, {"device": device_id, "owner": owner_id})
    row = await cur.fetchone()
    return dict(row) if row else None


async def statuses(
    conn: psycopg.AsyncConnection[Any], command_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The status of each of these commands that has a row (rollouts count them)."""
    if not command_ids:
        return {}
    cur = await conn.execute(
        "SELECT id, status FROM commands WHERE id = ANY(%s::uuid[])", (command_ids,)
    )
    return {r["id"]: r["status"] for r in await cur.fetchall()}


async def get_command(conn: psycopg.AsyncConnection[Any], command_id: uuid.UUID) -> Any:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = %s", (command_id,))
    return await cur.fetchone()


_EVENTS_OF = (
    "SELECT status, attempt, at, detail FROM command_events WHERE command_id = %s"
    " ORDER BY at, stored_at"
)


async def events_of(conn: psycopg.AsyncConnection[Any], command_id: uuid.UUID) -> list[Any]:
    cur = await conn.execute(_EVENTS_OF, (command_id,))
    return list(await cur.fetchall())


async def command_and_events(
    conn: psycopg.AsyncConnection[Any], command_id: uuid.UUID
) -> tuple[Any, list[Any]]:
    """A command's row (None: not stored) and its timeline, in one round trip (a pipeline)."""
    async with conn.pipeline():
        row = await conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = %s", (command_id,))
        events = await conn.execute(_EVENTS_OF, (command_id,))
    return await row.fetchone(), list(await events.fetchall())


async def device_history(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
    statuses: Sequence[str] | None,
) -> list[Any]:
    """A device's commands, newest first; ``before`` is the (created_at, id) cursor."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE device_id = %(d)s"
        " AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))"
        " AND (%(b_at)s::timestamptz IS NULL OR (created_at, id) < (%(b_at)s, %(b_id)s))"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {
            "d": device_id,
            "statuses": list(statuses) if statuses is not None else None,
            "b_at": before[0] if before else None,
            "b_id": before[1] if before else None,
            "limit": limit,
        },
    )
    return list(await cur.fetchall())


# ----- the wake-ups listener (commands/wakeups.py) -----
_PENDING_DEVICES = (
    "SELECT DISTINCT device_id::text AS device FROM commands"
    " WHERE status IN ('queued', 'delivered')"
)


async def pending_devices(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    """The ids of the devices that have commands not yet final (each replica's baseline of
    which devices are not idle, read at every (re)connection of its listener)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_PENDING_DEVICES)
        return {r[0] for r in await cur.fetchall()}
