"""A second machine of the deployment (docs/scaling.md, "A multi-machine deployment"): a home
of its own with IOT_ROLES=api,sensors, every backing service external (the development stack's
Postgres, RabbitMQ and Redis, reached directly), no superuser or administrator credentials
(the first machine prepared them; the second has its var/secrets.env), its own ports. It must
start only its part, and its replica and sensors worker must do real work for the deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from iot.settings import PROJECT_ROOT, Settings
from iot.stack.placement import service_of
from tests.integration.conftest import Person, eventually, reading, rows_for
from tests.integration.containers import stack_ports

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).parent / "iotctl")
OFFSET = 22000  # clear of the development stack's ports and of the containers backend's


def _run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [IOTCTL, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _machine_env(settings: Settings, name: str, offset: int, **more: str) -> dict[str, str]:
    """The environment of one more machine: a home of its own under var/, the deployment's
    secrets copied into it (what an operator copies), its own ports, the development stack's
    Postgres, RabbitMQ and Redis as external services, reached directly."""
    home = settings.var / name
    (home / "var").mkdir(parents=True, exist_ok=True)
    secrets = (settings.var / "secrets.env").read_text()
    (home / "var" / "secrets.env").write_text(secrets)
    env = {
        **os.environ,
        **dict(ln.split("=", 1) for ln in secrets.splitlines() if "=" in ln and ln[0] != "#"),
        **stack_ports(offset),
        "IOT_HOME": str(home),
        "IOT_MACHINE_NAME": name,  # one host name for every "machine" here
        "IOT_API_PORTS": str(8101 + offset),
        "IOT_SENSOR_WORKERS": "1",
        "IOT_RABBITMQ_CLUSTER": "false",
        "IOT_VIA_TOXIPROXY": "false",
        "IOT_EXTERNAL_SERVICES": "postgres,rabbitmq,redis",
        "IOT_POSTGRES_HOST": settings.postgres_host,
        "IOT_POSTGRES_PORT": str(settings.postgres_port),
        "IOT_RABBITMQ_HOST": settings.rabbitmq_host,
        "IOT_RABBITMQ_PORT": str(settings.rabbitmq_port),
        "IOT_RABBITMQ_MANAGEMENT_PORT": str(settings.rabbitmq_management_port),
        "IOT_RABBITMQ_PROMETHEUS_PORT": str(settings.rabbitmq_prometheus_port),
        "IOT_REDIS_HOST": settings.redis_host,
        "IOT_REDIS_PORT": str(settings.redis_port),
        "IOT_POSTGRES_SUPERUSER_URL": "",
        "IOT_RABBITMQ_ADMIN_USER": "",
        "IOT_REDIS_ADMIN_PASSWORD": "",
        **more,
    }
    env.pop("IOT_API_REPLICAS", None)
    return env


@contextmanager
def _running(env: dict[str, str]) -> Iterator[dict[str, str]]:
    try:
        up = _run(env, "up", "--timeout", "120")
        assert f"This machine's part is up (IOT_ROLES={env['IOT_ROLES']})" in up.stdout, up.stdout
        yield env
    finally:
        _run(env, "down", check=False)


@pytest.fixture(scope="module")
def second_machine(stack, settings: Settings) -> Iterator[dict[str, str]]:
    """An API and sensors-worker machine."""
    env = _machine_env(settings, "machine-test", OFFSET, IOT_ROLES="api,sensors")
    with _running(env):
        yield env


@pytest.fixture(scope="module")
def edge_machine(second_machine: dict[str, str], settings: Settings) -> Iterator[str]:
    """An edge machine (nginx only) whose upstream is the second machine's replica; yields
    its base URL."""
    replica = f"{settings.host}:{second_machine['IOT_API_PORTS']}"
    env = _machine_env(
        settings, "machine-test-edge", OFFSET + 1000, IOT_ROLES="edge", IOT_API_SERVERS=replica
    )
    with _running(env):
        yield f"http://{settings.host}:{env['IOT_HTTP_PORT']}"


def test_a_second_machine_supervises_only_its_roles_and_the_services_stay_external(
    second_machine: dict[str, str],
) -> None:
    env = second_machine
    status = _run(env, "status").stdout
    rows = {line.split()[0]: line.split()[1] for line in status.splitlines()[1:] if line.strip()}
    ours = {name for name, state in rows.items() if state != "EXTERNAL"}
    assert ours == {"api-1", "worker-sensors"}, status
    assert {service_of(n) for n, state in rows.items() if state == "EXTERNAL"} == {
        "postgres",
        "rabbitmq",
        "redis",
    }, status
    assert all(state == "RUNNING" for name, state in rows.items() if name in ours), status


def test_its_replica_accepts_a_devices_readings_for_the_whole_deployment(
    second_machine: dict[str, str], settings: Settings, alice: Person, pg: psycopg.Connection
) -> None:
    replica_url = f"http://{settings.host}:{second_machine['IOT_API_PORTS']}"
    device = alice.new_device("on-the-second-machine")
    with httpx.Client(base_url=replica_url) as replica:
        r = replica.post(
            "/sensors", json={"readings": [reading(value=7.5)]}, headers=device.headers
        )
    assert r.status_code == 201, r.text
    eventually(lambda: rows_for(pg, device.id) == 1, what="the reading stored")
    latest = alice.api.get("/sensors", params={"device_id": str(device.id)}, headers=alice.headers)
    assert [x["value"] for x in latest.json()["readings"]] == [7.5]


def _tasks_done(settings: Settings, port: str) -> float:
    text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("iot_worker_task_duration_seconds_count")
    )


def test_its_sensors_worker_stores_readings_while_the_first_machines_are_stopped(
    second_machine: dict[str, str],
    settings: Settings,
    alice: Person,
    pg: psycopg.Connection,
    restart_guard,
) -> None:
    for name, _ in settings.sensors_workers:
        restart_guard(name)
    port = second_machine["IOT_WORKER_SENSORS_METRICS_PORT"]
    before = _tasks_done(settings, port)
    device = alice.new_device("stored-by-the-second-machine")
    assert device.post([reading(value=float(i), age_s=i) for i in range(20)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 20, timeout=30, what="20 rows")
    assert _tasks_done(settings, port) > before  # the second machine's worker stored them


def test_an_edge_machine_serves_devices_through_another_machines_replica(
    edge_machine: str, alice: Person, pg: psycopg.Connection
) -> None:
    device = alice.new_device("behind-the-edge-machine")
    with httpx.Client(base_url=edge_machine, headers=device.headers, timeout=20) as edge:
        r = edge.post("/sensors", json={"readings": [reading(value=3.25)]})
        assert r.status_code == 201, r.text
        eventually(lambda: rows_for(pg, device.id) == 1, what="the reading stored")
        # A command sent by a person through the first machine reaches the device's long poll
        # on the second machine's replica (it hears the new row from Postgres).
        poll: dict = {}
        waiter = threading.Thread(
            target=lambda: poll.update(r=edge.get("/commands", params={"wait": 10}))
        )
        waiter.start()
        time.sleep(1)
        cid = alice.send(device, "blink").json()["id"]
        waiter.join(15)
    assert poll["r"].status_code == 200, poll["r"].text
    assert [c["id"] for c in poll["r"].json()["commands"]] == [cid]
