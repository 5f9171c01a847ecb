"""The command routes over httpx.ASGITransport with a fake command core: what devices and
people get back for each outcome of the core (no network, no services)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from iot import security
from iot.api import app as app_module
from iot.api import deps
from iot.api.deps import State
from iot.api.routes import commands as command_routes
from iot.commands.wakeups import Wakeups
from iot.errors import BrokerUnavailable, Conflict, DatabaseUnavailable, NotFound, QueueFull
from iot.settings import Settings

DEVICE = uuid.uuid4()
OWNER = uuid.uuid4()
TOKEN = security.new_device_token()
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeCore:
    """Stands in for iot.commands.service.Commands: records calls, answers as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.pending: list[dict[str, Any]] = []
        self.fail: Exception | None = None
        self.idle = False
        self.statuses: dict[uuid.UUID, str] = {}
        self.device_pending: int | None = 0  # what the visibility statement counts
        self.wakeups = Wakeups("postgresql://never-connected")  # waiters only

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail is not None:
            raise self.fail

    async def poll(self, device_id: uuid.UUID, wait: float, limit: int, lease: float) -> Any:
        self._record("poll", device_id, wait, limit, lease)
        taken, self.pending = self.pending[:limit], self.pending[limit:]
        return taken

    def surely_idle(self, device_id: str) -> bool:
        return self.idle

    async def ack(self, device_id: uuid.UUID, command_id: uuid.UUID, outcome: str, result: Any):
        self._record("ack", device_id, command_id, outcome, result)
        if command_id not in self.statuses:
            raise NotFound("no such command")
        return self.statuses.setdefault(command_id, outcome)

    async def send(self, owner, device_id, name, args, ttl, key=None, *, pending) -> dict[str, Any]:
        self._record("send", owner, device_id, name, args, ttl, key, pending)
        return _command(name=name, args=args)

    async def descriptor(self, command_id: uuid.UUID) -> dict[str, Any] | None:
        return _command(command_id) if command_id in self.statuses else None

    async def cancel(self, command: dict[str, Any], by: str) -> str:
        self._record("cancel", command["id"], by)
        return "cancelled"

    async def requeue(self, command: dict[str, Any], by: str) -> str:
        self._record("requeue", command["id"], by)
        cid = uuid.UUID(command["id"])
        if self.statuses[cid] != "dead":
            raise Conflict(f"only dead commands can be requeued (not {self.statuses[cid]})")
        self.statuses[cid] = "queued"
        return "queued"


def _command(command_id: uuid.UUID | None = None, name: str = "blink", args: Any = None):
    return {
        "id": str(command_id or uuid.uuid4()),
        "device_id": str(DEVICE),
        "owner_id": str(OWNER),
        "name": name,
        "args": args or {},
        "ttl": 60,
        "created_at": NOW.isoformat(),
        "expires_at": (NOW + timedelta(minutes=1)).isoformat(),
    }


@pytest.fixture
def settings() -> Settings:
    return Settings(secret_key="k" * 32, postgres_password="p" * 16, rabbitmq_password="r" * 16)


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def client(settings: Settings, core: FakeCore, monkeypatch: pytest.MonkeyPatch):
    async def owns(state: Any, who: Any, device_id: Any) -> list[uuid.UUID]:
        if device_id != DEVICE or not (who.is_admin or who.user_id == OWNER):
            raise NotFound("no such device")
        return [DEVICE]

    async def owns_pending(state: Any, who: Any, device_id: Any) -> int | None:
        await owns(state, who, device_id)
        return core.device_pending

    async def person(state: Any, claims: security.UserClaims) -> dict[str, Any]:
        # who the token names, as the database would say (no database here)
        return {"id": claims.user_id, "username": claims.username, "is_admin": claims.is_admin}

    monkeypatch.setattr(command_routes, "visible_devices", owns)
    monkeypatch.setattr(command_routes, "visible_device_pending", owns_pending)
    monkeypatch.setattr(deps, "_person", person)
    app = app_module.create_app(settings)
    device = {"id": DEVICE, "owner_id": OWNER}
    cache = {security.hash_device_token(TOKEN): (time.monotonic() + 60, device)}
    state = State(settings, None, None, None, cache)  # type: ignore[arg-type]
    state.commands = core  # type: ignore[assignment]
    app.state.iot = state
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _person(settings: Settings, user: uuid.UUID = OWNER, admin: bool = False) -> dict[str, str]:
    claims = security.UserClaims(user, "root" if admin else "alice", admin)
    token = security.issue_access_token(claims, settings.secret_key, 60)
    return {"Authorization": f"Bearer {token}"}


