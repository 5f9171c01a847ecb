"""Unit tests (no network) of bounded answers: the cap on sensors per device, checked in each
replica's memory before POST /sensors answers 201, and a `limit` with a maximum on every route
that answers a list."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from iot import cache, security
from iot.api import app as app_module
from iot.api.deps import State
from iot.api.sensor_names import SensorNames, TooManySensors
from iot.errors import CacheUnavailable
from iot.settings import Settings

pytestmark = pytest.mark.anyio
DEVICE = str(uuid.uuid4())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRedis:
    """The latest-readings hashes' names, counting the calls; ``down`` fails them."""

    def __init__(self, names: dict[str, set[str]] | None = None) -> None:
        self.names = names or {}
        self.calls: list[str] = []
        self.down = False
        self.delay = 0.0

    async def load(self, device_id: str) -> set[str]:
        self.calls.append(device_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise CacheUnavailable("cache unavailable: ConnectionError")
        return set(self.names.get(device_id, ()))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(redis: FakeRedis, cap: int = 3, max_devices: int = 100, clock: Any = None) -> SensorNames:
    return SensorNames(redis.load, cap, max_devices, retry_seconds=5, clock=clock or Clock())


async def test_a_devices_names_are_read_from_redis_once_then_known_in_memory() -> None:
    redis = FakeRedis({DEVICE: {"t", "h"}})
    names = guard(redis)
    for _ in range(5):
        await names.admit(DEVICE, {"t"})
    await names.admit(DEVICE, {"t", "h", "p"})  # a new name within the cap: no round trip
    await names.admit(DEVICE, {"p"})
    assert redis.calls == [DEVICE]


async def test_a_name_beyond_the_cap_is_refused_naming_the_cap_and_earlier_names_still_pass():
    redis = FakeRedis({DEVICE: {"a", "b"}})
    names = guard(redis, cap=3)
    await names.admit(DEVICE, {"c"})
    with pytest.raises(TooManySensors) as refused:
        await names.admit(DEVICE, {"a", "d"})
    assert refused.value.status_code == 422
    detail = refused.value.detail
    assert "at most 3" in detail and "IOT_MAX_SENSORS_PER_DEVICE" in detail and "adds d." in detail
    await names.admit(DEVICE, {"a", "b", "c"})  # the existing sensors are unaffected
    with pytest.raises(TooManySensors):  # and the refused name was not remembered
        await names.admit(DEVICE, {"d"})


async def test_a_request_bringing_more_names_than_the_cap_is_refused_whole() -> None:
    names = guard(FakeRedis(), cap=3)
    many = {f"s{i}" for i in range(10)}
    with pytest.raises(TooManySensors, match="s0, s1, s2, s3, s4 and 5 more"):
        await names.admit(DEVICE, many)
    await names.admit(DEVICE, {"s0", "s1", "s2"})  # none of the refused request counted


async def test_devices_are_counted_apart() -> None:
    names = guard(FakeRedis(), cap=2)
    other = str(uuid.uuid4())
    await names.admit(DEVICE, {"a", "b"})
    await names.admit(other, {"c", "d"})
    with pytest.raises(TooManySensors):
        await names.admit(other, {"e"})


async def test_with_redis_down_readings_pass_and_redis_is_asked_again_later() -> None:
    redis, clock = FakeRedis({DEVICE: {"a", "b", "c"}}), Clock()
    redis.down = True
    names = guard(redis, cap=3, clock=clock)
    await names.admit(DEVICE, {"x"})  # Redis failed: what this replica knows is {x}
    await names.admit(DEVICE, {"y"})  # within the retry pause: Redis is not asked
    assert redis.calls == [DEVICE]
    redis.down = False
    clock.now += 6
    await names.admit(DEVICE, {"x", "y"})  # nothing new: no round trip on the hot path
    assert redis.calls == [DEVICE]
    with pytest.raises(TooManySensors):  # a new name: Redis again, and its names count
        await names.admit(DEVICE, {"z"})
    assert redis.calls == [DEVICE, DEVICE]
    await names.admit(DEVICE, {"a", "x"})  # known ones pass, without asking again
    assert len(redis.calls) == 2


async def test_the_memory_is_bounded_and_forgets_the_least_recently_seen_device() -> None:
    redis = FakeRedis()
    names = guard(redis, max_devices=2)
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    await names.admit(a, {"t"})
    await names.admit(b, {"t"})
    await names.admit(a, {"t"})  # a is now the most recent
    await names.admit(c, {"t"})  # b goes
    assert len(names) == 2
    await names.admit(a, {"t"})
    await names.admit(b, {"t"})
    assert redis.calls == [a, b, c, b]


async def test_concurrent_first_requests_of_a_device_share_one_memory() -> None:
    redis = FakeRedis({DEVICE: {"a"}})
    redis.delay = 0.01
    names = guard(redis, cap=2)
    outcomes = await asyncio.gather(
        names.admit(DEVICE, {"b"}), names.admit(DEVICE, {"c"}), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "TooManySensors"]
    assert len(names) == 1


class ErringRedis:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def hkeys(self, key: str) -> list[bytes]:
        raise self.error


@pytest.mark.parametrize(
    "error", [redis.ConnectionError("refused"), redis.ResponseError("LOADING"), OSError("reset")]
)
async def test_any_redis_failure_reading_a_devices_names_is_cache_unavailable(error) -> None:
    with pytest.raises(CacheUnavailable):
        await cache.asensor_names(ErringRedis(error), DEVICE)  # type: ignore[arg-type]


# ----- both paths of POST /sensors -----
class FakeIngest:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    async def submit(self, batch: dict[str, Any]) -> None:
        self.batches.append(batch)


def _settings() -> Settings:
    return Settings(secret_key="k" * 32, postgres_password="p" * 16, rabbitmq_password="r" * 16)


async def test_both_paths_refuse_a_new_name_beyond_the_cap_with_422_and_publish_nothing() -> None:
    app = app_module.create_app(_settings())
    state = State(_settings(), None, None, None, {})  # type: ignore[arg-type]
    ingest = FakeIngest()
    state.ingest = ingest  # type: ignore[assignment]
    state.sensor_names = guard(FakeRedis(), cap=2)
    app.state.iot = state
    token, device_id = security.new_device_token(), uuid.uuid4()
    state.device_cache[security.hash_device_token(token)] = (
        time.monotonic() + 60,
        {"id": device_id, "owner_id": uuid.uuid4()},
    )
    auth = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def post(sensor: str, value: Any) -> httpx.Response:
            body = {"readings": [{"sensor": sensor, "value": value}]}
            return await client.post("/sensors", json=body, headers=auth)

        assert (await post("a", 1)).status_code == 201  # the shortcut
        assert (await post("b", "2")).status_code == 201  # the full route (a number in text)
        for value in (3, "3"):  # a third name: refused on both paths
            r = await post("c", value)
            assert r.status_code == 422, r.text
            assert "at most 2" in r.json()["detail"]
        assert (await post("a", 4)).status_code == 201
    assert [b["readings"][0]["sensor"] for b in ingest.batches] == ["a", "b", "a"]


# ----- a limit on every list -----
# Routes that answer a list bounded otherwise than by `limit`, and why.
BOUNDED_OTHERWISE = {
    "/sensors/history": "(to - from) / step is at most IOT_HISTORY_MAX_POINTS (422 beyond)",
    "/commands/{command_id}": "one command's timeline: a few events per delivery attempt",
}


def _lists(spec: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The array properties of a response schema (after its $ref)."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return [n for n, p in schema.get("properties", {}).items() if p.get("type") == "array"]


def test_every_route_that_answers_a_list_has_a_limit_with_a_maximum() -> None:
    spec = app_module.create_app(_settings()).openapi()
    checked = []
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        ok = (get or {}).get("responses", {}).get("200", {})
        schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
        if not get or not _lists(spec, schema) or path in BOUNDED_OTHERWISE:
            continue
        limit = next((p for p in get.get("parameters", []) if p["name"] == "limit"), None)
        assert limit is not None, f"GET {path} answers a list without a limit"
        assert "maximum" in limit["schema"], f"GET {path}: limit has no maximum"
        assert limit["schema"]["maximum"] <= 1000 and "default" in limit["schema"], path
        checked.append(path)
    assert {"/sensors", "/devices", "/devices/{device_id}/commands", "/commands"} <= set(checked)
    assert set(BOUNDED_OTHERWISE) <= set(spec["paths"])
