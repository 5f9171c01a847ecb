"""``iotctl bench``: measure the running stack from outside, through nginx, with ``wrk``."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


def render_table(report: dict[str, Any]) -> str:
    """A readable table of the ping baseline, the ingest figures and their ratios."""
    p, i, e, r = report["ping"], report["ingest"], report["end_to_end"], report["ratios"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"

    rows = [
        ("requests/s", p["requests_per_s"], i["requests_per_s"], r["requests_per_s"]),
        ("latency p50 (ms)", p["p50_ms"], i["p50_ms"], r["p50"]),
        ("latency p99 (ms)", p["p99_ms"], i["p99_ms"], r["p99"]),
        ("requests", p["requests"], i["requests"], None),
        ("non-2xx answers", p["non_2xx"], i["non_2xx"], None),
        ("429 rate limited", p["statuses"].get(429, 0), i["statuses"].get(429, 0), None),
        ("socket errors", p["socket_errors"], i["socket_errors"], None),
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
