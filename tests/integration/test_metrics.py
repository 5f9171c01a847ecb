"""Metrics from day one: every component is scraped by the Prometheus that `iotctl up` runs."""

from __future__ import annotations

import httpx
import pytest

from iot.settings import Settings
from iot.stack.control import prometheus_api
from tests.integration.conftest import Person, eventually, reading

pytestmark = pytest.mark.integration

JOBS = {
    "prometheus": 1,
    "api": 2,
    "worker": 2,
    "rabbitmq": 1,
    "postgres": 1,
    "redis": 1,
    "nginx": 1,
    "flower": 1,
    "toxiproxy": 1,
}


def query(settings: Settings, promql: str) -> list[dict]:
    r = prometheus_api(settings, "query", {"query": promql}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_every_component(settings: Settings, stack):
    def all_up():
        results = query(settings, "up")
        up = {}
        for s in results:
            up.setdefault(s["metric"]["job"], []).append(s["value"][1])
        ok = all(up.get(job, []).count("1") == n for job, n in JOBS.items())
        return up if ok else None

    eventually(all_up, timeout=30, what=f"every target up: {JOBS}")
    # The exporters reach what they export, not just answer.
    for series in ("pg_up", "redis_up", "nginx_up"):
        assert [s["value"][1] for s in query(settings, series)] == ["1"], series


def test_api_and_workers_count_what_they_do(alice: Person, settings: Settings):
    device = alice.new_device()
    for _ in range(3):
        assert device.post([reading()]).status_code == 201

    def seen(promql: str):
        return eventually(lambda: query(settings, promql), timeout=30, what=promql)

    seen('sum(iot_http_requests_total{route="/sensors",method="POST",status="201"}) >= 3')
    seen('sum(iot_broker_publishes_total{queue="sensors.data",result="confirmed"}) >= 3')
    seen(
        "histogram_quantile(0.99, sum by (le) (rate(iot_http_request_duration_seconds_bucket"
        '{route="/sensors"}[5m]))) > 0'
    )
    seen("sum(iot_readings_stored_total) >= 3")
    seen("sum(iot_ingest_lag_seconds_count) >= 3")
    seen(
        'sum(rabbitmq_queue_messages_published_total{queue="sensors.data"}) >= 0'
        ' or sum(rabbitmq_queue_messages{queue="sensors.data"}) >= 0'
    )


def test_each_replica_exposes_its_own_metrics_but_nginx_does_not(settings: Settings, api):
    for port in settings.api_ports:
        text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5).text
        assert "iot_http_requests_total" in text and "iot_broker_connected 1.0" in text
    r = api.get("/metrics")
    assert r.status_code == 404


WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer noisy-neighbour"
response = function(status, headers, body)
  if status == 429 then
    local f = io.open("%s", "w")
    f:write(headers["Retry-After"] or "", "\\n", body)
    f:close()
  end
end
"""


def test_rate_limit_is_per_credential_with_a_json_429(settings: Settings, stack, tmp_path):
    import json
    import re
    import subprocess

    out = tmp_path / "limited.txt"
    script = tmp_path / "noisy.lua"
    script.write_text(WRK_SCRIPT % out)
    result = subprocess.run(
        ["wrk", "-t", "1", "-c", "16", "-d", "2s", "-s", str(script), f"{settings.base_url}/ping"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    total = int(re.search(r"(\d+) requests in", result.stdout).group(1))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    allowed_at_most = settings.rate_limit_burst + settings.rate_limit_per_second * 3
    assert total > allowed_at_most, f"load too light to test the limit: {result.stdout}"
    assert refused and int(refused.group(1)) >= total - allowed_at_most, result.stdout
    retry_after, _, body = out.read_text().partition("\n")
    assert int(retry_after) >= 1 and json.loads(body)["detail"].startswith("rate limited")
    # Another credential is not affected by the noisy one.
    headers = {"Authorization": "Bearer quiet-neighbour"}
    assert [
        httpx.get(f"{settings.base_url}/ping", headers=headers).status_code for _ in range(20)
    ] == [200] * 20


def test_health_endpoints(api, settings: Settings):
    assert api.get("/nginx/health").json() == {"status": "ok"}
    body = api.get("/health").json()
    assert body == {"status": "ok", "checks": {"broker": "ok", "database": "ok", "cache": "ok"}}
