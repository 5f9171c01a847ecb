"""``iotctl bench worker`` against the stack: a private queue of coalesced messages, one
sensors worker on it, every reading stored, CPU reported per component; nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from iot.settings import get_settings
from loadtest.bench import app

pytestmark = pytest.mark.integration


def test_the_worker_bench_stores_every_reading_and_reports_cpu_per_component(tmp_path: Path):
    out = tmp_path / "worker.json"
    r = CliRunner().invoke(
        app,
        ["worker", "--messages", "200", "--batches", "5", "--readings", "3", "--json", str(out)],
    )
    assert r.exit_code == 0, r.output
    figures = json.loads(out.read_text())
    assert figures["readings"] == figures["stored"] == 200 * 5 * 3
    assert set(figures["cpu_seconds"]) == {"worker-sensors", "postgres", "redis", "rabbitmq"}
    assert figures["cpu_seconds"]["worker-sensors"] > 0
    with psycopg.connect(get_settings().database_direct_url) as conn:
        left = conn.execute("SELECT count(*) FROM users WHERE username LIKE 'bench-worker-%'")
        assert left.fetchone() == (0,)  # its user, devices and readings are gone
