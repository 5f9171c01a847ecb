"""``iotctl load``: locust capacity runs, their reports and sizing plans (an iotctl plugin).

locust runs as a subprocess, so importing this module never patches iotctl with gevent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from iot.cli.users import delete_person
from loadtest import fleet as fleet_module
from loadtest import plan as planning
from loadtest import plots as plotting
from loadtest import profiles, render, runner
from loadtest import report as reporting

app = typer.Typer(
    help="Capacity planning with locust: emulated devices (one locust user each, own token), an "
    "operator and web viewers over the real HTTP API through nginx; step-ramp, soak and spike "
    "shapes; a capacity report per run (requests/s and latency per route, errors, CPU of every "
    "component and of the generator, SLOs from Prometheus, the knee); a sizing plan.",
    no_args_is_help=True,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("run")
def run(
    scenario: Annotated[
        str, typer.Argument(help="Scenario = a locustfile in loadtest/locustfiles/ (devices).")
    ],
    devices: Annotated[int, typer.Option(help="Devices at the top of the shape.")] = 200,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds in all (soak: 300, spike: 180; step: steps x step-seconds)."),
    ] = None,
    shape: Annotated[
        str, typer.Option(help="step (ramp to find the knee), soak (constant) or spike.")
    ] = "soak",
    processes: Annotated[
        int,
        typer.Option(
            help="Locust worker processes (0: one process, no master). Each takes "
            "its own slice of the devices."
        ),
    ] = 0,
    external_workers: Annotated[
        int,
        typer.Option(
            help="Run locust as a master that waits for this many worker processes "
            "started elsewhere (`locust --worker`; the command is printed)."
        ),
    ] = 0,
    step_devices: Annotated[
        int | None, typer.Option(help="Step ramp: devices added per step (default devices/5).")
    ] = None,
    step_seconds: Annotated[
        float | None,
        typer.Option(help="Step ramp: seconds each step is held (default duration/steps or 60)."),
    ] = None,
    spawn_rate: Annotated[float, typer.Option(help="Devices started per second.")] = 50.0,
    interval: Annotated[float, typer.Option(help="Seconds between a device's readings.")] = 10.0,
    batch: Annotated[int, typer.Option(help="Readings per POST /sensors.")] = 5,
    poll_wait: Annotated[int, typer.Option(help="GET /commands?wait= seconds (0-30).")] = 10,
    commands_per_device_hour: Annotated[
        float, typer.Option(help="Commands the operator sends per running device per hour.")
    ] = 6.0,
    viewers: Annotated[int, typer.Option(help="Web viewers polling like the web app.")] = 2,
    classes: Annotated[
        str,
        typer.Option(
            help="Only these user classes, comma-separated (DeviceUser, "
            "OperatorUser, WebViewerUser); default all."
        ),
    ] = "",
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse",
            help="Reuse the devices of the newest earlier run (registering "
            "more if it has too few) instead of registering a new fleet.",
        ),
    ] = False,
    devices_file: Annotated[
        Path | None, typer.Option(help="Reuse the devices of this devices.json.")
    ] = None,
    verify: Annotated[
        bool, typer.Option(help="Check that every reading answered 201 is in Postgres.")
    ] = True,
) -> None:
    """Register (or reuse) the devices, run locust headless with progress every 10 s, and
    write reports/load/<UTC time>-<scenario>/: locust's CSV and HTML, report.json,
    report.md and PNG plots. Exit status 1 if the generator stopped early, if any request
    failed (429 and 503 count) or if a reading answered 201 is missing from Postgres."""
    if not 0 <= poll_wait <= 30:
        _fail("--poll-wait must be between 0 and 30")
    if processes < 0:
        _fail("--processes must be 0 or more")
    opts = runner.RunOptions(
        scenario=scenario, devices=devices, duration=duration, shape=shape,
        processes=processes, external_workers=external_workers, step_devices=step_devices,
        step_seconds=step_seconds,
        spawn_rate=spawn_rate, reading_interval=interval, batch=batch, poll_wait=poll_wait,
        commands_per_device_hour=commands_per_device_hour, viewers=viewers,
        classes=[c.strip() for c in classes.split(",") if c.strip()], reuse=reuse,
        devices_file=devices_file, verify=verify,
    )  # fmt: skip
    try:
        result = runner.run(opts, progress=typer.echo)
    except (runner.LoadError, profiles.ProfileError) as exc:
        _fail(str(exc))
        return
    _summary(result)


def _summary(result: runner.RunResult) -> None:
    a = result.report["analysis"]
    r = result.report.get("readings") or {}
    typer.echo(f"\nreport: {result.run_dir / 'report.md'}")
    typer.echo(f"requests {result.requests:,}, failed {result.failures:,}")
    if a.get("knee"):
        typer.echo(f"knee: {a['knee']['devices']:,} devices")
    if a.get("bottleneck"):
        typer.echo(f"bottleneck: {a['bottleneck']['component']} ({a['bottleneck']['reason']})")
    if "missing" in r:
        typer.echo(
            f"readings answered 201: {r['accepted']:,}; in Postgres: {r['stored']:,}; "
            f"missing {r['missing']:,}"
        )
    if result.cut_short:
        typer.secho(
            f"not a capacity measurement: {result.cut_short}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)
    bad = result.failures > 0 or r.get("missing", 0) > 0 or result.locust_exit not in (0, 1)
    if bad:
        typer.secho("the run had failures (see the report)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder under reports/load/.")],
    prometheus: Annotated[
        str, typer.Option(help="Prometheus base URL ('' to skip the SLO checks).")
    ] = "http://127.0.0.1:9190",
) -> None:
    """Rebuild report.json, report.md and the plots of an earlier run (e.g. after copying
    the samples of workers on other machines into its folder)."""
    if not (run_dir / "meta.json").exists():
        _fail(f"{run_dir} is not a run folder (no meta.json)")
    built = reporting.build(run_dir, prometheus or None, typer.echo)
    drawn = plotting.draw(run_dir, built)
    (run_dir / "report.md").write_text(render.markdown(built, drawn))
    typer.echo(f"wrote {run_dir / 'report.md'}")


@app.command("plan")
def plan(
    devices: Annotated[int, typer.Option(help="Devices to plan for.")],
    interval: Annotated[float, typer.Option(help="Seconds between a device's readings.")],
    commands_per_device_hour: Annotated[
        float, typer.Option(help="Commands per device per hour.")
    ] = 6.0,
    target_utilisation: Annotated[
        float, typer.Option(help="How busy a planned core may be (0-1).")
    ] = 0.7,
    from_report: Annotated[
        Path | None,
        typer.Option("--report", help="A step-ramp report.json (default: the newest one)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Size a deployment from the newest step-ramp report: CPU seconds per 1,000 devices per
    component at each step, fitted and scaled to N devices; cores, API replicas and workers,
    with the assumptions printed."""
    try:
        path = from_report or planning.newest_step_report(runner.REPORTS)
        data = json.loads(path.read_text())
        result = planning.plan(
            data, devices, interval, commands_per_device_hour, target_utilisation
        )
    except planning.PlanError as exc:
        _fail(str(exc))
        return
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot use the report: {exc}")
        return
    typer.echo(json.dumps(result, indent=1) if json_out else planning.render(result))


