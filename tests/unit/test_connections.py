"""Connections as a capacity dimension: what `iotctl up` derives from IOT_MAX_DEVICE_CONNECTIONS
(nginx workers, connection slots, open files, keepalive, backlogs; the replicas' backlog and
supervisord's minfds) and renders. No processes, no network (`nginx -t` checks the file)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iot.settings import Settings
from iot.stack import connections, setup
from iot.stack.connections import (
    FD_RESERVE,
    NGINX_OWN_CONNECTIONS,
    ConnectionsError,
    derive,
)
from tests.unit.test_external_services import make, rendered


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The development machine: 20,000 open files per process (hard), somaxconn 4096."""
    monkeypatch.setattr(connections, "hard_fd_limit", lambda: 20_000)
    monkeypatch.setattr(connections, "somaxconn", lambda: 4096)


def test_the_default_fleet_on_the_development_machine() -> None:
    limits = derive(20_000, api_replicas=2, fd_limit=20_000, somaxconn=4096)
    assert limits.nginx_workers == 5
    assert limits.nginx_devices_per_worker == 4000
    # 2 connections per device and 4 of its own: 8,004 planned, twice that as slots
    assert limits.nginx_worker_connections == 16_008
    assert limits.nginx_rlimit_nofile == 16_008 + FD_RESERVE
    assert limits.nginx_keepalive == 4000
    assert limits.nginx_backlog == 4000
    assert limits.nginx_device_capacity == 5 * (16_008 - NGINX_OWN_CONNECTIONS) // 2
    assert limits.api_connections_per_replica == 10_000
    assert limits.api_connections_planned == 15_795  # 80 % of 20,000 less 256
    assert limits.api_replicas_needed == 2 and not limits.api_replicas_short
    assert limits.api_backlog == 4096
    assert limits.supervisor_minfds == 20_000


def test_the_measured_failure_of_10000_devices_now_fits() -> None:
    # Measured: 2 workers x 10,000 slots, 2 connections per device: 22 % of requests failed.
    limits = derive(10_000, api_replicas=2, fd_limit=20_000, somaxconn=4096)
    assert limits.nginx_workers == 3
    share = 2 * limits.nginx_devices_per_worker + NGINX_OWN_CONNECTIONS
    assert share <= limits.nginx_worker_connections // 2  # every worker at half its slots
    assert limits.nginx_device_capacity >= 2 * 10_000


@pytest.mark.parametrize("fd_limit", [1024, 4096, 20_000, 100_000])
@pytest.mark.parametrize("devices", [1, 500, 5000, 10_000, 20_000, 50_000, 200_000])
def test_every_process_stays_under_its_open_files_limit(devices: int, fd_limit: int) -> None:
    limits = derive(devices, api_replicas=2, fd_limit=fd_limit, somaxconn=4096)
    assert limits.nginx_workers >= 2
    assert limits.nginx_workers * limits.nginx_devices_per_worker >= devices
    planned = 2 * limits.nginx_devices_per_worker + NGINX_OWN_CONNECTIONS
    assert planned <= (fd_limit - FD_RESERVE) / 2  # planned at half the open files
    assert planned <= limits.nginx_worker_connections
    assert limits.nginx_worker_connections + FD_RESERVE <= limits.nginx_rlimit_nofile <= fd_limit
    assert limits.nginx_keepalive == limits.nginx_devices_per_worker
    assert limits.nginx_device_capacity >= devices
    assert limits.nginx_backlog <= 4096 and limits.api_backlog <= 4096
    assert limits.supervisor_minfds == fd_limit
    needed = limits.api_replicas_needed
    assert devices / needed <= limits.api_connections_planned < fd_limit - FD_RESERVE


def test_backlogs_stay_within_somaxconn_and_do_not_follow_the_replica_count() -> None:
    small = derive(20_000, api_replicas=2, somaxconn=128)
    assert small.nginx_backlog == small.api_backlog == 128
    # more replicas must not change the running ones' command line (supervisord restarts them)
    assert derive(20_000, 2).api_backlog == derive(20_000, 5).api_backlog
    assert derive(100, 2).nginx_backlog == 511 and derive(100, 2).api_backlog == 2048


def test_too_few_replicas_are_named_with_the_option_that_fixes_it(tmp_path: Path) -> None:
    s = make(tmp_path, max_device_connections=40_000)
    limits = derive(40_000, api_replicas=2, fd_limit=20_000, somaxconn=4096)
    assert limits.api_replicas_short and limits.api_replicas_needed == 3
    (warning,) = connections.warnings(s, limits)
    assert "20,000 each" in warning and "`iotctl up --api-replicas 3`" in warning
    assert not connections.warnings(s, derive(40_000, 3, 20_000))


