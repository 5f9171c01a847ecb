"""Backing services that run elsewhere (IOT_EXTERNAL_SERVICES): what `iotctl up` renders and
supervises with Postgres, RabbitMQ and/or Redis on other hosts, and that nothing changes when
none is external. No processes, no network."""

from __future__ import annotations

import configparser
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from iot.cli import main as cli
from iot.settings import Settings, get_settings
from iot.stack import external, setup
from iot.stack.processes import external_programs, programs

SECRETS = {
    "secret_key": "s" * 32,
    "postgres_password": "p" * 24,
    "rabbitmq_password": "r" * 24,
    "redis_password": "d" * 24,
}
# The settings that only external services use: their hosts and the operator's credentials.
HOSTS = {
    "postgres_host": "db.example",
    "rabbitmq_host": "mq.example",
    "redis_host": "cache.example",
    "postgres_superuser_url": "postgresql://postgres:pw@db.example:5432/postgres",
    "rabbitmq_admin_user": "admin",
    "rabbitmq_admin_password": "a" * 20,
    "redis_admin_password": "x" * 20,
}
PORTS = {
    "postgres_port": 5432,
    "rabbitmq_port": 5672,
    "rabbitmq_management_port": 15672,
    "rabbitmq_prometheus_port": 15692,
    "redis_port": 6379,
}
ELSEWHERE = HOSTS | PORTS


def make(home: Path, **kw: Any) -> Settings:
    return Settings(_env_file=None, home=home, **SECRETS, **kw)  # type: ignore[call-arg]


def rendered(s: Settings) -> dict[str, str]:
    """Every file `iotctl up` renders, with the home folder made neutral."""
    (s.var / "conf").mkdir(parents=True, exist_ok=True)
    setup.render_configs(s)
    return {
        f.name: f.read_text().replace(str(s.home), "HOME")
        for f in sorted((s.var / "conf").iterdir())
    }


def supervised(s: Settings) -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((s.var / "conf" / "supervisord.conf").read_text())
    return {name.removeprefix("program:") for name in parser if name.startswith("program:")}


def proxies(s: Settings) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads((s.var / "conf" / "toxiproxy.json").read_text())}


def test_service_hosts_count_only_for_external_services_so_the_default_renders_as_before(
    tmp_path,
):
    plain = make(tmp_path / "a")
    # Every new setting given, but nothing named external: byte for byte the same stack.
    knobs = make(tmp_path / "b", **HOSTS)
    assert knobs.postgres_host == knobs.rabbitmq_host == knobs.redis_host == knobs.host
    assert rendered(plain) == rendered(knobs)
    assert {"rabbitmq", "postgres", "redis"} <= supervised(plain)
    assert external_programs(plain) == []
    for s in (plain, knobs):
        assert s.database_direct_url.endswith("@127.0.0.1:5442/iot")
        assert s.redis_direct_url.endswith("@127.0.0.1:6389/0")
        up = proxies(s)
        assert up["postgres"]["upstream"] == "127.0.0.1:5442"
        assert up["rabbitmq"]["upstream"] == "127.0.0.1:5682"
        assert up["redis"]["upstream"] == "127.0.0.1:6389"


def test_external_services_are_not_supervised_and_toxiproxy_points_at_their_hosts(tmp_path):
    s = make(tmp_path, external_services=["postgres", "rabbitmq", "redis"], **ELSEWHERE)
    files = rendered(s)
    names = supervised(s)
    assert not {n for n in names if n.startswith(("rabbitmq", "postgres", "redis"))} - {
        "postgres-exporter",
        "redis-exporter",
    }
    assert {"toxiproxy", "api-1", "api-2", "worker-sensors", "nginx", "flower"} <= names
    up = proxies(s)
    assert up["postgres"] == {
        "name": "postgres",
        "listen": f"127.0.0.1:{s.proxy_postgres_port}",
        "upstream": "db.example:5432",
        "enabled": True,
    }
    assert up["rabbitmq"]["upstream"] == "mq.example:5672"
    assert up["redis"]["upstream"] == "cache.example:6379"
    assert up["rabbitmq"]["listen"] == f"127.0.0.1:{s.proxy_rabbitmq_port}"
    # Our processes still go through toxiproxy on this machine; direct users go to the hosts.
    assert s.database_url.endswith(f"@127.0.0.1:{s.proxy_postgres_port}/iot")
    assert s.database_direct_url.endswith("@db.example:5432/iot")
    assert s.broker_url.endswith(f"@127.0.0.1:{s.proxy_rabbitmq_port}/")
    assert s.node_url(s.rabbitmq_nodes[0], direct=True).endswith("@mq.example:5672/")
    assert s.redis_url.endswith(f"@127.0.0.1:{s.proxy_redis_port}/0")
    assert s.redis_direct_url.endswith("@cache.example:6379/0")
    # Monitoring and Flower reach the services where they run.
    assert '"mq.example:15692"' in files["prometheus.yml"]
    progs = {p.name: p for p in programs(s)}
    assert progs["flower"].env["FLOWER_BROKER_API"].endswith("@mq.example:15672/api/")
    assert "redis://cache.example:6379" in progs["redis-exporter"].command
    assert "@db.example:5432/iot" in progs["postgres-exporter"].env["DATA_SOURCE_NAME"]


