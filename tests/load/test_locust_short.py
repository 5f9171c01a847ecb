"""A short locust run against the running stack: 200 emulated devices (with the operator and
the web viewers) for 30 s. Nothing may fail, and every reading the API answered 201 must be in
Postgres. The long runs (thousands of devices, minutes) are not part of `make test`."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime

import psycopg
import pytest

from iot.settings import get_settings
from loadtest import report, runner

pytestmark = pytest.mark.integration

DEVICES = 200


def _failures(run_dir) -> list[dict[str, str]]:
    with (run_dir / "locust_failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _stored(conn: psycopg.Connection, ledger: dict[str, dict]) -> dict[str, int]:
    """Rows per device within the timestamps the device sent in this run (a reused device's
    earlier readings are older)."""
    since = datetime.fromtimestamp(min(e["first_ms"] for e in ledger.values()) / 1000, UTC)
    rows = conn.execute(
        "SELECT device_id::text, ts FROM readings WHERE device_id = ANY(%s::uuid[]) AND ts >= %s",
        (list(ledger), since),
    ).fetchall()
    counts = dict.fromkeys(ledger, 0)
    for device, ts in rows:
        e = ledger[device]
        if e["first_ms"] <= round(ts.timestamp() * 1000) <= e["last_ms"]:
            counts[device] += 1
    return counts


@pytest.mark.timeout(300)
def test_200_devices_for_30_seconds_nothing_fails_and_every_accepted_reading_is_stored():
    get_settings.cache_clear()
    settings = get_settings()
    try:
        runner.check_stack(settings)
    except runner.LoadError as exc:
        pytest.fail(str(exc))
    opts = runner.RunOptions(devices=DEVICES, duration=30, shape="soak", reuse=True, verify=False)
    result = runner.run(opts, progress=print)

    assert result.failures == 0, _failures(result.run_dir)
    routes = result.report["overall"]
    assert routes["POST /sensors"]["count"] >= DEVICES  # every device sent at least once
    assert routes["GET /commands"]["count"] >= DEVICES
    assert routes["POST /commands"]["count"] > 0  # the operator sent commands ...
    assert routes["COMMAND end-to-end"]["count"] > 0  # ... and devices received them

    ledger = {d: e for d, e in report.read_ledger(result.run_dir / "ledger").items() if e["count"]}
    accepted = {device: e["count"] for device, e in ledger.items()}
    assert len(accepted) == DEVICES
    assert all(e["dropped"] == 0 for e in ledger.values())
    deadline = time.monotonic() + 60
    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        while True:  # the workers write asynchronously: give them time to drain
            stored = _stored(conn, ledger)
            if stored == accepted or time.monotonic() > deadline:
                break
            time.sleep(1)
    missing = {d: n - stored.get(d, 0) for d, n in accepted.items() if stored.get(d, 0) < n}
    extra = {d: stored[d] - n for d, n in accepted.items() if stored.get(d, 0) > n}
    assert not missing, f"{sum(missing.values())} accepted readings not in Postgres: {missing}"
    assert not extra, f"rows never answered 201: {extra}"
