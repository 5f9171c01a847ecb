"""The load test's devices: one person owns them; ``devices.json`` holds their ids and tokens.

Before locust starts, :func:`prepare` creates a person ``loadtest-<time>`` (through
``iotctl users create``), registers the devices with ``POST /devices`` (about 50 in flight) and
writes ``devices.json`` (mode 0600: it holds tokens and the person's password). With ``reuse``
the newest earlier file is taken instead, checked, and topped up if it holds too few devices, so
a capacity planner can keep a large fleet registered between runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

DEVICES_FILE = "devices.json"
PERSON_PREFIX = "loadtest-"  # each run's person: loadtest-<UTC time>
RETRY_STATUSES = {429, 502, 503, 504}


class FleetError(RuntimeError):
    """The devices could not be prepared; the message says why."""


@dataclass
class Fleet:
    base_url: str
    username: str
    password: str
    devices: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "user": {"username": self.username, "password": self.password},
            "devices": self.devices,
        }


def load(path: Path) -> Fleet:
    """Read a devices file.

    Raises:
        FleetError: missing or not a devices file.
    """
    try:
        data = json.loads(path.read_text())
        return Fleet(
            data["base_url"], data["user"]["username"], data["user"]["password"], data["devices"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"{path} is not a readable devices file: {exc}") from exc


def save(path: Path, fleet: Fleet) -> None:
    """Write a devices file readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(fleet.to_json(), f)
    tmp.replace(path)


def newest_file(reports: Path) -> Path | None:
    """The newest ``devices.json`` under ``reports`` (run folders sort by time), if any."""
    found = sorted(p for p in reports.glob(f"*/{DEVICES_FILE}") if p.is_file())
    return found[-1] if found else None


