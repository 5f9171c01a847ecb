"""Postgres connections: an async pool for the API, plain connections for workers and the CLI.

psycopg errors that mean "the database is not reachable or not answering" are translated into
:class:`iot.errors.DatabaseUnavailable` here, where they enter our code.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from iot.errors import DatabaseBusy, DatabaseUnavailable
from iot.settings import Settings

# Opening a connection costs four round trips (libpq's SSL request, then SCRAM's three
# exchanges): against a database 1.5 s away that is 6 s, and with 3 s no connection cut by a
# deadline could ever be replaced (docs/decisions.md, "Commands through a slow database").
# Pools open connections in the background, so a request never waits this long for one.
CONNECT_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 3.0  # the pool's default wait for a connection (callers pass their own)
STATEMENT_TIMEOUT_MS = 10_000
API_TIMEOUT_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 3.0  # twice a 1.5 s round trip: slow is not broken
POOL_WAIT_SECONDS = 3.0  # for a free pooled connection; longer under overload is a 503
OUTAGE_HOLD_SECONDS = 1.0  # after a failure, fail at once this long before trying again
# At the deadline, a query whose answer already came (unread: the replica's loop was busy) is
# given this much longer, at most LATE_READ_GRACES times; then it is cut like any other.
LATE_READ_GRACE_SECONDS = 0.5
LATE_READ_GRACES = 4
# A pooled connection that finished a use this recently, and on whose socket nothing arrived
# since (a server that ends a connection - restart, kill, reset - says so or closes it, and the
# socket turns readable), is handed out without the pool's check; one idle longer is checked
# first. The check is a round trip: a pool hands out its connections in turn, so with 1 s here
# nearly every use of a pool of 20 paid one, and against a database 1.5 s away a statement cost
# 3 s instead of 1.5 s (docs/decisions.md, "Commands through a slow database").
FRESH_SECONDS = 30.0
_outages: weakref.WeakKeyDictionary[AsyncConnectionPool, float] = weakref.WeakKeyDictionary()
# Each pool's count of failed connection attempts when last looked at, and when it last grew.
_connect_errors: weakref.WeakKeyDictionary[AsyncConnectionPool, tuple[int, float]] = (
    weakref.WeakKeyDictionary()
)
CONNECT_ERROR_MEMORY_SECONDS = 10.0  # a failed connect this recent makes a short pool an outage
# event-loop time at which each pooled connection last finished a use (``connection``)
_last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)
# monotonic time at which each pool's check of an idle connection last failed (``_check``)
_check_failed_at: weakref.WeakKeyDictionary[AsyncConnectionPool, float] = (
    weakref.WeakKeyDictionary()
)
# monotonic time at which each pool last had a use finish in time (``connection``)
_answered_at: weakref.WeakKeyDictionary[AsyncConnectionPool, float] = weakref.WeakKeyDictionary()


def _kwargs() -> dict[str, object]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        "application_name": "iot",
    }


def open_pool(settings: Settings, *, fixed: bool = False) -> AsyncConnectionPool:
    """An async pool that does not fail when Postgres is down at start (it retries).

    Its connections are in autocommit mode: most uses are one statement, which then costs one
    round trip instead of three (BEGIN, the statement, COMMIT). Several statements that must
    hold together run in ``async with conn.transaction()``.

    ``fixed`` (the API): all ``db_pool_size`` connections are opened at start and kept, so a
    sudden crowd (thousands of devices starting at once) finds them ready. A pool that grows
    on demand opens one connection at a time, each with its own authentication, and on a
    saturated machine requests waited past their turn while it did.
    """
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.db_pool_size if fixed else 1,
        max_size=settings.db_pool_size,
        kwargs={**_kwargs(), "row_factory": dict_row, "autocommit": True},
        timeout=POOL_TIMEOUT_SECONDS,
        reconnect_timeout=0,  # a failed refill gives up at once; the next request asks again
        open=False,
        check=_check,
    )


def sever(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Cut a connection's socket, so a query stuck on a database that stopped answering (no
    reply, not even a TCP reset) fails at once instead of waiting for ever. Safe from a timer
    thread or callback; the connection is broken afterwards and its pool drops it."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except (OSError, psycopg.Error):
        pass


def answered(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server's answer (or its end of the connection) waits unread on the
    connection's socket."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return bool(readable)


async def _check(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check of an idle connection before handing it out, bounded in time; skipped
    for one that finished a use within FRESH_SECONDS and has nothing waiting on its socket."""
    loop = asyncio.get_running_loop()
    if loop.time() - _last_used.get(conn, float("-inf")) < FRESH_SECONDS and not answered(conn):
        return
    unanswered = False

    def cut() -> None:
        nonlocal unanswered
        unanswered = True
        sever(conn)

    watchdog = loop.call_later(CHECK_TIMEOUT_SECONDS, cut)
    try:
        await AsyncConnectionPool.check_connection(conn)
    except Exception:
        pool = getattr(conn, "_pool", None)  # set by the pool before it checks
        if pool is not None:
            _check_failed_at[pool] = time.monotonic()
            if unanswered:
                # The path to the database dropped this idle connection without a word, so it
                # dropped its idle siblings too: drop them all now. Checked one by one, each
                # dead one would cost a request its whole wait (the check's timeout) and the
                # pool a back-off, and a replica stayed "down" about 8 s after the database
                # answered again (docs/decisions.md, "After a black hole").
                await pool.drain()
        raise
    finally:
        watchdog.cancel()


