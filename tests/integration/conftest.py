"""Fixtures for tests against the running stack (started by `make test` via `iotctl up`).

Every test makes its own users and devices with unique names, so tests leave nothing behind
that another test could trip over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from iot import security
from iot.settings import Settings, get_settings
from iot.stack.control import Supervisor, wait_healthy

T = TypeVar("T")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Supervisor:
    sup = Supervisor(settings)
    try:
        httpx.get(f"{settings.base_url}/nginx/health", timeout=2).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"the stack is not running ({exc}); start it with `iotctl up` or `make test`")
    return sup


@pytest.fixture
def api(stack: Supervisor, settings: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=settings.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def pg(settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct (auditor's) connection to Postgres, autocommit."""
    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        yield conn


def eventually(check: Callable[[], T | None], timeout: float = 20, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Person:
    def __init__(self, api: httpx.Client, name: str, token: str) -> None:
        self.api, self.name, self.token = api, name, token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def new_device(self, name: str = "sensor-box") -> Device:
        r = self.api.post("/devices", json={"name": name}, headers=self.headers)
        assert r.status_code == 201, r.text
        body = r.json()
        return Device(self.api, uuid.UUID(body["id"]), body["token"])


class Device:
    def __init__(self, api: httpx.Client, device_id: uuid.UUID, token: str) -> None:
        self.api, self.id, self.token = api, device_id, token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, readings: list[dict[str, Any]]) -> httpx.Response:
        return self.api.post("/sensors", json={"readings": readings}, headers=self.headers)


def reading(
    sensor: str = "temperature", value: float = 21.5, age_s: float = 0, **extra: Any
) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(seconds=age_s)
    return {"sensor": sensor, "value": value, "ts": ts.isoformat(), **extra}


@pytest.fixture
def make_person(api: httpx.Client, pg: psycopg.Connection) -> Callable[..., Person]:
    def make(admin: bool = False) -> Person:
        name = f"u-{uuid.uuid4().hex[:12]}"
        password = uuid.uuid4().hex
        pg.execute(
            "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, %s)",
            (uuid.uuid4(), name, security.hash_password(password), admin),
        )
        r = api.post("/auth/token", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return Person(api, name, r.json()["access_token"])

    return make


@pytest.fixture
def alice(make_person: Callable[..., Person]) -> Person:
    return make_person()


def rows_for(pg: psycopg.Connection, device_id: uuid.UUID) -> int:
    row = pg.execute("SELECT count(*) FROM readings WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def restart_guard(stack: Supervisor, settings: Settings) -> Iterator[Callable[[str], None]]:
    """Stop components inside a test; they are started again (and awaited) whatever happens."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        stopped.append(name)
        stack.stop_program(name)

    yield stop
    for name in stopped:
        stack.start_program(name)
    results = wait_healthy(settings, None, timeout=90)
    bad = {n: h.detail for n, h in results.items() if not h.ok}
    assert not bad, f"stack did not recover: {bad}"
