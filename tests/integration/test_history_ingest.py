"""Readings of any accepted ts land in the partitioned table ("2xx means durable"), or are
refused with 422 before any answer of 201; the history route reads across partitions.

Through nginx, on both ingest paths: a device's first POST takes the full route (its token is
not cached yet), its later ones the shortcut.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from iot import maintenance

from .conftest import Device, Person, eventually

pytestmark = pytest.mark.integration

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # the oldest ts the API takes
MAX_AHEAD = timedelta(days=1)  # the furthest ahead of its clock


def midnight(days: int = 0) -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=days)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def stored(
    pg: psycopg.Connection, device: Device, sensor: str
) -> list[tuple[datetime, float, str]]:
    return pg.execute(
        "SELECT ts, value, tableoid::regclass::text FROM readings"
        " WHERE device_id = %s AND sensor = %s ORDER BY ts",
        (device.id, sensor),
    ).fetchall()


def devices(person: Person) -> tuple[Device, Device]:
    """A device whose next POST takes the full route, and one whose next takes the shortcut."""
    cold, warm = person.new_device(), person.new_device()
    assert warm.post([{"sensor": "warmup", "value": 0}]).status_code == 201
    return cold, warm


@pytest.mark.parametrize(
    "name, ts",
    [
        ("earliest", lambda: EARLIEST),
        ("furthest-ahead", lambda: datetime.now(UTC) + MAX_AHEAD - timedelta(minutes=5)),
        ("midnight", lambda: midnight()),
        ("just-before-midnight", lambda: midnight() - timedelta(microseconds=1)),
        ("next-midnight", lambda: midnight(1)),
    ],
)
def test_an_accepted_reading_lands_whatever_its_ts(alice: Person, pg, name, ts) -> None:
    when = ts()
    for device in devices(alice):
        r = device.post([{"sensor": name, "value": 7.5, "ts": iso(when)}])
        assert r.status_code == 201, r.text
        rows = eventually(lambda d=device: stored(pg, d, name), what=f"the {name} reading")
        assert [(ts, value) for ts, value, _ in rows] == [(when, 7.5)]
        # In its day's partition when there is one (made ahead), else in the default one.
        day = when.date()
        table = rows[0][2]
        expected = maintenance.partitions(pg).get(day, maintenance.DEFAULT_PARTITION)
        assert table == expected, (day, table)


@pytest.mark.parametrize(
    "ts",
    [
        lambda: EARLIEST - timedelta(seconds=1),
        lambda: datetime.now(UTC) + MAX_AHEAD + timedelta(minutes=5),
        lambda: datetime(1970, 1, 1, tzinfo=UTC),
        lambda: datetime(2999, 1, 1, tzinfo=UTC),
    ],
)
def test_a_reading_outside_the_range_is_refused_before_201(alice: Person, pg, ts) -> None:
    for device in devices(alice):
        good = {"sensor": "ok", "value": 1, "ts": iso(datetime.now(UTC))}
        r = device.post([good, {"sensor": "bad", "value": 1, "ts": iso(ts())}])
        assert r.status_code == 422, r.text
        assert "ts" in r.text
        # Nothing of a refused request is stored (the good reading neither): a later reading
        # of the same device lands alone.
        assert device.post([{"sensor": "after", "value": 2}]).status_code == 201
        eventually(lambda d=device: stored(pg, d, "after"), what="the reading after")
        assert stored(pg, device, "ok") == stored(pg, device, "bad") == []


def history(
    api: httpx.Client, person: Person, device: Device, start: datetime, end: datetime, step: str
) -> list[dict]:
    r = api.get(
        "/sensors/history",
        params={
            "device_id": str(device.id),
            "sensor": "t",
            "from": iso(start),
            "to": iso(end),
            "step": step,
        },
        headers=person.headers,
    )
    assert r.status_code == 200, r.text
    return r.json()["points"]


@pytest.mark.parametrize("days", [0, -1])
def test_history_pages_across_a_partition_boundary(api, alice: Person, pg, days) -> None:
    """Readings every 10 s around a midnight (today's: two partitions; yesterday's: yesterday's
    partition and the day before, a partition or the default one): one window over both days
    and two pages split at midnight give the same readings, each once."""
    m = midnight(days)
    device = alice.new_device()
    times = [m + timedelta(seconds=s) for s in range(-50, 60, 10)]
    body = [{"sensor": "t", "value": i, "ts": iso(t)} for i, t in enumerate(times)]
    assert device.post(body).status_code == 201
    eventually(lambda: len(stored(pg, device, "t")) == len(times), what="the readings")
    tables = {table for _, _, table in stored(pg, device, "t")}
    assert len(tables) == 2, tables  # the boundary really splits them

    whole = history(api, alice, device, m - timedelta(minutes=1), m + timedelta(minutes=1), "10s")
    assert [(datetime.fromisoformat(p["ts"]), p["avg"], p["count"]) for p in whole] == [
        (t, float(i), 1) for i, t in enumerate(times)
    ]
    before = history(api, alice, device, m - timedelta(minutes=1), m, "10s")
    after = history(api, alice, device, m, m + timedelta(minutes=1), "10s")
    assert before + after == whole
    assert [
        p["count"]
        for p in history(
            api, alice, device, m - timedelta(minutes=1), m + timedelta(minutes=1), "60s"
        )
    ] == [5, 6]
