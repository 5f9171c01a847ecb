"""A replica's credential cache (``deps._credential``): entries of a fleet that connected
together lapse spread out, and a lapsed entry of a replica that hears every change answers at
once while a few background lookups refresh it, so a slow Postgres never holds a fleet's
readings up when their entries lapse (the slow-database game day: 300 devices' entries lapsing
within seconds queued 300 lookups of 1.5 s each on a pool of 20)."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from iot.api import deps
from iot.api.deps import State
from iot.errors import DatabaseUnavailable
from iot.settings import Settings

pytestmark = pytest.mark.anyio
TTL = 300.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowPostgres:
    """Stands in for ``deps._look_up``'s database round trip: counts lookups and how many ran
    at once, each taking ``seconds``."""

    def __init__(self, seconds: float = 0.05, answer: Any = "fresh") -> None:
        self.seconds, self.answer = seconds, answer
        self.calls = self.running = self.most = 0

    async def __call__(self, state: State, lookup: Any) -> Any:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.seconds)
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer
        finally:
            self.running -= 1


def _slow(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> SlowPostgres:
    """A SlowPostgres standing in for ``deps._look_up`` for the test."""
    postgres = SlowPostgres(**kw)
    monkeypatch.setattr(deps, "_look_up", postgres)
    return postgres


def _state(listening: bool) -> State:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        secret_key="k" * 32,
        postgres_password="p" * 16,
        rabbitmq_password="r" * 16,
        ha_netns=False,
        device_auth_cache_seconds=TTL,
    )
    state = State(settings, None, None, None, {})  # type: ignore[arg-type]
    state.commands = SimpleNamespace(wakeups=SimpleNamespace(listening=listening))  # type: ignore[assignment]
    return state


def _lapsed(state: State, key: str, ago: float = 1.0) -> tuple[float, Any]:
    entry = (time.monotonic() - ago, {"id": uuid.uuid4(), "was": "cached"})
    state.device_cache[key] = entry
    return entry


async def _credential(state: State, key: str) -> Any:
    return await deps._credential(state, key, lambda conn: None)  # type: ignore[arg-type,return-value]


async def test_a_lapsed_entry_answers_at_once_and_is_refreshed_behind_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres = _slow(monkeypatch, seconds=0.2)
    state = _state(listening=True)
    entry = _lapsed(state, "k")
    assert await _credential(state, "k") is entry[1]
    assert not state.revalidating["k"].done()  # answered before the lookup's 0.2 s were over
    await asyncio.gather(*state.revalidating.values())
    expires, value = state.device_cache["k"]
    assert value == "fresh" and postgres.calls == 1
    assert time.monotonic() + deps.TTL_SPREAD * TTL - 1 < expires <= time.monotonic() + TTL
    assert not state.revalidating


async def test_a_fleets_lapsed_entries_take_a_few_connections_not_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres = _slow(monkeypatch, seconds=0.02)
    state = _state(listening=True)
    keys = [f"device-{i}" for i in range(60)]
    for key in keys:
        _lapsed(state, key)
    # every device asks twice while its lookup waits: one lookup each, all answered from cache
    answers = await asyncio.gather(*(_credential(state, k) for k in keys + keys))
    assert all(a["was"] == "cached" for a in answers)
    await asyncio.gather(*state.revalidating.values())
    assert postgres.calls == 60
    assert postgres.most == deps.REVALIDATE_CONCURRENCY
    assert all(state.device_cache[k][1] == "fresh" for k in keys)
    # refreshed together, they lapse spread over a fifth of the ttl, not together again
    expiries = sorted(state.device_cache[k][0] for k in keys)
    assert expiries[-1] - expiries[0] > 0.05 * TTL


async def test_without_hearing_changes_a_lapsed_entry_is_looked_up_before_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres = _slow(monkeypatch)
    state = _state(listening=False)  # a rotation might go unnoticed: never answer from it
    _lapsed(state, "k")
    assert await _credential(state, "k") == "fresh"
    assert postgres.calls == 1 and not state.revalidating


async def test_an_entry_lapsed_longer_than_its_ttl_is_looked_up_before_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow(monkeypatch)
    state = _state(listening=True)
    _lapsed(state, "k", ago=TTL + 1)
    assert await _credential(state, "k") == "fresh"
    assert not state.revalidating


async def test_a_change_heard_during_the_refresh_is_not_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow(monkeypatch, seconds=0.1)
    state = _state(listening=True)
    device = _lapsed(state, "k")[1]
    await _credential(state, "k")
    await asyncio.sleep(0.02)
    deps.forget_devices(state.device_cache, str(device["id"]))  # its token was rotated
    await asyncio.gather(*state.revalidating.values())
    assert "k" not in state.device_cache


async def test_a_refresh_that_finds_the_token_gone_forgets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow(monkeypatch, answer=None)
    state = _state(listening=True)
    _lapsed(state, "k")
    await _credential(state, "k")
    await asyncio.gather(*state.revalidating.values())
    assert "k" not in state.device_cache


async def test_a_refresh_that_fails_keeps_the_entry_for_the_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow(monkeypatch, answer=DatabaseUnavailable("down"))
    state = _state(listening=True)
    entry = _lapsed(state, "k")
    assert await _credential(state, "k") is entry[1]
    await asyncio.gather(*state.revalidating.values())
    assert state.device_cache["k"] is entry and not state.revalidating
