"""A load in the background of something else ends when told to: the locust shape drains (zero
users, then the end) as soon as its stop file appears, long before its planned duration. No
network: the shape runs in a subprocess (importing locust patches the process with gevent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, sys
from pathlib import Path
from loadtest import shapes
shape = shapes.selected()()
shape.extra_users = 3
out = []
for t in (0, 10, 20, 21, 22, 30):
    if t == 20:
        Path(sys.argv[1]).touch()
    shape.get_run_time = lambda t=t: t
    out.append(shape.tick())
print(json.dumps(out))
"""


def test_the_shape_drains_when_the_stop_file_appears(tmp_path: Path):
    stop = tmp_path / "stop"
    env = {
        **os.environ,
        "LOAD_SHAPE": "soak",
        "LOAD_DEVICES": "100",
        "LOAD_DURATION": "3600",
        "LOAD_SPAWN_RATE": "50",
        "LOAD_RUN_DIR": str(tmp_path),
        "LOAD_STOP_FILE": str(stop),
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(stop)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ticks = json.loads(out.stdout.strip().splitlines()[-1])
    # 100 devices + 3 fixed users until the stop file, then zero users until none is left
    # (no runner here: at once) and the last samples are flushed, then the end
    assert ticks == [[103, 50.0], [103, 50.0], [0, 1000.0], [0, 1000.0], [0, 1000.0], None]
    events = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["step", "end", "drained"]
