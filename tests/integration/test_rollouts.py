"""Rollouts through nginx, with devices running the firmware's protocol core (iotcore): phases
at a rate, an automatic stop when too many fail, approval between phases, pause, cancel, and
one command per device whatever happens."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from iotcore.core import Device as CoreDevice
from iotcore.core import Registry
from iotcore.host import AsyncHttpxTransport, drive_async

from iot.settings import Settings
from tests.integration.conftest import Device, Person, eventually

pytestmark = pytest.mark.integration

COMMAND = "configure"


class Fleet:
    """Devices polling for commands with the firmware's core, in one thread; those in
    ``failing`` fail the rollout's command (their handler raises: the core acks ``failed``).
    Counts every delivery per (device, command)."""

    def __init__(self, base_url: str, devices: list[Device], failing: set[uuid.UUID]) -> None:
        self.base_url, self.devices, self.failing = base_url, devices, failing
        self.deliveries: Counter[tuple[str, str]] = Counter()
        self.runs: Counter[str] = Counter()  # handler runs per device (run-once ids hold)
        self.acked: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Fleet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def devices_reached(self) -> set[str]:
        return {d for d, _ in self.deliveries}

    def _core(self, d: Device) -> Any:
        registry = Registry()

        def configure(core: Any, args: dict[str, Any]) -> dict[str, Any]:
            self.runs[str(d.id)] += 1
            if d.id in self.failing:
                raise RuntimeError("this unit refuses the new setting")
            return {"applied": args}

        registry.add(COMMAND, configure)

        def events(name: str, *args: Any) -> None:
            if name == "delivered" and args[1]:  # first delivery of this id to this device
                self.deliveries[(str(d.id), args[0]["id"])] += 1
            elif name == "acked":
                self.acked.add(args[0])

        config = {"poll_wait_s": 2, "poll_limit": 10, "lease_s": 30, "request_timeout_s": 15}
        return CoreDevice(d.token, registry, config=config, events=events)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.devices) + 20)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15, limits=limits) as http:
            tasks = [
                asyncio.create_task(
                    drive_async(
                        self._core(d).commands(),
                        AsyncHttpxTransport(http, d.token),
                        self._stop.is_set,
                    )
                )
                for d in self.devices
            ]
            await asyncio.to_thread(self._stop.wait)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def fleet_of(settings: Settings) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(devices: list[Device], failing: set[uuid.UUID] | None = None) -> Fleet:
        fleet = Fleet(settings.base_url, devices, failing or set()).__enter__()
        made.append(fleet)
        return fleet

    yield make
    for f in made:
        f.__exit__()


def create(person: Person, **body: Any) -> dict[str, Any]:
    body.setdefault("command", {"name": COMMAND, "args": {"interval": 30}, "ttl": 600})
    r = person.api.post("/rollouts", json=body, headers=person.headers)
    assert r.status_code == 201, r.text
    return r.json()


def rollout(person: Person, rollout_id: str) -> dict[str, Any]:
    r = person.api.get(f"/rollouts/{rollout_id}", headers=person.headers)
    assert r.status_code == 200, r.text
    return r.json()


def ends_in(person: Person, rollout_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return eventually(
        lambda: (r := rollout(person, rollout_id))["state"] == state and r,
        timeout=timeout,
        what=f"rollout {state}",
    )


def phase_of(pg: psycopg.Connection, rollout_id: str) -> dict[str, int]:
    rows = pg.execute(
        "SELECT device_id, phase FROM rollout_targets WHERE rollout_id = %s", (rollout_id,)
    ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def test_a_rollout_goes_through_its_phases_and_every_device_runs_the_command_once(
    alice: Person, fleet_of: Callable[..., Fleet]
) -> None:
    devices = [alice.new_device() for _ in range(30)]
    fleet = fleet_of(devices)
    body = create(alice, target={"all": True}, phases=[10, 50, 100], rate_per_minute=6000)
    assert body["total"] == 30 and [p["size"] for p in body["phases"]] == [3, 12, 15]
    done = ends_in(alice, body["id"], "completed")
    assert sum(done["phases"][2]["counts"].values()) == 15
    assert all(set(p["counts"]) == {"succeeded"} for p in done["phases"]), done["phases"]
    assert [d["decision"] for d in done["decisions"]] == [
        "created",
        "advanced",
        "advanced",
        "completed",
    ]
    eventually(lambda: len(fleet.acked) == 30, what="every device acked")
    assert fleet.devices_reached() == {str(d.id) for d in devices}
    assert set(fleet.deliveries.values()) == {1}  # one command of the rollout per device
    # the commands are ordinary commands of their owner, with their rollout's derived ids
    one = alice.command(next(iter(fleet.acked)))
    assert one["name"] == COMMAND and one["status"] == "succeeded"


def test_a_rollout_stops_itself_when_too_many_fail_and_no_later_phase_gets_the_command(
    alice: Person, fleet_of: Callable[..., Fleet], pg: psycopg.Connection
) -> None:
    devices = [alice.new_device() for _ in range(200)]
    failing = {d.id for d in devices[::2]}  # half of the fleet cannot apply it
    fleet = fleet_of(devices, failing)
    body = create(
        alice,
        target={"all": True},
        phases=[1, 10, 100],
        rate_per_minute=3000,
        max_failure_share=0.2,
        min_finished=5,
    )
    done = ends_in(alice, body["id"], "aborted", timeout=90)
    reason = next(d for d in done["decisions"] if d["decision"] == "aborted")["reason"]
    assert "finished commands ended badly" in reason
    assert done["phase"] <= 1  # stopped in the first or second phase
    phases = phase_of(pg, body["id"])
    reached = fleet.devices_reached()
    assert reached, "the first phases were sent"
    assert all(phases[d] <= done["phase"] for d in reached)  # nothing beyond the aborted phase
    assert not any(phases[str(d.id)] == 2 for d in devices if str(d.id) in reached)
    failed = {f["device_id"] for f in done["failed"]}
    assert failed and failed <= {str(d) for d in failing}
    assert set(fleet.deliveries.values()) == {1}


def test_approval_between_phases_pause_resume_and_cancel(
    alice: Person, make_person: Callable[..., Person], fleet_of: Callable[..., Fleet]
) -> None:
    devices = [alice.new_device() for _ in range(6)]
    fleet = fleet_of(devices)
    body = create(
        alice,
        target={"device_ids": [str(d.id) for d in devices]},
        phases=[2, 6],
        phase_unit="count",
        approval=True,
        rate_per_minute=6000,
    )
    waiting = ends_in(alice, body["id"], "paused")
    assert waiting["decisions"][-1]["decision"] == "awaiting approval"
    assert len(fleet.devices_reached()) == 2
    # resuming does not skip the approval: it pauses again at once
    r = alice.api.post(f"/rollouts/{body['id']}/resume", headers=alice.headers)
    assert r.status_code == 200, r.text
    ends_in(alice, body["id"], "paused")
    assert len(fleet.devices_reached()) == 2
    r = alice.api.post(f"/rollouts/{body['id']}/approve", headers=alice.headers)
    assert r.status_code == 200, r.text
    ends_in(alice, body["id"], "completed")
    eventually(lambda: len(fleet.devices_reached()) == 6, what="the second phase delivered")
    # a finished rollout changes no more; another person does not see it at all
    r = alice.api.post(f"/rollouts/{body['id']}/cancel", headers=alice.headers)
    assert r.status_code == 409, r.text
    bob = make_person()
    assert bob.api.get(f"/rollouts/{body['id']}", headers=bob.headers).status_code == 404
    assert bob.api.post(f"/rollouts/{body['id']}/pause", headers=bob.headers).status_code == 404


def test_labels_are_set_by_the_owner_and_a_scheduled_rollout_targets_them(
    alice: Person, make_person: Callable[..., Person]
) -> None:
    r = alice.api.post(
        "/devices", json={"name": "n1", "labels": {"site": "north"}}, headers=alice.headers
    )
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    assert alice.api.get(f"/devices/{first}", headers=alice.headers).json()["labels"] == {
        "site": "north"
    }
    north = [first]
    for _ in range(2):
        d = alice.new_device()
        r = alice.api.patch(
            f"/devices/{d.id}",
            json={"labels": {"site": "north", "model": "esp32-s3"}},
            headers=alice.headers,
        )
        assert r.status_code == 200 and r.json()["labels"]["model"] == "esp32-s3", r.text
        north.append(str(d.id))
    other = alice.new_device()  # unlabelled: not a target
    bad = alice.api.patch(
        f"/devices/{other.id}", json={"labels": {"no spaces": "x"}}, headers=alice.headers
    )
    assert bad.status_code == 422, bad.text
    bob = make_person()
    r = bob.api.patch(f"/devices/{first}", json={"labels": {}}, headers=bob.headers)
    assert r.status_code == 404  # not bob's device

    body = create(alice, target={"labels": {"site": "north"}}, start=False)
    assert body["state"] == "scheduled" and body["total"] == 3
    assert body["target"] == {"labels": {"site": "north"}}
    r = alice.api.post(f"/rollouts/{body['id']}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert rollout(alice, body["id"])["sent"] == 0


def test_bad_rollouts_are_refused_clearly(
    alice: Person, make_person: Callable[..., Person]
) -> None:
    mine = alice.new_device()
    theirs = make_person().new_device()

    def post(**body: Any) -> httpx.Response:
        body.setdefault("command", {"name": COMMAND})
        return alice.api.post("/rollouts", json=body, headers=alice.headers)

    assert post(target={"all": True, "labels": {"a": "b"}}).status_code == 422  # two targets
    assert post(target={"all": True}, phases=[50, 10]).status_code == 422  # not rising
    assert post(target={"labels": {"site": "nowhere"}}).status_code == 422  # matches nothing
    r = post(target={"device_ids": [str(mine.id), str(theirs.id)]})
    assert r.status_code == 404, r.text  # another person's device is not a target


def test_operators_steer_rollouts_with_iotctl(alice: Person) -> None:
    from tests.integration.test_operations import iotctl

    devices = [alice.new_device() for _ in range(2)]
    body = create(alice, target={"device_ids": [str(d.id) for d in devices]}, start=False)
    listed = iotctl("rollouts", "list")
    assert listed.returncode == 0 and body["id"] in listed.stdout, listed.stderr
    refused = iotctl("rollouts", "pause", body["id"])
    assert refused.returncode == 1 and "a scheduled rollout cannot be paused" in refused.stderr
    done = iotctl("rollouts", "cancel", body["id"])
    assert done.returncode == 0 and "cancelled" in done.stdout, done.stderr
    shown = iotctl("rollouts", "show", body["id"])
    assert shown.returncode == 0, shown.stderr
    assert "cancelled" in shown.stdout and "iotctl" in shown.stdout  # who cancelled it
    assert rollout(alice, body["id"])["state"] == "cancelled"
    missing = iotctl("rollouts", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no rollout" in missing.stderr
