"""The rollout scenario's figures (loadtest/rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest import rollout


def test_time_to_send_and_to_reach_every_device_and_the_rate_held(tmp_path: Path) -> None:
    path = tmp_path / "rollout.jsonl"
    records = [
        {"t": 100.0, "created": "r1", "targets": 100, "rate_per_minute": 600.0},
        {
            "t": 102.0,
            "state": "running",
            "sent": 1,
            "total": 100,
            "phase": 0,
            "phases": [{"queued": 1}, {}, {}],
        },
        {
            "t": 110.0,
            "state": "running",
            "sent": 100,
            "total": 100,
            "phase": 2,
            "phases": [{"succeeded": 1}, {"succeeded": 9}, {"delivered": 90}],
        },
        {
            "t": 115.0,
            "state": "completed",
            "sent": 100,
            "total": 100,
            "phase": 2,
            "phases": [{"succeeded": 1}, {"succeeded": 9}, {"succeeded": 88, "failed": 2}],
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    s = rollout.summary(path)
    assert s is not None
    assert s["seconds_to_send_all"] == 10.0 and s["seconds_to_reach_all"] == 15.0
    assert s["rate_held_per_minute"] == 600.0
    assert s["counts"] == {"succeeded": 98, "failed": 2} and s["state"] == "completed"
    text = "\n".join(rollout.markdown(s))
    assert "ended **completed**" in text and "10.0 s" in text and "15.0 s" in text


def test_no_rollout_no_section(tmp_path: Path) -> None:
    assert rollout.summary(tmp_path / "rollout.jsonl") is None
    assert rollout.markdown(None) == []
