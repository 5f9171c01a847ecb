"""``iotctl ha``: highly available Postgres. ``bench-engines`` measures the failover engines
(Patroni with etcd, pg_auto_failover) on the same faults in network namespaces of its own and
writes reports/ha-engines/<timestamp>/ (``iot.ha``; docs/ha-engines.md). Needs root and
``scripts/setup.sh --ha``; never touches the running stack."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Annotated

import typer

from iot.cli.common import fail
from iot.settings import PROJECT_ROOT

app = typer.Typer(help="Highly available Postgres: measure the failover engines.",
                  no_args_is_help=True)


@app.command("bench-engines")
def bench_engines(
    engine: Annotated[list[str] | None, typer.Option(
        help="patroni and/or pg_auto_failover (default: both).")] = None,
    mode: Annotated[list[str] | None, typer.Option(
        help="sync and/or async replication (default: both).")] = None,
    fault: Annotated[list[str] | None, typer.Option(
        help="kill (SIGKILL the primary's postgres) and/or cut (its host's link down).")] = None,
    rate: Annotated[float, typer.Option(help="Client writes a second.")] = 20,
    hold: Annotated[float, typer.Option(help="Seconds a cut-off host stays cut off.")] = 60,
    keep: Annotated[bool, typer.Option(help="Keep var/ha-bench/ (the clusters' data).")] = False,
    patroni_timing: Annotated[str | None, typer.Option(
        help="Patroni's ttl/loop_wait/retry_timeout, e.g. 12/2/5 (default: its own 30/10/10).",
    )] = None,
    patroni_dcs: Annotated[str, typer.Option(
        help="etcd3 (etcd's v3 API) or etcd (its v2 API) for Patroni.")] = "etcd3",
) -> None:
    """Each engine × replication mode × fault on a fresh three-host cluster: failover time,
    what a client saw, acknowledged writes lost, whether a cut-off primary kept accepting
    writes, whether the old primary came back as a standby."""
    from iot.ha import bench

    if os.geteuid() != 0:
        fail("needs root (network namespaces)")
    if not shutil.which("patroni") or not shutil.which("pg_autoctl"):
        fail("the engines are not installed: run `scripts/setup.sh --ha`")
    engines = engine or list(bench.ENGINES)
    for name in engines:
        if name not in bench.ENGINES:
            fail(f"unknown engine {name!r}: {', '.join(bench.ENGINES)}")
    if patroni_dcs not in ("etcd3", "etcd"):
        fail("--patroni-dcs is etcd3 or etcd")
    timing = None
    if patroni_timing:
        try:
            ttl, loop_wait, retry = (int(v) for v in patroni_timing.split("/"))
        except ValueError:
            fail("--patroni-timing is ttl/loop_wait/retry_timeout, e.g. 12/2/5")
        if loop_wait + 2 * retry > ttl:
            fail("Patroni wants loop_wait + 2 × retry_timeout <= ttl")
        timing = (ttl, loop_wait, retry)
    def _terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # so that the bench removes its namespaces and data

    signal.signal(signal.SIGTERM, _terminated)
    try:
        path = bench.bench_engines(PROJECT_ROOT, engines, mode or ["sync", "async"],
                                   fault or list(bench.FAULTS), typer.echo, rate=rate,
                                   hold=hold, keep=keep, patroni_timing=timing,
                                   patroni_dcs=patroni_dcs)
    except RuntimeError as exc:  # another bench running, namespaces refused
        fail(str(exc))
    typer.echo(path.read_text())
    typer.echo(f"report: {path}")
