"""Bad input gets a clear 4xx with a JSON detail, and nothing is stored because of it."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.integration.conftest import Device, Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


def _raw(device: Device, body: str | bytes, **headers: str):
    return device.api.post(
        "/sensors",
        content=body,
        headers={**device.headers, "Content-Type": "application/json", **headers},
    )


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_values_are_refused(alice: Person, pg, value: str):
    device = alice.new_device()
    body = '{"readings":[{"sensor":"t","value":VALUE,"ts":"2026-01-01T00:00:00Z"}]}'
    body = body.replace("VALUE", value)
    r = _raw(device, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize(
    "payload,why",
    [
        ({"readings": []}, "no readings"),
        ({"readings": [reading()] * 1001}, "more than 1000"),
        ({"readings": [reading(sensor="bad name")]}, "space in sensor name"),
        ({"readings": [reading(sensor="x" * 65)]}, "sensor name too long"),
        ({"readings": [reading(sensor="")]}, "empty sensor name"),
        ({"readings": [reading(sensor="temp/1")]}, "slash in sensor name"),
        ({"readings": [reading(colour="red")]}, "unknown field in a reading"),
        ({"readings": [reading()], "extra": 1}, "unknown top-level field"),
        (
            {"readings": [{"sensor": "t", "value": 1.0, "ts": "2026-01-01T00:00:00"}]},
            "ts without zone",
        ),
        ({"readings": [{"sensor": "t", "value": 1.0, "ts": "yesterday"}]}, "ts not RFC 3339"),
        (
            {"readings": [{"sensor": "t", "value": "warm", "ts": "2026-01-01T00:00:00Z"}]},
            "not a number",
        ),
        ({"readings": [{"sensor": "t", "ts": "2026-01-01T00:00:00Z"}]}, "missing value"),
        ({"readings": [reading(age_s=-3 * 86400)]}, "ts far in the future"),
        ({"reading": [reading()]}, "wrong key"),
    ],
)
def test_invalid_bodies_are_refused_with_422(alice: Person, pg, payload, why):
    device = alice.new_device()
    r = (
        device.post.__func__(device, payload["readings"])
        if list(payload) == ["readings"]
        else _raw(device, json.dumps(payload))
    )
    assert r.status_code == 422, f"{why}: {r.status_code} {r.text}"
    assert r.json()["detail"], why


def test_malformed_json_is_refused(alice: Person):
    device = alice.new_device()
    r = _raw(device, b'{"readings": [')
    assert r.status_code == 422 and r.json()["detail"]


def test_body_over_the_size_limit_is_413_json(alice: Person, settings):
    device = alice.new_device()
    big = json.dumps({"readings": [reading(id="x" * 60)] * 10_000})
    assert len(big) > settings.max_body_bytes
    r = _raw(device, big)
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer", "Bearer dvc_not-a-real-token", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz"],
)
def test_missing_or_wrong_token_is_401(api, auth):
    headers = {"Authorization": auth} if auth else {}
    r = api.post("/sensors", json={"readings": [reading()]}, headers=headers)
    assert r.status_code in (401, 403), r.text
    assert r.json()["detail"]


def test_wrong_password_is_401(api, alice: Person):
    r = api.post("/auth/token", json={"username": alice.name, "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    r = api.post("/auth/token", json={"username": "nobody-" + alice.name, "password": "x"})
    assert r.status_code == 401


def test_bad_input_loses_nothing_already_accepted(alice: Person, pg: psycopg.Connection):
    device = alice.new_device()
    assert device.post([reading("t", 1.0)]).status_code == 201
    for bad in ([reading(sensor="no spaces")], [reading()] * 1001):
        assert device.post(bad).status_code == 422
    assert _raw(device, "NaN").status_code == 422
    assert device.post([reading("t", 2.0, age_s=-1)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 2, what="both good readings stored")
    assert rows_for(pg, device.id) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"sensor": "t", "step": "0"},
        {"sensor": "t", "step": "fast"},
        {"sensor": "t", "step": "1", "from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"sensor": "t", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"sensor": "bad name"},
    ],
)
def test_bad_history_queries_are_422(alice: Person, params):
    device = alice.new_device()
    r = alice.api.get(
        "/sensors/history", params={"device_id": str(device.id), **params}, headers=alice.headers
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_bad_device_id_is_422(alice: Person):
    r = alice.api.get("/devices/not-a-uuid", headers=alice.headers)
    assert r.status_code == 422 and r.json()["detail"]


# ----- commands -----
@pytest.mark.parametrize(
    "change,why",
    [
        ({"args": {"blob": "x" * 4100}}, "args over 4 KiB"),
        ({"name": "no spaces"}, "bad name"),
        ({"name": ""}, "empty name"),
        ({"ttl": 0}, "ttl below 1 s"),
        ({"ttl": 48 * 3600 + 1}, "ttl over 48 h"),
        ({"colour": "red"}, "unknown field"),
        ({"device_id": "not-a-uuid"}, "bad device id"),
        ({"args": [1, 2]}, "args not an object"),
    ],
)
def test_invalid_commands_are_refused_with_422(alice: Person, change, why):
    device = alice.new_device()
    body = {"device_id": str(device.id), "name": "blink", "args": {}, "ttl": 60, **change}
    r = alice.api.post("/commands", json=body, headers=alice.headers)
    assert r.status_code == 422, f"{why}: {r.status_code} {r.text}"
    assert r.json()["detail"]
    assert device.poll(wait=0).status_code == 204, "nothing was queued"


def test_commands_for_unknown_devices_are_404(alice: Person):
    body = {"device_id": "00000000-0000-4000-8000-000000000000", "name": "blink"}
    r = alice.api.post("/commands", json=body, headers=alice.headers)
    assert r.status_code == 404 and r.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [{"wait": 31}, {"wait": -1}, {"limit": 0}, {"limit": 101}, {"wait": "soon"}, {"lease": 0}],
)
def test_bad_poll_parameters_are_422(alice: Person, params):
    device = alice.new_device()
    r = device.api.get("/commands", params=params, headers=device.headers)
    assert r.status_code == 422 and r.json()["detail"]


def test_bad_ids_and_acks_are_refused(alice: Person):
    device = alice.new_device()
    cid = alice.send(device, "blink").json()["id"]
    assert (
        device.api.post(
            "/commands/not-a-uuid/ack", json={"status": "succeeded"}, headers=device.headers
        ).status_code
        == 422
    )
    assert alice.api.get("/commands/not-a-uuid", headers=alice.headers).status_code == 422
    unknown = "00000000-0000-4000-8000-000000000000"
    assert device.ack(unknown).status_code == 404
    assert alice.api.get(f"/commands/{unknown}", headers=alice.headers).status_code == 404
    for bad in (
        {"status": "done"},
        {"status": "succeeded", "result": {"x": "y" * 5000}},
        {"status": "succeeded", "extra": 1},
    ):
        r = device.api.post(f"/commands/{cid}/ack", json=bad, headers=device.headers)
        assert r.status_code == 422, bad
    assert [c["id"] for c in device.commands(wait=5)] == [cid], "the command is still there"
    r = alice.api.get(
        f"/devices/{device.id}/commands", params={"before": "nonsense"}, headers=alice.headers
    )
    assert r.status_code == 422
