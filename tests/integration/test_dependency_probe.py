"""Each API replica probes its links to Postgres and Redis (system/iot/api/dependency_probe.py):
on-call reads which link is slow or drops connections from ``iot_dependency_*``, and the alerts
DependencySlow and DependencyProbeFailing name it."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.toxiproxy import Toxiproxy
from iot.settings import Settings
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration


def probe_figures(settings: Settings, port: int, dependency: str) -> dict[str, float]:
    """This replica's probe counters for one dependency: probes, failures, observed round
    trips and those slower than 250 ms."""
    text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5).text
    out = {"probes": 0.0, "failures": 0.0, "observed": 0.0, "over_250ms": 0.0}
    le_250 = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("dependency") != dependency:
                continue
            if s.name == "iot_dependency_probes_total":
                out["probes"] = s.value
            elif s.name == "iot_dependency_probe_failures_total":
                out["failures"] = s.value
            elif s.name == "iot_dependency_roundtrip_seconds_count":
                out["observed"] = s.value
            elif s.name == "iot_dependency_roundtrip_seconds_bucket" and s.labels["le"] == "0.25":
                le_250 = s.value
    out["over_250ms"] = out["observed"] - le_250
    return out


def after(settings: Settings, port: int, dependency: str, before: dict[str, float], key: str):
    """A check for ``eventually``: the figures once ``key`` grew past ``before``."""

    def grown():
        now = probe_figures(settings, port, dependency)
        return now if now[key] > before[key] else None

    return grown


def test_every_replica_probes_both_links_and_healthy_links_answer_fast(settings: Settings, stack):
    for port in settings.api_ports:
        for dependency in ("postgres", "redis"):
            before = probe_figures(settings, port, dependency)
            now = eventually(
                after(settings, port, dependency, before, "observed"),
                timeout=20,
                what=f"a {dependency} probe observed on :{port}",
            )
            assert now["failures"] == before["failures"], (dependency, port, before, now)
            assert now["over_250ms"] == before["over_250ms"], (dependency, port, before, now)


def test_a_slow_link_shows_in_the_probe_and_a_black_hole_counts_as_failures(
    settings: Settings, stack
):
    port = settings.api_ports[0]
    proxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    try:
        before = probe_figures(settings, port, "redis")
        pg_before = probe_figures(settings, port, "postgres")
        toxic = proxy.add_toxic("redis", "latency", {"latency": 400})
        try:
            slow = eventually(
                after(settings, port, "redis", before, "over_250ms"),
                timeout=30,
                what="a redis probe over 250 ms with 400 ms added on its link",
            )
        finally:
            proxy.remove_toxic("redis", toxic)
        assert slow["failures"] == before["failures"]
        # Postgres's link was not touched: its probes stayed fast meanwhile (the probe names
        # the slow link, not every link).
        pg = probe_figures(settings, port, "postgres")
        assert pg["observed"] > pg_before["observed"]
        assert pg["over_250ms"] == pg_before["over_250ms"]

        before = probe_figures(settings, port, "redis")
        toxic = proxy.add_toxic("redis", "timeout", {"timeout": 0}, stream="upstream")
        try:
            eventually(
                after(settings, port, "redis", before, "failures"),
                timeout=30,
                what="a failed redis probe with its link black-holed",
            )
        finally:
            proxy.remove_toxic("redis", toxic)
        # The probe opens a new connection and answers fast again once the link heals.
        healed = probe_figures(settings, port, "redis")
        eventually(
            after(settings, port, "redis", healed, "observed"),
            timeout=30,
            what="a redis probe answered again after the black hole",
        )
    finally:
        proxy.close()
