"""``iotctl queues``: RabbitMQ's queue depths, leaders and copies (the runbooks ask it first)."""

from __future__ import annotations

import typer

from iot.cli.common import fail, settings
from iot.stack import cluster
from iot.stack.control import ControlError


def queues() -> None:
    """RabbitMQ queue depths: ready and unacked messages and consumers, deepest first; each
    queue's type, the node that leads it and the nodes holding a copy (members of a quorum
    queue, synchronised mirrors of a classic one)."""
    s = settings()
    try:
        rows = cluster.queues(s)
    except ControlError as exc:
        fail(f"{exc}; is rabbitmq up? `iotctl status`")
    rows.sort(key=lambda q: -(q.get("messages_ready", 0) + q.get("messages_unacknowledged", 0)))
    short = {n.nodename: f"{n.index}" for n in s.rabbitmq_nodes}
    typer.echo(
        f"{'QUEUE':<48} {'READY':>8} {'UNACKED':>8} {'CONSUMERS':>9}  {'TYPE':<7} LEADER/COPIES"
    )
    for q in rows:
        lead = cluster.leader(q)
        copies = ",".join(short.get(n, n) for n in cluster.replicas(q))
        online = q.get("online")
        down = (
            ""
            if online is None
            else ",".join(short.get(n, n) for n in cluster.replicas(q) if n not in online)
        )
        typer.echo(
            f"{q['name']:<48} {q.get('messages_ready', 0):>8}"
            f" {q.get('messages_unacknowledged', 0):>8} {q.get('consumers', 0):>9}"
            f"  {q.get('type', ''):<7} {short.get(lead, lead)}/{copies}"
            + (f" (offline: {down})" if down else "")
        )
    if len(s.rabbitmq_nodes) > 1:
        typer.echo("nodes: " + ", ".join(f"{i}={n}" for n, i in short.items()))