def test_a_lower_hard_limit_wins_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make(tmp_path)
    monkeypatch.setattr(connections, "hard_fd_limit", lambda: 4096)
    assert connections.effective_fd_limit(s) == 4096
    limits = connections.for_settings(s)
    assert limits.nginx_rlimit_nofile <= 4096 and limits.supervisor_minfds == 4096
    assert any("4,096 open files per process" in w for w in connections.warnings(s, limits))
    monkeypatch.setattr(connections, "hard_fd_limit", lambda: None)  # unlimited
    assert connections.effective_fd_limit(s) == 20_000


def test_replicas_of_other_machines_share_the_devices(tmp_path: Path) -> None:
    assert connections.replica_count(make(tmp_path / "a")) == 2
    s = make(tmp_path / "b", roles="edge", api_servers="10.0.0.11:8101,10.0.0.12:8101")
    assert connections.replica_count(s) == 2
    both = make(tmp_path / "c", api_replicas=3, api_servers="10.0.0.11:8101")
    assert connections.replica_count(both) == 4


def test_out_of_range_is_refused() -> None:
    with pytest.raises(ConnectionsError):
        derive(0, 2)
    with pytest.raises(ConnectionsError):
        derive(10, 0)
    with pytest.raises(ConnectionsError):
        derive(10, 2, fd_limit=300)


def test_the_rendered_configuration_carries_the_derived_limits(
    tmp_path: Path, machine: None
) -> None:
    s = make(tmp_path)
    files = rendered(s)
    nginx = files["nginx.conf"]
    assert "worker_processes 5;" in nginx
    assert "worker_rlimit_nofile 16264;" in nginx
    assert "worker_connections 16008;" in nginx
    assert "keepalive 4000;" in nginx
    assert f"listen {s.host}:{s.http_port} reuseport backlog=4000;" in nginx
    assert f"listen {s.host}:{s.https_port} ssl reuseport backlog=4000;" in nginx
    supervisor = configparser.ConfigParser(interpolation=None)
    supervisor.read_string(files["supervisord.conf"])
    assert supervisor["supervisord"]["minfds"] == "20000"
    for name in ("api-1", "api-2"):
        assert supervisor[f"program:{name}"]["command"].endswith(" --backlog 4096")
    # what nginx serves at /limits: Prometheus text once nginx has unescaped its string
    body = nginx.split('return 200 "# HELP iot_nginx_worker_processes')[1].split('";')[0]
    text = ("# HELP iot_nginx_worker_processes" + body).replace("\\n", "\n")
    values = {m.name: m.samples[0].value for m in text_string_to_metric_families(text) if m.samples}
    assert values == {
        "iot_nginx_worker_processes": 5,
        "iot_nginx_worker_connections": 16_008,
        "iot_nginx_keepalive_connections": 4000,
        "iot_nginx_device_connections_limit": 40_010,
        "iot_nginx_max_device_connections": 20_000,
    }
    assert (
        'metrics_path: /limits\n    static_configs:\n      - targets: ["127.0.0.1:8089"]'
        in (files["prometheus.yml"])
    )


def test_more_devices_change_nginx_alone_so_iotctl_up_only_reloads_it(
    tmp_path: Path, machine: None
) -> None:
    default = rendered(make(tmp_path / "a"))
    more = rendered(make(tmp_path / "b", max_device_connections=40_000))
    assert {name for name in default if default[name] != more[name]} == {"nginx.conf"}
    assert "worker_processes 9;" in more["nginx.conf"]
    assert setup.RELOADS["nginx.conf"] == ("nginx", "signal HUP")


def test_nginx_accepts_the_rendered_configuration(tmp_path: Path, machine: None) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed; `make up` installs it")
    s: Settings = make(tmp_path)
    temp = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
    for sub in ("conf", "log", "run", "tls", *(f"nginx/{d}" for d in temp)):
        (s.var / sub).mkdir(parents=True, exist_ok=True)
    setup.ensure_certificate(s)
    setup.render_configs(s)
    conf, log = s.var / "conf" / "nginx.conf", s.var / "log" / "nginx-error.log"
    result = subprocess.run(
        [nginx, "-t", "-q", "-c", str(conf), "-e", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
