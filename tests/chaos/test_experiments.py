"""Every chaos experiment in its short form: nothing accepted is lost, duplicated or invented,
and the system recovers within the experiment's bound. Run with `make test` (whole matrix) or
`make chaos` (long forms, through `iotctl chaos run --all --long`). One experiment also runs
under a small locust load (`make chaos-load` runs the 2,000-device forms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import experiment, report
from iot.settings import get_settings
from loadtest.background import LoadOptions

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


@pytest.mark.parametrize("name", experiment.names())
def test_experiment_loses_nothing_and_recovers(name: str):
    result = experiment.run(experiment.load(name), get_settings())
    folder = report.write(result)
    for kind, counts in result["counts"].items():
        assert counts["clean"], f"{kind}: {counts} (report: {folder})"
    assert result["drained"], f"did not drain (report: {folder})"
    assert result["passed"], f"{result['problems']} (report: {folder})"


def test_the_checker_catches_loss_from_an_unsafe_auto_ack_consumer():
    exp = experiment.load("auto-ack-consumer", experiment.UNSAFE)
    result = experiment.run(exp, get_settings())
    report.write(result)
    assert result["stolen_by_unsafe_consumer"] > 0, "the unsafe consumer took nothing"
    assert result["counts"]["readings"]["lost"] > 0
    assert result["counts"]["readings"]["lost"] <= result["stolen_by_unsafe_consumer"] * 1000
    assert not result["passed"]


def test_kill_api_1_under_a_100_device_load_loses_nothing_and_stores_the_loads_readings():
    result = experiment.run(
        experiment.load("kill-api-1"), get_settings(), load=LoadOptions(devices=100)
    )
    folder = report.write(result)
    for kind, counts in result["counts"].items():
        assert counts["clean"], f"{kind}: {counts} (report: {folder})"
    load = result["load"]
    assert load["windows"]["fault"]["requests"] > 0, f"no load during the fault ({folder})"
    readings = load["readings"]
    assert readings["devices"] == 100 and readings["accepted"] > 0, readings
    assert readings["missing"] == 0, f"load readings answered 201 not in Postgres ({folder})"
    assert (Path(load["reports"]) / "report.md").exists()
    assert result["passed"], f"{result['problems']} (report: {folder})"
