"""The failover bench for real, on its shortest run: pg_auto_failover (synchronous), its
primary's postgres killed, in namespaces of the bench's own (never the running stack's
Postgres). About a minute; left out of the default run (``-m "not ha"`` in pyproject.toml's
addopts): ``.venv/bin/pytest -m ha tests/ha``. Needs root and ``scripts/setup.sh --ha``."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from iot.ha import bench
from iot.settings import PROJECT_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.ha,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not shutil.which("pg_autoctl"), reason="scripts/setup.sh --ha first"),
]


def test_a_killed_primary_fails_over_without_losing_an_acknowledged_write() -> None:
    path = bench.bench_engines(PROJECT_ROOT, ["pg_auto_failover"], ["sync"], ["kill"],
                               print, rate=20)
    result = json.loads((path.parent / "report.json").read_text())["results"][0]
    assert "error" not in result, result
    summary = result["summary"]
    assert summary["failover_s"] is not None and summary["failover_s"] < 60, summary
    assert summary["lost"] == [], summary
    assert summary["writes_acked"] > 100, summary
    assert not (PROJECT_ROOT / "var" / "ha-bench").exists()  # the bench cleans up
