"""Who may see which device, answerable even while Postgres is down.

Ownership is mirrored in the Redis hash ``device-owners`` (device id -> owner id) whenever
Postgres answers, so reads of a known device keep working through a database outage.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import redis

from iot import cache, db
from iot.api import metrics
from iot.api.deps import Principal, State
from iot.commands import store as commands_sql
from iot.errors import DatabaseUnavailable, NotFound
from iot.sql import devices as devices_sql

_REDIS_ERRORS = (redis.RedisError, OSError)


async def remember_owner(state: State, device_id: uuid.UUID, owner_id: uuid.UUID) -> None:
    try:
        await state.redis.hset(cache.OWNERS_KEY, str(device_id), str(owner_id))
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()


async def forget_owner(state: State, device_id: uuid.UUID) -> None:
    try:
        await state.redis.hdel(cache.OWNERS_KEY, str(device_id))
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()


async def _owner_from_cache(state: State, device_id: uuid.UUID) -> uuid.UUID | None:
    try:
        raw = await state.redis.hget(cache.OWNERS_KEY, str(device_id))
    except _REDIS_ERRORS:
        metrics.CACHE_ERRORS.inc()
        return None
    return uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw) if raw else None


async def visible_page(
    state: State, who: Principal, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """A page of the devices the caller may read: at most ``limit`` ids greater than ``after``
    (None: from the first), ascending. A device sees only itself, a person their own devices,
    an admin every device.

    Raises:
        DatabaseUnavailable: Postgres is down (a person's page needs it).
    """
    if who.kind == "device":
        assert who.device_id is not None
        return [who.device_id] if after is None or who.device_id > after else []
    async with db.connection(state.pool) as conn:
        return await devices_sql.device_ids_page(conn, who.owner_filter, after, limit)


async def _visible_row(
    state: State,
    who: Principal,
    device_id: uuid.UUID,
    ask: Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, Any] | None]],
) -> dict[str, Any] | None:
    """The row ``ask`` reads of a device (with its ``owner_id``; None: unknown, or not the
    caller's), with the owner mirrored into Redis. None while Postgres is down and the mirror
    shows the device to the caller (an admin: any device it knows; a person: their own).

    Raises:
        NotFound: the device is unknown or not the caller's.
        DatabaseUnavailable: Postgres is down and the mirror does not show the device to the
            caller.
    """
    try:
        async with db.connection(state.pool) as conn:
            row = await ask(conn)
    except DatabaseUnavailable:
        owner = await _owner_from_cache(state, device_id)
        if owner is None or not (who.is_admin or owner == who.user_id):
            raise
        return None
    if row is None:
        raise NotFound("no such device")
    await remember_owner(state, device_id, row["owner_id"])
    return row


async def visible_devices(state: State, who: Principal, device_id: uuid.UUID) -> list[uuid.UUID]:
    """``[device_id]`` when the caller may read that device.

    Raises:
        NotFound: the device is unknown or not the caller's.
        DatabaseUnavailable: Postgres is needed to answer and is down.
    """
    if who.kind == "device":
        if device_id != who.device_id:
            raise NotFound("no such device")
        return [device_id]
    await _visible_row(
        state,
        who,
        device_id,
        lambda conn: devices_sql.get_device(conn, device_id, who.owner_filter),
    )
    return [device_id]


async def visible_device_pending(state: State, who: Principal, device_id: uuid.UUID) -> int | None:
    """How many of the device's commands are not yet final, when a person may send it
    commands (an admin any device, a person their own): the check of :func:`visible_devices`
    and the count of the per-device cap in one statement
    (:func:`iot.commands.store.owner_and_pending`). None while Postgres is down and the owner
    mirror shows the device to the caller: the cap cannot be counted then, and commands are
    still accepted.

    Raises:
        NotFound: the device is unknown or not the caller's.
        DatabaseUnavailable: Postgres is down and the owner mirror does not show the device to
            the caller.
    """
    assert who.kind == "user", "devices do not send commands"
    row = await _visible_row(
        state,
        who,
        device_id,
        lambda conn: commands_sql.owner_and_pending(conn, device_id, who.owner_filter),
    )
    return None if row is None else int(row["pending"])
