"""The stack on this machine: ``iotctl up``, ``down``, ``status``, ``logs``, ``stop``, ``start``,
``restart`` and ``migrate`` (``main`` registers them). What they drive lives in ``iot.stack``:
packages and rendered configs (``setup``), the supervisor (``control``), the programs
(``processes``), the RabbitMQ cluster (``cluster``), connection limits (``connections``)."""

from __future__ import annotations

import subprocess
import time
from typing import Annotated

import httpx
import typer

from iot import backup
from iot.cli.common import fail, settings
from iot.settings import Settings
from iot.stack import cluster as rabbit_cluster
from iot.stack import connections, external, ha
from iot.stack import setup as stack_setup
from iot.stack.control import ControlError, Supervisor, probe, wait_healthy
from iot.stack.placement import runs_here, service_of
from iot.stack.processes import external_programs, programs


def _print_urls(s: Settings) -> None:
    here = {p.name for p in programs(s)}
    if s.every_role:
        typer.echo("\nThe stack is up:")
    else:
        typer.echo(
            f"\nThis machine's part is up (IOT_ROLES={','.join(s.roles)}): "
            + ", ".join(sorted(here))
        )
    rows = [
        ("API (HTTP)", f"http://{s.host}:{s.http_port}/  (OpenAPI: /docs)", "nginx"),
        (
            "API (HTTPS)",
            f"https://{s.host}:{s.https_port}/  (self-signed: var/tls/server.crt)",
            "nginx",
        ),
        (
            "API replicas",
            ", ".join(f"http://{s.host}:{p}/" for p in s.api_ports),
            "api-1",
        ),
        (
            "RabbitMQ management",
            f"http://{s.rabbitmq_host}:{s.rabbitmq_management_port}/",
            "",
        ),
        ("Flower", f"http://{s.host}:{s.flower_port}/", "flower"),
        ("Prometheus", f"http://{s.host}:{s.prometheus_port}/", "prometheus"),
        ("toxiproxy API", f"http://{s.host}:{s.toxiproxy_port}/proxies", "toxiproxy"),
    ]
    for label, url, program in rows:
        if not program or program in here:
            typer.echo(f"  {label:<22} {url}")
    typer.echo("  Credentials of the services: var/secrets.env   Logs: iotctl logs NAME")
    typer.echo(
        "  First user: echo 'a-long-password' | iotctl users create alice --admin --password-stdin"
    )


