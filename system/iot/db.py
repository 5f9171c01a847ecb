"""Postgres connections: an async pool for the API, plain connections for workers and the CLI.

psycopg errors that mean "the database is not reachable or not answering" are translated into
:class:`iot.errors.DatabaseUnavailable` here, where they enter our code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from iot.errors import DatabaseUnavailable
from iot.settings import Settings

CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT_MS = 10_000
API_TIMEOUT_SECONDS = 5.0


def _kwargs() -> dict[str, object]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        "application_name": "iot",
    }


def open_pool(settings: Settings) -> AsyncConnectionPool:
    """An async pool that does not fail when Postgres is down at start (it retries)."""
    return AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={**_kwargs(), "row_factory": dict_row},
        timeout=CONNECT_TIMEOUT_SECONDS,
        reconnect_timeout=0,  # keep retrying for ever in the background
        open=False,
        check=AsyncConnectionPool.check_connection,
    )


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection in a transaction; the whole block must finish within
    API_TIMEOUT_SECONDS (a database that stops answering must not hold a request for ever).

    Raises:
        DatabaseUnavailable: Postgres cannot be reached or stopped answering.
    """
    try:
        async with asyncio.timeout(API_TIMEOUT_SECONDS):
            async with pool.connection() as conn:
                yield conn
    except TimeoutError as exc:
        raise DatabaseUnavailable("database unavailable (no answer in time)") from exc
    except PoolTimeout as exc:
        raise DatabaseUnavailable("database unavailable (no connection)") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc


def connect(url: str) -> psycopg.Connection[Any]:
    """A plain connection (workers, CLI).

    Raises:
        DatabaseUnavailable: Postgres cannot be reached.
    """
    try:
        return psycopg.connect(url, row_factory=dict_row, **_kwargs())  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


@contextmanager
def translated() -> Iterator[None]:
    """Translate connection-level psycopg errors raised inside the block."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
