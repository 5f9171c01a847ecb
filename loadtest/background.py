"""Load in the background of something else (a chaos experiment): emulated devices of the
``devices`` scenario (``DeviceUser``, the operator and the web viewers, through nginx) run as an
open-ended soak from :meth:`BackgroundLoad.start` until :meth:`BackgroundLoad.finish`, which
ends locust, writes its capacity report under ``reports/load/`` and checks that every reading
answered 201 is in Postgres. :func:`window_figures` summarises any time window of the run
(requests/s, failures by status, p99s) from its per-second samples.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import runner, samples

# Longest a background run may last: the shape ends it when it is stopped, long before.
OPEN_ENDED_SECONDS = 4 * 3600.0  # a game day may last hours
RAMP_GRACE = 120.0  # seconds beyond devices / spawn rate to wait for every device to run
VERIFY_WAIT = 180.0  # seconds the readings may take to reach Postgres after the run


@dataclass(frozen=True)
class LoadOptions:
    """How much background load: ``devices`` emulated devices (``--reuse`` style: the newest
    registered fleet is reused and topped up, or ``devices_file``), ``processes`` locust worker
    processes (0: one process), started at ``spawn_rate`` per second, then ``settle`` seconds
    (one reading interval) before the experiment starts."""

    devices: int
    processes: int = 0
    spawn_rate: float = 50.0
    settle: float = 10.0
    devices_file: Path | None = None

    def run_options(self) -> runner.RunOptions:
        return runner.RunOptions(
            scenario="devices",
            devices=self.devices,
            duration=OPEN_ENDED_SECONDS,
            shape="soak",
            processes=self.processes,
            spawn_rate=self.spawn_rate,
            reuse=self.devices_file is None,
            devices_file=self.devices_file,
            verify=True,
            verify_wait=VERIFY_WAIT,
        )


def failures_by_status(statuses: dict[str, int]) -> dict[str, int]:
    """The failed answers among ``statuses`` (every status that is not 2xx; ``error`` = no
    answer)."""
    return {s: n for s, n in sorted(statuses.items()) if not (s.startswith("2") or s == "ok")}


def window_figures(rows: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """What the load did in ``[start, end)`` (epoch s): requests, requests/s and failures by
    status over every HTTP route, and the p99 of ``POST /sensors`` and of command end to end
    (created_at → device)."""
    agg = samples.aggregate(rows, start, end)
    total = agg.get("total") or {}
    sensors = agg.get("POST /sensors") or {}
    e2e = agg.get("COMMAND end-to-end") or {}
    return {
        "seconds": round(max(end - start, 0.0), 1),
        "requests": total.get("count", 0),
        "requests_per_s": total.get("rps", 0.0),
        "failures": total.get("failures", 0),
        "failures_by_status": failures_by_status(total.get("statuses") or {}),
        "sensors_per_s": sensors.get("rps", 0.0),
        "sensors_p99_ms": sensors.get("p99"),
        "command_e2e_p99_ms": e2e.get("p99"),
    }


def per_second(rows: list[dict[str, Any]], start: float, end: float) -> list[list[int]]:
    """``[second, answered 2xx, failed]`` for every second of ``[start, end)`` with requests
    (HTTP routes only), for a plot."""
    seconds: dict[int, list[int]] = {}
    for row in rows:
        if row["method"] == "COMMAND" or not start <= row["t"] < end:
            continue
        at = seconds.setdefault(int(row["t"]), [int(row["t"]), 0, 0])
        at[1] += row["count"] - row["failures"]
        at[2] += row["failures"]
    return [seconds[t] for t in sorted(seconds)]


def status_line(history: dict[str, dict[str, str]]) -> str:
    """A short line from locust's newest statistics: users, requests/s, failures so far and
    the p99 of ``POST /sensors``."""
    total = history.get("Aggregated", {})
    sensors = history.get("POST /sensors", {})
    return (
        f"load {total.get('User Count', '0')} users, "
        f"{float(total.get('Requests/s') or 0):.0f} req/s, "
        f"{total.get('Total Failure Count', '0')} failed, "
        f"p99 POST /sensors {sensors.get('99%', 'N/A')} ms"
    )


class BackgroundLoad:
    """One background locust run: :meth:`start`, :meth:`status` while it runs, :meth:`finish`."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.running: runner.Running | None = None
        self.ready_at: float | None = None

    def start(self, progress: Callable[[str], None] = print) -> None:
        """Start locust and return once every device runs and one reading interval passed.

        Raises:
            runner.LoadError: the stack does not answer, the devices could not be prepared,
                locust ended early or did not start every device in time.
        """
        self.running = running = runner.start(self.options.run_options(), progress)
        deadline = time.monotonic() + self.options.devices / self.options.spawn_rate + RAMP_GRACE
        last = time.monotonic()
        while not running.reached():
            if running.proc.poll() is not None or time.monotonic() > deadline:
                self.stop_now()
                raise runner.LoadError(
                    f"locust did not start {self.options.devices} devices "
                    f"(see {running.run_dir / 'locust.out'} and locust.log)"
                )
            if time.monotonic() - last >= runner.PROGRESS_EVERY:
                last = time.monotonic()
                progress(running.line())
            time.sleep(1)
        progress(
            f"{self.options.devices} devices running; {self.options.settle:g} s for every one "
            "to send and poll"
        )
        time.sleep(self.options.settle)
        self.ready_at = time.time()
        progress(running.line())

    def status(self) -> str:
        """A short line about the load now ("" before it started)."""
        if self.running is None:
            return ""
        return status_line(self.running.history())

    def stop(self) -> None:
        """Ask locust to end (it drains in the background); :meth:`finish` waits for it."""
        if self.running is not None:
            self.running.stop()

    def stop_now(self) -> None:
        """End locust without a report (start failed)."""
        if self.running is None:
            return
        self.running.stop()
        try:
            self.running.proc.wait(timeout=self.options.settle + 60)
        except subprocess.TimeoutExpired:  # it must not outlive the experiment
            self.running.proc.kill()
            self.running.proc.wait()
        finally:
            self.running.sampler.stop()

    def finish(
        self,
        windows: dict[str, tuple[float, float]],
        progress: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """Stop the load, write its report and compare its readings with Postgres; returns
        the figures for the experiment's report: per named window (``{name: (start, end)}``,
        epoch s) what :func:`window_figures` gives, the whole run's totals, the readings
        check and where locust's reports are.

        Raises:
            runner.LoadError: locust did not run (its log is named).
        """
        if self.running is None:
            raise runner.LoadError("the background load was never started")
        running = self.running
        running.stop()
        progress("stopping the load: every device finishes its request, then the report")
        result = runner.finish(running, progress)
        rows = list(samples.read(running.run_dir / "samples.jsonl"))
        ended = float(running.meta.get("ended") or time.time())
        began = float(running.meta.get("started") or ended)
        readings = result.report.get("readings") or {}
        return {
            "devices": self.options.devices,
            "processes": self.options.processes,
            "reports": str(running.run_dir),
            "report_md": str(running.run_dir / "report.md"),
            "run": window_figures(rows, began, ended + 1),
            "windows": {name: window_figures(rows, a, b) for name, (a, b) in windows.items()},
            "series": per_second(rows, began, ended + 1),
            "readings": {
                k: readings.get(k)
                for k in ("devices", "accepted", "stored", "missing", "extra", "dropped", "unsent")
                if k in readings
            },
            "locust_exit": result.locust_exit,
        }
