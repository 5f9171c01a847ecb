"""``iotctl bench commit``: what a commit costs on the stack's Postgres as it runs now, one
Postgres or the ``--ha`` pair (a synchronous standby confirms every commit).

pgbench (Debian's, from the Postgres packages) runs ``--clients`` sessions for ``--seconds``,
each committing one-row ``INSERT``\\ s in autocommit, through the address the product's processes
use for writes (haproxy in front of the primary under ``--ha``), into a scratch database
(created and migrated, dropped afterwards). Reported: commits per second, the latency of a
commit (p50 / p99 / max from pgbench's per-transaction log), and CPU milliseconds per commit of
each Postgres process of the stack (the primary and standby trees, Patroni and etcd included)
and of haproxy. Run it once per mode on the same machine; the difference is what synchronous
replication costs (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from iot.settings import Settings, get_settings
from iot.stack.processes import service_of
from loadtest import workerbench
from loadtest.benchkit import cpu_per_request, fail, fmt
from loadtest.historybench import scratch_database
from loadtest.pollbench import percentile

SCRIPT = "INSERT INTO commit_bench (client, v) VALUES (:client_id, random());\n"
def _pgbench(s: Settings) -> str:
    """Debian's pgbench, beside the Postgres the stack runs (``postgres_bin_dir``)."""
    path = s.postgres_bin_dir / "pgbench"
    if not path.exists():
        fail(f"{path} not found: it comes with Debian's postgresql package (scripts/setup.sh)")
    return str(path)


def _latencies_ms(folder: Path) -> list[float]:
    """Per-transaction latencies from pgbench's logs (``--log``: the third field, in µs)."""
    out: list[float] = []
    for log in folder.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                out.append(int(fields[2]) / 1000)
    return out


def commit(
    seconds: Annotated[float, typer.Option(min=2, max=600, help="How long pgbench runs.")] = 20,
    clients: Annotated[
        int, typer.Option(min=1, max=64, help="pgbench sessions, each one commit at a time.")
    ] = 4,
    rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="Commits per second in all (pgbench -R); 0: as fast as it can. "
            "Compare the modes at the same rate: CPU per commit depends on it.",
        ),
    ] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Also write the figures as JSON to this file.")
    ] = None,
) -> None:
    """Commit latency and Postgres CPU per commit of the running stack (one Postgres, or the
    --ha primary with its synchronous standby): pgbench into a scratch database."""
    s = get_settings()
    binary = _pgbench(s)
    try:
        with psycopg.connect(s.database_direct_url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        fail(f"Postgres does not answer ({exc}); start the stack with `iotctl up`")
    pids = {
        n: p
        for n, p in workerbench.stack_pids().items()
        if service_of(n) == "postgres" or n.startswith("haproxy")
    }
    mode = "ha" if any(n.startswith("patroni-") for n in pids) else "single"
    with scratch_database(s, prefix="iot_commitbench") as url, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE commit_bench (id bigserial PRIMARY KEY, client int,"
                " v double precision, at timestamptz DEFAULT now())"
            )
        script = Path(tmp) / "commit.sql"
        script.write_text(SCRIPT)
        info = psycopg.conninfo.conninfo_to_dict(url)
        env = {**os.environ, "PGPASSWORD": str(info.get("password", ""))}
        argv = [
            binary,
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 4)),
            "-T",
            str(int(seconds)),
            "-f",
            str(script),
            "--log",
            "--log-prefix",
            str(Path(tmp) / "pgbench_log"),
            "-h",
            str(info["host"]),
            "-p",
            str(info["port"]),
            "-U",
            str(info["user"]),
            str(info["dbname"]),
        ]
        if rate:
            argv[1:1] = ["-R", f"{rate:g}"]
        pace = f"{rate:g}/s" if rate else "as fast as they go"
        typer.echo(
            f"{mode}: pgbench, {clients} sessions, {seconds:g} s of one-row commits, {pace} ..."
        )
        before = workerbench.stack_cpu(pids)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        after = workerbench.stack_cpu(pids)
        if done.returncode != 0:
            fail(f"pgbench failed: {done.stderr.strip()[-400:]}")
        latencies = _latencies_ms(Path(tmp))
    if not latencies:
        fail("pgbench committed nothing")
    commits = len(latencies)
    report: dict[str, Any] = {
        "mode": mode,
        "clients": clients,
        "rate_asked": rate or None,
        "seconds": seconds,
        "commits": commits,
        "commits_per_s": round(commits / seconds, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) or 0.0, 2),
            "p99": round(percentile(latencies, 99) or 0.0, 2),
            "max": round(max(latencies), 2),
        },
        "cpu_ms_per_commit": cpu_per_request(before, after, commits),
    }
    lat = report["latency_ms"]
    typer.echo(
        f"{fmt(commits)} commits, {fmt(report['commits_per_s'])}/s; latency p50 "
        f"{lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"
    )
    for name, ms in report["cpu_ms_per_commit"].items():
        typer.echo(f"  CPU per commit {name:<20} {ms:.3f} ms")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"wrote {out}")
