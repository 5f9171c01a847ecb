"""``iotctl bench``: measure the running stack from outside, through nginx, with ``wrk``
(an iotctl plugin, like ``iotctl load``).

``ingest`` compares POST /sensors with the do-nothing GET /ping and follows the readings into
Postgres; ``poll`` compares an idle short poll with GET /ping, then measures command latency
while many devices wait in long polls (:mod:`loadtest.pollbench`). wrk runs
``loadtest/wrk/bench.lua`` and hands its figures back as JSON (:mod:`loadtest.wrk`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import psycopg
import typer

from loadtest import commitbench, historybench, pollbench, rolloutbench, workerbench, wrk
from loadtest.benchkit import cpu_per_request, fmt
from loadtest.benchkit import create_user as _create_user
from loadtest.benchkit import fail as _fail
from loadtest.benchkit import prepare as _prepare
from loadtest.pollbench import LatencyRecord, delivery_summary
from loadtest.wrk import WrkResult

app = typer.Typer(help="Measure the running stack.", no_args_is_help=True)

# /ping needs no credential, but nginx rate-limits a request without one per client address:
# the baseline sends dummy bearer tokens (ignored by /ping) so the limit does not cap it.
PING_CREDENTIALS = 500
POLL_GOAL = 0.7  # idle short poll ÷ ping, requests per second


def _count_rows(conn: psycopg.Connection, ids: list[uuid.UUID]) -> tuple[int, datetime | None]:
    """How many readings the bench's devices have in Postgres, and the newest ``stored_at``."""
    row = conn.execute(
        "SELECT count(*), max(stored_at) FROM readings WHERE device_id = ANY(%s)", (ids,)
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _wait_drain(
    conn: psycopg.Connection, ids: list[uuid.UUID], expected: int, timeout: float
) -> tuple[int, datetime | None]:
    """Poll until at least ``expected`` rows are stored and the count stops moving for 1 s
    (readings of requests still in flight when wrk stopped land too), or until ``timeout``."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        count, newest = _count_rows(conn, ids)
        now = time.monotonic()
        if count != last:
            last, stable_since = count, now
        if (count >= expected and now - stable_since >= 1.0) or now > deadline:
            return count, newest
        time.sleep(0.25)


def _cleanup(
    client: httpx.Client, conn: psycopg.Connection, ids: list[uuid.UUID], user_id: uuid.UUID
) -> None:
    """Delete the bench's devices (the API deletes their readings too), then its user."""
    try:
        for device_id in ids:
            client.delete(f"/devices/{device_id}").raise_for_status()
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    except (httpx.HTTPError, psycopg.Error) as exc:
        typer.secho(f"warning: cleanup failed ({exc}); remove user {user_id} by hand", err=True)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _wrk_rows(p: dict[str, Any], i: dict[str, Any], r: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows comparing two wrk runs (baseline ``p``, measured ``i``) with their ratios ``r``."""
    return [
        ("requests/s", p["requests_per_s"], i["requests_per_s"], r["requests_per_s"]),
        ("latency p50 (ms)", p["p50_ms"], i["p50_ms"], r["p50"]),
        ("latency p99 (ms)", p["p99_ms"], i["p99_ms"], r["p99"]),
        ("requests", p["requests"], i["requests"], None),
        ("non-2xx answers", p["non_2xx"], i["non_2xx"], None),
        ("429 rate limited", p["statuses"].get(429, 0), i["statuses"].get(429, 0), None),
        ("socket errors", p["socket_errors"], i["socket_errors"], None),
    ]


def _cpu_lines(ping: dict[str, float], post: dict[str, float]) -> list[str]:
    if not post:
        return []
    lines = ["", f"{'CPU ms per request':<28}{'GET /ping':>14}{'POST /sensors':>16}"]
    names = [n for n in post if n != "stack" and (post[n] >= 0.005 or ping.get(n, 0) >= 0.005)]
    for name in [*names, "stack"]:
        lines.append(f"{name:<28}{fmt(ping.get(name)):>14}{fmt(post[name]):>16}")
    return lines


def render_table(report: dict[str, Any]) -> str:
    """A readable table of the ping baseline, the ingest figures and their ratios."""
    p, i, e, r = report["ping"], report["ingest"], report["end_to_end"], report["ratios"]

    rows = [
        *_wrk_rows(p, i, r),
        ("readings/s accepted (201)", None, i["readings_per_s"], None),
        ("readings/s POST -> Postgres", None, e["readings_per_s"], None),
    ]
    lines = [f"{'':<28}{'GET /ping':>14}{'POST /sensors':>16}{'ratio':>10}"]
    lines += [f"{n:<28}{fmt(a):>14}{fmt(b):>16}{fmt(c):>10}" for n, a, b, c in rows]
    lines.append(
        f"rows in Postgres: {e['rows']:,} for {e['expected']:,} readings answered 201 "
        f"(missing {e['missing']:,}; extra {e['extra']:,} = requests in flight when wrk stopped)"
    )
    lines.append(
        f"last row stored {fmt(e['seconds'])} s after the first POST, "
        f"{fmt(e['drain_s'])} s after the load ended"
    )
    cpu = report.get("cpu_ms_per_request", {})
    lines += _cpu_lines(cpu.get("ping", {}), cpu.get("post", {}))
    return "\n".join(lines)


@app.command()
def ingest(
    duration: Annotated[int, typer.Option(min=1, help="Seconds of load per phase (wrk -d).")] = 10,
    connections: Annotated[
        int, typer.Option(min=2, help="Open HTTP connections (wrk -c), the same for both phases.")
    ] = 64,
    batch: Annotated[
        int, typer.Option(min=1, max=1000, help="Readings per POST /sensors request.")
    ] = 10,
    devices: Annotated[
        int,
        typer.Option(
            min=1,
            help="Devices (tokens) the requests rotate through; nginx rate-limits each "
            "credential, so use enough that none exceeds the limit.",
        ),
    ] = 50,
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait after the load for every accepted reading to reach Postgres."
        ),
    ] = 120,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write all figures as JSON to this file.")
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the bench's user, devices and readings afterwards.")
    ] = False,
) -> None:
    """Compare POST /sensors with the do-nothing GET /ping (throughput, p50/p99 latency, same
    wrk options) and measure readings per second from the first POST to the Postgres row."""
    s, conn = _prepare()
    username, user_id, ids = f"bench-{uuid.uuid4().hex[:12]}", uuid.uuid4(), []
    client = httpx.Client(base_url=s.base_url, timeout=60)
    try:
        access_token = _create_user(conn, client, user_id, username)
        client.headers["Authorization"] = f"Bearer {access_token}"
        typer.echo(f"registering {devices} devices for user {username} ...")
        tokens = []
        for n in range(devices):
            answer = client.post("/devices", json={"name": f"bench-{n}"})
            answer.raise_for_status()
            ids.append(uuid.UUID(answer.json()["id"]))
            tokens.append(answer.json()["token"])

        typer.echo(f"[1/3] GET /ping for {duration}s ({connections} connections, 2 threads) ...")
        ping_tokens = [f"bench-ping-{n}" for n in range(PING_CREDENTIALS)]
        pids = workerbench.stack_pids()
        cpu0 = workerbench.stack_cpu(pids)
        ping = wrk.run(s.base_url, "GET", "/ping", ping_tokens, connections, duration)
        cpu1 = workerbench.stack_cpu(pids)
        typer.echo(f"[2/3] POST /sensors, {batch} readings each, for {duration}s ...")
        base = int(time.time()) - 3600
        started = datetime.now(UTC)
        post = wrk.run(s.base_url, "POST", "/sensors", tokens, connections, duration, batch, base)
        ended = datetime.now(UTC)
        expected = post.statuses.get(201, 0) * batch
        typer.echo(
            f"[3/3] waiting up to {drain_timeout:.0f}s for {expected:,} readings to "
            "reach Postgres ..."
        )
        rows, newest = _wait_drain(conn, ids, expected, drain_timeout)
        # the POST phase's CPU includes the drain: the worker's share of the same readings
        cpu2 = workerbench.stack_cpu(pids)
    except (httpx.HTTPError, psycopg.Error, wrk.WrkError) as exc:
        _fail(f"the bench failed: {exc}")
    finally:
        if keep:
            typer.echo(f"kept user {username} and devices {', '.join(map(str, ids))}")
        else:
            _cleanup(client, conn, ids, user_id)
        client.close()
        conn.close()

    seconds = (newest - started).total_seconds() if newest else None
    report: dict[str, Any] = {
        "config": {
            "duration_s": duration,
            "connections": connections,
            "threads": 2,
            "batch": batch,
            "devices": devices,
            "url": s.base_url,
        },
        "ping": asdict(ping),
        "ingest": {
            **asdict(post),
            "readings_per_s": round(expected / post.duration_s, 1) if post.duration_s else None,
        },
        "end_to_end": {
            "expected": expected,
            "rows": rows,
            "missing": max(expected - rows, 0),
            "extra": max(rows - expected, 0),
            "seconds": seconds,
            "drain_s": (newest - ended).total_seconds() if newest else None,
            "readings_per_s": round(rows / seconds, 1) if seconds else None,
        },
        "ratios": {
            "requests_per_s": _ratio(post.requests_per_s, ping.requests_per_s),
            "p50": _ratio(post.p50_ms, ping.p50_ms),
            "p99": _ratio(post.p99_ms, ping.p99_ms),
        },
        "cpu_ms_per_request": {
            "ping": cpu_per_request(cpu0, cpu1, ping.requests),
            "post": cpu_per_request(cpu1, cpu2, post.requests),
        },
    }
    typer.echo("\n" + render_table(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        typer.echo(f"wrote {json_path}")
    if post.statuses.get(429) or ping.statuses.get(429):
        typer.secho("warning: nginx answered 429 (rate limited): raise --devices", err=True)
    if rows < expected:
        _fail(
            f"{expected - rows:,} accepted readings were not in Postgres after {drain_timeout:.0f}s"
        )


# ----- iotctl bench poll -----------------------------------------------------------------------


# ----- iotctl bench poll -----------------------------------------------------------------------


def render_poll_table(report: dict[str, Any]) -> str:
    """A readable table: ping vs idle short poll, then the command latency under long polls."""
    p, i, r, e = report["ping"], report["idle_poll"], report["ratios"], report["latency"]
    c = report["config"]

    rows = _wrk_rows(p, i, r)
    ratio = r["requests_per_s"]
    verdict = "-" if ratio is None else "meets it" if ratio >= report["goal"] else "BELOW it"
    lines = [f"{'':<20}{'GET /ping':>14}{'GET /commands?wait=0':>22}{'ratio':>10}"]
    lines += [f"{n:<20}{fmt(a):>14}{fmt(b):>22}{fmt(x):>10}" for n, a, b, x in rows]
    lines.append(
        f"idle poll ÷ ping requests/s: {fmt(ratio)} (goal ≥ {report['goal']:.2f}: {verdict})"
    )
    lines.append("")
    lines.append(
        f"POST /commands -> device long poll, {c['waiters']:,} devices waiting, "
        f"{e['commands']:,} commands at {fmt(float(c['rate']))}/s:"
    )
    lines.append(
        f"  latency p50 {fmt(e['p50_ms'])} ms, p90 {fmt(e['p90_ms'])} ms, "
        f"p99 {fmt(e['p99_ms'])} ms, max {fmt(e['max_ms'])} ms"
    )
    lines.append(
        f"  delivered {e['delivered']:,} of {e['accepted']:,} accepted (201); missing "
        f"{e['missing']:,} after a {fmt(float(e['drain_timeout_s']))} s drain; "
        f"POST statuses {e['post_statuses']}"
    )
    lines.append(
        f"  POST /commands answer p50 {fmt(e['post_p50_ms'])} ms, p99 {fmt(e['post_p99_ms'])} ms; "
        f"acks ok {e['acks_ok']:,}, failed {e['ack_errors']:,}; duplicates {e['duplicates']:,}, "
        f"redeliveries {e['redeliveries']:,}, misrouted {e['misrouted']:,}"
    )
    lines.append(f"  polls answered {e['polls']:,}; poll errors {e['poll_errors'] or 0}")
    return "\n".join(lines)


def _poll_cleanup(
    base_url: str,
    access_token: str,
    conn: psycopg.Connection,
    ids: Sequence[uuid.UUID],
    user_id: uuid.UUID,
) -> None:
    """Delete the bench's devices (and so their command queues), then its user."""
    typer.echo(f"deleting {len(ids)} devices and the bench user ...")
    try:
        failed = asyncio.run(pollbench.delete_devices(base_url, access_token, ids))
        if failed:
            typer.secho(
                f"warning: {failed} devices not deleted; remove user {user_id} by hand", err=True
            )
            return
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    except (httpx.HTTPError, psycopg.Error) as exc:
        typer.secho(f"warning: cleanup failed ({exc}); remove user {user_id} by hand", err=True)


def _poll_report(
    config: dict[str, Any], ping: WrkResult, idle: WrkResult, record: LatencyRecord, drain: float
) -> dict[str, Any]:
    """All figures of ``bench poll`` as one JSON-able dict."""
    return {
        "config": config,
        "goal": POLL_GOAL,
        "ping": asdict(ping),
        "idle_poll": asdict(idle),
        "ratios": {
            "requests_per_s": _ratio(idle.requests_per_s, ping.requests_per_s),
            "p50": _ratio(idle.p50_ms, ping.p50_ms),
            "p99": _ratio(idle.p99_ms, ping.p99_ms),
        },
        "latency": delivery_summary(record, drain),
    }


@app.command()
def poll(
    duration: Annotated[
        int, typer.Option(min=1, help="Seconds of load per wrk phase (wrk -d).")
    ] = 10,
    connections: Annotated[
        int,
        typer.Option(min=2, help="Open HTTP connections (wrk -c), the same for ping and poll."),
    ] = 64,
    devices: Annotated[
        int,
        typer.Option(
            min=1,
            help="Device tokens the idle short polls rotate through; nginx rate-limits each "
            "credential (200 r/s, burst 400), so use enough that none exceeds the limit.",
        ),
    ] = 100,
    waiters: Annotated[
        int, typer.Option(min=1, help="Devices each keeping a long poll open (wait=25s).")
    ] = 1000,
    commands: Annotated[
        int, typer.Option(min=1, help="Commands the person sends to random waiting devices.")
    ] = 300,
    rate: Annotated[
        float, typer.Option(min=0.1, help="Commands sent per second (POST /commands).")
    ] = 30.0,
    drain_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait after the last POST for every command to arrive."),
    ] = 30.0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write all figures as JSON to this file.")
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the bench's user and devices (and their queues) afterwards.")
    ] = False,
) -> None:
    """Compare an idle short poll (GET /commands?wait=0 answered 204) with the do-nothing
    GET /ping (throughput, p50/p99, same wrk options), then measure POST /commands -> device
    latency while many devices wait in long polls."""
    s, conn = _prepare()
    pollbench.raise_open_files(waiters + connections + 500)
    username, user_id, access_token = f"bench-{uuid.uuid4().hex[:12]}", uuid.uuid4(), ""
    registered: list[tuple[uuid.UUID, str]] = []
    try:
        with httpx.Client(base_url=s.base_url, timeout=60) as client:
            access_token = _create_user(conn, client, user_id, username)
        total = max(devices, waiters)
        typer.echo(f"registering {total} devices for user {username} ...")
        asyncio.run(pollbench.register_devices(s.base_url, access_token, total, registered))
        tokens = [token for _, token in registered]
        typer.echo(f"[1/3] GET /ping for {duration}s ({connections} connections, 2 threads) ...")
        ping_tokens = [f"bench-ping-{n}" for n in range(PING_CREDENTIALS)]
        ping = wrk.run(s.base_url, "GET", "/ping", ping_tokens, connections, duration)
        typer.echo(f"[2/3] GET /commands?wait=0 (idle) for {duration}s, {devices} devices ...")
        asyncio.run(pollbench.warm_up(s.base_url, tokens[:devices]))
        path = "/commands?wait=0"
        idle = wrk.run(s.base_url, "GET", path, tokens[:devices], connections, duration)
        typer.echo(f"[3/3] command latency with {waiters} devices in long polls ...")
        record = asyncio.run(
            pollbench.measure_latency(
                s.base_url, access_token, registered[:waiters], commands, rate, drain_timeout
            )
        )
    except (httpx.HTTPError, psycopg.Error, wrk.WrkError) as exc:
        _fail(f"the bench failed: {exc}")
    finally:
        ids = [device_id for device_id, _ in registered]
        if keep:
            typer.echo(f"kept user {username} and its {len(ids)} devices")
        elif access_token:
            _poll_cleanup(s.base_url, access_token, conn, ids, user_id)
        else:
            with contextlib.suppress(psycopg.Error):
                conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
        conn.close()

    config = {
        "duration_s": duration,
        "connections": connections,
        "threads": 2,
        "devices": devices,
        "waiters": waiters,
        "commands": commands,
        "rate": rate,
        "long_poll_wait_s": pollbench.LONG_POLL_WAIT,
        "url": s.base_url,
    }
    report = _poll_report(config, ping, idle, record, drain_timeout)
    typer.echo("\n" + render_poll_table(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        typer.echo(f"wrote {json_path}")
    if idle.statuses.get(429) or ping.statuses.get(429):
        typer.secho("warning: nginx answered 429 (rate limited): raise --devices", err=True)
    if report["latency"]["missing"]:
        _fail(
            f"{report['latency']['missing']} accepted commands did not reach their device "
            f"within {drain_timeout:g}s"
        )


app.command("worker")(workerbench.worker)
app.command("history")(historybench.history)
app.command("rollout")(rolloutbench.run)
app.command("commit")(commitbench.commit)
