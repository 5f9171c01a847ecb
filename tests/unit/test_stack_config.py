"""Unit tests of the rendered configuration (no processes started)."""

from __future__ import annotations

import configparser
import json

import pytest

from iot.settings import Settings
from iot.stack import setup
from iot.stack.processes import programs, supervisord_conf


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        home=tmp_path, secret_key="s" * 32, postgres_password="p" * 24, rabbitmq_password="r" * 24
    )


def test_render_fills_placeholders_and_refuses_unknown_ones():
    assert setup.render("a {{x}} b {{ y }}", {"x": 1, "y": "two"}) == "a 1 b two"
    with pytest.raises(setup.SetupError, match="nope"):
        setup.render("{{nope}}", {})


def test_every_program_is_supervised_with_restart_and_its_own_log(settings):
    progs = programs(settings)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(supervisord_conf(settings, progs))
    names = {p.name for p in progs}
    assert {
        "rabbitmq",
        "postgres",
        "redis",
        "nginx",
        "toxiproxy",
        "api-1",
        "api-2",
        "worker-sensors",
        "worker-commandlog",
        "flower",
        "prometheus",
    } <= names
    for p in progs:
        section = parser[f"program:{p.name}"]
        assert section["autorestart"] == "true"
        assert section["stdout_logfile"].endswith(f"var/log/{p.name}.log")
    assert parser["program:postgres"]["user"] == "postgres"
    # supervisord expands %(...)s: the Celery node name's %h must reach Celery as "%h".
    assert "worker-sensors@%%h" in parser["program:worker-sensors"]["command"]


def test_rendered_configs_point_our_processes_through_toxiproxy(settings):
    (settings.var / "conf").mkdir(parents=True)
    setup.render_configs(settings)
    conf = settings.var / "conf"
    proxies = {p["name"]: p for p in json.loads((conf / "toxiproxy.json").read_text())}
    assert proxies["rabbitmq"]["upstream"].endswith(f":{settings.rabbitmq_port}")
    assert proxies["postgres"]["listen"].endswith(f":{settings.proxy_postgres_port}")
    assert f":{settings.proxy_postgres_port}/" in settings.database_url
    assert f":{settings.proxy_rabbitmq_port}/" in settings.broker_url
    assert f":{settings.proxy_redis_port}/" in settings.redis_url
    nginx = (conf / "nginx.conf").read_text()
    for port in settings.api_ports:
        assert f"server {settings.host}:{port}" in nginx
    assert f"client_max_body_size {settings.max_body_bytes};" in nginx
    assert "hash $credential consistent;" in nginx
    assert oct((conf / "rabbitmq.conf").stat().st_mode)[-3:] == "600"


def test_replicas_and_sensors_workers_are_settings_that_nginx_prometheus_and_supervisor_follow(
    tmp_path,
):
    s = Settings(
        home=tmp_path,
        secret_key="s" * 32,
        postgres_password="p" * 24,
        rabbitmq_password="r" * 24,
        api_replicas=3,
        sensor_workers=2,
    )
    progs = {p.name: p for p in programs(s)}
    assert {"api-1", "api-2", "api-3", "worker-sensors", "worker-sensors-2"} <= set(progs)
    assert "api-4" not in progs and "worker-sensors-3" not in progs
    assert progs["worker-sensors-2"].env["IOT_WORKER_METRICS_PORT"] == "9821"
    assert "sensors.data" in progs["worker-sensors-2"].command
    (s.var / "conf").mkdir(parents=True)
    setup.render_configs(s)
    nginx = (s.var / "conf" / "nginx.conf").read_text()
    assert [f"server {s.host}:{p}" in nginx for p in (8101, 8102, 8103)] == [True] * 3
    prometheus = (s.var / "conf" / "prometheus.yml").read_text()
    assert f'"{s.host}:8103"' in prometheus
    assert f'["{s.host}:9811", "{s.host}:9821"]' in prometheus


def test_the_chosen_shape_is_kept_for_later_runs(tmp_path, monkeypatch):
    env = tmp_path / "stack.env"
    env.write_text("IOT_API_REPLICAS=4\nOTHER=x\n")
    monkeypatch.setattr(setup, "STACK_ENV", env)
    setup.save_stack_shape({"IOT_API_REPLICAS": 3, "IOT_SENSOR_WORKERS": 2})
    assert env.read_text().splitlines() == [
        "OTHER=x",
        "IOT_API_REPLICAS=3",
        "IOT_SENSOR_WORKERS=2",
    ]
