"""Every reading the API answered 201 for must be in Postgres: the run's ledger against the
``readings`` table, read directly as an auditor does.

Timestamps are unique and increasing per device, so for each device the rows between the
first and last accepted timestamp of this run must number exactly what the API accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from loadtest.report import read_ledger

_COUNT = """
SELECT l.id::text, count(r.device_id)
FROM unnest(%s::uuid[], %s::timestamptz[], %s::timestamptz[]) AS l(id, lo, hi)
LEFT JOIN readings r ON r.device_id = l.id AND r.ts BETWEEN l.lo AND l.hi
GROUP BY l.id
"""


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def stored(database_url: str, ledger: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rows in ``readings`` per device within the ledger's ts range of that device.

    Raises:
        psycopg.Error: Postgres is unreachable or refused the query.
    """
    entries = [(d, e) for d, e in ledger.items() if e.get("count")]
    if not entries:
        return {}
    ids = [d for d, _ in entries]
    lo = [_at(e["first_ms"]) for _, e in entries]
    hi = [_at(e["last_ms"]) for _, e in entries]
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(_COUNT, (ids, lo, hi)).fetchall()
    return {device: int(n) for device, n in rows}


def check(
    run_dir: Path,
    database_url: str,
    wait: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare the run's ledger with Postgres, waiting up to ``wait`` s for the workers to
    write the last rows. ``missing`` counts accepted readings not (yet) stored; ``extra``
    counts stored rows in the ranges that were never answered 201 (e.g. a retry whose first
    attempt was stored although it was answered 503).

    Raises:
        psycopg.Error: Postgres is unreachable or refused the query.
    """
    ledger = read_ledger(run_dir / "ledger")
    accepted = {d: e["count"] for d, e in ledger.items() if e.get("count")}
    deadline = time.monotonic() + wait
    while True:
        counts = stored(database_url, ledger)
        short = {d: n - counts.get(d, 0) for d, n in accepted.items() if counts.get(d, 0) < n}
        if not short or time.monotonic() > deadline:
            break
        if progress:
            progress(f"waiting for {sum(short.values())} readings to reach Postgres ...")
        time.sleep(2)
    return {
        "devices": len(accepted),
        "accepted": sum(accepted.values()),
        "stored": sum(min(counts.get(d, 0), n) for d, n in accepted.items()),
        "missing": sum(short.values()),
        "missing_devices": sorted(short)[:20],
        "extra": sum(max(0, counts.get(d, 0) - n) for d, n in accepted.items()),
    }
