"""Fixtures for the security tests: the integration tests' stack fixtures, and people who are
removed with everything they made (devices, so their readings and commands) when a test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest

from tests.integration.conftest import Person, api, make_person, pg, settings, stack

__all__ = ["api", "make_person", "pg", "settings", "stack"]


@pytest.fixture
def tenant(
    make_person: Callable[..., Person], api: httpx.Client, pg: psycopg.Connection
) -> Iterator[Callable[..., Person]]:
    """Make a person (``tenant(admin=True)`` an admin); each is deleted afterwards with every
    device they own, through the API so that readings, commands and cached state go too."""
    made: list[Person] = []

    def make(admin: bool = False) -> Person:
        person = make_person(admin)
        made.append(person)
        return person

    yield make
    for person in made:
        owned = pg.execute(
            "SELECT d.id FROM devices d JOIN users u ON u.id = d.owner_id WHERE u.username = %s",
            (person.name,),
        ).fetchall()
        for (device_id,) in owned:
            r = api.delete(f"/devices/{device_id}", headers=person.headers)
            assert r.status_code in (204, 404), r.text
        pg.execute("DELETE FROM users WHERE username = %s", (person.name,))
