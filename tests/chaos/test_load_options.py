"""`iotctl chaos run NAME --load N` without the stack: the options reach the experiment, the
load's figures are cut into the experiment's phases, and the reports show them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from chaos import cli, experiment, report
from loadtest.background import LoadOptions, failures_by_status, per_second, window_figures


def test_load_options_from_the_command_line():
    assert cli.load_options(0) is None
    opts = cli.load_options(2000, 2, Path("devices.json"))
    assert opts == LoadOptions(devices=2000, processes=2, devices_file=Path("devices.json"))
    for bad in ((-1, 0, None), (100, -2, None), (0, 2, None), (0, 0, Path("d.json"))):
        with pytest.raises(typer.BadParameter):
            cli.load_options(*bad)


def test_the_load_is_an_open_ended_soak_of_reused_devices_checked_in_postgres():
    run = LoadOptions(devices=2000).run_options()
    assert (run.scenario, run.shape, run.devices, run.processes) == ("devices", "soak", 2000, 0)
    assert run.reuse and run.devices_file is None and run.verify
    assert run.duration is not None and run.duration >= 3600  # ended by the experiment
    named = LoadOptions(devices=10, devices_file=Path("fleet.json")).run_options()
    assert not named.reuse and named.devices_file == Path("fleet.json")


def _loaded_report(missing: int | None) -> dict[str, Any]:
    fault = {
        "seconds": 25.0,
        "requests": 9000,
        "requests_per_s": 360.0,
        "failures": 4200,
        "failures_by_status": {"503": 4100, "error": 100},
        "sensors_per_s": 150.0,
        "sensors_p99_ms": 1200.0,
        "command_e2e_p99_ms": None,
    }
    calm = {**fault, "failures": 0, "failures_by_status": {}}
    readings = {"devices": 2000, "accepted": 50000, "stored": 50000, "extra": 0}
    if missing is not None:
        readings["missing"] = missing
    return {
        "experiment": "rabbitmq-down",
        "title": "RabbitMQ unreachable",
        "description": "",
        "method": [{"action": "proxy_disable", "target": "rabbitmq"}],
        "fault_seconds": 25.0,
        "recovery_seconds": 2.1,
        "recovery_bound_seconds": 45.0,
        "drained": True,
        "drain_seconds": 3.0,
        "ledger": {"readings_accepted": 400, "commands_accepted": 150},
        "counts": {
            k: {"accepted": 1, "lost": 0, "duplicated": 0, "unexpected": 0, "clean": True}
            for k in ("commands", "readings", "command_log")
        },
        "expected_alerts": [],
        "time_to_detect": {},
        "passed": True,
        "problems": [],
        "load": {
            "devices": 2000,
            "processes": 0,
            "reports": "reports/load/20261130T104500Z-devices",
            "run": {**calm, "seconds": 200.0},
            "windows": {"before": calm, "fault": fault, "whole": {**fault, "seconds": 80.0}},
            "readings": readings,
            "locust_exit": 1,
        },
    }


def test_the_command_passes_the_load_to_the_experiment_and_fails_on_missing_readings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    seen: dict[str, Any] = {}
    calls = []

    def fake_run(exp, settings, seconds, progress, load):  # the experiment itself needs a stack
        calls.append(exp.name)
        seen.update(name=exp.name, seconds=seconds, load=load)
        r = _loaded_report(missing=3)
        r["passed"], r["problems"] = False, ["load: 3 readings answered 201 not in Postgres"]
        return r

    monkeypatch.setattr(experiment, "run", fake_run)
    monkeypatch.setattr(report, "write", lambda r: tmp_path)
    out = CliRunner().invoke(
        cli.app, ["run", "rabbitmq-down", "--load", "2000", "--load-processes", "2"]
    )
    assert seen == {
        "name": "rabbitmq-down",
        "seconds": 25,
        "load": LoadOptions(devices=2000, processes=2),
    }
    assert out.exit_code == 1, out.output
    assert "FAILED" in out.output
    assert "load: 2000 devices" in out.output and "4,100 × 503" in out.output
    assert "missing in Postgres 3" in out.output

    refused = CliRunner().invoke(cli.app, ["run", "rabbitmq-down", "--load", "-5"])
    assert refused.exit_code == 2 and calls == ["rabbitmq-down"]  # refused before running


def test_window_figures_count_failures_by_status_and_p99_in_the_window():
    def row(t: int, name: str, statuses: dict[str, int], ms: int) -> dict[str, Any]:
        method = "COMMAND" if name == "end-to-end" else "POST"
        failed = sum(statuses.values()) - sum(n for s, n in statuses.items() if s[0] in "2o")
        count = sum(statuses.values())
        return {
            "t": t,
            "method": method,
            "name": name,
            "node": "local",
            "count": count,
            "failures": failed,
            "statuses": statuses,
            "hist": {str(ms): count},
        }

    rows = [
        row(100, "/sensors", {"201": 50}, 20),
        row(101, "/sensors", {"201": 10, "503": 30}, 900),
        row(102, "/sensors", {"503": 40, "error": 2}, 1500),
        row(102, "end-to-end", {"ok": 3}, 400),
        row(103, "/sensors", {"201": 60}, 30),
    ]
    fault = window_figures(rows, 101, 103)
    assert fault["requests"] == 82 and fault["requests_per_s"] == 41.0
    assert fault["failures"] == 72
    assert fault["failures_by_status"] == {"503": 70, "error": 2}
    assert fault["sensors_p99_ms"] == 1500.0 and fault["command_e2e_p99_ms"] == 400.0
    calm = window_figures(rows, 103, 104)
    assert calm["failures"] == 0 and calm["failures_by_status"] == {}
    assert failures_by_status({"200": 1, "204": 2, "429": 3, "ok": 4}) == {"429": 3}
    # the plot's series: HTTP answers per second (not the command latency entries)
    assert per_second(rows, 100, 103) == [[100, 50, 0], [101, 10, 30], [102, 0, 42]]


def test_phases_of_an_experiment_for_the_load_figures():
    r = {"fault_start": 100.0, "fault_end": 125.0, "recovery_seconds": 5.0, "drained_at": 140.0}
    assert experiment._load_windows(r, ready_at=60.0) == {
        "before": (60.0, 100.0),
        "fault": (100.0, 125.0),
        "recovery": (125.0, 130.0),
        "after": (130.0, 140.0),
        "whole": (60.0, 140.0),
    }
    assert experiment._load_windows({}, ready_at=60.0) == {}  # the experiment never ran


def test_a_loaded_system_recovers_to_its_own_standing_backlog():
    assert experiment._backlog_limit([(1.0, 3), (2.0, None)], before=10.0) == 200
    # 900 messages stood in the queues before the fault: recovered below 1,800, not 200
    assert experiment._backlog_limit([(1.0, 900), (20.0, 50_000)], before=10.0) == 1800


def test_reports_show_the_load_and_keep_loaded_runs_apart(tmp_path: Path):
    r = _loaded_report(missing=0)
    md = report.markdown(r)
    assert "## Background load: 2000 emulated devices (locust)" in md
    assert "| fault | 25 | 360 | 4200 | 4,100 × 503, 100 × error | 1,200 ms | – |" in md
    assert "missing 0" in md and "reports/load/20261130T104500Z-devices" in md
    table = report.load_table([r]).splitlines()
    assert table[2] == (
        "| rabbitmq-down | 2,000 | 25 | 80 | 0 / 0 / 0 | 2.1 | 360 | "
        "4,200 (4,100 × 503, 100 × error) | 1,200 ms | 50,000 / 0 |"
    )
    r["load"]["windows"]["before"] = {**r["load"]["windows"]["before"], "failures": 300}
    assert "4,200 (4,100 × 503, 100 × error) + 300 begun before it" in report.load_table([r])
    plain = {k: v for k, v in r.items() if k != "load"}
    for one in (plain, r):
        folder = tmp_path / report.label(one).replace(" ", "-")
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(one))
    assert set(report.latest(tmp_path)) == {"rabbitmq-down", "rabbitmq-down load 2000"}
