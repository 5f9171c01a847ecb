"""The Compose bundle's file, without a Docker engine: `docker-compose config` accepts it with
the configuration compose/render.py renders, every file it mounts exists, and every address in
the rendered configuration names a service of the file (what `make compose-test` runs for real).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"

pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed (setup.sh)"
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    subprocess.run([sys.executable, str(COMPOSE / "render.py"), str(out)], check=True)
    return out


def compose_config(rendered: Path, *files: str) -> dict[str, Any]:
    result = subprocess.run(
        ["docker-compose", *(a for f in files for a in ("-f", str(COMPOSE / f))), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "IOT_COMPOSE_RENDERED": str(rendered)},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(rendered: Path) -> dict[str, Any]:
    return compose_config(rendered, "docker-compose.yml")


@pytest.fixture(scope="module")
def cluster(rendered: Path) -> dict[str, Any]:
    return compose_config(rendered, "docker-compose.yml", "docker-compose.cluster.yml")


def test_the_whole_stack_is_in_the_file(config: dict[str, Any]) -> None:
    services = set(config["services"])
    assert {
        "rabbitmq", "postgres", "redis", "toxiproxy", "migrate", "api-1", "api-2",
        "worker-sensors", "worker-commandlog", "flower", "nginx", "prometheus", "alertmanager",
        "postgres-exporter", "redis-exporter", "nginx-exporter", "grafana",
    } <= services  # fmt: skip
    for name, svc in config["services"].items():
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), f"{name}: pin it"
        if name != "migrate":
            assert "healthcheck" in svc, f"{name} has no health check"


@pytest.fixture(scope="module")
def with_ha(rendered: Path) -> dict[str, Any]:
    return compose_config(rendered, "docker-compose.yml", "docker-compose.ha.yml")


@pytest.mark.parametrize("variant", ["config", "cluster", "with_ha"])
def test_every_mounted_file_exists(variant: str, request: pytest.FixtureRequest) -> None:
    services = request.getfixturevalue(variant)["services"]
    mounts = [
        (name, v["source"] if isinstance(v, dict) else v.split(":")[0])
        for name, svc in services.items()
        for v in svc.get("volumes", [])
    ]
    binds = [(name, src) for name, src in mounts if src.startswith("/")]
    assert len(binds) > 10
    missing = [f"{name}: {src}" for name, src in binds if not Path(src).exists()]
    assert not missing, missing


def test_the_cluster_has_three_nodes_that_our_processes_know(
    cluster: dict[str, Any], rendered: Path
) -> None:
    services = cluster["services"]
    assert {"rabbitmq-2", "rabbitmq-3"} <= set(services)
    for name in ("api-1", "api-2", "worker-sensors", "worker-commandlog", "flower"):
        assert services[name]["environment"]["IOT_RABBITMQ_CLUSTER"] == "true", name
    proxies = json.loads((rendered / "cluster" / "conf" / "toxiproxy.json").read_text())
    assert [p["upstream"] for p in proxies if p["name"].startswith("rabbitmq")] == [
        "rabbitmq:5682",
        "rabbitmq:5683",
        "rabbitmq:5684",
    ]
    node2 = (rendered / "cluster" / "conf" / "rabbitmq-2.conf").read_text()
    assert "cluster_formation.classic_config.nodes.1 = iot@localhost" in node2


@pytest.mark.parametrize("variant", ["config", "with_ha"])
def test_our_images_build_from_targets_that_exist(
    variant: str, request: pytest.FixtureRequest
) -> None:
    dockerfile = (COMPOSE / "images" / "Dockerfile.services").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M))
    for name, svc in request.getfixturevalue(variant)["services"].items():
        build = svc.get("build")
        if build and build["dockerfile"] == "Dockerfile.services":
            assert build["target"] in targets, name
        if build:
            assert build["args"]["BASE"], f"{name}: the base image is a build argument"


def test_rendered_addresses_name_services_of_the_file(
    rendered: Path, config: dict[str, Any]
) -> None:
    services = set(config["services"])
    conf = rendered / "conf"
    prometheus = yaml.safe_load((conf / "prometheus.yml").read_text())
    static = [sc for job in prometheus["scrape_configs"] for sc in job["static_configs"]]
    static += [sc for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"]]
    targets = [t for sc in static for t in sc["targets"]]
    upstreams = [p["upstream"] for p in json.loads((conf / "toxiproxy.json").read_text())]
    nginx = re.findall(r"^\s*server (\S+) ", (conf / "nginx.conf").read_text(), re.M)
    for address in targets + upstreams + nginx:
        host = address.rsplit(":", 1)[0]
        assert host in services, f"{address} names no service of the compose file"
    assert len(nginx) == 2 and len(upstreams) == 3
    # Every service listens on all of its container's addresses, nowhere on loopback only.
    for name in ("nginx.conf", "redis.conf", "rabbitmq.conf", "toxiproxy.json"):
        assert "127.0.0.1" not in (conf / name).read_text(), name
    # Paths are the containers' own, never this machine's.
    for path in [*conf.iterdir(), *(rendered / "env").iterdir()]:
        assert str(ROOT) not in path.read_text() and str(rendered) not in path.read_text(), path


def test_secrets_are_generated_once_and_not_in_the_file(rendered: Path) -> None:
    secrets = (rendered / "var" / "secrets.env").read_text()
    subprocess.run([sys.executable, str(COMPOSE / "render.py"), str(rendered)], check=True)
    assert (rendered / "var" / "secrets.env").read_text() == secrets
    password = re.search(r"^IOT_RABBITMQ_PASSWORD=(.+)$", secrets, re.M)
    assert password and password.group(1) in (rendered / "conf" / "rabbitmq.conf").read_text()
    assert password.group(1) not in (COMPOSE / "docker-compose.yml").read_text()


HA_HOSTS = ("10.79.1.11", "10.79.1.12", "10.79.1.13")


def test_the_ha_profile_runs_each_hosts_members_on_that_hosts_address(
    with_ha: dict[str, Any], rendered: Path
) -> None:
    services = with_ha["services"]
    for n, address in enumerate(HA_HOSTS, 1):
        holder = services[f"etcd-{n}"]
        assert holder["networks"]["default"]["ipv4_address"] == address
        members = [f"sentinel-{n}"] + ([f"patroni-{n}", f"redis-{n}"] if n < 3 else [])
        for name in members:
            assert services[name]["network_mode"] == f"service:etcd-{n}", name
            assert "healthcheck" in services[name], name
            # member-start runs what render.py wrote for it: the native program's command
            command = (rendered / "ha" / "cmd" / services[name]["command"][0]).read_text()
            assert command.startswith("/usr/bin/"), name
    subnet = with_ha["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert subnet == "10.79.1.0/24"
    # Patroni's members know each other and the etcd members by those addresses, and let
    # every container of the network in with a password (their addresses are not fixed).
    patroni = yaml.safe_load((rendered / "ha" / "patroni" / "patroni-2.yml").read_text())
    etcd = zip(HA_HOSTS, (2479, 2481, 2483), strict=True)
    assert patroni["etcd"]["hosts"] == [f"{a}:{p}" for a, p in etcd]
    assert patroni["postgresql"]["connect_address"] == "10.79.1.12:5452"
    assert "host all all 10.79.1.0/24 scram-sha-256" in patroni["postgresql"]["pg_hba"]
    assert patroni["bootstrap"]["dcs"]["synchronous_mode"] is True
    assert (rendered / "ha" / "user" / "patroni-1").exists()
    assert not (rendered / "ha" / "user" / "redis-1").exists()
    etcd3 = (rendered / "ha" / "cmd" / "etcd-3").read_text()
    assert "--listen-peer-urls\nhttp://10.79.1.13:2484\n" in etcd3
    sentinel = (rendered / "ha" / "seed" / "sentinel-3" / "sentinel.conf").read_text()
    assert "bind 10.79.1.13" in sentinel and "sentinel monitor iot 10.79.1.11 6391 2" in sentinel


def test_the_ha_profile_keeps_every_others_address(
    with_ha: dict[str, Any], config: dict[str, Any], rendered: Path
) -> None:
    services = with_ha["services"]
    assert set(config["services"]) < set(services)
    # `postgres` and `redis` are haproxy in front of the members, on the single ones' ports
    for name in ("postgres", "redis"):
        assert services[name]["image"] == "iot-ha:1"
        assert services[name]["entrypoint"][0] == "/usr/sbin/haproxy", name
    haproxy = (rendered / "ha" / "conf" / "haproxy.cfg").read_text()
    assert "bind 0.0.0.0:5442" in haproxy and "bind 0.0.0.0:6389" in haproxy
    assert "server patroni-2 10.79.1.12:5452 check port 8452" in haproxy
    # the rest of the stack's configuration is the single one's; Prometheus learns the members
    prometheus = yaml.safe_load((rendered / "ha" / "conf" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    targets = {t for j in jobs.values() for sc in j["static_configs"] for t in sc["targets"]}
    assert {"10.79.1.11:8451", "10.79.1.13:2483", "10.79.1.12:26392", "postgres:8404"} <= targets
    mounted = [v["source"] if isinstance(v, dict) else v.split(":")[0]
               for v in services["prometheus"]["volumes"]]  # fmt: skip
    assert str(rendered / "ha" / "conf" / "prometheus.yml") in mounted
    # the database is prepared over TCP through haproxy (the members' sockets are theirs)
    assert services["migrate"]["environment"]["IOT_EXTERNAL_SERVICES"] == "postgres"
    for path in (rendered / "ha").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert str(ROOT) not in text and str(rendered) not in text, path
