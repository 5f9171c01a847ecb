"""Sensor readings: devices POST them, people (and the device itself) read them back."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from iot import cache, db
from iot.api import metrics
from iot.api.access import visible_devices, visible_page
from iot.api.deps import AppState, CurrentDevice, CurrentPrincipal, State
from iot.api.schemas import (
    EVERY_ROUTE,
    PAGE_DEFAULT,
    PAGE_MAX,
    History,
    HistoryPoint,
    LatestReading,
    LatestReadings,
    Problem,
    ReadingsAccepted,
    ReadingsIn,
    SensorName,
    problems,
)
from iot.errors import CacheUnavailable, InvalidInput
from iot.sql import readings as readings_sql

router = APIRouter(tags=["sensors"], responses=EVERY_ROUTE | problems(401, 422))
log = logging.getLogger(__name__)


_TOO_MANY_SENSORS: dict[int | str, dict[str, Any]] = {
    422: {
        "model": Problem,
        "description": "input refused: out of range, malformed, or unknown fields; or a new "
        "sensor name beyond the device's cap (IOT_MAX_SENSORS_PER_DEVICE, default 64): the "
        "request is refused whole",
    }
}


@router.post(
    "/sensors",
    status_code=201,
    response_model=ReadingsAccepted,
    responses=problems(400, 403, 413) | _TOO_MANY_SENSORS,
)
async def post_readings(
    body: ReadingsIn, device: CurrentDevice, state: AppState
) -> ReadingsAccepted:
    """Accept 1 to 1000 readings. 201 only after RabbitMQ confirmed them; 503 means retry.

    A device may have at most ``IOT_MAX_SENSORS_PER_DEVICE`` (default 64) distinct sensor
    names: a request that brings a new name beyond that is answered 422 naming the cap, and
    nothing of it is accepted; readings of the device's existing sensors still are."""
    assert device.device_id is not None
    if state.sensor_names is not None:
        await state.sensor_names.admit(str(device.device_id), {r.sensor for r in body.readings})
    batch = {
        "device_id": str(device.device_id),
        "received_at": datetime.now(UTC).isoformat(),
        "readings": [
            {"sensor": r.sensor, "value": r.value, "ts": r.ts.isoformat(), "id": r.id}
            for r in body.readings
        ],
    }
    assert state.ingest is not None
    await state.ingest.submit(batch)
    metrics.READINGS_ACCEPTED.inc(len(body.readings))
    return ReadingsAccepted(accepted=len(body.readings))


def _flatten(latest: dict[uuid.UUID, dict[str, dict]]) -> list[LatestReading]:
    return [
        LatestReading(device_id=d, sensor=s, value=v["value"], ts=v["ts"])
        for d, sensors in sorted(latest.items())
        for s, v in sorted(sensors.items())
    ]


def parse_after(after: str) -> uuid.UUID:
    """The device id a ``next`` cursor names. Raises InvalidInput for anything else."""
    try:
        return uuid.UUID(after)
    except ValueError as exc:
        raise InvalidInput("after: not a cursor from a previous page") from exc


@router.get("/sensors", response_model=LatestReadings, responses=problems(404))
async def latest_readings(
    who: CurrentPrincipal,
    state: AppState,
    device_id: uuid.UUID | None = None,
    limit: Annotated[
        int, Query(ge=1, le=PAGE_MAX, description="devices per page (ignored with device_id)")
    ] = PAGE_DEFAULT,
    after: Annotated[
        str | None, Query(max_length=64, description="cursor: `next` of the previous page")
    ] = None,
) -> LatestReadings:
    """The latest value of each sensor of one device (``device_id``), or of a page of the
    caller's devices: at most ``limit`` devices (default 100, at most 1000) by id, each with
    all its sensors; ``next`` is the cursor of the following page (null on the last). A
    device sees only itself, a person their own devices, an admin every device.

    The values come from Redis (the page's devices in one round trip); devices Redis does not
    hold (cold, or Redis down) are read from Postgres, only those of the page, and Redis is
    warmed with them: ``source`` is then ``database``."""
    if device_id is not None:
        ids = await visible_devices(state, who, device_id)
        nxt = None
    else:
        ids = await visible_page(state, who, parse_after(after) if after else None, limit)
        nxt = str(ids[-1]) if len(ids) == limit else None
    latest, source = await _latest_of(state, ids)
    return LatestReadings(
        source=source, readings=_flatten(latest), devices=ids, limit=limit, next=nxt
    )


