"""Inside locust: per-second request samples and the readings ledger, gathered in the master
(or only) process through locust's messages, so workers on other machines report too; and the
number of running devices, broadcast by the master to the workers.

Messages: ``load_samples`` (worker → master: sample rows), ``load_ledger`` (worker → master:
per device what the API accepted), ``load_commands`` (worker → master: the commands the
operator sent), ``load_fleet`` (master → workers: running devices). The master writes
``samples.jsonl``, ``ledger/<node>.json`` and ``commands/<node>.json`` into ``LOAD_RUN_DIR``.

Importing this module imports locust and gevent; only locustfiles import it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest import samples

LedgerSource = Callable[[], dict[str, dict[str, Any]]]


class Collector:
    """One per locust process; :meth:`install` hooks it into locust's events."""

    def __init__(self, run_dir: str | None, device_class: str = "DeviceUser") -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.device_class = device_class
        self.node = ""
        self.recorder = samples.Recorder()
        self.fleet_devices = 0  # running devices, as broadcast by the master (workers)
        self._count: tuple[float, int] = (0.0, 0)
        self._ledger: LedgerSource = dict

    # ----- what users ask -----
    def running_devices(self, environment: Environment) -> int:
        """How many device users run in the whole test (all processes)."""
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            return self.fleet_devices
        if isinstance(runner, MasterRunner):
            return int(runner.reported_user_classes_count.get(self.device_class, 0))
        now = time.monotonic()
        at, count = self._count
        if now - at > 1 and runner is not None:
            count = runner.user_classes_count.get(self.device_class, 0)
            self._count = (now, count)
        return count

    # ----- in the processes that send requests -----
    def _on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response: Any = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        if request_type == "COMMAND":
            status, t = "ok", time.time()
        else:
            code = int(getattr(response, "status_code", 0) or 0)
            status, t = (str(code) if code else "error"), (start_time or time.time())
        self.recorder.record(t, request_type, name, response_time, status, exception is not None)

    def _flush(self, environment: Environment, final: bool = False) -> None:
        rows = self.recorder.drain(None if final else time.time())
        if rows and environment.runner is not None:
            environment.runner.send_message("load_samples", rows)

    def _flusher(self, environment: Environment) -> None:
        while True:
            gevent.sleep(5)
            self._flush(environment)

    def send_ledger(self, environment: Environment) -> None:
        """Send this process's ledger (and every sample so far) to the master now: called when
        its last device stops, and when the test stops."""
        if isinstance(environment.runner, MasterRunner) or environment.runner is None:
            return
        self._flush(environment, final=True)
        devices = self._ledger()
        environment.runner.send_message("load_ledger", {"node": self.node, "devices": devices})

    def send_commands(self, environment: Environment, sent: list[tuple[str, float]]) -> None:
        """Send the (id, time) of the commands this process's operator sent to the master."""
        if environment.runner is not None and not isinstance(environment.runner, MasterRunner):
            environment.runner.send_message("load_commands", {"node": self.node, "sent": sent})

    def _on_test_stop(self, environment: Environment, **_: Any) -> None:
        self.send_ledger(environment)

    # ----- in the master (or only) process -----
    def _write_samples(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.run_dir:
            samples.append(self.run_dir / "samples.jsonl", msg.data)

    def _write_ledger(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.run_dir:
            folder = self.run_dir / "ledger"
            folder.mkdir(exist_ok=True)
            (folder / f"{msg.data['node']}.json").write_text(json.dumps(msg.data["devices"]))

    def _write_commands(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.run_dir:
            folder = self.run_dir / "commands"
            folder.mkdir(exist_ok=True)
            (folder / f"{msg.data['node']}.json").write_text(json.dumps(msg.data["sent"]))

    def _set_fleet(self, environment: Environment, msg: Any, **_: Any) -> None:
        self.fleet_devices = int(msg.data.get("devices", 0))

    def _broadcaster(self, environment: Environment) -> None:
        while True:
            gevent.sleep(2)
            if isinstance(environment.runner, MasterRunner):
                environment.runner.send_message(
                    "load_fleet", {"devices": self.running_devices(environment)}
                )

    def install(self, ledger: LedgerSource) -> None:
        """Hook into locust: ``ledger()`` gives this process's per-device accepted readings
        when the test stops."""
        self._ledger = ledger

        @events.init.add_listener
        def _on_init(environment: Environment, **_: Any) -> None:
            runner = environment.runner
            if runner is None:
                return
            # locust forks its workers after importing the locustfile: name the process here
            self.node = f"{socket.gethostname()}-{os.getpid()}"
            self.recorder = samples.Recorder(self.node)
            if isinstance(runner, WorkerRunner):
                runner.register_message("load_fleet", self._set_fleet)
            else:
                runner.register_message("load_samples", self._write_samples)
                runner.register_message("load_ledger", self._write_ledger)
                runner.register_message("load_commands", self._write_commands)
            if isinstance(runner, MasterRunner):
                gevent.spawn(self._broadcaster, environment)
            else:
                environment.events.request.add_listener(self._on_request)
                gevent.spawn(self._flusher, environment)

        events.test_stop.add_listener(self._on_test_stop)
