"""Failure behaviour (docs/design.md §6 Failure behaviour) for scenario 1: stop a real
component, watch the API."""

from __future__ import annotations

import time

import psycopg
import pytest

from chaos.toxiproxy import Toxiproxy
from tests.integration.conftest import (
    Person,
    eventually,
    reading,
    rows_for,
    status_becomes,
    wait_database_back,
)

pytestmark = pytest.mark.integration


def test_with_redis_stopped_readings_are_stored_and_served_from_the_database(
    alice: Person, pg: psycopg.Connection, restart_guard
):
    device = alice.new_device()
    assert device.post([reading("t", 1.0, age_s=5)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="first reading stored")

    restart_guard("redis")
    # Writes still succeed: Redis holds derived data only, Postgres is the record.
    assert device.post([reading("t", 2.0)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 2, what="reading stored while Redis is down")
    r = alice.api.get("/sensors", params={"device_id": str(device.id)}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "database"
    assert [x["value"] for x in r.json()["readings"]] == [2.0]


def test_with_redis_stopped_commands_are_still_delivered_once(alice: Person, restart_guard):
    device = alice.new_device()
    restart_guard("redis")
    cid = alice.send(device, "no-cache").json()["id"]
    got = device.commands(wait=5)
    assert [c["id"] for c in got] == [cid]
    assert device.ack(cid).status_code == 200
    assert device.poll(wait=1).status_code == 204
    status_becomes(alice, cid, "succeeded")


def test_with_rabbitmq_stopped_posts_answer_503_with_retry_after_never_201(
    alice: Person, pg: psycopg.Connection, restart_guard, stack
):
    device = alice.new_device()
    stored = alice.send(device, "before").json()["id"]
    history = f"/devices/{device.id}/commands"
    eventually(
        lambda: alice.api.get(history, headers=alice.headers).json()["commands"],
        what="the command stored as a row",
    )
    restart_guard("rabbitmq")
    r = alice.send(device, "while-down")
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["detail"]
    # Commands already stored live in Postgres: polls and acks need no broker.
    assert [c["id"] for c in device.commands(wait=1)] == [stored]
    assert device.ack(stored).status_code == 200
    answers = []
    for i in range(10):
        r = device.post([reading("t", float(i))])
        answers.append(r.status_code)
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert "detail" in r.json()
        time.sleep(0.1)
    assert answers == [503] * 10, answers
    assert rows_for(pg, device.id) == 0

    stack.start_program("rabbitmq")

    def accepted():
        return device.post([reading("t", 42.0)]).status_code == 201

    eventually(accepted, timeout=90, what="POST /sensors accepted again after RabbitMQ is back")
    eventually(lambda: rows_for(pg, device.id) >= 1, timeout=30, what="the reading stored")
    cid = eventually(
        lambda: (r := alice.send(device, "after")).status_code == 201 and r,
        timeout=30,
        what="POST /commands accepted again",
    ).json()["id"]
    got = eventually(lambda: device.commands(wait=5), timeout=30, what="command delivered")
    assert [c["id"] for c in got] == [cid]


def test_with_every_api_replica_down_nginx_answers_503_with_retry_after(
    alice: Person, restart_guard
):
    device = alice.new_device()
    restart_guard("api-1")
    restart_guard("api-2")
    r = device.post([reading()])
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["detail"]


def test_with_postgres_black_holed_requests_answer_503_in_time_then_recover(
    alice: Person, settings
):
    """A database that stops answering (no reply, no reset) must not hold requests: the API
    answers 503 + Retry-After after its database deadline (5 s), well before a client's 12 s
    timeout, and serves again as soon as the database answers."""
    alice.new_device()
    proxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    toxic = proxy.add_toxic("postgres", "timeout", {"timeout": 0}, stream="upstream")
    try:
        answers = [alice.api.get("/devices", headers=alice.headers, timeout=12) for _ in range(3)]
    finally:
        proxy.remove_toxic("postgres", toxic)
        # toxiproxy leaves the connections that lived through a timeout toxic half-closed
        # (its end towards Postgres gone, ours open and silent): a healed network does not.
        # Cycling the proxy closes them for real, as a Postgres restart would.
        proxy.set_enabled("postgres", False)
        proxy.set_enabled("postgres", True)
        proxy.close()
        # every replica, not only the one serving this person, has its database back before
        # the next test (its device may be served by another), whatever this one found
        wait_database_back(settings)
    for r in answers:
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1 and "database" in r.json()["detail"]
    eventually(
        lambda: alice.api.get("/devices", headers=alice.headers).status_code == 200,
        timeout=20,
        what="GET /devices answering 200 again",
    )


def test_a_full_pool_answers_busy_without_failing_every_other_request(settings, monkeypatch):
    """Overload (every pooled connection busy) is a 503 for that request only; it must not
    trip the outage hold that fails every use of the database for a second."""
    import asyncio

    from psycopg_pool import AsyncConnectionPool

    from iot import db
    from iot.errors import DatabaseUnavailable

    monkeypatch.setattr(db, "POOL_WAIT_SECONDS", 0.3)

    async def scenario() -> tuple[str, int]:
        pool = AsyncConnectionPool(settings.database_direct_url, min_size=1, max_size=1, open=False)
        await pool.open(wait=True)
        try:
            async with pool.connection():  # the only connection, busy
                with pytest.raises(DatabaseUnavailable) as caught:
                    async with db.connection(pool):
                        pass
            async with db.connection(pool) as conn:  # at once: no outage hold
                row = await (await conn.execute("SELECT 1")).fetchone()
        finally:
            await pool.close()
        return caught.value.detail, row[0]

    detail, one = asyncio.run(scenario())
    assert detail == "database busy; retry later" and one == 1


def test_after_a_black_hole_the_pool_serves_at_once_with_new_connections(settings):
    """Idle connections that a black-holed path dropped are dead after it heals too (toxiproxy
    closes them half-way; a firewall that lost its state does the same). The first one found
    dead by its check is evidence for all: the pool drops them together, so the first use after
    the heal gets a new connection instead of one dead check (the whole wait) per use. The
    black hole is on a proxy of the test's own: the API replicas' connections are not hurt."""
    import asyncio
    import socket

    from iot import db
    from iot.errors import DatabaseUnavailable

    proxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    with socket.socket() as free:
        free.bind((settings.host, 0))
        port = free.getsockname()[1]
    name = f"postgres-pool-test-{port}"
    upstream = proxy.proxy("postgres")["upstream"]
    proxy.create_proxy(name, f"{settings.host}:{port}", upstream)
    own = settings.model_copy(update={"proxy_postgres_port": port, "via_toxiproxy": True})

    async def scenario() -> int:
        pool = db.open_pool(own, fixed=True)
        await pool.open(wait=True)
        try:
            async with db.connection(pool) as conn:
                await conn.execute("SELECT 1")
            toxic = proxy.add_toxic(name, "timeout", {"timeout": 0}, stream="upstream")
            try:
                with pytest.raises(DatabaseUnavailable):
                    async with db.connection(pool) as conn:
                        await conn.execute("SELECT 1")
            finally:
                proxy.remove_toxic(name, toxic)
            await asyncio.sleep(db.OUTAGE_HOLD_SECONDS + 0.2)
            async with db.connection(pool) as conn:
                row = await (await conn.execute("SELECT 1")).fetchone()
        finally:
            await pool.close()
        return row["?column?"]

    try:
        assert asyncio.run(scenario()) == 1
    finally:
        proxy.delete_proxy(name)
        proxy.close()


def test_with_the_commands_worker_stopped_commands_are_claimable_at_once_in_order(
    alice: Person, pg: psycopg.Connection, restart_guard
):
    # The API writes a confirmed command's row itself, so the device does not wait for the
    # worker, and each command sent after the previous one's 201 is stored after it (FIFO per
    # device even when the worker later stores its copies in another order).
    device = alice.new_device()
    restart_guard("worker-commandlog")
    sent = [alice.send(device, f"step-{i}", {"n": i}).json()["id"] for i in range(4)]
    got = device.commands(wait=5, limit=10)
    assert [c["id"] for c in got] == sent
    for c in got:
        assert device.ack(c["id"]).status_code == 200
    queued = pg.execute(
        "SELECT count(*) FROM command_events WHERE device_id = %s AND status = 'queued'",
        (device.id,),
    ).fetchone()
    assert queued == (4,)  # one `queued` event each, whoever stores the command
