"""The RabbitMQ cluster: `iotctl up --cluster` makes three nodes with every shared queue on each,
its chaos experiments (short forms) lose nothing, and `iotctl up --no-cluster` goes back to one
node without losing a queued message.

The module switches the shared stack to the cluster and back (about a minute and a half each
way), so it runs with the other chaos experiments (marker `chaos`), and leaves the stack in
the mode it found it in.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator

import pika
import pytest

from chaos import experiment, report
from iot.settings import Settings
from iot.stack import cluster
from tests.chaos.stack_mode import IOTCTL, iotctl_up, switched

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

SHARED = ("sensors.data", "commands.data", "commands.log")


def shared_queues(s: Settings) -> dict[str, dict]:
    return {q["name"]: q for q in cluster.queues(s) if q["name"] in SHARED}


RESTORE: dict[str, bool] = {}  # "single": the module switched the stack to the cluster


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[Settings]:
    """The stack as a three-node cluster for the module, then the mode it was in."""
    yield from switched("cluster", Settings().rabbitmq_cluster, RESTORE)


def test_the_cluster_has_three_nodes_and_every_shared_queue_on_each(cluster_stack: Settings):
    s = cluster_stack
    names = [n.nodename for n in s.rabbitmq_nodes]
    assert names == ["iot@localhost", "iot-2@localhost", "iot-3@localhost"]
    running = {n["name"] for n in cluster.nodes(s) if n.get("running")}
    assert running == set(names)
    queues = shared_queues(s)
    assert set(queues) == set(SHARED)
    for name, q in queues.items():
        assert cluster.replicas(q) == sorted(names), f"{name}: {cluster.replicas(q)}"
    assert queues["commands.data"]["type"] == "quorum"
    # the API and the workers know every node (one toxiproxy proxy per node)
    assert s.broker_url.count(";") == 2
    status = subprocess.run([str(IOTCTL), "status"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    for program in ("rabbitmq", "rabbitmq-2", "rabbitmq-3"):
        assert f"\n{program} " in status.stdout
    assert "commands.data        quorum" in status.stdout


@pytest.mark.parametrize("name", experiment.cluster_names())
def test_cluster_experiment_loses_nothing_and_recovers(cluster_stack: Settings, name: str):
    result = experiment.run(experiment.load(name), cluster_stack)
    folder = report.write(result)
    for kind, counts in result["counts"].items():
        assert counts["clean"], f"{kind}: {counts} (report: {folder})"
    assert result["drained"], f"did not drain (report: {folder})"
    assert result["passed"], f"{result['problems']} (report: {folder})"


def test_back_to_one_node_keeps_the_queues_and_their_messages(cluster_stack: Settings):
    if not RESTORE.get("single"):
        pytest.skip("the stack was a cluster before this module: it stays one")
    # A quorum queue of three members whose 100 confirmed messages must survive the shrink
    # (the leader may be on a node that leaves).
    queue = f"test.cluster.{uuid.uuid4().hex[:8]}"
    url = cluster_stack.node_url(cluster_stack.rabbitmq_nodes[1], direct=True)
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for i in range(100):
            channel.basic_publish(
                "", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2), mandatory=True
            )
    assert len(cluster.replicas(cluster_queue(cluster_stack, queue))) == 3
    iotctl_up("--no-cluster")
    RESTORE.pop("single")
    s = Settings()
    try:
        assert not s.rabbitmq_cluster and len(s.rabbitmq_nodes) == 1
        assert [n["name"] for n in cluster.nodes(s)] == ["iot@localhost"]
        queues = shared_queues(s)
        assert set(queues) == set(SHARED)
        for name, q in queues.items():
            assert cluster.replicas(q) == ["iot@localhost"], f"{name}: {cluster.replicas(q)}"
        # The workers were restarted last by `iotctl up` (they learn the nodes at start): each
        # shared queue has its consumer again within seconds (the management API's figures
        # lag by up to 5 s).
        waiting = set(SHARED)
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            queues = shared_queues(s)
            waiting = {name for name in SHARED if queues[name]["consumers"] < 1}
            time.sleep(1)
        assert not waiting, f"no consumer 30 s after the switch: {sorted(waiting)}"
        assert not (s.var / "rabbitmq-2").exists() and not (s.var / "rabbitmq-3").exists()
        kept = cluster_queue(s, queue)
        assert cluster.replicas(kept) == ["iot@localhost"]
        assert kept["messages_ready"] == 100
    finally:
        with pika.BlockingConnection(pika.URLParameters(s.node_url(s.rabbitmq_nodes[0]))) as c:
            c.channel().queue_delete(queue)


def cluster_queue(s: Settings, name: str) -> dict:
    return next(q for q in cluster.queues(s) if q["name"] == name)
