"""The pure parts of the load tests: shapes' schedules, the device's bookkeeping, sample
aggregation, CPU windows, knee detection and the sizing plan. No network, and no locust import
in this process (locust patches everything with gevent): the shape classes are checked in a
subprocess."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from iotcore.core import Response

from iot.stack import connections
from loadtest import cpu, plan, profiles, render, report, samples
from loadtest.device import (
    Backoff,
    DevicePool,
    DeviceState,
    PoolExhausted,
    load_registry,
    parse_time,
    retry_after_seconds,
)
from loadtest.prom import load_slos
from loadtest.runner import cut_short, progress_line

# ----- shapes -----


def test_step_ramp_ticks_hold_each_step_then_stop():
    ramp = profiles.StepRamp(devices=1000, step_devices=250, step_seconds=60, spawn_rate=50)
    ticks = ramp.ticks(every=1)
    assert len(ticks) == 240
    assert [t.devices for t in ticks[::60]] == [250, 500, 750, 1000]
    assert {t.devices for t in ticks[:60]} == {250}
    assert ticks[-1].step == 3 and ramp.target(240.0) is None
    assert all(t.spawn_rate == 50 for t in ticks)


def test_step_ramp_last_step_ends_exactly_at_the_devices():
    ramp = profiles.StepRamp(devices=1100, step_devices=250, step_seconds=10, spawn_rate=50)
    assert [s.devices for s in ramp.steps()] == [250, 500, 750, 1000, 1100]
    assert ramp.duration == 50 and ramp.max_devices == 1100


def test_soak_is_one_constant_step():
    soak = profiles.Soak(devices=300, seconds=30, spawn_rate=100)
    assert {(t.devices, t.step) for t in soak.ticks()} == {(300, 0)}
    assert len(soak.ticks()) == 30


def test_spike_goes_from_base_to_all_and_back_fast():
    spike = profiles.Spike(devices=1000, seconds=90, spawn_rate=20)
    ticks = spike.ticks(every=1)
    assert [ticks[i].devices for i in (0, 29, 30, 59, 60, 89)] == [200, 200, 1000, 1000, 200, 200]
    assert ticks[0].spawn_rate == 20 and ticks[30].spawn_rate == 200  # devices / 5


def test_build_defaults_and_errors():
    ramp = profiles.build("step", 1000, duration=300)
    assert [s.devices for s in ramp.steps()] == [200, 400, 600, 800, 1000]
    assert ramp.steps()[0].end == 60
    assert profiles.build("soak", 10).duration == 300
    with pytest.raises(profiles.ProfileError, match="unknown shape"):
        profiles.build("wave", 10)
    with pytest.raises(profiles.ProfileError, match="at least 1"):
        profiles.build("soak", 0)


def test_profile_from_environment():
    assert profiles.from_env({}) is None
    assert profiles.from_env({"LOAD_SHAPE": "none"}) is None
    p = profiles.from_env(
        {
            "LOAD_SHAPE": "step",
            "LOAD_DEVICES": "100",
            "LOAD_STEP_DEVICES": "50",
            "LOAD_STEP_SECONDS": "20",
        }
    )
    assert p is not None and [s.devices for s in p.steps()] == [50, 100]
    with pytest.raises(profiles.ProfileError, match="needs LOAD_DEVICES"):
        profiles.from_env({"LOAD_SHAPE": "soak"})
    with pytest.raises(profiles.ProfileError, match="not a number"):
        profiles.from_env({"LOAD_SHAPE": "soak", "LOAD_DEVICES": "many"})


_SHAPE_PROBE = """
import json
from loadtest import shapes
cls = shapes.selected()
shape = cls()
shape.extra_users = 3
out = []
for t in (0, 25, 59, 61, 119, 121, 125, 129):
    shape.get_run_time = lambda t=t: t
    out.append(shape.tick())
