"""History that ages: day partitions made ahead, rows of the default partition moved to their
day, whole partitions dropped past the retention, finished commands deleted after theirs.

The maintenance function runs on scratch databases built by the product's migrations (its
clock and retention passed in), never on the stack's database, where it would drop others'
data; one test checks that the running stack's own job has made the partitions ahead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest

from iot import maintenance
from iot.commands import cleanup as commands_cleanup
from iot.settings import Settings
from iot.sql import readings as readings_sql
from loadtest.historybench import scratch_database

from .conftest import eventually

pytestmark = pytest.mark.integration

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection]:
    with (
        scratch_database(settings, "iot_test_history") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        yield conn


def day(offset: int) -> date:
    return TODAY + timedelta(days=offset)


def at(offset_days: int, hour: int = 12) -> datetime:
    d = day(offset_days)
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def put(
    conn: psycopg.Connection, ts: datetime, value: float = 1.0, stored: datetime | None = None
) -> uuid.UUID:
    device = uuid.uuid4()
    conn.execute(
        "INSERT INTO readings (device_id, sensor, ts, value, received_at, stored_at)"
        " VALUES (%s, 't', %s, %s, %s, %s)",
        (device, ts, value, ts, stored or NOW),
    )
    return device


def where(conn: psycopg.Connection, device: uuid.UUID) -> list[tuple[str, float]]:
    """(table, value) of the device's rows."""
    return conn.execute(
        "SELECT tableoid::regclass::text, value FROM readings WHERE device_id = %s", (device,)
    ).fetchall()


