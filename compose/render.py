"""Render the native stack's configuration for the Compose bundle.

``python compose/render.py [OUT]`` (default ``compose/.rendered``, git-ignored) writes what
``docker-compose.yml`` mounts, from the same templates and the same program definitions that
``iotctl up`` uses (``system/iot/stack``), with the addresses containers need:

- ``conf/``: nginx, Redis, RabbitMQ, toxiproxy, Prometheus and Alertmanager configuration. Every
  service listens on ``0.0.0.0`` (its own container) on the port the native stack uses; an
  address another service is reached at names the service listening on that port
  (``toxiproxy``'s upstreams, Prometheus' targets).
- ``var/secrets.env``: random secrets, written once (the same set ``iotctl up`` writes), and
  ``var/tls/``: the self-signed certificate of nginx.
- ``env/<program>.env``: each program's environment as the supervisor would set it (database
  role, worker metrics port, Flower's broker API, exporters' data source).
- ``ha/`` (docker-compose.ha.yml): each member's command, first files and Patroni's
  configuration from ``iotctl up --ha``'s program definitions, with the three hosts at
  ``IOT_COMPOSE_HA_NET``.11-13 (default 10.79.1); haproxy's configuration; Prometheus's with
  the members' targets.

Running it again rewrites ``conf/`` and ``env/`` and keeps the secrets and the certificate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from secrets import token_hex

import yaml

from iot.settings import Settings
from iot.stack import ha, ha_conf, setup
from iot.stack.placement import role_of
from iot.stack.processes import programs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOME = Path("/srv/iot")  # IOT_HOME inside the containers; var/ is HOME/var
ANY = "0.0.0.0"
# Inside its container Prometheus listens on its usual port: the Grafana datasource
# (monitoring/grafana/provisioning) points at prometheus:9090.
OVERRIDES = {"prometheus_port": 9090}
# The API replicas and sensors workers the compose file defines.
API_SERVICES = ("api-1", "api-2")
SENSORS_SERVICES = ("worker-sensors",)
# The HA profile (docker-compose.ha.yml): the data tier's three hosts are containers with
# fixed addresses on the bundle's network (the file's own subnet), as the network namespaces
# of `iotctl up --ha --ha-netns` are; host N's members share its network.
HA_NET = os.environ.get("IOT_COMPOSE_HA_NET", "10.79.1")
HA_HOSTS = [f"{HA_NET}.{10 + i}" for i in (1, 2, 3)]
HA_JOIN = REPO / "system" / "iot" / "stack" / "ha_join.py"


def secrets_of(out: Path) -> dict[str, str]:
    """The bundle's secrets (written once into OUT/var/secrets.env) as Settings fields."""
    setup.ensure_secrets(out)
    values = {}
    for line in (out / "var" / "secrets.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip().removeprefix("IOT_").lower()] = value.strip()
    return values


def service_of_port(s: Settings) -> dict[int, str]:
    """Which compose service listens on each port of the stack. The cluster's nodes 2 and 3
    share the network of the ``rabbitmq`` service (docker-compose.cluster.yml)."""
    owners = {
        "rabbitmq": tuple(
            p for n in s.rabbitmq_nodes for p in (n.port, n.management_port, n.prometheus_port)
        ),
        # with --ha, `postgres` and `redis` are haproxy in front of the members (its stats
        # and metrics on the `postgres` one)
        "postgres": (s.postgres_port, *((ha.HAPROXY_STATS_PORT,) if s.ha else ())),
        "redis": (s.redis_port,),
        "toxiproxy": (
            s.toxiproxy_port,
            *(n.proxy_port for n in s.rabbitmq_nodes),
            s.proxy_postgres_port,
            s.proxy_redis_port,
        ),
        "nginx": (s.http_port, s.https_port, s.nginx_status_port),
        "flower": (s.flower_port,),
        "prometheus": (s.prometheus_port,),
        "alertmanager": (s.alertmanager_port,),
        "postgres-exporter": (s.postgres_exporter_port,),
        "redis-exporter": (s.redis_exporter_port,),
        "nginx-exporter": (s.nginx_exporter_port,),
        "worker-commandlog": (s.worker_commandlog_metrics_port,),
    }
    owners.update({name: (port,) for name, port in zip(API_SERVICES, s.api_ports, strict=True)})
    owners.update(
        {name: (port,) for name, (_, port) in zip(SENSORS_SERVICES, s.sensors_workers, strict=True)}
    )
    return {port: name for name, ports in owners.items() for port in ports}


def address_by_owner(text: str, owners: dict[int, str]) -> str:
    """Replace every ``0.0.0.0:PORT`` with ``<service listening on PORT>:PORT``."""

    def sub(m: re.Match[str]) -> str:
        port = int(m.group(1))
        if port not in owners:
            raise setup.SetupError(f"no compose service listens on port {port}")
        return f"{owners[port]}:{port}"

    return re.sub(r"0\.0\.0\.0:(\d+)", sub, text)


# Erlang distribution stays on the container's loopback, as on the native stack's machine:
# only rabbitmqctl inside the container and the cluster's nodes (which share node 1's network)
# use it.
LOOPBACK_ONLY = {
    "ERL_EPMD_ADDRESS": lambda v: "127.0.0.1",
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": lambda v: v.replace("{0,0,0,0}", "{127,0,0,1}"),
}


def is_member(program: str) -> bool:
    """Whether a program is a member of the HA data tier (a host's role runs it)."""
    return (role_of(program) or "").startswith("data-")


def compose_hba() -> list[str]:
    """The members' pg_hba in containers: every container of the bundle's network (their
    addresses are not fixed, except the data tier's) with a password, as the single Postgres
    of docker-compose.yml allows."""
    subnet = f"{HA_NET}.0/24"
    return [
        "local all all trust",
        "local replication all trust",
        f"host replication replicator {subnet} scram-sha-256",
        f"host all all {subnet} scram-sha-256",
    ]


def render_stack(
    out: Path, secrets: dict[str, str], cluster: bool, ha_tier: bool = False
) -> dict[str, str]:
    """The configuration files and environments of the stack, by path under OUT.

    The native code renders (``setup.render_configs``, ``processes.programs``) into a staging
    folder with every service listening on 0.0.0.0; then the staging paths become the
    containers' (``/srv/iot``) and the addresses of other services their service names.
    """
    stage = out / "stage"
    (stage / "var" / "conf").mkdir(parents=True, exist_ok=True)
    s = Settings(  # type: ignore[call-arg]
        _env_file=None,
        home=stage,
        host=ANY,
        api_replicas=len(API_SERVICES),
        sensor_workers=len(SENSORS_SERVICES),
        rabbitmq_cluster=cluster,
        ha=ha_tier,
        ha_hosts=HA_HOSTS if ha_tier else [],
        ha_netns=False,
        **OVERRIDES,
        **secrets,
    )
    owners = service_of_port(s)
    try:
        setup.render_configs(s)

        def contained(text: str) -> str:
            for path, inside in (
                (stage, HOME),
                (REPO / "monitoring", HOME / "monitoring"),
                (REPO / "webui", HOME / "webui"),
                (HA_JOIN, Path("/srv/iot/bin/ha_join.py")),
            ):
                text = text.replace(str(path), str(inside))
            return text

        def native(name: str) -> str:
            return contained((stage / "var" / "conf" / name).read_text())

        proxies = json.loads(native("toxiproxy.json"))
        for proxy in proxies:
            proxy["upstream"] = address_by_owner(proxy["upstream"], owners)
        files = {
            f"conf/{name}": native(name)
            for name in (
                "redis.conf",
                "rabbitmq.conf",
                "alertmanager.yml",
                "rabbitmq-plugins",
                "rabbitmq-env.conf",
                "rabbitmq-advanced.config",
                *(f"{n.program}.conf" for n in s.rabbitmq_nodes[1:]),
            )
        }
        files["conf/toxiproxy.json"] = json.dumps(proxies, indent=2) + "\n"
        files["conf/prometheus.yml"] = address_by_owner(native("prometheus.yml"), owners)
        files["conf/nginx.conf"] = re.sub(
            r"(?m)^(\s*server )(0\.0\.0\.0:\d+)",
            lambda m: m.group(1) + address_by_owner(m.group(2), owners),
            native("nginx.conf"),
        )
        if ha_tier:
            files.update(render_ha_members(s, native, contained))
        for program in programs(s):
            if is_member(program.name):
                continue
            if program.env:
                env = {k: address_by_owner(contained(v), owners) for k, v in program.env.items()}
                env.update({k: LOOPBACK_ONLY[k](v) for k, v in env.items() if k in LOOPBACK_ONLY})
                files[f"env/{program.name}.env"] = "".join(f"{k}={v}\n" for k, v in env.items())
    finally:
        shutil.rmtree(stage)  # it holds the native-only files (supervisord.conf)
    return files


def render_ha_members(
    s: Settings, native: Callable[[str], str], contained: Callable[[str], str]
) -> dict[str, str]:
    """What member-start (compose/images/member-start.sh) runs each member of the HA tier
    with: its command (``ha/cmd/NAME``, one argument per line), its first files
    (``ha/seed/NAME/``), ``ha/user/NAME`` for the members that run as postgres, Patroni's
    configurations (``ha/patroni/``) and haproxy's (``ha/conf/haproxy.cfg``)."""
    files = {"ha/conf/haproxy.cfg": native("haproxy.cfg")}
    for program in programs(s):
        if not is_member(program.name):
            continue
        files[f"ha/cmd/{program.name}"] = "".join(contained(a) + "\n" for a in program.command)
        if program.user == "postgres":
            files[f"ha/user/{program.name}"] = "postgres\n"
    for m in ha.pg_members(s):
        config = ha_conf.patroni_config(s, m, {})  # no WAL archive, as docker-compose.yml's
        config["bootstrap"]["pg_hba"] = config["postgresql"]["pg_hba"] = compose_hba()
        files[f"ha/patroni/{m.name}.yml"] = contained(yaml.safe_dump(config, sort_keys=False))
    for kind, count, name in (
        ("redis", len(ha.REDIS_PORTS), "redis.conf"),
        ("sentinel", len(ha.SENTINEL_PORTS), "sentinel.conf"),
    ):
        for i in range(1, count + 1):
            first = s.var / "ha" / f"{kind}-{i}" / name
            files[f"ha/seed/{kind}-{i}/{name}"] = contained(first.read_text())
    return files


# What docker-compose.cluster.yml mounts from OUT/cluster instead of OUT.
CLUSTER_FILES = (
    "conf/toxiproxy.json",
    "conf/prometheus.yml",
    "conf/rabbitmq-2.conf",
    "conf/rabbitmq-3.conf",
    "env/rabbitmq-2.env",
    "env/rabbitmq-3.env",
)


# What docker-compose.ha.yml mounts from OUT/ha instead of OUT (the rest of the stack's files
# are the same with --ha: only Prometheus learns the members).
HA_FILES = ("conf/prometheus.yml",)


def render(out: Path) -> list[Path]:
    """Write everything under OUT (the cluster's variants under OUT/cluster, the HA tier's
    files and variants under OUT/ha); returns the files written."""
    out = out.resolve()
    secrets = secrets_of(out)
    (out / "var" / "tls").mkdir(parents=True, exist_ok=True)
    setup.ensure_certificate(Settings(_env_file=None, home=out, **secrets))  # type: ignore[call-arg]
    cookie = out / "var" / "erlang.cookie"  # one cookie for every node of the cluster
    if not cookie.exists():
        cookie.write_text(token_hex(32))
    cookie.chmod(0o400)  # Erlang refuses a cookie that others may read
    single = render_stack(out, secrets, cluster=False)
    cluster = render_stack(out, secrets, cluster=True)
    with_ha = render_stack(out, secrets, cluster=False, ha_tier=True)
    written = [_write(out / rel, text) for rel, text in single.items()]
    written += [_write(out / "cluster" / rel, cluster[rel]) for rel in CLUSTER_FILES]
    written += [_write(out / rel, text) for rel, text in with_ha.items() if rel.startswith("ha/")]
    written += [_write(out / "ha" / rel, with_ha[rel]) for rel in HA_FILES]
    return written


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    # Containers run their services as other users (postgres, nginx workers): readable by all.
    # The folder holds secrets: compose/.rendered is git-ignored and made 0700 by render().
    path.chmod(0o644)
    return path


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE / ".rendered"
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    try:
        written = render(out)
    except setup.SetupError as exc:
        print(f"compose render: {exc}", file=sys.stderr)
        return 1
    print(f"rendered {len(written)} files into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
