"""The sizing plan: a linear fit of each component's cost, scaled to a fleet and a workload,
and sized by connections the way `iotctl up` sizes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iot.stack import connections
from loadtest import plan


def _ramp_report() -> dict:
    steps = [
        {
            "index": i,
            "devices": n,
            "cpu": {
                "api-1": 0.1 * n / 1000,
                "api-2": 0.1 * n / 1000,
                "worker-sensors": 0.05 + 0.1 * n / 1000,
                "generator": 0.2 * n / 1000,
                "toxiproxy": 0.1 * n / 1000,
                "machine": 1.0,
            },
        }
        for i, n in enumerate((1000, 2000, 3000))
    ]
    return {
        "meta": {
            "run": "r1",
            "shape": "step",
            "reading_interval": 10,
            "poll_wait": 10,
            "commands_per_device_hour": 6,
        },
        "cpus": 2,
        "steps": steps,
        "analysis": {"knee": {"index": 2, "devices": 3000}},
    }


def test_fit_is_linear_with_a_non_negative_fixed_part():
    assert plan.fit([(1000, 0.15), (2000, 0.25), (3000, 0.35)]) == pytest.approx((0.05, 0.0001))
    assert plan.fit([(1000, 0.5)]) == (0.0, 0.0005)
    assert plan.fit([(1000, 0.3), (2000, 0.2)]) == pytest.approx((0.25, 0.0))  # fixed cost
    assert plan.fit([(1000, 0.1), (2000, 0.3)]) == pytest.approx((0.0, 0.00014))  # via origin


def test_plan_scales_per_device_costs_to_the_fleet_and_counts_processes():
    p = plan.plan(_ramp_report(), devices=100_000, interval=10, commands_per_hour=6)
    comp = {c["component"]: c for c in p["components"]}
    assert comp["api"]["predicted_cores"] == pytest.approx(20.0)
    assert p["api_replicas"] == 29  # 20 cores at 70 % each
    assert comp["worker-sensors"]["predicted_cores"] == pytest.approx(10.05)
    assert p["workers"] == {"worker-sensors": 15}
    assert p["total_cores"] == pytest.approx(30.05)  # neither the generator nor toxiproxy
    assert p["cores_to_buy"] == 43
    assert p["generator_cores"] == pytest.approx(20.0)
    assert any("33x the largest measured step" in w for w in p["warnings"])
    text = plan.render(p)
    assert "API replicas: 29" in text and "Assumptions:" in text


def test_plan_scales_with_the_request_rate_of_the_workload():
    base = plan.Workload(10, 10, 6).requests_per_second()
    assert base == pytest.approx(0.2 + 18 / 3600)
    faster = plan.plan(_ramp_report(), devices=3000, interval=5, commands_per_hour=6)
    assert faster["load_scale"] == pytest.approx((0.4 + 0.005) / (0.2 + 0.005), rel=1e-3)
    with pytest.raises(plan.PlanError):
        plan.plan(_ramp_report(), devices=0, interval=10)
    with pytest.raises(plan.PlanError, match="no steps"):
        plan.plan({**_ramp_report(), "steps": []}, devices=10, interval=10)


def _with_nginx(report: dict, cores_per_1000: float = 0.05) -> dict:
    for step in report["steps"]:
        step["cpu"]["nginx"] = cores_per_1000 * step["devices"] / 1000
    return report


def test_plan_sizes_by_connections_when_polls_are_cheap_in_cpu():
    # 20,000 devices: 4 API cores -> 6 replicas by CPU; nginx 1 core -> 2 workers by CPU
    p = plan.plan(_with_nginx(_ramp_report()), devices=20_000, interval=10)
    c = p["connections"]
    assert c["fd_limit_per_process"] == connections.PROCESS_FD_LIMIT == 20_000
    assert c["nginx_connections"] == 40_000  # 2 per device while its poll waits
    assert c["nginx_workers_by_connections"] == 5  # 4,934 devices per worker at most
    assert c["nginx_workers_by_cpu"] == 2
    assert p["nginx_workers"] == c["nginx_workers"] == 5
    assert c["api_replicas_by_connections"] == 2  # 15,795 per replica (80 % of its files)
    assert c["api_replicas_by_cpu"] == 6
    assert p["api_replicas"] == 6
    assert c["upstream_connections_per_replica"] == 3334
    assert c["edge_machines"] == 1
    text = plan.render(p)
    assert "nginx worker processes: 5 by connections, 2 by CPU -> 5" in text
    assert "API replicas: 2 by connections, 6 by CPU -> 6" in text
    assert "20,000 open files per process" in text
    assert any("2 connections in nginx" in a for a in p["assumptions"])


def test_plan_takes_replicas_by_connections_when_a_poll_costs_almost_no_cpu():
    report = _ramp_report()
    for step in report["steps"]:  # the replicas' CPU a tenth of the above
        step["cpu"]["api-1"] /= 10
        step["cpu"]["api-2"] /= 10
    p = plan.plan(report, devices=100_000, interval=10)
    c = p["connections"]
    assert c["api_replicas_by_cpu"] == 3
    assert c["api_replicas_by_connections"] == 7  # 100,000 / 15,795
    assert p["api_replicas"] == 7
    assert c["upstream_connections_per_replica"] == 14_286
    assert c["upstream_connections_per_replica"] < connections.EPHEMERAL_PORTS
    assert c["nginx_workers_by_connections"] == 21
    assert c["nginx_workers_by_cpu"] is None  # the ramp did not measure nginx
    assert "21 by connections, CPU not measured -> 21" in plan.render(p)


@pytest.mark.parametrize("devices", [1, 999, 10_000, 20_000, 250_000])
def test_plan_and_iotctl_up_size_connections_alike(devices: int):
    c = plan.connection_needs(devices, None, 1, 0.7)
    limits = connections.derive(devices, c["api_replicas"], connections.PROCESS_FD_LIMIT)
    assert c["nginx_workers_by_connections"] == limits.nginx_workers
    assert c["api_replicas_by_connections"] == limits.api_replicas_needed
    assert not limits.api_replicas_short


def test_newest_step_report_skips_other_shapes(tmp_path: Path):
    for name, shape in (("20260101T000000Z-devices", "step"), ("20260102T000000Z-devices", "soak")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({"meta": {"shape": shape}}))
    assert plan.newest_step_report(tmp_path).parent.name == "20260101T000000Z-devices"
    with pytest.raises(plan.PlanError, match="no step-ramp report"):
        plan.newest_step_report(tmp_path / "none")


def test_marginal_cost_sets_the_fixed_part_apart_from_the_cost_per_request() -> None:
    from loadtest.report import marginal_cost

    # the generator: 0.02 cores fixed + 0.15 ms per request; the product 0.65 ms, nothing fixed
    steps = [
        {"requests_per_s": rps, "cpu": {"generator": 0.02 + rps * 0.00015, "api-1": rps * 0.00065}}
        for rps in (200.0, 400.0, 800.0)
    ]
    m = marginal_cost(steps)
    assert m is not None
    assert m["generator"]["ms_per_request"] == pytest.approx(0.15)
    assert m["generator"]["fixed_cores"] == pytest.approx(0.02)
    assert m["product"]["ms_per_request"] == pytest.approx(0.65)
    assert marginal_cost(steps[:1]) is None  # one step: nothing to fit
