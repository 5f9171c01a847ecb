"""Every answer bounded, whatever the fleet's size: GET /sensors pages over devices, every list
has a limit with a maximum, and a device's sensor names are capped before POST /sensors
answers 201."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.conftest import Device, Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


def _sensors(person: Person, **params: Any) -> dict[str, Any]:
    r = person.api.get("/sensors", params=params, headers=person.headers)
    assert r.status_code == 200, r.text
    return r.json()


def _fleet(person: Person, pg, count: int, silent: int = 1) -> dict[uuid.UUID, Device]:
    """``count`` devices of ``person``; each but the last ``silent`` sends readings of 1 to 3
    sensors."""
    devices = {}
    for i in range(count):
        device = person.new_device(f"box-{i}")
        devices[device.id] = device
        if i < count - silent:
            readings = [reading(f"s{j}", float(i * 10 + j)) for j in range(1 + i % 3)]
            assert device.post(readings).status_code == 201
    for i, device in enumerate(devices.values()):
        expected = 0 if i >= count - silent else 1 + i % 3
        eventually(lambda d=device, n=expected: rows_for(pg, d.id) == n, what="readings stored")
    return devices


def test_paging_through_get_sensors_gives_every_device_exactly_once(alice: Person, pg):
    devices = _fleet(alice, pg, 7)
    seen: list[str] = []
    readings: list[dict[str, Any]] = []
    pages, after = 0, None
    while True:
        page = _sensors(alice, limit=3, **({"after": after} if after else {}))
        pages += 1
        assert len(page["devices"]) <= 3 and page["limit"] == 3
        assert page["devices"] == sorted(page["devices"], key=uuid.UUID)
        assert {r["device_id"] for r in page["readings"]} <= set(page["devices"])
        seen += page["devices"]
        readings += page["readings"]
        after = page["next"]
        if after is None:
            break
        assert after == page["devices"][-1]
    assert pages == 3
    assert sorted(seen) == sorted(str(d) for d in devices) and len(seen) == len(set(seen))
    # each device's latest readings, each in exactly one page; the last device has none
    by_device: dict[str, set[str]] = {}
    for r in readings:
        assert r["sensor"] not in by_device.setdefault(r["device_id"], set())
        by_device[r["device_id"]].add(r["sensor"])
    assert len(by_device) == 6 and sum(len(s) for s in by_device.values()) == 1 + 2 + 3 + 1 + 2 + 3


def test_the_cache_answers_a_page_once_it_is_warm(alice: Person, pg):
    _fleet(alice, pg, 3, silent=0)  # a device without readings is cold for ever
    first = _sensors(alice, limit=2)
    _sensors(alice, limit=2, after=first["next"])
    again = _sensors(alice, limit=2)  # every device of the page has readings in Redis now
    assert again["source"] == "cache" and again["readings"] == first["readings"]


def test_with_device_id_the_answer_is_one_device_as_before(alice: Person, pg):
    devices = _fleet(alice, pg, 2)
    one = next(iter(devices))
    body = _sensors(alice, device_id=str(one), limit=1, after=str(uuid.uuid4()))
    assert body["devices"] == [str(one)] and body["next"] is None
    assert body["source"] in ("cache", "database") and len(body["readings"]) == 1
    # a device sees only itself, with or without device_id
    own = devices[one].api.get("/sensors", headers=devices[one].headers).json()
    assert own["devices"] == [str(one)] and own["next"] is None


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"after": "not-a-cursor"}, {"after": "x" * 65}]
)
def test_limits_and_cursors_out_of_range_are_422(alice: Person, params):
    r = alice.api.get("/sensors", params=params, headers=alice.headers)
    assert r.status_code == 422, r.text


def test_no_list_exceeds_its_limit_and_a_full_page_carries_a_cursor(alice: Person, pg):
    devices = list(_fleet(alice, pg, 6).values())
    for _ in range(4):
        assert alice.send(devices[0]).status_code == 201
    page = _sensors(alice, limit=5)
    assert len(page["devices"]) == 5 and page["next"]
    listed = alice.api.get("/devices", params={"limit": 5}, headers=alice.headers).json()
    assert len(listed["devices"]) == 5 and listed["limit"] == 5
    history = alice.api.get(
        f"/devices/{devices[0].id}/commands", params={"limit": 3}, headers=alice.headers
    ).json()
    assert len(history["commands"]) == 3 and history["next"]


def test_an_admins_default_page_is_bounded(make_person):
    admin = make_person(admin=True)
    admin.new_device()  # at least one device in the whole stack
    page = _sensors(admin)
    assert 1 <= len(page["devices"]) <= 100 and page["limit"] == 100
    assert (page["next"] is None) == (len(page["devices"]) < 100)
    assert {r["device_id"] for r in page["readings"]} <= set(page["devices"])


def test_a_devices_sensor_beyond_the_cap_is_refused_and_its_earlier_readings_stay(
    alice: Person, pg, settings
):
    cap = settings.max_sensors_per_device
    device = alice.new_device()
    first = [reading(f"s{i:03d}", float(i)) for i in range(cap - 1)]
    assert device.post(first).status_code == 201
    assert device.post([reading("last", 1.0)]).status_code == 201  # the cap-th name
    r = device.post([reading("s000", 2.0, age_s=-1), reading("one-too-many", 3.0)])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"at most {cap}" in detail and "IOT_MAX_SENSORS_PER_DEVICE" in detail
    assert "one-too-many" in detail
    # nothing of the refused request was accepted; the device's own sensors still are
    assert device.post([reading("s001", 4.0, age_s=-1)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == cap + 1, what="the accepted readings stored")
    latest = eventually(
        lambda: (
            (b := _sensors(alice, device_id=str(device.id))) and len(b["readings"]) == cap and b
        ),
        what="every sensor's latest value",
    )
    values = {x["sensor"]: x["value"] for x in latest["readings"]}
    assert "one-too-many" not in values and values["s000"] == 0.0 and values["s001"] == 4.0
