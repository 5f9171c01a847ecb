"""The ingest hot path without services: which bodies the shortcut may answer itself, how
requests share publishes, and that the shortcut and the full route answer alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from iot import messages, security
from iot.api import app as app_module
from iot.api.deps import State
from iot.api.ingest import Coalescer, plain_readings
from iot.errors import BrokerUnavailable
from iot.settings import Settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def body(*readings: dict[str, Any], **extra: Any) -> bytes:
    import orjson

    return orjson.dumps({"readings": list(readings), **extra})


GOOD = {"sensor": "temperature", "value": 21.5, "ts": "2026-11-30T11:59:00Z"}


def test_a_plain_body_becomes_the_workers_readings() -> None:
    got = plain_readings(body(GOOD, {**GOOD, "value": 3, "id": "r-1"}), NOW)
    assert got == [
        {"sensor": "temperature", "value": 21.5, "ts": "2026-11-30T11:59:00+00:00", "id": None},
        {"sensor": "temperature", "value": 3.0, "ts": "2026-11-30T11:59:00+00:00", "id": "r-1"},
    ]


def test_a_reading_without_ts_is_stamped_with_the_receive_time() -> None:
    got = plain_readings(body({"sensor": "t", "value": 1}, GOOD), NOW)
    assert got is not None
    assert got[0]["ts"] == NOW.isoformat()
    assert got[1]["ts"] == "2026-11-30T11:59:00+00:00"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        body(),  # no readings
        body(GOOD, extra=1),  # unknown top-level field
        body(*[GOOD] * 1001),  # too many
        body({**GOOD, "unit": "C"}),  # unknown field
        body({"sensor": "t", "value": 1, "ts": None}),  # null is not "absent"
        body({**GOOD, "sensor": "has space"}),
        body({**GOOD, "sensor": "x" * 65}),
        body({**GOOD, "value": True}),
        body({**GOOD, "value": "21.5"}),  # the full route may coerce it: let it judge
        body({**GOOD, "value": 1e400}),  # inf
        body({**GOOD, "ts": "2026-11-30T11:59:00"}),  # no time zone
        body({**GOOD, "ts": "2026-11-30 11:59:00Z"}),  # not RFC 3339
        body({**GOOD, "ts": "1999-12-31T23:59:59Z"}),  # before 2000
        body({**GOOD, "ts": "2026-12-02T12:00:00Z"}),  # more than a day ahead
        body({**GOOD, "ts": 1700000000}),
        body({**GOOD, "id": "x" * 65}),
        body({**GOOD, "id": 5}),
    ],
)
def test_anything_not_plainly_valid_is_left_to_the_full_route(raw: bytes) -> None:
    assert plain_readings(raw, NOW) is None


async def test_requests_that_arrive_during_a_publish_share_the_next_one() -> None:
    sent: list[list[str]] = []
    release = asyncio.Event()

    async def publish(queue: str, task: str, kwargs: dict[str, Any]) -> str:
        assert (queue, task) == (messages.SENSORS_QUEUE, messages.SENSORS_TASK)
        sent.append([b["device_id"] for b in kwargs["batches"]])
        await release.wait()
        return "id"

    coalescer = Coalescer(publish, max_in_flight=1, max_readings=3)
    batches = [{"device_id": f"d{i}", "readings": [GOOD]} for i in range(6)]
    waiting = [asyncio.create_task(coalescer.submit(b)) for b in batches]
    await asyncio.sleep(0.01)
    assert sent == [["d0"]]  # the first went at once; the rest wait for a free slot
    release.set()
    await asyncio.gather(*waiting)
    assert sent == [["d0"], ["d1", "d2", "d3"], ["d4", "d5"]]  # at most 3 readings a message


def _recording() -> tuple[list[list[str]], Any]:
    """A publish that confirms at once, and the device ids of each message it got."""
    sent: list[list[str]] = []

    async def publish(queue: str, task: str, kwargs: dict[str, Any]) -> str:
        sent.append([b["device_id"] for b in kwargs["batches"]])
        return "id"

    return sent, publish


async def test_with_a_linger_batches_wait_for_company_until_enough_readings_wait() -> None:
    sent, publish = _recording()
    coalescer = Coalescer(publish, linger=60, flush_readings=3)
    first = [
        asyncio.create_task(coalescer.submit({"device_id": f"d{i}", "readings": [GOOD]}))
        for i in range(2)
    ]
    await asyncio.sleep(0.01)
    assert sent == [] and not any(t.done() for t in first)  # lingering: not published yet
    await coalescer.submit({"device_id": "d2", "readings": [GOOD]})  # the third reading
    await asyncio.gather(*first)
    assert sent == [["d0", "d1", "d2"]]  # one message for the three requests


async def test_a_lone_batch_is_published_when_its_linger_is_over() -> None:
    sent, publish = _recording()
    coalescer = Coalescer(publish, linger=0.02, flush_readings=1000)
    await asyncio.wait_for(coalescer.submit({"device_id": "d0", "readings": [GOOD]}), 5)
    assert sent == [["d0"]]


async def test_a_failed_publish_fails_every_request_it_carried() -> None:
    calls = 0

    async def publish(queue: str, task: str, kwargs: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise BrokerUnavailable("message broker did not confirm; retry later")

    coalescer = Coalescer(publish, max_in_flight=1)
    results = await asyncio.gather(
        *(coalescer.submit({"device_id": "d", "readings": [GOOD]}) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    assert calls == 2  # the first alone, then the two that waited, together


class FakeIngest:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    async def submit(self, batch: dict[str, Any]) -> None:
        if self.fail:
            raise self.fail
        self.batches.append(batch)


@pytest.fixture
def ingest() -> FakeIngest:
    return FakeIngest()


@pytest.fixture
def client(ingest: FakeIngest) -> httpx.AsyncClient:
    settings = Settings(secret_key="k" * 32, postgres_password="p" * 16, rabbitmq_password="r" * 16)
    app = app_module.create_app(settings)
    state = State(settings, None, None, None, {})  # type: ignore[arg-type]
    state.ingest = ingest  # type: ignore[assignment]
    app.state.iot = state
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _device(client: httpx.AsyncClient) -> tuple[uuid.UUID, dict[str, str]]:
    token = security.new_device_token()
    device_id = uuid.uuid4()
    state = client._transport.app.state.iot  # type: ignore[attr-defined]
    state.device_cache[security.hash_device_token(token)] = (
        time.monotonic() + 60,
        {"id": device_id, "owner_id": uuid.uuid4()},
    )
    return device_id, {"Authorization": f"Bearer {token}"}


def _now_reading(value: float) -> dict[str, Any]:
    return {"sensor": "t", "value": value, "ts": (datetime.now(UTC) - timedelta(1)).isoformat()}


async def test_the_shortcut_and_the_full_route_answer_alike(client, ingest) -> None:
    device_id, auth = _device(client)
    plain = await client.post("/sensors", json={"readings": [_now_reading(1)]}, headers=auth)
    coerced = {"readings": [{**_now_reading(2), "value": "2.5"}]}  # only the full route takes it
    full = await client.post("/sensors", json=coerced, headers=auth)
    assert plain.status_code == full.status_code == 201
    assert plain.json() == full.json() == {"accepted": 1}
    assert [b["device_id"] for b in ingest.batches] == [str(device_id)] * 2
    assert [b["readings"][0]["value"] for b in ingest.batches] == [1.0, 2.5]


async def test_both_paths_stamp_a_reading_without_ts_with_the_receive_time(client, ingest):
    _, auth = _device(client)
    before = datetime.now(UTC)
    for value in (1, "2.5"):  # the shortcut, then the full route
        r = await client.post(
            "/sensors", json={"readings": [{"sensor": "t", "value": value}]}, headers=auth
        )
        assert r.status_code == 201, r.text
    after = datetime.now(UTC)
    stamps = [datetime.fromisoformat(b["readings"][0]["ts"]) for b in ingest.batches]
    assert len(stamps) == 2 and all(before <= ts <= after for ts in stamps)


async def test_invalid_readings_get_the_full_routes_422_and_nothing_is_published(
    client, ingest
) -> None:
    _, auth = _device(client)
    r = await client.post("/sensors", json={"readings": [{"sensor": "t"}]}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "readings"]
    assert ingest.batches == []


async def test_an_unconfirmed_publish_is_503_with_retry_after_on_both_paths(client, ingest):
    _, auth = _device(client)
    ingest.fail = BrokerUnavailable("message broker did not confirm; retry later")
    broker_503s = REGISTRY.get_sample_value("iot_unavailable_answers_total", {"cause": "broker"})
    for value in (1, "1.5"):  # the shortcut, then the full route
        reading = {**_now_reading(0), "value": value}
        r = await client.post("/sensors", json={"readings": [reading]}, headers=auth)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json() == {"detail": "message broker did not confirm; retry later"}
    # each 503 counted by its cause, on both paths (an operator's first question in a storm)
    after = REGISTRY.get_sample_value("iot_unavailable_answers_total", {"cause": "broker"})
    assert after == (broker_503s or 0) + 2
