"""What the API knows about a command between the broker and the log: its descriptor and
whether it reached a final status, kept in Redis and read back from Postgres.

- ``cmd:<id>``: the descriptor (JSON), written when the command is accepted.
- ``cmd:final:<id>``: its first final status (``SET NX``), written on ack and cancel, so a
  replica about to hand a command out can tell it must not.

Redis is only a fast path: every fact here is also an event in the command log, which the
command-log worker writes to Postgres, and each read falls back to Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
import redis

from iot import db
from iot.api import metrics
from iot.api.deps import State
from iot.errors import DatabaseUnavailable, Unavailable
from iot.sql import commands as commands_sql

log = logging.getLogger(__name__)
_REDIS_ERRORS = (redis.RedisError, OSError)
FINAL_TTL_SECONDS = 49 * 3600  # longer than the longest ttl (48 h)
DB_CHECK_TIMEOUT = 1.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _descriptor_key(command_id: str) -> str:
    return f"cmd:{command_id}"


def _final_key(command_id: str) -> str:
    return f"cmd:final:{command_id}"


async def remember(state: State, command: dict[str, Any]) -> None:
    """Store the descriptor (best effort: Postgres gets it from the log)."""
    try:
        await state.redis.set(
            _descriptor_key(command["id"]),
            orjson.dumps(command),
            ex=int(command["ttl"]) + FINAL_TTL_SECONDS,
        )
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()


async def descriptor(state: State, command_id: uuid.UUID) -> dict[str, Any] | None:
    """The command's descriptor from Redis, else Postgres; None when neither knows it.

    Raises:
        Unavailable: Redis does not have it and Postgres cannot be asked.
    """
    try:
        raw = await state.redis.get(_descriptor_key(str(command_id)))
        if raw:
            return orjson.loads(raw)  # type: ignore[no-any-return]
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()
    async with db.connection(state.pool) as conn:
        row = await commands_sql.get_command(conn, command_id)
    return commands_sql.descriptor_from_row(row) if row else None


async def finals(state: State, command_ids: list[str]) -> dict[str, str]:
    """Statuses that forbid handing these commands out again (acked or cancelled); a command
    absent from the answer may be delivered.

    Asks Redis and Postgres; one of them failing is fine, both failing is not.

    Raises:
        Unavailable: neither Redis nor Postgres answered.
    """
    if not command_ids:
        return {}
    found: dict[str, str] = {}
    answered = 0
    try:
        values = await state.redis.mget([_final_key(c) for c in command_ids])
        found.update({c: _text(v) for c, v in zip(command_ids, values, strict=True) if v})
        answered += 1
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()
    try:
        async with asyncio.timeout(DB_CHECK_TIMEOUT):
            async with db.connection(state.pool) as conn:
                rows = await commands_sql.never_again_statuses(
                    conn, [uuid.UUID(c) for c in command_ids]
                )
        for c, status in rows.items():
            found.setdefault(c, status)
        answered += 1
    except (DatabaseUnavailable, TimeoutError):
        pass
    if not answered:
        raise Unavailable("cannot check commands' state (cache and database down); retry later")
    return found


async def mark_final(state: State, command_id: str, status: str) -> str:
    """Record a final status unless one is already there; returns the one that holds."""
    try:
        key = _final_key(command_id)
        if await state.redis.set(key, status, nx=True, ex=FINAL_TTL_SECONDS):
            return status
        current = await state.redis.get(key)
        return _text(current) if current else status
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()
        log.warning("final status of %s not cached; Postgres will have it from the log", command_id)
        return status
