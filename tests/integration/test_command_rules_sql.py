"""The command rules exist twice: as pure functions (``lifecycle.claimable``, ``claim_outcome``,
``sweep_outcome``) and as the SQL production runs (``store.claim``'s one statement,
``store.sweep``'s two). This property test shows they agree.

Hypothesis draws a device's commands as histories leave them (any status, attempt count, expiry
and lease end before, at or after the statement's ``now()``, creation order with ties), a
``max_attempts`` and a claim's ``limit``. Each case is inserted into a scratch database built by
the product's migrations, inside a transaction (so ``now()`` is one instant, read first); the
production function runs; every row's status, attempt and lease, the answer, and the events
written are compared with what the pure functions say; the transaction is rolled back.

The one invariant the drawing keeps: a ``delivered`` row has a lease (the claim, the only way
into ``delivered``, sets one; every change out of it clears it). Other statuses are drawn with
and without one, reachable or not. Without that invariant the two differ on one state no history
reaches: a ``delivered`` row with no lease and every attempt used is dead for ``sweep_outcome``
and left alone by ``_SWEEP_DEAD`` (``leased_until <= now()`` is not true of NULL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import hypothesis
import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from psycopg.rows import dict_row

from iot.commands import lifecycle, store
from iot.settings import Settings
from loadtest.historybench import scratch_database

pytestmark = pytest.mark.integration

EXAMPLES = 400  # per statement; about 10 s each on the development machine
LEASE_SECONDS = 60
SWEEP_LIMIT = 1000  # more than a case's rows: the sweep's batch never cuts a case short
STATUSES = (
    lifecycle.QUEUED,
    lifecycle.DELIVERED,
    *lifecycle.ACK_STATUSES,
    lifecycle.EXPIRED,
    lifecycle.CANCELLED,
    lifecycle.DEAD,
)
MICROSECOND, SECOND, HOUR = 1, 1_000_000, 3_600_000_000
# Relative to the statement's now(): exactly then, a microsecond either side (the bounds are
# "<= now"), seconds and hours away, or anywhere within a day.
OFFSETS = st.one_of(
    st.sampled_from([0, MICROSECOND, -MICROSECOND, SECOND, -SECOND, HOUR, -HOUR]),
    st.integers(-24 * HOUR, 24 * HOUR),
).map(lambda us: timedelta(microseconds=us))


@dataclass(frozen=True)
class Drawn:
    status: str
    attempt: int
    created: int  # seconds after a base a day ago: the claim's order (ties broken by id)
    expires: timedelta  # expires_at - now()
    lease: timedelta | None  # leased_until - now(), or no lease


@st.composite
def drawn_command(draw: st.DrawFn) -> Drawn:
    status = draw(st.sampled_from(STATUSES))
    lease = OFFSETS if status == lifecycle.DELIVERED else st.none() | OFFSETS
    return Drawn(
        status=status,
        attempt=draw(st.integers(0, 7)),
        created=draw(st.integers(0, 5)),
        expires=draw(OFFSETS),
        lease=draw(lease),
    )


HISTORIES = st.lists(drawn_command(), min_size=1, max_size=12)
ATTEMPTS = st.integers(1, 6)


@dataclass
class Case:
    """One case as stored: each command's row before and after, and the events written."""

    now: datetime
    before: list[dict[str, Any]]
    after: dict[uuid.UUID, dict[str, Any]]
    events: list[dict[str, Any]]
    answer: Any


@pytest.fixture(scope="module")
def scratch(settings: Settings) -> Iterator[tuple[asyncio.Runner, psycopg.AsyncConnection]]:
    with scratch_database(settings, "iot_test_rules") as url, asyncio.Runner() as runner:
        conn = runner.run(
            psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
        )
        try:
            yield runner, conn
        finally:
            runner.run(conn.close())


def run_case(
    scratch: tuple[asyncio.Runner, psycopg.AsyncConnection],
    history: list[Drawn],
    statement: Callable[[psycopg.AsyncConnection, uuid.UUID], Awaitable[Any]],
) -> Case:
    runner, conn = scratch

    async def scenario() -> Case:
        device = uuid.uuid4()
        async with conn.transaction(force_rollback=True):
            now = (await (await conn.execute("SELECT now() AS now")).fetchone())["now"]
            before = [
                {
                    "id": uuid.uuid4(),
                    "status": d.status,
                    "attempt": d.attempt,
                    "created_at": now - timedelta(days=1) + timedelta(seconds=d.created),
                    "expires_at": now + d.expires,
                    "leased_until": None if d.lease is None else now + d.lease,
                }
                for d in history
            ]
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO commands (id, device_id, name, ttl_seconds, created_at,"
                    " expires_at, status, attempt, leased_until)"
                    " VALUES (%(id)s, %(device)s, 'blink', 60, %(created_at)s, %(expires_at)s,"
                    " %(status)s, %(attempt)s, %(leased_until)s)",
                    [{**row, "device": device} for row in before],
                )
            answer = await statement(conn, device)
            cur = await conn.execute("SELECT id, status, attempt, leased_until FROM commands")
            after = {r["id"]: r for r in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT command_id, device_id, status, attempt, at, detail FROM command_events"
            )
            events = list(await cur.fetchall())
        return Case(now, before, after, events, answer)

    return runner.run(scenario())