def up(
    timeout: float = typer.Option(180, help="Seconds to wait for every component to be healthy."),
    api_replicas: int | None = typer.Option(
        None,
        "--api-replicas",
        min=1,
        max=16,
        help="API replicas to run (default 2). Kept in var/stack.env for later runs; nginx's "
        "upstream, Prometheus' targets and the supervisor follow.",
    ),
    sensor_workers: int | None = typer.Option(
        None,
        "--sensor-workers",
        min=1,
        max=8,
        help="Sensors workers sharing sensors.data (default 1). Kept like --api-replicas.",
    ),
    cluster: bool | None = typer.Option(
        None,
        "--cluster/--no-cluster",
        help="Three RabbitMQ nodes (rabbitmq, rabbitmq-2, rabbitmq-3) with every shared queue "
        "on each, or back to the one node (default). Kept like --api-replicas.",
    ),
    ha_: bool | None = typer.Option(
        None,
        "--ha/--no-ha",
        help="Postgres as a primary and a synchronous standby under Patroni (with a "
        "three-member etcd), Redis with a replica under three Sentinels, haproxy on their "
        "usual ports; or back to one of each (default). Kept like --api-replicas.",
    ),
    ha_netns: bool | None = typer.Option(
        None,
        "--ha-netns/--ha-local",
        help="With --ha: run the members on three hosts that are network namespaces of this "
        "machine (10.79.0.11-13), so that a host can be cut off for real (chaos experiment "
        "ha-cut-primary; needs root); or all on this machine's address (default). Change it "
        "with the HA tier stopped (`iotctl up --no-ha` first). Kept like --api-replicas.",
    ),
) -> None:
    """Prepare var/ (secrets, TLS, Postgres cluster, configs), start every process under the
    supervisor, apply database migrations, wait until all are healthy and print the URLs.
    Running it again is harmless: it applies changed configuration and starts what is stopped
    (and stops replicas or workers no longer wanted)."""
    now = settings()
    clustered = cluster if cluster is not None else now.rabbitmq_cluster
    if clustered and "rabbitmq" in now.external_services:
        fail(
            "RabbitMQ is external (IOT_EXTERNAL_SERVICES): --cluster runs three nodes on this "
            "machine. Cluster it where it runs, give IOT_RABBITMQ_HOST one address for it, and "
            "run `iotctl up --no-cluster` here"
        )
    if ha_ and {"postgres", "redis"} & set(now.external_services):
        fail(
            "Postgres or Redis is external (IOT_EXTERNAL_SERVICES): --ha runs their members on "
            "this machine. Make them highly available where they run, and run "
            "`iotctl up --no-ha` here"
        )
    if (ha_ or (ha_ is None and now.ha)) and not ha.engines_installed():
        fail(
            "--ha needs Patroni, etcd, haproxy and Redis Sentinel: run `scripts/setup.sh --ha` "
            "(or `iotctl up --no-ha`)"
        )
    if (
        ha_netns is not None
        and ha_netns != now.ha_netns
        and now.ha
        and ha_ is not False
        and Supervisor(now).running()
    ):
        fail(
            "the HA members run on "
            + ("namespaces" if now.ha_netns else "this machine's address")
            + ": move them with the tier stopped, `iotctl up --no-ha` first"
        )
    if now.ha and ha_ is False and Supervisor(now).running():
        # The single Postgres runs on patroni-1's data directory: it must be the primary's.
        try:
            was = ha.switch_back(now)
        except (ha.NoPrimary, httpx.HTTPError) as exc:
            fail(f"cannot go back to one Postgres: {exc}")
        if was:
            typer.echo(f"switched the Postgres primary over from {was} to patroni-1")
        sup = Supervisor(now)
        for member in reversed(ha.pg_members(now)):  # the standby first: no failover
            sup.stop_program(member.name)
        for name in ha.stop_leftover_postgres(now):
            typer.echo(f"{name}: stopped its Postgres, left running by Patroni")
    if ha_ and not now.ha:
        # coming from the single Postgres (which ran on patroni-1's data): the standby's copy
        # is stale, it copies the primary again
        for name in ha.forget_standbys(now):
            typer.echo(f"{name}: its copy of the data is behind the single Postgres: copied again")
    shape: dict[str, int | str | None] = {
        "IOT_API_REPLICAS": api_replicas,
        "IOT_SENSOR_WORKERS": sensor_workers,
        "IOT_RABBITMQ_CLUSTER": None if cluster is None else str(cluster).lower(),
        "IOT_HA": None if ha_ is None else str(ha_).lower(),
        "IOT_HA_NETNS": None if ha_netns is None else str(ha_netns).lower(),
    }
    if any(v is not None for v in shape.values()):
        stack_setup.save_stack_shape({k: v for k, v in shape.items() if v is not None})
    base = settings()
    created = stack_setup.ensure_secrets(base.home)
    s = settings()
    if created:
        typer.echo("wrote new secrets to var/secrets.env")
    if runs_here(s, "toxiproxy") and not s.toxiproxy_bin.exists():
        fail(f"{s.toxiproxy_bin} is missing: run `make up` (it builds toxiproxy)")
    try:
        external.prepare(s, say=typer.echo)  # before anything of ours starts to use them
        stack_setup.make_dirs(s)
        if s.ha:
            for name in ha.place(s):
                typer.echo(f"{name}: held the members' old addresses: removed")
        stack_setup.ensure_certificate(s)
        stack_setup.ensure_postgres_cluster(s)
        if "postgres" not in s.external_services:
            backup.prepare(s)  # the WAL archive, before Postgres starts archiving into it
        sup = Supervisor(s)
        was_running = sup.running()
        before = set(sup.info()) if was_running else set()
        # Leaving the cluster: queues move to node 1 while nodes 2 and 3 still run.
        ours = "rabbitmq" not in s.external_services
        leaving = rabbit_cluster.extra_nodes(s) if was_running and ours else []
        if leaving:
            rabbit_cluster.shrink(s, leaving, say=typer.echo)
        changed = stack_setup.render_configs(s)
        if was_running:  # first, so that new nodes start after node 1's restart, not during it
            _apply_changes(sup, changed, before)
        sup.start()
        if leaving:
            rabbit_cluster.forget(s, leaving, say=typer.echo)
        if not s.ha and was_running and now.ha and now.ha_netns:
            from iot.stack import ha_hosts

            ha_hosts.remove()  # the members are stopped: their hosts go too
    except (stack_setup.SetupError, ControlError) as exc:
        fail(str(exc))
    # The API and the workers learn the nodes at start: after a change, restart them one
    # after the other (while one replica restarts, the other answers).
    known = s.var / "run" / "rabbitmq-nodes"
    node_names = " ".join(n.nodename for n in s.rabbitmq_nodes) + "\n"
    last = known.read_text() if known.exists() else s.rabbitmq_nodes[0].nodename + "\n"
    nodes_changed = was_running and last != node_names
    limits = connections.for_settings(s)
    if {"edge", "api"} & set(s.roles):
        typer.echo(connections.summary(limits))
    started = time.monotonic()
    if s.product_role:
        typer.echo("supervisor running; waiting for Postgres ...")
        if "postgres" not in s.external_services:  # external: prepared above
            _wait_postgres_socket(s, timeout)
            stack_setup.bootstrap_database(s)
            if s.ha:  # haproxy needs two good checks of the primary before it routes to it
                _wait_routed(s, timeout)
        applied = stack_setup.migrate(s.database_direct_url)
        typer.echo(
            f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else "")
        )
    else:  # only hosts of the data tier: the machines of the product's roles prepare it
        typer.echo("supervisor running (the database is prepared by the product's machines)")

    def progress(name: str, health: object) -> None:
        typer.echo(f"  {name:<18} healthy  ({time.monotonic() - started:4.1f}s)")

    results = wait_healthy(s, None, timeout, progress)
    bad = {n: h for n, h in results.items() if not h.ok}
    if bad:
        for name, h in bad.items():
            typer.secho(f"  {name:<18} NOT healthy: {h.detail}", fg=typer.colors.RED, err=True)
        fail(f"{len(bad)} component(s) not healthy after {timeout:.0f}s; see `iotctl logs NAME`")
    try:
        stack_setup.remove_stale_broker_policy(s)
        if s.rabbitmq_cluster:
            rabbit_cluster.form(s, timeout, say=typer.echo)
        if nodes_changed:
            for p in programs(s):
                if p.group == "app" or p.name == "flower":
                    typer.echo(f"RabbitMQ nodes changed: restart {p.name}")
                    sup.restart_program(p.name)
            wait_healthy(s, None, timeout)
        known.write_text(node_names)
    except (stack_setup.SetupError, ControlError) as exc:
        fail(str(exc))
    _print_urls(s)
    for warning in connections.warnings(s, limits):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _apply_changes(sup: Supervisor, changed: list[str], running: set[str]) -> None:
    """Make running programs pick up configuration files that changed (programs that were not
    running before have just started with them)."""
    for name in changed:
        program, action = stack_setup.RELOADS.get(name, (None, ""))
        if program is None or program not in running:
            continue
        typer.echo(f"{name} changed: {action} {program}")
        if action.startswith("signal "):
            sup.signal_program(program, action.split()[1])
        elif action == "sync proxies":
            rabbit_cluster.sync_proxies(sup.s)
        else:
            sup.restart_program(program)


