"""The sensors worker's Redis write against the stack's Redis: the latest readings of every
device in a message and their `device-last-seen` entries go in one script call (one round trip),
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


def _record_commands(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every command the client sends (a pipeline is recorded as PIPELINE)."""
    sent: list[str] = []
    send = client.execute_command

    def recorded(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return send(*args, **kwargs)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        sent.append("PIPELINE")
        raise AssertionError("the update needs no pipeline")

    monkeypatch.setattr(client, "execute_command", recorded)
    monkeypatch.setattr(client, "pipeline", pipeline)
    return sent


def test_latest_readings_and_last_seen_of_a_message_are_one_command(client, monkeypatch):
    devices = [str(uuid.uuid4()), str(uuid.uuid4())]
    batches = [
        (devices[0], [{"sensor": "t", "value": 21.5, "ts": "2026-11-30T10:00:00+00:00"}]),
        (devices[1], [{"sensor": "rh", "value": 40, "ts": "2026-11-30T10:00:01+00:00"}]),
        # the first device again (two of its requests shared the message): older, then newer
        (
            devices[0],
            [
                {"sensor": "t", "value": 20.0, "ts": "2026-11-30T09:59:59+00:00"},
                {"sensor": "p", "value": 1013, "ts": "2026-11-30T10:00:02+00:00"},
            ],
        ),
    ]
    try:
        client.script_load(cache.UPDATE_MANY)  # as after the first call since Redis started
        sent = _record_commands(client, monkeypatch)
        before = int(time.time() * 1000)
        cache.store_latest_many(client, batches)
        after = int(time.time() * 1000)
        monkeypatch.undo()

        assert sent == ["EVALSHA"]  # one command, one round trip, for the whole message
        assert cache.decode(client.hgetall(cache.key(devices[0]))) == {
            "t": {"value": 21.5, "ts": "2026-11-30T10:00:00+00:00"},  # the older did not win
            "p": {"value": 1013, "ts": "2026-11-30T10:00:02+00:00"},
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
