"""Passwords, device tokens and people's access tokens.

- Passwords: argon2id (slow on purpose; only at login and user creation).
- Device tokens: 256 random bits, prefixed ``dvc_``, stored as a SHA-256 hash. A fast hash is
  right here because the token is random, not chosen by a person, and it is checked on every
  request a device makes.
- Access tokens for people: HS256 JWTs signed with ``IOT_SECRET_KEY``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from iot.errors import AuthError

DEVICE_TOKEN_PREFIX = "dvc_"
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_device_token() -> str:
    return DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_device_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class UserClaims:
    user_id: uuid.UUID
    username: str
    is_admin: bool


def issue_access_token(claims: UserClaims, secret: str, ttl_seconds: int) -> str:
    now = int(time.time())
    payload = {
        "sub": str(claims.user_id),
        "name": claims.username,
        "adm": claims.is_admin,
        "iat": now,
        "exp": now + ttl_seconds,
        "typ": "access",
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def read_access_token(token: str, secret: str) -> UserClaims:
    """Validate a person's access token.

    Raises:
        AuthError: expired, forged or malformed.
    """
    try:
        payload = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
        if payload.get("typ") != "access":
            raise AuthError("not an access token")
        return UserClaims(uuid.UUID(payload["sub"]), str(payload["name"]), bool(payload["adm"]))
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("access token expired; get a new one from POST /auth/token") from exc
    except (jwt.InvalidTokenError, KeyError, ValueError) as exc:
        raise AuthError("invalid access token") from exc
