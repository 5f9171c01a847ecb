"""The highly available data tier (`iotctl up --ha`): Postgres under Patroni, a primary and a
synchronous standby on a three-member etcd; Redis with a replica under three Sentinels;
haproxy where the single Postgres and Redis listened. Its experiments (short forms) lose
nothing, a killed primary is replaced and commands are accepted and delivered again within
30 s, each killed member comes back in its new role, and `iotctl up --no-ha` goes back to one
Postgres with every row.

The module switches the shared stack to HA and back, so it runs with the other chaos
experiments (marker `chaos`) and leaves the stack in the mode it found it in.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis

from chaos import experiment, report
from iot.settings import Settings
from iot.stack import ha
from tests.chaos.stack_mode import iotctl_up, switched

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

FAILOVER_PROMISE_SECONDS = 30  # commands accepted and delivered again after a primary is lost
RESTORE: dict[str, bool] = {}  # "single": the module switched the stack to HA


@pytest.fixture(scope="module")
def ha_stack() -> Iterator[Settings]:
    """The stack with the HA data tier for the module, its members on three hosts (network
    namespaces, so that a host can be cut off), then the mode it was in."""
    yield from switched("ha", Settings().ha, RESTORE, on=("--ha-netns",), off=("--ha-local",))


def patroni_members(s: Settings) -> dict[str, dict]:
    for m in ha.pg_members(s):
        try:
            r = httpx.get(f"http://{m.host}:{m.rest_port}/cluster", timeout=3)
            return {x["name"]: x for x in r.json()["members"]}
        except (httpx.HTTPError, ValueError, KeyError):
            continue
    return {}


def wait_pair(s: Settings, timeout: float = 120) -> dict[str, dict]:
    """Both Postgres members up: one leader and one synchronous standby streaming from it."""
    deadline = time.monotonic() + timeout
    while True:
        members = patroni_members(s)
        roles = sorted(m.get("role", "") for m in members.values())
        streaming = [m for m in members.values() if m.get("role") == "sync_standby"]
        # Patroni 3.0 says "running" for a standby that replays (later ones "streaming"); its
        # lag in bytes is known only while it replicates
        if roles == ["leader", "sync_standby"] and streaming[0].get("state") in (
            "running",
            "streaming",
        ):
            if isinstance(streaming[0].get("lag"), int) and streaming[0]["lag"] < 16 << 20:
                return members
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader with a streaming synchronous standby: {members}")
        time.sleep(2)


def sentinel_master(s: Settings, n: int) -> tuple[str, int]:
    """Who Sentinel ``n`` (1-3) says is the Redis master."""
    client = redis.Redis(
        host=ha.host_of(s, n),
        port=ha.SENTINEL_PORTS[n - 1],
        password=s.redis_password,
        socket_timeout=3,
    )
    try:
        host, master_port = client.execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", ha.REDIS_MASTER_NAME
        )
        return host.decode(), int(master_port)
    finally:
        client.close()


def redis_address(s: Settings, member: str) -> tuple[str, int]:
    n = int(member.rsplit("-", 1)[1])
    return ha.host_of(s, n), ha.REDIS_PORTS[n - 1]


class FencingProbe:
    """A client on the primary's own host: once that host is cut off, it writes to the
    primary there (over its Unix socket, which the cut does not touch), one row at a time,
    never cancelling a write (a cancelled wait for the synchronous standby commits locally
    and answers success). A write answered while the host was cut off is a write the rest of
    the cluster may never see: split brain."""

    def __init__(self, s: Settings, member: ha.PgMember) -> None:
        self.s, self.member = s, member
        self.acked_while_cut: list[int] = []
        self.failed = 0
        self.tried = 0
        self.saw_cut = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.member.socket_dir),
            port=self.member.port,
            user="postgres",
            dbname=self.s.postgres_db,
            autocommit=True,
            connect_timeout=3,
        )

    def __enter__(self) -> FencingProbe:
        with self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS ha_fencing_probe (n int PRIMARY KEY)")
            conn.execute("TRUNCATE ha_fencing_probe")
        self._thread.start()
        return self

    def _run(self) -> None:
        from iot.stack import ha_hosts

        host = ha_hosts.host(int(self.member.name.rsplit("-", 1)[1]))
        while not self._stop.is_set() and not ha_hosts.is_cut(host):
            time.sleep(0.1)
        self.saw_cut = not self._stop.is_set()
        n = 0
        while not self._stop.is_set() and ha_hosts.is_cut(host):
            n += 1
            self.tried += 1
            try:
                with self._connect() as conn:
                    conn.execute("INSERT INTO ha_fencing_probe VALUES (%s)", (n,))
                if ha_hosts.is_cut(host):
                    self.acked_while_cut.append(n)
            except psycopg.Error:
                self.failed += 1
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def drop(self) -> None:
        """Remove the probe's table, on whichever member is primary now."""
        socket_dir, port = ha.local_postgres(self.s)
        with psycopg.connect(
            host=str(socket_dir),
            port=port,
            user="postgres",
            dbname=self.s.postgres_db,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute("DROP TABLE IF EXISTS ha_fencing_probe")


def command_rows(s: Settings) -> int:
    with psycopg.connect(s.database_direct_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM commands").fetchone()
    return int(row[0]) if row else 0


def test_postgres_has_a_synchronous_standby_and_redis_a_watched_replica(ha_stack: Settings):
    s = ha_stack
    wait_pair(s)
    assert ha.primary(s) is not None
    masters = ha.redis_masters(s)
    assert len(masters) == 1, masters
    assert {sentinel_master(s, n) for n in (1, 2, 3)} == {redis_address(s, masters[0])}
    # the product reaches the primary through haproxy, on the single Postgres's address
    assert command_rows(s) >= 0
    primary_port = ha.primary(s).port  # type: ignore[union-attr]
    with psycopg.connect(s.database_direct_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row == (primary_port, False)


@pytest.mark.parametrize("name", experiment.ha_names())
def test_ha_experiment_loses_nothing_and_the_member_comes_back(ha_stack: Settings, name: str):
    spec = experiment.load(name)
    cutting = any(step["action"] == "host_cut" for step in spec.method)
    if cutting and not ha_stack.ha_netns:
        pytest.skip("the stack's HA members share this machine's network: nothing to cut off")
    primary = ha.primary(ha_stack)
    assert primary is not None
    probe = FencingProbe(ha_stack, primary)
    with probe if cutting else contextlib.nullcontext():
        result = experiment.run(spec, ha_stack)
    folder = report.write(result)
    if cutting:
        # the cut-off primary acknowledged nothing: no write the new primary does not have
        print(f"{name}: {probe.tried} writes tried on the cut-off primary, {probe.failed} failed")
        assert probe.saw_cut and probe.tried > 0, "the probe never saw the host cut off"
        assert probe.acked_while_cut == [], f"split brain: {probe.acked_while_cut} ({folder})"
        wait_pair(ha_stack)
        probe.drop()
    for kind, counts in result["counts"].items():
        assert counts["clean"], f"{kind}: {counts} (report: {folder})"
    assert result["drained"], f"did not drain (report: {folder})"
    assert result["passed"], f"{result['problems']} (report: {folder})"
    if name in ("ha-kill-primary", "ha-cut-primary"):
        # the primary stayed down for the whole fault: every request failed over to the
        # standby; the last failure tells how long the product was without a primary
        errors_for = result["errors_for_seconds"]
        print(f"{name}: requests failed for {errors_for} s after the kill (report: {folder})")
        assert errors_for <= FAILOVER_PROMISE_SECONDS, f"{errors_for} s (report: {folder})"
    # the killed member is back, in its new role: a standby streaming again, or a replica
    wait_pair(ha_stack)
    # one Redis master, the one every Sentinel names (the killed master restarts as a replica)
    deadline = time.monotonic() + 30
    while len(masters := ha.redis_masters(ha_stack)) != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(masters) == 1, masters
    expected = redis_address(ha_stack, masters[0])
    assert {sentinel_master(ha_stack, n) for n in (1, 2, 3)} == {expected}


def test_back_to_one_postgres_keeps_every_row(ha_stack: Settings):
    if not RESTORE.get("single"):
        pytest.skip("the stack had the HA data tier before this module: it keeps it")
    rows = command_rows(ha_stack)
    out = iotctl_up(
        "--no-ha", "--ha-local"
    )  # switches the primary back to patroni-1 first if needed
    RESTORE.pop("single")
    s = Settings()
    assert not s.ha, out
    assert command_rows(s) == rows
    assert ha.primary(s) is None  # no Patroni answers any more
