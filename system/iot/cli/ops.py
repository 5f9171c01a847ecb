"""Operator commands used by the runbooks: queue depths and rebuilding the Redis cache."""

from __future__ import annotations

from typing import Annotated

import redis
import typer

from iot import cache, db
from iot.cli.common import fail, settings
from iot.sql import readings as readings_sql
from iot.stack.control import ControlError

cache_app = typer.Typer(help="The latest-readings cache in Redis.", no_args_is_help=True)


def queues() -> None:
    """RabbitMQ queue depths: ready and unacked messages and consumers, deepest first; each
    queue's type, the node that leads it and the nodes holding a copy (members of a quorum
    queue, synchronised mirrors of a classic one)."""
    from iot.stack import cluster

    s = settings()
    try:
        rows = cluster.queues(s)
    except ControlError as exc:
        fail(f"{exc}; is rabbitmq up? `iotctl status`")
    rows.sort(key=lambda q: -(q.get("messages_ready", 0) + q.get("messages_unacknowledged", 0)))
    short = {n.nodename: f"{n.index}" for n in s.rabbitmq_nodes}
    typer.echo(
        f"{'QUEUE':<48} {'READY':>8} {'UNACKED':>8} {'CONSUMERS':>9}  {'TYPE':<7} LEADER/COPIES"
    )
    for q in rows:
        lead = cluster.leader(q)
        copies = ",".join(short.get(n, n) for n in cluster.replicas(q))
        online = q.get("online")
        down = (
            ""
            if online is None
            else ",".join(short.get(n, n) for n in cluster.replicas(q) if n not in online)
        )
        typer.echo(
            f"{q['name']:<48} {q.get('messages_ready', 0):>8}"
            f" {q.get('messages_unacknowledged', 0):>8} {q.get('consumers', 0):>9}"
            f"  {q.get('type', ''):<7} {short.get(lead, lead)}/{copies}"
            + (f" (offline: {down})" if down else "")
        )
    if len(s.rabbitmq_nodes) > 1:
        typer.echo("nodes: " + ", ".join(f"{i}={n}" for n, i in short.items()))


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
            # the API's query: sensor to sensor along the key, not the device's whole history
            rows = conn.execute(readings_sql.LATEST, {"devices": [o["id"]]}).fetchall()
            if rows:
                cache.store_latest(client, str(o["id"]), [dict(r) for r in rows])
                devices += 1
                sensors += len(rows)
    typer.echo(
        f"cache rebuilt: {len(owners)} device owners, latest values of {sensors} sensors"
        f" on {devices} devices"
    )
