"""Machine roles (IOT_ROLES) and the processes of other machines (IOT_API_SERVERS, the workers'
metrics addresses): what `iotctl up` supervises and renders on a machine that runs a part of
the deployment. No processes, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from iot.settings import ROLES
from iot.stack import setup
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
    assert default.roles == list(ROLES)
    named = make(tmp_path / "b", roles="monitoring,commandlog,sensors,api,edge")
    assert rendered(default) == rendered(named)


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
        ("roles", "api,web", "'edge', 'api', 'sensors', 'commandlog' or 'monitoring'"),
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