DEVICE_AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_nothing_pending_is_204_and_the_default_lease_applies(client, core, settings):
    r = await client.get("/commands", params={"wait": 2}, headers=DEVICE_AUTH)
    assert r.status_code == 204
    assert core.calls == [("poll", (DEVICE, 2.0, 10, settings.command_lease_seconds))]


async def test_pending_commands_come_back_in_the_contracts_shape(client, core):
    core.pending = [
        {**_command(), "attempt": 1, "created_at": NOW, "expires_at": NOW + timedelta(1)}
        for _ in range(3)
    ]
    r = await client.get("/commands", params={"limit": 2, "lease": 5}, headers=DEVICE_AUTH)
    assert r.status_code == 200
    got = r.json()["commands"]
    assert len(got) == 2
    assert set(got[0]) == {"id", "name", "args", "created_at", "expires_at", "attempt"}
    assert core.calls[0][1][2:] == (2, 5.0)


@pytest.mark.parametrize(
    "params", [{"wait": 31}, {"wait": -1}, {"limit": 0}, {"limit": 101}, {"lease": 0.5}]
)
async def test_out_of_range_poll_parameters_are_422_without_touching_the_core(client, core, params):
    r = await client.get("/commands", params=params, headers=DEVICE_AUTH)
    assert r.status_code == 422 and r.json()["detail"]
    assert core.calls == []


async def test_polls_of_an_idle_device_are_answered_without_the_core(client, core):
    core.idle = True
    r = await client.get("/commands", headers=DEVICE_AUTH)
    assert r.status_code == 204 and core.calls == []
    r = await client.get("/commands", params={"wait": 0.3, "limit": 5}, headers=DEVICE_AUTH)
    assert r.status_code == 204 and core.calls == []  # waited, no claim


async def test_a_notification_during_a_long_poll_hands_it_to_the_route_with_the_time_left(
    client, core
):
    core.idle = True
    core.pending = [
        {**_command(), "attempt": 1, "created_at": NOW, "expires_at": NOW + timedelta(1)}
    ]

    async def notify_soon() -> None:
        await asyncio.sleep(0.2)
        core.wakeups.notify(str(DEVICE))

    poke = asyncio.create_task(notify_soon())
    r = await client.get("/commands", params={"wait": 5, "lease": 9}, headers=DEVICE_AUTH)
    await poke
    assert r.status_code == 200 and len(r.json()["commands"]) == 1
    [(name, (device, wait, limit, lease))] = core.calls
    assert (name, device, limit, lease) == ("poll", DEVICE, 10, 9.0)
    assert 4.0 < wait < 4.9  # what was left of the 5 s


async def test_a_device_not_known_idle_takes_the_full_route(client, core):
    r = await client.get("/commands", params={"wait": 0.2}, headers=DEVICE_AUTH)
    assert r.status_code == 204 and [c[0] for c in core.calls] == ["poll"]


async def test_a_database_outage_answers_503_with_retry_after(client, core, settings):
    core.fail = DatabaseUnavailable("database unavailable")
    r = await client.get("/commands", params={"wait": 1}, headers=DEVICE_AUTH)
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(settings.retry_after_seconds)
    r = await client.post(
        f"/commands/{uuid.uuid4()}/ack", json={"status": "succeeded"}, headers=DEVICE_AUTH
    )
    assert r.status_code == 503


async def test_ack_of_an_unknown_command_is_404_and_a_known_one_returns_its_status(client, core):
    cid = uuid.uuid4()
    r = await client.post(f"/commands/{cid}/ack", json={"status": "failed"}, headers=DEVICE_AUTH)
    assert r.status_code == 404
    core.statuses[cid] = "succeeded"  # acked before: the first outcome holds
    r = await client.post(f"/commands/{cid}/ack", json={"status": "failed"}, headers=DEVICE_AUTH)
    assert r.status_code == 200 and r.json() == {"id": str(cid), "status": "succeeded"}


async def test_an_ack_with_an_unknown_status_is_422(client, core):
    r = await client.post(
        f"/commands/{uuid.uuid4()}/ack", json={"status": "done"}, headers=DEVICE_AUTH
    )
    assert r.status_code == 422 and core.calls == []


async def test_send_passes_the_idempotency_key_and_answers_queued(client, core, settings):
    body = {"device_id": str(DEVICE), "name": "open", "args": {"s": 3}, "ttl": 60}
    r = await client.post(
        "/commands", json=body, headers={**_person(settings), "Idempotency-Key": "k-1"}
    )
    assert r.status_code == 201 and r.json()["status"] == "queued"
    assert core.calls == [("send", (OWNER, DEVICE, "open", {"s": 3}, 60, "k-1", 0))]


