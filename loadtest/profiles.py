"""How many devices run when: the schedules behind the locust load shapes, without locust.

A profile answers ``target(t)`` for ``t`` seconds since the start: the number of devices, the
spawn rate (devices started or stopped per second) and the step it belongs to, or ``None`` when
the run is over. ``steps()`` lists the planned steps, which the capacity report measures one by
one. Kept free of locust so that it can be imported (and tested) without gevent patching.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

SHAPES = ("step", "soak", "spike")


class ProfileError(ValueError):
    """A profile's parameters make no sense (e.g. zero devices); the message says which."""


@dataclass(frozen=True)
class Step:
    """One planned step: ``devices`` run from ``start`` to ``end`` (seconds since the start)."""

    index: int
    devices: int
    start: float
    end: float


@dataclass(frozen=True)
class Target:
    devices: int
    spawn_rate: float
    step: int


class Profile:
    """A sequence of steps; the devices of a step are reached at ``spawn_rate`` per second."""

    name = "profile"

    def __init__(self, steps: list[Step], spawn_rate: float) -> None:
        if not steps:
            raise ProfileError("a profile needs at least one step")
        if spawn_rate <= 0:
            raise ProfileError("the spawn rate must be positive")
        self._steps = steps
        self.spawn_rate = spawn_rate

    def steps(self) -> list[Step]:
        return list(self._steps)

    @property
    def duration(self) -> float:
        return self._steps[-1].end

    @property
    def max_devices(self) -> int:
        return max(s.devices for s in self._steps)

    def rate_for(self, step: Step) -> float:
        """The spawn rate used while entering ``step``."""
        return self.spawn_rate

    def target(self, t: float) -> Target | None:
        """What should run ``t`` seconds after the start; ``None`` once the profile is over."""
        for step in self._steps:
            if step.start <= t < step.end:
                return Target(step.devices, self.rate_for(step), step.index)
        return None

    def ticks(self, every: float = 1.0) -> list[Target]:
        """The targets a shape returns when asked every ``every`` seconds (for tests and docs)."""
        out = []
        for i in range(math.ceil(self.duration / every) + 1):
            target = self.target(i * every)
            if target is None:
                break
            out.append(target)
        return out


def _check(devices: int, seconds: float) -> None:
    if devices < 1:
        raise ProfileError(f"devices must be at least 1 (got {devices})")
    if seconds <= 0:
        raise ProfileError(f"durations must be positive (got {seconds})")


class StepRamp(Profile):
    """Steps of ``step_devices`` more devices, each held ``step_seconds``, up to ``devices``.

    The last step may be smaller so that the ramp ends exactly at ``devices``.
    """

    name = "step"

    def __init__(
        self, devices: int, step_devices: int, step_seconds: float, spawn_rate: float
    ) -> None:
        _check(devices, step_seconds)
        if step_devices < 1:
            raise ProfileError(f"step devices must be at least 1 (got {step_devices})")
        count = math.ceil(devices / step_devices)
        steps = [
            Step(i, min((i + 1) * step_devices, devices), i * step_seconds, (i + 1) * step_seconds)
            for i in range(count)
        ]
        super().__init__(steps, spawn_rate)


class Soak(Profile):
    """``devices`` devices for ``seconds`` (one step)."""

    name = "soak"

    def __init__(self, devices: int, seconds: float, spawn_rate: float) -> None:
        _check(devices, seconds)
        super().__init__([Step(0, devices, 0.0, seconds)], spawn_rate)


class Spike(Profile):
    """A baseline (``base_fraction`` of the devices), a sudden spike to all ``devices``, then the
    baseline again; each third of ``seconds``. The spike starts at ``spike_rate`` per second."""

    name = "spike"

    def __init__(
        self,
        devices: int,
        seconds: float,
        spawn_rate: float,
        base_fraction: float = 0.2,
        spike_rate: float | None = None,
    ) -> None:
        _check(devices, seconds)
        if not 0 < base_fraction < 1:
            raise ProfileError(f"the spike's base fraction must be in (0, 1) (got {base_fraction})")
        base = max(1, round(devices * base_fraction))
        third = seconds / 3
        steps = [
            Step(0, base, 0.0, third),
            Step(1, devices, third, 2 * third),
            Step(2, base, 2 * third, seconds),
        ]
        super().__init__(steps, spawn_rate)
        self.spike_rate = spike_rate if spike_rate else max(spawn_rate, devices / 5)

    def rate_for(self, step: Step) -> float:
        return self.spike_rate if step.index >= 1 else self.spawn_rate


def build(
    shape: str,
    devices: int,
    duration: float | None = None,
    step_devices: int | None = None,
    step_seconds: float | None = None,
    spawn_rate: float = 50.0,
) -> Profile:
    """The profile named ``shape`` (step, soak or spike).

    For ``step``, ``step_devices`` defaults to a fifth of ``devices`` and ``step_seconds`` to
    ``duration`` divided by the number of steps (or 60 s without a duration).

    Raises:
        ProfileError: an unknown shape or parameters out of range.
    """
    if shape == "step":
        k = step_devices or max(1, math.ceil(devices / 5))
        count = math.ceil(devices / k) if devices >= 1 else 1
        t = step_seconds or (duration / count if duration else 60.0)
        return StepRamp(devices, k, t, spawn_rate)
    if shape == "soak":
        return Soak(devices, duration or 300.0, spawn_rate)
    if shape == "spike":
        return Spike(devices, duration or 180.0, spawn_rate)
    raise ProfileError(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")


# The environment variables through which `iotctl load run` (or a person starting locust by
# hand) chooses the shape; every locust process reads the same values.
ENV_SHAPE = "LOAD_SHAPE"
ENV_DEVICES = "LOAD_DEVICES"
ENV_DURATION = "LOAD_DURATION"
ENV_STEP_DEVICES = "LOAD_STEP_DEVICES"
ENV_STEP_SECONDS = "LOAD_STEP_SECONDS"
ENV_SPAWN_RATE = "LOAD_SPAWN_RATE"


def from_env(env: Mapping[str, str] | None = None) -> Profile | None:
    """The profile described by ``LOAD_SHAPE`` and friends; ``None`` when ``LOAD_SHAPE`` is
    unset or ``none`` (locust's own ``--users``/``--spawn-rate`` then apply).

    Raises:
        ProfileError: a variable that is not a number, or parameters out of range.
    """
    env = os.environ if env is None else env
    shape = env.get(ENV_SHAPE, "").strip().lower()
    if shape in ("", "none"):
        return None

    def number(name: str, kind: type[int] | type[float]) -> float | None:
        raw = env.get(name, "").strip()
        if not raw:
            return None
        try:
            return kind(raw)
        except ValueError as exc:
            raise ProfileError(f"{name}={raw!r} is not a number") from exc

    devices = number(ENV_DEVICES, int)
    if devices is None:
        raise ProfileError(f"{ENV_SHAPE}={shape} needs {ENV_DEVICES}")
    step_devices = number(ENV_STEP_DEVICES, int)
    return build(
        shape,
        int(devices),
        duration=number(ENV_DURATION, float),
        step_devices=int(step_devices) if step_devices else None,
        step_seconds=number(ENV_STEP_SECONDS, float),
        spawn_rate=number(ENV_SPAWN_RATE, float) or 50.0,
    )
