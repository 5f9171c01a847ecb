"""Devices built on the firmware's protocol core against the running stack, through nginx:
commands received, run once and acked (also across a restart and a lease expiry), and readings
buffered while the API is away, then delivered: none lost, none twice (checked in Postgres)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from iotcore.core import MemoryStore, Registry, Request, Response, drive
from iotcore.handlers import registry as builtins
from iotcore.http import HttpTransport

from iot import security
from iot.cli.device import Output  # the simulator's relay, which only remembers its state
from tests.integration.conftest import Device, Person, eventually, status_becomes

pytestmark = pytest.mark.integration
FAST = {"reading_interval_s": 1, "poll_wait_s": 2, "backoff_base_ms": 200, "backoff_cap_ms": 3000}


class Running:
    """Cores driven by the blocking driver, one thread each (as the board runs one loop)."""

    def __init__(self) -> None:
        self.threads: list[tuple[Any, threading.Thread]] = []

    def start(self, device: Device, core: Any, transport: Any = None) -> Any:
        t = threading.Thread(
            target=drive, args=(core.run(), transport or device.transport), daemon=True
        )
        t.start()
        self.threads.append((core, t))
        return core

    def stop(self) -> None:
        for core, _ in self.threads:
            core.stopped = True
        for _, t in self.threads:
            t.join(40)


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.stop()


def counting_registry(runs: dict[str, int]) -> Registry:
    reg = Registry()
    reg.handlers.update(builtins.handlers)

    def count(name: str) -> Callable[[Any, dict[str, Any]], Any]:
        def handler(core: Any, args: dict[str, Any]) -> Any:
            runs[core.current_command] = runs.get(core.current_command, 0) + 1
            return builtins.handlers[name](core, args)

        return handler

    for name in builtins.handlers:
        reg.add(name, count(name))
    return reg


def test_simulated_devices_receive_run_once_and_ack_commands(
    alice: Person, running: Running
) -> None:
    runs: dict[str, int] = {}
    devices = [alice.new_device() for _ in range(3)]
    cores = []
    for d in devices:
        core = d.core(counting_registry(runs), config=FAST, outputs={"relay": Output()})
        cores.append(running.start(d, core))
    sent = []
    for d in devices:
        for name, args in [("set_output", {"name": "relay", "on": True}), ("ping", {})]:
            r = alice.send(d, name, args)
            assert r.status_code == 201, r.text
            sent.append(r.json()["id"])
    for cid in sent:
        command = status_becomes(alice, cid, "succeeded", timeout=30)
        assert command["result"]
    assert runs == {cid: 1 for cid in sent}
    assert [c.outputs["relay"].state for c in cores] == [1, 1, 1]
    assert all(c.stats()["acks_pending"] == 0 for c in cores)


def test_a_command_delivered_again_after_a_restart_and_a_lease_expiry_runs_once(
    alice: Person, running: Running
) -> None:
    box = alice.new_device()
    runs: dict[str, int] = {}
    flash = MemoryStore()
    config = {**FAST, "lease_s": 1}

    class NoAcks:  # the device restarts before its ack goes out
        def request(self, request: Any) -> Response:
            if request.kind == "acks":
                return Response(0, error="restarting")
            return box.transport.request(request)

    first = running.start(
        box, box.core(counting_registry(runs), config=config, store=flash), NoAcks()
    )
    cid = alice.send(box, "ping").json()["id"]
    eventually(lambda: runs.get(cid), what="the first run")
    first.stopped = True  # the restart: RAM is gone, the flash (recent ids) is kept
    time.sleep(1.5)  # past the 1 s lease
    second = running.start(box, box.core(counting_registry(runs), config=config, store=flash))
    command = status_becomes(alice, cid, "succeeded", timeout=30)
    assert runs == {cid: 1}
    assert command["attempt"] >= 2  # it was delivered again
    assert second.duplicates >= 1 and second.executed == 0


def test_readings_buffered_while_the_api_is_stopped_30_s_all_arrive_once(
    alice: Person, pg: psycopg.Connection, running: Running, restart_guard, stack
) -> None:
    devices = [alice.new_device() for _ in range(3)]
    sampled: dict[Any, list[dict[str, Any]]] = {d.id: [] for d in devices}
    sampling = threading.Event()
    sampling.set()
    most_buffered = {d.id: 0 for d in devices}
    cores = {}

    def sampler(device_id: Any) -> Callable[[Any], None]:
        def sample(core: Any) -> None:
            if sampling.is_set():
                core.add_reading("temperature", float(len(sampled[device_id])))
                sampled[device_id].append(core.buffer.items[-1][1])
            most_buffered[device_id] = max(most_buffered[device_id], len(core.buffer))

        return sample

    for d in devices:
        cores[d.id] = running.start(d, d.core(builtins, config=FAST, sample=sampler(d.id)))
    time.sleep(3)
    restart_guard("api-1")
    restart_guard("api-2")
    time.sleep(30)
    for name in ("api-1", "api-2"):
        stack.start_program(name)
    time.sleep(5)
    sampling.clear()
    eventually(
        lambda: all(len(c.buffer) == 0 for c in cores.values()), timeout=90, what="buffers empty"
    )
    for d in devices:
        core = cores[d.id]
        assert core.buffer.dropped == 0 and core.rejected == 0
        assert most_buffered[d.id] >= 25  # it really held readings through the outage
        want = sorted((r["ts"], r["value"]) for r in sampled[d.id])

        def stored(device_id: Any = d.id, n: int = len(want)) -> list[Any] | None:
            rows = pg.execute(
                "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
                " value FROM readings WHERE device_id = %s ORDER BY ts",
                (device_id,),
            ).fetchall()
            return rows if len(rows) >= n else None

        got = eventually(stored, timeout=30, what="every reading in Postgres")
        assert [tuple(r) for r in got] == want  # none lost, none twice, same values


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_boards_own_http_transport_works_through_nginx(
    alice: Person, settings, running: Running, scheme: str
) -> None:
    """iotcore.http (sockets and ssl, as on the board), here on CPython; https verifies the
    server's certificate against the CA given, as config.CA_CERT_FILE does on the board."""
    box = alice.new_device()
    if scheme == "https":
        ca = (settings.var / "tls" / "server.crt").read_text()
        url = f"https://{settings.host}:{settings.https_port}"
    else:
        ca, url = None, settings.base_url
    transport = HttpTransport(url, box.token, ca)
    runs: dict[str, int] = {}
    core = box.core(counting_registry(runs), config=FAST, sample=lambda c: c.add_reading("t", 1.0))
    running.start(box, core, transport)
    cid = alice.send(box, "ping").json()["id"]
    assert status_becomes(alice, cid, "succeeded", timeout=30)["result"]["pong"] is True
    eventually(lambda: core.sent >= 1, what="a reading sent")
    assert runs == {cid: 1}