def test_only_the_files_that_name_the_services_addresses_change(tmp_path):
    plain = rendered(make(tmp_path / "a"))
    elsewhere = rendered(
        make(tmp_path / "b", external_services=["postgres", "rabbitmq", "redis"], **HOSTS)
    )
    assert plain.keys() == elsewhere.keys()
    changed = {name for name in plain if plain[name] != elsewhere[name]}
    assert changed == {"toxiproxy.json", "prometheus.yml", "supervisord.conf"}


def test_production_profile_connects_straight_to_the_external_hosts(tmp_path):
    s = make(
        tmp_path,
        external_services=["postgres", "rabbitmq", "redis"],
        via_toxiproxy=False,
        db_role="api",
        **ELSEWHERE,
    )
    assert s.database_url.startswith("postgresql://iot_api:")
    assert s.database_url.endswith("@db.example:5432/iot")
    assert s.broker_url.endswith("@mq.example:5672/")
    assert s.redis_url.endswith("@cache.example:6379/0")


def test_one_external_service_leaves_the_others_on_this_machine(tmp_path):
    s = make(tmp_path, external_services=["redis"], **ELSEWHERE)
    rendered(s)
    names = supervised(s)
    assert {"rabbitmq", "postgres"} <= names and "redis" not in names
    up = proxies(s)
    assert up["redis"]["upstream"] == "cache.example:6379"
    assert up["postgres"]["upstream"] == f"127.0.0.1:{s.postgres_port}"
    assert s.postgres_host == s.rabbitmq_host == "127.0.0.1"
    assert [(p.name, p.group, p.probe) for p in external_programs(s)] == [
        ("redis", "external", "tcp:cache.example:6379")
    ]


def test_status_entries_of_external_services_probe_their_own_hosts(tmp_path):
    s = make(tmp_path, external_services=["postgres", "rabbitmq", "redis"], **ELSEWHERE)
    entries = {p.name: p for p in external_programs(s)}
    assert entries["postgres"].probe == "sql"  # as the owner, at db.example (database_direct_url)
    assert entries["rabbitmq"].probe == "tcp:mq.example:5672"
    assert entries["rabbitmq"].url == "http://mq.example:15672/"
    assert all(p.command == [] and p.group == "external" for p in entries.values())


def test_the_setting_is_a_comma_separated_list_of_known_services(monkeypatch, tmp_path):
    monkeypatch.setenv("IOT_EXTERNAL_SERVICES", "postgres, redis")
    monkeypatch.setenv("IOT_POSTGRES_HOST", "db.example")
    s = make(tmp_path)
    assert s.external_services == ["postgres", "redis"]
    assert s.postgres_host == "db.example" and s.redis_host == "127.0.0.1"  # default: IOT_HOST
    monkeypatch.setenv("IOT_EXTERNAL_SERVICES", "postgres,mysql")
    with pytest.raises(ValidationError, match="mysql"):
        make(tmp_path)


def test_an_external_service_that_does_not_answer_is_named_with_its_address(tmp_path, monkeypatch):
    s = make(tmp_path, external_services=["redis"], **ELSEWHERE)

    def refuse(address: tuple[str, int], timeout: float) -> socket.socket:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(external.socket, "create_connection", refuse)
    with pytest.raises(setup.SetupError) as caught:
        external.wait_answers(s, timeout=0)
    message = str(caught.value)
    assert "external Redis does not answer at cache.example:6379" in message
    assert "IOT_REDIS_HOST, IOT_REDIS_PORT" in message and "firewall" in message


def test_an_external_postgres_needs_the_superuser_url(tmp_path):
    s = make(tmp_path, external_services=["postgres"], postgres_host="db.example")
    with pytest.raises(setup.SetupError, match="IOT_POSTGRES_SUPERUSER_URL"):
        setup.superuser_connection(s)


@pytest.fixture
def runner(monkeypatch, tmp_path) -> Iterator[CliRunner]:
    monkeypatch.setattr(setup, "STACK_ENV", tmp_path / "stack.env")  # never the real one
    monkeypatch.setenv("IOT_HOME", str(tmp_path))
    monkeypatch.setenv("IOT_EXTERNAL_SERVICES", "rabbitmq,redis")
    yield CliRunner()
    get_settings.cache_clear()  # the commands cached these settings


def test_up_refuses_the_cluster_with_an_external_rabbitmq(runner, tmp_path):
    result = runner.invoke(cli.app, ["up", "--cluster"])
    assert result.exit_code == 1
    assert "RabbitMQ is external" in result.output and "--no-cluster" in result.output
    assert not (tmp_path / "stack.env").exists()  # nothing kept from the refused run


def test_components_that_run_elsewhere_are_not_stopped_or_started_here(runner):
    for args in (["stop", "redis"], ["start", "rabbitmq"], ["logs", "redis"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 1, args
        assert "is external" in result.output and "not under this one's supervisor" in (
            result.output
        )
