"""Operator commands used by the runbooks: queue depths and rebuilding the Redis cache."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import redis
import typer

from iot import cache, db
from iot.cli.common import fail, settings
from iot.stack.control import rabbitmq_api

cache_app = typer.Typer(help="The latest-readings cache in Redis.", no_args_is_help=True)


def queues() -> None:
    """RabbitMQ queue depths: ready and unacked messages and consumers, deepest first."""
    s = settings()
    try:
        r = rabbitmq_api(
            s,
            "GET",
            "queues/%2F",
            params={"columns": "name,messages_ready,messages_unacknowledged,consumers"},
        )
        r.raise_for_status()
    except httpx.HTTPError as exc:
        fail(f"RabbitMQ management API unreachable ({exc}); is rabbitmq up? `iotctl status`")
    rows: list[dict[str, Any]] = r.json()
    rows.sort(key=lambda q: -(q.get("messages_ready", 0) + q.get("messages_unacknowledged", 0)))
    typer.echo(f"{'QUEUE':<56} {'READY':>8} {'UNACKED':>8} {'CONSUMERS':>9}")
    for q in rows:
        typer.echo(
            f"{q['name']:<56} {q.get('messages_ready', 0):>8}"
            f" {q.get('messages_unacknowledged', 0):>8} {q.get('consumers', 0):>9}"
        )


@cache_app.command("rebuild")
def rebuild(
    device: Annotated[
        str | None, typer.Option(help="Only this device id (default: every device).")
    ] = None,
) -> None:
    """Refill Redis from Postgres: each device's latest readings (never replacing a newer
    value) and the device-owner map. Safe to run while the system is serving."""
    s = settings()
    client = redis.Redis.from_url(s.redis_direct_url, socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        fail(f"Redis unreachable ({exc}); start it first: `iotctl start redis`")
    devices = sensors = 0
    with db.connect(s.database_direct_url) as conn:
        owners = conn.execute(
            "SELECT id, owner_id FROM devices WHERE %s::uuid IS NULL OR id = %s::uuid",
            (device, device),
        ).fetchall()
        if owners:
            client.hset(
                cache.OWNERS_KEY, mapping={str(o["id"]): str(o["owner_id"]) for o in owners}
            )
        for o in owners:
            rows = conn.execute(
                "SELECT DISTINCT ON (sensor) sensor, value, ts FROM readings"
                " WHERE device_id = %s ORDER BY sensor, ts DESC",
                (o["id"],),
            ).fetchall()
            if rows:
                cache.store_latest(client, str(o["id"]), [dict(r) for r in rows])
                devices += 1
                sensors += len(rows)
    typer.echo(
        f"cache rebuilt: {len(owners)} device owners, latest values of {sensors} sensors"
        f" on {devices} devices"
    )