@pytest.mark.parametrize("pending", [7, None])
async def test_send_hands_the_count_of_the_visibility_statement_to_the_core(
    client, core, settings, pending
):
    """One statement answers both "is it the caller's" and "how many pending" (None: Postgres
    was down, nothing counted); the core applies the cap to that count."""
    core.device_pending = pending
    body = {"device_id": str(DEVICE), "name": "open"}
    r = await client.post("/commands", json=body, headers=_person(settings))
    assert r.status_code == 201
    assert core.calls == [("send", (OWNER, DEVICE, "open", {}, 3600, None, pending))]


@pytest.mark.parametrize(
    ("error", "status"),
    [(QueueFull("the device's command queue is full"), 429), (BrokerUnavailable("x"), 503)],
)
async def test_send_refusals_say_why(client, core, settings, error, status):
    core.fail = error
    body = {"device_id": str(DEVICE), "name": "open"}
    r = await client.post("/commands", json=body, headers=_person(settings))
    assert r.status_code == status and r.json()["detail"] == error.detail
    assert r.headers["retry-after"] == str(settings.retry_after_seconds)  # when to try again


async def test_a_foreign_device_is_404_and_devices_cannot_send(client, core, settings):
    body = {"device_id": str(uuid.uuid4()), "name": "open"}
    assert (await client.post("/commands", json=body, headers=_person(settings))).status_code == 404
    body["device_id"] = str(DEVICE)
    stranger = _person(settings, uuid.uuid4())
    assert (await client.post("/commands", json=body, headers=stranger)).status_code == 404
    assert (await client.post("/commands", json=body, headers=DEVICE_AUTH)).status_code == 403
    assert core.calls == []


async def test_cancel_of_a_final_command_is_409(client, core, settings, monkeypatch):
    cid = uuid.uuid4()
    core.statuses[cid] = "succeeded"

    async def refuse(command: dict[str, Any], by: str) -> str:
        raise Conflict("command already succeeded")

    monkeypatch.setattr(core, "cancel", refuse)
    r = await client.post(f"/commands/{cid}/cancel", headers=_person(settings))
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]
    r = await client.post(f"/commands/{uuid.uuid4()}/cancel", headers=_person(settings))
    assert r.status_code == 404


async def test_an_admin_requeues_a_dead_command_of_any_owner(client, core, settings):
    cid = uuid.uuid4()
    core.statuses[cid] = "dead"
    admin = _person(settings, uuid.uuid4(), admin=True)
    r = await client.post(f"/commands/{cid}/requeue", headers=admin)
    assert r.status_code == 200 and r.json() == {"id": str(cid), "status": "queued"}
    assert core.calls == [("requeue", (str(cid), "root"))]


async def test_requeue_is_for_admins_only(client, core, settings):
    cid = uuid.uuid4()
    core.statuses[cid] = "dead"
    r = await client.post(f"/commands/{cid}/requeue", headers=_person(settings))  # the owner
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    r = await client.post(f"/commands/{cid}/requeue", headers=DEVICE_AUTH)
    assert r.status_code == 403
    assert core.statuses[cid] == "dead" and core.calls == []


@pytest.mark.parametrize("status", ["queued", "delivered", "succeeded", "cancelled", "expired"])
async def test_requeue_of_a_command_that_is_not_dead_is_409_saying_its_status(
    client, core, settings, status
):
    cid = uuid.uuid4()
    core.statuses[cid] = status
    r = await client.post(f"/commands/{cid}/requeue", headers=_person(settings, admin=True))
    assert r.status_code == 409
    assert r.json()["detail"] == f"only dead commands can be requeued (not {status})"
    assert core.statuses[cid] == status


async def test_requeue_of_an_unknown_command_is_404_and_an_outage_503(client, core, settings):
    admin = _person(settings, admin=True)
    r = await client.post(f"/commands/{uuid.uuid4()}/requeue", headers=admin)
    assert r.status_code == 404 and core.calls == []
    cid = uuid.uuid4()
    core.statuses[cid] = "dead"
    core.fail = DatabaseUnavailable("database unavailable")
    r = await client.post(f"/commands/{cid}/requeue", headers=admin)
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(settings.retry_after_seconds)


async def test_the_requeue_route_declares_its_answers(client):
    spec = (await client.get("/openapi.json")).json()
    answers = spec["paths"]["/commands/{command_id}/requeue"]["post"]["responses"]
    assert {"200", "403", "404", "409", "503"} <= set(answers)


def test_the_history_filter_accepts_exactly_the_statuses_a_command_can_have() -> None:
    from typing import get_args

    from iot.commands import lifecycle

    assert set(get_args(command_routes.StatusName)) == set(lifecycle.PENDING) | lifecycle.TERMINAL
