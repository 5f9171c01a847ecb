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


@pytest.fixture(scope="module")
def config(rendered: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "IOT_COMPOSE_RENDERED": str(rendered)},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


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


def test_every_mounted_file_exists(config: dict[str, Any]) -> None:
    mounts = [
        (name, v["source"] if isinstance(v, dict) else v.split(":")[0])
        for name, svc in config["services"].items()
        for v in svc.get("volumes", [])
    ]
    binds = [(name, src) for name, src in mounts if src.startswith("/")]
    assert len(binds) > 10
    missing = [f"{name}: {src}" for name, src in binds if not Path(src).exists()]
    assert not missing, missing


def test_our_images_build_from_targets_that_exist(config: dict[str, Any]) -> None:
    dockerfile = (COMPOSE / "images" / "Dockerfile.services").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M))
    for name, svc in config["services"].items():
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
