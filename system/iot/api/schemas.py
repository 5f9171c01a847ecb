"""Request and response bodies. Requests forbid unknown fields and non-finite numbers."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)


def _storable(text: str) -> str:
    """Postgres stores no NUL character, and UTF-8 has no lone surrogates: refused here (422)
    rather than failing where the text is written, after a 2xx."""
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(_storable)]
SensorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_NUMBER = r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"  # JSON's number, written in a string


def _number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and not re.fullmatch(_NUMBER, value)):
        raise ValueError("must be a number (or a number in a string)")
    return value


# A number; a number in a string ("21.5") is taken too. true/false are not numbers.
ReadingValue = Annotated[
    float,
    BeforeValidator(_number),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": _NUMBER}]}),
]
MAX_READINGS = 1000
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


# ----- errors -----
class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """Every 4xx and 5xx answer: a message, or for input the schema refused, one issue per
    field."""

    detail: str | list[ValidationIssue]


_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
_BEARER = {"description": "Bearer", "schema": {"type": "string"}}
_PROBLEMS: dict[int, str] = {
    400: "the body is not JSON",
    401: "missing, malformed, expired or unknown credentials",
    403: "the wrong kind of caller: a person on a device route, or a device on a person's",
    404: "unknown, or another owner's (the two are not told apart)",
    409: "the command's status does not allow it (already final; to requeue: not dead)",
    413: "request body too large (nginx)",
    422: "input refused: out of range, malformed, or unknown fields",
    429: "too many requests for this credential (nginx), or the device's command queue is full",
    503: "unavailable, nothing was accepted: retry after Retry-After",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _BEARER},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error statuses, each answered with a :class:`Problem`."""
    return {
        code: {"model": Problem, "description": _PROBLEMS[code]}
        | ({"headers": _HEADERS[code]} if code in _HEADERS else {})
        for code in codes
    }


# Every route: nginx's per-credential rate limit and its answer while no replica is up.
EVERY_ROUTE = problems(429, 503)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


# ----- auth -----
class TokenRequest(Request):
    username: Annotated[Text, Field(min_length=1, max_length=64)]
    password: Annotated[Text, Field(min_length=1, max_length=1024)]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


# ----- devices -----
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Labels = Annotated[
    dict[LabelKey, Annotated[Text, Field(max_length=128)]],
    Field(max_length=16, description='up to 16, e.g. {"site": "north", "model": "esp32-s3"}'),
]


class DeviceCreate(Request):
    name: Annotated[Text, Field(min_length=1, max_length=128)]
    labels: Labels = Field(default_factory=dict)


class DeviceUpdate(Request):
    labels: Labels = Field(description="replaces every label of the device")


class Device(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
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
    value: ReadingValue
    ts: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="RFC 3339 with a time zone; when absent, the time the API received it"
        " (a device whose clock is not set yet). Readings are keyed (device, sensor, ts): a"
        " later reading with the same key replaces the value (last write wins).",
    )
    id: Annotated[Text | None, Field(max_length=64)] = None

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


# GET /sensors without device_id answers a page of devices (GET /devices' limit: the same
# default and maximum).
PAGE_DEFAULT = 100
PAGE_MAX = 1000


class LatestReadings(BaseModel):
    source: Literal["cache", "database"] = Field(
        description="cache: every device's readings came from Redis; database: at least one "
        "device's from Postgres (Redis down, or cold for it)"
    )
    readings: list[LatestReading]
    devices: list[uuid.UUID] = Field(
        default_factory=list,
        description="the devices this answer covers, ascending; one without readings has none "
        "in `readings`",
    )
    limit: int = Field(PAGE_DEFAULT, description="devices per page (with device_id: one device)")
    next: str | None = Field(
        None, description="pass as `after` to get the next page; null: this is the last"
    )


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


def small_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """At most MAX_ARGS_BYTES as JSON, and storable as Postgres jsonb."""
    if value is None:
        return None
    try:
        dumped = orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise ValueError("must be JSON with 64-bit integers and valid Unicode") from None
    if len(dumped) > MAX_ARGS_BYTES:
        raise ValueError(f"must be at most {MAX_ARGS_BYTES} bytes as JSON")
    if _has_nul(value):
        raise ValueError("must not contain NUL (\\u0000)")
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class CommandCreate(Request):
    device_id: uuid.UUID
    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    ttl: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS, description="seconds, 1 s to 48 h")] = 3600

    _args_size = field_validator("args")(small_json)


class CommandAck(Request):
    status: Literal["succeeded", "failed", "rejected"]
    result: dict[str, Any] | None = None

    _result_size = field_validator("result")(small_json)


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
