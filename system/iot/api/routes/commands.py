"""Commands: people send and follow them; devices poll, run and ack them (docs/design.md
§4 HTTP API and §5 Commands)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response

from iot import db
from iot.api.access import visible_device_pending, visible_devices
from iot.api.deps import AppState, CurrentDevice, CurrentPrincipal, CurrentUser, State
from iot.api.schemas import (
    EVERY_ROUTE,
    Command,
    CommandAck,
    CommandCreate,
    CommandEvent,
    CommandPage,
    CommandStatus,
    DeliveredCommands,
    problems,
)
from iot.commands import store
from iot.commands.service import Commands
from iot.errors import Forbidden, InvalidInput, NotFound

router = APIRouter(tags=["commands"], responses=EVERY_ROUTE | problems(401, 422))
log = logging.getLogger(__name__)
# Every status a command can have (iot.commands.lifecycle): an unknown name in the filter is a
# typo, answered 422 rather than with an empty page.
StatusName = Literal[
    "queued", "delivered", "succeeded", "failed", "rejected", "expired", "cancelled", "dead"
]


def _core(state: State) -> Commands:
    assert state.commands is not None
    return state.commands


def _view(command: dict[str, Any], status: str) -> Command:
    return Command(
        id=command["id"],
        device_id=command["device_id"],
        name=command["name"],
        args=command["args"],
        status=status,
        created_at=command["created_at"],
        expires_at=command["expires_at"],
    )


@router.post(
    "/commands",
    status_code=201,
    response_model=Command,
    responses=problems(400, 403, 404, 409, 413),
)
async def send_command(
    body: CommandCreate,
    user: CurrentUser,
    state: AppState,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=128, description="Same key (per user), same command: safe retries"),
    ] = None,
) -> Command:
    """Queue a command for a device. 201 only after RabbitMQ confirmed it; 429 when the device
    has too many commands not yet final; 503 (with Retry-After) when the broker is unavailable:
    retry then, with the same Idempotency-Key to be sure the device gets it once."""
    # One statement before the publish (the device is the caller's, and its pending count);
    # the row's insert comes after RabbitMQ's confirm (Commands.send).
    pending = await visible_device_pending(state, user, body.device_id)
    command = await _core(state).send(
        user.user_id,
        body.device_id,
        body.name,
        body.args,
        body.ttl,
        idempotency_key,
        pending=pending,
    )
    return _view(command, "queued")


@router.get(
    "/commands",
    response_model=DeliveredCommands,
    responses=problems(403) | {204: {"description": "nothing arrived within `wait` seconds"}},
)
async def poll_commands(
    device: CurrentDevice,
    state: AppState,
    wait: Annotated[float, Query(ge=0, le=30, description="long-poll seconds")] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    lease: Annotated[
        float | None, Query(ge=1, le=3600, description="visibility timeout, seconds (default 60)")
    ] = None,
) -> Any:
    """The device's next commands, oldest first. Each is leased to the device: ack it before the
    lease ends, or it is delivered again with ``attempt`` + 1.

    A device may hold several polls at once (on any replica): all of them wait, and each
    command goes to exactly one of them; the others keep waiting (204 at the end of their
    wait). Unacked, a command comes again, with the next attempt, once its lease lapsed."""
    assert device.device_id is not None
    taken = await _core(state).poll(
        device.device_id, wait, limit, lease or state.settings.command_lease_seconds
    )
    if not taken:
        return Response(status_code=204)
    return DeliveredCommands.model_validate({"commands": taken})


@router.post(
    "/commands/{command_id}/ack",
    response_model=CommandStatus,
    responses=problems(400, 403, 404, 413),
)
async def ack_command(
    command_id: uuid.UUID, body: CommandAck, device: CurrentDevice, state: AppState
) -> CommandStatus:
    """Report the outcome. Repeating an ack is harmless; another device's command is a 404."""
    assert device.device_id is not None
    status = await _core(state).ack(device.device_id, command_id, body.status, body.result)
    return CommandStatus(id=command_id, status=status)


async def _owned_command(state: State, who: Any, command_id: uuid.UUID) -> dict[str, Any]:
    command = await _core(state).descriptor(command_id)
    if command is None:
        raise NotFound("no such command")
    await visible_devices(state, who, uuid.UUID(command["device_id"]))
    return command


@router.post(
    "/commands/{command_id}/cancel", response_model=CommandStatus, responses=problems(403, 404, 409)
)
async def cancel_command(
    command_id: uuid.UUID, user: CurrentUser, state: AppState
) -> CommandStatus:
    """Cancel a command not yet acked: it is never delivered (again). 409 once it is final."""
    command = await _owned_command(state, user, command_id)
    status = await _core(state).cancel(command, user.username)
    return CommandStatus(id=command_id, status=status)


@router.post(
    "/commands/{command_id}/requeue",
    response_model=CommandStatus,
    responses=problems(403, 404, 409),
)
async def requeue_command(
    command_id: uuid.UUID, user: CurrentUser, state: AppState
) -> CommandStatus:
    """Admins only: give a dead command (not acked in its attempts) a fresh ttl and another
    round of attempts. It is `queued` again, with a `queued` event saying who requeued it."""
    if not user.is_admin:
        raise Forbidden("only admins can requeue commands")
    command = await _owned_command(state, user, command_id)
    status = await _core(state).requeue(command, user.username)
    return CommandStatus(id=command_id, status=status)


def _from_row(row: dict[str, Any], events: list[dict[str, Any]] | None) -> Command:
    return Command(
        id=row["id"],
        device_id=row["device_id"],
        name=row["name"],
        args=row["args"],
        status=row["status"],
        attempt=row["attempt"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        result=row["result"],
        events=None if events is None else [CommandEvent(**e) for e in events],
    )


@router.get("/commands/{command_id}", response_model=Command, responses=problems(404))
async def get_command(command_id: uuid.UUID, who: CurrentPrincipal, state: AppState) -> Command:
    """A command's status and its whole event timeline."""
    command = await _owned_command(state, who, command_id)
    async with db.connection(state.pool) as conn:
        row, events = await store.command_and_events(conn, command_id)
    if row is None:  # accepted moments ago; the log has not stored it yet
        view = _view(command, "queued")
        view.events = []
        return view
    return _from_row(row, events)


def _parse_cursor(before: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, cid = before.rpartition("_")
        return datetime.fromisoformat(at), uuid.UUID(cid)
    except ValueError as exc:
        raise InvalidInput("before: not a cursor from a previous page") from exc


@router.get("/devices/{device_id}/commands", response_model=CommandPage, responses=problems(404))
async def device_commands(
    device_id: uuid.UUID,
    who: CurrentPrincipal,
    state: AppState,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        str | None, Query(max_length=128, description="cursor: `next` of the previous page")
    ] = None,
    status: Annotated[list[StatusName] | None, Query(description="only these statuses")] = None,
) -> CommandPage:
    """A device's command history, newest first, a page at a time."""
    await visible_devices(state, who, device_id)
    cursor = _parse_cursor(before) if before else None
    async with db.connection(state.pool) as conn:
        rows = await store.device_history(conn, device_id, limit, cursor, status)
    page = [_from_row(r, None) for r in rows]
    nxt = f"{rows[-1]['created_at'].isoformat()}_{rows[-1]['id']}" if len(rows) == limit else None
    return CommandPage(commands=page, next=nxt)
