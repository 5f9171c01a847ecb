"""Prepare ``var/``: folders, secrets, TLS certificate, Postgres cluster, rendered configs.

Every step is idempotent: running ``iotctl up`` twice changes nothing the second time.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from iot import backup
from iot.settings import PROJECT_ROOT, STACK_ENV, Settings
from iot.stack import connections, ha, ha_conf, roles
from iot.stack.processes import programs, supervisord_conf

TEMPLATES = Path(__file__).parent / "templates"
PROMETHEUS_TEMPLATE = PROJECT_ROOT / "monitoring" / "prometheus" / "prometheus.yml"
ALERTMANAGER_TEMPLATE = PROJECT_ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class SetupError(RuntimeError):
    """A setup step failed; the message says which and what to do."""


def render(template: str, values: dict[str, object]) -> str:
    """Replace ``{{name}}`` placeholders. Raises SetupError on an unknown name."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise SetupError(f"template placeholder {{{{{name}}}}} has no value")
        return str(values[name])

    return _PLACEHOLDER.sub(sub, template)


# Every secret `iotctl up` generates; one missing from an older var/secrets.env is added.
SECRETS = (
    ("IOT_SECRET_KEY", 48),
    ("IOT_POSTGRES_PASSWORD", 24),
    ("IOT_RABBITMQ_PASSWORD", 24),
    ("IOT_POSTGRES_API_PASSWORD", 24),
    ("IOT_POSTGRES_SENSORS_PASSWORD", 24),
    ("IOT_POSTGRES_COMMANDLOG_PASSWORD", 24),
    ("IOT_REDIS_PASSWORD", 24),
    ("IOT_FLOWER_PASSWORD", 24),
    ("IOT_MONITORING_PASSWORD", 24),
    ("IOT_POSTGRES_SUPERUSER_PASSWORD", 24),
    ("IOT_POSTGRES_REPLICATION_PASSWORD", 24),
)


def ensure_secrets(home: Path) -> bool:
    """Write var/secrets.env with random secrets once, and add any secret it lacks (existing
    ones are kept). Returns True when something was written."""
    path = home / "var" / "secrets.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        header = "# Written by `iotctl up`. Keep private; deleting it needs `iotctl down --purge`."
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(header + "\n")
    have = dict(
        (k.strip(), v.strip())
        for k, _, v in (ln.partition("=") for ln in path.read_text().splitlines() if "=" in ln)
    )
    new = {k: secrets.token_urlsafe(n) for k, n in SECRETS if k not in have}
    if "IOT_MONITORING_PASSWORD_HASH" not in have:  # Prometheus' web config wants bcrypt
        new["IOT_MONITORING_PASSWORD_HASH"] = bcrypt_hash(
            new.get("IOT_MONITORING_PASSWORD") or have["IOT_MONITORING_PASSWORD"]
        )
    lines = [f"{k}={v}" for k, v in new.items()]
    if lines:
        with path.open("a") as f:
            f.write("\n".join(lines) + "\n")
    return bool(lines)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash (``$2b$``), from the C library's crypt(3) (libxcrypt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated in Python 3.11; nothing else here makes bcrypt

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise SetupError("this system's crypt(3) cannot make bcrypt hashes")
    return hashed


def make_dirs(s: Settings) -> None:
    var = s.var
    for sub in (
        "conf",
        "log",
        "run",
        "tls",
        "redis",
        "prometheus",
        "bin",
        "nginx/body",
        "nginx/proxy",
        "nginx/fastcgi",
        "nginx/uwsgi",
        "nginx/scgi",
        "rabbitmq/home",
        "rabbitmq/mnesia",
        "rabbitmq/log",
        *(f"{n.data.name}/{d}" for n in s.rabbitmq_nodes[1:] for d in ("mnesia", "log")),
        "postgres",
        "run/postgres",
    ):
        (var / sub).mkdir(parents=True, exist_ok=True)
    if "postgres" in s.external_services:
        return  # no cluster here: this machine may not even have a postgres user
    pg_user = pwd.getpwnam("postgres")
    for sub in ("postgres", "run/postgres"):
        os.chown(var / sub, pg_user.pw_uid, pg_user.pw_gid)
    # The postgres user must be able to reach var/postgres.
    for parent in [var, *var.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise SetupError(
                f"{parent} is not traversable by the postgres user; run `chmod o+x {parent}`"
            )


def ensure_certificate(s: Settings) -> None:
    crt, key = s.var / "tls" / "server.crt", s.var / "tls" / "server.key"
    if crt.exists() and key.exists():
        return
    _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "825",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        "create the self-signed TLS certificate",
    )
    key.chmod(0o600)


