"""``iotctl rollouts``: list, show and steer rollouts from the operator's shell (every person's;
the web app and the API give each person their own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from iot import db
from iot.cli.common import fail, settings
from iot.errors import DatabaseUnavailable, TransitionRefused
from iot.rollouts import service, store

app = typer.Typer(
    help="Rollouts (one command to many devices in phases): list, show, pause, resume, "
    "approve the next phase, cancel.",
    no_args_is_help=True,
)
T = TypeVar("T")
RolloutId = Annotated[uuid.UUID, typer.Argument(help="The rollout's id (`iotctl rollouts list`).")]


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await db.aconnect(settings().database_direct_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except DatabaseUnavailable as exc:
        fail(f"{exc}; is postgres up? `iotctl status`")


async def _get(conn: Any, rollout_id: uuid.UUID) -> dict[str, Any]:
    row = await store.get(conn, rollout_id)
    if row is None:
        fail(f"no rollout {rollout_id}")
    return row


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['id']}  {r['state']:<9} {r['command_name']:<20} phase {r['phase'] + 1}/"
        f"{len(r['phase_ends'])}  sent {r['sent']}/{r['total']}  "
        f"created {r['created_at']:%Y-%m-%d %H:%M:%S}Z"
    )


@app.command("list")
def list_rollouts(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest first, at most.")] = 20,
) -> None:
    """The newest rollouts of everyone: state, command, phase, devices sent."""
    rows = _run(lambda conn: store.page(conn, None, limit))
    typer.echo(f"{len(rows)} rollout(s)")
    for r in rows:
        typer.echo("  " + _line(r))


@app.command()
def show(
    rollout_id: RolloutId,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Decisions and failures.")] = 20,
) -> None:
    """A rollout: counts per command status per phase, its decisions, the devices that failed."""

    async def work(conn: Any) -> dict[str, Any]:
        return await service.full_view(conn, await _get(conn, rollout_id), limit)

    v = _run(work)
    typer.echo(
        f"{v['id']}  {v['state']}  command {v['command']['name']} {v['command']['args']}"
        f"  target {v['target']}"
    )
    typer.echo(
        f"sent {v['sent']} of {v['total']}; {v['rate_per_minute']:g} devices/min; stops when more"
        f" than {v['max_failure_share']:.0%} of at least {v['min_finished']} finished fail"
    )
    for p in v["phases"]:
        current = "  <- now" if p["index"] == v["phase"] and v["state"] == "running" else ""
        counts = ", ".join(f"{k} {n}" for k, n in sorted(p["counts"].items())) or "nothing yet"
        typer.echo(f"  phase {p['index'] + 1}: {p['size']} devices: {counts}{current}")
    typer.echo("decisions:")
    for d in v["decisions"]:
        typer.echo(
            f"  {d['at']:%Y-%m-%d %H:%M:%S}Z  {d['actor']:<12} {d['decision']}  {d['reason']}"
        )
    if v["failed_total"]:
        typer.echo(f"failed: {v['failed_total']} device(s)")
        for f in v["failed"]:
            typer.echo(f"  {f['device_id']}  {f['status']}  {f['reason']}")


def _act(action: str) -> Callable[[uuid.UUID], None]:
    def command(rollout_id: RolloutId) -> None:
        async def work(conn: Any) -> str:
            return await service.apply(conn, await _get(conn, rollout_id), action, "iotctl")

        try:
            after = _run(work)
        except TransitionRefused as exc:
            fail(exc.detail)
        typer.echo(f"rollout {rollout_id}: {after}")

    command.__doc__ = _HELP[action]
    return command


_HELP = {
    "pause": "Pause a running rollout: nothing more is sent until it is resumed.",
    "resume": "Resume a paused rollout (one awaiting approval pauses again: approve it).",
    "approve": "Approve the next phase of a rollout paused at a phase's end.",
    "cancel": "Cancel a rollout; its commands not yet final are cancelled moments later "
    "(by an API replica's rollout driver).",
}
for _action in _HELP:
    app.command(_action)(_act(_action))
