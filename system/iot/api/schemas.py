"""Request and response bodies. Requests forbid unknown fields and non-finite numbers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SensorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
MAX_READINGS = 1000
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


# ----- auth -----
class TokenRequest(Request):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


# ----- devices -----
class DeviceCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=128)]


class Device(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    created_at: datetime
    token_rotated_at: datetime
    last_seen: datetime | None = Field(
        None, description="when readings of the device were last stored; null: never (or unknown)"
    )
    online: bool | None = Field(
        None, description="last_seen within the online window (120 s); null when unknown"
    )


class DeviceWithToken(BaseModel):
    id: uuid.UUID
    name: str
    token: str = Field(description="Shown once; only its hash is stored.")


class DeviceList(BaseModel):
    devices: list[Device]
    limit: int
    offset: int


# ----- sensors -----
class Reading(Request):
    sensor: SensorName
    value: float
    ts: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="RFC 3339 with a time zone; when absent, the time the API received it"
        " (a device whose clock is not set yet). Readings are keyed (device, sensor, ts): a"
        " later reading with the same key replaces the value (last write wins).",
    )
    id: Annotated[str | None, Field(max_length=64)] = None

    @field_validator("ts")
    @classmethod
    def _plausible(cls, ts: datetime) -> datetime:
        now = datetime.now(UTC)
        if ts < EARLIEST or ts > now + MAX_FUTURE:
            raise ValueError("ts must be after 2000-01-01 and at most one day ahead of now")
        return ts


class ReadingsIn(Request):
    readings: Annotated[list[Reading], Field(min_length=1, max_length=MAX_READINGS)]


class ReadingsAccepted(BaseModel):
    accepted: int


class LatestReading(BaseModel):
    device_id: uuid.UUID
    sensor: str
    value: float
    ts: datetime


class LatestReadings(BaseModel):
    source: Literal["cache", "database"]
    readings: list[LatestReading]


class HistoryPoint(BaseModel):
    ts: datetime
    avg: float
    min: float
    max: float
    count: int


class History(BaseModel):
    device_id: uuid.UUID
    sensor: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    step_seconds: float
    points: list[HistoryPoint]


# ----- commands -----
CommandName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
MAX_ARGS_BYTES = 4096
MAX_TTL_SECONDS = 48 * 3600


def _small_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(orjson.dumps(value)) > MAX_ARGS_BYTES:
        raise ValueError(f"must be at most {MAX_ARGS_BYTES} bytes as JSON")
    return value


class CommandCreate(Request):
    device_id: uuid.UUID
    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    ttl: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS, description="seconds, 1 s to 48 h")] = 3600

    _args_size = field_validator("args")(_small_json)


class CommandAck(Request):
    status: Literal["succeeded", "failed", "rejected"]
    result: dict[str, Any] | None = None

    _result_size = field_validator("result")(_small_json)


class DeliveredCommand(BaseModel):
    id: uuid.UUID
    name: str
    args: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    attempt: int


class DeliveredCommands(BaseModel):
    commands: list[DeliveredCommand]


class CommandEvent(BaseModel):
    status: str
    at: datetime
    attempt: int
    detail: dict[str, Any]


class Command(BaseModel):
    id: uuid.UUID
    device_id: uuid.UUID
    name: str
    args: dict[str, Any]
    status: str
    attempt: int = 0
    created_at: datetime
    expires_at: datetime
    result: dict[str, Any] | None = None
    events: list[CommandEvent] | None = None


class CommandStatus(BaseModel):
    id: uuid.UUID
    status: str


class CommandPage(BaseModel):
    commands: list[Command]
    next: str | None = Field(None, description="pass as `before` to get the next page")
