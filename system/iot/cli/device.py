"""``iotctl device simulate``: N devices running the firmware's protocol core (``iotcore``, the
same files the board runs) over CPython, all in one asyncio loop."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from iot.cli.common import fail, settings

app = typer.Typer(help="Emulated devices built on the firmware's protocol core.")


class Output:
    """A relay or LED that only remembers its state."""

    def __init__(self) -> None:
        self.state = 0

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self.state = v
        return self.state


def _register(base_url: str, username: str, password: str, n: int) -> list[dict[str, str]]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post("/auth/token", json={"username": username, "password": password})
        if r.status_code != 200:
            fail(f"could not sign in as {username}: {r.status_code} {r.text}")
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        made = []
        for _ in range(n):
            r = http.post("/devices", json={"name": "simulated"}, headers=headers)
            if r.status_code != 201:
                fail(f"could not register a device: {r.status_code} {r.text}")
            made.append({"id": r.json()["id"], "token": r.json()["token"]})
        return made


class Simulation:
    def __init__(self, devices: list[dict[str, str]], state_dir: Path, config: dict[str, Any]):
        from iotcore.handlers import registry

        self.registry = registry
        self.devices = devices
        self.state_dir = state_dir
        self.config = config
        self.stop = False
        self.cores: dict[str, Any] = {}
        self.reboots = 0

    def _core(self, d: dict[str, str]) -> Any:
        from iotcore.core import Device, FileStore

        level = {"t": random.uniform(18, 24)}

        def sample(dev: Any) -> None:
            level["t"] += random.uniform(-0.2, 0.2)
            dev.add_reading("temperature", round(level["t"], 2))
            dev.add_reading("humidity", round(random.uniform(35, 55), 1))

        core = Device(
            d["token"],
            self.registry,
            config=self.config,
            store=FileStore(str(self.state_dir / f"{d['id']}.json")),
            sample=sample,
            outputs={"relay": Output(), "led": Output()},
        )
        core.rebooted = False

        def restart() -> None:  # RAM (the buffer) is lost; flash (recent ids) is kept
            core.rebooted = True
            self.reboots += 1

        core.restart = restart
        return core

    async def _run_one(self, http: httpx.AsyncClient, d: dict[str, str]) -> None:
        from iotcore.host import AsyncHttpxTransport, drive_async

        transport = AsyncHttpxTransport(http, d["token"])
        await asyncio.sleep(random.uniform(0, self.config["reading_interval_s"]))  # spread
        while not self.stop:
            core = self.cores[d["id"]] = self._core(d)
            await drive_async(core.run(), transport, lambda c=core: self.stop or c.rebooted)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for core in self.cores.values():
            for k, v in core.stats().items():
                out[k] = out.get(k, 0) + v
        out["reboots"] = self.reboots
        return out

    async def run(self, base_url: str, duration: float, report: float) -> dict[str, int]:
        limits = httpx.Limits(max_connections=len(self.devices) * 2 + 10)
        timeout = self.config["poll_wait_s"] + self.config["request_timeout_s"]
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
            tasks = [asyncio.create_task(self._run_one(http, d)) for d in self.devices]
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, lambda: setattr(self, "stop", True))
            loop.add_signal_handler(signal.SIGTERM, lambda: setattr(self, "stop", True))
            next_report = started + report
            while not self.stop and (not duration or time.monotonic() - started < duration):
                await asyncio.sleep(0.2)
                if time.monotonic() >= next_report:
                    next_report += report
                    t = self.totals()
                    line = "  ".join(f"{k} {v}" for k, v in t.items())
                    typer.echo(f"{time.monotonic() - started:6.0f}s  {line}")
            self.stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.totals()


@app.command()
def simulate(
    count: Annotated[int, typer.Option(help="How many devices.", min=1, max=10000)] = 10,
    username: Annotated[
        str | None, typer.Option(help="Owner to register new devices for (password on stdin).")
    ] = None,
    devices_file: Annotated[
        Path | None,
        typer.Option(help="Devices (id, token) to reuse and add to; default var/sim/devices.json"),
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds to run; 0: until Ctrl-C.")] = 0,
    interval: Annotated[float, typer.Option(help="Seconds between sensor readings.")] = 10,
    poll_wait: Annotated[
        int, typer.Option(help="Long-poll seconds (1 to 30).", min=1, max=30)
    ] = 20,
    buffer_max: Annotated[int, typer.Option(help="Readings kept while offline.")] = 500,
    report: Annotated[float, typer.Option(help="Seconds between progress lines.")] = 10,
    base_url: Annotated[str | None, typer.Option(help="API URL; default the local nginx.")] = None,
) -> None:
    """Run COUNT devices on the firmware's protocol core: each reads two sensors every
    INTERVAL, sends them (buffering while the API is away), long-polls commands (set_output,
    set_interval, reboot, ping), runs each id once and acks it. Recent command ids persist in
    var/sim/<device id>.json, as in the board's flash."""
    s = settings()
    url = base_url or s.base_url
    state_dir = s.var / "sim"
    state_dir.mkdir(parents=True, exist_ok=True)
    path = devices_file or state_dir / "devices.json"
    known: list[dict[str, str]] = json.loads(path.read_text()) if path.exists() else []
    if len(known) < count:
        if not username:
            fail(f"{path} has {len(known)} devices; give --username (password on stdin) to add")
        password = sys.stdin.readline().strip()
        known += _register(url, username, password, count - len(known))
        path.write_text(json.dumps(known, indent=1))
        path.chmod(0o600)
    config = {
        "reading_interval_s": interval,
        "poll_wait_s": poll_wait,
        "buffer_max": buffer_max,
        "request_timeout_s": 10,
    }
    sim = Simulation(known[:count], state_dir, config)
    typer.echo(f"{count} devices against {url}; Ctrl-C stops")
    totals = asyncio.run(sim.run(url, duration, report))
    typer.echo("done: " + "  ".join(f"{k} {v}" for k, v in totals.items()))
