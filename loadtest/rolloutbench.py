"""``iotctl bench rollout``: what the rollout driver costs per target, apart from any fleet.

It registers ``--devices`` devices for a throw-away user (straight into Postgres: the bench is
about sending, not registering), creates one rollout of ``set_interval`` to all of them in a
single phase at ``--rate`` devices per minute with no abort criterion that could stop it, and
follows ``GET /rollouts/{id}`` until every target was sent its command. The devices never
poll, so every command stays queued and the figures are the driver's and the command core's
alone: targets sent per second, and CPU milliseconds per target of each process of the stack
(the API replicas run the driver; RabbitMQ, the commands worker, Postgres and Redis carry the
commands). Afterwards the rollout is cancelled and the user deleted with its devices and
commands.

CPU per target holds on a busy machine far better than targets per second do.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import psycopg
import typer

from loadtest import workerbench
from loadtest.benchkit import cpu_per_request, create_user, fail, fmt, prepare

POLL_SECONDS = 0.5


def _register(conn: psycopg.Connection, user_id: uuid.UUID, n: int) -> None:
    conn.execute(
        "INSERT INTO devices (id, owner_id, name, token_hash)"
        " SELECT gen_random_uuid(), %s, 'rollout-bench-' || i, md5(random()::text || i)"
        " FROM generate_series(1, %s) i",
        (user_id, n),
    )


def _cancel(client: httpx.Client, conn: psycopg.Connection, rollout_id: str) -> None:
    """Cancel the rollout and wait (up to a minute) until a driver cancelled its commands."""
    client.post(f"/rollouts/{rollout_id}/cancel")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT commands_cancelled FROM rollouts WHERE id = %s", (rollout_id,)
        ).fetchone()
        if row is None or row[0]:
            return
        time.sleep(1)


def run(
    devices: Annotated[
        int, typer.Option(min=1, max=100_000, help="Targets of the rollout.")
    ] = 2000,
    rate: Annotated[
        float, typer.Option(min=1, max=100_000, help="The rollout's rate, devices per minute.")
    ] = 100_000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every send.")] = 600,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON to this file.")
    ] = None,
) -> None:
    """Measure the rollout driver: targets sent per second and CPU ms per target."""
    s, conn = prepare()
    username, user_id = f"bench-{uuid.uuid4().hex[:12]}", uuid.uuid4()
    client = httpx.Client(base_url=s.base_url, timeout=60)
    rollout_id = None
    try:
        client.headers["Authorization"] = f"Bearer {create_user(conn, client, user_id, username)}"
        typer.echo(f"registering {devices:,} devices for user {username} ...")
        _register(conn, user_id, devices)
        pids = workerbench.stack_pids()
        before, t0 = workerbench.stack_cpu(pids), time.monotonic()
        answer = client.post(
            "/rollouts",
            json={
                "command": {"name": "set_interval", "args": {"seconds": 30}, "ttl": 3600},
                "target": {"all": True},
                "phases": [100],
                "rate_per_minute": rate,
                "max_failure_share": 1.0,
                "min_finished": 1_000_000,
            },
        )
        if answer.status_code != 201:
            fail(f"POST /rollouts answered {answer.status_code}: {answer.text}")
        rollout_id = answer.json()["id"]
        typer.echo(f"rollout {rollout_id}: {devices:,} targets at {rate:,.0f}/min ...")
        sent, last_note = 0, t0
        while sent < devices:
            if time.monotonic() - t0 > timeout:
                fail(f"only {sent:,} of {devices:,} sent within {timeout:g} s")
            time.sleep(POLL_SECONDS)
            view = client.get(f"/rollouts/{rollout_id}", params={"limit": 1}).json()
            sent = int(view["sent"])
            if time.monotonic() - last_note >= 5:
                typer.echo(f"  {time.monotonic() - t0:6.1f} s: {sent:,} sent")
                last_note = time.monotonic()
        seconds = time.monotonic() - t0
        cpu = cpu_per_request(before, workerbench.stack_cpu(pids), devices)
    finally:
        if rollout_id is not None:
            _cancel(client, conn, rollout_id)
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    report: dict[str, Any] = {
        "targets": devices,
        "rate_asked_per_minute": rate,
        "seconds": round(seconds, 2),
        "targets_per_second": round(devices / seconds, 1),
        "cpu_ms_per_target": cpu,
    }
    typer.echo(
        f"\n{devices:,} targets sent in {seconds:.1f} s: {devices / seconds:,.1f} per second"
        f" (asked {rate / 60:,.1f})\n\n{'CPU ms per target':<28}"
    )
    for name, ms in cpu.items():
        if ms >= 0.005 or name == "stack":
            typer.echo(f"  {name:<26}{fmt(ms):>10}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
