"""SQL for the ``readings`` table: idempotent batch insert (workers), latest and history (API)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg

# Rows of a device deleted while its readings were queued are dropped by the EXISTS clause;
# ON CONFLICT makes a redelivered batch (or a reading sent twice) a no-op.
_INSERT = """
INSERT INTO readings (device_id, sensor, ts, value, client_id, received_at)
SELECT %(device_id)s, u.sensor, u.ts, u.value, u.client_id, %(received_at)s
FROM unnest(%(sensors)s::text[], %(ts)s::timestamptz[], %(values)s::float8[],
            %(ids)s::text[]) AS u(sensor, ts, value, client_id)
WHERE EXISTS (SELECT 1 FROM devices WHERE id = %(device_id)s)
ON CONFLICT (device_id, sensor, ts) DO NOTHING
"""


def insert_batch(conn: psycopg.Connection[Any], batch: dict[str, Any]) -> int:
    """Store one batch of readings; returns how many rows were new."""
    readings = batch["readings"]
    cur = conn.execute(
        _INSERT,
        {
            "device_id": uuid.UUID(batch["device_id"]),
            "received_at": batch["received_at"],
            "sensors": [r["sensor"] for r in readings],
            "ts": [r["ts"] for r in readings],
            "values": [r["value"] for r in readings],
            "ids": [r.get("id") for r in readings],
        },
    )
    return cur.rowcount


async def latest(
    conn: psycopg.AsyncConnection[Any], device_ids: list[uuid.UUID]
) -> list[dict[str, Any]]:
    """The newest reading of each sensor of the given devices."""
    if not device_ids:
        return []
    cur = await conn.execute(
        "SELECT DISTINCT ON (device_id, sensor) device_id, sensor, value, ts FROM readings"
        " WHERE device_id = ANY(%s) ORDER BY device_id, sensor, ts DESC",
        (device_ids,),
    )
    return [dict(r) for r in await cur.fetchall()]


async def history(
    conn: psycopg.AsyncConnection[Any],
    device_id: uuid.UUID,
    sensor: str,
    start: datetime,
    end: datetime,
    step: timedelta,
) -> list[dict[str, Any]]:
    """Readings of one sensor in [start, end), aggregated in buckets of ``step``."""
    cur = await conn.execute(
        "SELECT date_bin(%(step)s, ts, %(start)s) AS bucket, avg(value) AS avg,"
        " min(value) AS min, max(value) AS max, count(*) AS count FROM readings"
        " WHERE device_id = %(device)s AND sensor = %(sensor)s"
        " AND ts >= %(start)s AND ts < %(end)s GROUP BY bucket ORDER BY bucket",
        {"step": step, "start": start, "end": end, "device": device_id, "sensor": sensor},
    )
    return [dict(r) for r in await cur.fetchall()]


async def count_for_device(conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM readings WHERE device_id = %s", (device_id,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