def _wait_postgres_socket(s: Settings, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(
                **ha.superuser_address(s, timeout),
                user="postgres",
                dbname="postgres",
                connect_timeout=2,
            ):
                return
        except ha.NoPrimary as exc:
            fail(str(exc))
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                logs = "patroni-1` and `iotctl logs patroni-2" if s.ha else "postgres"
                fail(f"Postgres did not start: {exc}; see `iotctl logs {logs}`")
            time.sleep(0.5)


def _wait_routed(s: Settings, timeout: float) -> None:
    """Wait until a query through haproxy (the product's address of Postgres) reaches the
    primary."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(s.database_direct_url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                fail(
                    f"haproxy does not reach the Postgres primary: {exc}; see `iotctl logs haproxy`"
                )
            time.sleep(0.5)


def down(
    purge: bool = typer.Option(
        False, help="Also delete all data under var/ (databases, queues, secrets, certificates)."
    ),
) -> None:
    """Stop every process of the stack (and the supervisor)."""
    s = settings()
    try:
        stopped = Supervisor(s).shutdown()
    except ControlError as exc:
        fail(str(exc))
    typer.echo("stack stopped" if stopped else "stack was not running")
    for p in external_programs(s):
        typer.echo(f"left alone: the external {p.name} ({p.url})")
    if purge:
        import shutil

        shutil.rmtree(s.var, ignore_errors=True)
        typer.echo(f"deleted {s.var}")


def status(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Each component's process state and health. Exit status 1 if any is unhealthy."""
    s = settings()
    info = Supervisor(s).info()
    rows = []
    for p in programs(s) + external_programs(s):
        state = info.get(p.name, {}).get("statename", "NOT RUNNING")
        pid = info.get(p.name, {}).get("pid", 0)
        health = probe(p, s, timeout=1.5)
        if p.group == "external":
            state = "EXTERNAL"
        rows.append(
            {
                "name": p.name,
                "state": state,
                "pid": pid,
                "healthy": health.ok,
                "detail": health.detail,
                "url": p.url,
            }
        )
    if json_out:
        import json

        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(f"{'NAME':<18} {'STATE':<11} {'PID':>7}  {'HEALTH':<9} DETAIL")
        for r in rows:
            color = typer.colors.GREEN if r["healthy"] else typer.colors.RED
            typer.echo(f"{r['name']:<18} {r['state']:<11} {r['pid'] or '-':>7}  ", nl=False)
            typer.secho(f"{'healthy' if r['healthy'] else 'UNHEALTHY':<9}", fg=color, nl=False)
            typer.echo(f" {r['detail']}")
        if s.rabbitmq_cluster:
            _print_cluster(s)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


def _print_cluster(s: Settings) -> None:
    """Each RabbitMQ node as the cluster sees it, and the leader and copies of each shared
    queue (`iotctl queues` lists every queue)."""
    try:
        nodes = rabbit_cluster.nodes(s)
        shared = [q for q in rabbit_cluster.queues(s) if rabbit_cluster.is_shared(q)]
    except ControlError as exc:
        typer.secho(f"RabbitMQ cluster: no node answers ({exc})", fg=typer.colors.RED)
        return
    typer.echo("\nRabbitMQ cluster:")
    for n in nodes:
        state = "running" if n.get("running") else "DOWN"
        alarms = [a for a in ("mem_alarm", "disk_free_alarm") if n.get(a)]
        if alarms:
            state += "  alarms: " + ", ".join(alarms)
        if n.get("partitions"):
            state += "  partitioned from: " + ", ".join(n["partitions"])
        typer.echo(f"  {n['name']:<20} {state}")
    for q in shared:
        copies = rabbit_cluster.replicas(q)
        online = q.get("online")
        typer.echo(
            f"  {q['name']:<20} {q.get('type', ''):<8} leader {rabbit_cluster.leader(q)}; "
            f"{len(copies)} copies" + ("" if online is None else f", {len(online)} online")
        )


def logs(
    name: str = typer.Argument(..., help="Component name, as listed by `iotctl status`."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many lines from the end."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
) -> None:
    """Show a component's log (var/log/NAME.log)."""
    s = settings()
    names = [p.name for p in programs(s)] + ["supervisord"]
    _refuse_external(s, name)
    if name not in names:
        fail(f"unknown component {name!r}; one of: {', '.join(names)}")
    path = s.var / "log" / f"{name}.log"
    if not path.exists():
        fail(f"{path} does not exist yet (has the stack run?)")
    cmd = ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [str(path)]
    raise typer.Exit(subprocess.call(cmd))


def _refuse_external(s: Settings, name: str) -> None:
    if service_of(name) in s.external_services:
        fail(
            f"{name} is external (IOT_EXTERNAL_SERVICES, IOT_{service_of(name).upper()}_HOST): "
            "it runs on its own machine, not under this one's supervisor"
        )


def _component(name: str) -> str:
    s = settings()
    names = [p.name for p in programs(s)]
    _refuse_external(s, name)
    if name not in names:
        fail(f"unknown component {name!r}; one of: {', '.join(names)}")
    return name


def stop(name: str = typer.Argument(..., help="Component name.")) -> None:
    """Stop one component (the supervisor will not restart it until `iotctl start NAME`)."""
    Supervisor(settings()).stop_program(_component(name))
    typer.echo(f"{name} stopped")


def start(name: str = typer.Argument(..., help="Component name.")) -> None:
    """Start one stopped component."""
    Supervisor(settings()).start_program(_component(name))
    typer.echo(f"{name} started")


def restart(
    names: Annotated[list[str], typer.Argument(help="Component names (see `iotctl status`).")],
) -> None:
    """Restart components, one after the other (e.g. `iotctl restart api-1 api-2`: while one
    replica restarts, the other answers)."""
    components = [_component(n) for n in names]  # every name checked before anything restarts
    supervisor = Supervisor(settings())
    for name in components:
        supervisor.restart_program(name)
        typer.echo(f"{name} restarted")


def migrate() -> None:
    """Apply pending database migrations (also done by `iotctl up`)."""
    applied = stack_setup.migrate(settings().database_direct_url)
    typer.echo(
        f"{len(applied)} migration(s) applied" + (f": {', '.join(applied)}" if applied else "")
    )
