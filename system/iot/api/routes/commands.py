"""Commands: people send and follow them; devices poll, run and ack them (DESIGN §3-§4)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from iot import db, messages
from iot.api import command_state, metrics
from iot.api.access import visible_devices
from iot.api.deps import AppState, CurrentDevice, CurrentPrincipal, CurrentUser, State
from iot.api.schemas import (
    Command,
    CommandAck,
    CommandCreate,
    CommandEvent,
    CommandPage,
    CommandStatus,
    DeliveredCommands,
)
from iot.errors import BrokerUnavailable, Conflict, DatabaseUnavailable, InvalidInput, NotFound
from iot.sql import commands as commands_sql

router = APIRouter(tags=["commands"])
log = logging.getLogger(__name__)
_IDEMPOTENCY_NS = uuid.UUID("1c7f6f0e-3f55-4f53-9d7b-55a1f2a0c0de")


def _deliveries(state: State) -> Any:
    assert state.deliveries is not None
    return state.deliveries


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


@router.post("/commands", status_code=201, response_model=Command)
async def send_command(
    body: CommandCreate,
    user: CurrentUser,
    state: AppState,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=128, description="Same key (per user), same command: safe retries"),
    ] = None,
) -> Command:
    """Queue a command for a device. 201 only after RabbitMQ confirmed it; 429 when the device's
    queue is full; 503 (with Retry-After) when the broker is unavailable: retry then, with the
    same Idempotency-Key to be sure the device gets it once."""
    await visible_devices(state, user, body.device_id)
    if idempotency_key:
        command_id = uuid.uuid5(_IDEMPOTENCY_NS, f"{user.user_id}:{idempotency_key}")
        try:
            existing = await command_state.descriptor(state, command_id)
        except DatabaseUnavailable:
            existing = None
        if existing is not None:
            return _view(existing, "queued")
    else:
        command_id = uuid.uuid4()
    now = datetime.now(UTC)
    command = {
        "id": str(command_id),
        "device_id": str(body.device_id),
        "owner_id": str(user.user_id),
        "name": body.name,
        "args": body.args,
        "ttl": body.ttl,
        "created_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=body.ttl)).isoformat(),
        "requeues": 0,
    }
    await state.publisher.publish_command(command, body.ttl)
    metrics.COMMANDS_ACCEPTED.inc()
    await command_state.remember(state, command)
    event = messages.command_event(command, "queued", now.isoformat())
    try:
        await state.publisher.publish_task(
            messages.COMMAND_LOG_QUEUE, messages.COMMAND_LOG_TASK, {"event": event}
        )
        metrics.COMMAND_EVENTS.labels("queued").inc()
    except BrokerUnavailable:
        # The command itself is durable in its queue; its later events carry its descriptor,
        # so the log still learns of it. Answering 503 now would invite a duplicate.
        log.warning("queued event of %s not logged", command_id)
    return _view(command, "queued")


@router.get(
    "/commands",
    response_model=DeliveredCommands,
    responses={204: {"description": "nothing arrived within `wait` seconds"}},
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
    lease ends, or it is delivered again with ``attempt`` + 1."""
    assert device.device_id is not None
    taken = await _deliveries(state).poll(
        str(device.device_id), wait, limit, lease or state.settings.command_lease_seconds
    )
    if not taken:
        return Response(status_code=204)
    return DeliveredCommands.model_validate({"commands": taken})


@router.post("/commands/{command_id}/ack", response_model=CommandStatus)
async def ack_command(
    command_id: uuid.UUID, body: CommandAck, device: CurrentDevice, state: AppState
) -> CommandStatus:
    """Report the outcome. Repeating an ack is harmless; another device's command is a 404."""
    assert device.device_id is not None
    status = await _deliveries(state).ack(
        str(device.device_id), str(command_id), body.status, body.result
    )
    return CommandStatus(id=command_id, status=status)


async def _owned_command(state: State, who: Any, command_id: uuid.UUID) -> dict[str, Any]:
    command = await command_state.descriptor(state, command_id)
    if command is None:
        raise NotFound("no such command")
    await visible_devices(state, who, uuid.UUID(command["device_id"]))
    return command


@router.post("/commands/{command_id}/cancel", response_model=CommandStatus)
async def cancel_command(
    command_id: uuid.UUID, user: CurrentUser, state: AppState
) -> CommandStatus:
    """Cancel a command not yet acked: it is never delivered (again). 409 once it is final."""
    command = await _owned_command(state, user, command_id)
    cid = str(command_id)
    final = (await command_state.finals(state, [cid])).get(cid)
    if final is None:
        try:
            async with db.connection(state.pool) as conn:
                row = await commands_sql.get_command(conn, command_id)
            if row and row["status"] in messages.TERMINAL:
                final = row["status"]
        except DatabaseUnavailable:
            pass  # the cache answered; that is enough to cancel
    if final is not None:
        raise Conflict(f"command already {final}")
    event = messages.command_event(
        command, "cancelled", datetime.now(UTC).isoformat(), detail={"by": user.username}
    )
    await state.publisher.publish_task(
        messages.COMMAND_LOG_QUEUE, messages.COMMAND_LOG_TASK, {"event": event}
    )
    metrics.COMMAND_EVENTS.labels("cancelled").inc()
    holds = await command_state.mark_final(state, cid, "cancelled")
    if holds != "cancelled":
        raise Conflict(f"command already {holds}")
    return CommandStatus(id=command_id, status="cancelled")


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


@router.get("/commands/{command_id}", response_model=Command)
async def get_command(command_id: uuid.UUID, who: CurrentPrincipal, state: AppState) -> Command:
    """A command's status and its whole event timeline."""
    command = await _owned_command(state, who, command_id)
    async with db.connection(state.pool) as conn:
        row = await commands_sql.get_command(conn, command_id)
        events = await commands_sql.events_of(conn, command_id) if row else []
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


@router.get("/devices/{device_id}/commands", response_model=CommandPage)
async def device_commands(
    device_id: uuid.UUID,
    who: CurrentPrincipal,
    state: AppState,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(description="cursor: `next` of the previous page")] = None,
    status: Annotated[list[str] | None, Query(description="only these statuses")] = None,
) -> CommandPage:
    """A device's command history, newest first, a page at a time."""
    await visible_devices(state, who, device_id)
    cursor = _parse_cursor(before) if before else None
    async with db.connection(state.pool) as conn:
        rows = await commands_sql.device_history(conn, device_id, limit, cursor, status)
    page = [_from_row(r, None) for r in rows]
    nxt = f"{rows[-1]['created_at'].isoformat()}_{rows[-1]['id']}" if len(rows) == limit else None
    return CommandPage(commands=page, next=nxt)
