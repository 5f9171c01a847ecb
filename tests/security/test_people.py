"""A person deleted or demoted loses their rights at once on every replica (not when their
access token expires); a person may register at most their device limit."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from typer.testing import CliRunner

from iot import cache
from iot.cli import main as cli
from iot.settings import Settings
from tests.integration.conftest import Person, eventually, reading

pytestmark = pytest.mark.integration


def iotctl(*args: str) -> str:
    """``iotctl ARGS`` in this process (starting it anew costs seconds on a busy machine)."""
    out = CliRunner().invoke(cli.app, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def _everywhere(settings: Settings) -> list[str]:
    """Each replica directly, and nginx (which routes a credential to one of them)."""
    return [f"http://{settings.host}:{p}" for p in settings.api_ports] + [settings.base_url]


def test_a_deleted_persons_tokens_stop_at_once_on_every_replica(
    tenant: Callable[..., Person], settings: Settings
) -> None:
    person = tenant()
    device = person.new_device()
    assert device.post([reading()]).status_code == 201
    latest = redis.Redis.from_url(settings.redis_direct_url, socket_timeout=5)
    eventually(lambda: latest.exists(cache.key(device.id)), what="the reading in Redis")
    for url in _everywhere(settings):  # every replica knows both tokens
        assert httpx.get(f"{url}/devices", headers=person.headers).status_code == 200
        assert httpx.get(f"{url}/sensors", headers=device.headers).status_code == 200
    out = iotctl("users", "delete", person.name, "--yes")
    assert f"deleted {person.name} and 1 device(s)" in out
    for url in _everywhere(settings):
        for path in ("/devices", "/sensors"):
            r = httpx.get(f"{url}{path}", headers=person.headers)
            assert r.status_code == 401, f"{url}{path}: {r.status_code} {r.text}"
        r = httpx.get(f"{url}/commands", headers=device.headers)
        assert r.status_code == 401, f"the deleted person's device, {url}: {r.status_code}"
    r = httpx.post(
        f"{settings.base_url}/auth/token", json={"username": person.name, "password": "x"}
    )
    assert r.status_code == 401
    # nothing of the device stays in Redis either
    assert not latest.exists(cache.key(device.id))
    assert latest.hget(cache.OWNERS_KEY, str(device.id)) is None
    assert latest.hget(cache.SEEN_KEY, str(device.id)) is None


def test_an_admin_demoted_loses_other_owners_devices_at_once(
    tenant: Callable[..., Person], settings: Settings
) -> None:
    owner, admin = tenant(), tenant(admin=True)
    device = owner.new_device()
    path = f"/devices/{device.id}"
    for url in _everywhere(settings):
        assert httpx.get(f"{url}{path}", headers=admin.headers).status_code == 200
    iotctl("users", "set", admin.name, "--no-admin")
    for url in _everywhere(settings):
        r = httpx.get(f"{url}{path}", headers=admin.headers)
        assert r.status_code == 404, f"{url}: {r.status_code} {r.text}"
        listed = httpx.get(f"{url}/devices", headers=admin.headers).json()["devices"]
        assert str(device.id) not in {d["id"] for d in listed}
    iotctl("users", "set", admin.name, "--admin")  # and back, with the same token
    for url in _everywhere(settings):
        assert httpx.get(f"{url}{path}", headers=admin.headers).status_code == 200


def _register(person: Person, name: str = "box") -> httpx.Response:
    return person.api.post("/devices", json={"name": name}, headers=person.headers)


def test_registering_beyond_the_device_limit_is_refused(tenant: Callable[..., Person]) -> None:
    person = tenant()
    iotctl("users", "set", person.name, "--max-devices", "2")
    first, second = _register(person), _register(person)
    assert first.status_code == second.status_code == 201
    over = _register(person)
    assert over.status_code == 403, over.text
    assert "device limit reached: 2" in over.json()["detail"]
    listed = person.api.get("/devices", headers=person.headers).json()["devices"]
    assert len(listed) == 2
    # deleting one makes room; raising the limit too
    assert (
        person.api.delete(f"/devices/{first.json()['id']}", headers=person.headers).status_code
        == 204
    )
    assert _register(person).status_code == 201
    assert _register(person).status_code == 403
    iotctl("users", "set", person.name, "--max-devices", "3")
    assert _register(person).status_code == 201


def test_registrations_at_once_cannot_pass_the_limit_together(
    tenant: Callable[..., Person],
) -> None:
    person = tenant()
    iotctl("users", "set", person.name, "--max-devices", "3")
    with ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(lambda i: _register(person, f"at-once-{i}").status_code, range(12)))
    assert codes == [201] * 3 + [403] * 9
    assert len(person.api.get("/devices", headers=person.headers).json()["devices"]) == 3


def test_admins_have_no_device_limit(tenant: Callable[..., Person]) -> None:
    admin = tenant(admin=True)
    iotctl("users", "set", admin.name, "--max-devices", "0")
    assert _register(admin).status_code == 201


def test_the_default_limit_applies_to_people_without_their_own(
    tenant: Callable[..., Person], settings: Settings
) -> None:
    """A person without a limit of their own gets IOT_MAX_DEVICES_PER_USER; `--default-max-devices`
    returns to it."""
    person = tenant()
    iotctl("users", "set", person.name, "--max-devices", "0")
    assert _register(person).status_code == 403
    iotctl("users", "set", person.name, "--default-max-devices")
    assert settings.max_devices_per_user >= 1
    assert _register(person).status_code == 201
    listed = iotctl("users", "list")
    line = next(ln for ln in listed.splitlines() if ln.startswith(person.name))
    assert "max" not in line


def test_a_person_created_with_a_limit_of_their_own(api: httpx.Client) -> None:
    """The load tools' way: `iotctl users create --max-devices N`."""
    name, password = f"u-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    out = CliRunner().invoke(
        cli.app,
        ["users", "create", name, "--password-stdin", "--max-devices", "1"],
        input=password + "\n",
    )
    assert out.exit_code == 0, out.output
    try:
        token = api.post("/auth/token", json={"username": name, "password": password})
        person = Person(api, name, token.json()["access_token"])
        assert _register(person).status_code == 201
        assert _register(person).status_code == 403
    finally:
        iotctl("users", "delete", name, "--yes")
