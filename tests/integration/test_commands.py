"""Scenario 2 through nginx and two API replicas: commands reach the right device, leases,
acks, expiry, cancel, dead commands and their timelines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from chaos.toxiproxy import Toxiproxy
from tests.integration.conftest import (
    Device,
    Person,
    eventually,
    status_becomes,
    statuses,
    wait_database_back,
)

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).parent / "iotctl")


def _poll_like_a_device(device: Device, wait: float = 1, timeout: float = 30) -> httpx.Response:
    """A poll that, as devices do, tries again after a 503's Retry-After (the API fails fast
    for a moment after its database was away)."""
    deadline = time.monotonic() + timeout
    while True:
        r = device.poll(wait=wait)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))


def test_a_command_reaches_only_its_device_in_fifo_order(alice: Person):
    a, b = alice.new_device("a"), alice.new_device("b")
    sent = [alice.send(a, f"step-{i}", {"n": i}).json()["id"] for i in range(5)]
    other = alice.send(b, "for-b").json()["id"]
    got_b = b.commands(wait=5)
    assert [c["id"] for c in got_b] == [other]
    got_a = eventually(lambda: (c := a.commands(wait=5, limit=10)) and c, what="a's commands")
    while len(got_a) < 5:
        got_a += a.commands(wait=2, limit=10)
    assert [c["id"] for c in got_a] == sent
    assert [c["args"]["n"] for c in got_a] == [0, 1, 2, 3, 4]
    assert all(c["attempt"] == 1 for c in got_a)
    for c in got_a:
        assert a.ack(c["id"]).status_code == 200
    assert a.poll(wait=1).status_code == 204


def test_not_acked_comes_back_with_attempt_2_and_acked_never_again(alice: Person):
    device = alice.new_device()
    cid = alice.send(device, "reboot").json()["id"]
    first = device.commands(wait=5, lease=1)
    assert [(c["id"], c["attempt"]) for c in first] == [(cid, 1)]
    assert device.poll(wait=0).status_code == 204  # leased: not handed out twice at once
    second = device.commands(wait=5, lease=30)
    assert [(c["id"], c["attempt"]) for c in second] == [(cid, 2)]
    r = device.ack(cid, "succeeded", {"uptime": 3})
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert device.ack(cid).json()["status"] == "succeeded"  # repeating is harmless
    assert device.poll(wait=2).status_code == 204
    command = status_becomes(alice, cid, "succeeded")
    assert command["attempt"] == 2 and command["result"] == {"uptime": 3}
    assert [e["status"] for e in command["events"]] == [
        "queued",
        "delivered",
        "delivered",
        "succeeded",
    ]


def test_a_waiting_long_poll_returns_the_command_well_under_a_second(alice: Person):
    device = alice.new_device()
    assert device.poll(wait=0).status_code == 204  # the replica now consumes its queue
    got: dict = {}

    def poll():
        r = device.poll(wait=15)
        got["at"], got["response"] = time.monotonic(), r

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(1.0)  # the poll is waiting
    sent_at = time.monotonic()
    cid = alice.send(device, "now").json()["id"]
    waiter.join(20)
    assert got["response"].status_code == 200
    assert got["response"].json()["commands"][0]["id"] == cid
    assert got["at"] - sent_at < 1.0, f"took {got['at'] - sent_at:.3f}s"


@pytest.mark.parametrize("subscribed", [False, True], ids=["queue-idle", "replica-consuming"])
def test_expired_before_delivery_is_never_delivered(alice: Person, subscribed: bool):
    device = alice.new_device()
    if subscribed:
        assert device.poll().status_code == 204
    cid = alice.send(device, "too-late", ttl=1).json()["id"]
    time.sleep(1.5)
    assert device.poll(wait=2).status_code == 204
    command = status_becomes(alice, cid, "expired")
    assert [e["status"] for e in command["events"]] == ["queued", "expired"]


def test_cancelled_before_delivery_is_never_delivered(alice: Person):
    device = alice.new_device()
    keep = alice.send(device, "keep").json()["id"]
    drop = alice.send(device, "drop").json()["id"]
    r = alice.api.post(f"/commands/{drop}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    got = device.commands(wait=5, limit=10)
    got += device.commands(wait=1, limit=10)
    assert [c["id"] for c in got] == [keep]
    again = alice.api.post(f"/commands/{drop}/cancel", headers=alice.headers)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    device.ack(keep)
    late = alice.api.post(f"/commands/{keep}/cancel", headers=alice.headers)
    assert late.status_code == 409
    assert statuses(alice, status_becomes(alice, drop, "cancelled")["id"]) == [
        "queued",
        "cancelled",
    ]


def test_deleting_a_device_deletes_its_commands_even_one_sent_moments_before(alice: Person, pg):
    device = alice.new_device()
    sent = alice.send(device, "reboot")
    assert sent.status_code == 201
    cid = sent.json()["id"]
    assert alice.api.get(f"/commands/{cid}", headers=alice.headers).status_code == 200
    assert alice.api.delete(f"/devices/{device.id}", headers=alice.headers).status_code == 204
    for method, path in (("GET", f"/commands/{cid}"), ("POST", f"/commands/{cid}/cancel")):
        r = alice.api.request(method, path, headers=alice.headers)
        assert r.status_code == 404, (method, path, r.text)
    # Nor does the commands worker bring it back when it reaches the accepted message.
    time.sleep(2)
    rows = pg.execute("SELECT count(*) FROM commands WHERE id = %s", (cid,)).fetchone()
    assert rows == (0,)


def _requeued_runs_once_more(alice: Person, device: Device, cid: str) -> dict:
    """A requeued dead command is delivered again as attempt 1; acked, it succeeds, and its
    timeline holds both lives. Returns the command."""
    got = device.commands(wait=10)
    assert [(c["id"], c["attempt"]) for c in got] == [(cid, 1)]
    device.ack(cid)
    command = status_becomes(alice, cid, "succeeded")
    assert [e["status"] for e in command["events"]] == (
        ["queued"] + ["delivered"] * 5 + ["dead", "queued", "delivered", "succeeded"]
    )
    return command


def test_too_many_attempts_make_it_dead_and_requeue_delivers_it_again(alice: Person):
    device = alice.new_device()
    cid = alice.send(device, "flaky").json()["id"]
    attempts = []
    for _ in range(5):
        got = eventually(lambda: device.commands(wait=5, lease=1), timeout=15, what="delivery")
        attempts.append(got[0]["attempt"])
    assert attempts == [1, 2, 3, 4, 5]
    status_becomes(alice, cid, "dead")
    assert device.poll(wait=2).status_code == 204

    listed = subprocess.run(
        [IOTCTL, "commands", "list", str(device.id), "--status", "dead"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cid in listed.stdout
    subprocess.run([IOTCTL, "commands", "requeue", str(device.id)], check=True, capture_output=True)
    _requeued_runs_once_more(alice, device, cid)


def test_an_admin_requeues_a_dead_command_over_http_and_it_is_delivered_again(
    alice: Person, make_person
):
    device = alice.new_device()
    cid = alice.send(device, "flaky").json()["id"]
    for _ in range(5):
        eventually(lambda: device.commands(wait=5, lease=1), timeout=15, what="delivery")
    status_becomes(alice, cid, "dead")
    admin = make_person(admin=True)
    requeue = f"/commands/{cid}/requeue"

    refused = alice.api.post(requeue, headers=alice.headers)  # the owner is not an admin
    assert refused.status_code == 403, refused.text
    unknown = alice.api.post(f"/commands/{uuid.uuid4()}/requeue", headers=admin.headers)
    assert unknown.status_code == 404, unknown.text
    r = alice.api.post(requeue, headers=admin.headers)
    assert r.status_code == 200 and r.json() == {"id": cid, "status": "queued"}
    again = alice.api.post(requeue, headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["detail"] == "only dead commands can be requeued (not queued)"

    command = _requeued_runs_once_more(alice, device, cid)
    assert command["events"][7]["detail"] == {"requeued": 1, "by": admin.name}


def test_killing_the_replica_holding_a_lease_redelivers_from_the_other(
    alice: Person, stack, restart_guard
):
    device = alice.new_device()
    cid = alice.send(device, "survive").json()["id"]
    # The lease lives in Postgres, not in the replica: when it lapses, any replica hands the
    # command out again (docs/design.md §6 Failure behaviour).
    r = device.poll(wait=5, lease=5)
    assert r.status_code == 200 and r.json()["commands"][0]["id"] == cid
    holder = r.headers["x-replica"]
    pid = stack.info()[holder]["pid"]
    os.kill(pid, signal.SIGKILL)
    restart_guard(holder)  # keep it down, so the other replica must serve the device
    r = eventually(
        lambda: (x := device.poll(wait=5)).status_code == 200 and x,
        timeout=60,
        what="redelivery by the other replica",
    )
    assert r.headers["x-replica"] != holder
    assert [(c["id"], c["attempt"]) for c in r.json()["commands"]] == [(cid, 2)]
    assert device.ack(cid).status_code == 200
    status_becomes(alice, cid, "succeeded")


def test_stopping_a_replica_answers_its_waiting_long_polls_at_once(alice: Person, restart_guard):
    device = alice.new_device()
    holder = device.poll(wait=0).headers["x-replica"]  # nginx routes a credential to one replica
    answers: list[tuple[int, str, float]] = []

    def wait_long() -> None:
        started = time.monotonic()
        r = device.poll(wait=25)
        answers.append((r.status_code, r.headers.get("x-replica", ""), time.monotonic() - started))

    poller = threading.Thread(target=wait_long)
    poller.start()
    time.sleep(1)  # the poll waits on the holder now
    restart_guard(holder)  # a graceful stop (SIGTERM), as a deploy or `iotctl restart` does
    poller.join(30)
    # Answered by the stopping replica with "nothing yet" well before its 25 s, never cancelled
    # with a 500 at the end of the shutdown timeout; the device simply polls again.
    [(status, replica, took)] = answers
    assert (status, replica) == (204, holder)
    assert took < 15


def test_a_device_can_neither_see_nor_ack_anothers_commands(alice: Person, make_person):
    a, b = alice.new_device("a"), alice.new_device("b")
    cid = alice.send(a, "for-a").json()["id"]
    assert b.poll(wait=1).status_code == 204
    assert b.ack(cid).status_code == 404
    assert b.api.get(f"/commands/{cid}", headers=b.headers).status_code == 404
    bob = make_person()
    assert bob.api.get(f"/commands/{cid}", headers=bob.headers).status_code == 404
    assert bob.api.post(f"/commands/{cid}/cancel", headers=bob.headers).status_code == 404
    assert bob.send(a, "hijack").status_code == 404
    r = bob.api.get(f"/devices/{a.id}/commands", headers=bob.headers)
    assert r.status_code == 404
    assert [c["id"] for c in a.commands(wait=5)] == [cid]


def test_idempotency_key_gives_the_same_command_once(alice: Person):
    device = alice.new_device()
    first = alice.send(device, "once", key="order-42")
    second = alice.send(device, "once", key="order-42")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    got = device.commands(wait=5, limit=10) + device.commands(wait=1, limit=10)
    assert [c["id"] for c in got] == [first.json()["id"]]


def test_a_full_device_queue_answers_429(alice: Person, settings):
    device = alice.new_device()
    codes = [alice.send(device, f"c{i}").status_code for i in range(settings.command_queue_max + 5)]
    assert codes.count(201) >= settings.command_queue_max - 1
    assert 429 in codes
    r = alice.send(device, "one-more")
    assert r.status_code == 429 and "full" in r.json()["detail"]


def test_history_is_newest_first_and_paginated(alice: Person):
    device = alice.new_device()
    ids = [alice.send(device, f"h{i}").json()["id"] for i in range(5)]
    url = f"/devices/{device.id}/commands"

    def logged():
        page = alice.api.get(url, params={"limit": 10}, headers=alice.headers).json()
        return len(page["commands"]) == 5

    eventually(logged, what="5 commands in the log")
    seen, before = [], None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = alice.api.get(url, params=params, headers=alice.headers).json()
        seen += [c["id"] for c in page["commands"]]
        before = page["next"]
        if not before:
            break
    assert seen == list(reversed(ids))
    queued = alice.api.get(url, params={"status": "queued"}, headers=alice.headers).json()
    assert len(queued["commands"]) == 5
    typo = alice.api.get(url, params={"status": "queud"}, headers=alice.headers)
    assert typo.status_code == 422, typo.text
    assert "queued" in typo.text  # the answer names the statuses there are


def test_commands_wait_in_commands_data_while_no_row_can_be_written_and_cancel_still_holds(
    alice: Person, stack, settings, restart_guard
):
    """201 means durable in `commands.data` even when no row exists: accepted while the
    database was unreachable, the commands wait for the worker. A cancel of such a command
    writes its row, and the late insert by the worker does not revive it."""
    device = alice.new_device()
    restart_guard("worker-commandlog")
    proxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    proxy.set_enabled("postgres", False)
    try:
        keep = alice.send(device, "keep").json()["id"]
        drop = alice.send(device, "drop").json()["id"]
    finally:
        proxy.set_enabled("postgres", True)
        proxy.close()
        wait_database_back(settings)
    assert _poll_like_a_device(device).status_code == 204  # not stored yet: nothing to claim
    r = alice.api.post(f"/commands/{drop}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    stack.start_program("worker-commandlog")
    got = eventually(lambda: device.commands(wait=5), timeout=60, what="delivery after restart")
    assert [c["id"] for c in got] == [keep]
    assert device.ack(keep).status_code == 200
    assert device.poll(wait=1).status_code == 204
    assert statuses(alice, drop) == ["queued", "cancelled"]
    assert alice.command(drop)["status"] == "cancelled"


def test_commands_the_worker_stores_after_an_outage_become_rows_in_the_order_accepted(
    alice: Person, pg, settings
):
    """Accepted while the database was unreachable, a device's commands wait in
    `commands.data`; the worker stores them one after the other in the order accepted, so no
    poll can see a later one before an earlier one (FIFO per device)."""
    device = alice.new_device()
    proxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    proxy.set_enabled("postgres", False)
    try:
        sent = [alice.send(device, f"step-{i}").json()["id"] for i in range(6)]
    finally:
        proxy.set_enabled("postgres", True)
        proxy.close()
        wait_database_back(settings)

    def stored() -> list[str] | None:
        rows = pg.execute(
            # xmin: the transaction that wrote each row; later transactions have larger ids
            "SELECT id::text FROM commands WHERE device_id = %s ORDER BY xmin::text::bigint",
            (device.id,),
        ).fetchall()
        return [r[0] for r in rows] if len(rows) == len(sent) else None

    assert eventually(stored, timeout=60, what="every command stored") == sent
    r = _poll_like_a_device(device, wait=5)
    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()["commands"]] == sent
