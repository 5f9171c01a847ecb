"""POST /auth/token: a person's access token.

Wrong passwords are throttled per user name: after ``MAX_FAILURES`` within
``FAILURE_WINDOW_SECONDS`` the name is refused with 429 (and ``Retry-After``) until the window
ends, without checking the password, so a name's password cannot be guessed at nginx's
per-address rate. The count lives in Redis (shared by the replicas); while Redis does not
answer, logins are not throttled.
"""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, HTTPException

from iot import db, security
from iot.api.deps import AppState, State
from iot.api.schemas import EVERY_ROUTE, TokenRequest, TokenResponse, problems
from iot.errors import AuthError
from iot.sql import users as users_sql

router = APIRouter(tags=["auth"], responses=EVERY_ROUTE)
log = logging.getLogger(__name__)
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 900

# Compared against when the user does not exist, so both failures take the same time.
_DUMMY_HASH = security.hash_password("not-a-real-password")


def _failures_key(username: str) -> str:
    return f"login-failures:{username}"


async def _refuse_if_throttled(state: State, username: str) -> None:
    try:
        failures = int(await state.redis.get(_failures_key(username)) or 0)
        wait = await state.redis.ttl(_failures_key(username)) if failures >= MAX_FAILURES else 0
    except (redis.RedisError, OSError):
        return
    if failures >= MAX_FAILURES:
        raise HTTPException(
            429,
            "too many wrong passwords for this user name; retry later",
            headers={"Retry-After": str(max(int(wait), 1))},
        )


async def _count_failure(state: State, username: str) -> None:
    try:
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.incr(_failures_key(username))
            pipe.expire(_failures_key(username), FAILURE_WINDOW_SECONDS, nx=True)
            await pipe.execute()
    except (redis.RedisError, OSError):
        log.warning("could not count a failed login (Redis unavailable)")


@router.post("/auth/token", response_model=TokenResponse, responses=problems(400, 401, 413, 422))
async def issue_token(body: TokenRequest, state: AppState) -> TokenResponse:
    """An access token for a user name and password. 401 when they are wrong; 429 after
    ``MAX_FAILURES`` wrong passwords for the name within ``FAILURE_WINDOW_SECONDS``."""
    await _refuse_if_throttled(state, body.username)
    async with db.connection(state.pool) as conn:
        user = await users_sql.get_user_by_name(conn, body.username)
    valid = security.verify_password(user["password_hash"] if user else _DUMMY_HASH, body.password)
    if not user or not valid:
        await _count_failure(state, body.username)
        raise AuthError("wrong user name or password")
    claims = security.UserClaims(user["id"], user["username"], user["is_admin"])
    ttl = state.settings.access_token_ttl_seconds
    token = security.issue_access_token(claims, state.settings.secret_key, ttl)
    return TokenResponse(access_token=token, expires_in=ttl)
