"""``iotctl bench``: measure the running stack from outside, through nginx, with ``wrk``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import resource
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import psycopg
import typer

from iot import security
from iot.settings import Settings, get_settings

app = typer.Typer(help="Measure the running stack.", no_args_is_help=True)

# wrk drives the load: a Python client would be the bottleneck on a small machine. Every request
# rotates through the credentials (nginx rate-limits per credential, and /ping without one is
# limited per client address). Every reading gets a unique (sensor, ts) per thread, so Postgres
# never deduplicates it away: sensor = "bench_t<thread>", ts = base + counter microseconds.
LUA = """
local tokens = {%(tokens)s}
local method, path, batch, base = "%(method)s", "%(path)s", %(batch)d, %(base)d
local n, counter, threads, created = 0, 0, {}, 0
statuses = {}  -- a global: done() reads it with thread:get

function setup(thread)
  created = created + 1
  thread:set("tid", created)
  table.insert(threads, thread)
end

function request()
  n = n + 1
  local headers = {["Authorization"] = "Bearer " .. tokens[(n + tid) %% #tokens + 1]}
  if method == "GET" then return wrk.format("GET", path, headers) end
  headers["Content-Type"] = "application/json"
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local stamp = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", base + math.floor(counter / 1000000))
    parts[i] = string.format('{"sensor":"bench_t%%d","value":%%d.0,"ts":"%%s.%%06dZ"}',
                             tid, i, stamp, counter %% 1000000)
  end
  return wrk.format("POST", path, headers, '{"readings":[' .. table.concat(parts, ",") .. ']}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + count end
  end
  for code, count in pairs(total) do
    io.write(string.format("bench-status %%d %%d\\n", code, count))
  end
  io.write(string.format("bench-duration-us %%d\\n", summary.duration))
end
"""

# /ping needs no credential, but nginx rate-limits a request without one per client address:
# the baseline sends dummy bearer tokens (ignored by /ping) so the limit does not cap it.
PING_CREDENTIALS = 500
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    """The figures of one wrk run; latencies in milliseconds."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    non_2xx: int = 0
    socket_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def lua_script(method: str, path: str, tokens: list[str], batch: int = 1, base: int = 0) -> str:
    """The wrk Lua script that sends ``method path`` rotating through ``tokens``."""
    quoted = ", ".join(json.dumps(t) for t in tokens)
    return LUA % {"tokens": quoted, "method": method, "path": path, "batch": batch, "base": base}


def latency_ms(text: str) -> float:
    """Convert a wrk duration such as ``812.00us``, ``1.20ms`` or ``2.01s`` to milliseconds."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(us|ms|s|m|h)\s*", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's ``--latency`` output plus the lines our Lua ``done()`` writes.

    Raises:
        ValueError: a required figure (Requests/sec, 50%, 99%) is missing.
    """

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps, p50, p99 = (
        find(r"^Requests/sec:\s*([\d.]+)"),
        find(r"^\s*50%\s+(\S+)"),
        find(r"^\s*99%\s+(\S+)"),
    )
    if not (rps and p50 and p99):
        raise ValueError("wrk output lacks Requests/sec or the 50%/99% latency lines:\n" + output)
    total = find(r"^\s*(\d+) requests in ([\d.]+\w+)")
    non_2xx = find(r"Non-2xx or 3xx responses:\s*(\d+)")
    sock = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    dur = find(r"^bench-duration-us (\d+)")
    statuses = {int(c): int(n) for c, n in re.findall(r"^bench-status (\d+) (\d+)", output, re.M)}
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=latency_ms(p50.group(1)),
        p99_ms=latency_ms(p99.group(1)),
        requests=int(total.group(1)) if total else sum(statuses.values()),
        duration_s=int(dur.group(1)) / 1e6
        if dur
        else (latency_ms(total.group(2)) / 1000 if total else 0.0),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        statuses=statuses,
    )


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _wrk_binary() -> str:
    """The path of wrk, or a clear error telling how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        _fail("wrk is not installed: run `make up` (it installs the wrk package)")
    return wrk


def _run_wrk(wrk: str, url: str, script: str, connections: int, duration: int) -> WrkResult:
    """Run wrk with the same options for every phase and return its parsed figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="iot-bench-") as f:
        f.write(script)
        f.flush()
        options = f"-t 2 -c {connections} -d {duration}s --latency -s {f.name}".split()
        cmd = [wrk, *options, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        _fail(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        return parse_wrk(proc.stdout)
    except ValueError as exc:
        _fail(str(exc))


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


def _create_user(
    conn: psycopg.Connection, client: httpx.Client, user_id: uuid.UUID, username: str
) -> str:
    """Insert the bench's (non-admin) user straight into Postgres; return its access token."""
    password = secrets.token_urlsafe(24)
    conn.execute(
        "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, false)",
        (user_id, username, security.hash_password(password)),
    )
    answer = client.post("/auth/token", json={"username": username, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"


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
    wrk = _wrk_binary()
    get_settings.cache_clear()
    s: Settings = get_settings()
    try:
        httpx.get(f"{s.base_url}/ping", timeout=5).raise_for_status()
        conn = psycopg.connect(s.database_direct_url, autocommit=True, connect_timeout=5)
    except (httpx.HTTPError, psycopg.Error) as exc:
        _fail(f"the stack does not answer ({exc}); start it with `iotctl up`")
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
        ping = _run_wrk(
            wrk,
            f"{s.base_url}/ping",
            lua_script("GET", "/ping", [f"bench-ping-{n}" for n in range(PING_CREDENTIALS)]),
            connections,
            duration,
        )
        typer.echo(f"[2/3] POST /sensors, {batch} readings each, for {duration}s ...")
        base = int(time.time()) - 3600
        started = datetime.now(UTC)
        post = _run_wrk(
            wrk,
            f"{s.base_url}/sensors",
            lua_script("POST", "/sensors", tokens, batch, base),
            connections,
            duration,
        )
        ended = datetime.now(UTC)
        expected = post.statuses.get(201, 0) * batch
        typer.echo(
            f"[3/3] waiting up to {drain_timeout:.0f}s for {expected:,} readings to "
            "reach Postgres ..."
        )
        rows, newest = _wait_drain(conn, ids, expected, drain_timeout)
    except (httpx.HTTPError, psycopg.Error) as exc:
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

POLL_GOAL = 0.7  # idle short poll ÷ ping, requests per second
LONG_POLL_WAIT = 25  # seconds a waiting device's GET /commands stays open
SETUP_CONCURRENCY = 50  # parallel registrations, warm-up polls and deletions
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LatencyRecord:
    """What the long-poll phase observes; times are ``time.perf_counter()`` seconds."""

    target: dict[int, int] = field(default_factory=dict)  # command seq -> waiter index
    sent: dict[int, float] = field(default_factory=dict)  # seq -> just before its POST
    answered: dict[int, float] = field(default_factory=dict)  # seq -> POST answer received
    post_status: dict[int, int] = field(default_factory=dict)  # seq -> HTTP status (0: error)
    received: dict[int, float] = field(default_factory=dict)  # seq -> first poll returning it
    long_poll_started: dict[int, float] = field(default_factory=dict)  # waiter -> first poll
    polls: int = 0
    poll_errors: dict[str, int] = field(default_factory=dict)  # status or exception -> count
    duplicates: int = 0
    redeliveries: int = 0
    misrouted: int = 0
    acks_ok: int = 0
    ack_errors: int = 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def delivery_summary(record: LatencyRecord, drain_timeout: float) -> dict[str, Any]:
    """Figures of the long-poll phase: POST -> device latency percentiles (ms) and counts."""
    latencies = [
        (record.received[seq] - record.sent[seq]) * 1000
        for seq in record.received
        if seq in record.sent
    ]
    posts = [(record.answered[seq] - record.sent[seq]) * 1000 for seq in record.answered]
    accepted = {seq for seq, status in record.post_status.items() if status == 201}
    statuses: dict[int, int] = {}
    for status in record.post_status.values():
        statuses[status] = statuses.get(status, 0) + 1

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "commands": len(record.sent),
        "accepted": len(accepted),
        "post_statuses": statuses,
        "delivered": len(record.received),
        "missing": len(accepted - record.received.keys()),
        "drain_timeout_s": drain_timeout,
        "p50_ms": ms(percentile(latencies, 50)),
        "p90_ms": ms(percentile(latencies, 90)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=None)),
        "post_p50_ms": ms(percentile(posts, 50)),
        "post_p99_ms": ms(percentile(posts, 99)),
        "duplicates": record.duplicates,
        "redeliveries": record.redeliveries,
        "misrouted": record.misrouted,
        "polls": record.polls,
        "poll_errors": dict(record.poll_errors),
        "acks_ok": record.acks_ok,
        "ack_errors": record.ack_errors,
    }


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


def _raise_open_files(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (at most the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _bounded(
    items: Sequence[T], concurrency: int, call: Callable[[T], Awaitable[R]]
) -> list[R]:
    """``call`` every item, at most ``concurrency`` at a time; results in the items' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with gate:
            return await call(item)

    return await asyncio.gather(*(one(item) for item in items))


async def _retrying(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Send a setup request, waiting ``Retry-After`` and resending (for up to about a minute)
    while the answer is 429 (the setup requests all carry the user's one token, and nginx
    limits each credential) or 503 (a component briefly unavailable)."""
    for _ in range(60):
        answer = await send()
        if answer.status_code not in (429, 503):
            return answer
        after = answer.headers.get("Retry-After", "1")
        await asyncio.sleep(min(float(after), 5) if after.isdigit() else 1)
    return answer


def _user_client(base_url: str, access_token: str) -> httpx.AsyncClient:
    """An async client acting as the bench's user."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=SETUP_CONCURRENCY + 10),
    )


async def _register_devices(
    base_url: str, access_token: str, count: int, into: list[tuple[uuid.UUID, str]]
) -> None:
    """Register ``count`` devices, appending (id, token) to ``into`` as each is created (so a
    failure half way still leaves the created ones to clean up)."""
    async with _user_client(base_url, access_token) as client:

        async def register(n: int) -> None:
            answer = await _retrying(lambda: client.post("/devices", json={"name": f"bench-{n}"}))
            answer.raise_for_status()
            into.append((uuid.UUID(answer.json()["id"]), answer.json()["token"]))

        await _bounded(range(count), SETUP_CONCURRENCY, register)


async def _delete_devices(base_url: str, access_token: str, ids: Sequence[uuid.UUID]) -> int:
    """Delete the devices (the API deletes their readings and command queues); return how
    many deletions failed."""
    async with _user_client(base_url, access_token) as client:

        async def delete(device_id: uuid.UUID) -> bool:
            try:
                answer = await _retrying(lambda: client.delete(f"/devices/{device_id}"))
            except httpx.HTTPError:
                return False
            return answer.status_code in (204, 404)

        return sum(not ok for ok in await _bounded(ids, SETUP_CONCURRENCY, delete))


async def _warm_up(base_url: str, tokens: Sequence[str]) -> None:
    """Poll every device once with ``wait=0``: the replica it lands on declares its queue and
    subscribes (about 10 ms each), so the measurements do not include that."""
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=SETUP_CONCURRENCY + 10)
    ) as client:

        async def warm(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            answer = await _retrying(
                lambda: client.get("/commands", params={"wait": 0}, headers=headers)
            )
            answer.raise_for_status()

        await _bounded(tokens, SETUP_CONCURRENCY, warm)


def note_delivery(record: LatencyRecord, waiter: int, command: dict[str, Any], at: float) -> None:
    """Record that waiter ``waiter``'s poll returned ``command`` at ``at``."""
    seq = (command.get("args") or {}).get("seq")
    if command.get("name") != "bench" or not isinstance(seq, int):
        return
    if record.target.get(seq) != waiter:
        record.misrouted += 1
    if int(command.get("attempt", 1)) > 1:
        record.redeliveries += 1
    if seq in record.received:
        record.duplicates += 1
    else:
        record.received[seq] = at


async def _ack(client: httpx.AsyncClient, command_id: str, record: LatencyRecord) -> None:
    """Ack one command as succeeded, counting the outcome."""
    try:
        answer = await client.post(f"/commands/{command_id}/ack", json={"status": "succeeded"})
        ok = answer.status_code == 200
    except httpx.HTTPError:
        ok = False
    if ok:
        record.acks_ok += 1
    else:
        record.ack_errors += 1


def _count_poll_error(record: LatencyRecord, what: str) -> None:
    record.poll_errors[what] = record.poll_errors.get(what, 0) + 1


def _device_client(base_url: str, token: str, tls: ssl.SSLContext) -> httpx.AsyncClient:
    """A client acting as one device, with its own few connections (a long poll, acks).

    One client per device rather than one big pool: httpx's pool assigns requests to
    connections in O(requests x connections), which makes one client with 1000 open long
    polls CPU-bound (seconds of client-side delay)."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        verify=tls,
        timeout=httpx.Timeout(LONG_POLL_WAIT + 20),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
    )


async def _wait_for_commands(
    client: httpx.AsyncClient, waiter: int, record: LatencyRecord, acks: set[asyncio.Task[None]]
) -> None:
    """One device: keep a long poll open, re-poll as soon as it returns, ack what it gets."""
    params = {"wait": LONG_POLL_WAIT, "limit": 10}
    while True:
        record.long_poll_started.setdefault(waiter, time.perf_counter())
        try:
            answer = await client.get("/commands", params=params)
        except httpx.HTTPError as exc:
            _count_poll_error(record, type(exc).__name__)
            await asyncio.sleep(0.5)
            continue
        at = time.perf_counter()
        record.polls += 1
        if answer.status_code == 204:
            continue
        if answer.status_code != 200:
            _count_poll_error(record, str(answer.status_code))
            await asyncio.sleep(0.5)
            continue
        for command in answer.json()["commands"]:
            note_delivery(record, waiter, command, at)
            task = asyncio.create_task(_ack(client, command["id"], record))
            acks.add(task)
            task.add_done_callback(acks.discard)


async def _send_command(
    client: httpx.AsyncClient, device_id: uuid.UUID, waiter: int, seq: int, record: LatencyRecord
) -> None:
    """The person sends command ``seq`` to a device, noting the time just before the POST."""
    record.target[seq] = waiter
    body = {"device_id": str(device_id), "name": "bench", "args": {"seq": seq}, "ttl": 600}
    record.sent[seq] = time.perf_counter()
    try:
        answer = await client.post("/commands", json=body)
        record.post_status[seq] = answer.status_code
    except httpx.HTTPError:
        record.post_status[seq] = 0
    record.answered[seq] = time.perf_counter()


async def _send_commands(
    client: httpx.AsyncClient,
    device_ids: Sequence[uuid.UUID],
    count: int,
    rate: float,
    record: LatencyRecord,
) -> None:
    """Send ``count`` commands to random devices at ``rate`` per second (each POST in its own
    task, so a slow answer does not delay the next one)."""
    rng, start, tasks = random.Random(), time.perf_counter(), []
    for seq in range(count):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        waiter = rng.randrange(len(device_ids))
        tasks.append(
            asyncio.create_task(_send_command(client, device_ids[waiter], waiter, seq, record))
        )
    await asyncio.gather(*tasks)


async def _until(condition: Callable[[], bool], within: float, step: float = 0.05) -> bool:
    """Check ``condition`` every ``step`` seconds until it holds (True) or ``within`` seconds
    pass (False)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def _measure_latency(
    base_url: str,
    access_token: str,
    devices: Sequence[tuple[uuid.UUID, str]],
    commands: int,
    rate: float,
    drain_timeout: float,
) -> LatencyRecord:
    """Open a long poll per device, send commands at ``rate``, and record when each arrives."""
    record, acks = LatencyRecord(), set[asyncio.Task[None]]()
    waiters = len(devices)
    typer.echo(f"warming up {waiters} devices (one wait=0 poll each) ...")
    await _warm_up(base_url, [token for _, token in devices])
    async with contextlib.AsyncExitStack() as stack:
        person = await stack.enter_async_context(_user_client(base_url, access_token))
        clients = [
            await stack.enter_async_context(_device_client(base_url, token, tls))
            for tls in [ssl.create_default_context()]  # one for all: building one costs ms
            for _, token in devices
        ]
        typer.echo(f"opening {waiters} long polls (wait={LONG_POLL_WAIT}s) ...")
        loops = [
            asyncio.create_task(_wait_for_commands(client, n, record, acks))
            for n, client in enumerate(clients)
        ]
        try:
            await _until(lambda: len(record.long_poll_started) == waiters, 30)
            settle = max(record.long_poll_started.values(), default=0) + 1 - time.perf_counter()
            await asyncio.sleep(max(settle, 0))
            typer.echo(f"sending {commands} commands at {rate:g}/s ...")
            ids = [device_id for device_id, _ in devices]
            await _send_commands(person, ids, commands, rate, record)
            typer.echo(f"waiting for the last deliveries (up to {drain_timeout:g}s) ...")
            accepted = {seq for seq, status in record.post_status.items() if status == 201}
            await _until(lambda: accepted <= record.received.keys(), drain_timeout)
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if acks:
                await asyncio.wait(list(acks), timeout=10)
    return record


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
        failed = asyncio.run(_delete_devices(base_url, access_token, ids))
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
    wrk = _wrk_binary()
    get_settings.cache_clear()
    s: Settings = get_settings()
    try:
        httpx.get(f"{s.base_url}/ping", timeout=5).raise_for_status()
        conn = psycopg.connect(s.database_direct_url, autocommit=True, connect_timeout=5)
    except (httpx.HTTPError, psycopg.Error) as exc:
        _fail(f"the stack does not answer ({exc}); start it with `iotctl up`")
    _raise_open_files(waiters + connections + 500)
    username, user_id, access_token = f"bench-{uuid.uuid4().hex[:12]}", uuid.uuid4(), ""
    registered: list[tuple[uuid.UUID, str]] = []
    try:
        with httpx.Client(base_url=s.base_url, timeout=60) as client:
            access_token = _create_user(conn, client, user_id, username)
        total = max(devices, waiters)
        typer.echo(f"registering {total} devices for user {username} ...")
        asyncio.run(_register_devices(s.base_url, access_token, total, registered))
        tokens = [token for _, token in registered]
        typer.echo(f"[1/3] GET /ping for {duration}s ({connections} connections, 2 threads) ...")
        ping_tokens = [f"bench-ping-{n}" for n in range(PING_CREDENTIALS)]
        ping = _run_wrk(
            wrk,
            f"{s.base_url}/ping",
            lua_script("GET", "/ping", ping_tokens),
            connections,
            duration,
        )
        typer.echo(f"[2/3] GET /commands?wait=0 (idle) for {duration}s, {devices} devices ...")
        asyncio.run(_warm_up(s.base_url, tokens[:devices]))
        path = "/commands?wait=0"
        idle = _run_wrk(
            wrk, s.base_url + path, lua_script("GET", path, tokens[:devices]), connections, duration
        )
        typer.echo(f"[3/3] command latency with {waiters} devices in long polls ...")
        record = asyncio.run(
            _measure_latency(
                s.base_url, access_token, registered[:waiters], commands, rate, drain_timeout
            )
        )
    except (httpx.HTTPError, psycopg.Error) as exc:
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
        "long_poll_wait_s": LONG_POLL_WAIT,
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