def ensure_postgres_cluster(s: Settings) -> None:
    """The single Postgres's cluster (var/postgres/data), created when missing. With ``--ha``
    too: the first Patroni member takes it over, so that member always holds the product's
    data and ``--no-ha`` finds it there."""
    data = s.var / "postgres" / "data"
    if (data / "PG_VERSION").exists() or "postgres" in s.external_services:
        return
    if s.ha and "data-1" not in s.roles:  # the first member runs on another machine
        return
    _run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(s.postgres_bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        "initialise the Postgres cluster",
    )


# RabbitMQ's syslog library runs during its boot (and again when a plugin starts it) and opens
# a UDP socket for sending even when nothing goes to syslog; by default on every interface
# (`ss -lun` shows it: tests/security/test_exposure.py). Bound to loopback here.
RABBITMQ_ADVANCED = (
    "%% Rendered by `iotctl up`.\n"
    "[{syslog, [{protocol, {rfc3164, udp, [{ip, {127, 0, 0, 1}}]}}]}].\n"
)

# Which program reads which rendered file, and how it picks up a change while running.
RELOADS = {
    "nginx.conf": ("nginx", "signal HUP"),
    "prometheus.yml": ("prometheus", "signal HUP"),
    "alertmanager.yml": ("alertmanager", "signal HUP"),
    "redis.conf": ("redis", "restart"),
    "rabbitmq.conf": ("rabbitmq", "restart"),
    "rabbitmq-advanced.config": ("rabbitmq", "restart"),
    # proxies added or removed through toxiproxy's API (stack/cluster.py), not a restart that
    # would cut every connection
    "toxiproxy.json": ("toxiproxy", "sync proxies"),
    "rabbitmq-2.conf": ("rabbitmq-2", "restart"),
    "rabbitmq-3.conf": ("rabbitmq-3", "restart"),
    # --ha (stack/ha.py): Patroni rereads its file on HUP; haproxy restarts in a moment
    # (clients reconnect as after a failover)
    "haproxy.cfg": ("haproxy", "restart"),
    "patroni-1.yml": ("patroni-1", "signal HUP"),
    "patroni-2.yml": ("patroni-2", "signal HUP"),
}


def save_stack_shape(values: dict[str, int | str]) -> None:
    """Keep ``IOT_API_REPLICAS`` / ``IOT_SENSOR_WORKERS`` / ``IOT_RABBITMQ_CLUSTER`` in
    var/stack.env (other lines stay)."""
    STACK_ENV.parent.mkdir(parents=True, exist_ok=True)
    lines = STACK_ENV.read_text().splitlines() if STACK_ENV.exists() else []
    kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in values]
    STACK_ENV.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n")


def metrics_targets(s: Settings) -> tuple[list[str], list[str], list[str]]:
    """host:port of every API replica, sensors worker and command-log worker of the
    deployment: this machine's (by its roles) and those of other machines named in
    IOT_API_SERVERS, IOT_SENSORS_WORKER_METRICS and IOT_COMMANDLOG_WORKER_METRICS."""
    here = set(s.roles)
    api = [f"{s.host}:{p}" for p in s.api_ports] if "api" in here else []
    sensors = [f"{s.host}:{p}" for _, p in s.sensors_workers] if "sensors" in here else []
    commandlog = [f"{s.host}:{s.worker_commandlog_metrics_port}"] if "commandlog" in here else []
    return (
        api + s.api_servers,
        sensors + s.sensors_worker_metrics,
        commandlog + s.commandlog_worker_metrics,
    )


