"""One load-test run, start to finish: check the stack, prepare the devices, run locust headless
as a subprocess while sampling CPU, then write the capacity report.

Everything goes to ``reports/load/<UTC time>-<scenario>/``: ``devices.json``, ``meta.json``,
locust's CSV files, HTML report and log, ``samples.jsonl``, ``steps.jsonl``, ``cpu.jsonl``,
``ledger/``, ``report.json``, ``report.md`` and the PNG plots.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from iot.settings import Settings, get_settings
from iot.stack.control import ControlError, Supervisor
from loadtest import cpu, fleet, plots, profiles, render, report, verify, workerbench

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "load"
LOCUSTFILES = Path(__file__).resolve().parent / "locustfiles"
PROGRESS_EVERY = 10.0
STOP_FILE = "stop"  # in the run folder: the shape ends the run when it appears


class LoadError(RuntimeError):
    """A run could not start or finish; the message says why and what to do."""


@dataclass
class RunOptions:
    """What to run. ``duration`` None: the shape's default (soak 300 s, spike 180 s, step
    ``step_seconds`` per step)."""

    scenario: str = "devices"
    devices: int = 200
    duration: float | None = None
    shape: str = "soak"
    processes: int = 0
    external_workers: int = 0
    step_devices: int | None = None
    step_seconds: float | None = None
    spawn_rate: float = 50.0
    reading_interval: float = 10.0
    batch: int = 5
    poll_wait: int = 10
    commands_per_device_hour: float = 6.0
    viewers: int = 2
    classes: list[str] = field(default_factory=list)
    reuse: bool = False
    devices_file: Path | None = None
    verify: bool = True
    verify_wait: float = 60.0  # seconds the accepted readings may take to reach Postgres


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    failures: int
    requests: int
    locust_exit: int
    cut_short: str = ""  # why the run did not apply its whole profile ("" when it did)


def scenarios() -> list[str]:
    """The scenario names: one locustfile each in ``loadtest/locustfiles/``."""
    return sorted(p.stem for p in LOCUSTFILES.glob("*.py") if not p.stem.startswith("_"))


def check_stack(s: Settings) -> None:
    """Raises LoadError unless the supervisor runs and the API answers through nginx."""
    try:
        running = Supervisor(s).running()
    except (OSError, ControlError):
        running = False
    if not running:
        raise LoadError("the stack is not running: start it with `iotctl up`")
    try:
        r = httpx.get(f"{s.base_url}/ping", timeout=5)
    except httpx.HTTPError as exc:
        raise LoadError(
            f"the API does not answer at {s.base_url}: {exc}; see `iotctl status`"
        ) from exc
    if r.status_code != 200:
        raise LoadError(f"{s.base_url}/ping answered {r.status_code}; see `iotctl status`")


def raise_open_files() -> int:
    """Raise this process's open-files limit (inherited by locust) to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _profile(opts: RunOptions) -> profiles.Profile:
    try:
        return profiles.build(
            opts.shape,
            opts.devices,
            duration=opts.duration,
            step_devices=opts.step_devices,
            step_seconds=opts.step_seconds,
            spawn_rate=opts.spawn_rate,
        )
    except profiles.ProfileError as exc:
        raise LoadError(str(exc)) from exc


