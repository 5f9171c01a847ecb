"""One settings object for every process of the product.

Values come from the environment (prefix ``IOT_``), then ``.env`` in the project root, then
``var/secrets.env`` (written once by ``iotctl up`` with random secrets). Read them through
:func:`get_settings`; tests clear its cache to override.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"", "change-me", "changeme", "secret", "password", "placeholder"}
Role = Literal["edge", "api", "sensors", "commandlog", "monitoring", "data-1", "data-2", "data-3"]
# The product's own processes, by role.
ROLES: tuple[Role, ...] = ("edge", "api", "sensors", "commandlog", "monitoring")
# The HA data tier's hosts (`iotctl up --ha`): data-N runs host N's members.
DATA_ROLES: tuple[Role, ...] = ("data-1", "data-2", "data-3")


STACK_ENV = PROJECT_ROOT / "var" / "stack.env"  # the shape `iotctl up --api-replicas ...` chose


def _env_files() -> tuple[Path, ...]:
    # later files win; the process environment wins over all of them
    return (STACK_ENV, PROJECT_ROOT / ".env", PROJECT_ROOT / "var" / "secrets.env")


HA_NETNS_SUBNET = "10.79.0"  # the stack's HA hosts as network namespaces (ha_netns)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IOT_", env_file=_env_files(), env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = PROJECT_ROOT
    host: str = "127.0.0.1"

    # Public entry points (nginx).
    http_port: int = 8080
    https_port: int = 8443
    nginx_status_port: int = 8089
    max_body_bytes: int = 1024 * 1024
    rate_limit_per_second: int = 200
    rate_limit_burst: int = 400
    # Device connections the edge must hold at once (each device keeps one, a long poll waiting
    # on it most of the time: 2 connections in nginx, 1 in a replica). `iotctl up` derives from
    # it nginx's worker processes, worker_connections, worker_rlimit_nofile, upstream keepalive
    # and listen backlog, the replicas' backlog and supervisord's minfds, and warns when the API
    # replicas are too few (stack/connections.py; docs/decisions.md, "Connections").
    max_device_connections: int = Field(default=20_000, ge=1, le=1_000_000)
    # Open files one process may have. The hard limit (`ulimit -Hn`) of the shell running
    # `iotctl up` caps it (a process cannot raise it); the lower of the two is used.
    process_fd_limit: int = Field(default=20_000, ge=1024)

    # Our own processes. API replicas listen on api_ports (by default api_replicas ports from
    # 8101); sensors workers export metrics on worker_sensors_metrics_port, then from
    # sensors_extra_metrics_port for the second and later ones.
    api_replicas: int = Field(default=2, ge=1, le=16)
    api_ports: Annotated[list[int], NoDecode] = Field(default_factory=list)
    sensor_workers: int = Field(default=1, ge=1, le=8)
    worker_sensors_metrics_port: int = 9811
    sensors_extra_metrics_port: int = 9821
    worker_commandlog_metrics_port: int = 9812
    flower_port: int = 5566

    # Backing services (their real ports) and the toxiproxy listeners in front of them.
    rabbitmq_port: int = 5682
    rabbitmq_dist_port: int = 25682
    rabbitmq_management_port: int = 15682
    rabbitmq_prometheus_port: int = 15702
    rabbitmq_nodename: str = "iot@localhost"
    # A three-node RabbitMQ cluster on this machine (`iotctl up --cluster`, kept in
    # var/stack.env). Node 1 is the single node above; node N (2, 3) is `iot-N@localhost` on each
    # port above plus N - 1 (AMQP 5683, 5684; management 15683, 15684; ...), data under
    # var/rabbitmq-N. The API and workers know every node and fail over between them.
    rabbitmq_cluster: bool = False
    postgres_port: int = 5442
    redis_port: int = 6389
    toxiproxy_port: int = 8575
    # Our processes reach the backing services through toxiproxy, so chaos experiments can
    # fault any connection. Off (IOT_VIA_TOXIPROXY=false) is the production profile: direct
    # connections, one hop and toxiproxy's CPU less, and no chaos experiments.
    via_toxiproxy: bool = True
    proxy_rabbitmq_port: int = 5782  # node N of the cluster: this plus N - 1
    proxy_postgres_port: int = 5542
    proxy_redis_port: int = 6489

    # What this machine runs of the product's own processes (docs/scaling.md, "A
    # multi-machine deployment"), any of: edge (nginx and its exporter), api (the replicas),
    # sensors (the sensors workers), commandlog (the command-log worker: one in a deployment,
    # it keeps each device's commands in order), monitoring (Prometheus, Alertmanager, Flower,
    # the Postgres and Redis exporters); with --ha also data-1, data-2, data-3 (host N of the
    # data tier: etcd-N and sentinel-N, patroni-N and redis-N for N = 1, 2; its address is the
    # Nth of IOT_HA_HOSTS). Default: all of them. The backing services follow
    # IOT_EXTERNAL_SERVICES; toxiproxy runs with IOT_VIA_TOXIPROXY or all roles; with --ha,
    # haproxy runs on every machine of a product role (its processes reach the primary there).
    roles: Annotated[list[Role], NoDecode] = Field(default_factory=lambda: [*ROLES, *DATA_ROLES])
    # Processes on other machines, as host:port, comma-separated: API replicas (nginx's upstream
    # and Prometheus' api job include them) and the workers' metrics addresses (Prometheus).
    api_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sensors_worker_metrics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    commandlog_worker_metrics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The machine's name in the workers' Celery node names (worker-sensors@NAME: Flower and
    # the broker tell machines apart by it). Default: the host name; set it where two machines
    # share one (cloned images).
    machine_name: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,63}$")

    # Backing services that run elsewhere (docs/scaling.md, "A multi-machine deployment").
    # IOT_EXTERNAL_SERVICES=postgres,rabbitmq,redis (any of them): `iotctl up` neither
    # initialises nor supervises those; our processes (or toxiproxy, in the toxiproxy profile)
    # reach each at IOT_<SERVICE>_HOST (default IOT_HOST; used only when the service is
    # external) and its port setting above (IOT_POSTGRES_PORT; IOT_RABBITMQ_PORT, and
    # _MANAGEMENT_PORT, _PROMETHEUS_PORT; IOT_REDIS_PORT). `iotctl up` still prepares them:
    external_services: Annotated[list[Literal["postgres", "rabbitmq", "redis"]], NoDecode] = Field(
        default_factory=list
    )
    postgres_host: str = ""
    rabbitmq_host: str = ""
    redis_host: str = ""
    # Postgres: a role that may create roles and databases (a superuser), as a URL, e.g.
    # postgresql://postgres:PASSWORD@db.example:5432/postgres. It creates (or sets the
    # passwords of) the owner, the database and each process's role, as on the native stack.
    # Not needed on a further machine: when those roles log in already, nothing is created.
    postgres_superuser_url: str = ""
    # RabbitMQ: an administrator of its management API, who creates our user
    # (IOT_RABBITMQ_USER, IOT_RABBITMQ_PASSWORD) and its permissions on the vhost "/". Empty:
    # that user must exist already, tagged monitoring and policymaker.
    rabbitmq_admin_user: str = ""
    rabbitmq_admin_password: str = ""
    # Redis: its password now (empty: none). `iotctl up` makes IOT_REDIS_PASSWORD the default
    # user's password (requirepass) unless it already is.
    redis_admin_password: str = ""

    # Monitoring.
    prometheus_port: int = 9190
    alertmanager_port: int = 9193
    postgres_exporter_port: int = 9287
    redis_exporter_port: int = 9221
    nginx_exporter_port: int = 9213
    scrape_interval: str = "5s"

    # Credentials: generated into var/secrets.env by `iotctl up`, never committed.
    secret_key: str = ""
    postgres_password: str = ""
    rabbitmq_password: str = ""
    postgres_user: str = "iot"
    postgres_db: str = "iot"
    rabbitmq_user: str = "iot"
    # Least privilege in Postgres: the owner role (postgres_user) runs the migrations and owns
    # the tables; each of our processes connects as the role its work needs, named
    # `<postgres_user>_<role>` (stack/roles.py holds the grants). Supervisor sets db_role per
    # program; the CLI and auditors stay the owner.
    db_role: Literal["owner", "api", "sensors", "commandlog"] = "owner"
    postgres_api_password: str = ""
    postgres_sensors_password: str = ""
    postgres_commandlog_password: str = ""
    redis_password: str = ""  # Redis' requirepass
    flower_user: str = "iot"
    flower_password: str = ""  # Flower's basic auth
    # Prometheus' and Alertmanager's basic auth (their web config holds the bcrypt hash, written
    # into var/secrets.env with the password); every client asks `monitoring_auth`.
    monitoring_user: str = "iot"
    monitoring_password: str = ""
    monitoring_password_hash: str = ""

    # Behaviour.
    publish_timeout_seconds: float = 5.0
    retry_after_seconds: int = 2
    access_token_ttl_seconds: int = 3600
    # A replica caches a device's token this long while it hears token changes (rotation,
    # deletion: Postgres NOTIFY, every replica forgets at once); only the shorter time while
    # it cannot hear them.
    device_auth_cache_seconds: float = 300.0
    device_auth_cache_unwatched_seconds: float = 5.0
    redis_timeout_seconds: float = 0.5
    db_pool_size: int = 20
    # worker-commandlog's threads: one, so commands it stores (those the API could not write at
    # once, e.g. accepted while Postgres was away) become rows in the order they were accepted -
    # a second thread could store a later command of a device while an earlier one is retried,
    # and a poll in between would break FIFO. Its inserts are mostly no-ops (the API wrote the
    # row) of about a millisecond.
    worker_concurrency: int = 1
    worker_task_events: bool = True  # off for the sensors worker (see stack/processes.py)
    # The sensors worker's threads mostly wait for Postgres' commit (fsync): more of them in
    # flight share one WAL flush (group commit). See docs/decisions.md, "Ingest".
    sensors_concurrency: int = 8
    # POST /sensors: a batch waits up to this long for other requests' batches to share its
    # message (fewer, larger messages for the broker, the worker and Postgres); 0 publishes
    # each at once unless earlier publishes are still unconfirmed. See docs/decisions.md.
    ingest_linger_ms: float = 50.0
    worker_prefetch_multiplier: int = 4
    history_max_points: int = 10_000
    # History that ages (iot/maintenance.py, run by the commands worker): readings partitions
    # whose whole day is older than this are dropped; finished commands not updated for this
    # long are deleted with their events. 0 keeps everything.
    readings_retention_days: int = Field(default=30, ge=0)
    commands_retention_days: int = Field(default=90, ge=0)
    maintenance_interval_seconds: float = Field(default=600.0, gt=0)
    replica_name: str = ""

    # Commands.
    command_lease_seconds: float = 60
    command_max_attempts: int = 5
    command_queue_max: int = 100
    command_max_args_bytes: int = 4096
    # Devices a person may register (admins: no limit); `iotctl users set NAME --max-devices N`
    # gives one person another limit.
    max_devices_per_user: int = Field(default=1000, ge=0)
    # Distinct sensor names one device may create: a reading with a new name beyond it is
    # answered 422 before anything is accepted (api/sensor_names.py, per replica, in memory).
    max_sensors_per_device: int = Field(default=64, ge=1)

    # The stack's Postgres archives its WAL into <backup_dir>/wal and `iotctl backup create`
    # writes base backups into <backup_dir>/base (iot/backup.py). Default: <home>/backups,
    # outside var/ (which `iotctl down --purge` deletes). Copy it off the machine.
    backup_dir: Path | None = None
    # `iotctl up --ha` (kept in var/stack.env): Postgres under Patroni (two members, etcd),
    # Redis under Sentinel, haproxy on postgres_port and redis_port (iot/stack/ha.py).
    ha: bool = False
    # Where the HA members run: host N (1-3) runs etcd-N and Sentinel N, and patroni-N and
    # redis-N where there are (two of each); the machine whose IOT_ROLES names data-N runs
    # them (docs/scaling.md, "The HA data tier on machines of its own"). Empty: every member
    # on IOT_HOST. ha_netns (kept
    # in var/stack.env, `iotctl up --ha --ha-netns`): three network namespaces of this machine
    # stand for the hosts (iot/stack/ha_hosts.py), so that a host can be cut off for real (the
    # chaos experiment ha-cut-primary); their addresses are then 10.79.0.11-13 unless given.
    ha_hosts: list[str] = Field(default_factory=list)
    ha_netns: bool = False
    # With members on other machines: the networks (CIDR, comma-separated) of the machines
    # whose processes reach the members (through their own haproxy), let in by pg_hba with a
    # password. The data tier's hosts are let in already.
    ha_client_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    postgres_superuser_password: str = ""  # the HA members' superuser (Patroni), var/secrets.env
    postgres_replication_password: str = ""  # the HA members' replication role

    # Binaries that do not come from the virtualenv.
    toxiproxy_bin: Path = PROJECT_ROOT / "var" / "bin" / "toxiproxy-server"
    postgres_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")

    @field_validator("api_ports", mode="before")
    @classmethod
    def _split_ports(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [int(p) for p in value.split(",") if p.strip()]
        return value

    @field_validator(
        "api_servers", "sensors_worker_metrics", "commandlog_worker_metrics", mode="before"
    )
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for address in value if isinstance(value, list) else []:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port (e.g. 10.0.0.5:8101)")
        return value

    @field_validator("external_services", "roles", "ha_hosts", "ha_client_networks", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("ha_client_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network (e.g. 10.0.1.0/24)") from None
        return value

    @model_validator(mode="after")
    def _ha_hosts(self) -> Settings:
        if self.ha_netns and not self.ha_hosts:
            self.ha_hosts = [f"{HA_NETNS_SUBNET}.{10 + i}" for i in (1, 2, 3)]
        if self.ha_hosts and len(self.ha_hosts) != 3:
            raise ValueError(
                f"IOT_HA_HOSTS names {len(self.ha_hosts)} hosts: it needs three (etcd and the "
                "Sentinels have a member on each), e.g. 10.0.0.11,10.0.0.12,10.0.0.13"
            )
        here = [r for r in DATA_ROLES if r in self.roles]
        if self.ha and len(here) < len(DATA_ROLES) and not self.ha_hosts:
            raise ValueError(
                f"IOT_ROLES names {', '.join(here) or 'no data role'} of data-1, data-2, "
                "data-3: the other hosts' members run on other machines, so IOT_HA_HOSTS must "
                "give the three hosts' addresses, e.g. 10.0.0.11,10.0.0.12,10.0.0.13"
            )
        return self

    @model_validator(mode="after")
    def _service_hosts(self) -> Settings:
        # A service's own host counts only when it runs elsewhere: with nothing external,
        # everything is reached at IOT_HOST exactly as before.
        for service in ("postgres", "rabbitmq", "redis"):
            if service not in self.external_services or not getattr(self, f"{service}_host"):
                setattr(self, f"{service}_host", self.host)
        return self

    @model_validator(mode="after")
    def _backup_dir(self) -> Settings:
        if self.backup_dir is None:
            self.backup_dir = self.home / "backups"
        return self

    @model_validator(mode="after")
    def _replica_ports(self) -> Settings:
        if not self.api_ports:
            self.api_ports = [8101 + i for i in range(self.api_replicas)]
        self.api_replicas = len(self.api_ports)
        return self

    # ----- derived values -----
    @property
    def sensors_workers(self) -> list[tuple[str, int]]:
        """(program name, metrics port) of each sensors worker."""
        return [("worker-sensors", self.worker_sensors_metrics_port)] + [
            (f"worker-sensors-{i + 1}", self.sensors_extra_metrics_port + i - 1)
            for i in range(1, self.sensor_workers)
        ]

    @property
    def every_role(self) -> bool:
        """This machine runs all of the product's own processes (as by default)."""
        return set(ROLES) <= set(self.roles)

    @property
    def product_role(self) -> bool:
        """This machine runs some of the product's own processes (not only data-tier hosts)."""
        return bool(set(ROLES) & set(self.roles))

    @property
    def var(self) -> Path:
        return self.home / "var"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def database_url(self) -> str:
        """Postgres as the product's processes see it: through toxiproxy (unless disabled), as
        this process's role (``db_role``)."""
        port = self.proxy_postgres_port if self.via_toxiproxy else None
        return self.database_url_as(self.db_role, port)

    @property
    def database_direct_url(self) -> str:
        """Postgres without toxiproxy, as the owner: migrations, auditors, exporters."""
        return self.database_url_as("owner")

    def postgres_role(self, role: str) -> tuple[str, str]:
        """(name, password) of one of the product's Postgres roles."""
        if role == "owner":
            return self.postgres_user, self.postgres_password
        return f"{self.postgres_user}_{role}", getattr(self, f"postgres_{role}_password")

    def database_url_as(self, role: str, port: int | None = None) -> str:
        """Postgres as ``role`` (owner, api, sensors, commandlog); directly unless ``port``
        (toxiproxy's, on this machine)."""
        user, password = self.postgres_role(role)
        host = self.host if port else self.postgres_host
        return (
            f"postgresql://{user}:{password}@{host}:{port or self.postgres_port}/{self.postgres_db}"
        )

    @property
    def rabbitmq_nodes(self) -> list[RabbitNode]:
        """The RabbitMQ nodes of the stack: one, or three with ``rabbitmq_cluster``."""
        return [RabbitNode.of(self, n) for n in range(1, 4 if self.rabbitmq_cluster else 2)]

    @property
    def broker_url(self) -> str:
        """Every node's AMQP URL, as kombu's failover list (``amqp://a;amqp://b``): through
        toxiproxy (one proxy per node) unless disabled. One node: one URL."""
        return ";".join(self.node_url(n) for n in self.rabbitmq_nodes)

    def node_url(self, node: RabbitNode, direct: bool = False) -> str:
        proxied = self.via_toxiproxy and not direct
        host, port = (self.host, node.proxy_port) if proxied else (self.rabbitmq_host, node.port)
        return f"amqp://{self.rabbitmq_user}:{self.rabbitmq_password}@{host}:{port}/"

    @property
    def redis_url(self) -> str:
        if not self.via_toxiproxy:
            return self.redis_direct_url
        return f"redis://:{self.redis_password}@{self.host}:{self.proxy_redis_port}/0"

    @property
    def monitoring_auth(self) -> tuple[str, str]:
        """(user, password) for Prometheus and Alertmanager."""
        return self.monitoring_user, self.monitoring_password

    @property
    def redis_direct_url(self) -> str:
        """Redis without toxiproxy: the CLI, tests, auditors."""
        return f"redis://:{self.redis_password}@{self.redis_host}:{self.redis_port}/0"

    def require_secrets(self) -> None:
        """Refuse to run with a missing or placeholder secret.

        Raises:
            RuntimeError: naming the first variable that is missing.
        """
        for name in ("secret_key", "rabbitmq_password", "redis_password"):
            self._require(name, getattr(self, name))
        role = self.db_role
        name = "postgres_password" if role == "owner" else f"postgres_{role}_password"
        self._require(name, getattr(self, name))

    @staticmethod
    def _require(name: str, value: str) -> None:
        if value.strip().lower() in PLACEHOLDERS or len(value) < 16:
            raise RuntimeError(
                f"IOT_{name.upper()} is missing or a placeholder; run `iotctl up` once "
                "(it writes var/secrets.env) or set it in the environment (16+ characters)"
            )


@dataclass(frozen=True)
class RabbitNode:
    """One RabbitMQ node: its program, Erlang node name, ports and data folder."""

    index: int
    program: str  # the supervisor's program and toxiproxy's proxy: rabbitmq, rabbitmq-2, ...
    nodename: str
    port: int
    dist_port: int
    management_port: int
    prometheus_port: int
    proxy_port: int
    data: Path  # var/rabbitmq (node 1), var/rabbitmq-2, ...

    @classmethod
    def of(cls, s: Settings, n: int) -> RabbitNode:
        suffix = "" if n == 1 else f"-{n}"
        name, _, host = s.rabbitmq_nodename.partition("@")
        return cls(
            index=n,
            program=f"rabbitmq{suffix}",
            nodename=f"{name}{suffix}@{host}",
            port=s.rabbitmq_port + n - 1,
            dist_port=s.rabbitmq_dist_port + n - 1,
            management_port=s.rabbitmq_management_port + n - 1,
            prometheus_port=s.rabbitmq_prometheus_port + n - 1,
            proxy_port=s.proxy_rabbitmq_port + n - 1,
            data=s.var / f"rabbitmq{suffix}",
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
