"""The integration tests' backing services in containers (``IOT_TEST_BACKEND=containers``).

Postgres, RabbitMQ and Redis run in containers (testcontainers) from the images the Compose
bundle builds (``scripts/compose.sh build-services`` makes them when missing: no registry is
needed), each published on 127.0.0.1 on a port Docker picks. The rest of the stack is the
native one, started by ``iotctl up`` with those three as external services
(``IOT_EXTERNAL_SERVICES``) under its own home (``var/containers-test``, git-ignored) and on
every port of the development stack plus :data:`PORT_OFFSET`, so a development stack on this
machine is left alone. ``iotctl up`` prepares the containers as it would any external service:
the database, its owner and roles through a superuser URL, our RabbitMQ user through an
administrator, our Redis password.

``IOT_TEST_BACKEND``: ``native`` (default) uses the stack ``iotctl up`` started; ``containers``
fails at once, saying why, when no Docker engine answers; ``auto`` uses containers when an
engine answers and the native stack otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psycopg

from iot.settings import PROJECT_ROOT, Settings
from iot.stack import setup

BACKEND = os.environ.get("IOT_TEST_BACKEND", "native").strip().lower() or "native"
BACKENDS = ("native", "containers", "auto")
# The Compose bundle's images of the three services (compose/docker-compose.yml).
IMAGES = {"postgres": "iot-postgres:15", "rabbitmq": "iot-rabbitmq:3.10", "redis": "iot-redis:7"}
HOME = PROJECT_ROOT / "var" / "containers-test"
PORT_OFFSET = int(os.environ.get("IOT_TEST_PORT_OFFSET", "20000"))
# The services' own ports: Docker publishes the containers' ports on ports it picks.
SERVICE_PORTS = {
    "postgres_port",
    "rabbitmq_port",
    "rabbitmq_dist_port",
    "rabbitmq_management_port",
    "rabbitmq_prometheus_port",
    "redis_port",
}
CHAOS_SKIP = (
    "chaos experiments stop and kill the stack's processes by pid under its supervisor; with "
    "IOT_TEST_BACKEND=containers, Postgres, RabbitMQ and Redis run in containers outside it"
)

Say = Callable[[str], None]


class NoEngine(RuntimeError):
    """No Docker engine answers."""


def docker_client() -> Any:
    """A client of the Docker engine (DOCKER_HOST or the default socket) that answered a ping.

    Raises:
        NoEngine: saying where it looked.
    """
    import docker

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if where.startswith("unix://"):  # docker-py leaks its socket when nothing listens there
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(where.removeprefix("unix://"))
            except OSError as exc:
                raise NoEngine(f"no Docker engine answers at {where} ({exc})") from None
    client = None
    try:
        client = docker.DockerClient(base_url=where, timeout=10)  # asks the engine's version
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        if client is not None:
            client.close()
        raise NoEngine(f"no Docker engine answers at {where} ({exc})") from None
    return client


@cache
def wanted() -> bool:
    """Whether this test run uses containers (decided once: ``auto`` pings the engine)."""
    if BACKEND not in BACKENDS:
        raise RuntimeError(f"IOT_TEST_BACKEND={BACKEND!r}: one of {', '.join(BACKENDS)}")
    if BACKEND == "auto":
        try:
            docker_client().close()
        except NoEngine:
            return False
    return BACKEND != "native"


def stack_ports(offset: int = PORT_OFFSET) -> dict[str, str]:
    """Every port setting of our own processes, moved by ``offset``."""
    fields = Settings.model_fields
    moved = {
        f"IOT_{name.upper()}": str(int(field.default) + offset)
        for name, field in fields.items()
        if name.endswith("_port") and name not in SERVICE_PORTS
    }
    base = int(fields["api_replicas"].default)
    moved["IOT_API_PORTS"] = ",".join(str(8101 + offset + i) for i in range(base))
    return moved


def ensure_images(say: Say) -> None:
    """Build the three images with the Compose bundle's script when one is missing (no engine:
    nothing to do; :func:`running_stack` says so)."""
    try:
        client = docker_client()
    except NoEngine:
        return
    try:
        missing = [image for image in IMAGES.values() if not client.images.list(name=image)]
    finally:
        client.close()
    if not missing:
        return
    say(
        f"building {', '.join(missing)} (scripts/compose.sh build-services; minutes the first time)"
    )
    subprocess.run(["bash", "scripts/compose.sh", "build-services"], cwd=PROJECT_ROOT, check=True)


def _publish(container: Any, *ports: int) -> Any:
    # On 127.0.0.1 only, on a port Docker picks.
    for port in ports:
        container.ports[f"{port}/tcp"] = ("127.0.0.1",)
    return container


def _address(container: Any, port: int) -> tuple[str, int]:
    host = container.get_container_host_ip()
    return ("127.0.0.1" if host == "localhost" else host), int(container.get_exposed_port(port))


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - starting up: any failure means "not yet"
            last = exc
        time.sleep(1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s (last: {last!r})")


def start_services(stack: ExitStack, workdir: Path, say: Say) -> dict[str, str]:
    """Start the three containers (removed when ``stack`` closes); returns the settings that
    make them the stack's external services."""
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as tc
    from testcontainers.core.container import DockerContainer

    tc.ryuk_disabled = True  # its image comes from a registry; we remove our containers
    tc.connection_mode_override = (
        ConnectionMode.docker_host
    )  # published ports, even from a container
    superuser_password = secrets.token_urlsafe(18)
    admin_password = secrets.token_urlsafe(18)

    postgres = _publish(DockerContainer(IMAGES["postgres"]).with_kwargs(shm_size="256m"), 5442)
    # A RabbitMQ of its own configuration: an administrator only, whom `iotctl up` asks to
    # create our user (as an operator's broker would have).
    conf = workdir / "rabbitmq"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "rabbitmq.conf").write_text(
        "listeners.tcp.default = 5672\nmanagement.tcp.port = 15672\n"
        "prometheus.tcp.port = 15692\nloopback_users = none\ndefault_user = admin\n"
        f"default_pass = {admin_password}\ndefault_user_tags.administrator = true\n"
        "log.console = true\nlog.file = false\n"
    )
    (conf / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
    rabbitmq = _publish(
        DockerContainer(IMAGES["rabbitmq"])
        .with_volume_mapping(str(conf), "/etc/iot-test-rabbitmq", "ro")
        .with_envs(
            HOME="/var/lib/rabbitmq",
            RABBITMQ_NODENAME="iot@localhost",
            RABBITMQ_CONFIG_FILE="/etc/iot-test-rabbitmq/rabbitmq.conf",
            RABBITMQ_ENABLED_PLUGINS_FILE="/etc/iot-test-rabbitmq/enabled_plugins",
        ),
        5672,
        15672,
        15692,
    )
    # Redis with no password yet: `iotctl up` sets ours.
    redis = _publish(
        DockerContainer(IMAGES["redis"]).with_command(
            [
                "redis-server",
                "--bind",
                "0.0.0.0",
                "--port",
                "6379",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
        ),
        6379,
    )
    for name, container in (("postgres", postgres), ("rabbitmq", rabbitmq), ("redis", redis)):
        stack.enter_context(container)
        say(f"{name}: container {container.get_wrapped_container().short_id} ({IMAGES[name]})")

    # The image's Postgres trusts its local socket only: give its superuser a password.
    def pg_ready() -> bool:
        result = postgres.exec(
            [
                "psql",
                "-h",
                "/srv/iot/var/run/postgres",
                "-p",
                "5442",
                "-U",
                "postgres",
                "-qAt",
                "-c",
                f"ALTER ROLE postgres PASSWORD '{superuser_password}'",
            ]
        )
        return result.exit_code == 0

    _until(pg_ready, "Postgres in its container")
    pg_host, pg_port = _address(postgres, 5442)
    mq_host, mq_port = _address(rabbitmq, 5672)
    _, mq_management = _address(rabbitmq, 15672)
    _, mq_prometheus = _address(rabbitmq, 15692)
    redis_host, redis_port = _address(redis, 6379)

    def broker_ready() -> bool:
        url = f"http://{mq_host}:{mq_management}/api/overview"
        return httpx.get(url, auth=("admin", admin_password), timeout=5).status_code == 200

    _until(broker_ready, "RabbitMQ in its container (management API)")
    superuser_url = f"postgresql://postgres:{superuser_password}@{pg_host}:{pg_port}/postgres"
    with psycopg.connect(superuser_url, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    return {
        "IOT_EXTERNAL_SERVICES": "postgres,rabbitmq,redis",
        "IOT_POSTGRES_HOST": pg_host,
        "IOT_POSTGRES_PORT": str(pg_port),
        "IOT_POSTGRES_SUPERUSER_URL": superuser_url,
        "IOT_RABBITMQ_HOST": mq_host,
        "IOT_RABBITMQ_PORT": str(mq_port),
        "IOT_RABBITMQ_MANAGEMENT_PORT": str(mq_management),
        "IOT_RABBITMQ_PROMETHEUS_PORT": str(mq_prometheus),
        "IOT_RABBITMQ_ADMIN_USER": "admin",
        "IOT_RABBITMQ_ADMIN_PASSWORD": admin_password,
        "IOT_REDIS_HOST": redis_host,
        "IOT_REDIS_PORT": str(redis_port),
    }


def _secrets(home: Path) -> dict[str, str]:
    """Fresh secrets of this stack (written once under its home), as environment variables:
    the development stack's var/secrets.env stays its own."""
    setup.ensure_secrets(home)
    lines = (home / "var" / "secrets.env").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))


def _iotctl(env: dict[str, str], *args: str) -> None:
    iotctl = str(Path(sys.executable).parent / "iotctl")
    subprocess.run([iotctl, *args], cwd=PROJECT_ROOT, env=env, check=True)


@contextmanager
def running_stack(say: Say) -> Iterator[dict[str, str]]:
    """Containers for the backing services and the native rest of the stack against them;
    yields the environment that points every client (and get_settings()) at it. Everything
    is stopped and removed when the block ends, also when starting it failed."""
    try:
        docker_client().close()
    except NoEngine as exc:
        raise NoEngine(
            f"IOT_TEST_BACKEND={BACKEND}, but {exc}. Start one (`make test-containers` starts "
            "dockerd itself where Debian's docker.io is installed) or run without "
            "IOT_TEST_BACKEND for the native services"
        ) from None
    ensure_images(say)  # done already when pytest collected the tests
    if HOME.exists():
        shutil.rmtree(HOME)  # what an earlier run left (logs)
    (HOME / "var").mkdir(parents=True)
    started = time.monotonic()
    with ExitStack() as stack:
        services = start_services(stack, HOME / "containers", say)
        say(f"containers ready in {time.monotonic() - started:.0f}s; iotctl up (IOT_HOME={HOME})")
        env = {
            "IOT_HOME": str(HOME),
            # What var/stack.env or .env may say of the development stack does not apply.
            "IOT_RABBITMQ_CLUSTER": "false",
            "IOT_SENSOR_WORKERS": "1",
            "IOT_VIA_TOXIPROXY": "true",
            **stack_ports(),
            **_secrets(HOME),
            **services,
        }
        full = {**os.environ, **env}
        stack.callback(_iotctl, full, "down")
        _iotctl(full, "up", "--timeout", "300")
        say(f"stack up against the containers in {time.monotonic() - started:.0f}s")
        yield env
