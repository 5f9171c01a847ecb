"""``iotctl bench poll``'s long-poll phase: many devices each keep ``GET /commands?wait=``
open while a person sends commands at a steady rate; records when each command reaches its
device (POST -> first poll returning it), plus the setup the bench needs (registering,
warming up and deleting devices with bounded concurrency)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import typer

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


def raise_open_files(wanted: int) -> int:
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


async def register_devices(
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


async def delete_devices(base_url: str, access_token: str, ids: Sequence[uuid.UUID]) -> int:
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


async def warm_up(base_url: str, tokens: Sequence[str]) -> None:
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


def first_wait(waiter: int, waiters: int) -> int:
    """The ``wait`` of a device's first long poll: spread over 1 .. LONG_POLL_WAIT seconds
    across the devices, so their polls end at different times ever after, as a real fleet's
    do. (All opened together with one wait, they all ended together and re-polled in one
    burst every LONG_POLL_WAIT seconds; a command sent during a burst waited for the bench's
    own client, not for the product.)"""
    waiters = max(waiters, 1)
    return 1 + (waiter % waiters) * LONG_POLL_WAIT // waiters


async def _wait_for_commands(
    client: httpx.AsyncClient,
    waiter: int,
    record: LatencyRecord,
    acks: set[asyncio.Task[None]],
    waiters: int = 1,
) -> None:
    """One device: keep a long poll open, re-poll as soon as it returns, ack what it gets."""
    params = {"wait": first_wait(waiter, waiters), "limit": 10}
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
        params["wait"] = LONG_POLL_WAIT
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


async def measure_latency(
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
    await warm_up(base_url, [token for _, token in devices])
    async with contextlib.AsyncExitStack() as stack:
        person = await stack.enter_async_context(_user_client(base_url, access_token))
        clients = [
            await stack.enter_async_context(_device_client(base_url, token, tls))
            for tls in [ssl.create_default_context()]  # one for all: building one costs ms
            for _, token in devices
        ]
        typer.echo(f"opening {waiters} long polls (wait={LONG_POLL_WAIT}s) ...")
        loops = [
            asyncio.create_task(_wait_for_commands(client, n, record, acks, waiters))
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
