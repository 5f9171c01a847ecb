"""The rollouts' metrics on the running stack: every series on each replica's /metrics from
its start, and the counters moving when a one-device rollout completes (through nginx)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from iot.settings import Settings
from iot.stack.control import prometheus_api
from tests.integration.conftest import Person, eventually

pytestmark = pytest.mark.integration

SERIES = (
    'iot_rollout_decisions_total{decision="created"}',
    'iot_rollout_decisions_total{decision="completed"}',
    'iot_rollout_decisions_total{decision="aborted"}',
    'iot_rollout_decisions_total{decision="awaiting approval"}',
    'iot_rollout_decisions_total{decision="cancel"}',
    "iot_rollout_commands_sent_total",
    'iot_rollout_targets_refused_total{reason="queue_full"}',
    "iot_rollouts_held",
    "iot_rollout_stalled_seconds",
)


def scrape(settings: Settings) -> Iterable[tuple[str, str]]:
    """(each replica's address, its /metrics text)."""
    for port in settings.api_ports:
        r = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5)
        r.raise_for_status()
        yield f"{settings.host}:{port}", r.text


def total(settings: Settings, name: str, **labels: str) -> float:
    """A sample summed over the replicas (``name`` as exposed: ``..._total`` for a counter)."""
    out = 0.0
    for _, text in scrape(settings):
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out += s.value
    return out


def test_every_rollout_series_is_on_each_replica_from_its_start(settings: Settings, stack):
    for replica, text in scrape(settings):
        lines = {line.rsplit(" ", 1)[0] for line in text.splitlines() if line[:1] != "#"}
        missing = [s for s in SERIES if s not in lines]
        assert not missing, f"{replica} lacks {missing}"
    # and Prometheus has them from both replicas (what the alerts and the dashboard read)
    for name in ("iot_rollout_decisions_total", "iot_rollouts_held", "iot_rollout_stalled_seconds"):
        r = prometheus_api(
            settings, "query", {"query": f'count(count by (instance) ({name}{{job="api"}}))'}
        )
        assert r.json()["data"]["result"][0]["value"][1] == str(len(settings.api_ports)), name


def test_a_completed_rollout_is_counted(alice: Person, settings: Settings):
    device = alice.new_device()
    before = {
        d: total(settings, "iot_rollout_decisions_total", decision=d)
        for d in ("created", "completed")
    }
    sent_before = total(settings, "iot_rollout_commands_sent_total")
    body: dict[str, Any] = {
        "command": {"name": "configure", "args": {"interval": 30}, "ttl": 600},
        "target": {"device_ids": [str(device.id)]},
        "phases": [100],
        "rate_per_minute": 600,
    }
    r = alice.api.post("/rollouts", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    commands = eventually(lambda: device.commands(wait=5), timeout=30, what="the command")
    assert device.ack(commands[0]["id"], "succeeded", {"ok": True}).status_code == 200

    def completed() -> bool:
        r = alice.api.get(f"/rollouts/{rollout_id}", headers=alice.headers)
        return r.json()["state"] == "completed"

    eventually(completed, timeout=30, what="the rollout completed")
    # Other tests may run rollouts meanwhile: at least ours is counted.
    assert (
        total(settings, "iot_rollout_decisions_total", decision="created") >= before["created"] + 1
    )
    assert total(settings, "iot_rollout_commands_sent_total") >= sent_before + 1
    eventually(
        lambda: (
            total(settings, "iot_rollout_decisions_total", decision="completed")
            >= before["completed"] + 1
        ),
        timeout=10,
        what="completed counted",
    )


def gauge(settings: Settings, name: str) -> list[float]:
    """A gauge's value on each replica."""
    return [
        s.value
        for _, text in scrape(settings)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_a_rollout_whose_device_does_not_poll_shows_as_stalled(alice: Person, settings: Settings):
    device = alice.new_device()  # never polls: its command stays queued
    body: dict[str, Any] = {
        "command": {"name": "configure", "args": {}, "ttl": 600},
        "target": {"device_ids": [str(device.id)]},
        "phases": [100],
    }
    r = alice.api.post("/rollouts", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    try:
        eventually(
            lambda: (
                sum(gauge(settings, "iot_rollouts_held")) >= 1
                and max(gauge(settings, "iot_rollout_stalled_seconds")) >= 3
            ),
            timeout=20,
            what="a held rollout stalled for 3 s",
        )
    finally:
        r = alice.api.post(f"/rollouts/{rollout_id}/cancel", headers=alice.headers)
        assert r.status_code == 200, r.text
