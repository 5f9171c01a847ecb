"""POST /auth/token: a person's access token."""

from __future__ import annotations

from fastapi import APIRouter

from iot import db, security
from iot.api.deps import AppState
from iot.api.schemas import EVERY_ROUTE, TokenRequest, TokenResponse, problems
from iot.errors import AuthError
from iot.sql import users as users_sql

router = APIRouter(tags=["auth"], responses=EVERY_ROUTE)

# Compared against when the user does not exist, so both failures take the same time.
_DUMMY_HASH = security.hash_password("not-a-real-password")


@router.post("/auth/token", response_model=TokenResponse, responses=problems(400, 401, 413, 422))
async def issue_token(body: TokenRequest, state: AppState) -> TokenResponse:
    async with db.connection(state.pool) as conn:
        user = await users_sql.get_user_by_name(conn, body.username)
    valid = security.verify_password(user["password_hash"] if user else _DUMMY_HASH, body.password)
    if not user or not valid:
        raise AuthError("wrong user name or password")
    claims = security.UserClaims(user["id"], user["username"], user["is_admin"])
    ttl = state.settings.access_token_ttl_seconds
    token = security.issue_access_token(claims, state.settings.secret_key, ttl)
    return TokenResponse(access_token=token, expires_in=ttl)
