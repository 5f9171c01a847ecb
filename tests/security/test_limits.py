"""Limits a hostile caller meets: wrong passwords for a user name are throttled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from iot import security
from iot.api.routes.auth import MAX_FAILURES

pytestmark = pytest.mark.integration


@pytest.fixture
def account(pg: psycopg.Connection) -> Iterator[tuple[str, str]]:
    name, password = f"u-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    pg.execute(
        "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, false)",
        (uuid.uuid4(), name, security.hash_password(password)),
    )
    yield name, password
    pg.execute("DELETE FROM users WHERE username = %s", (name,))


def login(api: httpx.Client, name: str, password: str) -> httpx.Response:
    return api.post("/auth/token", json={"username": name, "password": password})


def test_repeated_wrong_passwords_are_throttled_per_user_name(
    api: httpx.Client, account: tuple[str, str]
) -> None:
    name, password = account
    assert login(api, name, password).status_code == 200
    for _ in range(MAX_FAILURES):
        assert login(api, name, "wrong-password").status_code == 401
    r = login(api, name, password)  # now even the right password waits
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0
    assert "detail" in r.json()
    # Another name, from the same address, is not affected.
    assert login(api, f"nobody-{uuid.uuid4().hex[:8]}", "x").status_code == 401
