"""Rollouts: one command to many of a person's devices, in phases, at a rate, stopped by itself
when too many fail (docs/design.md §8 Rollouts; the rules: iot/rollouts/rules.py).

The target set is fixed when the rollout is created: devices registered or labelled later are
not part of it. Each targeted device gets at most one command of a rollout, whatever the
retries or crashes on the server's side; the device-facing contract is the one of every
command (at-least-once delivery, run-once ids, acks).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator, model_validator

from iot.api.deps import AppState, CurrentUser, State
from iot.api.schemas import (
    EVERY_ROUTE,
    MAX_TTL_SECONDS,
    CommandName,
    Labels,
    Request,
    problems,
    small_json,
)
from iot.rollouts.service import Person, Rollouts

# 403: a device's token (rollouts are people's)
router = APIRouter(tags=["rollouts"], responses=EVERY_ROUTE | problems(401, 403, 422))

MAX_TARGET_IDS = 10_000
DeviceIds = Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_TARGET_IDS)]


class RolloutCommand(Request):
    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    ttl: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)] = 3600

    _args_size = field_validator("args")(small_json)


class RolloutTarget(Request):
    """Exactly one of: device ids, a label selector (every label given must match), all."""

    device_ids: DeviceIds | None = None
    labels: Annotated[Labels, Field(min_length=1)] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one(self) -> RolloutTarget:
        given = [self.device_ids is not None, self.labels is not None, self.all]
        if sum(given) != 1:
            raise ValueError("give exactly one of device_ids, labels, all")
        return self


class RolloutCreate(Request):
    command: RolloutCommand
    target: RolloutTarget
    phases: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=10)] = [
        1.0,
        10.0,
        100.0,
    ]
    phase_unit: Literal["percent", "count"] = "percent"
    rate_per_minute: Annotated[float, Field(gt=0, le=100_000)] = 600.0
    phase_wait_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 0.0
    approval: bool = Field(False, description="pause at the end of each phase until approved")
    max_failure_share: Annotated[float, Field(ge=0, le=1)] = 0.2
    min_finished: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    start: bool = Field(True, description="false: created as scheduled, started by /start")

    @field_validator("phases")
    @classmethod
    def _rising(cls, phases: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(phases, phases[1:], strict=False)):
            raise ValueError("phases are cumulative: each larger than the one before")
        return phases


class RolloutPhase(BaseModel):
    index: int
    size: int
    counts: dict[str, int] = Field(description="command status -> devices (refused: none sent)")


class RolloutDecision(BaseModel):
    at: datetime
    actor: str
    decision: str
    reason: str


class RolloutFailure(BaseModel):
    device_id: uuid.UUID
    command_id: uuid.UUID | None
    status: str | None
    reason: str


class Rollout(BaseModel):
    id: uuid.UUID
    state: Literal["scheduled", "running", "paused", "completed", "aborted", "cancelled"]
    command: RolloutCommand
    target: dict[str, Any]
    total: int
    sent: int
    phase: int
    phases: list[RolloutPhase]
    rate_per_minute: float
    phase_wait_seconds: float
    approval: bool
    max_failure_share: float
    min_finished: int
    created_at: datetime
    finished_at: datetime | None
    decisions: list[RolloutDecision] = Field(description="the newest `limit`, oldest first")
    failed: list[RolloutFailure] = Field(description="the first `limit` devices that failed")
    failed_total: int = 0


class RolloutList(BaseModel):
    rollouts: list[Rollout]


def _core(state: State) -> Rollouts:
    assert state.rollouts is not None
    return state.rollouts


def _person(user: Any) -> Person:
    return Person(user.user_id, user.is_admin, user.username)


@router.post(
    "/rollouts", status_code=201, response_model=Rollout, responses=problems(400, 404, 413)
)
async def create_rollout(body: RolloutCreate, user: CurrentUser, state: AppState) -> Any:
    """Start a rollout (or schedule it, with ``start: false``). The targets are fixed now."""
    spec = body.model_dump(mode="json")
    spec["target"] = body.target.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if body.target.device_ids is not None:
        spec["target"]["device_ids"] = body.target.device_ids
    return await _core(state).create(_person(user), spec)


@router.get("/rollouts", response_model=RolloutList)
async def list_rollouts(
    user: CurrentUser, state: AppState, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> Any:
    """Your newest rollouts (an admin's: everyone's), without counts: see each one."""
    return {"rollouts": await _core(state).page(_person(user), limit)}


@router.get("/rollouts/{rollout_id}", response_model=Rollout, responses=problems(404))
async def get_rollout(
    rollout_id: uuid.UUID,
    user: CurrentUser,
    state: AppState,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="newest decisions and first failed devices")
    ] = 100,
) -> Any:
    """Counts per command status per phase, the decision log, the devices that failed."""
    return await _core(state).view(rollout_id, _person(user), limit)


def _action(action: str) -> Any:
    async def act(rollout_id: uuid.UUID, user: CurrentUser, state: AppState) -> Any:
        return await _core(state).act(rollout_id, _person(user), action)

    act.__name__ = f"{action}_rollout"
    return act


_DOCS = {
    "start": "Start a scheduled rollout.",
    "pause": "Pause: nothing more is sent until resumed (sent commands go on).",
    "resume": "Resume a paused rollout (one waiting for approval pauses again at once).",
    "approve": "Approve the next phase of a rollout paused at the end of a phase.",
    "cancel": "Cancel: nothing more is sent, and its commands not yet final are cancelled.",
}
for _name, _doc in _DOCS.items():
    router.add_api_route(
        f"/rollouts/{{rollout_id}}/{_name}",
        _action(_name),
        methods=["POST"],
        response_model=Rollout,
        responses=problems(404, 409),
        description=_doc + " 409 when it does not apply in the rollout's state.",
    )
