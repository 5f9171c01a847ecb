"""The sensors worker's Redis write against the stack's Redis: the latest readings of every
device in a message and their `device-last-seen` entries go in one pipeline (one round trip),
so GET /devices can say when each device last reported at no cost to device requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from iot import cache
from iot.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(settings.redis_direct_url, socket_timeout=5)
    yield r
    r.close()


def _record_round_trips(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands of each pipeline the client executes; a command sent on its own fails."""
    sent: list[list[str]] = []
    make_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        execute = pipe.execute

        def recorded(*a: Any, **k: Any) -> Any:
            sent.append([str(command[0]).upper() for command, _ in pipe.command_stack])
            return execute(*a, **k)

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe

    def alone(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{args[0]} sent outside the pipeline")

    monkeypatch.setattr(client, "pipeline", pipeline)
    monkeypatch.setattr(client, "execute_command", alone)
    return sent


def test_latest_readings_and_last_seen_are_written_in_one_pipeline(client, monkeypatch):
    devices = [str(uuid.uuid4()), str(uuid.uuid4())]
    batches = [
        (devices[0], [{"sensor": "t", "value": 21.5, "ts": "2026-11-30T10:00:00+00:00"}]),
        (devices[1], [{"sensor": "rh", "value": 40, "ts": "2026-11-30T10:00:01+00:00"}]),
    ]
    try:
        client.script_load(cache.UPDATE_LATEST)  # as after the first call since Redis started
        sent = _record_round_trips(client, monkeypatch)
        before = int(time.time() * 1000)
        cache.store_latest_many(client, batches)
        after = int(time.time() * 1000)
        monkeypatch.undo()

        assert sent == [["EVALSHA", "EVALSHA", "HSET"]]  # one round trip for both devices
        assert cache.decode(client.hgetall(cache.key(devices[0]))) == {
            "t": {"value": 21.5, "ts": "2026-11-30T10:00:00+00:00"}
        }
        assert set(cache.decode(client.hgetall(cache.key(devices[1])))) == {"rh"}
        seen = client.hmget(cache.SEEN_KEY, devices)
        assert all(v is not None and before <= int(v) <= after for v in seen), seen
    finally:
        client.delete(*(cache.key(d) for d in devices))
        client.hdel(cache.SEEN_KEY, *devices)


def test_after_redis_forgot_the_script_the_update_loads_it_and_still_lands(client):
    device = str(uuid.uuid4())
    reading = {"sensor": "t", "value": 7.0, "ts": "2026-11-30T10:00:00+00:00"}
    try:
        client.script_flush()  # what a Redis restart does
        cache.store_latest_many(client, [(device, [reading])])
        assert cache.decode(client.hgetall(cache.key(device))) == {
            "t": {"value": 7.0, "ts": "2026-11-30T10:00:00+00:00"}
        }
    finally:
        client.delete(cache.key(device))
        client.hdel(cache.SEEN_KEY, device)
