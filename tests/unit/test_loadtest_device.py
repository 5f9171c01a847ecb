"""The emulated device's bookkeeping: backoff, the firmware core it runs, the ledger of what
was accepted, commands run once, time formats and the pool that hands devices to users."""

from __future__ import annotations

import random

import pytest
from iotcore.core import Response

from loadtest.device import (
    Backoff,
    DevicePool,
    DeviceState,
    PoolExhausted,
    load_registry,
    parse_time,
    retry_after_seconds,
)


def test_backoff_grows_with_jitter_is_capped_and_honours_retry_after():
    b = Backoff(base=0.5, cap=4, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for n, d in enumerate(delays):
        ceiling = min(4, 0.5 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next_delay(retry_after=3) == 3
    assert b.next_delay(retry_after=100) == 4  # Retry-After is capped too
    assert retry_after_seconds("2") == 2 and retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_emulated_devices_run_the_firmware_core_and_keep_a_ledger_of_what_was_accepted():
    d = DeviceState(0, "dev", "tok", buffer_limit=12)
    core = d.device(load_registry(), {"reading_interval_s": 10}, batch=5)
    assert d.device(load_registry(), {}) is core  # one core per device, kept across users
    rng = random.Random(0)
    d.measure(1_800_000_000.0, 5, rng)
    d.measure(1_800_000_000.0, 5, rng)  # same instant: still unique
    stamps = list(d.pending)
    assert stamps == sorted(set(stamps)) and len(stamps) == 10
    assert core.buffer.items[0][1]["ts"] == "2027-01-15T08:00:00.000Z"
    request = core.upload_request()  # the core sends what it buffered, oldest first
    assert [r["ts"] for r in request.body["readings"]][:1] == ["2027-01-15T08:00:00.000Z"]
    d.measure(1_800_000_010.0, 5, rng)  # while the POST is in flight; 3 oldest dropped
    assert d.dropped == 3 and len(d.pending) == 12
    d.sent(7)  # 201 for what is left of the batch: the ledger takes their timestamps
    assert d.accepted.count == 7 and d.accepted.last_ms == stamps[-1]
    assert d.accepted.first_ms == stamps[3]
    d.refused(5)
    assert d.unsent == 0 and d.dropped == 8


def test_emulated_devices_run_each_command_once_and_ack_it_every_time():
    d = DeviceState(0, "dev", "tok")
    core = d.device(load_registry(), {})
    command = {"id": "c1", "name": "set_interval", "args": {"seconds": 1}}
    core.deliver(command)
    core.deliver(command)  # redelivered (a lost ack): acked again, not run again
    assert core.executed == 1 and core.duplicates == 1
    assert core.config["reading_interval_s"] == 10  # the load's shape does not change
    core.deliver({"id": "c2", "name": "self_destruct", "args": {}})
    assert [a[1] for a in core.acks] == ["succeeded", "rejected"]
    request = core.ack_request()
    assert request is not None and request.path == "/commands/c1/ack"
    core.done(request, Response(200))
    assert [a[0] for a in core.acks] == ["c2"]


def test_time_formats():
    assert parse_time("2026-11-30T00:53:20.123Z") == pytest.approx(1_796_000_000.123)
    assert parse_time("2026-11-30T01:53:20.123+01:00") == pytest.approx(1_796_000_000.123)
    with pytest.raises(ValueError):
        parse_time("2026-11-30T00:53:20")


def test_device_pool_gives_each_process_its_slice_lowest_first():
    devices = [{"id": f"d{i}", "token": f"t{i}"} for i in range(7)]
    pools = [DevicePool(devices, k, 3, buffer_limit=10) for k in range(3)]
    assert [sorted(p.states) for p in pools] == [[0, 3, 6], [1, 4], [2, 5]]
    p = pools[0]
    a, b = p.take(), p.take()
    assert (a.id, b.id) == ("d0", "d3")
    p.give_back(a)
    assert p.take().id == "d0"
    p.take()
    with pytest.raises(PoolExhausted):
        p.take()
    with pytest.raises(ValueError, match="LOAD_WORKERS"):
        DevicePool(devices, 3, 3, buffer_limit=10)
