"""Least-privilege Postgres roles: each process connects as a role that can do its work and no
more (system/iot/stack/roles.py). Tried as each role, directly, the way a process would."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import errors

from iot import db
from iot.errors import DatabaseUnavailable
from iot.settings import Settings
from tests.integration.conftest import Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


@pytest.fixture
def connect(settings: Settings) -> Iterator[Callable[[str], psycopg.Connection]]:
    opened: list[psycopg.Connection] = []

    def open_as(role: str) -> psycopg.Connection:
        conn = psycopg.connect(settings.database_url_as(role), autocommit=True)
        opened.append(conn)
        return conn

    yield open_as
    for conn in opened:
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE readings",
        "DROP TABLE users CASCADE",
        "TRUNCATE commands",
        "TRUNCATE readings",
        "ALTER TABLE devices ADD COLUMN x int",
        "CREATE TABLE stolen (x int)",
        "ALTER TABLE users DISABLE TRIGGER ALL",
    ],
)
def test_the_api_cannot_change_or_empty_tables(
    connect: Callable[[str], psycopg.Connection], statement: str
) -> None:
    conn = connect("api")
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_api_reads_and_writes_rows(connect: Callable[[str], psycopg.Connection]) -> None:
    conn = connect("api")
    with conn.transaction(force_rollback=True):
        name = f"role-{uuid.uuid4().hex[:8]}"
        conn.execute(
            "INSERT INTO users (id, username, password_hash) VALUES (%s, %s, '-')",
            (uuid.uuid4(), name),
        )
        assert conn.execute("SELECT count(*) FROM users WHERE username = %s", (name,)).fetchone()
        conn.execute("DELETE FROM users WHERE username = %s", (name,))


_PEOPLE_AND_TOKENS = [
    "SELECT * FROM users",
    "SELECT password_hash FROM users",
    "SELECT token_hash FROM devices",
    "SELECT * FROM devices",
    "UPDATE devices SET name = 'x'",
    "DELETE FROM devices",
    "INSERT INTO users (id, username, password_hash) VALUES (gen_random_uuid(), 'x', '-')",
    "DROP TABLE readings",
    "TRUNCATE readings",
]
_OTHERS_TABLES = [
    ("sensors", "SELECT * FROM commands"),
    ("sensors", "DELETE FROM readings"),
    ("commandlog", "SELECT * FROM readings"),
    ("commandlog", "UPDATE commands SET status = 'dead'"),
    ("commandlog", "DELETE FROM command_events"),
]


@pytest.mark.parametrize(
    ("role", "statement"),
    [(r, s) for r in ("sensors", "commandlog") for s in _PEOPLE_AND_TOKENS] + _OTHERS_TABLES,
)
def test_the_workers_cannot_read_people_tokens_or_other_tables(
    connect: Callable[[str], psycopg.Connection], role: str, statement: str
) -> None:
    conn = connect(role)
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_each_process_connects_as_its_own_role(
    tenant: Callable[..., Person], pg: psycopg.Connection
) -> None:
    """A reading and a command go through the API, both workers and the database: each process
    did its part as its own role (only those roles have their passwords)."""
    person = tenant()
    device = person.new_device()
    assert device.post([reading()]).status_code == 201
    assert person.send(device).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="the reading stored")
    eventually(lambda: device.commands(wait=5), what="the command delivered")

    def users() -> set[str]:
        rows = pg.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'iot%%'"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
        return {r[0] for r in rows}

    owner = pg.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    expected = {f"{owner}_api", f"{owner}_sensors", f"{owner}_commandlog"}
    eventually(lambda: users() >= expected, what=f"connections as {sorted(expected)}")


def test_a_missing_privilege_is_unavailable_not_refused_data(settings: Settings) -> None:
    """Between a migration and the grants applied after it (or with a grant forgotten) a
    process meets a refusal: its writes retry and the API answers 503, as while Postgres is
    down, so nothing accepted is dropped."""
    with db.connect(settings.database_url_as("sensors")) as conn:
        with pytest.raises(DatabaseUnavailable, match="refused this role"), db.translated():
            conn.execute("SELECT username FROM users")