def render_configs(s: Settings) -> list[str]:
    """Write every config under var/conf; returns the names of the files that changed."""
    conf = s.var / "conf"
    values: dict[str, object] = {
        k: v for k, v in s.model_dump().items() if isinstance(v, str | int | float)
    }
    values["var"] = s.var
    values["monitoring"] = PROJECT_ROOT / "monitoring"
    values["webui"] = PROJECT_ROOT / "webui"
    api, sensors, commandlog = metrics_targets(s)
    if "edge" in s.roles and not api:
        raise SetupError(
            "nginx (role edge) has no API replica to send requests to: run replicas here "
            "(IOT_ROLES with api) or name those of other machines in IOT_API_SERVERS "
            "(host:port, comma-separated)"
        )
    values["upstream_servers"] = "\n".join(
        f"        server {a} max_fails=1 fail_timeout=3s;" for a in api
    )
    values["api_targets"] = ", ".join(f'"{a}"' for a in api)
    values["worker_sensors_targets"] = ", ".join(f'"{a}"' for a in sensors)
    values["worker_commandlog_targets"] = ", ".join(f'"{a}"' for a in commandlog)
    values.update(ha.scrape_targets(s))
    nodes = s.rabbitmq_nodes
    values["rabbitmq_targets"] = ", ".join(
        f'"{s.rabbitmq_host}:{n.prometheus_port}"' for n in nodes
    )
    values["rabbitmq_cluster_proxies"] = "".join(
        f'\n  {{"name": "{n.program}", "listen": "{s.host}:{n.proxy_port}", '
        f'"upstream": "{s.host}:{n.port}", "enabled": true}},'
        for n in nodes[1:]
    )
    values["rabbitmq_cluster_formation"] = ""
    limits = connections.for_settings(s)
    values["nginx_worker_processes"] = limits.nginx_workers
    values["nginx_worker_connections"] = limits.nginx_worker_connections
    values["nginx_worker_rlimit_nofile"] = limits.nginx_rlimit_nofile
    values["nginx_keepalive"] = limits.nginx_keepalive
    values["nginx_backlog"] = limits.nginx_backlog
    values["nginx_limits_metrics"] = connections.nginx_limits_metrics(limits)
    outputs = {
        "nginx.conf": render((TEMPLATES / "nginx.conf").read_text(), values),
        "redis.conf": render((TEMPLATES / "redis.conf").read_text(), values),
        "rabbitmq.conf": render((TEMPLATES / "rabbitmq.conf").read_text(), values),
        "toxiproxy.json": render((TEMPLATES / "toxiproxy.json").read_text(), values),
        "prometheus.yml": render(PROMETHEUS_TEMPLATE.read_text(), values),
        "alertmanager.yml": render(ALERTMANAGER_TEMPLATE.read_text(), values),
        "rabbitmq-plugins": "[rabbitmq_management,rabbitmq_prometheus].\n",
        # Prometheus' and Alertmanager's basic auth (read on every request: no reload needed)
        "web.yml": f"basic_auth_users:\n  {s.monitoring_user}: '{s.monitoring_password_hash}'\n",
        # for people's curl (runbooks): `curl -K var/conf/monitoring.curl URL`, no password in ps
        "monitoring.curl": f'user = "{s.monitoring_user}:{s.monitoring_password}"\n',
        "rabbitmq-env.conf": "# our node is configured by environment variables\n",
        "rabbitmq-advanced.config": RABBITMQ_ADVANCED,
        "supervisord.conf": supervisord_conf(s, programs(s)),
    }
    if s.external_services:
        outputs["toxiproxy.json"] = _external_upstreams(s, outputs["toxiproxy.json"])
    for node in nodes[1:]:  # the cluster's nodes 2 and 3: own ports, joining node 1
        outputs[f"{node.program}.conf"] = render(
            (TEMPLATES / "rabbitmq.conf").read_text(),
            {
                **values,
                "rabbitmq_port": node.port,
                "rabbitmq_management_port": node.management_port,
                "rabbitmq_prometheus_port": node.prometheus_port,
                "rabbitmq_cluster_formation": (
                    "cluster_formation.peer_discovery_backend = classic_config\n"
                    f"cluster_formation.classic_config.nodes.1 = {nodes[0].nodename}\n"
                ),
            },
        )
    changed = []
    for name, text in outputs.items():
        path = conf / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
        path.chmod(0o600)
    if s.ha and "postgres" not in s.external_services:
        changed += ha_conf.render(s, backup.archive_parameters(s))
    return changed


def _external_upstreams(s: Settings, text: str) -> str:
    """toxiproxy.json with the proxies of external services pointing at their own machines
    (``IOT_EXTERNAL_SERVICES``); the listeners stay on this machine."""
    proxies = json.loads(text)
    for proxy in proxies:
        name = proxy["name"]
        if name in s.external_services:
            proxy["upstream"] = f"{getattr(s, f'{name}_host')}:{getattr(s, f'{name}_port')}"
    return "[\n" + ",\n".join(f"  {json.dumps(p)}" for p in proxies) + "\n]\n"