def test_tls_to_a_server_the_ca_does_not_vouch_for_fails(settings, tmp_path) -> None:
    other = tmp_path / "other.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "k"),
            "-out",
            str(other),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    url = f"https://{settings.host}:{settings.https_port}"
    answer = HttpTransport(url, "dvc_x", other.read_text()).request(
        Request("polls", "GET", "/commands", {"wait": 0})
    )
    assert answer.status == 0 and "SSL" in answer.error


def test_iotctl_device_simulate_runs_devices_that_report_and_obey(
    api, pg: psycopg.Connection, tmp_path
) -> None:
    username, password = f"sim-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    pg.execute(
        "INSERT INTO users (id, username, password_hash) VALUES (%s, %s, %s)",
        (uuid.uuid4(), username, security.hash_password(password)),
    )
    devices_file = tmp_path / "devices.json"
    iotctl = Path(sys.executable).parent / "iotctl"
    args = ["device", "simulate", "--count", "2", "--username", username, "--duration", "12"]
    args += ["--devices-file", str(devices_file), "--interval", "1", "--poll-wait", "2"]
    with subprocess.Popen(
        [str(iotctl), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as sim:
        assert sim.stdin is not None and sim.stdout is not None
        sim.stdin.write(password + "\n")
        sim.stdin.close()
        devices = eventually(
            lambda: devices_file.exists() and json.loads(devices_file.read_text()),
            what="the devices registered",
        )
        token = api.post("/auth/token", json={"username": username, "password": password})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = {"device_id": devices[0]["id"], "name": "set_interval", "args": {"seconds": 2}}
        cid = api.post("/commands", json=body, headers=headers).json()["id"]
        output = sim.stdout.read()
    assert sim.returncode == 0, output
    command = api.get(f"/commands/{cid}", headers=headers).json()
    assert command["status"] == "succeeded" and command["result"] == {"seconds": 2}
    for d in devices:
        row = pg.execute("SELECT count(*) FROM readings WHERE device_id = %s", (d["id"],))
        assert row.fetchone()[0] > 0
    assert "  executed 1  " in output.splitlines()[-1]
