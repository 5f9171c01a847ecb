"""Load shapes for locust: step ramp (find the knee), soak (constant) and spike.

Each is a :class:`locust.LoadTestShape` built from a :mod:`loadtest.profiles` schedule whose
parameters come from the environment (``LOAD_DEVICES``, ``LOAD_DURATION``, ``LOAD_STEP_DEVICES``,
``LOAD_STEP_SECONDS``, ``LOAD_SPAWN_RATE``); ``LOAD_SHAPE`` picks one (:func:`selected`). The
shape runs in locust's master (or only) process and writes when each step starts and when its
devices are all running to ``$LOAD_RUN_DIR/steps.jsonl``, which the capacity report reads.

Users with a ``fixed_count`` (the operator, the web viewers) come on top of the devices:
the locustfile sets :attr:`FleetShape.extra_users` when locust starts.

When the profile is over the shape first asks for zero users, so that every user finishes the
request it is in (locust's ``--stop-timeout``) and the workers report their last samples, and
ends the test only when no user is left and one more sample flush has passed (or after
``LOAD_DRAIN_SECONDS``, 60). A headless locust would otherwise quit its workers at once. The
same drain starts early when the file ``LOAD_STOP_FILE`` names appears (a run in the background
of something else, e.g. a chaos experiment, ends when that does).

Importing this module imports locust (and so patches the process with gevent).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import ClassVar

from locust import LoadTestShape

from loadtest import profiles

ENV_RUN_DIR = "LOAD_RUN_DIR"
ENV_STOP_FILE = "LOAD_STOP_FILE"  # when this file appears, the run ends early (and drains)
FLUSH_GRACE = 7.0  # seconds after the last user stopped: workers flush their samples every 5 s


class StepLog:
    """Appends the shape's events (step started, step reached, end) as JSON lines."""

    def __init__(self, run_dir: str | None) -> None:
        self.path = Path(run_dir) / "steps.jsonl" if run_dir else None

    def write(self, event: str, **fields: object) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")


class FleetShape(LoadTestShape):
    """Follows a :class:`~loadtest.profiles.Profile` built from the environment.

    Raises:
        loadtest.profiles.ProfileError: (when instantiated) the environment describes no valid
            profile of this shape.
    """

    abstract = True
    shape: ClassVar[str] = ""
    extra_users: int = 0

    def __init__(self) -> None:
        super().__init__()
        env = dict(os.environ)
        env[profiles.ENV_SHAPE] = self.shape
        env.setdefault(profiles.ENV_DEVICES, "1")
        profile = profiles.from_env(env)
        assert profile is not None  # ENV_SHAPE is set just above
        self.profile = profile
        self.log = StepLog(os.environ.get(ENV_RUN_DIR))
        self._step = -1
        self._reached = False
        self._draining: float | None = None
        self._empty_since: float | None = None
        self.drain_limit = float(os.environ.get("LOAD_DRAIN_SECONDS") or 60)
        stop = os.environ.get(ENV_STOP_FILE, "").strip()
        self.stop_file = Path(stop) if stop else None

    def _drain(self, t: float) -> tuple[int, float] | None:
        """After the profile: zero users until they are all gone and flushed, then the end."""
        if self._draining is None:
            self._draining = t
            self.log.write("end")
        users = self.runner.user_count if self.runner is not None else 0
        if users == 0 and self._empty_since is None:
            self._empty_since = t
        if (self._empty_since is not None and t - self._empty_since >= FLUSH_GRACE) or (
            t - self._draining > self.drain_limit
        ):
            self.log.write("drained", users=users)
            return None
        return 0, max(self.profile.spawn_rate, 1000.0)

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        stopped = self._draining is not None or (
            self.stop_file is not None and self.stop_file.exists()
        )
        target = None if stopped else self.profile.target(t)
        if target is None:
            return self._drain(t)
        users = target.devices + self.extra_users
        if target.step != self._step:
            self._step, self._reached = target.step, False
            self.log.write("step", index=target.step, devices=target.devices, users=users)
        elif not self._reached and self.runner is not None and self.runner.user_count >= users:
            self._reached = True
            self.log.write("reached", index=target.step, devices=target.devices)
        return users, target.spawn_rate


class StepRampShape(FleetShape):
    """Steps of ``LOAD_STEP_DEVICES`` devices, each held ``LOAD_STEP_SECONDS``, up to
    ``LOAD_DEVICES``: the capacity report finds the knee in it."""

    abstract = False
    shape = "step"


class SoakShape(FleetShape):
    """``LOAD_DEVICES`` devices for ``LOAD_DURATION`` seconds."""

    abstract = False
    shape = "soak"


class SpikeShape(FleetShape):
    """A fifth of ``LOAD_DEVICES``, then all of them at once, then a fifth again."""

    abstract = False
    shape = "spike"


SHAPE_CLASSES: dict[str, type[FleetShape]] = {
    "step": StepRampShape,
    "soak": SoakShape,
    "spike": SpikeShape,
}


def selected() -> type[FleetShape] | None:
    """The shape class named by ``LOAD_SHAPE`` (step, soak, spike), or ``None`` when unset.

    Raises:
        loadtest.profiles.ProfileError: an unknown shape name.
    """
    name = os.environ.get(profiles.ENV_SHAPE, "").strip().lower()
    if name in ("", "none"):
        return None
    if name not in SHAPE_CLASSES:
        raise profiles.ProfileError(
            f"{profiles.ENV_SHAPE}={name!r}: one of {', '.join(SHAPE_CLASSES)} or none"
        )
    return SHAPE_CLASSES[name]
