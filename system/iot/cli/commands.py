"""``iotctl commands``: what is pending or dead for a device, and bringing dead commands back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import orjson
import pika
import typer

from iot import db, messages
from iot.cli.common import fail, settings
from iot.settings import Settings
from iot.sql import commands as commands_sql
from iot.stack.control import rabbitmq_api

app = typer.Typer(
    help="Operate device command queues: list pending and dead commands, requeue dead ones.",
    no_args_is_help=True,
)

PENDING = ["queued", "delivered"]


def _queue_depth(s: Settings, device_id: uuid.UUID) -> dict[str, Any] | None:
    name = messages.command_queue(device_id)
    try:
        r = rabbitmq_api(s, "GET", f"queues/%2F/{name}", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


@app.command("list")
def list_commands(
    device_id: Annotated[uuid.UUID, typer.Argument(help="The device's id.")],
    status: Annotated[
        str, typer.Option(help="pending (queued or delivered), dead, or any status name")
    ] = "pending",
) -> None:
    """List a device's commands with the given status (from the command log in Postgres), and
    the depth of its RabbitMQ queue."""
    s = settings()
    statuses = PENDING if status == "pending" else [status]
    with db.connect(s.database_direct_url) as conn:
        rows = commands_sql.by_status(conn, device_id, statuses)
    depth = _queue_depth(s, device_id)
    if depth is None:
        typer.echo(f"queue {messages.command_queue(device_id)}: not found or broker unreachable")
    else:
        typer.echo(
            f"queue {depth['name']}: {depth.get('messages_ready', 0)} ready,"
            f" {depth.get('messages_unacknowledged', 0)} unacked"
        )
    typer.echo(f"{len(rows)} {status} command(s)")
    for r in rows:
        typer.echo(
            f"  {r['id']}  {r['status']:<9} attempt {r['attempt']}  {r['name']:<20}"
            f" created {r['created_at']:%Y-%m-%d %H:%M:%S}Z"
        )


@app.command()
def requeue(
    device_id: Annotated[uuid.UUID, typer.Argument(help="The device's id.")],
    command_id: Annotated[
        list[uuid.UUID] | None,
        typer.Option("--id", help="A dead command to requeue (repeatable); default: all dead."),
    ] = None,
) -> None:
    """Put dead commands back on the device's queue with a fresh ttl and attempt count.

    Each is logged as ``queued`` again (detail ``requeued``). Exit status 1 if any could not be
    requeued."""
    s = settings()
    with db.connect(s.database_direct_url) as conn:
        if command_id:
            rows = [
                r
                for r in commands_sql.get_many(conn, command_id)
                if str(r["device_id"]) == str(device_id)
            ]
            missing = {str(c) for c in command_id} - {str(r["id"]) for r in rows}
            if missing:
                fail(f"not commands of device {device_id}: {', '.join(sorted(missing))}")
        else:
            rows = commands_sql.by_status(conn, device_id, ["dead"])
        counts = {str(r["id"]): _requeue_count(conn, r["id"]) for r in rows}
    not_dead = [str(r["id"]) for r in rows if r["status"] != "dead"]
    if not_dead:
        fail(f"only dead commands can be requeued; not dead: {', '.join(not_dead)}")
    if not rows:
        typer.echo("no dead commands")
        return
    params = pika.URLParameters(
        f"amqp://{s.rabbitmq_user}:{s.rabbitmq_password}@{s.host}:{s.rabbitmq_port}/"
    )
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(
            messages.command_queue(device_id),
            durable=True,
            arguments=dict(messages.COMMAND_QUEUE_ARGS),
        )
        for r in rows:
            _requeue_one(channel, r, counts[str(r["id"])] + 1)
            typer.echo(f"requeued {r['id']} ({r['name']})")
    finally:
        connection.close()


def _requeue_count(conn: Any, command_id: uuid.UUID) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM command_events WHERE command_id = %s"
        " AND status = 'queued' AND detail ? 'requeued'",
        (command_id,),
    ).fetchone()
    return int(row["n"])


def _requeue_one(channel: Any, row: dict[str, Any], requeues: int) -> None:
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=row["ttl_seconds"])
    command = commands_sql.descriptor_from_row(row, requeues, expires_at)
    # The event first: a command back in its queue must already be "queued" in the log.
    event = messages.command_event(
        command,
        "queued",
        now.isoformat(),
        kind=f"requeued:{requeues}",
        detail={"requeued": requeues, "by": "iotctl"},
    )
    body, headers, task_id = messages.celery_message(messages.COMMAND_LOG_TASK, {"event": event})
    channel.basic_publish(
        messages.EXCHANGE,
        messages.COMMAND_LOG_QUEUE,
        body,
        pika.BasicProperties(
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            correlation_id=task_id,
        ),
        mandatory=True,
    )
    channel.basic_publish(
        "",
        messages.command_queue(row["device_id"]),
        orjson.dumps(command),
        pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=command["id"],
            expiration=str(row["ttl_seconds"] * 1000),
        ),
        mandatory=True,
    )
