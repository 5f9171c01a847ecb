"""The loopback services that hold data or control ask for credentials: Redis (requirepass),
Flower, Prometheus and Alertmanager (basic auth). Their passwords are random, in
var/secrets.env, never on a command line (test_exposure.py)."""

from __future__ import annotations

import socket

import httpx
import pytest
import redis

from iot.settings import Settings
from iot.stack.control import Supervisor, prometheus_api
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration


def _raw_redis(port: int, command: bytes, host: str) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(256)


@pytest.mark.parametrize("which", ["redis_port", "proxy_redis_port"])
@pytest.mark.parametrize("command", [b"PING\r\n", b"GET x\r\n", b"KEYS *\r\n", b"CONFIG GET *\r\n"])
def test_redis_refuses_commands_without_the_password(
    stack: Supervisor, settings: Settings, which: str, command: bytes
) -> None:
    """Directly and through toxiproxy (the path our processes take)."""
    answer = _raw_redis(getattr(settings, which), command, settings.host)
    assert answer.startswith(b"-NOAUTH"), answer


def test_redis_refuses_a_wrong_password(stack: Supervisor, settings: Settings) -> None:
    client = redis.Redis(host=settings.host, port=settings.redis_port, password="not-the-one")
    with pytest.raises(redis.AuthenticationError):
        client.ping()


def test_redis_answers_with_the_password(stack: Supervisor, settings: Settings) -> None:
    assert redis.Redis.from_url(settings.redis_direct_url, socket_timeout=5).ping()


@pytest.mark.parametrize("path", ["/", "/workers", "/tasks", "/api/workers", "/api/tasks"])
def test_flower_asks_for_credentials(stack: Supervisor, settings: Settings, path: str) -> None:
    url = f"http://{settings.host}:{settings.flower_port}{path}"
    anonymous = httpx.get(url, timeout=10)
    assert anonymous.status_code == 401, anonymous.text[:200]
    if not path.startswith("/api/"):  # the pages ask the browser for a password
        assert anonymous.headers["www-authenticate"].startswith("Basic")
    wrong = httpx.get(url, auth=(settings.flower_user, "not-the-one"), timeout=10)
    assert wrong.status_code == 401


def test_flower_answers_with_its_credentials(stack: Supervisor, settings: Settings) -> None:
    def workers() -> list[str]:
        r = httpx.get(
            f"http://{settings.host}:{settings.flower_port}/api/workers?refresh=true",
            auth=(settings.flower_user, settings.flower_password),
            timeout=10,
        )
        assert r.status_code == 200, r.text[:200]
        return list(r.json())

    # Without `refresh` Flower answers what it last heard, which is nothing when its inspection
    # ran before the broker was up; asked live (a broadcast with a short reply window), a busy
    # worker may miss one round, not every round.
    eventually(
        lambda: any(n.startswith("worker-commandlog@") for n in workers()),
        timeout=30,
        what="the command-log worker listed by Flower",
    )


@pytest.mark.parametrize(
    ("port", "method", "path"),
    [
        ("prometheus_port", "GET", "/api/v1/query?query=up"),
        ("prometheus_port", "GET", "/-/ready"),
        ("prometheus_port", "POST", "/-/reload"),  # --web.enable-lifecycle
        ("prometheus_port", "GET", "/metrics"),
        ("alertmanager_port", "GET", "/api/v2/alerts"),
        ("alertmanager_port", "POST", "/api/v2/silences"),
        ("alertmanager_port", "GET", "/-/ready"),
    ],
)
def test_prometheus_and_alertmanager_ask_for_credentials(
    stack: Supervisor, settings: Settings, port: str, method: str, path: str
) -> None:
    url = f"http://{settings.host}:{getattr(settings, port)}{path}"
    assert httpx.request(method, url, timeout=10).status_code == 401
    wrong = (settings.monitoring_user, "not-the-one")
    assert httpx.request(method, url, auth=wrong, timeout=10).status_code == 401


def test_prometheus_scrapes_and_alerts_with_its_credentials(
    stack: Supervisor, settings: Settings
) -> None:
    """Prometheus reaches itself and Alertmanager with the credentials (its targets are up,
    Alertmanager is its active alert receiver), and clients reach it with them."""
    r = prometheus_api(settings, "query", {"query": 'up{job=~"prometheus|alertmanager"}'})
    assert r.status_code == 200, r.text
    up = {s["metric"]["job"]: s["value"][1] for s in r.json()["data"]["result"]}
    assert up == {"prometheus": "1", "alertmanager": "1"}, up
    active = prometheus_api(settings, "alertmanagers").json()["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == [
        f"http://{settings.host}:{settings.alertmanager_port}/api/v2/alerts"
    ]
    r = httpx.get(
        f"http://{settings.host}:{settings.alertmanager_port}/api/v2/status",
        auth=settings.monitoring_auth,
        timeout=10,
    )
    assert r.status_code == 200, r.text