def _env(opts: RunOptions, profile: profiles.Profile, run_dir: Path, devices: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "LOAD_RUN_DIR": str(run_dir),
            "LOAD_DEVICES_FILE": str(devices),
            "LOAD_SHAPE": opts.shape,
            "LOAD_DEVICES": str(opts.devices),
            "LOAD_DURATION": str(profile.duration),
            "LOAD_STEP_DEVICES": str(opts.step_devices or ""),
            "LOAD_STEP_SECONDS": str(profile.steps()[0].end if opts.shape == "step" else ""),
            "LOAD_SPAWN_RATE": str(opts.spawn_rate),
            "LOAD_READING_INTERVAL": str(opts.reading_interval),
            "LOAD_BATCH": str(opts.batch),
            "LOAD_POLL_WAIT": str(opts.poll_wait),
            "LOAD_COMMANDS_PER_DEVICE_HOUR": str(opts.commands_per_device_hour),
            "LOAD_VIEWERS": str(opts.viewers),
            "LOAD_WORKERS": str(max(1, opts.processes, opts.external_workers)),
            "LOAD_RUN_STARTED": f"{time.time():.3f}",
            "LOAD_STOP_FILE": str(run_dir / STOP_FILE),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# What a worker on another machine needs besides the devices file (the shape runs in the master).
WORKER_VARIABLES = (
    "LOAD_READING_INTERVAL", "LOAD_BATCH", "LOAD_POLL_WAIT", "LOAD_COMMANDS_PER_DEVICE_HOUR",
    "LOAD_VIEWERS", "LOAD_WORKERS", "LOAD_RUN_STARTED",
)  # fmt: skip


def worker_instructions(opts: RunOptions, env: dict, devices: Path) -> str:
    """How to start the external workers: same repository and locustfile, a copy of the
    devices file, the same behaviour variables, ``--worker --master-host``."""
    variables = " ".join(f"{k}={env[k]}" for k in WORKER_VARIABLES)
    return (
        f"waiting for {opts.external_workers} locust worker process(es) (up to 10 minutes).\n"
        f"On each worker machine: copy {devices} there, then start (in the repository, "
        f"one line per worker process; LOAD_WORKERS counts them all):\n"
        f"  LOAD_DEVICES_FILE=devices.json {variables} \\\n"
        f"    .venv/bin/locust -f loadtest/locustfiles/{opts.scenario}.py --worker "
        f"--master-host <this machine>"
    )


def _latest_history(path: Path) -> dict[str, dict[str, str]]:
    """The newest row per (type, name) of locust's stats history CSV."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    newest = rows[-1]["Timestamp"]
    return {f"{r['Type']} {r['Name']}".strip(): r for r in rows if r["Timestamp"] == newest}


def progress_line(history: dict[str, dict[str, str]], elapsed: float) -> str:
    """One progress line from locust's newest stats: users, requests/s, failures, p99s."""
    total = history.get("Aggregated", {})
    sensors = history.get("POST /sensors", {})
    e2e = history.get("COMMAND end-to-end", {})
    return (
        f"[{elapsed:5.0f}s] users {total.get('User Count', '0'):>6}  "
        f"req/s {float(total.get('Requests/s') or 0):8.1f}  "
        f"failures {total.get('Total Failure Count', '0'):>5}  "
        f"p99 POST /sensors {sensors.get('99%', 'N/A'):>6} ms  "
        f"p99 command e2e {e2e.get('99%', 'N/A'):>6} ms"
    )


def _roots(s: Settings, generator_pid: int) -> Callable[[], dict[str, int]]:
    supervisor = Supervisor(s)

    def roots() -> dict[str, int]:
        found = {report.GENERATOR: generator_pid}
        try:
            for name, info in supervisor.info().items():
                if info.get("pid"):
                    found[name] = int(info["pid"])
            found.update(workerbench.member_postmasters(s, found))
        except (OSError, ControlError, Exception):  # noqa: BLE001 - the stack may be restarting
            pass
        return found

    return roots


def _locust_version() -> str:
    try:
        from importlib.metadata import version

        return version("locust")
    except Exception:  # noqa: BLE001 - only informative
        return ""


class Running:
    """A locust run started by :func:`start`: its folder, process and CPU sampler.
    :func:`finish` waits for it to end (when its profile ends, or earlier after :meth:`stop`)
    and writes the report."""

    def __init__(
        self,
        opts: RunOptions,
        profile: profiles.Profile,
        run_dir: Path,
        meta: dict[str, Any],
        proc: subprocess.Popen[bytes],
        sampler: cpu.Sampler,
        out: Any,
    ) -> None:
        self.opts, self.profile, self.run_dir, self.meta = opts, profile, run_dir, meta
        self.proc, self.sampler, self._out = proc, sampler, out
        self.started = time.monotonic()
        self.limit = profile.duration + 180 + (600 if opts.external_workers else 0)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def history(self) -> dict[str, dict[str, str]]:
        """Locust's newest statistics row per (type, name)."""
        return _latest_history(self.run_dir / "locust_stats_history.csv")

    def line(self) -> str:
        """One progress line from locust's newest statistics."""
        return progress_line(self.history(), self.elapsed)

    def reached(self) -> bool:
        """Whether the shape has started every device of its last planned step."""
        last = self.profile.steps()[-1].index
        return any(
            e.get("event") == "reached" and e.get("index") == last
            for e in cpu.read(self.run_dir / "steps.jsonl")
        )

    def stop(self) -> None:
        """Ask the shape to end the run now: zero users (each finishes its request), the last
        samples and ledgers flushed, then locust exits."""
        (self.run_dir / STOP_FILE).touch()

    def wait(self, progress: Callable[[str], None]) -> int:
        """Wait for locust to exit, printing progress every PROGRESS_EVERY seconds; stops it
        (SIGINT, then SIGKILL) if it overruns its profile by three minutes. Returns its exit
        status."""
        try:
            while True:
                try:
                    code = self.proc.wait(timeout=PROGRESS_EVERY)
                    break
                except subprocess.TimeoutExpired:
                    pass
                progress(self.line())
                if self.elapsed > self.limit:
                    progress(f"locust overran its {self.limit:.0f} s: stopping it")
                    self.proc.send_signal(signal.SIGINT)
                    try:
                        code = self.proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        code = self.proc.wait()
                    break
        except KeyboardInterrupt:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
            raise
        finally:
            self.sampler.stop()
            self._out.close()
        return code


def run(opts: RunOptions, progress: Callable[[str], None] = print) -> RunResult:
    """Run one load test and write its report.

    Raises:
        LoadError: the stack is not running, an unknown scenario, bad shape parameters, the
            devices could not be registered, or locust did not run (its log is named).
    """
    return finish(start(opts, progress), progress)


def start(opts: RunOptions, progress: Callable[[str], None] = print) -> Running:
    """Check the stack, prepare the devices and start locust headless in the background.

    Raises:
        LoadError: as :func:`run`.
    """
    s = get_settings()
    if opts.scenario not in scenarios():
        raise LoadError(f"unknown scenario {opts.scenario!r}; one of {', '.join(scenarios())}")
    profile = _profile(opts)
    check_stack(s)
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{opts.scenario}"
    run_dir = REPORTS / name
    run_dir.mkdir(parents=True, exist_ok=False)
    reuse = opts.devices_file or (fleet.newest_file(REPORTS) if opts.reuse else None)
    try:
        devices = fleet.prepare(s.base_url, run_dir, profile.max_devices, reuse, progress)
    except fleet.FleetError as exc:
        raise LoadError(str(exc)) from exc
    files = raise_open_files()
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f", str(LOCUSTFILES / f"{opts.scenario}.py"),
        "--headless", "--host", s.base_url,
        "--csv", str(run_dir / "locust"), "--csv-full-history",
        "--html", str(run_dir / "locust.html"), "--only-summary",
        "--logfile", str(run_dir / "locust.log"), "--loglevel", "INFO",
        # users finish the request they are in when stopped: no reading is sent without its
        # answer being recorded
        "--stop-timeout", str(opts.poll_wait + 15),
    ]  # fmt: skip
    env = _env(opts, profile, run_dir, devices)
    if opts.processes > 0 and opts.external_workers > 0:
        raise LoadError("give --processes or --external-workers, not both")
    if opts.processes > 0:
        cmd += ["--processes", str(opts.processes)]
    elif opts.external_workers > 0:
        cmd += ["--master", "--expect-workers", str(opts.external_workers),
                "--expect-workers-max-wait", "600"]  # fmt: skip
        progress(worker_instructions(opts, env, devices))
    cmd += opts.classes
    meta: dict[str, Any] = {
        "run": name,
        "base_url": s.base_url,
        "locust_version": _locust_version(),
        "open_files_limit": files,
        "steps_planned": [asdict(st) for st in profile.steps()],
        "command": cmd,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "devices": profile.max_devices,
    }
    meta["started"] = time.time()
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    progress(
        f"running {opts.scenario} ({opts.shape}, up to {profile.max_devices} devices, "
        f"{profile.duration:.0f} s); results in {run_dir}"
    )
    out = (run_dir / "locust.out").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    sampler = cpu.Sampler(run_dir / "cpu.jsonl", _roots(s, proc.pid))
    sampler.start()
    return Running(opts, profile, run_dir, meta, proc, sampler, out)


