"""The operator commands the runbooks rely on, run as on-call would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).parent / "iotctl")


def iotctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IOTCTL, *args], capture_output=True, text=True, timeout=120)


def test_cache_rebuild_restores_latest_readings_after_redis_lost_them(alice: Person, pg, settings):
    device = alice.new_device()
    assert device.post([reading("t", 5.0)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="reading stored")
    r = redis.Redis.from_url(settings.redis_direct_url)
    r.delete(f"latest:{device.id}")
    done = iotctl("cache", "rebuild", "--device", str(device.id))
    assert done.returncode == 0, done.stderr
    assert "latest values of 1 sensors on 1 devices" in done.stdout
    body = device.api.get("/sensors", headers=device.headers).json()
    assert body["source"] == "cache" and body["readings"][0]["value"] == 5.0


def test_queues_lists_the_product_queues_and_no_queue_per_device(alice: Person):
    device = alice.new_device()
    alice.send(device, "waiting")
    out = iotctl("queues")
    assert out.returncode == 0, out.stderr
    for queue in ("sensors.data", "commands.data", "commands.log"):
        assert queue in out.stdout
    # A device costs rows, not broker queues (docs/design.md §5 Commands).
    assert str(device.id) not in out.stdout and "commands.dev." not in out.stdout
    assert "celery_delayed" not in out.stdout  # no ETA queues: we never send ETA tasks


def test_commands_list_shows_a_devices_pending_commands(alice: Person):
    device = alice.new_device()
    cid = alice.send(device, "waiting").json()["id"]
    out = eventually(
        lambda: cid in (r := iotctl("commands", "list", str(device.id))).stdout and r,
        what="the pending command listed",
    )
    assert "queued" in out.stdout and "1 pending command(s)" in out.stdout
    bad = iotctl("commands", "requeue", str(device.id), "--id", cid)
    assert bad.returncode == 1 and "only dead" in bad.stderr


def test_status_reports_every_component_healthy():
    out = iotctl("status")
    assert out.returncode == 0, out.stdout
    for name in (
        "rabbitmq",
        "postgres",
        "redis",
        "nginx",
        "api-1",
        "api-2",
        "worker-sensors",
        "worker-commandlog",
        "flower",
        "prometheus",
        "alertmanager",
        "toxiproxy",
    ):
        assert name in out.stdout


def test_logs_shows_a_components_log_and_refuses_unknown_names():
    assert iotctl("logs", "api-1", "-n", "5").returncode == 0
    bad = iotctl("logs", "no-such-thing")
    assert bad.returncode != 0 and "unknown component" in bad.stderr
