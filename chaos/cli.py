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
    for name in experiment.names() + experiment.cluster_names() + experiment.ha_names():
        e = experiment.load(name)
        fault = ", ".join(f"{a['action']} {a['target']}" for a in e.method)
        typer.echo(f"{name:<28} {e.title:<40} {fault}  (alert: {', '.join(e.expect_alert)})")
    typer.echo(f"({', '.join(experiment.cluster_names())}: with `iotctl up --cluster` only)")
    typer.echo(f"({', '.join(experiment.ha_names())}: with `iotctl up --ha` only)")


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
    --all includes the cluster's experiments when the stack runs the RabbitMQ cluster, and
    the HA tier's under `iotctl up --ha`.
    Exit status 1 if any lost, duplicated or unexpected item, or a missed recovery bound
    (with --load: also a load reading answered 201 that is not in Postgres)."""
    if bool(name) == run_all:
        typer.secho("give an experiment name or --all", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    background = load_options(load, load_processes, load_devices_file)
    settings = get_settings()
    failed = []
    every = experiment.for_stack(settings)
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


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: a duration like 90, 90s, 5m or 1h") from exc


@app.command("gameday")
def gameday(
    duration: Annotated[str, typer.Option(help="How long faults are drawn: 90s, 5m, 1h.")] = "1h",
    seed: Annotated[int, typer.Option(help="The schedule's seed (same seed, same faults).")] = 1,
    faults: Annotated[
        str,
        typer.Option(
            help="Experiments to draw from, comma-separated (default: the catalog; "
            "`auto-ack-consumer` is the unsafe control)."
        ),
    ] = "",
    max_concurrent: Annotated[int, typer.Option(min=1, help="Faults active at once, at most.")] = 2,
    min_length: Annotated[float, typer.Option(help="Shortest fault, seconds.")] = 10,
    max_length: Annotated[float, typer.Option(help="Longest fault, seconds.")] = 60,
    mean_gap: Annotated[float, typer.Option(help="Mean seconds between fault starts.")] = 20,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices the ledger covers.")] = 20,
    command_rate: Annotated[float, typer.Option(help="The operator's commands per second.")] = 2,
    load: Annotated[int, typer.Option(help="Locust devices in the background (0: none).")] = 0,
    bound: Annotated[
        float,
        typer.Option(
            help="Seconds after a fault heals by which everything accepted "
            "around it must be accounted for."
        ),
    ] = 60,
    recovery: Annotated[float, typer.Option(help="Seconds of recovery after the last heal.")] = 60,
    settle: Annotated[
        float,
        typer.Option(
            help="Then how long every alert may take to clear (burn-rate alerts outlast a fault "
            "by their 5-minute window); 0: alerts left firing are not judged."
        ),
    ] = 420,
    halt_on: Annotated[
        str,
        typer.Option(
            help="Halt when an SLO's 5-minute burn rate passes a bound, e.g. "
            "'api-availability=200,ingest-lag=100' (default: never)."
        ),
    ] = "",
    schedule_only: Annotated[
        bool, typer.Option("--schedule-only", help="Print the schedule and exit.")
    ] = False,
) -> None:
    """An unattended game day: faults drawn from the catalog with random start, length and
    overlap (reproducible from --seed), a fleet and an operator throughout (and --load devices),
    the ledger checked continuously, then a heal, a recovery window and the final ledger. The
    report (Markdown, JSON, plot) goes to reports/chaos/gameday-*/. Exit status 1 on any loss,
    breach, halt or alert left firing."""
    from chaos import gameday as plan_
    from chaos import gameday_report, gameday_run

    try:
        o = plan_.Options(
            duration=_seconds(duration),
            seed=seed,
            faults=[f.strip() for f in faults.split(",") if f.strip()],
            max_concurrent=max_concurrent,
            min_length=min_length,
            max_length=max_length,
            mean_gap=mean_gap,
            devices=devices,
            command_rate=command_rate,
            load=load,
            bound=bound,
            recovery=recovery,
            settle=settle,
            halt_on=gameday_run.parse_halt_on(halt_on),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = get_settings()
    try:
        kinds = gameday_run.catalog(o.faults, settings.rabbitmq_cluster)
    except experiment.ExperimentError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if schedule_only:
        windows = plan_.plan(o, kinds)
        for w in windows:
            typer.echo(f"{w.start:8.1f} s  {w.length:5.1f} s  {w.kind}")
        typer.echo(f"{len(windows)} faults, {plan_.overlaps(windows)} overlapping")
        return
    folder = gameday_report.folder_for(o.seed)
    try:
        result = gameday_run.run(o, settings, folder, progress=typer.echo)
    except experiment.ExperimentError as exc:
        typer.secho(f"gameday could not run: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    gameday_report.write(result, folder)
    line = " ".join(
        f"{k}: {v['lost']}/{v['duplicated']}/{v['unexpected']}" for k, v in result["counts"].items()
    )
    typer.secho(
        f"gameday {'PASSED' if result['passed'] else 'FAILED'}  lost/dup/unexpected {line}  "
        f"report {folder / 'report.md'}",
        fg=typer.colors.GREEN if result["passed"] else typer.colors.RED,
    )
    if not result["passed"]:
        for p in result["problems"]:
            typer.echo(f"  - {p}")
        raise typer.Exit(1)


@app.command("gameday-report")
def gameday_report_(
    folder: Annotated[
        Path, typer.Argument(help="A game day's report folder (reports/chaos/gameday-*).")
    ],
) -> None:
    """Judge a finished game day again from its report.json and Prometheus (kept 7 days): each
    fault's SLO breaches, burn rates and budget spent, the alerts then and the silent
    breaches; rewrites report.json, report.md and timeline.png."""
    import json

    from chaos import gameday_report
    from chaos.experiment import STICKY_ALERTS
    from loadtest.prom import Prometheus

    path = folder / "report.json"
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist: give a game day's report folder")
    r = json.loads(path.read_text())
    gameday_report.judge(r, Prometheus.of(get_settings()), STICKY_ALERTS)
    gameday_report.write(r, folder)
    silent = r["silent_breaches"]
    typer.echo(
        f"{len(r['faults'])} faults judged; {sum(bool(f['slos_broken']) for f in r['faults'])} "
        f"broke an SLO; silent breaches: {len(silent)}; report {folder / 'report.md'}"
    )
    if not r["passed"]:
        for p in r["problems"]:
            typer.echo(f"  - {p}")
        raise typer.Exit(1)


@app.command("degrade")
def degrade(
    link: Annotated[
        str, typer.Option(help="Links to degrade, comma-separated: postgres, rabbitmq, redis.")
    ] = "postgres,rabbitmq,redis",
    kind: Annotated[
        str, typer.Option(help="Kinds, comma-separated: latency, bandwidth, reset_peer, timeout.")
    ] = "latency,bandwidth,reset_peer,timeout",
    hold: Annotated[float, typer.Option(help="Seconds each strength is held.")] = 180,
    grace: Annotated[float, typer.Option(help="Seconds after it for its alerts.")] = 60,
    rest: Annotated[float, typer.Option(help="Seconds between strengths.")] = 60,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices of the fleet.")] = 20,
    command_rate: Annotated[float, typer.Option(help="The operator's commands per second.")] = 2,
    load: Annotated[int, typer.Option(help="Locust devices in the background (0: none).")] = 0,
    search: Annotated[
        str,
        typer.Option(
            help="bisect: the mildest, then halve the rest each trial (1 to 4 trials a "
            "kind); up: from the mildest until one breaks."
        ),
    ] = "bisect",
) -> None:
    """For each link and kind of degradation, the smallest strength that breaks an SLO and the
    alerts that fire then (a table for chaos/README.md). Each strength tried is held --hold
    seconds under the fleet and judged by Prometheus over the held window. Report under
    reports/chaos/degrade-*/, rewritten after every strength (an interrupted run keeps what it
    measured). Exit status 1 if the ledger lost anything."""
    import json
    import time

    from chaos import degrade as degrade_

    links = [x.strip() for x in link.split(",") if x.strip()]
    kinds = [x.strip() for x in kind.split(",") if x.strip()]
    bad = [x for x in links if x not in degrade_.LINKS] + [
        x for x in kinds if x not in degrade_.LADDERS
    ]
    if bad:
        raise typer.BadParameter(f"unknown link or kind: {', '.join(bad)}")
    if search not in ("bisect", "up"):
        raise typer.BadParameter(f"--search is bisect or up, not {search!r}")
    folder = report.REPORTS / f"degrade-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)

    def write(body: dict[str, object], table: list[str], title: str) -> None:
        (folder / "report.json").write_text(json.dumps(body, indent=2, default=str))
        (folder / "report.md").write_text("\n".join([f"# {title}", "", *table, ""]))

    def partial(steps: list[degrade_.Step]) -> None:
        table = degrade_.table(steps)
        body = {"steps": [{**s.__dict__, "broken": s.broken} for s in steps], "table": table}
        write(body, table, "Degradations against the SLOs (partial: still running)")

    typer.echo(f"degrade: report in {folder} (rewritten after every strength)")
    result = degrade_.run(
        get_settings(),
        links,
        kinds,
        hold=hold,
        grace=grace,
        rest=rest,
        devices=devices,
        command_rate=command_rate,
        load=load,
        search=search,
        progress=typer.echo,
        on_step=partial,
    )
    write(result, result["table"], "Degradations against the SLOs")
    typer.echo("\n".join(result["table"]))
    typer.echo(f"report {folder / 'report.md'}")
    if not result["passed"]:
        typer.secho(f"the ledger found loss: {result['counts']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
