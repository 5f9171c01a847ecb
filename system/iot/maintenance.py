"""History that ages: day partitions of ``readings`` made ahead, old ones dropped, finished
commands deleted after their retention.

``readings`` is partitioned by range of ``ts``, one partition per UTC day (``readings_pYYYYMMDD``),
plus ``readings_default`` for any ts without a partition, so an insert never fails for want of
one (migration 0004). :func:`maintain` runs as the owner role (it creates and drops tables):

1. creates the partitions of the days from yesterday to ``AHEAD_DAYS`` ahead;
2. moves the rows of the default partition into partitions of their days (created on demand):
   readings that arrived late, early, or were stored before the table was partitioned (a live
   day with many such rows waits until it is over);
3. drops the partitions whose whole day is older than the retention, and deletes default rows
   that old once they have been stored for a day (a late reading is seen to land first);
4. deletes finished commands (and their events) not updated within their retention, through
   the command core (:func:`iot.commands.cleanup.delete_finished`).

A partition is created as a plain table, filled, then attached: ``ATTACH PARTITION`` locks the
parent only against other DDL, while ``CREATE TABLE ... PARTITION OF`` would block every reader
and writer of ``readings``. Moving a day out of the default partition holds that partition's
lock (inserts of days without a partition wait) for that day's rows only.

Several runners may exist (each commands worker runs one): an advisory lock lets one work.

Raises from :func:`maintain`: psycopg errors (the runner logs them and tries again later).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from psycopg import sql
from psycopg.rows import tuple_row

from iot.commands import cleanup as commands_cleanup
from iot.settings import get_settings

log = logging.getLogger(__name__)

AHEAD_DAYS = 7
DEFAULT_PARTITION = "readings_default"
LATE_GRACE = timedelta(days=1)  # a default row past the retention is kept this long after stored
# DDL waits this long for a lock, then gives up until the next run: dropping a partition locks
# the whole table, and readers and writers queue behind a waiting lock.
LOCK_TIMEOUT = "2s"
# Rows of today (or later) in the default partition moved while the day is live; more wait for
# the day to end (only right after migrating a table that already held today's readings).
LIVE_MOVE_MAX = 100_000
_ADVISORY_KEY = 0x10720001  # "history maintenance"
_NAME = re.compile(r"^readings_p(\d{8})$")
_COLUMNS = sql.SQL(", ").join(
    map(
        sql.Identifier,
        ("device_id", "sensor", "ts", "value", "client_id", "received_at", "stored_at"),
    )
)


FAILURES = Counter("iot_history_maintenance_failures_total", "Rounds that failed")
LAST_SUCCESS = "iot_history_maintenance_last_success_timestamp_seconds"
DAYS_AHEAD = "iot_readings_partitions_ahead_days"
DEFAULT_ROWS = "iot_readings_default_partition_rows"
_MEASURED_HELP = {
    LAST_SUCCESS: "When the history maintenance last finished a round",
    DAYS_AHEAD: (
        "Days after today that have readings partitions, without a gap (0: tomorrow has none)"
    ),
    DEFAULT_ROWS: "Readings waiting in the default partition for a partition of their day",
}


class Measured:
    """The gauges of the history as this process's last finished round measured them.

    Each is exported only once measured: every process that loads this module without running
    the maintenance (the sensors workers, Flower, a commands worker whose rounds another runner
    holds the lock for) exports none of them, rather than zeros that read as "no partitions
    ahead" and "no round ever finished" (alerts take the minimum or maximum over workers).
    """

    def __init__(self) -> None:
        self._values: dict[str, float] = {}

    def set(self, name: str, value: float) -> None:
        self._values[name] = float(value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, help_text in _MEASURED_HELP.items():
            yield GaugeMetricFamily(name, help_text)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = dict(self._values)  # the round's thread may set one meanwhile
        for name, help_text in _MEASURED_HELP.items():
            if name in values:
                yield GaugeMetricFamily(name, help_text, value=values[name])


MEASURED = Measured()
REGISTRY.register(MEASURED)


def partition_name(day: date) -> str:
    return f"readings_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    moved: int = 0
    dropped: list[str] = field(default_factory=list)
    deleted_late: int = 0
    deleted_commands: int = 0
    postponed: list[date] = field(default_factory=list)
    skipped: str = ""  # why nothing was done (another runner holds the lock, no partitioned table)


def _rows(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows as tuples, whatever the connection's row factory (the stack's is dicts)."""
    return conn.cursor(row_factory=tuple_row).execute(query, params).fetchall()


def partitions(conn: psycopg.Connection[Any]) -> dict[date, str]:
    """The day partitions of ``readings``: day -> table name."""
    out = {}
    for (name,) in _rows(
        conn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass",
    ):
        match = _NAME.match(name)
        if match:
            out[datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return out


def _is_partitioned(conn: psycopg.Connection[Any]) -> bool:
    rows = _rows(conn, "SELECT relkind FROM pg_class WHERE oid = to_regclass('readings')")
    return bool(rows) and rows[0][0] == "p"


def create_partition(conn: psycopg.Connection[Any], day: date) -> int:
    """Create and attach the partition of ``day``, moving that day's rows out of the default
    partition; returns the rows moved. One transaction."""
    name = sql.Identifier(partition_name(day))
    start, end = _bounds(day)
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        # Inserts of this day wait from here until the commit (they would go to the default
        # partition, whose rows of this day are moving).
        conn.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(DEFAULT_PARTITION))
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS,"
                " CHECK (ts >= {} AND ts < {}))"
            ).format(name, sql.Literal(start), sql.Literal(end))
        )
        moved = conn.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM {} WHERE ts >= %s AND ts < %s RETURNING {cols})"
                " INSERT INTO {} ({cols}) SELECT {cols} FROM gone"
            ).format(sql.Identifier(DEFAULT_PARTITION), name, cols=_COLUMNS),
            (start, end),
        ).rowcount
        # The CHECK constraint spares ATTACH a scan of the new table; the key's index is built
        # by ATTACH (on the moved rows, if any).
        conn.execute(
            sql.SQL("ALTER TABLE readings ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                name, sql.Literal(start), sql.Literal(end)
            )
        )
    return max(moved, 0)


