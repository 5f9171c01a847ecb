"""Request and response bodies. Requests forbid unknown fields and non-finite numbers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

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
    ts: AwareDatetime = Field(description="RFC 3339 with a time zone")
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