def maintain(conn: psycopg.Connection, **kw: object) -> maintenance.Report:
    kw.setdefault("retention_days", 30)
    kw.setdefault("commands_retention_days", 0)
    return maintenance.maintain(conn, now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def test_partitions_are_made_ahead_and_the_day_after_them_goes_to_the_default(db) -> None:
    report = maintain(db)
    expected = [maintenance.partition_name(day(d)) for d in range(-1, maintenance.AHEAD_DAYS + 1)]
    assert report.created == expected
    assert sorted(maintenance.partitions(db).values()) == expected
    last = at(maintenance.AHEAD_DAYS + 1, 0)  # midnight after the last partition made ahead
    inside = put(db, last - timedelta(microseconds=1))
    beyond = put(db, last)
    assert where(db, inside) == [(expected[-1], 1.0)]
    assert where(db, beyond) == [("readings_default", 1.0)]
    # The next round makes nothing twice; it gives the stray row a partition of its own.
    again = maintain(db)
    name = maintenance.partition_name(day(maintenance.AHEAD_DAYS + 1))
    assert (again.created, again.moved) == ([name], 1)
    assert where(db, beyond) == [(name, 1.0)]


def test_rows_in_the_default_partition_move_to_their_day_and_keep_their_identity(db) -> None:
    late = put(db, at(-3), 3.0)  # before the table had a partition for its day
    early = put(db, at(20), 20.0)  # further ahead than the partitions made ahead
    report = maintain(db)
    assert report.moved == 2
    assert where(db, late) == [(maintenance.partition_name(day(-3)), 3.0)]
    assert where(db, early) == [(maintenance.partition_name(day(20)), 20.0)]
    # The workers' idempotent insert (ON CONFLICT on the key, through the parent) still finds
    # the moved row: last write wins, no second row.
    db.execute(
        "INSERT INTO users (id, username, password_hash) VALUES (%s, %s, 'x')",
        (owner := uuid.uuid4(), f"u-{owner.hex[:12]}"),
    )
    db.execute(
        "INSERT INTO devices (id, owner_id, name, token_hash) VALUES (%s, %s, 'd', %s)",
        (late, owner, uuid.uuid4().hex),
    )
    batch = {
        "device_id": str(late),
        "received_at": NOW.isoformat(),
        "readings": [{"sensor": "t", "value": 4.0, "ts": at(-3).isoformat()}],
    }
    assert readings_sql.insert_batches(db, [batch]) == 1
    assert readings_sql.insert_batches(db, [batch]) == 0  # a retry changes nothing
    assert where(db, late) == [(maintenance.partition_name(day(-3)), 4.0)]


def test_retention_drops_whole_old_partitions_and_keeps_the_boundary_day(db) -> None:
    for d in range(-6, 1):
        maintenance.create_partition(db, day(d))
    kept_first = put(db, at(-3, 0))  # the first instant of the oldest day kept
    gone_last = put(db, at(-3, 0) - timedelta(microseconds=1))  # the last of the day before
    older = put(db, at(-6))
    report = maintain(db, retention_days=3)
    assert report.dropped == [maintenance.partition_name(day(d)) for d in (-6, -5, -4)]
    assert where(db, kept_first) == [(maintenance.partition_name(day(-3)), 1.0)]
    assert where(db, gone_last) == where(db, older) == []
    assert min(maintenance.partitions(db)) == day(-3)


def test_a_late_reading_older_than_the_retention_is_kept_a_day_after_it_landed(db) -> None:
    fresh = put(db, datetime(2001, 1, 1, tzinfo=UTC), stored=NOW - timedelta(hours=1))
    stale = put(db, datetime(2001, 1, 1, tzinfo=UTC), stored=NOW - timedelta(days=2))
    report = maintain(db, retention_days=3)
    assert report.deleted_late == 1
    assert where(db, fresh) == [("readings_default", 1.0)]
    assert where(db, stale) == []
    assert maintenance.partition_name(date(2001, 1, 1)) not in maintenance.partitions(db).values()
    # Keeping everything (retention 0) gives it a partition of its own instead.
    maintain(db, retention_days=0)
    assert where(db, fresh) == [(maintenance.partition_name(date(2001, 1, 1)), 1.0)]


def _command(conn: psycopg.Connection, status: str, updated: datetime) -> uuid.UUID:
    cid = uuid.uuid4()
    conn.execute(
        "INSERT INTO commands (id, device_id, name, ttl_seconds, created_at, expires_at, status,"
        " updated_at) VALUES (%s, %s, 'blink', 60, %s, %s, %s, %s)",
        (cid, uuid.uuid4(), updated, updated, status, updated),
    )
    conn.execute(
        "INSERT INTO command_events (event_id, command_id, device_id, status, at)"
        " VALUES (%s, %s, %s, %s, %s)",
        (uuid.uuid4(), cid, uuid.uuid4(), status, updated),
    )
    return cid


def test_finished_commands_past_their_retention_are_deleted_with_their_events(db) -> None:
    old = NOW - timedelta(days=91)
    done_old = [_command(db, s, old) for s in commands_cleanup.FINISHED]
    done_recent = _command(db, "succeeded", NOW - timedelta(days=89))
    pending_old = [_command(db, s, old) for s in ("queued", "delivered")]
    report = maintain(db, commands_retention_days=90)
    assert report.deleted_commands == len(done_old)
    left = {r[0] for r in db.execute("SELECT id FROM commands").fetchall()}
    assert left == {done_recent, *pending_old}
    events = {r[0] for r in db.execute("SELECT command_id FROM command_events").fetchall()}
    assert events == left


def test_one_runner_at_a_time(db, settings: Settings) -> None:
    with psycopg.connect(db.info.dsn + f" password={settings.postgres_password}") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (maintenance._ADVISORY_KEY,))
        assert "another runner" in maintain(db).skipped
        assert maintenance.partitions(db) == {}


def test_the_running_stack_makes_partitions_ahead(pg) -> None:
    # Today's may wait for the day's end on a stack migrated with many of today's readings.
    today = datetime.now(UTC).date()
    wanted = {today + timedelta(days=d) for d in range(1, maintenance.AHEAD_DAYS + 1)}
    eventually(
        lambda: wanted <= set(maintenance.partitions(pg)),
        timeout=60,
        what="the commands worker's maintenance to make this week's partitions",
    )


def test_only_the_process_that_measured_the_partitions_exports_them(settings: Settings) -> None:
    """The commands worker runs the maintenance and exports what it measured; the sensors
    worker does not run it and exports none of its gauges (a 0 there read as "no partitions
    ahead" to ReadingsPartitionsRunningOut, which takes the minimum over workers)."""
    gauges = (maintenance.DAYS_AHEAD, maintenance.LAST_SUCCESS, maintenance.DEFAULT_ROWS)

    def samples(port: int) -> dict[str, float]:
        text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5).text
        found = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in gauges:
                found[name] = float(value)
        return found

    measured = eventually(
        lambda: samples(settings.worker_commandlog_metrics_port),
        timeout=60,
        what="the commands worker's first round of maintenance",
    )
    assert set(measured) == set(gauges), measured
    assert measured[maintenance.DAYS_AHEAD] >= maintenance.AHEAD_DAYS, measured
    assert samples(settings.worker_sensors_metrics_port) == {}