def finish(running: Running, progress: Callable[[str], None] = print) -> RunResult:
    """Wait for locust to end, then cancel the run's unanswered commands, write the capacity
    report and (unless ``verify`` is off) compare the readings answered 201 with Postgres.

    Raises:
        LoadError: locust did not run (its log is named).
    """
    s = get_settings()
    opts, run_dir, meta = running.opts, running.run_dir, running.meta
    code = running.wait(progress)
    # when the shape ended the run (locust may have exited a while before a caller came to
    # wait for it), else now
    drained = [e["t"] for e in cpu.read(run_dir / "steps.jsonl") if e.get("event") == "drained"]
    meta["ended"] = min(drained[-1], time.time()) if drained else time.time()
    meta["locust_exit"] = code
    meta["cut_short"] = cut_short(run_dir, meta["started"], meta["ended"], running.profile.duration)
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    if not (run_dir / "locust_stats.csv").exists():
        raise LoadError(f"locust did not run (exit {code}); see {run_dir / 'locust.out'}")
    try:  # commands sent near the end that no device took would expire later
        meta["cancelled_at_end"] = fleet.cancel_pending(
            run_dir, s.base_url, meta["ended"] - opts.poll_wait - 120
        )
    except fleet.FleetError as exc:
        progress(f"warning: could not cancel the run's pending commands: {exc}")
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    progress("locust finished; waiting for Prometheus's last scrape, then writing the report")
    time.sleep(max(0.0, meta["ended"] + 2 * _scrape_seconds(s) - time.time()))
    built = report.build(run_dir, f"http://{s.host}:{s.prometheus_port}", progress)
    if opts.verify:
        try:
            built["readings"].update(
                verify.check(run_dir, s.database_direct_url, opts.verify_wait, progress)
            )
        except Exception as exc:  # noqa: BLE001 - the report is still worth writing
            progress(f"warning: could not compare the ledger with Postgres: {exc}")
        (run_dir / "report.json").write_text(json.dumps(built, indent=1, default=str))
    drawn = plots.draw(run_dir, built)
    (run_dir / "report.md").write_text(render.markdown(built, drawn))
    totals = _locust_totals(run_dir / "locust_stats.csv")
    if meta["cut_short"]:
        progress(f"warning: {meta['cut_short']}")
    return RunResult(run_dir, built, totals[1], totals[0], code, meta["cut_short"])


