"""Machine roles (IOT_ROLES) and the processes of other machines (IOT_API_SERVERS, the workers'
metrics addresses): what `iotctl up` supervises and renders on a machine that runs a part of
the deployment. No processes, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from iot.settings import DATA_ROLES, ROLES
from iot.stack import ha, setup
from iot.stack.processes import programs
from iot.stack.setup import SetupError
from tests.unit.test_external_services import make, rendered, supervised

EVERYTHING_ELSEWHERE = {
    "external_services": ["postgres", "rabbitmq", "redis"],
    "postgres_host": "db.internal",
    "rabbitmq_host": "mq.internal",
    "redis_host": "cache.internal",
}


def scrape_targets(s) -> dict[str, list[str]]:
    config = yaml.safe_load((s.var / "conf" / "prometheus.yml").read_text())
    return {
        job["job_name"] + (f":{sc['labels']['worker']}" if "labels" in sc else ""): sc["targets"]
        for job in config["scrape_configs"]
        for sc in job["static_configs"]
    }


def test_every_role_named_renders_exactly_the_default_stack(tmp_path: Path) -> None:
    default = make(tmp_path / "a")
    assert default.roles == [*ROLES, *DATA_ROLES]
    named = make(tmp_path / "b", roles="monitoring,commandlog,sensors,api,edge")
    assert rendered(default) == rendered(named)  # without --ha the data roles change nothing


def test_a_worker_machine_runs_its_sensors_workers_and_nothing_of_the_other_roles(
    tmp_path: Path,
) -> None:
    s = make(
        tmp_path,
        roles="sensors",
        sensor_workers=2,
        via_toxiproxy=False,
        **EVERYTHING_ELSEWHERE,
    )
    rendered(s)
    assert supervised(s) == {"worker-sensors", "worker-sensors-2"}


def test_toxiproxy_stays_on_a_partial_machine_while_processes_reach_services_through_it(
    tmp_path: Path,
) -> None:
    s = make(tmp_path, roles="api", **EVERYTHING_ELSEWHERE)
    rendered(s)
    assert supervised(s) == {"api-1", "api-2", "toxiproxy"}


def test_the_edge_sends_to_remote_replicas_and_monitoring_scrapes_every_machine(
    tmp_path: Path,
) -> None:
    s = make(
        tmp_path,
        roles="edge,monitoring",
        api_servers="10.0.0.11:8101,10.0.0.12:8101",
        sensors_worker_metrics="10.0.0.21:9808",
        commandlog_worker_metrics="10.0.0.21:9809",
        via_toxiproxy=False,
        **EVERYTHING_ELSEWHERE,
    )
    files = rendered(s)
    upstream = files["nginx.conf"].split("upstream api {")[1].split("}")[0]
    assert "server 10.0.0.11:8101 " in upstream and "server 10.0.0.12:8101 " in upstream
    assert f"{s.host}:{s.api_ports[0]}" not in upstream  # no replica of its own
    targets = scrape_targets(s)
    assert targets["api"] == ["10.0.0.11:8101", "10.0.0.12:8101"]
    assert targets["worker:sensors"] == ["10.0.0.21:9808"]
    assert targets["worker:commandlog"] == ["10.0.0.21:9809"]
    assert "nginx" in supervised(s) and "prometheus" in supervised(s)
    assert not {p for p in supervised(s) if p.startswith(("api-", "worker-"))}


def test_remote_replicas_join_this_machines_own_in_the_upstream(tmp_path: Path) -> None:
    s = make(tmp_path, api_servers="10.0.0.11:8101")
    targets = (rendered(s), scrape_targets(s))[1]
    assert targets["api"] == [f"{s.host}:{p}" for p in s.api_ports] + ["10.0.0.11:8101"]


def test_an_edge_without_any_replica_is_refused_with_what_to_set(tmp_path: Path) -> None:
    s = make(tmp_path, roles="edge", **EVERYTHING_ELSEWHERE)
    (s.var / "conf").mkdir(parents=True)
    with pytest.raises(SetupError, match="IOT_API_SERVERS"):
        setup.render_configs(s)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("roles", "api,web", "'commandlog', 'monitoring', 'data-1', 'data-2' or 'data-3'"),
        ("api_servers", "10.0.0.11", "is not host:port"),
        ("sensors_worker_metrics", "host:port", "is not host:port"),
    ],
)
def test_a_wrong_role_or_address_is_refused_naming_it(
    tmp_path: Path, setting: str, value: str, says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        make(tmp_path, **{setting: value})


def test_workers_carry_the_machine_name_so_two_machines_with_one_host_name_do_not_clash(
    tmp_path: Path,
) -> None:
    def node(s) -> str:
        (worker,) = [p for p in programs(s) if p.name == "worker-sensors"]
        return worker.command[worker.command.index("-n") + 1]

    assert node(make(tmp_path / "a")) == "worker-sensors@%%h"  # the host name, as before
    assert node(make(tmp_path / "b", machine_name="workers-2")) == "worker-sensors@workers-2"
    with pytest.raises(ValidationError):
        make(tmp_path / "c", machine_name="two words")


# ----- the HA data tier on machines of its own (data-1, data-2, data-3) -----
DATA_HOSTS = "10.0.0.11,10.0.0.12,10.0.0.13"
HA_ELSEWHERE = {
    "ha": True,
    "ha_hosts": DATA_HOSTS,
    "external_services": ["rabbitmq"],
    "rabbitmq_host": "mq.internal",
    "via_toxiproxy": False,
}


@pytest.mark.parametrize(
    ("role", "members"),
    [
        ("data-1", {"etcd-1", "patroni-1", "redis-1", "sentinel-1"}),
        ("data-2", {"etcd-2", "patroni-2", "redis-2", "sentinel-2"}),
        ("data-3", {"etcd-3", "sentinel-3"}),
    ],
)
def test_a_data_host_runs_its_hosts_members_and_nothing_of_the_product(
    tmp_path: Path, role: str, members: set[str]
) -> None:
    s = make(tmp_path, roles=role, **HA_ELSEWHERE)
    rendered(s)
    assert supervised(s) == members  # no haproxy: no process of ours needs it here
    assert not s.product_role
    n = int(role[-1])
    etcd = next(p for p in programs(s) if p.name == f"etcd-{n}")
    assert f"--listen-client-urls http://10.0.0.1{n}:" in " ".join(etcd.command)


def test_the_products_machine_reaches_the_members_elsewhere_through_its_own_haproxy(
    tmp_path: Path,
) -> None:
    s = make(tmp_path, roles="edge,api,sensors,commandlog,monitoring", **HA_ELSEWHERE)
    files = rendered(s)
    assert supervised(s) == {
        "api-1", "api-2", "worker-sensors", "worker-commandlog", "nginx", "nginx-exporter",
        "prometheus", "alertmanager", "flower", "postgres-exporter", "redis-exporter", "haproxy",
        "toxiproxy",  # every product role: as on one machine
    }  # fmt: skip
    haproxy = files["haproxy.cfg"]
    assert "server patroni-1 10.0.0.11:5451 check port 8451" in haproxy
    assert "server redis-2 10.0.0.12:6392 check" in haproxy
    assert f"bind {s.host}:{s.postgres_port}" in haproxy
    targets = scrape_targets(s)
    assert targets["patroni"] == ["10.0.0.11:8451", "10.0.0.12:8452"]
    assert not (s.var / "postgres").exists()  # the first member's data is on data-1


def test_the_members_let_the_products_machines_in_by_network_without_replication(
    tmp_path: Path,
) -> None:
    s = make(tmp_path, roles="data-1", ha_client_networks="10.0.1.0/24", **HA_ELSEWHERE)
    rendered(s)
    patroni = yaml.safe_load((s.var / "ha" / "patroni-1" / "patroni.yml").read_text())
    hba = patroni["postgresql"]["pg_hba"]
    assert "host all all 10.0.1.0/24 scram-sha-256" in hba
    assert "host replication replicator 10.0.0.12/32 scram-sha-256" in hba
    assert not [line for line in hba if "replication" in line and "10.0.1.0" in line]
    assert patroni["bootstrap"]["pg_hba"] == hba


def test_data_roles_without_the_hosts_addresses_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="IOT_HA_HOSTS must give the three hosts"):
        make(tmp_path, ha=True, roles="api,data-1")
    with pytest.raises(ValidationError, match="is not a network"):
        make(tmp_path, ha_client_networks="10.0.1.0/33")
    make(tmp_path, roles="api")  # without --ha, no data role is needed


def test_the_superuser_reaches_a_primary_on_another_machine_over_tcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make(tmp_path, roles="api,data-2", **HA_ELSEWHERE)
    first, second = ha.pg_members(s)
    monkeypatch.setattr(ha, "primary", lambda s: first)  # the primary runs on data-1
    assert ha.superuser_address(s) == {
        "host": "10.0.0.11",
        "port": 5451,
        "password": s.postgres_superuser_password,
    }
    monkeypatch.setattr(ha, "primary", lambda s: second)  # after a failover: this machine's
    assert ha.superuser_address(s) == {"host": str(second.socket_dir), "port": 5452}
