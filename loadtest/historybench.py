"""``iotctl bench history``: the history query at 1 M, 10 M, 100 M ... rows.

For each size: a scratch database on the stack's Postgres (never the product's database) built
by the product's own migrations and maintenance job (day partitions), filled with
``generate_series`` in the shape a fleet makes (many devices, three sensors, a reading every
10 s with a per-device phase, time-major like live ingest, ``DAYS`` days long: devices scale
with the size). Then the API's own history query (``iot.sql.readings.HISTORY``) runs under
``EXPLAIN (ANALYZE, BUFFERS)`` for the 1 h, 24 h and 7 d windows and a 24 h page further back,
each on ``samples`` random series, first right after the fill (pages not yet all-visible, as in
today's partition) and again after ``VACUUM``. A table is printed and the scratch database is
dropped at the end (also on failure or Ctrl-C).

The fill runs in the Postgres backend: the bench renices that backend to 19 (it runs as root)
as well as itself, so that others sharing the machine keep their CPU; the measured queries
run at normal priority.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from psycopg import sql

from iot import maintenance
from iot.settings import Settings, get_settings
from iot.sql.readings import HISTORY
from iot.stack import setup as stack_setup

DAYS = 8  # the data's span: a 7 d window and a page before it
SENSORS = ("temperature", "humidity", "battery")
INTERVAL_S = 10
PER_SERIES_DAY = 86400 // INTERVAL_S
# (label, window, step, pages back): the windows the web app and API ask for.
WINDOWS = (
    ("1 h", timedelta(hours=1), timedelta(minutes=1), 0),
    ("24 h", timedelta(hours=24), timedelta(minutes=5), 0),
    ("24 h, a page back", timedelta(hours=24), timedelta(minutes=5), 1),
    ("7 d", timedelta(days=7), timedelta(hours=1), 0),
)


@contextlib.contextmanager
def scratch_database(s: Settings, prefix: str = "iot_scratch") -> Iterator[str]:
    """A new database owned by the owner role, migrated by the product's migrations; yields its
    URL as the owner. Dropped on exit, whatever happened."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    if name == s.postgres_db:
        raise RuntimeError("refusing to use the product's database")
    with stack_setup.superuser_connection(s) as su:
        su.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(s.postgres_user)
            )
        )
    url = s.database_direct_url.rsplit("/", 1)[0] + "/" + name
    try:
        stack_setup.migrate(url)
        yield url
    finally:
        with stack_setup.superuser_connection(s) as su:
            su.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _renice_backend(conn: psycopg.Connection[Any], niceness: int) -> bool:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _priority(conn: psycopg.Connection[Any], renice: bool) -> Iterator[None]:
    if renice:
        _renice_backend(conn, 0)
    try:
        yield
    finally:
        if renice:
            _renice_backend(conn, 19)


@dataclass
class Sample:
    ms: float
    hit: int
    read: int
    partitions: int
    heap_fetches: int
    node: str
    buckets: int


@dataclass
class SizeResult:
    rows: int
    devices: int
    fill_s: float
    fill_rows_per_s: float
    vacuum_s: float
    bytes_total: int
    partitions: int
    queries: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)


def _fill(conn: psycopg.Connection[Any], devices: int, first: datetime, echo: Any) -> int:
    conn.execute(
        "CREATE TEMP TABLE bench_devices AS SELECT gen_random_uuid() AS id,"
        " make_interval(secs => n %% %s) AS phase, 15 + n %% 10 AS base"
        " FROM generate_series(1, %s) AS n",
        (INTERVAL_S, devices),
    )
    total = 0
    for d in range(DAYS):
        start = first + timedelta(days=d)
        started = time.perf_counter()
        # Time-major (the lateral reference to t keeps t outermost), as live ingest writes.
        n = conn.execute(
            "INSERT INTO readings (device_id, sensor, ts, value, client_id, received_at,"
            " stored_at)"
            " SELECT b.id, s.name, b.at, b.base + random() * 5, NULL,"
            " b.at + interval '1 s', b.at + interval '2 s'"
            " FROM generate_series(%s::timestamptz, %s::timestamptz - %s * interval '1 s',"
            " %s * interval '1 s') AS t"
            " CROSS JOIN LATERAL (SELECT id, base, t + phase AS at FROM bench_devices) AS b"
            " CROSS JOIN unnest(%s::text[]) AS s(name)",
            (start, start + timedelta(days=1), INTERVAL_S, INTERVAL_S, list(SENSORS)),
        ).rowcount
        total += n
        took = time.perf_counter() - started
        echo(f"    day {d + 1}/{DAYS}: {n:,} rows in {took:.0f} s ({n / took:,.0f} rows/s)")
    return total


def _walk(node: dict[str, Any], out: list[dict[str, Any]]) -> None:
    out.append(node)
    for child in node.get("Plans", []):
        _walk(child, out)


