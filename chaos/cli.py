"""``iotctl chaos``: list and run the experiments (registered as an iotctl plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chaos import experiment, report, rollout
from iot.settings import get_settings
from loadtest.background import LoadOptions

app = typer.Typer(
    help="Chaos experiments: faults through toxiproxy and the supervisor, while a "
    "simulated fleet runs; a ledger checker proves nothing accepted was lost.",
    no_args_is_help=True,
)


@app.command("list")
def list_experiments() -> None:
    """Every experiment with its fault and expected alert."""
    for name in experiment.names() + experiment.cluster_names():
        e = experiment.load(name)
        fault = ", ".join(f"{a['action']} {a['target']}" for a in e.method)
        typer.echo(f"{name:<28} {e.title:<40} {fault}  (alert: {', '.join(e.expect_alert)})")
    typer.echo(f"({', '.join(experiment.cluster_names())}: with `iotctl up --cluster` only)")


@app.command("summary")
def summary() -> None:
    """The newest report of each experiment as one Markdown table.

    Lost, duplicated and unexpected are summed over commands, readings and command-log rows.
    Runs under --load get their own table (the load's figures during the fault).
    """
    found = report.latest()
    if not found:
        typer.secho(f"no reports under {report.REPORTS}; run `iotctl chaos run`", err=True)
        raise typer.Exit(1)
    plain = [found[n] for n in sorted(found) if "load" not in found[n]]
    loaded = [found[n] for n in sorted(found) if "load" in found[n]]
    if plain:
        typer.echo(report.summary_table(plain))
    if loaded:
        typer.echo(("\n" if plain else "") + "Under a background load:\n")
        typer.echo(report.load_table(loaded))


def load_options(
    devices: int, processes: int = 0, devices_file: Path | None = None
) -> LoadOptions | None:
    """The background load ``--load`` asks for (None: no load).

    Raises:
        typer.BadParameter: a negative number of devices or processes.
    """
    if devices < 0:
        raise typer.BadParameter("--load must be 0 (no load) or more devices")
    if processes < 0:
        raise typer.BadParameter("--load-processes must be 0 or more")
    if devices == 0:
        if processes or devices_file:
            raise typer.BadParameter("--load-processes and --load-devices-file need --load N")
        return None
    return LoadOptions(devices=devices, processes=processes, devices_file=devices_file)


@app.command("run")
def run(
    name: Annotated[str | None, typer.Argument(help="Experiment name (see `list`).")] = None,
    run_all: Annotated[bool, typer.Option("--all", help="Run every experiment.")] = False,
    duration: Annotated[
        float | None, typer.Option(help="Seconds the fault lasts (default: the short form).")
    ] = None,
    long: Annotated[bool, typer.Option("--long", help="Use each experiment's long form.")] = False,
    load: Annotated[
        int,
        typer.Option(
            help="Run the experiment while this many emulated devices (locust, the `devices` "
            "scenario of `iotctl load`, through nginx) load the system; their devices are "
            "reused from the newest load run and topped up.",
        ),
    ] = 0,
    load_processes: Annotated[
        int, typer.Option(help="Locust worker processes for --load (0: one process).")
    ] = 0,
    load_devices_file: Annotated[
        Path | None, typer.Option(help="Use the devices of this devices.json for --load.")
    ] = None,
) -> None:
    """Run experiments; a report per run goes to reports/chaos/ (JSON, Markdown, plot).
    --all includes the cluster's experiments when the stack runs the RabbitMQ cluster.
    Exit status 1 if any lost, duplicated or unexpected item, or a missed recovery bound
    (with --load: also a load reading answered 201 that is not in Postgres)."""
    if bool(name) == run_all:
        typer.secho("give an experiment name or --all", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    background = load_options(load, load_processes, load_devices_file)
    settings = get_settings()
    failed = []
    every = experiment.names() + (experiment.cluster_names() if settings.rabbitmq_cluster else [])
    for n in every if run_all else [name or ""]:
        try:
            exp = experiment.load(n)
            seconds = (
                duration
                if duration is not None
                else (exp.long_fault_seconds if long else exp.fault_seconds)
            )
            result = experiment.run(exp, settings, seconds, progress=typer.echo, load=background)
        except (experiment.ExperimentError, rollout.RolloutError) as exc:
            typer.secho(f"[{n}] could not run: {exc}", fg=typer.colors.RED, err=True)
            failed.append(n)
            continue
        folder = report.write(result)
        line = " ".join(
            f"{k}: {v['lost']}/{v['duplicated']}/{v['unexpected']}"
            for k, v in result["counts"].items()
        )
        color = typer.colors.GREEN if result["passed"] else typer.colors.RED
        typer.secho(
            f"[{n}] {'PASSED' if result['passed'] else 'FAILED'}  lost/dup/unexpected "
            f"{line}  recovery {result['recovery_seconds']}s  report {folder}",
            fg=color,
        )
        if "load" in result:
            typer.echo(f"[{n}] {report.load_line(result['load'])}")
        if not result["passed"]:
            failed.append(n)
    if failed:
        typer.secho(f"failed: {', '.join(failed)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
