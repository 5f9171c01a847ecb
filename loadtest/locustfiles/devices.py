"""Scenario "devices": emulated devices, an operator and web viewers over the real HTTP API.

- ``DeviceUser``: one user = one registered device with its own token, running the firmware's
  protocol core (``iotcore``, the code the boards run) over one raw keep-alive connection
  (``loadtest/rawhttp.py``). Every ``LOAD_READING_INTERVAL`` s (10) it measures ``LOAD_BATCH``
  readings (5) and sends them with ``POST /sensors``; in between it long-polls
  ``GET /commands?wait=`` (up to ``LOAD_POLL_WAIT`` s, 10), runs each command id once and acks
  every command it gets. 429/503 (and no answer) are retried with the core's backoff,
  honouring ``Retry-After``; unsent readings stay in its buffer. Each command's end-to-end
  latency (receipt - ``created_at``) is reported as request type ``COMMAND``, name
  ``end-to-end``.
- ``OperatorUser`` (one): sends ``LOAD_COMMANDS_PER_DEVICE_HOUR`` (6) commands per running
  device per hour to random running devices, a quarter with an ``Idempotency-Key``; reads
  latest readings, history and command timelines.
- ``WebViewerUser`` (``LOAD_VIEWERS``, 2): what the web app polls: ``GET /devices`` and
  ``GET /sensors?device_id=`` every few seconds.

Each class can run alone (``locust -f devices.py DeviceUser``). Devices come from
``LOAD_DEVICES_FILE`` (written by ``iotctl load run``); process k of ``LOAD_WORKERS`` emulates
devices k, k+P, ... The shape comes from ``LOAD_SHAPE`` (see ``loadtest/shapes.py``). Per-second
samples of every request and what the API accepted from each device go to ``LOAD_RUN_DIR``
(through locust's messages to the master, so also from workers on other machines).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gevent
import locust.runners
import locust.stats
from gevent.pool import Pool
from iotcore.core import Sleep
from locust import FastHttpUser, User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.user.task import LOCUST_STATE_STOPPING

from iot import heap
from loadtest import shapes
from loadtest.collect import Collector
from loadtest.device import (
    COMMAND_NAMES,
    SENSORS,
    Backoff,
    DevicePool,
    DeviceState,
    PoolExhausted,
    load_registry,
    parse_time,
    retry_after_seconds,
)
from loadtest.rawhttp import GeventHttpClientTransport, KeepAliveTransport, split_host

log = logging.getLogger("loadtest")
CSV_STATS_SECONDS = 5

# Locust's master gives a worker process up after 3 missed one-second heartbeats and, when the
# last is gone, stops the test. Worker processes starting thousands of devices on a busy
# machine miss a few; they are not dead (the runner reports a run cut short all the same).
locust.runners.HEARTBEAT_LIVENESS = 15


def _env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not a number") from exc


READING_INTERVAL = _env("LOAD_READING_INTERVAL", 10)
BATCH = int(_env("LOAD_BATCH", 5))
POLL_WAIT = int(_env("LOAD_POLL_WAIT", 10))
COMMANDS_PER_DEVICE_HOUR = _env("LOAD_COMMANDS_PER_DEVICE_HOUR", 6)
COMMAND_TTL = int(_env("LOAD_COMMAND_TTL", 600))
BACKOFF_CAP = _env("LOAD_BACKOFF_CAP", 30)
BUFFER_LIMIT = int(_env("LOAD_BUFFER_LIMIT", 10_000))
VIEWERS = int(_env("LOAD_VIEWERS", 2))
VIEWER_INTERVAL = _env("LOAD_VIEWER_INTERVAL", 5)
OPERATOR_READ_INTERVAL = _env("LOAD_OPERATOR_READ_INTERVAL", 5)
WORKERS = int(_env("LOAD_WORKERS", 1))
RUN_STARTED = _env("LOAD_RUN_STARTED", time.time())
RUN_DIR = os.environ.get("LOAD_RUN_DIR")
DEVICES_FILE = os.environ.get("LOAD_DEVICES_FILE") or (
    str(Path(RUN_DIR) / "devices.json") if RUN_DIR else ""
)
RETRY_STATUSES = {0, 429, 502, 503, 504}
# The firmware core's settings for an emulated device (the board's defaults otherwise).
CORE_CONFIG = {
    "reading_interval_s": READING_INTERVAL,
    "poll_wait_s": POLL_WAIT,
    "backoff_cap_ms": int(BACKOFF_CAP * 1000),
    "retry_after_cap_ms": int(BACKOFF_CAP * 1000),
    "request_timeout_s": 30,
    "recent_ids": 256,
}
# Local addresses the devices connect from, in turn (LOAD_SOURCE_ADDRESSES, comma separated;
# default none: the kernel's choice). One source address reaches one nginx port with at most
# the ephemeral port range (about 28,000 here): fleets larger than that need several.
# The device side's HTTP client: "raw" (loadtest/rawhttp.py, the default) or
# "geventhttpclient" (its low-level client, kept to compare the two's cost per request).
TRANSPORT = os.environ.get("LOAD_DEVICE_TRANSPORT", "raw").strip() or "raw"
if TRANSPORT not in ("raw", "geventhttpclient"):
    raise SystemExit(f"LOAD_DEVICE_TRANSPORT={TRANSPORT!r}: choose raw or geventhttpclient")
SOURCES = [a.strip() for a in os.environ.get("LOAD_SOURCE_ADDRESSES", "").split(",") if a.strip()]

# The only shape class locust sees: the one LOAD_SHAPE names (None: --users/--spawn-rate).
LoadShape = shapes.selected()


class _Process:
    """What one locust process shares between its users."""

    fleet: dict[str, Any] | None = None
    pool: DevicePool | None = None
    commands: list[tuple[str, float]] = []  # (id, time) of every command answered 201
    connections = 0
    transports: set[Any] = set()
    watchdog: gevent.Greenlet | None = None


COLLECTOR = Collector(RUN_DIR)


def _fleet() -> dict[str, Any]:
    """The devices file.

    Raises:
        StopUser: no file was given or it cannot be read (logged).
    """
    if _Process.fleet is None:
        if not DEVICES_FILE:
            log.error("set LOAD_DEVICES_FILE (or LOAD_RUN_DIR) to a devices.json")
            raise StopUser()
        try:
            _Process.fleet = json.loads(Path(DEVICES_FILE).read_text())
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s", DEVICES_FILE, exc)
            raise StopUser() from exc
    return _Process.fleet


def _pool(environment: Environment) -> DevicePool:
    if _Process.pool is None:
        index = getattr(environment.runner, "worker_index", 0)
        _Process.pool = DevicePool(
            _fleet()["devices"], max(index, 0), WORKERS, buffer_limit=BUFFER_LIMIT
        )
    return _Process.pool


def _watchdog() -> None:
    """Once a second: end the requests past their deadline (the devices' timeouts)."""
    while True:
        gevent.sleep(1)
        now = time.monotonic()
        for transport in list(_Process.transports):
            transport.expire(now)


def _source_address() -> str | None:
    if not SOURCES:
        return None
    _Process.connections += 1
    return SOURCES[_Process.connections % len(SOURCES)]


def running_devices(environment: Environment) -> int:
    """How many DeviceUsers run in the whole test (all processes)."""
    return COLLECTOR.running_devices(environment)


def _status(response: Any) -> int:
    return int(getattr(response, "status_code", 0) or 0)


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    return retry_after_seconds(headers.get("Retry-After") if headers else None)


# What each request of the core is called in locust's statistics.
ROUTES = {"readings": ("POST", "/sensors"), "polls": ("GET", "/commands"),
          "acks": ("POST", "/commands/[id]/ack")}  # fmt: skip


class _Answer:
    """What locust's listeners read of an answer (the collector reads ``status_code``)."""

    __slots__ = ("status_code",)

    def __init__(self, status: int) -> None:
        self.status_code = status


_ANSWERS = {status: _Answer(status) for status in (200, 201, 204)}


class _Refused(Exception):
    """A request answered outside 2xx (or not at all): a failure in locust's statistics."""


class DeviceUser(User):
    """One device running the firmware's protocol core (``iotcore``) over one raw keep-alive
    connection (``loadtest/rawhttp.py``): readings every interval, long polls in between, each
    command run once and acked, retries with backoff and ``Retry-After``. No locust HTTP session:
    the device side of the generator must cost far less than the product it measures."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        try:
            self.state: DeviceState = _pool(self.environment).take()
        except (PoolExhausted, ValueError) as exc:  # ValueError: LOAD_WORKERS is wrong
            log.error("%s", exc)
            raise StopUser() from exc
        host, port = split_host(self.host or _fleet()["base_url"])
        self.fire = self.environment.events.request.fire
        self.transport: Any
        if TRANSPORT == "geventhttpclient":
            self.transport = GeventHttpClientTransport(host, port, self.state.token, self._observe)
        else:
            self.transport = KeepAliveTransport(
                host, port, self.state.token, observe=self._observe, source=_source_address()
            )
        _Process.transports.add(self.transport)
        self.core = self.state.device(load_registry(), CORE_CONFIG, self._event, BATCH)
        if _Process.watchdog is None:
            _Process.watchdog = gevent.spawn(_watchdog)

    def on_stop(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.close()
            _Process.transports.discard(transport)
        state = getattr(self, "state", None)
        if state is not None and _Process.pool is not None:
            _Process.pool.give_back(state)
            if _Process.pool.in_use == 0:
                # this process's last device: report now (a master may quit its workers soon)
                COLLECTOR.send_ledger(self.environment)

    @task
    def live(self) -> None:
        """Run the core's loop until locust asks this user to stop; then end after the request
        in flight has its answer (locust's --stop-timeout bounds the wait), so that nothing
        sent goes unrecorded."""
        loop = self.core.run()
        request = self.transport.request
        answer = None
        while True:
            effect = loop.send(answer)
            if isinstance(effect, Sleep):
                gevent.sleep(effect.ms / 1000)
                answer = None
            else:
                answer = request(effect)
            if self._state == LOCUST_STATE_STOPPING:
                loop.send(answer)  # the core takes the answer in (the ledger counts it)
                return

    def _observe(self, req: Any, response: Any, ms: float, started: float) -> None:
        method, name = ROUTES[req.kind]
        status = response.status
        self.fire(
            request_type=method,
            name=name,
            response_time=ms,
            response_length=len(response.body),
            response=_ANSWERS.get(status) or _Answer(status),
            context=None,
            exception=None if 200 <= status < 300 else _Refused(status or response.error),
            start_time=started,
        )

    def _event(self, what: str, *args: Any) -> None:
        """The core's events: readings accepted or refused (the ledger), a command's first
        delivery (its end-to-end latency)."""
        if what == "sent":
            self.state.sent(len(args[0]))
        elif what == "refused":
            req, response = args
            if req.kind == "readings":
                log.error("POST /sensors answered %s: dropping %d readings", response.status,
                          len(req.body["readings"]))  # fmt: skip
                self.state.refused(len(req.body["readings"]))
            else:
                log.error("%s %s answered %s", req.method, req.path, response.status)
        elif what == "delivered" and args[1]:
            command = args[0]
            received = time.time()
            try:
                created = parse_time(command["created_at"])
            except (KeyError, ValueError):
                created = received
            name = "end-to-end" if created >= RUN_STARTED else "end-to-end (earlier run)"
            self.fire(
                request_type="COMMAND",
                name=name,
                response_time=max(0.0, (received - created) * 1000),
                response_length=0,
                exception=None,
                context={},
            )


class _Person(FastHttpUser):
    """A person logged in with the load-test user's credentials (own token per user, so
    nginx's per-credential limits and routing treat each as its own client)."""

    abstract = True
    token = ""

    def on_start(self) -> None:
        self._login()

    def _login(self) -> None:
        user = _fleet()["user"]
        r = self.client.post(
            "/auth/token",
            json={"username": user["username"], "password": user["password"]},
            name="/auth/token",
        )
        if _status(r) != 200:
            log.error("login as %s answered %s", user["username"], _status(r))
            raise StopUser()
        self.token = r.json()["access_token"]
        self.token_at = time.time()

    def call(self, method: str, path: str, name: str, **kw: Any) -> Any:
        """One request with the person's token; logs in again on 401 or after 50 minutes."""
        if time.time() - self.token_at > 3000:
            self._login()
        r = self.client.request(
            method, path, name=name, headers={"Authorization": f"Bearer {self.token}"}, **kw
        )
        if _status(r) == 401:
            self._login()
        return r

    def some_device(self) -> dict[str, str] | None:
        """A random device among those running (devices are taken lowest index first)."""
        devices = _fleet()["devices"]
        running = min(running_devices(self.environment), len(devices))
        if running <= 0:
            return None
        return devices[self.rng_index(max(1, running - 2 * WORKERS))]

    def rng_index(self, n: int) -> int:
        return random.randrange(n)


class OperatorUser(_Person):
    """Sends commands at a rate proportional to the running devices, and reads."""

    fixed_count = 1
    wait_time = constant(0)
    concurrency = 20

    def on_start(self) -> None:
        super().on_start()
        self.credit = 0.0
        self.last = time.time()
        self.next_read = self.last + OPERATOR_READ_INTERVAL
        self.sent: deque[tuple[str, float]] = deque(maxlen=200)
        self.senders = Pool(50)

    def on_stop(self) -> None:
        self.senders.kill()
        # the run cancels what it sent and no device took yet, so that it does not expire
        # later (and count against the next run's command-delivery SLO)
        COLLECTOR.send_commands(self.environment, _Process.commands)

    @task
    def tick(self) -> None:
        now = time.time()
        running = running_devices(self.environment)
        self.credit += (now - self.last) * running * COMMANDS_PER_DEVICE_HOUR / 3600
        self.last = now
        while self.credit >= 1 and self.senders.free_count() > 0:
            self.credit -= 1
            self.senders.spawn(self._command)
        if now >= self.next_read:
            self.next_read = now + OPERATOR_READ_INTERVAL
            self._read()
        gevent.sleep(0.2)

    def _command(self) -> None:
        device = self.some_device()
        if device is None:
            return
        body = {
            "device_id": device["id"],
            "name": random.choice(COMMAND_NAMES),
            "args": {"seconds": random.randint(1, 60)},
            "ttl": COMMAND_TTL,
        }
        extra = {"Idempotency-Key": str(uuid.uuid4())} if random.random() < 0.25 else {}
        backoff = Backoff(cap=BACKOFF_CAP)
        for _ in range(8):  # the same key on every retry: one command however often sent
            headers = {"Authorization": f"Bearer {self.token}", **extra}
            r = self.client.post("/commands", json=body, headers=headers, name="/commands")
            status = _status(r)
            if status == 201:
                sent = (str(r.json()["id"]), time.time())
                self.sent.append(sent)
                _Process.commands.append(sent)
                return
            if status == 401:
                self._login()
            elif status not in RETRY_STATUSES:
                log.error("POST /commands answered %s: not retried", status)
                return
            gevent.sleep(backoff.next_delay(_retry_after(r)))

    def _read(self) -> None:
        device = self.some_device()
        if device is not None:
            self.call("GET", f"/sensors?device_id={device['id']}", "/sensors")
            end = datetime.now(UTC)
            start = end - timedelta(minutes=10)
            self.call(
                "GET",
                f"/sensors/history?device_id={device['id']}&sensor={SENSORS[0]}"
                f"&from={start:%Y-%m-%dT%H:%M:%SZ}&to={end:%Y-%m-%dT%H:%M:%SZ}&step=1m",
                "/sensors/history",
            )
        old = [cid for cid, at in self.sent if time.time() - at > 10]
        if old:
            self.call("GET", f"/commands/{random.choice(old)}", "/commands/[id]")


class WebViewerUser(_Person):
    """A web app's page: the device list now and then, the latest readings of a few."""

    abstract = VIEWERS <= 0  # fixed_count 0 would make it a weighted class
    fixed_count = max(VIEWERS, 1)
    wait_time = constant(VIEWER_INTERVAL)
    concurrency = 2

    def on_start(self) -> None:
        super().on_start()
        self.cycles = 0
        self.page: list[str] = []

    @task
    def refresh(self) -> None:
        if self.cycles % 6 == 0 or not self.page:
            running = running_devices(self.environment)
            offset = random.randrange(max(1, running - 20)) if running > 20 else 0
            r = self.call("GET", f"/devices?limit=20&offset={offset}", "/devices")
            if _status(r) == 200:
                self.page = [d["id"] for d in r.json().get("devices", [])]
        self.cycles += 1
        for device_id in self.page[:3]:
            self.call("GET", f"/sensors?device_id={device_id}", "/sensors")


def _ledger() -> dict[str, dict[str, Any]]:
    """Per device of this process: readings answered 201 (count, ts range), dropped, unsent."""
    if _Process.pool is None:
        return {}
    return {
        s.id: {**s.accepted.as_dict(), "dropped": s.dropped, "unsent": s.unsent}
        for s in _Process.pool.states.values()
        if s.accepted.count or s.dropped or s.unsent
    }


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    heap.settle()  # locust, gevent and the scenario are loaded: out of the collector's walk
    # locust rewrites its CSV files (every route's percentiles) each second by default, a fixed
    # cost that made the generator's CPU per request at 1,000 devices a tenth higher; the
    # progress line reads them every 10 s, and reports use our own per-second samples
    locust.stats.CSV_STATS_INTERVAL_SEC = CSV_STATS_SECONDS
    if isinstance(environment.shape_class, shapes.FleetShape):
        environment.shape_class.extra_users = sum(
            c.fixed_count for c in environment.user_classes if c.fixed_count
        )


COLLECTOR.install(_ledger)
