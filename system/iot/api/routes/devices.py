"""Devices, registered by their owner. A person sees only their own devices (admins all).

A device's ``last_seen`` is when the sensors worker last stored its readings (Redis hash
``device-last-seen``, written in the worker's one pipeline); it is ``online`` when that was within
``ONLINE_WINDOW``. Polls for commands do not count: they are the hot path and write nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Response

from iot import cache, db, security
from iot.api.access import forget_owner, remember_owner
from iot.api.deps import AppState, CurrentUser, State
from iot.api.schemas import (
    EVERY_ROUTE,
    PAGE_DEFAULT,
    PAGE_MAX,
    Device,
    DeviceCreate,
    DeviceList,
    DeviceUpdate,
    DeviceWithToken,
    Problem,
    problems,
)
from iot.errors import CacheUnavailable, NotFound
from iot.sql import devices as devices_sql

router = APIRouter(tags=["devices"], responses=EVERY_ROUTE | problems(401, 403, 422))
log = logging.getLogger(__name__)
ONLINE_WINDOW = timedelta(seconds=120)
MAX_OFFSET = 2**31 - 1  # within Postgres' bigint with room to spare; beyond: 422, not 500


async def _with_presence(state: State, rows: list[dict[str, Any]]) -> list[Device]:
    """Devices with ``last_seen`` and ``online``; both null when Redis does not answer."""
    try:
        seen = await cache.aget_last_seen(state.redis, [r["id"] for r in rows])
    except CacheUnavailable:
        return [Device(**r) for r in rows]
    now = datetime.now(UTC)
    return [
        Device(
            **r,
            last_seen=seen.get(r["id"]),
            online=r["id"] in seen and now - seen[r["id"]] <= ONLINE_WINDOW,
        )
        for r in rows
    ]


_OVER_LIMIT: dict[int | str, dict[str, Any]] = {
    403: {
        "model": Problem,
        "description": "the wrong kind of caller (a device), or the person's device limit is "
        "reached",
    }
}


@router.post(
    "/devices",
    status_code=201,
    response_model=DeviceWithToken,
    responses=problems(400, 413) | _OVER_LIMIT,
)
async def create_device(body: DeviceCreate, user: CurrentUser, state: AppState) -> DeviceWithToken:
    """Register a device; its token is shown this once. A person may own at most their device
    limit (``IOT_MAX_DEVICES_PER_USER``, or their own set by `iotctl users set`); beyond it the
    answer is 403. Admins have no limit."""
    token = security.new_device_token()
    async with db.connection(state.pool) as conn:
        row = await devices_sql.create_device(
            conn,
            user.user_id,
            body.name,
            security.hash_device_token(token),
            state.settings.max_devices_per_user,
            body.labels,
        )
    await remember_owner(state, row["id"], user.user_id)
    return DeviceWithToken(id=row["id"], name=row["name"], token=token)


@router.get("/devices", response_model=DeviceList)
async def list_devices(
    user: CurrentUser,
    state: AppState,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DeviceList:
    async with db.connection(state.pool) as conn:
        rows = await devices_sql.list_devices(conn, user.owner_filter, limit, offset)
    return DeviceList(devices=await _with_presence(state, rows), limit=limit, offset=offset)


@router.get("/devices/{device_id}", response_model=Device, responses=problems(404))
async def get_device(device_id: uuid.UUID, user: CurrentUser, state: AppState) -> Device:
    async with db.connection(state.pool) as conn:
        row = await devices_sql.get_device(conn, device_id, user.owner_filter)
    if row is None:
        raise NotFound("no such device")
    (device,) = await _with_presence(state, [row])
    return device


@router.patch("/devices/{device_id}", response_model=Device, responses=problems(400, 404, 413))
async def update_device(
    device_id: uuid.UUID, body: DeviceUpdate, user: CurrentUser, state: AppState
) -> Device:
    """Set the device's labels (all of them: the labels given replace the old ones). Rollouts
    select devices by label; a rollout already created keeps its targets."""
    async with db.connection(state.pool) as conn:
        row = await devices_sql.set_labels(conn, device_id, user.owner_filter, body.labels)
    if row is None:
        raise NotFound("no such device")
    return (await _with_presence(state, [row]))[0]


@router.post("/devices/{device_id}/token", response_model=DeviceWithToken, responses=problems(404))
async def rotate_token(device_id: uuid.UUID, user: CurrentUser, state: AppState) -> DeviceWithToken:
    """Issue a new token; the old one stops working at once on every replica."""
    token = security.new_device_token()
    async with db.connection(state.pool) as conn:
        row = await devices_sql.rotate_token(
            conn, device_id, user.owner_filter, security.hash_device_token(token)
        )
    if row is None:
        raise NotFound("no such device")
    state.device_cache.clear()
    return DeviceWithToken(id=row["id"], name=row["name"], token=token)


@router.delete("/devices/{device_id}", status_code=204, responses=problems(404))
async def delete_device(device_id: uuid.UUID, user: CurrentUser, state: AppState) -> Response:
    async with db.connection(state.pool) as conn:
        deleted = await devices_sql.delete_device(conn, device_id, user.owner_filter)
    if not deleted:
        raise NotFound("no such device")
    state.device_cache.clear()
    await forget_owner(state, device_id)
    try:
        await state.redis.delete(cache.key(device_id))
        await state.redis.hdel(cache.SEEN_KEY, str(device_id))
    except (redis.RedisError, OSError):
        pass  # derived data of a device that no longer exists: nothing reads it
    return Response(status_code=204)
