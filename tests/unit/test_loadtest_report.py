"""The capacity report: steps and their measurement windows, checks, the knee and the
bottleneck, cost per request, the markdown, runs cut short, SLOs and progress lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import render, report
from loadtest.prom import load_slos
from loadtest.runner import cut_short, progress_line


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
