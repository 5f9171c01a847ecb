"""``iotctl cache``: the latest-readings cache in Redis; ``rebuild`` refills it from Postgres."""

from __future__ import annotations

from typing import Annotated

import redis
import typer

from iot import cache, db
from iot.cli.common import fail, settings
from iot.sql import readings as readings_sql

app = typer.Typer(help="The latest-readings cache in Redis.", no_args_is_help=True)


@app.command("rebuild")
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