def _explain(
    conn: psycopg.Connection[Any],
    device: uuid.UUID,
    sensor: str,
    start: datetime,
    end: datetime,
    step: timedelta,
) -> Sample:
    params = {"step": step, "start": start, "end": end, "device": device, "sensor": sensor}
    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + HISTORY, params).fetchone()[0][
        0
    ]  # type: ignore[index]
    nodes: list[dict[str, Any]] = []
    _walk(plan["Plan"], nodes)
    scans = [n for n in nodes if "Relation Name" in n]
    top = plan["Plan"]
    return Sample(
        ms=plan["Execution Time"] + plan["Planning Time"],
        hit=top.get("Shared Hit Blocks", 0),
        read=top.get("Shared Read Blocks", 0),
        partitions=len(scans),
        heap_fetches=sum(n.get("Heap Fetches", 0) for n in scans),
        node=", ".join(sorted({n["Node Type"] for n in scans})),
        buckets=top.get("Actual Rows", 0),
    )


def _measure(
    conn: psycopg.Connection[Any], devices: list[uuid.UUID], end: datetime, samples: int
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    series = [(d, s) for d in devices for s in SENSORS]
    k = samples * len(WINDOWS)
    picks = random.sample(series, k) if k <= len(series) else random.choices(series, k=k)
    for i, (label, width, step, back) in enumerate(WINDOWS):
        stop = end - back * width
        out[label] = [
            _explain(conn, dev, sensor, stop - width, stop, step)
            for dev, sensor in picks[i * samples : (i + 1) * samples]
        ]
    return out


def measure_size(
    s: Settings, rows: int, samples: int, echo: Any = print, renice: bool = True
) -> SizeResult:
    """Build, fill, measure and drop one scratch database of about ``rows`` readings."""
    devices = max(1, math.ceil(rows / (len(SENSORS) * PER_SERIES_DAY * DAYS)))
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=DAYS - 1)
    end = first + timedelta(days=DAYS)
    with (
        scratch_database(s, "iot_bench_history") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        if renice and not _renice_backend(conn, 19):
            echo("    (could not renice the Postgres backend; run as root to spare others)")
        # The job run on the first day makes the partitions of the whole span (7 days ahead).
        report = maintenance.maintain(conn, now=first, retention_days=0, commands_retention_days=0)
        echo(
            f"  {rows:,} rows: {devices} devices x {len(SENSORS)} sensors, {DAYS} days "
            f"({len(report.created)} partitions made ahead by the maintenance job)"
        )
        started = time.perf_counter()
        filled = _fill(conn, devices, first, echo)
        fill_s = time.perf_counter() - started
        conn.execute("ANALYZE readings")
        ids = [r[0] for r in conn.execute("SELECT id FROM bench_devices").fetchall()]
        result = SizeResult(
            rows=filled,
            devices=devices,
            fill_s=fill_s,
            fill_rows_per_s=filled / fill_s,
            vacuum_s=0.0,
            bytes_total=0,
            partitions=len(maintenance.partitions(conn)),
        )
        echo(f"    filled {filled:,} rows in {fill_s:.0f} s ({result.fill_rows_per_s:,.0f} rows/s)")
        # Queries run at normal priority (root may lower the niceness again), the rest at 19.
        with _priority(conn, renice):
            result.queries["fresh"] = _measure(conn, ids, end, samples)
        started = time.perf_counter()
        conn.execute("VACUUM readings")
        result.vacuum_s = time.perf_counter() - started
        with _priority(conn, renice):
            result.queries["vacuumed"] = _measure(conn, ids, end, samples)
        result.bytes_total = int(
            conn.execute(
                "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                " WHERE inhparent = 'readings'::regclass"
            ).fetchone()[0]
        )  # type: ignore[index]
    return result


def render(results: list[SizeResult]) -> str:
    head = (
        "| rows | window | after | median ms | max ms | partitions | buffers hit/read (median)"
        " | heap fetches (median) | scan |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in results:
        for phase, windows in r.queries.items():
            for label, ss in windows.items():
                lines.append(
                    f"| {r.rows / 1e6:,.1f} M | {label} | {phase} "
                    f"| {statistics.median(x.ms for x in ss):.1f} | {max(x.ms for x in ss):.1f} "
                    f"| {ss[0].partitions} "
                    f"| {statistics.median(x.hit for x in ss):.0f}/"
                    f"{statistics.median(x.read for x in ss):.0f} "
                    f"| {statistics.median(x.heap_fetches for x in ss):.0f} | {ss[0].node} |"
                )
    lines += [
        "",
        "| rows | devices | fill s | fill rows/s | vacuum s | size (GB) | bytes/row |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.rows:,} | {r.devices} | {r.fill_s:.0f} | {r.fill_rows_per_s:,.0f} "
            f"| {r.vacuum_s:.0f} | {r.bytes_total / 1e9:.2f} | {r.bytes_total / r.rows:.0f} |"
        )
    return "\n".join(lines)


def history(
    rows: Annotated[
        str, typer.Option(help="Sizes to measure, comma-separated (each its own database).")
    ] = "1000000,10000000,100000000",
    samples: Annotated[int, typer.Option(min=1, help="Random series per window.")] = 5,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write all figures as JSON to this file.")
    ] = None,
    renice: Annotated[bool, typer.Option(help="Renice the filling Postgres backend to 19.")] = True,
) -> None:
    """History query time vs table size, in scratch databases of the stack's Postgres."""
    get_settings.cache_clear()
    s = get_settings()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    sizes = [int(x) for x in rows.replace("_", "").split(",") if x.strip()]
    results = []
    for n in sizes:
        results.append(measure_size(s, n, samples, typer.echo, renice))
        typer.echo("\n" + render(results[-1:]) + "\n")
        if json_path:
            json_path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    typer.echo(render(results))