def create_user(username: str, password: str) -> None:
    """Create a (non-admin) person with ``iotctl users create``.

    Raises:
        FleetError: iotctl failed (its message is included).
    """
    iotctl = Path(sys.executable).parent / "iotctl"
    result = subprocess.run(
        # a fleet is far more devices than a person's default limit
        [str(iotctl), "users", "create", username, "--password-stdin", "--max-devices", "10000000"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise FleetError(f"could not create user {username}: {result.stderr.strip()}")


def login(base_url: str, username: str, password: str) -> str:
    """A person's access token.

    Raises:
        FleetError: refused (e.g. the user no longer exists) or no answer.
    """
    try:
        r = httpx.post(
            f"{base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise FleetError(f"POST /auth/token: {exc}") from exc
    if r.status_code != 200:
        raise FleetError(f"POST /auth/token for {username}: HTTP {r.status_code} {r.text[:200]}")
    return str(r.json()["access_token"])


async def _send(request: Callable[[], Any], what: str, attempts: int = 10) -> httpx.Response:
    """Send until an answer that is not 429/5xx-retryable; backs off on refusals.

    Raises:
        FleetError: still refused or unanswered after ``attempts``.
    """
    delay = 0.25
    last = ""
    for _ in range(attempts):
        try:
            r: httpx.Response = await request()
        except httpx.HTTPError as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        else:
            if r.status_code not in RETRY_STATUSES:
                return r
            last = f"HTTP {r.status_code}"
            try:
                delay = max(delay, float(r.headers.get("Retry-After", 0)))
            except ValueError:
                pass
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 5.0)
    raise FleetError(f"{what}: gave up after {attempts} attempts ({last})")


async def register(
    base_url: str,
    access_token: str,
    count: int,
    first: int = 0,
    concurrency: int = 50,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, str]]:
    """Register ``count`` devices named ``load-<n>`` (n from ``first``), ``concurrency`` at a
    time; returns ``[{"id", "token"}]`` in order.

    Raises:
        FleetError: a registration was refused with a non-retryable status or kept failing.
    """
    out: list[dict[str, str] | None] = [None] * count
    gate = asyncio.Semaphore(concurrency)
    done = 0
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {access_token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, limits=limits
    ) as client:

        async def one(i: int) -> None:
            nonlocal done
            async with gate:
                r = await _send(
                    lambda: client.post("/devices", json={"name": f"load-{first + i}"}),
                    "POST /devices",
                )
            if r.status_code != 201:
                raise FleetError(f"POST /devices: HTTP {r.status_code} {r.text[:200]}")
            body = r.json()
            out[i] = {"id": body["id"], "token": body["token"]}
            done += 1
            if progress and done % 1000 == 0:
                progress(f"registered {done}/{count} devices ({time.monotonic() - started:.0f}s)")

        await asyncio.gather(*(one(i) for i in range(count)))
    return [d for d in out if d is not None]


def tokens_work(base_url: str, devices: list[dict[str, str]], sample: int = 10) -> bool:
    """Whether a random sample of device tokens is still accepted (``GET /sensors`` as the
    device, which changes nothing)."""
    picked = random.sample(devices, min(sample, len(devices)))
    with httpx.Client(base_url=base_url, timeout=15) as client:
        for d in picked:
            try:
                r = client.get("/sensors", headers={"Authorization": f"Bearer {d['token']}"})
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
    return True


def prepare(
    base_url: str,
    run_dir: Path,
    count: int,
    reuse: Path | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Write ``run_dir/devices.json`` with at least ``count`` devices and return its path.

    ``reuse``: an earlier devices file to start from (its person must still log in and a sample
    of its tokens must still work, else a new fleet is registered); missing devices are added.

    Raises:
        FleetError: the person or the devices could not be created.
    """
    fleet: Fleet | None = None
    if reuse is not None:
        try:
            old = load(reuse)
            login(base_url, old.username, old.password)
            if old.devices and not tokens_work(base_url, old.devices):
                raise FleetError("its device tokens are no longer accepted")
            fleet = Fleet(base_url, old.username, old.password, old.devices)
            progress(f"reusing {len(old.devices)} devices of {reuse}")
        except FleetError as exc:
            progress(f"cannot reuse {reuse} ({exc}); registering a new fleet")
    if fleet is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        fleet = Fleet(base_url, f"{PERSON_PREFIX}{stamp}", secrets.token_urlsafe(18))
        create_user(fleet.username, fleet.password)
        progress(f"created user {fleet.username}")
    missing = count - len(fleet.devices)
    if missing > 0:
        token = login(base_url, fleet.username, fleet.password)
        started = time.monotonic()
        fleet.devices += asyncio.run(
            register(base_url, token, missing, first=len(fleet.devices), progress=progress)
        )
        progress(f"registered {missing} devices in {time.monotonic() - started:.1f}s")
    path = run_dir / DEVICES_FILE
    save(path, fleet)
    return path


def sent_commands(run_dir: Path) -> list[tuple[str, float]]:
    """The (id, time) of every command the run's operator sent (``commands/*.json``)."""
    out: list[tuple[str, float]] = []
    for path in sorted((run_dir / "commands").glob("*.json")):
        out += [(str(i), float(at)) for i, at in json.loads(path.read_text())]
    return out


async def _cancel(base_url: str, token: str, ids: list[str], concurrency: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:

        async def one(command_id: str) -> None:
            async with gate:
                try:
                    r = await _send(
                        lambda: client.post(f"/commands/{command_id}/cancel"), "cancel", 5
                    )
                    key = {200: "cancelled", 409: "already final"}.get(r.status_code)
                    key = key or f"HTTP {r.status_code}"
                except FleetError:
                    key = "no answer"
            counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in ids))
    return counts


def cancel_pending(
    run_dir: Path, base_url: str, since: float, concurrency: int = 20
) -> dict[str, int]:
    """Cancel the run's commands sent after ``since`` (epoch s) that no device acked: answers
    counted as ``cancelled`` or ``already final`` (409).

    Raises:
        FleetError: the load-test person cannot log in.
    """
    ids = [i for i, at in sent_commands(run_dir) if at >= since]
    if not ids:
        return {}
    people = load(run_dir / DEVICES_FILE)
    token = login(base_url, people.username, people.password)
    return asyncio.run(_cancel(base_url, token, ids, concurrency))


def fleets(prefix: str = PERSON_PREFIX) -> list[dict[str, Any]]:
    """The load-test people (name starting with ``prefix``), newest first, each with the
    number of devices they own.

    Raises:
        FleetError: Postgres cannot be asked.
    """
    from iot.cli.users import with_connection

    async def query(conn: Any) -> list[dict[str, Any]]:
        cur = await conn.execute(
            "SELECT u.username, u.created_at, count(d.id) AS devices FROM users u"
            " LEFT JOIN devices d ON d.owner_id = u.id WHERE starts_with(u.username, %s)"
            " GROUP BY u.id ORDER BY u.created_at DESC, u.username DESC",
            (prefix,),
        )
        return [dict(r) for r in await cur.fetchall()]

    try:
        return with_connection(query)
    except Exception as exc:  # psycopg's and the pool's errors alike
        raise FleetError(f"cannot list the load-test people: {exc}") from exc