def event(row: dict[str, Any], status: str, attempt: int, now: datetime) -> tuple[Any, ...]:
    detail = {"reason": "max attempts"} if status == lifecycle.DEAD else {}
    return (row["id"], status, attempt, now, detail)


def events_of(case: Case) -> list[tuple[Any, ...]]:
    return sorted(
        ((e["command_id"], e["status"], e["attempt"], e["at"], e["detail"]) for e in case.events),
        key=str,
    )


COMMON = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
# The bounds themselves, whatever the random draws find: expiry and lease end exactly now().
AT_NOW = [
    Drawn(status, attempt, 0, timedelta(0), timedelta(0))
    for status in (lifecycle.QUEUED, lifecycle.DELIVERED)
    for attempt in (0, 5)
]


@COMMON
@given(history=HISTORIES, max_attempts=ATTEMPTS, limit=st.integers(1, 13))
@example(history=AT_NOW, max_attempts=5, limit=10)
def test_the_claim_statement_does_what_claim_outcome_says(
    scratch: tuple[asyncio.Runner, psycopg.AsyncConnection],
    history: list[Drawn],
    max_attempts: int,
    limit: int,
) -> None:
    async def claim(conn: psycopg.AsyncConnection, device: uuid.UUID) -> Any:
        rows, _ = await store.claim(conn, device, limit, LEASE_SECONDS, max_attempts)
        return rows

    case = run_case(scratch, history, claim)
    now = case.now
    takes = [r for r in case.before if lifecycle.claimable(r["status"], r["leased_until"], now)]
    picked = sorted(takes, key=lambda r: (r["created_at"], r["id"].int))[:limit]
    expected, answer, events = {}, [], []
    for row in case.before:
        status, attempt, lease = row["status"], row["attempt"], row["leased_until"]
        if row in picked:
            status = lifecycle.claim_outcome(attempt, row["expires_at"], now, max_attempts)
            if status == lifecycle.DELIVERED:
                attempt, lease = attempt + 1, now + timedelta(seconds=LEASE_SECONDS)
            else:
                lease = None
            events.append(event(row, status, attempt, now))
        expected[row["id"]] = {
            "id": row["id"],
            "status": status,
            "attempt": attempt,
            "leased_until": lease,
        }
    for row in picked:
        answer.append((row["id"], expected[row["id"]]["status"], expected[row["id"]]["attempt"]))

    assert case.after == expected
    assert [(r["id"], r["status"], r["attempt"]) for r in case.answer] == answer  # oldest first
    assert events_of(case) == sorted(events, key=str)


@COMMON
@given(history=HISTORIES, max_attempts=ATTEMPTS)
@example(history=AT_NOW, max_attempts=5)
def test_the_sweep_statements_do_what_sweep_outcome_says(
    scratch: tuple[asyncio.Runner, psycopg.AsyncConnection],
    history: list[Drawn],
    max_attempts: int,
) -> None:
    async def sweep(conn: psycopg.AsyncConnection, _: uuid.UUID) -> Any:
        return await store.sweep(conn, max_attempts, SWEEP_LIMIT)

    case = run_case(scratch, history, sweep)
    now = case.now
    expected, events = {}, []
    counts = {lifecycle.EXPIRED: 0, lifecycle.DEAD: 0}
    for row in case.before:
        status, attempt, lease = row["status"], row["attempt"], row["leased_until"]
        outcome = lifecycle.sweep_outcome(
            status, attempt, row["expires_at"], lease, now, max_attempts
        )
        if outcome is not None:
            status, lease = outcome, None
            counts[outcome] += 1
            events.append(event(row, status, attempt, now))
        expected[row["id"]] = {
            "id": row["id"],
            "status": status,
            "attempt": attempt,
            "leased_until": lease,
        }

    assert case.after == expected
    assert case.answer == (counts[lifecycle.EXPIRED], counts[lifecycle.DEAD])
    assert events_of(case) == sorted(events, key=str)


@pytest.mark.parametrize("mine", [True, False], ids=["own", "another device's"])
@pytest.mark.parametrize("outcome", lifecycle.ACK_STATUSES)
@pytest.mark.parametrize("status", STATUSES)
def test_the_ack_statement_does_what_on_ack_says(
    scratch: tuple[asyncio.Runner, psycopg.AsyncConnection], status: str, outcome: str, mine: bool
) -> None:
    """``store.ack``'s one statement, for every status and outcome, against
    ``lifecycle.on_ack``; an ack naming another device's command changes nothing."""
    lease = timedelta(seconds=30) if status == lifecycle.DELIVERED else None
    result = {"exit": 0}

    async def ack(conn: psycopg.AsyncConnection, device: uuid.UUID) -> Any:
        row = await (await conn.execute("SELECT id FROM commands")).fetchone()
        return await store.ack(conn, device if mine else uuid.uuid4(), row["id"], outcome, result)

    case = run_case(scratch, [Drawn(status, 2, 0, timedelta(hours=1), lease)], ack)
    (row,) = case.before
    change = lifecycle.on_ack(status, outcome)
    if not mine:
        change = lifecycle.Change(status, None)
    changed = change.status != status
    assert case.answer == (change.status if mine else None)
    assert case.after[row["id"]] == {
        "id": row["id"],
        "status": change.status,
        "attempt": 2,
        "leased_until": None if changed else row["leased_until"],
    }
    expected = [(row["id"], change.event, 2, case.now, {"result": result})] if change.event else []
    assert events_of(case) == expected
