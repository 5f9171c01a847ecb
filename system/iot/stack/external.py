"""Backing services that run elsewhere: Postgres, RabbitMQ and/or Redis named in
``IOT_EXTERNAL_SERVICES``, each at ``IOT_<SERVICE>_HOST`` and its port setting.

``iotctl up`` neither initialises nor supervises them (``processes.programs`` leaves them out,
``iotctl down`` leaves them alone); before anything of ours starts, :func:`prepare` checks that
each answers and prepares it as the native stack prepares its own: in Postgres the owner, the
database and each process's role (through ``IOT_POSTGRES_SUPERUSER_URL``); in RabbitMQ our user
and its permissions on the vhost ``/`` (through ``IOT_RABBITMQ_ADMIN_USER``); in Redis our
password (``requirepass``). The migrations and the roles' grants follow as on the native stack.
Every function here raises :class:`~iot.stack.setup.SetupError` with what to check.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import psycopg
import redis

from iot.settings import Settings
from iot.stack import setup
from iot.stack.setup import SetupError

NAMES = {"postgres": "Postgres", "rabbitmq": "RabbitMQ", "redis": "Redis"}
# What to check when an external service does not answer.
HINTS = {
    "postgres": "that Postgres runs there, listens on an address this machine reaches "
    "(listen_addresses), that a firewall lets this machine reach the port, and that "
    "pg_hba.conf admits this machine with a password (scram-sha-256)",
    "rabbitmq": "that RabbitMQ runs there with its AMQP listener on that port and its "
    "management plugin on IOT_RABBITMQ_MANAGEMENT_PORT, and that a firewall lets this machine "
    "reach both",
    "redis": "that Redis runs there, binds an address this machine reaches (bind, "
    "protected-mode) and that a firewall lets this machine reach the port",
}


def address(s: Settings, service: str) -> tuple[str, int]:
    """Where a backing service is reached (its own machine when external, else IOT_HOST)."""
    host = getattr(s, f"{service}_host")
    return host, int(getattr(s, f"{service}_port"))


def _settings_of(service: str) -> str:
    return f"IOT_{service.upper()}_HOST, IOT_{service.upper()}_PORT"


def wait_answers(s: Settings, timeout: float = 10) -> None:
    """Wait until every external service accepts TCP connections at its address (RabbitMQ:
    its AMQP and management ports).

    Raises:
        SetupError: naming the service, its address, the settings and what to check.
    """
    targets = [(service, *address(s, service)) for service in s.external_services]
    if "rabbitmq" in s.external_services:
        targets.append(("rabbitmq", s.rabbitmq_host, s.rabbitmq_management_port))
    deadline = time.monotonic() + timeout
    for service, host, port in targets:
        while True:
            try:
                with socket.create_connection((host, port), timeout=3):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise SetupError(
                        f"the external {NAMES[service]} does not answer at {host}:{port} "
                        f"({exc.__class__.__name__}: {exc}; settings {_settings_of(service)}, "
                        f"IOT_EXTERNAL_SERVICES). Check {HINTS[service]}."
                    ) from exc
                time.sleep(0.5)


def prepare_postgres(s: Settings) -> None:
    """The owner, the database and each process's role, with the passwords of
    var/secrets.env, as the superuser of ``IOT_POSTGRES_SUPERUSER_URL``."""
    host, port = address(s, "postgres")
    if not s.postgres_superuser_url and _roles_log_in(s):
        return  # prepared by the deployment's first machine (the same var/secrets.env)
    try:
        setup.bootstrap_database(s)
    except psycopg.Error as exc:
        raise SetupError(
            f"cannot prepare the external Postgres at {host}:{port} with "
            f"IOT_POSTGRES_SUPERUSER_URL: {str(exc).strip()}. It needs a role that may create "
            f"roles and databases; check {HINTS['postgres']}."
        ) from exc


def _roles_log_in(s: Settings) -> bool:
    """Whether the owner and each process's role log in with the passwords of
    var/secrets.env: then the database was prepared already and needs no superuser."""
    for role in ("owner", "api", "sensors", "commandlog"):
        try:
            with psycopg.connect(s.database_url_as(role), connect_timeout=10):
                pass
        except psycopg.Error:
            return False
    return True


def prepare_rabbitmq(s: Settings) -> None:
    """Create (or update) our user with its permissions on the vhost ``/`` as the
    administrator of ``IOT_RABBITMQ_ADMIN_USER``, if given; then check that our user may use
    the management API (Flower, `iotctl queues` and `iotctl up` itself use it)."""
    host, port = s.rabbitmq_host, s.rabbitmq_management_port
    base = f"http://{host}:{port}/api"
    user = s.rabbitmq_user
    try:
        if s.rabbitmq_admin_user:
            admin = (s.rabbitmq_admin_user, s.rabbitmq_admin_password)
            with httpx.Client(base_url=base, auth=admin, timeout=10) as http:
                # monitoring: queue depths (Flower, `iotctl queues`); policymaker: the
                # policies `iotctl up` manages. No administrator: it is not our broker alone.
                calls = [
                    (
                        f"users/{user}",
                        {"password": s.rabbitmq_password, "tags": "monitoring,policymaker"},
                    ),
                    ("vhosts/%2F", {}),
                    (f"permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"}),
                ]
                for path, body in calls:
                    r = http.put(path, json=body)
                    if r.status_code not in (201, 204):
                        raise SetupError(
                            f"the external RabbitMQ at {host}:{port} refused PUT /api/{path} "
                            f"as IOT_RABBITMQ_ADMIN_USER {admin[0]}: HTTP {r.status_code} "
                            f"{r.text[:200]} (it needs the administrator tag)"
                        )
        r = httpx.get(f"{base}/whoami", auth=(user, s.rabbitmq_password), timeout=10)
    except httpx.HTTPError as exc:
        raise SetupError(
            f"the external RabbitMQ's management API does not answer at {host}:{port} "
            f"({exc}; IOT_RABBITMQ_HOST, IOT_RABBITMQ_MANAGEMENT_PORT). Check {HINTS['rabbitmq']}."
        ) from exc
    if r.status_code != 200:
        raise SetupError(
            f"the external RabbitMQ at {host}:{port} refuses our user {user} (HTTP "
            f"{r.status_code}): create it with IOT_RABBITMQ_PASSWORD from var/secrets.env, tags "
            "monitoring,policymaker and all permissions on the vhost /, or set "
            "IOT_RABBITMQ_ADMIN_USER and IOT_RABBITMQ_ADMIN_PASSWORD so that `iotctl up` does"
        )


def prepare_redis(s: Settings) -> str:
    """Make IOT_REDIS_PASSWORD the password of Redis' default user (``requirepass``) unless it
    already is, using ``IOT_REDIS_ADMIN_PASSWORD`` (empty: Redis has none). Returns what was
    done, for the operator."""
    host, port = address(s, "redis")

    def client(password: str) -> redis.Redis:
        return redis.Redis(
            host=host,
            port=port,
            password=password or None,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    try:
        try:
            client("").ping()
            admin = client("")  # it answers anyone: no password yet
        except redis.AuthenticationError:
            try:
                client(s.redis_password).ping()
                return "has our password already"
            except redis.AuthenticationError:
                pass
            if not s.redis_admin_password:
                raise SetupError(
                    f"the external Redis at {host}:{port} wants a password that is not "
                    "IOT_REDIS_PASSWORD: set IOT_REDIS_ADMIN_PASSWORD to its password (`iotctl "
                    "up` then sets IOT_REDIS_PASSWORD from var/secrets.env), or set requirepass "
                    "to IOT_REDIS_PASSWORD yourself"
                ) from None
            admin = client(s.redis_admin_password)
            admin.ping()
        try:
            admin.config_set("requirepass", s.redis_password)
            try:
                admin.config_rewrite()
                return "password set (and written to its configuration file)"
            except redis.ResponseError:  # started without one: kept until its restart
                return "password set (until its restart: it has no configuration file)"
        finally:
            admin.close()
    except redis.AuthenticationError as exc:
        raise SetupError(
            f"the external Redis at {host}:{port} refuses IOT_REDIS_ADMIN_PASSWORD: {exc}"
        ) from exc
    except redis.ResponseError as exc:
        raise SetupError(
            f"the external Redis at {host}:{port} refused CONFIG SET requirepass ({exc}): set "
            "its requirepass to IOT_REDIS_PASSWORD from var/secrets.env yourself"
        ) from exc
    except redis.RedisError as exc:
        raise SetupError(
            f"the external Redis does not answer at {host}:{port} ({exc}; "
            f"{_settings_of('redis')}). Check {HINTS['redis']}."
        ) from exc


def prepare(s: Settings, say: Callable[[str], object] = print) -> None:
    """Check and prepare every external service, before any process of ours starts."""
    if not s.external_services:
        return
    wait_answers(s)
    for service in s.external_services:
        host, port = address(s, service)
        if service == "postgres":
            prepare_postgres(s)
            done = "owner, database and roles ready"
            if not s.postgres_superuser_url:
                done += " (prepared before: they log in with var/secrets.env)"
        elif service == "rabbitmq":
            prepare_rabbitmq(s)
            done = f"user {s.rabbitmq_user} ready"
        else:
            done = prepare_redis(s)
        say(f"external {NAMES[service]} at {host}:{port}: {done}")
