"""``iotctl load clean`` against the running stack: the fleets of earlier runs go (people,
devices, readings), the newest --keep stay, and nothing but load-test people is touched."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from iot.settings import PROJECT_ROOT, get_settings

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).parent / "iotctl")


def _iotctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IOTCTL, "load", "clean", *args],
        cwd=PROJECT_ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def pg(backend: str) -> Iterator[psycopg.Connection]:
    get_settings.cache_clear()
    with psycopg.connect(get_settings().database_direct_url, autocommit=True) as conn:
        yield conn


def _fleet(pg: psycopg.Connection, name: str, age_h: int, devices: int) -> list[uuid.UUID]:
    """A person as a load-test run leaves one: devices, each with a reading."""
    owner = uuid.uuid4()
    pg.execute(
        "INSERT INTO users (id, username, password_hash, created_at) VALUES (%s, %s, 'x', %s)",
        (owner, name, datetime.now(UTC) - timedelta(hours=age_h)),
    )
    ids = [uuid.uuid4() for _ in range(devices)]
    for device in ids:
        pg.execute(
            "INSERT INTO devices (id, owner_id, name, token_hash) VALUES (%s, %s, 'd', %s)",
            (device, owner, secrets.token_hex(16)),
        )
        pg.execute(
            "INSERT INTO readings (device_id, sensor, ts, value, received_at)"
            " VALUES (%s, 't', now(), 1, now())",
            (device,),
        )
    return ids


def _count(pg: psycopg.Connection, table: str, ids: list[uuid.UUID]) -> int:
    column = "id" if table == "devices" else "device_id"
    row = pg.execute(f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)", (ids,)).fetchone()
    return int(row[0]) if row else 0


def test_clean_deletes_older_fleets_keeps_the_newest_and_no_one_else(pg) -> None:
    prefix = f"loadtest-cleantest-{uuid.uuid4().hex[:8]}-"
    newest = _fleet(pg, f"{prefix}c", 1, 3)
    older = _fleet(pg, f"{prefix}b", 5, 4) + _fleet(pg, f"{prefix}a", 9, 2)
    bystander = _fleet(pg, f"not-{prefix}", 20, 1)  # a person, not a load-test run
    try:
        refused = _iotctl("--prefix", "someone-", "--yes")
        assert refused.returncode != 0 and "only load-test people" in refused.stderr

        done = _iotctl("--prefix", prefix, "--keep", "1", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"keeping  {prefix}c (3 devices)" in done.stdout
        assert "to delete: 2 load-test people with 6 devices" in done.stdout
        assert f"[2/2] deleted {prefix}a and 2 devices" in done.stdout
        assert _count(pg, "devices", older) == _count(pg, "readings", older) == 0
        assert _count(pg, "devices", newest) == _count(pg, "readings", newest) == 3
        assert _count(pg, "devices", bystander) == 1

        again = _iotctl("--prefix", prefix, "--yes")
        assert again.returncode == 0 and "nothing to delete" in again.stdout
    finally:
        pg.execute("DELETE FROM readings WHERE device_id = ANY(%s)", (newest + bystander,))
        pg.execute(
            "DELETE FROM users WHERE starts_with(username, %s) OR username = %s",
            (prefix, f"not-{prefix}"),
        )