@app.command("clean")
def clean(
    keep: Annotated[
        int,
        typer.Option(
            min=0, help="Keep the fleets of the N newest runs (--reuse takes the newest)."
        ),
    ] = 1,
    prefix: Annotated[
        str, typer.Option(help="Only the load-test people whose name starts with this.")
    ] = fleet_module.PERSON_PREFIX,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the fleets that earlier runs registered: each run's person (`loadtest-<time>`)
    with every device they own and those devices' readings and commands. Runs without --reuse
    register a new fleet each time; this takes them away again, keeping the newest --keep."""
    if not prefix.startswith(fleet_module.PERSON_PREFIX):
        _fail(f"--prefix must start with {fleet_module.PERSON_PREFIX!r}: only load-test people")
    try:
        found = fleet_module.fleets(prefix)
    except fleet_module.FleetError as exc:
        _fail(str(exc))
        return
    doomed = found[keep:]
    for person in found[:keep]:
        typer.echo(f"keeping  {person['username']} ({person['devices']:,} devices)")
    if not doomed:
        typer.echo("nothing to delete")
        return
    devices = sum(p["devices"] for p in doomed)
    typer.echo(f"to delete: {len(doomed)} load-test people with {devices:,} devices")
    if not yes:
        typer.confirm("Delete them with their devices, readings and commands?", abort=True)
    for n, person in enumerate(doomed, start=1):
        started = time.monotonic()
        deleted = delete_person(person["username"])
        if deleted and deleted[1]:
            typer.secho(f"warning: {deleted[1]}", err=True)
        typer.echo(
            f"[{n}/{len(doomed)}] deleted {person['username']} and {person['devices']:,} "
            f"devices ({time.monotonic() - started:.1f} s)"
        )


@app.command("scenarios")
def scenarios() -> None:
    """The scenarios (locustfiles) that `run` accepts."""
    for name in runner.scenarios():
        typer.echo(name)