def _default_days(conn: psycopg.Connection[Any], since: date | None) -> dict[date, int]:
    """Days that have rows in the default partition (only from ``since`` on, if given), with
    their number of rows."""
    rows = _rows(
        conn,
        sql.SQL(
            "SELECT (ts AT TIME ZONE 'UTC')::date, count(*) FROM {}"
            + (" WHERE ts >= %s" if since else "")
            + " GROUP BY 1"
        ).format(sql.Identifier(DEFAULT_PARTITION)),
        (_bounds(since)[0],) if since else None,
    )
    return {r[0]: r[1] for r in rows}


def drop_partition(conn: psycopg.Connection[Any], name: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def maintain(
    conn: psycopg.Connection[Any],
    now: datetime | None = None,
    retention_days: int | None = None,
    commands_retention_days: int | None = None,
    ahead_days: int = AHEAD_DAYS,
) -> Report:
    """One round of history maintenance (see the module's docstring) on an autocommit
    connection as the owner role. ``retention_days``/``commands_retention_days``: from the
    settings when None; 0 keeps everything. ``now``: the clock (tests pass their own)."""
    s = get_settings()
    now = now or datetime.now(UTC)
    keep = s.readings_retention_days if retention_days is None else retention_days
    keep_commands = (
        s.commands_retention_days if commands_retention_days is None else commands_retention_days
    )
    report = Report()
    if not _is_partitioned(conn):
        report.skipped = "readings is not partitioned (migrations pending)"
        return report
    if not _rows(conn, "SELECT pg_try_advisory_lock(%s)", (_ADVISORY_KEY,))[0][0]:
        report.skipped = "another runner holds the maintenance lock"
        return report
    try:
        today = now.astimezone(UTC).date()
        oldest = today - timedelta(days=keep) if keep else None  # first day kept
        existing = partitions(conn)
        waiting = _default_days(conn, oldest)
        wanted = {today + timedelta(days=d) for d in range(-1, ahead_days + 1)} | set(waiting)
        for day in sorted(wanted - set(existing)):
            if oldest and day < oldest:
                continue
            if day >= today and waiting.get(day, 0) > LIVE_MOVE_MAX:
                # Writers of this day would wait for the whole move: move it once it is over.
                report.postponed.append(day)
                continue
            report.moved += create_partition(conn, day)
            report.created.append(partition_name(day))
        if oldest:
            for day, name in sorted(partitions(conn).items()):
                if day < oldest:
                    drop_partition(conn, name)
                    report.dropped.append(name)
            report.deleted_late = conn.execute(
                sql.SQL("DELETE FROM {} WHERE ts < %s AND stored_at < %s").format(
                    sql.Identifier(DEFAULT_PARTITION)
                ),
                (_bounds(oldest)[0], now - LATE_GRACE),
            ).rowcount
        if keep_commands:
            report.deleted_commands = commands_cleanup.delete_finished(
                conn, now - timedelta(days=keep_commands)
            )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_KEY,))
    return report


def _observe(conn: psycopg.Connection[Any]) -> None:
    days = set(partitions(conn))
    ahead, today = 0, datetime.now(UTC).date()
    while today + timedelta(days=ahead + 1) in days:
        ahead += 1
    MEASURED.set(DAYS_AHEAD, ahead)
    MEASURED.set(DEFAULT_ROWS, sum(_default_days(conn, None).values()))
    MEASURED.set(LAST_SUCCESS, time.time())


class Runner:
    """Runs :func:`maintain` now and then every ``maintenance_interval_seconds`` in a daemon
    thread, as the owner role; a failed round is logged and tried again sooner."""

    RETRY_SECONDS = 30.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="history-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        s = get_settings()
        while not self._stop.is_set():
            wait = s.maintenance_interval_seconds
            try:
                with psycopg.connect(
                    s.database_direct_url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="iot-maintenance",
                ) as conn:
                    report = maintain(conn)
                    if not report.skipped:
                        _observe(conn)
                if report.skipped:
                    log.info("history maintenance skipped: %s", report.skipped)
                    wait = min(wait, self.RETRY_SECONDS)
                elif report.created or report.dropped or report.deleted_commands:
                    log.info("history maintenance: %s", report)
            except Exception:  # noqa: BLE001 - the loop outlives any one failed round
                FAILURES.inc()
                log.exception("history maintenance failed; trying again later")
                wait = min(wait, self.RETRY_SECONDS)
            self._stop.wait(wait)


def main() -> None:
    """``python -m iot.maintenance``: one round now, as the owner role; prints what it did."""
    s = get_settings()
    with psycopg.connect(s.database_direct_url, autocommit=True) as conn:
        print(maintain(conn))


if __name__ == "__main__":
    main()
