"""``iotctl``: run and operate the IoT remote-control stack on this machine.

This module only assembles the command line; each command lives in the module of its name
under ``iot/cli/``:

- ``stack``: ``up``, ``down``, ``status``, ``logs``, ``stop``, ``start``, ``restart``, ``migrate``
- ``queues``: ``queues``
- ``users``: ``users create``, ``list``, ``set``, ``delete``
- ``commands``: ``commands list``, ``requeue``
- ``cache``: ``cache rebuild``
- ``device``: ``device simulate``
- ``ha``: ``ha bench-engines``
- plugins, found by their ``iotctl.plugins`` entry points (``pyproject.toml``) so that
  ``system/`` never imports them: ``chaos`` (``chaos/cli.py``), ``load`` (``loadtest/cli.py``),
  ``bench`` (``loadtest/bench.py``)
"""

from __future__ import annotations

import sys

import typer

from iot.cli import backup, cache, commands, device, ha, queues, rollouts, stack, users

app = typer.Typer(
    help="Run and operate the IoT remote-control stack: RabbitMQ, Postgres, Redis, nginx, "
    "toxiproxy, the API replicas, the workers, Flower and Prometheus, all as our own "
    "processes (data under var/, own ports) under one supervisor.",
    no_args_is_help=True,
    add_completion=False,
)

for command in (
    stack.up,
    stack.down,
    stack.status,
    stack.logs,
    stack.stop,
    stack.start,
    stack.restart,
    stack.migrate,
    queues.queues,
):
    app.command()(command)

app.add_typer(users.app, name="users")
app.add_typer(commands.app, name="commands")
app.add_typer(rollouts.app, name="rollouts")
app.add_typer(cache.app, name="cache")
app.add_typer(ha.app, name="ha")
app.add_typer(backup.app, name="backup")


def _register_plugins() -> None:
    """Commands contributed by other parts of the project (``chaos``, ``load``, ``bench``),
    found by entry point so that system/ never imports them."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="iotctl.plugins"):
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break iotctl
            print(f"iotctl: the `{ep.name}` commands are unavailable: {exc}", file=sys.stderr)
            continue
        app.add_typer(plugin, name=ep.name)


_register_plugins()
app.add_typer(device.app, name="device")
