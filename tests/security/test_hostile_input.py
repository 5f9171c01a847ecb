"""Input that once got a 500 or was accepted and then could not be stored: each is a 422 now,
through nginx, and nothing of it is accepted. (The fuzzer in test_fuzz.py looks for more.)"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from iot.api.ingest import plain_readings
from tests.integration.conftest import Person

pytestmark = pytest.mark.integration


def _owner_and_device(tenant: Callable[..., Person]) -> tuple[Person, Any]:
    person = tenant()
    return person, person.new_device("hostile")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 1000, "offset": 7399002027637883944304640},  # past Postgres' bigint
        {"limit": 10**30},
        {"offset": -1},
    ],
)
def test_out_of_range_integers_in_a_query_are_422(
    tenant: Callable[..., Person], query: dict[str, int]
) -> None:
    person = tenant()
    r = person.api.get("/devices", params=query, headers=person.headers)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "query",
    [
        {"to": "0001-01-01T00:00:00Z"},  # an hour before it does not exist
        {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z", "step": "1d"},
        {"step": "9" * 5000},  # more digits than Python turns into an int
        {"step": "99999999d"},
    ],
)
def test_out_of_range_history_bounds_are_422(
    tenant: Callable[..., Person], query: dict[str, str]
) -> None:
    person, device = _owner_and_device(tenant)
    params = {"device_id": str(device.id), "sensor": "t", **query}
    r = person.api.get("/sensors/history", params=params, headers=person.headers)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "args",
    [
        {"n": 2**70},  # beyond 64 bits
        {"text": "a\u0000b"},  # Postgres' jsonb holds no NUL
        {"a\u0000": 1},
        {"big": "x" * 5000},  # over the 4096-byte limit
    ],
)
def test_command_args_that_cannot_be_stored_are_422(
    tenant: Callable[..., Person], args: dict[str, Any]
) -> None:
    person, device = _owner_and_device(tenant)
    r = person.send(device, args=args)
    assert r.status_code == 422, r.text
    assert device.commands() == []


def test_texts_with_nul_are_422(tenant: Callable[..., Person]) -> None:
    person, device = _owner_and_device(tenant)
    r = person.api.post("/devices", json={"name": "a\u0000b"}, headers=person.headers)
    assert r.status_code == 422, r.text
    r = person.api.post("/auth/token", json={"username": "a\u0000", "password": "x"})
    assert r.status_code == 422, r.text
    r = device.post([{"sensor": "t", "value": 1.0, "id": "a\u0000b"}])
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("value", [True, "abc", "1,5", None])
def test_a_reading_value_must_be_a_number(tenant: Callable[..., Person], value: Any) -> None:
    _, device = _owner_and_device(tenant)
    assert device.post([{"sensor": "t", "value": 1.0}]).status_code == 201  # token now cached
    r = device.post([{"sensor": "t", "value": value}])
    assert r.status_code == 422, r.text


def test_the_ingest_fast_path_leaves_a_nul_in_an_id_to_the_full_route() -> None:
    body = b'{"readings":[{"sensor":"t","value":1,"id":"a\\u0000b"}]}'
    assert plain_readings(body, datetime.now(UTC)) is None  # the full route answers 422


def test_an_idempotency_key_reused_for_another_command_is_refused(
    tenant: Callable[..., Person],
) -> None:
    person = tenant()
    first, second = person.new_device("first"), person.new_device("second")
    assert person.send(first, key="same-key").status_code == 201
    r = person.send(second, name="other", key="same-key")
    assert r.status_code in (409, 422), r.text
