"""The shape of ``iotctl up --ha`` (iot/stack/ha.py): which processes replace the single
Postgres and Redis, their configurations, and haproxy on the usual addresses. The failover
itself is exercised on real processes by the HA experiments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from iot import backup
from iot.settings import Settings
from iot.stack import ha, ha_conf
from iot.stack.placement import service_of
from iot.stack.processes import programs, supervisord_conf


@pytest.fixture
def s(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        ha=True,
        ha_netns=False,  # whatever the machine's own stack runs with (var/stack.env)
        redis_password="r-secret",
        postgres_superuser_password="su-secret",
        postgres_replication_password="repl-secret",
    )


def test_ha_replaces_the_single_postgres_and_redis_with_members_haproxy_and_consensus(s):
    names = [p.name for p in programs(s)]
    assert "postgres" not in names and "redis" not in names
    for name in ("etcd-1", "etcd-2", "etcd-3", "patroni-1", "patroni-2", "redis-1", "redis-2"):
        assert name in names
    assert {"sentinel-1", "sentinel-2", "sentinel-3", "haproxy"} <= set(names)
    by_name = {p.name: p for p in programs(s)}
    assert by_name["patroni-1"].user == "postgres"
    assert by_name["haproxy"].probe == "sql"  # healthy only when a query reaches a primary
    # every member listens on a port of its own, none on the addresses haproxy takes
    ports = [*ha.ETCD_CLIENT_PORTS, *ha.ETCD_PEER_PORTS, *ha.PG_PORTS, *ha.PATRONI_REST_PORTS]
    ports += [*ha.REDIS_PORTS, *ha.SENTINEL_PORTS, ha.HAPROXY_STATS_PORT]
    assert len(ports) == len(set(ports))
    assert not {s.postgres_port, s.redis_port} & set(ports)
    conf = supervisord_conf(s, programs(s))
    assert "[program:patroni-2]" in conf and "[program:postgres]" not in conf
    # the members are Postgres's and Redis's: an external Postgres or Redis excludes them
    assert {service_of(n) for n in ("patroni-1", "etcd-2")} == {"postgres"}
    assert {service_of(n) for n in ("redis-2", "sentinel-1")} == {"redis"}
    assert service_of("redis-exporter") == "redis-exporter"
    without = Settings(home=s.home, ha=False)
    assert "postgres" in [p.name for p in programs(without)]


def test_patroni_runs_a_synchronous_pair_on_etcds_v2_api_and_archives_its_wal(s):
    params = backup.archive_parameters(s)
    first, second = (ha_conf.patroni_config(s, m, params) for m in ha.pg_members(s))
    assert "etcd" in first and "etcd3" not in first  # v2: no acknowledged write lost on rejoin
    assert len(first["etcd"]["hosts"]) == 3
    dcs = first["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["archive_command"] == backup.archive_command(s)
    # the first member takes over the single Postgres's data: --ha keeps it
    assert first["postgresql"]["data_dir"] == str(s.var / "postgres" / "data")
    assert second["postgresql"]["data_dir"] != first["postgresql"]["data_dir"]
    assert first["postgresql"]["listen"] != second["postgresql"]["listen"]
    auth = first["postgresql"]["authentication"]
    assert auth["replication"] == {"username": "replicator", "password": "repl-secret"}
    assert "host replication replicator 127.0.0.1/32 scram-sha-256" in first["postgresql"]["pg_hba"]


def test_haproxy_sends_postgres_to_the_primary_and_redis_to_the_master(s):
    cfg = ha_conf.haproxy_cfg(s)
    assert f"bind 127.0.0.1:{s.postgres_port}" in cfg and f"bind 127.0.0.1:{s.redis_port}" in cfg
    assert "option httpchk GET /primary" in cfg
    for m in ha.pg_members(s):
        assert f"server {m.name} 127.0.0.1:{m.port} check port {m.rest_port}" in cfg
    assert "tcp-check expect string role:master" in cfg
    assert "on-marked-down shutdown-sessions" in cfg
    if shutil.which("haproxy"):  # the packages of `scripts/setup.sh --ha`
        path = s.home / "haproxy.cfg"
        path.write_text(cfg)
        check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_render_keeps_what_sentinel_rewrote_and_hides_the_passwords(s):
    changed = ha_conf.render(s, backup.archive_parameters(s))
    assert {"haproxy.cfg", "patroni-1.yml", "redis-2.conf", "sentinel-3.conf"} <= set(changed)
    sentinel = s.var / "ha" / "sentinel-1" / "sentinel.conf"
    assert "sentinel monitor iot 127.0.0.1 6391 2" in sentinel.read_text()
    replica = (s.var / "ha" / "redis-2" / "redis.conf").read_text()
    assert "replicaof 127.0.0.1 6391" in replica and "masterauth r-secret" in replica
    sentinel.write_text(sentinel.read_text() + "sentinel known-replica iot 127.0.0.1 6392\n")
    assert ha_conf.render(s, backup.archive_parameters(s)) == []  # nothing changed, nothing undone
    assert "known-replica" in sentinel.read_text()
    patroni = ha.pg_members(s)[1].home / "patroni.yml"
    assert yaml.safe_load(patroni.read_text())["name"] == "patroni-2"
    for path in (patroni, s.var / "conf" / "haproxy.cfg", sentinel):
        assert path.stat().st_mode & 0o077 == 0, path


def test_patroni_fails_over_within_the_promise_and_by_its_own_rule(s) -> None:
    dcs = ha_conf.patroni_config(s, ha.pg_members(s)[0], {})["bootstrap"]["dcs"]
    # Patroni refuses timings that break loop_wait + 2 * retry_timeout <= ttl
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    # a lost leader is replaced at worst ttl + loop_wait after its last renewal: inside the
    # 30 s in which commands must be accepted and delivered again
    assert dcs["ttl"] + dcs["loop_wait"] < 30


def test_members_join_the_cluster_in_the_role_it_gives_them(s, tmp_path: Path) -> None:
    """patroni-2 waits for the cluster to exist (never bootstraps its own); every Redis member
    asks the Sentinels who is master before it starts (never a second master)."""
    from iot.stack import ha_join

    commands = {spec["name"]: spec["command"] for spec in ha.program_specs(s)}
    assert commands["patroni-1"][0] == "/usr/bin/patroni"
    assert commands["patroni-2"][1].endswith("ha_join.py") and commands["patroni-2"][2] == "patroni"
    for name in ("redis-1", "redis-2"):
        assert commands[name][1:3] == [str(Path(ha_join.__file__)), "redis"]
        assert commands[name][4:] == [f"{s.host}:{p}" for p in ha.SENTINEL_PORTS]
    conf = tmp_path / "redis.conf"
    conf.write_text(ha_conf.redis_conf(s, 2))
    parsed = ha_join._conf(str(conf))
    assert parsed["bind"] == s.host and parsed["port"] == str(ha.REDIS_PORTS[1])
    assert parsed["requirepass"] == "r-secret"
    # no Sentinel answers (nothing listens on these ports): start with the file's own role
    assert ha_join.current_master("r-secret", [(s.host, 1), (s.host, 2)]) is None
    assert ha_join.sentinel_address("10.0.0.3:26393") == ("10.0.0.3", 26393)


def test_members_on_three_hosts_are_configured_and_reached_at_their_own_addresses(
    tmp_path: Path,
) -> None:
    """IOT_HA_HOSTS puts host N's members (etcd-N, Sentinel N, patroni-N, redis-N) on its
    address: they listen there, the others and our processes reach them there, and Postgres
    lets each host in. With IOT_HA_NETNS the hosts are namespaces the supervisor starts the
    members in (Patroni as postgres through setpriv: every step execs, the pid is Patroni's)."""
    s = Settings(
        home=tmp_path,
        ha=True,
        ha_netns=True,
        redis_password="r",
        postgres_superuser_password="su",
        postgres_replication_password="re",
    )
    one, two, three = s.ha_hosts
    assert (one, two, three) == ("10.79.0.11", "10.79.0.12", "10.79.0.13")
    first, second = ha.pg_members(s)
    assert (first.host, second.host) == (one, two)
    config = ha_conf.patroni_config(s, second, {})
    assert config["postgresql"]["listen"] == f"{two}:{ha.PG_PORTS[1]}"
    assert config["restapi"]["connect_address"] == f"{two}:{ha.PATRONI_REST_PORTS[1]}"
    assert config["etcd"]["hosts"] == [
        f"{h}:{p}" for h, p in zip(s.ha_hosts, ha.ETCD_CLIENT_PORTS, strict=True)
    ]
    hba = ha_conf.pg_hba(s)
    for source in (one, two, three, "10.79.0.1"):  # the members, and haproxy via the bridge
        assert f"host replication replicator {source}/32 scram-sha-256" in hba
    assert f"host all all {s.host}/32 scram-sha-256" in hba
    cfg = ha_conf.haproxy_cfg(s)
    assert f"server patroni-2 {two}:{ha.PG_PORTS[1]} check port" in cfg
    assert f"server redis-1 {one}:{ha.REDIS_PORTS[0]} check" in cfg
    assert f"bind {s.host}:{s.postgres_port}" in cfg  # our processes keep their address
    assert f"sentinel monitor iot {one} {ha.REDIS_PORTS[0]}" in ha_conf.sentinel_conf(s, 3)
    assert f"bind {three}" in ha_conf.sentinel_conf(s, 3)
    assert f"replicaof {one} {ha.REDIS_PORTS[0]}" in ha_conf.redis_conf(s, 2)
    specs = {spec["name"]: spec for spec in ha.program_specs(s)}
    assert specs["etcd-3"]["command"][:4] == ["/usr/sbin/ip", "netns", "exec", "iothost3"]
    assert "--listen-peer-urls" in specs["etcd-3"]["command"]
    assert f"http://{three}:{ha.ETCD_PEER_PORTS[2]}" in specs["etcd-3"]["command"]
    patroni = specs["patroni-2"]["command"]
    assert patroni[:5] == ["/usr/sbin/ip", "netns", "exec", "iothost2", "/usr/bin/setpriv"]
    assert "--reuid=postgres" in patroni and "user" not in specs["patroni-2"]
    assert specs["redis-2"]["probe"] == f"tcp:{two}:{ha.REDIS_PORTS[1]}"
    targets = ha.scrape_targets(s)
    assert targets["etcd_targets"].startswith(f'"{one}:{ha.ETCD_CLIENT_PORTS[0]}"')
    assert targets["haproxy_targets"] == f'"{s.host}:{ha.HAPROXY_STATS_PORT}"'
    with pytest.raises(ValueError, match="needs three"):
        Settings(home=tmp_path, ha_hosts="10.0.0.1,10.0.0.2")


def test_members_moved_to_other_addresses_forget_what_held_the_old_ones(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, ha=True, ha_netns=False, redis_password="r")
    ha_conf_dir = s.var / "ha"
    assert ha.place(s) == []  # first start: nothing to forget
    for kind in ("etcd-1", "redis-1", "sentinel-2"):
        (ha_conf_dir / kind).mkdir(parents=True, exist_ok=True)
    (ha_conf_dir / "redis-1" / "redis.conf").write_text("bind 127.0.0.1\n")
    (ha_conf_dir / "sentinel-2" / "sentinel.conf").write_text("bind 127.0.0.1\n")
    assert ha.place(s) == []  # same addresses: everything kept
    moved = Settings(
        home=tmp_path, ha=True, ha_netns=False, ha_hosts="10.0.0.1,10.0.0.2,10.0.0.3"
    )
    assert ha.place(moved) == ["etcd-1", "redis-1", "sentinel-2"]
    assert not (ha_conf_dir / "etcd-1").exists()
    assert not (ha_conf_dir / "redis-1" / "redis.conf").exists()
