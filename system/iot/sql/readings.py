"""SQL for the ``readings`` table: idempotent batch insert (workers), latest and history (API)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg

# A reading's identity is (device, sensor, ts): a retry of the same reading changes nothing (the
# WHERE of DO UPDATE leaves an equal value alone), a different value for the same key replaces
# the stored one - last write wins, "last" by the time the API received it, so a redelivered
# older message never undoes a correction. Postgres refuses DO UPDATE touching one row twice in
# a statement, so DISTINCT ON keeps the last of equal keys in the statement (by position;
# timestamptz equality also catches one instant written with two offsets). Rows of a device
# deleted while its readings were queued are dropped by the EXISTS clause. One statement for
# the batches of several devices (the API coalesces requests into one message). The batches go
# as one JSON parameter that Postgres takes apart (jsonb_to_recordset): building and sending six
# arrays of one element per reading cost the worker ~20 µs of CPU per reading, JSON ~0.3 µs,
# and Postgres the same either way (docs/decisions.md, "Ingest, third round").
_INSERT = """
INSERT INTO readings AS r (device_id, sensor, ts, value, client_id, received_at)
SELECT DISTINCT ON (b.device_id, u.sensor, u.ts)
       b.device_id, u.sensor, u.ts, u.value, u.id, b.received_at
FROM ROWS FROM (jsonb_to_recordset(%(batches)s::jsonb)
                AS (device_id uuid, received_at timestamptz, readings jsonb))
     WITH ORDINALITY AS b(device_id, received_at, readings, n)
CROSS JOIN LATERAL ROWS FROM (jsonb_to_recordset(b.readings)
                AS (sensor text, ts timestamptz, value float8, id text))
     WITH ORDINALITY AS u(sensor, ts, value, id, m)
WHERE EXISTS (SELECT 1 FROM devices WHERE id = b.device_id)
ORDER BY b.device_id, u.sensor, u.ts, b.n DESC, u.m DESC
ON CONFLICT (device_id, sensor, ts) DO UPDATE
SET value = EXCLUDED.value, client_id = EXCLUDED.client_id, received_at = EXCLUDED.received_at,
    stored_at = now()
WHERE r.value IS DISTINCT FROM EXCLUDED.value AND r.received_at <= EXCLUDED.received_at
"""


def insert_batches(conn: psycopg.Connection[Any], batches: list[dict[str, Any]]) -> int:
    """Store the readings of several batches in one statement; returns how many rows were new
    or changed (a retry of a stored reading counts none).

    Raises:
        psycopg.DataError: a value Postgres refuses (not a uuid, a time or a number).
        psycopg.errors.NotNullViolation: a reading without a sensor, time or value (JSON has
            no NaN or infinity: a value that is not finite arrives as null).
        ValueError: a batch that is not JSON at all.
    """
    try:
        doc = orjson.dumps(
            [
                {
                    "device_id": b["device_id"],
                    "received_at": b["received_at"],
                    "readings": b["readings"],
                }
                for b in batches
            ]
        )
    except TypeError as exc:  # orjson refuses what JSON cannot hold
        raise ValueError(str(exc)) from exc
    cur = conn.execute(_INSERT, {"batches": doc.decode()})
    return cur.rowcount


# The newest reading of each (device, sensor), without reading all of a device's history (a
# month of it is about 260,000 rows per sensor at one reading every 10 s): the recursive part
# skips from one sensor of a device to the next along the key's index (a probe per day
# partition), then each sensor's newest row is one more probe per partition. 30 ms instead of
# 500 ms for 5 devices with 3 weeks of 5-minute readings; the gap grows with the history.
LATEST = """
WITH RECURSIVE series AS (
    SELECT d.id AS device_id,
           (SELECT min(r.sensor) FROM readings r WHERE r.device_id = d.id) AS sensor
    FROM unnest(%(devices)s::uuid[]) AS d(id)
    UNION ALL
    SELECT s.device_id,
           (SELECT min(r.sensor) FROM readings r
            WHERE r.device_id = s.device_id AND r.sensor > s.sensor)
    FROM series s WHERE s.sensor IS NOT NULL
)
SELECT s.device_id, s.sensor, l.value, l.ts FROM series s CROSS JOIN LATERAL (
    SELECT r.value, r.ts FROM readings r
    WHERE r.device_id = s.device_id AND r.sensor = s.sensor ORDER BY r.ts DESC LIMIT 1) l
"""


async def latest(
    conn: psycopg.AsyncConnection[Any], device_ids: list[uuid.UUID]
) -> list[dict[str, Any]]:
    """The newest reading of each sensor of the given devices."""
    if not device_ids:
        return []
    cur = await conn.execute(LATEST, {"devices": device_ids})
    return [dict(r) for r in await cur.fetchall()]


# One sensor's window: the key (device, sensor, ts) finds it in each day partition the window
# touches (the others are pruned), and the key's index carries value, so it is read from the
# index alone once vacuum marked the pages all-visible (docs/scaling.md, "History").
HISTORY = (
    "SELECT date_bin(%(step)s, ts, %(start)s) AS bucket, avg(value) AS avg,"
    " min(value) AS min, max(value) AS max, count(*) AS count FROM readings"
    " WHERE device_id = %(device)s AND sensor = %(sensor)s"
    " AND ts >= %(start)s AND ts < %(end)s GROUP BY bucket ORDER BY bucket"
)


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
        HISTORY,
        {"step": step, "start": start, "end": end, "device": device_id, "sensor": sensor},
    )
    return [dict(r) for r in await cur.fetchall()]


async def count_for_device(conn: psycopg.AsyncConnection[Any], device_id: uuid.UUID) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM readings WHERE device_id = %s", (device_id,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
