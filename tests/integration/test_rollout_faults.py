"""A rollout through faults: kill -9 of the API replicas (each runs a rollout driver), of
RabbitMQ and of Postgres while it sends. Every targeted device runs the command once, none
gets two commands of the rollout, and the rollout still completes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from chaos.actions import Actions
from iot.settings import Settings
from iot.stack.control import wait_healthy
from tests.integration.conftest import Person, eventually, wait_database_back
from tests.integration.test_rollouts import Fleet, create

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(600)]

DEVICES = 60


@pytest.mark.parametrize(
    "targets", [("api-1", "api-2"), ("rabbitmq",), ("postgres",)], ids=lambda t: "+".join(t)
)
def test_a_rollout_through_a_kill_reaches_every_device_once(
    targets: tuple[str, ...],
    settings: Settings,
    make_person: Callable[..., Person],
) -> None:
    alice = make_person()
    devices = [alice.new_device() for _ in range(DEVICES)]
    fleet = Fleet(settings.base_url, devices, set()).__enter__()
    actions = Actions(settings)
    try:
        body = create(alice, target={"all": True}, phases=[10, 50, 100], rate_per_minute=300)
        eventually(lambda: len(fleet.devices_reached()) >= 10, what="the rollout under way")
        for target in targets:
            actions.run("kill", target)
        time.sleep(3)
        for target in targets:
            actions.run("ensure_running", target)
        results = wait_healthy(settings, None, timeout=120)
        assert all(h.ok for h in results.values()), {n: h.detail for n, h in results.items()}
        wait_database_back(settings)  # every replica reaches Postgres again
        done = eventually(
            lambda: (
                (r := alice.api.get(f"/rollouts/{body['id']}", headers=alice.headers)).status_code
                == 200
                and r.json()["state"] == "completed"
                and r.json()
            ),
            timeout=240,
            what="the rollout completed after the fault",
        )
        assert done["sent"] == DEVICES
        eventually(lambda: len(fleet.acked) >= DEVICES, timeout=120, what="every device acked")
    finally:
        fleet.__exit__()
    ids = {str(d.id) for d in devices}
    assert fleet.devices_reached() == ids
    per_device = {d: {c for (dd, c) in fleet.deliveries if dd == d} for d in ids}
    assert all(len(c) == 1 for c in per_device.values()), "a device got two of the rollout's"
    assert set(fleet.runs.values()) == {1} and set(fleet.runs) == ids  # each ran it once
    assert all(sum(p["counts"].values()) == p["size"] for p in done["phases"])
    assert {s for p in done["phases"] for s in p["counts"]} == {"succeeded"}
