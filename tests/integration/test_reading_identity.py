"""A reading's identity is (device, sensor, ts): a retry is harmless, a different value for the
same key replaces the stored one (last write wins), and a reading without ``ts`` is stored with
the time the API received it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from iot.sql import readings as readings_sql

from .conftest import Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


def stored(pg: psycopg.Connection, device_id: uuid.UUID) -> list[tuple[str, datetime, float]]:
    return pg.execute(
        "SELECT sensor, ts, value FROM readings WHERE device_id = %s ORDER BY sensor, ts",
        (device_id,),
    ).fetchall()


def test_a_reading_without_ts_is_stored_with_the_receive_time(alice: Person, pg) -> None:
    box = alice.new_device()
    before = datetime.now(UTC)
    # The first request takes the full route (token not cached yet), the second the shortcut.
    assert box.post([{"sensor": "a", "value": 1.0}]).status_code == 201
    assert box.post([{"sensor": "b", "value": 2.0}]).status_code == 201
    after = datetime.now(UTC)
    rows = eventually(lambda: len(r := stored(pg, box.id)) == 2 and r, what="both readings")
    assert [(s, v) for s, _, v in rows] == [("a", 1.0), ("b", 2.0)]
    # The API's clock stamps them: within the requests' window (one host, one clock).
    assert all(before <= ts <= after for _, ts, _ in rows)


def test_same_key_different_value_last_write_wins_and_a_retry_is_harmless(
    alice: Person, pg
) -> None:
    box = alice.new_device()
    first = reading(value=20.0)
    assert box.post([first]).status_code == 201
    eventually(lambda: stored(pg, box.id), what="the first reading")
    assert box.post([first]).status_code == 201  # a retry
    assert box.post([{**first, "value": 25.0}]).status_code == 201  # a correction
    eventually(lambda: [v for _, _, v in stored(pg, box.id)] == [25.0], what="the corrected value")
    assert rows_for(pg, box.id) == 1

    def cached_value() -> float | None:
        r = alice.api.get("/sensors", params={"device_id": str(box.id)}, headers=alice.headers)
        body = r.json()
        return body["readings"][0]["value"] if body["source"] == "cache" else None

    assert eventually(lambda: cached_value() == 25.0 and 25.0, what="latest from the cache")


def test_equal_keys_in_one_request_keep_the_last(alice: Person, pg) -> None:
    box = alice.new_device()
    ts = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    same_instant_other_offset = ts.astimezone(timezone(timedelta(hours=2)))
    body = [
        {"sensor": "t", "value": 1.0, "ts": ts.isoformat()},
        {"sensor": "t", "value": 2.0, "ts": same_instant_other_offset.isoformat()},
        {"sensor": "t", "value": 3.0, "ts": ts.isoformat().replace("+00:00", "Z")},
        {"sensor": "u", "value": 4.0, "ts": ts.isoformat()},
    ]
    assert box.post(body).status_code == 201
    rows = eventually(lambda: len(r := stored(pg, box.id)) == 2 and r, what="two rows")
    assert [(s, v) for s, _, v in rows] == [("t", 3.0), ("u", 4.0)]


def test_the_batch_insert_keeps_the_last_of_equal_keys_across_batches(
    alice: Person, pg, settings
) -> None:
    box = alice.new_device()
    ts = "2026-01-01T00:00:00+00:00"
    earlier, later = "2026-01-01T00:00:01+00:00", "2026-01-01T00:00:02+00:00"

    def batch(value: float, received: str) -> dict:
        return {
            "device_id": str(box.id),
            "received_at": received,
            "readings": [{"sensor": "t", "value": value, "ts": ts, "id": None}],
        }

    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        assert readings_sql.insert_batches(conn, [batch(1.0, earlier), batch(2.0, later)]) == 1
        assert stored(pg, box.id)[0][2] == 2.0
        # A redelivered older message does not undo what was received after it.
        assert readings_sql.insert_batches(conn, [batch(1.0, earlier)]) == 0
        # The same value again changes nothing.
        assert readings_sql.insert_batches(conn, [batch(2.0, later)]) == 0
        assert stored(pg, box.id)[0][2] == 2.0


@pytest.mark.parametrize(
    "bad",
    [
        {"sensor": "t", "value": float("nan"), "ts": "2026-01-01T00:00:00+00:00"},  # not finite
        {"sensor": "t", "ts": "2026-01-01T00:00:00+00:00"},  # no value
        {"sensor": "t", "value": 1.0, "ts": "not a time"},
        {"sensor": "t", "value": "warm", "ts": "2026-01-01T00:00:00+00:00"},
    ],
)
def test_the_batch_insert_refuses_a_reading_postgres_cannot_store_and_stores_nothing(
    alice: Person, pg, settings, bad: dict
) -> None:
    # The API refuses all of these; should one reach the worker, its insert raises one of the
    # errors the worker treats as refused data (the other batches are then stored one by one).
    from iot.workers.sensors import REFUSED

    box = alice.new_device()
    batch = {
        "device_id": str(box.id),
        "received_at": "2026-01-01T00:00:01+00:00",
        "readings": [{"sensor": "ok", "value": 1.0, "ts": "2026-01-01T00:00:00+00:00"}, bad],
    }
    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        with pytest.raises(REFUSED):
            readings_sql.insert_batches(conn, [batch])
    assert stored(pg, box.id) == []
