"""Dependencies shared by the routes: state, the caller's identity, ownership checks."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from iot import db, security
from iot.api.auth_cache import cached_device as cached_device  # read by the ASGI shortcuts
from iot.api.broker import Publisher

if TYPE_CHECKING:
    from iot.api.ingest import Coalescer
    from iot.api.sensor_names import SensorNames
    from iot.commands.service import Commands
    from iot.rollouts.service import Rollouts
from iot.errors import AuthError, DatabaseBusy, DatabaseUnavailable, Forbidden
from iot.settings import Settings
from iot.sql import devices as devices_sql
from iot.sql import users as users_sql


def forget_devices(cache: dict[str, tuple[float, dict[str, Any]]], device_id: str | None) -> None:
    """Drop a device's cached token (None: every device's), after a rotation or deletion."""
    if device_id is None:
        cache.clear()
        return
    for key, (_, device) in list(cache.items()):
        if str(device["id"]) == device_id:
            cache.pop(key, None)


@dataclass
class State:
    settings: Settings
    pool: AsyncConnectionPool
    publisher: Publisher
    redis: aioredis.Redis
    device_cache: dict[str, tuple[float, dict[str, Any]]]
    commands: Commands | None = None
    ingest: Coalescer | None = None
    sensor_names: SensorNames | None = None  # the cap on sensors per device; None: no cap
    rollouts: Rollouts | None = None
    # credentials being looked up again in the background (``_credential``), by cache key
    revalidating: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    revalidations: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(REVALIDATE_CONCURRENCY)
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person (user) or a device."""

    kind: str  # "user" | "device"
    user_id: uuid.UUID  # for a device: its owner
    is_admin: bool = False
    device_id: uuid.UUID | None = None
    username: str = ""

    @property
    def owner_filter(self) -> uuid.UUID | None:
        """The owner to restrict queries to; None for admins (they see all)."""
        return None if self.is_admin else self.user_id


async def get_state(request: Request) -> State:
    # async: FastAPI runs a plain-def dependency in its thread pool, on every request.
    return request.app.state.iot  # type: ignore[no-any-return]


AppState = Annotated[State, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False, description="A person's access token or a device token")
DEVICE_CACHE_MAX = 100_000
STALE_SECONDS = 3600.0
# An entry lives its ttl times a random factor in [TTL_SPREAD, 1]: the entries of a fleet that
# connected together do not lapse together.
TTL_SPREAD = 0.8
# Lookups of lapsed entries running in the background at once, per replica: refreshing the
# cache never takes more of the pool than this from the requests.
REVALIDATE_CONCURRENCY = 2


BUSY_LOOKUP_ATTEMPTS = 2


async def _look_up(
    state: State,
    lookup: Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, Any] | None]],
) -> dict[str, Any] | None:
    """Run ``lookup`` on a pooled connection. A pool whose connections are all in use (thousands
    of devices starting at once, each one's first request looking its token up) gets a second
    wait before the request is answered 503: a device told to retry costs more requests than
    one that waits a little longer.

    Raises:
        DatabaseUnavailable: Postgres is down, or the pool stayed busy through both waits.
    """
    attempt = 1
    while True:
        try:
            async with db.connection(state.pool) as conn:
                return await lookup(conn)
        except DatabaseBusy:
            if attempt >= BUSY_LOOKUP_ATTEMPTS:
                raise
            attempt += 1


async def _credential(
    state: State,
    key: str,
    lookup: Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, Any] | None]],
    during_outage: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """What a credential stands for (None: nothing), from this replica's cache or ``lookup``.

    Entries live long while the replica hears changes (rotation, deletion, a person changed:
    every replica forgets the entry at once), briefly while it cannot. While Postgres is
    unavailable an entry seen within STALE_SECONDS keeps working, else ``during_outage()``
    answers.

    Raises:
        DatabaseUnavailable: Postgres is down, nothing is cached and no ``during_outage``.
    """
    now = time.monotonic()
    hit = state.device_cache.get(key)
    if hit and hit[0] > now:
        return hit[1]
    if hit and _watched(state) and now - hit[0] < state.settings.device_auth_cache_seconds:
        # Lapsed while this replica hears every change (a rotation or deletion removes the
        # entry at once, a lost listener empties the cache): still right. Answer from it and
        # look it up again behind the request, a few at a time, so that a fleet's entries
        # lapsing together never wait on a slow Postgres together (each lookup one round trip;
        # at 1.5 s each, 300 devices at once had queued past the pool's wait).
        _revalidate(state, key, lookup)
        return hit[1]
    try:
        found = await _look_up(state, lookup)
    except DatabaseUnavailable:
        if hit and now - hit[0] < STALE_SECONDS:
            return hit[1]
        if during_outage is None:
            raise
        return during_outage()
    return _remember(state, key, found)


