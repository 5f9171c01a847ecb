"""Sensor readings: devices POST them, people (and the device itself) read them back."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from iot import cache, db
from iot.api import metrics
from iot.api.access import visible_devices
from iot.api.deps import AppState, CurrentDevice, CurrentPrincipal
from iot.api.schemas import (
    EVERY_ROUTE,
    History,
    HistoryPoint,
    LatestReading,
    LatestReadings,
    ReadingsAccepted,
    ReadingsIn,
    SensorName,
    problems,
)
from iot.errors import CacheUnavailable, InvalidInput
from iot.sql import readings as readings_sql

router = APIRouter(tags=["sensors"], responses=EVERY_ROUTE | problems(401, 422))
log = logging.getLogger(__name__)


@router.post(
    "/sensors", status_code=201, response_model=ReadingsAccepted, responses=problems(400, 403, 413)
)
async def post_readings(
    body: ReadingsIn, device: CurrentDevice, state: AppState
) -> ReadingsAccepted:
    """Accept 1 to 1000 readings. 201 only after RabbitMQ confirmed them; 503 means retry."""
    assert device.device_id is not None
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
        for d, sensors in latest.items()
        for s, v in sorted(sensors.items())
    ]


@router.get("/sensors", response_model=LatestReadings, responses=problems(404))
async def latest_readings(
    who: CurrentPrincipal,
    state: AppState,
    device_id: uuid.UUID | None = None,
) -> LatestReadings:
    """The latest value of each sensor: from Redis, or from Postgres when Redis is down or cold."""
    ids = await visible_devices(state, who, device_id)
    try:
        cached = await cache.aget_latest(state.redis, ids)
    except CacheUnavailable:
        metrics.CACHE_ERRORS.inc()
        cached = None
    if cached is not None and len(cached) == len(ids):
        metrics.SENSOR_READS.labels("cache").inc()
        return LatestReadings(source="cache", readings=_flatten(cached))

    missing = ids if cached is None else [d for d in ids if d not in cached]
    async with db.connection(state.pool) as conn:
        rows = await readings_sql.latest(conn, missing)
    from_db: dict[uuid.UUID, dict[str, dict]] = {}
    for r in rows:
        from_db.setdefault(r["device_id"], {})[r["sensor"]] = {"value": r["value"], "ts": r["ts"]}
    if cached is not None:  # Redis is up but cold for these devices: warm it
        for d, sensors in from_db.items():
            readings = [{"sensor": s, **v} for s, v in sensors.items()]
            try:
                await cache.astore_latest(state.redis, d, readings)
            except CacheUnavailable:
                metrics.CACHE_ERRORS.inc()
                break
    metrics.SENSOR_READS.labels("database").inc()
    return LatestReadings(source="database", readings=_flatten({**(cached or {}), **from_db}))


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
