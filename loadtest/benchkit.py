"""What the benches share: the stack's first checks, a throw-away user, CPU per request."""

from __future__ import annotations

import secrets
import uuid
from typing import Any, NoReturn

import httpx
import psycopg
import typer

from iot import security
from iot.settings import Settings, get_settings
from loadtest import wrk


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def prepare() -> tuple[Settings, psycopg.Connection]:
    """Before any setup: wrk is installed (else how to install it), the API answers through
    nginx and Postgres takes a connection (returned, for the bench's user and its checks)."""
    try:
        wrk.binary()
    except wrk.WrkError as exc:
        fail(str(exc))
    get_settings.cache_clear()
    s = get_settings()
    try:
        httpx.get(f"{s.base_url}/ping", timeout=5).raise_for_status()
        conn = psycopg.connect(s.database_direct_url, autocommit=True, connect_timeout=5)
    except (httpx.HTTPError, psycopg.Error) as exc:
        fail(f"the stack does not answer ({exc}); start it with `iotctl up`")
    return s, conn


def create_user(
    conn: psycopg.Connection, client: httpx.Client, user_id: uuid.UUID, username: str
) -> str:
    """Insert the bench's (non-admin) user straight into Postgres; return its access token."""
    password = secrets.token_urlsafe(24)
    conn.execute(
        "INSERT INTO users (id, username, password_hash, is_admin, max_devices)"
        " VALUES (%s, %s, %s, false, 10000000)",  # no device limit for the bench's fleet
        (user_id, username, security.hash_password(password)),
    )
    answer = client.post("/auth/token", json={"username": username, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"


def cpu_per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """CPU milliseconds per request of each stack process (and ``stack``: all of them) between
    two readings of :func:`workerbench.stack_cpu`; processes whose CPU went down (restarted
    meanwhile) are left out."""
    if requests <= 0:
        return {}
    out = {
        name: round((after[name] - before[name]) * 1000 / requests, 3)
        for name in sorted(after)
        if name in before and after[name] >= before[name]
    }
    out["stack"] = round(sum(out.values()), 3)
    return out