def _mark_down(pool: AsyncConnectionPool) -> None:
    _outages[pool] = time.monotonic() + OUTAGE_HOLD_SECONDS


def _answering(pool: AsyncConnectionPool) -> bool:
    """Whether another use of the pool finished within the last API_TIMEOUT_SECONDS: then a
    use cut at its deadline was slow by itself (several round trips to a slow database, a
    lock), not a sign of an outage, and the pool is not held down for everyone."""
    return time.monotonic() - _answered_at.get(pool, float("-inf")) < API_TIMEOUT_SECONDS


def _connecting_fails(pool: AsyncConnectionPool) -> bool:
    """Whether a pool that had no connection to give has none because the database is away
    (an outage) rather than because all it has are in use or it is still opening them: a
    connection attempt, or the check of an idle connection, failed within
    CONNECT_ERROR_MEMORY_SECONDS.

    The check counts because a pool whose idle connections all went stale spends its whole
    wait checking one against a database that does not answer (CHECK_TIMEOUT_SECONDS), then
    has "no connection": read as busy, that request was retried and the next ones waited for
    their own checks, and a request took 9 s and more to be told 503."""
    now = time.monotonic()
    if now - _check_failed_at.get(pool, float("-inf")) < CONNECT_ERROR_MEMORY_SECONDS:
        return True
    stats = pool.get_stats()
    errors = stats.get("connections_errors", 0)
    seen, last_failed = _connect_errors.get(pool, (0, float("-inf")))
    if errors > seen:
        last_failed = now
    _connect_errors[pool] = (errors, last_failed)
    short = stats.get("pool_size", 0) < (pool.max_size or 0)
    return short and now - last_failed < CONNECT_ERROR_MEMORY_SECONDS


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection; its use must finish within API_TIMEOUT_SECONDS of getting it (a
    database that stops answering must not hold a request for ever), the wait for it is bounded
    by POOL_WAIT_SECONDS. The deadline counted the wait too: against a slow database a request
    that queued for a connection had too little left for its round trip and was cut, which cut
    a working connection and made the queue longer.

    While the database is down, requests do not each wait for their own deadline: for
    OUTAGE_HOLD_SECONDS after a failure they fail at once, then the next one tries again. A
    use cut at its deadline counts as such a failure only when no other use of the pool
    finished in time lately (:func:`_answering`): against a slow database, one block of
    several round trips outliving its deadline failed every request of the replica for a
    second, and commands accepted in that second waited for the commands worker.

    At the deadline the connection's socket is cut rather than the task cancelled: a cancelled
    query makes psycopg ask the server to cancel it and wait for that too, which against a
    database that does not answer holds the request (and its pooled connection) ten seconds
    more. A query whose answer already waits unread at the deadline (the replica's own loop
    was too busy to read it) is not cut: an overloaded replica answers late, not 503.

    Raises:
        DatabaseUnavailable: Postgres cannot be reached or stopped answering.
    """
    if time.monotonic() < _outages.get(pool, 0.0):
        raise DatabaseUnavailable("database unavailable (failing at once while it is down)")
    loop = asyncio.get_running_loop()
    timed_out = False
    used: psycopg.AsyncConnection[Any] | None = None
    watchdogs: list[asyncio.TimerHandle] = []

    def expire(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal timed_out
        if len(watchdogs) <= LATE_READ_GRACES and answered(conn):
            # Postgres did answer: this replica's own event loop, busy with other requests,
            # has not read it yet. Cutting the connection would turn an overloaded replica
            # into an "outage" (503s for everyone, reconnections on a starved loop).
            watchdogs.append(loop.call_later(LATE_READ_GRACE_SECONDS, expire, conn))
            return
        timed_out = True
        sever(conn)

    try:
        # The outer timeout is a last resort only: the watchdog below ends a stuck query first.
        async with asyncio.timeout(API_TIMEOUT_SECONDS * 3):
            wait = min(POOL_WAIT_SECONDS, API_TIMEOUT_SECONDS)
            async with pool.connection(timeout=wait) as conn:
                used = conn
                watchdogs.append(loop.call_later(API_TIMEOUT_SECONDS, expire, conn))
                try:
                    yield conn
                finally:
                    for watchdog in watchdogs:
                        watchdog.cancel()
                    if not conn.broken and not timed_out:
                        _last_used[conn] = loop.time()
                        _answered_at[pool] = time.monotonic()
    except TimeoutError as exc:
        _mark_down(pool)
        raise DatabaseUnavailable("database unavailable (no answer in time)") from exc
    except PoolTimeout as exc:
        if not _connecting_fails(pool):
            # Every connection is busy (or the pool is still opening them): overload, not an
            # outage. Answer this request 503 but let the others keep trying (no fail-fast
            # hold).
            raise DatabaseBusy("database busy; retry later") from exc
        _mark_down(pool)
        raise DatabaseUnavailable("database unavailable (no connection)") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        if used is None or used.broken:  # the connection failed, not just this statement
            if not (timed_out and _answering(pool)):  # slow alone is not down (_answering)
                _mark_down(pool)
                if timed_out:  # no answer at all: its idle siblings are as dead (_check)
                    await pool.drain()
        if timed_out:
            raise DatabaseUnavailable("database unavailable (no answer in time)") from exc
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _not_granted(exc) from exc


def connect(url: str) -> psycopg.Connection[Any]:
    """A plain connection (workers, CLI).

    Raises:
        DatabaseUnavailable: Postgres cannot be reached.
    """
    try:
        return psycopg.connect(url, row_factory=dict_row, **_kwargs())  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


async def aconnect(url: str) -> psycopg.AsyncConnection[Any]:
    """A plain asyncio connection in autocommit, like the pool's (the CLI, for statements
    written for the API's pool).

    Raises:
        DatabaseUnavailable: Postgres cannot be reached.
    """
    try:
        return await psycopg.AsyncConnection.connect(
            url,
            row_factory=dict_row,  # type: ignore[arg-type]
            autocommit=True,
            **_kwargs(),  # type: ignore[arg-type]
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


@contextmanager
def translated() -> Iterator[None]:
    """Translate connection-level psycopg errors raised inside the block."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _not_granted(exc) from exc


def _not_granted(exc: psycopg.errors.InsufficientPrivilege) -> DatabaseUnavailable:
    """A privilege this process's role lacks (stack/roles.py): between a migration and the
    grants `iotctl up` applies after it, or a grant forgotten. Unavailable, not refused data:
    writers keep their messages and retry, the API answers 503, and nothing is lost."""
    return DatabaseUnavailable(f"database refused this role: {exc.diag.message_primary}")
