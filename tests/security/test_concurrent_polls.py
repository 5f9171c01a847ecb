"""One device holding several long polls at once (a retry after a lost connection, two threads,
a copied token): every poll waits, and each command goes to exactly one of them (its lease);
the others go on waiting and answer 204 at the end of their wait (docs/security.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from iot.settings import Settings
from tests.integration.conftest import Device, Person, statuses

pytestmark = pytest.mark.integration
WAIT = 8


def _poll(url: str, device: Device, **query: float) -> httpx.Response:
    params = {"wait": WAIT, "limit": 10, **query}
    return httpx.get(f"{url}/commands", params=params, headers=device.headers, timeout=WAIT + 30)


def _waiting(
    pool: ThreadPoolExecutor, urls: list[str], device: Device, **query: float
) -> list[Future[httpx.Response]]:
    polls = [pool.submit(_poll, url, device, **query) for url in urls]
    time.sleep(1.5)  # let them all reach their wait (one that has not would claim at its start)
    return polls


def _where(settings: Settings) -> dict[str, list[str]]:
    one, two = (f"http://{settings.host}:{p}" for p in settings.api_ports[:2])
    return {
        "one replica": [settings.base_url, settings.base_url],  # nginx: one credential, one replica
        "two replicas": [one, two],
    }


@pytest.mark.parametrize("where", ["one replica", "two replicas"])
def test_a_command_goes_to_exactly_one_of_a_devices_polls(
    tenant: Callable[..., Person], settings: Settings, where: str
) -> None:
    person = tenant()
    device = person.new_device()
    with ThreadPoolExecutor(2) as pool:
        polls = _waiting(pool, _where(settings)[where], device)
        command = person.send(device, "open").json()
        answers = [p.result() for p in polls]
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 204], [a.text for a in answers]
    (got,) = [a.json()["commands"] for a in answers if a.status_code == 200]
    assert [(c["id"], c["attempt"]) for c in got] == [(command["id"], 1)]
    assert statuses(person, command["id"]).count("delivered") == 1


def test_two_commands_for_two_waiting_polls_each_go_once(
    tenant: Callable[..., Person], settings: Settings
) -> None:
    person = tenant()
    device = person.new_device()
    with ThreadPoolExecutor(2) as pool:
        polls = _waiting(pool, _where(settings)["two replicas"], device, limit=1)
        sent = {person.send(device, f"c{i}").json()["id"] for i in range(2)}
        got = [
            c["id"]
            for p in polls
            if (r := p.result()).status_code == 200
            for c in r.json()["commands"]
        ]
    # each command at most once; whatever a poll did not take stays for the next poll
    assert len(got) == len(set(got)) and set(got) <= sent
    rest = [c["id"] for c in device.commands(wait=0)]
    assert sorted(got + rest) == sorted(sent)
