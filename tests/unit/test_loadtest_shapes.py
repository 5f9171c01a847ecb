"""The load shapes: step ramp, soak and spike schedules, building them from options and the
environment, and the locust shape classes (checked in a subprocess: no locust import in this
process, locust patches everything with gevent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import profiles


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