# Locust's master stops the whole test when its last worker misses heartbeats; the figures
# of such a run describe a few seconds of load, not the profile.
_WORKERS_LOST = "The last worker went missing"
SHORT_MARGIN_SECONDS = 15.0


def cut_short(run_dir: Path, started: float, ended: float, planned: float) -> str:
    """Why the run did not apply its whole profile ("" when it did): locust lost its worker
    processes, or it ended well before the planned duration."""
    log = run_dir / "locust.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    if _WORKERS_LOST in text:
        return (
            f"the generator stopped after {ended - started:.0f} of {planned:.0f} s: locust's "
            "worker processes missed their heartbeats (a starved machine); the figures are not "
            "a capacity measurement - rerun on a quieter machine or with fewer devices per process"
        )
    if ended - started < planned - SHORT_MARGIN_SECONDS:
        return (
            f"the generator stopped after {ended - started:.0f} of {planned:.0f} s (see "
            f"{log}); the figures are not a capacity measurement"
        )
    return ""


def _scrape_seconds(s: Settings) -> float:
    raw = str(s.scrape_interval).strip()
    try:
        return float(raw[:-1]) * (60 if raw.endswith("m") else 1) if raw[-1] in "sm" else 5.0
    except (ValueError, IndexError):
        return 5.0


def _locust_totals(path: Path) -> tuple[int, int]:
    """(requests, failures) of locust's Aggregated row (the COMMAND entries included)."""
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0