print(json.dumps([cls.__name__, out]))
"""


def test_locust_shape_classes_follow_the_profile_plus_fixed_users(tmp_path: Path):
    env = {
        **os.environ,
        "LOAD_SHAPE": "step",
        "LOAD_DEVICES": "200",
        "LOAD_STEP_DEVICES": "100",
        "LOAD_STEP_SECONDS": "60",
        "LOAD_SPAWN_RATE": "10",
        "LOAD_RUN_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", _SHAPE_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    name, ticks = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "StepRampShape"
    # after the profile: no users (stopped gracefully) until they are gone and flushed
    assert ticks == [
        [103, 10.0],
        [103, 10.0],
        [103, 10.0],
        [203, 10.0],
        [203, 10.0],
        [0, 1000.0],
        [0, 1000.0],
        None,
    ]
    events = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("devices")) for e in events] == [
        ("step", 100),
        ("step", 200),
        ("end", None),
        ("drained", None),
    ]


# ----- the device's bookkeeping -----


def test_backoff_grows_with_jitter_is_capped_and_honours_retry_after():
    b = Backoff(base=0.5, cap=4, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for n, d in enumerate(delays):
        ceiling = min(4, 0.5 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next_delay(retry_after=3) == 3
    assert b.next_delay(retry_after=100) == 4  # Retry-After is capped too
    assert retry_after_seconds("2") == 2 and retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_emulated_devices_run_the_firmware_core_and_keep_a_ledger_of_what_was_accepted():
    d = DeviceState(0, "dev", "tok", buffer_limit=12)
    core = d.device(load_registry(), {"reading_interval_s": 10}, batch=5)
    assert d.device(load_registry(), {}) is core  # one core per device, kept across users
    rng = random.Random(0)
    d.measure(1_800_000_000.0, 5, rng)
    d.measure(1_800_000_000.0, 5, rng)  # same instant: still unique
    stamps = list(d.pending)
    assert stamps == sorted(set(stamps)) and len(stamps) == 10
    assert core.buffer.items[0][1]["ts"] == "2027-01-15T08:00:00.000Z"
    request = core.upload_request()  # the core sends what it buffered, oldest first
    assert [r["ts"] for r in request.body["readings"]][:1] == ["2027-01-15T08:00:00.000Z"]
    d.measure(1_800_000_010.0, 5, rng)  # while the POST is in flight; 3 oldest dropped
    assert d.dropped == 3 and len(d.pending) == 12
    d.sent(7)  # 201 for what is left of the batch: the ledger takes their timestamps
    assert d.accepted.count == 7 and d.accepted.last_ms == stamps[-1]
    assert d.accepted.first_ms == stamps[3]
    d.refused(5)
    assert d.unsent == 0 and d.dropped == 8


def test_emulated_devices_run_each_command_once_and_ack_it_every_time():
    d = DeviceState(0, "dev", "tok")
    core = d.device(load_registry(), {})
    command = {"id": "c1", "name": "set_interval", "args": {"seconds": 1}}
    core.deliver(command)
    core.deliver(command)  # redelivered (a lost ack): acked again, not run again
    assert core.executed == 1 and core.duplicates == 1
    assert core.config["reading_interval_s"] == 10  # the load's shape does not change
    core.deliver({"id": "c2", "name": "self_destruct", "args": {}})
    assert [a[1] for a in core.acks] == ["succeeded", "rejected"]
    request = core.ack_request()
    assert request is not None and request.path == "/commands/c1/ack"
    core.done(request, Response(200))
    assert [a[0] for a in core.acks] == ["c2"]


def test_time_formats():
    assert parse_time("2026-11-30T00:53:20.123Z") == pytest.approx(1_796_000_000.123)
    assert parse_time("2026-11-30T01:53:20.123+01:00") == pytest.approx(1_796_000_000.123)
    with pytest.raises(ValueError):
        parse_time("2026-11-30T00:53:20")


def test_device_pool_gives_each_process_its_slice_lowest_first():
    devices = [{"id": f"d{i}", "token": f"t{i}"} for i in range(7)]
    pools = [DevicePool(devices, k, 3, buffer_limit=10) for k in range(3)]
    assert [sorted(p.states) for p in pools] == [[0, 3, 6], [1, 4], [2, 5]]
    p = pools[0]
    a, b = p.take(), p.take()
    assert (a.id, b.id) == ("d0", "d3")
    p.give_back(a)
    assert p.take().id == "d0"
    p.take()
    with pytest.raises(PoolExhausted):
        p.take()
    with pytest.raises(ValueError, match="LOAD_WORKERS"):
        DevicePool(devices, 3, 3, buffer_limit=10)


# ----- samples -----


def test_recorder_buckets_per_second_and_aggregate_percentiles():
    rec = samples.Recorder("n1")
    for i in range(100):
        rec.record(1000.2, "POST", "/sensors", i + 1, "201", False)
    rec.record(1001.5, "POST", "/sensors", 3000, "503", True)
    rec.record(1001.7, "COMMAND", "end-to-end", 40, "ok", False)
    assert [r["t"] for r in rec.drain(now=1001.9)] == [1000]  # second 1001 is not finished
    rows = rec.drain()
    rows = [
        {
            "t": 1000,
            "method": "POST",
            "name": "/sensors",
            "node": "n1",
            "count": 100,
            "failures": 0,
            "statuses": {"201": 100},
            "hist": {str(i + 1): 1 for i in range(100)},
        },
    ] + rows
    agg = samples.aggregate(rows, 1000, 1002)
    sensors = agg["POST /sensors"]
    assert sensors["count"] == 101 and sensors["failures"] == 1
    assert sensors["statuses"] == {"201": 100, "503": 1}
    assert sensors["p50"] == 51 and sensors["p99"] == 100 and sensors["max"] == 3000
    assert sensors["rps"] == 50.5
    assert agg["total"]["count"] == 101  # the COMMAND entry is not a request
    assert agg["COMMAND end-to-end"]["p99"] == 40
    assert samples.rounded_ms(147.4) == 150 and samples.rounded_ms(3432) == 3400


# ----- CPU windows -----


def test_cores_per_component_skip_restarts_and_count_the_machine():
    rows = [
        {
            "t": 0,
            "cpu": {"api-1": 10.0, "pg": 5.0},
            "pids": {"api-1": 1, "pg": 2},
            "busy": 0,
            "total": 0,
            "cpus": 2,
        },
        {
            "t": 10,
            "cpu": {"api-1": 15.0, "pg": 6.0},
            "pids": {"api-1": 1, "pg": 2},
            "busy": 1000,
            "total": 2000,
            "cpus": 2,
        },
        {
            "t": 20,
            "cpu": {"api-1": 1.0, "pg": 7.0},
            "pids": {"api-1": 9, "pg": 2},
            "busy": 2000,
            "total": 4000,
            "cpus": 2,
        },
        {
            "t": 30,
            "cpu": {"api-1": 6.0, "pg": 8.0},
            "pids": {"api-1": 9, "pg": 2},
            "busy": 3000,
            "total": 6000,
            "cpus": 2,
        },
    ]
    used = cpu.cores(rows, 0, 30)
    assert used["api-1"] == 0.5  # 10 s of CPU over the 20 s without a restart
    assert used["pg"] == 0.1
    assert used["machine"] == 1.0


def test_restarts_are_pid_changes():
    rows = [
        {"t": 1, "pids": {"api-1": 5, "pg": 7}},
        {"t": 2, "pids": {"api-1": 5, "pg": 7}},
        {"t": 3, "pids": {"api-1": 9, "pg": 7}},
    ]
    assert cpu.restarts(rows) == [{"component": "api-1", "t": 3, "pid": 9}]


def test_tree_seconds_sums_descendants():
    table = {1: (0, 1.0), 2: (1, 2.0), 3: (2, 4.0), 4: (0, 8.0)}
    assert cpu.tree_seconds(table, 1) == 7.0
    assert cpu.tree_seconds(table, 5) is None


# ----- the report: steps, checks, knee -----


def _step(index: int, devices: int, cpu_use: dict, slos_ok: bool = True, failures: int = 0):
    return {
        "index": index,
        "devices": devices,
        "failures": failures,
        "cpu": cpu_use,
        "prometheus": {
            "slos": {"ingest-lag": {"held": slos_ok}, "command-latency": {"held": None}},
            "queues": {"sensors.data": {"max_ready": 5, "growth_per_s": 0.0}},
        },
    }


def test_knee_is_the_last_step_before_the_first_broken_one_and_names_the_saturated():
    steps = [
        _step(0, 1000, {"api-1": 0.3, "postgres": 0.2, "machine": 0.8}),
        _step(1, 2000, {"api-1": 0.6, "postgres": 0.4, "machine": 1.3}),
        _step(2, 3000, {"api-1": 0.9, "postgres": 0.6, "machine": 1.7, "generator": 0.2}),
        _step(3, 4000, {"api-1": 0.95, "postgres": 0.7, "machine": 1.95}, slos_ok=False),
        _step(4, 5000, {"api-1": 0.95, "postgres": 0.7, "machine": 1.95}),
    ]
    a = report.analyse(steps, cpus=2)
    assert a["knee"] == {"index": 2, "devices": 3000}
    assert a["first_break"] == {
        "index": 3,
        "devices": 4000,
        "broken": ["ingest-lag"],
        "generator_bound": False,
    }
    assert a["first_saturated"]["component"] == "api-1"  # 0.9 of its one core
    assert a["first_saturated"]["devices"] == 3000
    assert a["bottleneck"]["component"] == "api-1"
    assert a["generator_saturated"] is None


def test_a_break_when_the_generator_filled_the_machine_is_not_the_products_knee():
    steps = [
        _step(0, 1000, {"api-1": 0.3, "machine": 0.8, "generator": 0.2}),
        _step(1, 2000, {"api-1": 0.5, "machine": 1.9, "generator": 0.9}, slos_ok=False),
    ]
    a = report.analyse(steps, cpus=2)
    assert a["knee"] == {"index": 0, "devices": 1000, "at_least": True}
    assert a["first_break"]["generator_bound"] is True
    assert a["generator_bound"] == {"index": 1, "devices": 2000}
    assert a["bottleneck"]["component"] == "generator"
    # its own processes full is generator-bound too, whatever the machine
    assert report.generator_bound({"cpu": {"generator": 0.9, "machine": 1.0}}, 2, 1)
    assert not report.generator_bound({"cpu": {"generator": 0.1, "machine": 1.9}}, 2, 1)


def test_cost_per_request_separates_the_product_from_the_generator():
    used = {"api-1": 0.2, "nginx": 0.1, "redis-exporter": 0.01, "prometheus": 0.03,
            "generator": 0.1, "machine": 0.6}  # fmt: skip
    c = report.cost_per_request(used, rps=500)
    assert c["product"] == pytest.approx(0.6) and c["generator"] == pytest.approx(0.2)
    assert c["monitoring"] == pytest.approx(0.08)
    assert c["unaccounted"] == pytest.approx(0.32)
    assert set(c["components"]) == {"api-1", "nginx"}
    assert report.cost_per_request(used, rps=0) is None


def test_without_saturation_the_fullest_component_at_the_first_break_is_named():
    steps = [
        _step(0, 100, {"worker-sensors": 0.2, "rabbitmq": 0.3, "machine": 0.6}),
        _step(1, 200, {"worker-sensors": 0.6, "rabbitmq": 0.5, "machine": 1.2}, failures=3),
    ]
    a = report.analyse(steps, cpus=2)
    assert a["knee"]["devices"] == 100
    assert a["first_break"]["broken"] == ["no-failed-requests"]
    assert a["first_saturated"] is None
    assert a["bottleneck"]["component"] == "worker-sensors"  # 0.6 of 1 core beats 0.5 of 2


def test_a_saturated_machine_names_its_largest_user_and_a_busy_generator_is_flagged():
    steps = [_step(0, 500, {"rabbitmq": 0.9, "postgres": 0.6, "machine": 1.8, "generator": 0.9})]
    a = report.analyse(steps, cpus=2)
    assert a["first_saturated"]["component"] == "machine"
    assert a["first_saturated"]["largest_user"] == "rabbitmq"
    assert a["generator_saturated"] == {"index": 0, "devices": 500}


def test_checks_count_growing_backlogs_and_unjudged_slos():
    step = _step(0, 100, {})
    step["prometheus"]["queues"]["sensors.data"] = {"max_ready": 5000, "growth_per_s": 40.0}
    checks = report.checks_of(step)
    assert checks == {
        "ingest-lag": True,
        "command-latency": None,
        "no-failed-requests": True,
        "backlog-stable": False,
    }
    assert report.capacity("api-2", 2) == 1 and report.capacity("postgres", 2) == 2
    assert report.capacity("generator", 2, generator_processes=3) == 3


def test_step_log_and_measurement_window(tmp_path: Path):
    lines = [
        {"event": "step", "t": 100.0, "index": 0, "devices": 50},
        {"event": "reached", "t": 103.0, "index": 0, "devices": 50},
        {"event": "step", "t": 160.0, "index": 1, "devices": 100},
        {"event": "end", "t": 220.0},
    ]
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    steps = report.read_steps(path)
    assert [(s["devices"], s["start"], s["end"]) for s in steps] == [
        (50, 100.0, 160.0),
        (100, 160.0, 220.0),
    ]
    assert report.measurement_window(steps[0], settle=10) == (113.0, 160.0)
    assert report.measurement_window(steps[1], settle=100) == (178.0, 220.0)  # 30 % at most


def test_markdown_names_the_knee_and_the_bottleneck():
    steps = [_step(0, 1000, {"api-1": 0.9, "machine": 1.0})]
    for s in steps:
        s.update(
            window=[0, 60],
            requests_per_s=10.0,
            routes={},
            errors_by_status={},
            checks=report.checks_of(s),
            generator_cores_per_1000_devices=None,
        )
    data = {
        "meta": {
            "scenario": "devices",
            "shape": "step",
            "devices": 1000,
            "run": "r",
            "base_url": "http://x",
            "batch": 5,
            "reading_interval": 10,
            "poll_wait": 10,
            "commands_per_device_hour": 6,
        },
        "cpus": 2,
        "steps": steps,
        "analysis": report.analyse(steps, 2),
        "readings": {},
    }
    text = render.markdown(data, ["cpu.png"])
    assert "**Knee**: 1,000 devices" in text
    assert "First to saturate: **api-1**" in text
    assert "![cpu.png](cpu.png)" in text
    assert "Not a capacity measurement" not in text
    data["meta"]["cut_short"] = "the generator stopped after 12 of 90 s"
    lines = render.markdown(data, []).splitlines()
    conclusion = lines[lines.index("## Conclusion") + 2]
    assert conclusion.startswith("- **Not a capacity measurement**: the generator stopped after 12")


def test_a_run_whose_generator_lost_its_workers_or_ended_early_is_cut_short(tmp_path: Path):
    log = tmp_path / "locust.log"
    log.write_text("Shape test updating to 1003 users\n")
    assert cut_short(tmp_path, 100.0, 190.0, 90.0) == ""
    assert cut_short(tmp_path, 100.0, 180.0, 90.0) == ""  # within the margin
    assert "stopped after 30 of 90 s" in cut_short(tmp_path, 100.0, 130.0, 90.0)
    log.write_text(
        "Worker vm_0e4 failed to send heartbeat, setting state to missing.\n"
        "The last worker went missing, stopping test.\n"
    )
    why = cut_short(tmp_path, 100.0, 112.0, 90.0)
    assert "missed their heartbeats" in why and "12 of 90 s" in why


def test_slos_come_from_the_monitoring_rules_with_the_step_window():
    slos = {s.name: s for s in load_slos()}
    assert set(slos) == {"api-availability", "command-delivery", "command-latency", "ingest-lag"}
    assert slos["api-availability"].objective == 0.999
    expr = slos["ingest-lag"].expr(42.7)
    assert "[42s]" in expr and "[5m]" not in expr
    assert "[42s]" in (slos["ingest-lag"].events_expr(42.7) or "")


def test_progress_line_reads_locust_history_rows():
    history = {
        "Aggregated": {"User Count": "203", "Requests/s": "41.5", "Total Failure Count": "0"},
        "POST /sensors": {"99%": "120"},
    }
    line = progress_line(history, 20)
    assert "users    203" in line and "req/s     41.5" in line and "120 ms" in line
    assert "N/A" in line  # no command latency yet


# ----- the plan -----


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
