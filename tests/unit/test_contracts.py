"""Unit tests (no network) of what the API promises about input, tokens and messages."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from iot import cache, messages, security
from iot.api.routes.sensors import parse_step
from iot.api.schemas import ReadingsIn
from iot.errors import AuthError, InvalidInput
from iot.settings import Settings

NOW = datetime.now(UTC).isoformat()


def one(**fields):
    return {"readings": [{"sensor": "t", "value": 1.0, "ts": NOW, **fields}]}


@pytest.mark.parametrize(
    "bad",
    [
        one(value=float("nan")),
        one(value=float("inf")),
        one(sensor="a b"),
        one(sensor="x" * 65),
        one(colour="red"),
        one(ts="2026-01-01T00:00:00"),
        one(id="x" * 65),
        {"readings": []},
        {"readings": one()["readings"] * 1001},
        {**one(), "more": 1},
    ],
)
def test_invalid_readings_are_rejected(bad):
    with pytest.raises(ValidationError):
        ReadingsIn.model_validate(bad)


def test_valid_readings_pass_with_time_zones_kept():
    body = ReadingsIn.model_validate(one(sensor="Temp_1.a-b", id="abc"))
    assert body.readings[0].ts.tzinfo is not None
    assert len(ReadingsIn.model_validate({"readings": one()["readings"] * 1000}).readings) == 1000


@pytest.mark.parametrize(
    "text,seconds", [("60", 60), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800)]
)
def test_step_parsing(text, seconds):
    assert parse_step(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "fast", "5w", ""])
def test_bad_steps_are_invalid_input(text):
    with pytest.raises(InvalidInput):
        parse_step(text)


def test_device_tokens_are_random_and_stored_as_hashes():
    a, b = security.new_device_token(), security.new_device_token()
    assert a != b and a.startswith("dvc_") and len(a) > 40
    assert security.hash_device_token(a) == security.hash_device_token(a)
    assert a not in security.hash_device_token(a)


def test_access_tokens_round_trip_and_refuse_forgeries():
    claims = security.UserClaims(uuid.uuid4(), "alice", True)
    token = security.issue_access_token(claims, "k" * 32, 60)
    assert security.read_access_token(token, "k" * 32) == claims
    with pytest.raises(AuthError):
        security.read_access_token(token, "another-secret-key-of-32-chars!!")
    with pytest.raises(AuthError, match="expired"):
        security.read_access_token(security.issue_access_token(claims, "k" * 32, -10), "k" * 32)


def test_passwords_are_hashed_with_argon2():
    h = security.hash_password("correct horse")
    assert h.startswith("$argon2") and security.verify_password(h, "correct horse")
    assert not security.verify_password(h, "wrong") and not security.verify_password("junk", "x")


def test_cache_payload_round_trip_keeps_timestamp_order_key():
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    args = cache.update_args([{"sensor": "t", "value": 2.5, "ts": ts.isoformat()}])
    assert args[0] == "t" and int(args[1]) == int(ts.timestamp() * 1000)
    decoded = cache.decode({b"t": f"{args[1]}|{args[2]}".encode()})
    assert decoded == {"t": {"value": 2.5, "ts": ts.isoformat()}}


def test_celery_message_has_the_shape_workers_expect():
    body, headers, task_id = messages.celery_message(messages.SENSORS_TASK, {"batch": {"x": 1}})
    args, kwargs, embed = orjson.loads(body)
    assert args == [] and kwargs == {"batch": {"x": 1}} and set(embed) >= {"callbacks", "chain"}
    assert headers["task"] == messages.SENSORS_TASK and headers["id"] == task_id
    assert headers["root_id"] == task_id and headers["retries"] == 0


@pytest.mark.parametrize("secret", ["", "change-me", "short"])
def test_settings_refuse_placeholder_secrets(secret):
    s = Settings(secret_key=secret, postgres_password="p" * 20, rabbitmq_password="r" * 20)
    with pytest.raises(RuntimeError, match="IOT_SECRET_KEY"):
        s.require_secrets()


def test_settings_accept_ports_as_a_comma_list(monkeypatch):
    monkeypatch.setenv("IOT_API_PORTS", "9001,9002,9003")
    assert Settings().api_ports == [9001, 9002, 9003]


def test_access_token_lifetime_is_in_the_token():
    claims = security.UserClaims(uuid.uuid4(), "bob", False)
    import jwt

    payload = jwt.decode(
        security.issue_access_token(claims, "k" * 32, 120), "k" * 32, algorithms=["HS256"]
    )
    assert 119 <= payload["exp"] - int(time.time()) <= 120


@pytest.mark.parametrize(
    "query,wait",
    [
        (b"", 0.0),
        (b"wait=0", 0.0),
        (b"wait=0&limit=10&lease=30", 0.0),
        (b"wait=0.0&limit=100", 0.0),
        (b"wait=25&limit=5", 25.0),
        (b"wait=30", 30.0),
        (b"wait=31", None),
        (b"wait=-1", None),
        (b"limit=0", None),
        (b"limit=101", None),
        (b"lease=0", None),
        (b"wait=soon", None),
        (b"other=1", None),
    ],
)
def test_only_plainly_valid_polls_take_the_shortcut(query, wait):
    from iot.api.shortcut import plain_wait

    assert plain_wait(query) == wait


def test_a_woken_poll_keeps_its_other_parameters_with_the_time_left():
    from urllib.parse import parse_qs

    from iot.api.shortcut import plain_wait, with_wait

    query = with_wait(b"limit=5&wait=10&lease=30", 7.25)
    assert parse_qs(query.decode()) == {"limit": ["5"], "lease": ["30"], "wait": ["7.250"]}
    assert plain_wait(query) == 7.25
