"""Fixtures for tests against the running stack (started by `make test` via `iotctl up`).

Every test makes its own users and devices with unique names, so tests leave nothing behind
that another test could trip over.

With ``IOT_TEST_BACKEND=containers`` (``make test-containers``) Postgres, RabbitMQ and Redis
run in containers and the rest of the stack natively against them, on ports of its own, for
the whole session (``containers.py``); tests that stop one of those three, and the chaos
experiments, are skipped then.
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
from iotcore.core import Device as CoreDevice
from iotcore.core import Registry, Request
from iotcore.host import HttpxTransport

from iot import security
from iot.settings import Settings, get_settings
from iot.stack.control import Supervisor, wait_healthy
from iot.stack.placement import service_of

T = TypeVar("T")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings(backend: str) -> Settings:
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


class Auditor:
    """A direct (auditor's) connection to Postgres, autocommit, that connects again when a test
    killed Postgres under it (kill -9 of the server ends every connection, this one too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.url, autocommit=True)
        try:
            return self.conn.execute(*args, **kwargs)
        except psycopg.OperationalError:
            if not self.conn.broken:
                raise
            self.conn = psycopg.connect(self.url, autocommit=True)
            return self.conn.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.fixture(scope="session")
def pg(settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct (auditor's) connection to Postgres, autocommit (:class:`Auditor`)."""
    auditor = Auditor(settings.database_direct_url)
    try:
        yield auditor  # type: ignore[misc]
    finally:
        auditor.conn.close()


def wait_database_back(settings: Settings, timeout: float = 60) -> None:
    """After a test faulted Postgres: wait until every API replica reaches it again (its
    /health says so; /health answers 200 with the database down, so a plain health wait is
    not enough), so the next test does not meet the fail-fast hold of a replica."""
    ports = settings.api_ports
    deadline = time.monotonic() + timeout
    pending = set(ports)
    while pending and time.monotonic() < deadline:
        for port in list(pending):
            try:
                r = httpx.get(f"http://{settings.host}:{port}/health", timeout=5)
                if r.json().get("checks", {}).get("database") == "ok":
                    pending.discard(port)
            except (httpx.HTTPError, ValueError):
                pass
        if pending:
            time.sleep(0.5)
    assert not pending, f"replicas on ports {sorted(pending)} still without their database"


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

    def send(
        self,
        device: Device,
        name: str = "blink",
        args: dict[str, Any] | None = None,
        ttl: int = 3600,
        key: str | None = None,
    ) -> httpx.Response:
        headers = {**self.headers, **({"Idempotency-Key": key} if key else {})}
        body = {"device_id": str(device.id), "name": name, "args": args or {}, "ttl": ttl}
        return self.api.post("/commands", json=body, headers=headers)

    def command(self, command_id: str) -> dict[str, Any]:
        r = self.api.get(f"/commands/{command_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def new_device(self, name: str = "sensor-box") -> Device:
        r = self.api.post("/devices", json={"name": name}, headers=self.headers)
        assert r.status_code == 201, r.text
        body = r.json()
        return Device(self.api, uuid.UUID(body["id"]), body["token"])


class Device:
    """A registered device. Its requests go through the firmware's transport adapter
    (``iotcore.host.HttpxTransport``, the one the simulator and the chaos fleet use); the
    methods answer the raw httpx responses, for tests to assert on. :meth:`core` gives the
    firmware's whole protocol core for this device."""

    def __init__(self, api: httpx.Client, device_id: uuid.UUID, token: str) -> None:
        self.api, self.id, self.token = api, device_id, token
        self.transport = HttpxTransport(api, token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _send(self, request: Request) -> httpx.Response:
        answer = self.transport.request(request)
        if answer.raw is None:
            raise ConnectionError(f"{request.method} {request.path}: {answer.error}")
        return answer.raw

    def post(self, readings: list[dict[str, Any]]) -> httpx.Response:
        return self._send(Request("readings", "POST", "/sensors", body={"readings": readings}))

    def poll(self, wait: float = 0, limit: int = 10, lease: float | None = None) -> httpx.Response:
        query: dict[str, Any] = {"wait": wait, "limit": limit}
        if lease is not None:
            query["lease"] = lease
        return self._send(
            Request("polls", "GET", "/commands", query, timeout_ms=int((wait + 30) * 1000))
        )

    def commands(self, **kw: Any) -> list[dict[str, Any]]:
        r = self.poll(**kw)
        assert r.status_code in (200, 204), r.text
        return r.json()["commands"] if r.status_code == 200 else []

    def ack(self, command_id: str, status: str = "succeeded", result: Any = None) -> httpx.Response:
        body = {"status": status, "result": result}
        return self._send(Request("acks", "POST", f"/commands/{command_id}/ack", body=body))

    def core(self, registry: Registry, **kw: Any) -> CoreDevice:
        """The firmware's protocol core for this device (drive it with ``iotcore.core.drive``
        over :attr:`transport`)."""
        return CoreDevice(self.token, registry, **kw)


def reading(
    sensor: str = "temperature", value: float = 21.5, age_s: float = 0, **extra: Any
) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(seconds=age_s)
    return {"sensor": sensor, "value": value, "ts": ts.isoformat(), **extra}


@pytest.fixture
def make_person(api: httpx.Client, pg: psycopg.Connection) -> Iterator[Callable[..., Person]]:
    made: list[str] = []

    def make(admin: bool = False) -> Person:
        name = f"u-{uuid.uuid4().hex[:12]}"
        password = uuid.uuid4().hex
        pg.execute(
            "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, %s)",
            (uuid.uuid4(), name, security.hash_password(password), admin),
        )
        made.append(name)
        r = api.post("/auth/token", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return Person(api, name, r.json()["access_token"])

    yield make
    # A rollout left running to devices that no longer poll would stall and page
    # (RolloutStalled) during later tests: cancel the test's unfinished ones.
    pg.execute(
        "UPDATE rollouts SET state = 'cancelled', finished_at = now(), driver = NULL"
        " WHERE state IN ('scheduled', 'running', 'paused')"
        " AND owner_id IN (SELECT id FROM users WHERE username = ANY(%s))",
        (made,),
    )


@pytest.fixture
def alice(make_person: Callable[..., Person]) -> Person:
    return make_person()


def statuses(person: Person, command_id: str) -> list[str]:
    return [e["status"] for e in person.command(command_id)["events"]]


def status_becomes(person: Person, command_id: str, status: str, timeout: float = 20) -> dict:
    return eventually(
        lambda: (c := person.command(command_id))["status"] == status and c,
        timeout=timeout,
        what=f"command {command_id} {status}",
    )


def rows_for(pg: psycopg.Connection, device_id: uuid.UUID) -> int:
    row = pg.execute("SELECT count(*) FROM readings WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def restart_guard(stack: Supervisor, settings: Settings) -> Iterator[Callable[[str], None]]:
    """Stop components inside a test; they are started again (and awaited) whatever happens."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        if service_of(name) in settings.external_services:
            pytest.skip(f"{name} runs elsewhere (IOT_EXTERNAL_SERVICES): not ours to stop")
        stopped.append(name)
        stack.stop_program(name)

    yield stop
    for name in stopped:
        stack.start_program(name)
    results = wait_healthy(settings, None, timeout=90)
    bad = {n: h.detail for n, h in results.items() if not h.ok}
    assert not bad, f"stack did not recover: {bad}"
