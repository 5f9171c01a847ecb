"""Latest readings in Redis: one hash per device, ``sensor -> "<ts ms>|<json>"``.

Redis holds only derived data (Postgres is the record), so a failure here is never a reason to
refuse a reading. The update is a Lua script that compares timestamps inside Redis, so an older
reading (a redelivery, a device flushing its buffer) never overwrites a newer one, whatever the
order in which workers run. A reading with the same timestamp replaces the cached one, as it
replaces the row in Postgres (last write wins; within one call, the later in the list).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from iot.errors import CacheUnavailable

KEY_PREFIX = "latest:"
OWNERS_KEY = "device-owners"  # hash device id -> owner id: authorise reads without Postgres
# hash device id -> unix ms when the worker last stored readings of the device: written in the
# same round trip as the readings, read by GET /devices (one HMGET per page)
SEEN_KEY = "device-last-seen"

# One script for every update of latest readings: KEYS[1] is SEEN_KEY, then one latest-readings
# hash per device batch; ARGV[1] is the time stored (unix ms; empty: last-seen is not touched, as
# when readings are copied back from Postgres), then per batch its number of readings and their
# (sensor, ts ms, payload) triples. An older reading never replaces a newer one.
UPDATE_MANY = f"""
local seen = ARGV[1]
local a = 2
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for j = 1, n do
    local ts = tonumber(ARGV[a + 1])
    local current = redis.call('HGET', KEYS[k], ARGV[a])
    local newer = true
    if current then
      local current_ts = tonumber(string.match(current, '^(-?%d+)|'))
      if current_ts and current_ts > ts then newer = false end
    end
    if newer then
      redis.call('HSET', KEYS[k], ARGV[a], ARGV[a + 1] .. '|' .. ARGV[a + 2])
    end
    a = a + 3
  end
  if seen ~= '' then
    redis.call('HSET', KEYS[1], string.sub(KEYS[k], {len(KEY_PREFIX) + 1}), seen)
  end
end
return 1
"""
UPDATE_MANY_SHA = hashlib.sha1(UPDATE_MANY.encode()).hexdigest()

_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def key(device_id: uuid.UUID | str) -> str:
    return f"{KEY_PREFIX}{device_id}"


def _ts(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def update_args(readings: Iterable[dict[str, Any]]) -> list[str]:
    """Flatten readings into the script's (sensor, ts ms, payload) triples."""
    args: list[str] = []
    for r in readings:
        ts = _ts(r["ts"])
        payload = orjson.dumps({"value": r["value"], "ts": ts.isoformat()}).decode()
        args += [r["sensor"], str(int(ts.timestamp() * 1000)), payload]
    return args


def decode(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sensor, value in raw.items():
        _, _, payload = value.partition(b"|")
        out[sensor.decode()] = orjson.loads(payload)
    return out


def _update_many(
    batches: Iterable[tuple[str | uuid.UUID, list[dict[str, Any]]]], seen: str
) -> tuple[list[str], list[str]]:
    """The keys and arguments of ``UPDATE_MANY`` for these device batches."""
    keys, args = [SEEN_KEY], [seen]
    for device_id, readings in batches:
        keys.append(key(device_id))
        args.append(str(len(readings)))
        args += update_args(readings)
    return keys, args


def sync_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def async_client(url: str, timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def store_latest(client: redis.Redis, device_id: str, readings: list[dict[str, Any]]) -> None:
    """Raises CacheUnavailable when Redis does not answer."""
    try:
        keys, args = _update_many([(device_id, readings)], seen="")
        client.eval(UPDATE_MANY, len(keys), *keys, *args)
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc


def forget_devices(client: redis.Redis, device_ids: list[str]) -> None:
    """Drop what Redis holds of deleted devices: latest readings, owner, last seen.

    Raises:
        CacheUnavailable: Redis does not answer.
    """
    if not device_ids:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.delete(*(key(d) for d in device_ids))
            pipe.hdel(OWNERS_KEY, *device_ids)
            pipe.hdel(SEEN_KEY, *device_ids)
            pipe.execute()
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc


def store_latest_many(client: redis.Redis, batches: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Update several devices' latest readings and last-seen entries in one call of one script
    (``UPDATE_MANY``): one command and one reply for a whole message, where a pipeline of one
    script call per device cost the worker more than its insert into Postgres.

    The script goes by its SHA1 (``EVALSHA``). Redis forgets scripts when it restarts; then the
    call loads it and runs again (the update is safe to repeat).

    Raises:
        CacheUnavailable: Redis does not answer.
    """
    if not batches:
        return
    keys, args = _update_many(batches, seen=str(int(time.time() * 1000)))
    try:
        try:
            client.evalsha(UPDATE_MANY_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(UPDATE_MANY)
            client.evalsha(UPDATE_MANY_SHA, len(keys), *keys, *args)
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc


async def astore_latest_many(
    client: aioredis.Redis, batches: list[tuple[uuid.UUID, list[dict[str, Any]]]]
) -> None:
    """Copy several devices' latest readings (read from Postgres) back into Redis in one call
    of ``UPDATE_MANY``, without touching their last-seen entries; a newer cached reading is
    kept.

    Raises:
        CacheUnavailable: Redis does not answer.
    """
    if not batches:
        return
    keys, args = _update_many(batches, seen="")
    try:
        await client.eval(UPDATE_MANY, len(keys), *keys, *args)
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc


async def asensor_names(client: aioredis.Redis, device_id: uuid.UUID | str) -> set[str]:
    """The sensor names in a device's latest-readings hash (empty: none cached).

    Raises:
        CacheUnavailable: Redis does not answer, or answers with an error.
    """
    try:
        names = await client.hkeys(key(device_id))
    except (redis.RedisError, OSError) as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc
    return {n.decode() if isinstance(n, bytes) else n for n in names}


async def aget_latest(
    client: aioredis.Redis, device_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, dict[str, Any]]]:
    """Cached latest readings; a device with no hash is absent from the answer (cold).

    Raises:
        CacheUnavailable: Redis does not answer.
    """
    try:
        async with client.pipeline(transaction=False) as pipe:
            for d in device_ids:
                pipe.hgetall(key(d))
            results = await pipe.execute()
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc
    return {d: decode(raw) for d, raw in zip(device_ids, results, strict=True) if raw}


async def aget_last_seen(
    client: aioredis.Redis, device_ids: list[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    """When readings of each device were last stored; a device never seen is absent.

    Raises:
        CacheUnavailable: Redis does not answer.
    """
    if not device_ids:
        return {}
    try:
        values = await client.hmget(SEEN_KEY, [str(d) for d in device_ids])
    except _ERRORS as exc:
        raise CacheUnavailable(f"cache unavailable: {exc.__class__.__name__}") from exc
    return {
        d: datetime.fromtimestamp(int(v) / 1000, UTC)
        for d, v in zip(device_ids, values, strict=True)
        if v is not None
    }
