"""The RabbitMQ cluster: form it (nodes 2 and 3 joined, queues replicated on every node) and
shrink it back to node 1 without losing a queued message.

Where each queue lives (``iotctl queues`` shows members and leaders):

- ``commands.data`` is a quorum queue: grown to a member on every node (``rabbitmq-queues
  grow``); a publish is confirmed once a majority stored it, and any two nodes keep serving.
- ``sensors.data`` and ``commands.log`` are durable classic queues (messages.py declares them;
  a queue's type cannot change without deleting it, i.e. a migration through an empty queue).
  In the cluster a policy mirrors them on every node with automatic synchronisation: a publish
  is confirmed once every mirror has it, and a mirror takes over when the leader's node dies.
- Celery's event and remote-control queues are transient (auto-delete): they live on the node
  of the connection that made them and are declared again after a failover.
- ``celery_delayed_*`` quorum queues, left by a Celery version that declared them for ETA
  tasks, are unused (the workers no longer declare them, the product sends no ETA task): not
  grown; delete them once empty.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import httpx

from iot.settings import RabbitNode, Settings
from iot.stack.control import ControlError, rabbitmq_api
from iot.stack.processes import rabbitmq_env

MIRROR_POLICY = "cluster-mirror"
MIRRORED = ("sensors.data", "commands.log")
QUORUM = ("commands.data",)
MIRROR_PATTERN = "^(" + "|".join(q.replace(".", r"\.") for q in MIRRORED) + ")$"
RABBIT_BIN = "/usr/lib/rabbitmq/bin"


def rabbit_tool(s: Settings, tool: str, *args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl`` / ``rabbitmq-queues`` against node 1 (our cookie, our epmd).

    Raises:
        ControlError: the tool failed; its output says why.
    """
    node = s.rabbitmq_nodes[0]
    result = subprocess.run(
        [f"{RABBIT_BIN}/{tool}", "-n", node.nodename, *args],
        env={"PATH": "/usr/bin:/bin", **rabbitmq_env(s, node)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ControlError(f"{tool} {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def _api(s: Settings, method: str, path: str, **kw: Any) -> Any:
    try:
        r = rabbitmq_api(s, method, path, **kw)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise ControlError(f"RabbitMQ management API, {method} {path}: {exc}") from exc
    return r.json() if r.content else None


def nodes(s: Settings) -> list[dict[str, Any]]:
    """Every node the cluster knows (running or not): name, running, partitions, alarms."""
    columns = "name,running,partitions,mem_alarm,disk_free_alarm,uptime"
    return list(_api(s, "GET", "nodes", params={"columns": columns}))


def queues(s: Settings) -> list[dict[str, Any]]:
    """The vhost's queues with their type, leader and members (quorum) or mirrors (classic)."""
    columns = (
        "name,type,node,leader,members,online,slave_nodes,synchronised_slave_nodes,"
        "messages_ready,messages_unacknowledged,consumers,policy"
    )
    return list(_api(s, "GET", "queues/%2F", params={"columns": columns}))


def replicas(q: dict[str, Any]) -> list[str]:
    """The nodes holding a copy of a queue (members of a quorum queue; leader and synchronised
    mirrors of a classic one)."""
    if q.get("type") == "quorum":
        return sorted(q.get("members") or [])
    return sorted({q.get("node", ""), *(q.get("synchronised_slave_nodes") or [])} - {""})


def leader(q: dict[str, Any]) -> str:
    return str(q.get("leader") or q.get("node") or "")


def form(s: Settings, timeout: float = 180, say: Any = print) -> None:
    """Make the running nodes one cluster with every shared queue on all of them.

    Raises:
        ControlError: a node did not join, or a queue could not be replicated in time.
    """
    wanted = {n.nodename for n in s.rabbitmq_nodes}
    deadline = time.monotonic() + timeout
    while True:
        running = {n["name"] for n in nodes(s) if n.get("running")}
        if wanted <= running:
            break
        if time.monotonic() > deadline:
            raise ControlError(
                f"RabbitMQ nodes not in the cluster after {timeout:.0f}s: "
                f"{', '.join(sorted(wanted - running))}; see `iotctl logs rabbitmq-2`"
            )
        time.sleep(2)
    _mirror(s, {"ha-mode": "all"})
    for node in s.rabbitmq_nodes[1:]:
        missing = [
            q["name"]
            for q in queues(s)
            if q["name"] in QUORUM and node.nodename not in (q.get("members") or [])
        ]
        if missing:
            say(f"growing {', '.join(missing)} to {node.nodename}")
            pattern = "^(" + "|".join(q.replace(".", r"\.") for q in missing) + ")$"
            rabbit_tool(
                s, "rabbitmq-queues", "grow", node.nodename, "all", "--queue-pattern", pattern
            )
    while True:
        short = {q["name"]: replicas(q) for q in queues(s) if is_shared(q)}
        short = {k: v for k, v in short.items() if set(v) != wanted}
        if not short:
            return
        if time.monotonic() > deadline:
            raise ControlError(f"queues not on every node after {timeout:.0f}s: {short}")
        time.sleep(2)


def _mirror(s: Settings, where: dict[str, Any]) -> None:
    """Mirror the classic shared queues where ``where`` says, synchronising new mirrors."""
    definition = {**where, "ha-sync-mode": "automatic"}
    _api(
        s,
        "PUT",
        f"policies/%2F/{MIRROR_POLICY}",
        json={
            "pattern": MIRROR_PATTERN,
            "apply-to": "queues",
            "definition": definition,
            "priority": 1,
        },
    )


def is_shared(q: dict[str, Any]) -> bool:
    """One of the product's queues (replicated on every node of the cluster)."""
    return q["name"] in QUORUM or q["name"] in MIRRORED


def extra_nodes(s: Settings) -> list[str]:
    """Cluster nodes that the settings no longer want (after `iotctl up --no-cluster`)."""
    try:
        known = {n["name"] for n in nodes(s)}
    except ControlError:
        return []  # node 1 is down: nothing to shrink from here
    return sorted(known - {n.nodename for n in s.rabbitmq_nodes})


def shrink(s: Settings, leaving: list[str], timeout: float = 120, say: Any = print) -> None:
    """Move every shared queue onto the nodes that stay, while the leaving ones still run
    (a quorum queue changes its members only with a majority of them online).

    Raises:
        ControlError: a queue could not be moved in time.
    """
    staying = sorted({n["name"] for n in nodes(s)} - set(leaving))
    _mirror(s, {"ha-mode": "nodes", "ha-params": staying})
    for name in leaving:
        say(f"moving the quorum queues' members off {name}")
        rabbit_tool(s, "rabbitmq-queues", "shrink", name)
    deadline = time.monotonic() + timeout
    while True:
        away = {q["name"]: replicas(q) for q in queues(s) if is_shared(q)}
        away = {k: v for k, v in away.items() if set(v) - set(staying)}
        if not away:
            break
        if time.monotonic() > deadline:
            raise ControlError(f"queues still on {', '.join(leaving)}: {away}")
        time.sleep(2)
    _api(s, "DELETE", f"policies/%2F/{MIRROR_POLICY}")
    # Under pause_minority node 1 would pause once it sees two of three nodes stop: until they
    # are forgotten, it ignores their departure.
    partition_handling(s, "ignore")


def partition_handling(s: Settings, mode: str) -> None:
    """Set node 1's cluster_partition_handling while it runs (rabbitmq.conf says
    pause_minority, which it reads again at its next start)."""
    rabbit_tool(
        s,
        "rabbitmqctl",
        "eval",
        f"application:set_env(rabbit, cluster_partition_handling, {mode}).",
    )


def forget(s: Settings, leaving: list[str], say: Any = print) -> None:
    """After the leaving nodes stopped: remove them from node 1's cluster and delete their data
    (a later `iotctl up --cluster` starts them blank, and they join again)."""
    data = {RabbitNode.of(s, i).nodename: RabbitNode.of(s, i).data for i in range(2, 4)}
    for name in leaving:
        say(f"forgetting {name}")
        rabbit_tool(s, "rabbitmqctl", "forget_cluster_node", name)
        if name in data and data[name].exists():
            shutil.rmtree(data[name])
    partition_handling(s, "pause_minority")


def sync_proxies(s: Settings) -> list[str]:
    """Create the toxiproxy proxies the rendered toxiproxy.json lists and toxiproxy lacks, point
    those whose upstream changed at the new one, and delete RabbitMQ node proxies it no longer
    lists; the other proxies and their connections are left alone. Returns what changed.

    Raises:
        ControlError: toxiproxy refused.
    """
    wanted = {p["name"]: p for p in json.loads((s.var / "conf" / "toxiproxy.json").read_text())}
    base = f"http://{s.host}:{s.toxiproxy_port}"
    changed = []
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            have = http.get("/proxies").raise_for_status().json()
            for name, proxy in wanted.items():
                if name not in have:
                    http.post("/proxies", json=proxy).raise_for_status()
                    changed.append(f"+{name}")
                elif have[name]["upstream"] != proxy["upstream"]:  # a service moved elsewhere
                    body = {"upstream": proxy["upstream"]}
                    http.post(f"/proxies/{name}", json=body).raise_for_status()
                    changed.append(f"~{name}")
            for name in have:
                if name.startswith("rabbitmq-") and name not in wanted:
                    http.delete(f"/proxies/{name}").raise_for_status()
                    changed.append(f"-{name}")
    except httpx.HTTPError as exc:
        raise ControlError(f"toxiproxy: {exc}") from exc
    return changed
