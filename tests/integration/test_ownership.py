"""A device sees only itself; a person only their devices; an admin all."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


def test_a_device_cannot_read_another_devices_data(alice: Person, make_person, pg):
    a = alice.new_device("a")
    b = make_person().new_device("b")
    assert b.post([reading("secret", 1.0)]).status_code == 201
    eventually(lambda: rows_for(pg, b.id) == 1, what="b's reading stored")
    r = a.api.get("/sensors", params={"device_id": str(b.id)}, headers=a.headers)
    assert r.status_code == 404
    r = a.api.get(
        "/sensors/history", params={"device_id": str(b.id), "sensor": "secret"}, headers=a.headers
    )
    assert r.status_code == 404
    own = a.api.get("/sensors", headers=a.headers).json()
    assert own["readings"] == []


def test_a_person_cannot_see_anothers_devices(alice: Person, make_person, pg):
    bob = make_person()
    bobs = bob.new_device("bob's")
    assert bobs.post([reading("t", 3.0)]).status_code == 201
    eventually(lambda: rows_for(pg, bobs.id) == 1, what="bob's reading stored")
    for path in (f"/devices/{bobs.id}",):
        assert alice.api.get(path, headers=alice.headers).status_code == 404
    assert alice.api.delete(f"/devices/{bobs.id}", headers=alice.headers).status_code == 404
    assert alice.api.post(f"/devices/{bobs.id}/token", headers=alice.headers).status_code == 404
    r = alice.api.get("/sensors", params={"device_id": str(bobs.id)}, headers=alice.headers)
    assert r.status_code == 404
    listed = alice.api.get("/devices", headers=alice.headers).json()["devices"]
    assert str(bobs.id) not in {d["id"] for d in listed}
    everything = alice.api.get("/sensors", headers=alice.headers).json()["readings"]
    assert str(bobs.id) not in {x["device_id"] for x in everything}
    # ... and bob's device still works: nothing alice did touched it.
    assert bob.api.get(f"/devices/{bobs.id}", headers=bob.headers).status_code == 200


def test_an_admin_sees_every_device(make_person, pg):
    bob, admin = make_person(), make_person(admin=True)
    bobs = bob.new_device()
    assert bobs.post([reading("t", 4.0)]).status_code == 201
    eventually(lambda: rows_for(pg, bobs.id) == 1, what="reading stored")
    assert admin.api.get(f"/devices/{bobs.id}", headers=admin.headers).status_code == 200
    r = admin.api.get("/sensors", params={"device_id": str(bobs.id)}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["readings"][0]["value"] == 4.0


def test_roles_are_kept_apart(alice: Person):
    device = alice.new_device()
    r = alice.api.post("/sensors", json={"readings": [reading()]}, headers=alice.headers)
    assert r.status_code == 403 and "devices" in r.json()["detail"]
    r = device.api.get("/devices", headers=device.headers)
    assert r.status_code == 403
    r = device.api.post("/devices", json={"name": "x"}, headers=device.headers)
    assert r.status_code == 403


def test_device_token_is_shown_once_and_rotation_retires_the_old_one_at_once(alice: Person):
    device = alice.new_device()
    listed = alice.api.get(f"/devices/{device.id}", headers=alice.headers).json()
    assert "token" not in listed and "token_hash" not in listed
    for _ in range(4):  # the token is now in the auth cache of the replica(s) it reaches
        assert device.post([reading()]).status_code == 201
    r = alice.api.post(f"/devices/{device.id}/token", headers=alice.headers)
    assert r.status_code == 200
    new_token = r.json()["token"]
    assert new_token != device.token
    # Every replica hears of the rotation (Postgres NOTIFY); the cache lasts minutes otherwise.
    eventually(
        lambda: device.post([reading()]).status_code == 401, timeout=2, what="old token refused"
    )
    assert device.poll().status_code == 401
    new = {"Authorization": f"Bearer {new_token}"}
    r = device.api.post("/sensors", json={"readings": [reading()]}, headers=new)
    assert r.status_code == 201
