"""The API's request metrics: labels come from a fixed set of methods and from route
templates, so made-up methods and paths cannot grow the series without bound; no `_created`."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from iot.api import app as app_module
from iot.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client() -> httpx.AsyncClient:
    settings = Settings(secret_key="k" * 32, postgres_password="p" * 16, rabbitmq_password="r" * 16)
    app = app_module.create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _count(method: str, route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "iot_http_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


async def test_made_up_methods_and_wrong_methods_do_not_make_new_series(client) -> None:
    other, unmatched = _count("OTHER", "unmatched", "405"), _count("PUT", "unmatched", "405")
    for method in ("BREW", "WHEN", "XYZZY"):
        r = await client.request(method, "/ping")
        assert r.status_code == 405
    r = await client.put("/ping")  # the route exists, not with PUT
    assert r.status_code == 405
    assert _count("OTHER", "unmatched", "405") == other + 3
    assert _count("PUT", "unmatched", "405") == unmatched + 1
    assert _count("PUT", "/ping", "405") == 0


async def test_the_exposition_has_no_created_series(client) -> None:
    await client.get("/ping")
    assert b"_created" not in generate_latest()


async def test_requests_in_flight_are_counted_while_answered(client) -> None:
    inside: list[float | None] = []
    app = client._transport.app  # type: ignore[attr-defined]

    @app.get("/test-in-flight")
    async def probe() -> dict[str, bool]:
        inside.append(REGISTRY.get_sample_value("iot_http_requests_in_flight"))
        return {"ok": True}

    before = REGISTRY.get_sample_value("iot_http_requests_in_flight")
    assert (await client.get("/test-in-flight")).status_code == 200
    assert inside == [before + 1]
    assert REGISTRY.get_sample_value("iot_http_requests_in_flight") == before
