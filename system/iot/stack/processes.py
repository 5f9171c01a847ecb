"""Every process of the native stack, as supervisord programs, with a health probe each.

The project runs its own instances (own ports, data under ``var/``), so services already on the
machine never collide with ours and experiments may stop or kill ours freely.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from iot import backup
from iot.settings import RabbitNode, Settings
from iot.stack import connections, ha
from iot.stack.placement import runs_here, service_of


@dataclass
class Program:
    name: str
    command: list[str]
    group: str  # data | proxy | app | edge | monitoring | external (runs elsewhere)
    priority: int
    probe: str  # "tcp:PORT" (on IOT_HOST), "tcp:HOST:PORT", "http:URL" or "sql"
    url: str = ""  # shown to people by `iotctl up` / `status`
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    stopsignal: str = "TERM"
    stopwaitsecs: int = 20
    directory: str | None = None
    auth: tuple[str, str] | None = None  # basic auth the probe sends


def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def programs(s: Settings) -> list[Program]:
    var = s.var
    h = s.host
    pg = s.postgres_bin_dir
    app_env = {
        "IOT_HOME": str(s.home),
        "PYTHONUNBUFFERED": "1",
        "IOT_VIA_TOXIPROXY": "true" if s.via_toxiproxy else "false",
    }
    celery = _venv_bin("celery")
    limits = connections.for_settings(s)
    progs = [
        *(rabbitmq_program(s, node) for node in s.rabbitmq_nodes),
        Program(
            "postgres",
            [
                str(pg / "postgres"),
                "-D",
                str(var / "postgres" / "data"),
                "-p",
                str(s.postgres_port),
                "-k",
                str(var / "run" / "postgres"),
                "-c",
                f"listen_addresses={h}",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "log_min_messages=warning",
                # one Postgres waits for no standby, whatever Patroni left in postgresql.conf
                # (after `--no-ha` it runs on patroni-1's data: a commit waiting for a standby
                # that is gone would hang every write)
                "-c",
                "synchronous_standby_names=",
                # supervisord expands %(...)s in a command: the archive command's %p and %f
                # reach Postgres as written only when doubled
                *(c.replace("%", "%%") for c in backup.archive_settings(s)),
            ],
            "data",
            10,
            "sql",
            f"postgresql://{h}:{s.postgres_port}/{s.postgres_db}",
            user="postgres",
            stopsignal="INT",
            stopwaitsecs=60,
        ),
        Program(
            "redis",
            ["/usr/bin/redis-server", str(var / "conf" / "redis.conf")],
            "data",
            10,
            f"tcp:{s.redis_port}",
            f"redis://{h}:{s.redis_port}",
        ),
        Program(
            "toxiproxy",
            [
                str(s.toxiproxy_bin),
                "-host",
                h,
                "-port",
                str(s.toxiproxy_port),
                "-config",
                str(var / "conf" / "toxiproxy.json"),
                "-proxy-metrics",
                "-runtime-metrics",
            ],
            "proxy",
            15,
            f"http:http://{h}:{s.toxiproxy_port}/version",
            f"http://{h}:{s.toxiproxy_port}/proxies",
        ),
    ]
    for i, port in enumerate(s.api_ports, start=1):
        progs.append(
            Program(
                f"api-{i}",
                [
                    _venv_bin("python"),
                    "-m",
                    "iot.api.serve",
                    "--host",
                    h,
                    "--port",
                    str(port),
                    # within net.core.somaxconn (stack/connections.py)
                    "--backlog",
                    str(limits.api_backlog),
                ],
                "app",
                30,
                f"http:http://{h}:{port}/health",
                f"http://{h}:{port}/docs",
                env={**app_env, "IOT_REPLICA_NAME": f"api-{i}", "IOT_DB_ROLE": "api"},
            )
        )
    # The sensors worker logs at WARNING and sends no task events: at hundreds of tasks a
    # second a log line and three events per task (published, routed by RabbitMQ, read by
    # Flower) cost more CPU than storing the readings. Its tasks are counted and timed in its
    # metrics; Flower still sees it online (heartbeats) and every task of the command worker.
    # Several sensors workers (`iotctl up --sensor-workers N`) share sensors.data.
    sensors = [
        (name, "sensors.data", port, s.sensors_concurrency, "WARNING", False, "sensors")
        for name, port in s.sensors_workers
    ]
    for name, queue, port, threads, level, events, role in (
        *sensors,
        (
            "worker-commandlog",
            "commands.data,commands.log",
            s.worker_commandlog_metrics_port,
            s.worker_concurrency,
            "INFO",
            True,
            "commandlog",
        ),
    ):
        progs.append(
            Program(
                name,
                [
                    celery,
                    "-A",
                    "iot.workers.app",
                    "worker",
                    "-Q",
                    queue,
                    "-n",
                    f"{name}@{s.machine_name or '%%h'}",
                    "--pool",
                    "threads",
                    "-c",
                    str(threads),
                    *(["-E"] if events else []),
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    level,
                ],
                "app",
                30,
                f"http:http://{h}:{port}/metrics",
                f"http://{h}:{port}/metrics",
                env={
                    **app_env,
                    "IOT_WORKER_METRICS_PORT": str(port),
                    "IOT_WORKER_TASK_EVENTS": "true" if events else "false",
                    "IOT_DB_ROLE": role,
                },
                stopwaitsecs=30,
            )
        )
    progs += [
        Program(
            "flower",
            [
                celery,
                "-A",
                "iot.workers.app",
                "flower",
                f"--address={h}",
                f"--port={s.flower_port}",
                "--purge_offline_workers=60",
                # Flower would otherwise switch task events on in every worker every few
                # seconds (remote control), undoing the sensors worker's choice to send none.
                "--enable_events=False",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.flower_port}/healthcheck",
            f"http://{h}:{s.flower_port}/",
            # From the environment, not the command line: `ps` shows arguments to everyone.
            env={
                **app_env,
                "FLOWER_BROKER_API": f"http://{s.rabbitmq_user}:{s.rabbitmq_password}@"
                f"{s.rabbitmq_host}:{s.rabbitmq_management_port}/api/",
                # Basic auth on the UI and API (/metrics and /healthcheck stay open).
                "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password}",
            },
        ),
        Program(
            "nginx",
            [
                "/usr/sbin/nginx",
                "-c",
                str(var / "conf" / "nginx.conf"),
                "-e",
                str(var / "log" / "nginx-error.log"),
                "-g",
                "daemon off;",
            ],
            "edge",
            50,
            f"http:http://{h}:{s.http_port}/nginx/health",
            f"http://{h}:{s.http_port}/docs",
            stopsignal="QUIT",
        ),
        Program(
            "prometheus",
            [
                "/usr/bin/prometheus",
                f"--config.file={var / 'conf' / 'prometheus.yml'}",
                f"--storage.tsdb.path={var / 'prometheus'}",
                f"--web.listen-address={h}:{s.prometheus_port}",
                "--storage.tsdb.retention.time=7d",
                "--web.enable-lifecycle",
                f"--web.config.file={var / 'conf' / 'web.yml'}",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.prometheus_port}/-/ready",
            f"http://{h}:{s.prometheus_port}/",
            auth=s.monitoring_auth,
        ),
        Program(
            "alertmanager",
            [
                "/usr/bin/prometheus-alertmanager",
                f"--config.file={var / 'conf' / 'alertmanager.yml'}",
                f"--storage.path={var / 'alertmanager'}",
                f"--web.listen-address={h}:{s.alertmanager_port}",
                "--cluster.listen-address=",
                f"--web.config.file={var / 'conf' / 'web.yml'}",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.alertmanager_port}/-/ready",
            f"http://{h}:{s.alertmanager_port}/",
            auth=s.monitoring_auth,
        ),
        Program(
            "postgres-exporter",
            [
                "/usr/bin/prometheus-postgres-exporter",
                f"--web.listen-address={h}:{s.postgres_exporter_port}",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.postgres_exporter_port}/metrics",
            env={"DATA_SOURCE_NAME": s.database_direct_url + "?sslmode=disable"},
        ),
        Program(
            "redis-exporter",
            [
                "/usr/bin/prometheus-redis-exporter",
                "-redis.addr",
                f"redis://{s.redis_host}:{s.redis_port}",
                "-web.listen-address",
                f"{h}:{s.redis_exporter_port}",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.redis_exporter_port}/metrics",
            env={"REDIS_PASSWORD": s.redis_password},
        ),
        Program(
            "nginx-exporter",
            [
                "/usr/bin/prometheus-nginx-exporter",
                f"-nginx.scrape-uri=http://{h}:{s.nginx_status_port}/stub_status",
                f"-web.listen-address={h}:{s.nginx_exporter_port}",
            ],
            "monitoring",
            40,
            f"http:http://{h}:{s.nginx_exporter_port}/metrics",
        ),
    ]
    if s.ha:  # Postgres and Redis highly available (stack/ha.py), on the same addresses
        progs = [p for p in progs if p.name not in ("postgres", "redis")]
        progs += [Program(**spec) for spec in ha.program_specs(s)]
    # Backing services that run elsewhere are neither started nor stopped here, nor are the
    # processes of roles other machines run (IOT_ROLES).
    return [
        p for p in progs if service_of(p.name) not in s.external_services and runs_here(s, p.name)
    ]


def external_programs(s: Settings) -> list[Program]:
    """The backing services that run elsewhere (``IOT_EXTERNAL_SERVICES``), as entries that
    `iotctl status` and the health checks probe at their own host; nothing runs them here."""
    entries = {
        "postgres": Program(
            "postgres",
            [],
            "external",
            10,
            "sql",
            f"postgresql://{s.postgres_host}:{s.postgres_port}/{s.postgres_db}",
        ),
        "rabbitmq": Program(
            "rabbitmq",
            [],
            "external",
            10,
            f"tcp:{s.rabbitmq_host}:{s.rabbitmq_port}",
            f"http://{s.rabbitmq_host}:{s.rabbitmq_management_port}/",
        ),
        "redis": Program(
            "redis",
            [],
            "external",
            10,
            f"tcp:{s.redis_host}:{s.redis_port}",
            f"redis://{s.redis_host}:{s.redis_port}",
        ),
    }
    return [entries[name] for name in s.external_services]


def rabbitmq_env(s: Settings, node: RabbitNode) -> dict[str, str]:
    """The environment of one RabbitMQ node (and of rabbitmqctl for it: same HOME, so the same
    Erlang cookie for every node of the cluster)."""
    var, h = s.var, s.host
    conf = "rabbitmq" if node.index == 1 else f"rabbitmq-{node.index}"
    return {
        "HOME": str(var / "rabbitmq" / "home"),
        "RABBITMQ_NODENAME": node.nodename,
        "RABBITMQ_NODE_IP_ADDRESS": h,
        "RABBITMQ_NODE_PORT": str(node.port),
        "RABBITMQ_DIST_PORT": str(node.dist_port),
        "RABBITMQ_MNESIA_BASE": str(node.data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(node.data / "log"),
        "RABBITMQ_CONFIG_FILE": str(var / "conf" / f"{conf}.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(var / "conf" / "rabbitmq-plugins"),
        "RABBITMQ_PID_FILE": str(var / "run" / f"{conf}.pid"),
        "RABBITMQ_CONF_ENV_FILE": str(var / "conf" / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(var / "conf" / "rabbitmq-advanced.config"),
        # Erlang distribution (epmd and the node's dist port) on loopback only: whoever reaches
        # it and knows the cookie controls the node.
        "ERL_EPMD_ADDRESS": h,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
            "-kernel inet_dist_use_interface {" + h.replace(".", ",") + "}"
        ),
    }


def rabbitmq_program(s: Settings, node: RabbitNode) -> Program:
    """Node 1 is the single node; nodes 2 and 3 join it on their first boot (peer discovery in
    their rabbitmq-N.conf) once it answers (stack/rabbitnode.py waits for it)."""
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    command = [server]
    if node.index > 1:
        first = s.rabbitmq_nodes[0]
        command = [
            _venv_bin("python"),
            "-m",
            "iot.stack.rabbitnode",
            "--data",
            str(node.data / "mnesia" / node.nodename),
            "--wait-port",
            str(first.port),
            "--",
            server,
        ]
    return Program(
        node.program,
        command,
        "data",
        10 if node.index == 1 else 12,
        f"tcp:{node.port}",
        f"http://{s.host}:{node.management_port}/",
        env=rabbitmq_env(s, node),
        stopwaitsecs=60,
    )


def supervisord_conf(s: Settings, progs: list[Program]) -> str:
    var = s.var
    lines = [
        "; Rendered by `iotctl up`: the process supervisor of the whole native stack.",
        "[unix_http_server]",
        f"file={var / 'run' / 'supervisor.sock'}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={var / 'log' / 'supervisord.log'}",
        f"pidfile={var / 'run' / 'supervisord.pid'}",
        f"childlogdir={var / 'log'}",
        "identifier=iot",
        # supervisord raises its open-files limit to this and every program inherits it: the
        # replicas hold one file per waiting poll (stack/connections.py)
        f"minfds={connections.for_settings(s).supervisor_minfds}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{var / 'run' / 'supervisor.sock'}",
    ]
    for p in progs:
        env = ",".join(f'{k}="{v}"' for k, v in p.env.items())
        lines += [
            f"[program:{p.name}]",
            "command=" + " ".join(shlex.quote(c) for c in p.command),
            f"priority={p.priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=1000",
            f"stopsignal={p.stopsignal}",
            f"stopwaitsecs={p.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={var / 'log' / (p.name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
            f"directory={p.directory or s.home}",
        ]
        if p.user:
            lines.append(f"user={p.user}")
        if env:
            lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"
