"""The cluster's rendered configuration, without the stack: what `iotctl up --cluster` writes
and what stays byte for byte the same with one node (so switching never restarts node 1 or
toxiproxy for nothing). Runs without the `chaos` marker: no network, no processes."""

from __future__ import annotations

import json
from pathlib import Path

from iot.settings import Settings
from iot.stack import setup
from iot.stack.processes import programs


def render(home: Path, cluster: bool) -> tuple[Settings, Path]:
    s = Settings(
        home=home,
        secret_key="s" * 32,
        postgres_password="p" * 24,
        rabbitmq_password="r" * 24,
        rabbitmq_cluster=cluster,
    )
    (s.var / "conf").mkdir(parents=True)
    setup.render_configs(s)
    return s, s.var / "conf"


def test_three_nodes_with_their_own_ports_data_and_proxies(tmp_path: Path):
    s, conf = render(tmp_path, cluster=True)
    nodes = s.rabbitmq_nodes
    assert [n.nodename for n in nodes] == ["iot@localhost", "iot-2@localhost", "iot-3@localhost"]
    for attr in ("port", "dist_port", "management_port", "prometheus_port", "proxy_port"):
        assert len({getattr(n, attr) for n in nodes}) == 3, attr
    assert len({n.data for n in nodes}) == 3
    by_name = {p.name: p for p in programs(s)}
    for n in nodes:
        env = by_name[n.program].env
        assert env["RABBITMQ_NODENAME"] == n.nodename
        assert env["RABBITMQ_MNESIA_BASE"].startswith(str(n.data))
        assert env["HOME"] == str(s.var / "rabbitmq" / "home")  # one Erlang cookie
        assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    # nodes 2 and 3 join node 1 on their first boot
    for n in nodes[1:]:
        text = (conf / f"{n.program}.conf").read_text()
        assert f"listeners.tcp.1 = 127.0.0.1:{n.port}" in text
        assert f"management.tcp.port = {n.management_port}" in text
        assert f"prometheus.tcp.port = {n.prometheus_port}" in text
        assert "cluster_formation.classic_config.nodes.1 = iot@localhost" in text
        assert "--wait-port" in by_name[n.program].command
    proxies = {p["name"]: p for p in json.loads((conf / "toxiproxy.json").read_text())}
    for n in nodes:
        assert proxies[n.program]["listen"] == f"127.0.0.1:{n.proxy_port}"
        assert proxies[n.program]["upstream"] == f"127.0.0.1:{n.port}"
    prometheus = (conf / "prometheus.yml").read_text()
    for n in nodes:
        assert f'"127.0.0.1:{n.prometheus_port}"' in prometheus
    # the API and workers get every node, each through its own proxy
    urls = s.broker_url.split(";")
    assert [u.rsplit(":", 1)[1] for u in urls] == [f"{n.proxy_port}/" for n in nodes]
    direct = Settings(rabbitmq_cluster=True, via_toxiproxy=False, rabbitmq_password="r" * 24)
    assert [u.rsplit(":", 1)[1] for u in direct.broker_url.split(";")] == [
        "5682/",
        "5683/",
        "5684/",
    ]


def test_one_node_renders_as_before_the_cluster_existed(tmp_path: Path):
    s, conf = render(tmp_path / "one", cluster=False)
    _, cluster_conf = render(tmp_path / "three", cluster=True)
    assert [n.program for n in s.rabbitmq_nodes] == ["rabbitmq"]
    assert not (conf / "rabbitmq-2.conf").exists()
    assert "rabbitmq-2" not in {p.name for p in programs(s)}
    assert ";" not in s.broker_url
    # node 1's own config is the same in both modes: switching does not restart it
    assert (conf / "rabbitmq.conf").read_text() == (cluster_conf / "rabbitmq.conf").read_text()
    proxies = [p["name"] for p in json.loads((conf / "toxiproxy.json").read_text())]
    assert proxies == ["rabbitmq", "postgres", "redis"]
