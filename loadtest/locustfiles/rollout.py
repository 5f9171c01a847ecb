"""The devices scenario, plus an operator who rolls one command out to the whole running fleet
while it polls: ``iotctl load run rollout --devices 5000``.

Once the fleet is up (``LOAD_ROLLOUT_AFTER`` seconds after the start, 60 by default, and every
device of the shape running) the operator creates a rollout of ``set_interval`` to the running
devices (by id: the first N of the devices file are the running ones), in phases of 1 %, 10 %,
100 % at ``LOAD_ROLLOUT_RATE`` devices a minute (6,000 by default), and follows it every 2 s
until it ends. Every sample goes to ``rollout.jsonl`` in the run's folder; the report gives the
time to reach every device and the rate held (:mod:`loadtest.rollout`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import gevent
from locust import constant, task

from loadtest import shapes
from loadtest.locustfiles.devices import *  # noqa: F403 - the fleet, the operator, the viewers
from loadtest.locustfiles.devices import RUN_DIR, _fleet, _Person, running_devices

AFTER_SECONDS = float(os.environ.get("LOAD_ROLLOUT_AFTER", "60"))
RATE_PER_MINUTE = float(os.environ.get("LOAD_ROLLOUT_RATE", "6000"))
COMMAND = "set_interval"  # a command every emulated device knows (loadtest/device.py)
MAX_TARGETS = 10_000  # POST /rollouts takes at most this many device ids


class RolloutOperatorUser(_Person):
    """Creates one rollout to the running fleet, then follows it to its end."""

    fixed_count = 1
    wait_time = constant(2)

    def on_start(self) -> None:
        super().on_start()
        self.started = time.time()
        self.rollout_id: str | None = None
        self.done = False
        self.out = Path(RUN_DIR) / "rollout.jsonl" if RUN_DIR else None

    def on_stop(self) -> None:
        # a rollout still running when the run ends would go on to devices nobody emulates
        if self.rollout_id is not None and not self.done:
            self.call("POST", f"/rollouts/{self.rollout_id}/cancel", "/rollouts/[id]/cancel")
            self._write({"t": time.time(), "cancelled_at_end": self.rollout_id})

    def _write(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            with self.out.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    @task
    def follow(self) -> None:
        if self.done:
            gevent.sleep(5)
            return
        if self.rollout_id is None:
            self._create()
            return
        r = self.call("GET", f"/rollouts/{self.rollout_id}?limit=1", "/rollouts/[id]")
        if r is None or r.status_code != 200:
            return
        body = r.json()
        self._write(
            {
                "t": time.time(),
                "state": body["state"],
                "sent": body["sent"],
                "total": body["total"],
                "phase": body["phase"],
                "phases": [p["counts"] for p in body["phases"]],
            }
        )
        if body["state"] in ("completed", "aborted", "cancelled"):
            self.done = True

    def _create(self) -> None:
        running = running_devices(self.environment)
        shape = self.environment.shape_class
        wanted = shape.profile.max_devices if isinstance(shape, shapes.FleetShape) else 1
        if time.time() - self.started < AFTER_SECONDS or running < wanted:
            return
        ids = [d["id"] for d in _fleet()["devices"][: min(running, MAX_TARGETS)]]
        body = {
            "command": {"name": COMMAND, "args": {"seconds": 10}, "ttl": 3600},
            "target": {"device_ids": ids},
            "phases": [1, 10, 100],
            "rate_per_minute": RATE_PER_MINUTE,
            "max_failure_share": 0.05,
            "min_finished": 20,
        }
        r = self.call("POST", "/rollouts", "/rollouts", json=body)
        if r is not None and r.status_code == 201:
            self.rollout_id = r.json()["id"]
            self._write(
                {
                    "t": time.time(),
                    "created": self.rollout_id,
                    "targets": len(ids),
                    "rate_per_minute": RATE_PER_MINUTE,
                }
            )
