"""``iotctl commands``: what is pending or dead for a device, and bringing dead commands back."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from iot import db
from iot.cli.common import fail, settings
from iot.commands import lifecycle, store
from iot.errors import DatabaseUnavailable, NotFound, TransitionRefused

app = typer.Typer(
    help="Operate devices' commands: list pending and dead ones, requeue dead ones.",
    no_args_is_help=True,
)


@app.command("list")
def list_commands(
    device_id: Annotated[uuid.UUID, typer.Argument(help="The device's id.")],
    status: Annotated[
        str, typer.Option(help="pending (queued or delivered), dead, or any status name")
    ] = "pending",
) -> None:
    """List a device's commands with the given status, oldest first (from Postgres, where
    commands live once the commands worker has stored them)."""
    s = settings()
    statuses = list(lifecycle.PENDING) if status == "pending" else [status]
    try:
        with db.connect(s.database_direct_url) as conn:
            rows = store.by_status(conn, device_id, statuses)
    except DatabaseUnavailable as exc:
        fail(f"{exc}; is postgres up? `iotctl status`")
    typer.echo(f"{len(rows)} {status} command(s)")
    for r in rows:
        lease = f"  leased until {r['leased_until']:%H:%M:%S}Z" if r["leased_until"] else ""
        typer.echo(
            f"  {r['id']}  {r['status']:<9} attempt {r['attempt']}  {r['name']:<20}"
            f" created {r['created_at']:%Y-%m-%d %H:%M:%S}Z{lease}"
        )


@app.command()
def requeue(
    device_id: Annotated[uuid.UUID, typer.Argument(help="The device's id.")],
    command_id: Annotated[
        list[uuid.UUID] | None,
        typer.Option("--id", help="A dead command to requeue (repeatable); default: all dead."),
    ] = None,
) -> None:
    """Give dead commands a fresh ttl and another round of attempts; the device's waiting poll
    gets them at once. Each is logged as ``queued`` again (detail ``requeued``). All or
    nothing: exit status 1, and nothing requeued, if any id is unknown or not dead."""
    s = settings()
    try:
        with db.connect(s.database_direct_url) as conn:
            rows = store.requeue(conn, device_id, command_id, by="iotctl")
    except DatabaseUnavailable as exc:
        fail(f"{exc}; is postgres up? `iotctl status`")
    except (NotFound, TransitionRefused) as exc:
        fail(exc.detail)
    if not rows:
        typer.echo("no dead commands")
    for r in rows:
        typer.echo(f"requeued {r['id']} ({r['name']})")
