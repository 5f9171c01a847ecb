"""Every panel of every dashboard shows data on a healthy stack after a short load.

The load goes through nginx like real traffic (readings, latest-reading reads, commands sent,
polled and acked); then each panel query runs against the live Prometheus, with Grafana's
variables replaced as Grafana would, and must return at least one series.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from iot import security
from iot.settings import PROJECT_ROOT, Settings
from iot.stack.control import prometheus_api
from tests.integration.conftest import Device, Person, eventually, reading

pytestmark = pytest.mark.integration

DASHBOARDS = sorted((PROJECT_ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
# What Grafana substitutes, at the 5 s scrape interval and a one-hour view.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "1h",
    "${__range}": "1h",
}


def panel_queries() -> list[Any]:
    params = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                params.append(
                    pytest.param(
                        target["expr"],
                        id=f"{path.stem}:{panel['title']}:{target['refId']}",
                    )
                )
    return params


def promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def query(settings: Settings, expr: str) -> list[dict[str, Any]]:
    r = prometheus_api(settings, "query", {"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def register(api: httpx.Client, pg: psycopg.Connection) -> Person:
    """A person with a unique name, made directly in Postgres (as the `make_person` fixture)."""
    name, password = f"dash-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    pg.execute(
        "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, false)",
        (uuid.uuid4(), name, security.hash_password(password)),
    )
    r = api.post("/auth/token", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return Person(api, name, r.json()["access_token"])


def drive(person: Person, devices: list[Device]) -> None:
    """A short, realistic load: readings, reads, and commands through their whole funnel."""
    for device in devices:
        for i in range(10):
            batch = [reading(sensor=f"s{j}", value=i + j) for j in range(5)]
            r = device.post(batch)
            assert r.status_code == 201, r.text
        r = person.api.get("/sensors", params={"device_id": str(device.id)}, headers=person.headers)
        assert r.status_code == 200, r.text

    target, idle = devices
    sent = []
    for i in range(5):
        r = person.send(target, name="blink", args={"n": i})
        assert r.status_code == 201, r.text
        sent.append(r.json()["id"])
    received: list[dict[str, Any]] = []
    eventually(
        lambda: received.extend(target.commands(wait=5)) or len(received) >= len(sent),
        timeout=30,
        what="the device receiving its commands",
    )
    for i, command in enumerate(received):
        r = target.ack(command["id"], "failed" if i == 0 else "succeeded", {"ok": i != 0})
        assert r.status_code == 200, r.text
    assert person.command(sent[-1])["id"] == sent[-1]
    assert idle.poll(wait=1).status_code == 204


@pytest.fixture(scope="module")
def load(stack, settings: Settings, pg: psycopg.Connection) -> Iterator[None]:
    with httpx.Client(base_url=settings.base_url, timeout=30) as api:
        person = register(api, pg)
        devices = [person.new_device(f"dashboard-{i}") for i in range(2)]
        try:
            drive(person, devices)
            # Scraped by Prometheus, and the SLO recording rules evaluated on top of it.
            for expr in (
                "sum(increase(iot_commands_acked_total[1m])) > 0",
                "sum(increase(iot_command_delivery_latency_seconds_count[1m])) > 0",
                "sum(increase(iot_ingest_lag_seconds_count[1m])) > 0",
                'slo:sli_events:rate5m{slo="command-latency"} > 0',
                'slo:sli_events:rate5m{slo="ingest-lag"} > 0',
            ):
                eventually(lambda e=expr: query(settings, e), timeout=60, what=expr)
            yield
        finally:
            for device in devices:
                api.delete(f"/devices/{device.id}", headers=person.headers)


def test_there_are_dashboards_to_check():
    assert {p.stem for p in DASHBOARDS} >= {"overview", "rabbitmq", "postgres", "redis", "slos"}
    assert len(panel_queries()) > 50


@pytest.mark.parametrize("expr", panel_queries())
def test_panel_query_returns_data(load, settings: Settings, expr: str):
    # A series the load just created needs two scrapes before rate() sees it, and the
    # long-window SLO rules are evaluated once a minute: allow for both.
    one_line = " ".join(promql(expr).split())
    eventually(lambda: query(settings, one_line), timeout=75, what=f"data for: {one_line}")