async def _latest_of(
    state: State, ids: list[uuid.UUID]
) -> tuple[dict[uuid.UUID, dict[str, dict]], Literal["cache", "database"]]:
    """The latest readings of these devices (a page at most) and where they came from: Redis
    in one pipelined round trip; devices it lacks from Postgres in one query, then copied
    back into Redis in one call. A device without any reading is absent.

    Raises:
        DatabaseUnavailable: some devices are not in Redis and Postgres is down.
    """
    try:
        cached = await cache.aget_latest(state.redis, ids) if ids else {}
    except CacheUnavailable:
        metrics.CACHE_ERRORS.inc()
        cached = None
    if cached is not None and len(cached) == len(ids):
        metrics.SENSOR_READS.labels("cache").inc()
        return cached, "cache"

    missing = ids if cached is None else [d for d in ids if d not in cached]
    async with db.connection(state.pool) as conn:
        rows = await readings_sql.latest(conn, missing)
    from_db: dict[uuid.UUID, dict[str, dict]] = {}
    for r in rows:
        from_db.setdefault(r["device_id"], {})[r["sensor"]] = {"value": r["value"], "ts": r["ts"]}
    if cached is not None and from_db:  # Redis is up but cold for these devices: warm it
        batches = [
            (d, [{"sensor": s, **v} for s, v in sensors.items()]) for d, sensors in from_db.items()
        ]
        try:
            await cache.astore_latest_many(state.redis, batches)
        except CacheUnavailable:
            metrics.CACHE_ERRORS.inc()
    metrics.SENSOR_READS.labels("database").inc()
    return {**(cached or {}), **from_db}, "database"


_STEP = re.compile(r"^(\d{1,9})(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_STEP = timedelta(days=366)
# Bounds of ``from`` and ``to``: far outside any reading, and far from datetime's own limits,
# so the arithmetic on them cannot overflow (an answer of 422, never 500).
FIRST, LAST = datetime(1970, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)


def parse_step(step: str) -> timedelta:
    """'60', '30s', '5m', '1h', '1d' -> timedelta, at most MAX_STEP. Raises InvalidInput."""
    match = _STEP.match(step)
    if not match or int(match.group(1)) == 0:
        raise InvalidInput("step must be a positive number of seconds or like 30s, 5m, 1h, 1d")
    width = int(match.group(1)) * _UNITS[match.group(2)]
    if width > MAX_STEP.total_seconds():
        raise InvalidInput(f"step must be at most {MAX_STEP.days} days")
    return timedelta(seconds=width)


def _bounded(at: datetime | None, name: str) -> datetime | None:
    if at is None:
        return None
    if at.tzinfo is None:
        raise InvalidInput("from and to need a time zone (RFC 3339)")
    if not FIRST <= at < LAST:
        raise InvalidInput(f"{name} must be after {FIRST.year} and before {LAST.year}")
    return at


@router.get(
    "/sensors/history",
    response_model=History,
    response_model_by_alias=True,
    responses=problems(404),
)
async def sensor_history(
    who: CurrentPrincipal,
    state: AppState,
    device_id: uuid.UUID,
    sensor: SensorName,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    step: Annotated[str, Query(max_length=16)] = "60s",
) -> History:
    """One sensor's readings between ``from`` and ``to`` (default: the last hour), aggregated
    in Postgres into buckets of ``step`` (avg, min, max, count per bucket)."""
    end = _bounded(end, "to") or datetime.now(UTC)
    start = _bounded(start, "from") or end - timedelta(hours=1)
    if start >= end:
        raise InvalidInput("from must be before to")
    width = parse_step(step)
    limit = state.settings.history_max_points
    if (end - start) / width > limit:
        raise InvalidInput(f"too many points: (to - from) / step must be at most {limit}")
    (device,) = await visible_devices(state, who, device_id)
    async with db.connection(state.pool) as conn:
        rows = await readings_sql.history(conn, device, sensor, start, end, width)
    return History(
        device_id=device,
        sensor=sensor,
        start=start,
        end=end,
        step_seconds=width.total_seconds(),
        points=[
            HistoryPoint(ts=r["bucket"], **{k: r[k] for k in ("avg", "min", "max", "count")})
            for r in rows
        ],
    )