def _watched(state: State) -> bool:
    """Whether this replica hears credential changes now (Postgres NOTIFY)."""
    return state.commands is not None and state.commands.wakeups.listening


def _remember(state: State, key: str, found: dict[str, Any] | None) -> dict[str, Any] | None:
    """Cache what a lookup found under ``key`` (nothing: forget the key); returns ``found``."""
    if found is None:
        state.device_cache.pop(key, None)
        return None
    if len(state.device_cache) >= DEVICE_CACHE_MAX:
        state.device_cache.clear()
    ttl = (
        state.settings.device_auth_cache_seconds
        if _watched(state)
        else state.settings.device_auth_cache_unwatched_seconds
    )
    state.device_cache[key] = (time.monotonic() + ttl * random.uniform(TTL_SPREAD, 1.0), found)
    return found


def _revalidate(
    state: State,
    key: str,
    lookup: Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, Any] | None]],
) -> None:
    """Look ``key`` up again in the background (once at a time per key, at most
    REVALIDATE_CONCURRENCY lookups at once). A failed lookup leaves the entry as it is: the
    next request past it tries again, and past its grace the request path looks it up."""
    if key in state.revalidating:
        return

    async def again() -> None:
        try:
            async with state.revalidations:
                lapsed = state.device_cache.get(key)
                if lapsed is None or lapsed[0] > time.monotonic():
                    return  # forgotten (a change) or refreshed meanwhile
                found = await _look_up(state, lookup)
            if state.device_cache.get(key) is lapsed:  # no change arrived during the lookup
                _remember(state, key, found)
        except DatabaseUnavailable:
            return
        finally:
            state.revalidating.pop(key, None)

    state.revalidating[key] = asyncio.get_running_loop().create_task(again())


async def _device_by_token(state: State, token: str) -> dict[str, Any]:
    """The device a token belongs to (cached under its hash). While Postgres is unavailable a
    device seen within STALE_SECONDS keeps working (devices must keep posting readings through
    a database outage); a token rotated or deleted in the meantime stops working once Postgres
    answers again.

    Raises:
        AuthError: unknown token.
        DatabaseUnavailable: Postgres is down and the device is not in the cache.
    """
    token_hash = security.hash_device_token(token)
    device = await _credential(
        state, token_hash, lambda conn: devices_sql.find_by_token_hash(conn, token_hash)
    )
    if device is None:
        raise AuthError("unknown device token")
    return device


async def _person(state: State, claims: security.UserClaims) -> dict[str, Any]:
    """The person a valid access token names, as Postgres knows them now: a deleted person's
    token is refused and a changed admin flag holds at once (cached under ``user:<id>``; a
    trigger announces the change, migration 0006). While Postgres is unavailable and the
    person is not cached, the token is taken as it stands, so people can still read what
    Redis serves during an outage.

    Raises:
        AuthError: the person no longer exists.
    """
    person = await _credential(
        state,
        f"user:{claims.user_id}",
        lambda conn: users_sql.get_user(conn, claims.user_id),
        lambda: {"id": claims.user_id, "username": claims.username, "is_admin": claims.is_admin},
    )
    if person is None:
        raise AuthError("this person no longer exists")
    return person


async def get_principal(
    state: AppState,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Raises AuthError (401) without valid credentials."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    token = credentials.credentials
    if token.startswith(security.DEVICE_TOKEN_PREFIX):
        device = await _device_by_token(state, token)
        return Principal("device", device["owner_id"], device_id=device["id"])
    claims = security.read_access_token(token, state.settings.secret_key)
    person = await _person(state, claims)
    return Principal("user", person["id"], person["is_admin"], username=person["username"])


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_device_principal(principal: CurrentPrincipal) -> Principal:
    if principal.kind != "device":
        raise Forbidden("this route is for devices; use a device token")
    return principal


async def get_user_principal(principal: CurrentPrincipal) -> Principal:
    if principal.kind != "user":
        raise Forbidden("this route is for people; use an access token from POST /auth/token")
    return principal


CurrentDevice = Annotated[Principal, Depends(get_device_principal)]
CurrentUser = Annotated[Principal, Depends(get_user_principal)]