def superuser_connection(
    s: Settings, dbname: str = "postgres", autocommit: bool = True
) -> psycopg.Connection[Any]:
    """The cluster's superuser (creates roles and databases): over the stack's socket (with
    ``--ha``, the primary's, or over TCP when its member runs on another machine), or
    ``IOT_POSTGRES_SUPERUSER_URL`` when Postgres is external."""
    if "postgres" in s.external_services:
        if not s.postgres_superuser_url:
            raise SetupError(
                "Postgres is external: set IOT_POSTGRES_SUPERUSER_URL to a role that may create "
                "roles and databases, e.g. postgresql://postgres:PASSWORD@"
                f"{s.postgres_host}:{s.postgres_port}/postgres (`iotctl up` creates the owner "
                f"{s.postgres_user}, the database {s.postgres_db} and the processes' roles with it)"
            )
        return psycopg.connect(
            s.postgres_superuser_url,
            dbname=dbname,
            autocommit=autocommit,
            connect_timeout=10,
        )
    return psycopg.connect(
        **ha.superuser_address(s), user="postgres", dbname=dbname, autocommit=autocommit
    )


def bootstrap_database(s: Settings) -> None:
    """Create the application role and database (as the cluster's superuser, over the socket).

    Both sessions keep their failed statements out of Postgres's log: a statement that sets a
    password and fails (a read-only or restarting server) would be logged with the password
    (``log_min_error_statement``)."""
    with superuser_connection(s) as conn:
        conn.execute("SET log_min_error_statement = panic")
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (s.postgres_user,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(s.postgres_user), sql.Literal(s.postgres_password)
            )
        )
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (s.postgres_db,)
        ).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(s.postgres_db), sql.Identifier(s.postgres_user)
                )
            )
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(s.postgres_user)))
        if s.ha:
            ha_roles(conn, s)
    # The processes' roles, with their grants in the same transaction: a process never logs in
    # as a role that lacks them (migrate() applies them again after new migrations).
    with superuser_connection(s, s.postgres_db, autocommit=False) as conn:
        conn.execute("SET log_min_error_statement = panic")
        roles.create(conn, dict(s.postgres_role(r) for r in roles.ROLES))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(s.postgres_user)))
        roles.apply(conn)


def ha_roles(conn: psycopg.Connection[Any], s: Settings) -> None:
    """The roles Patroni's members log in with over TCP: its superuser (pg_rewind) and the
    standby's replication role. Patroni creates them when it bootstraps a new cluster, not
    when it takes over the single Postgres's; set either way (idempotent)."""
    conn.execute(
        sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
            sql.Literal(s.postgres_superuser_password)
        )
    )
    verb = (
        "ALTER"
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'replicator'").fetchone()
        else "CREATE"
    )
    conn.execute(
        sql.SQL(verb + " ROLE replicator REPLICATION LOGIN PASSWORD {}").format(
            sql.Literal(s.postgres_replication_password)
        )
    )


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations (yoyo), then the least-privilege roles' grants (as the owner,
    every time: stack/roles.py); returns the ids applied."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrations = read_migrations(str(MIGRATIONS))
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()  # yoyo leaves it open
    with psycopg.connect(database_url, autocommit=True) as conn:
        roles.apply(conn)
    return [m.id for m in pending]


def _run(cmd: list[str], what: str) -> None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise SetupError(f"cannot {what}: {cmd[0]} is not installed (run `make up`)")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"cannot {what}: {result.stderr.strip() or result.stdout.strip()}")


def remove_stale_broker_policy(s: Settings) -> None:
    """Remove the ``commands`` policy that the per-device command queues of earlier versions
    needed (commands are rows now; see docs/decisions.md). A missing policy is fine.

    Raises:
        SetupError: the management API refused.
    """
    import httpx

    from iot.stack.control import rabbitmq_api

    try:
        r = rabbitmq_api(s, "DELETE", "policies/%2F/commands")
    except httpx.HTTPError as exc:
        raise SetupError(f"cannot reach RabbitMQ's management API: {exc}") from exc
    if r.status_code not in (204, 404):
        raise SetupError(f"cannot remove the RabbitMQ policy: HTTP {r.status_code} {r.text}")
