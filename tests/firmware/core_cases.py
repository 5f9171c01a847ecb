# The protocol core's cases, run twice: by CPython (pytest imports this module) and by the
# MicroPython interpreter (tests/firmware/test_core.py copies this file and the core into it).
# So: plain asserts, no pytest, no f-strings or annotations beyond what MicroPython takes.
# ruff: noqa: UP031
import io

from iotcore.core import (
    Backoff,
    Device,
    FileStore,
    MemoryStore,
    ReadingBuffer,
    Registry,
    Reject,
    Request,
    Response,
    Sleep,
    rfc3339,
)
from iotcore.handlers import registry as builtins
from iotcore.http import _read_response, split_url


class FakeClock:
    def __init__(self, wall=None):
        self.now = 1000
        self.wall = wall

    def now_ms(self):
        return self.now

    def wall_ms(self):
        return self.wall


class Pin:
    def __init__(self):
        self.v = 0

    def value(self, v=None):
        if v is not None:
            self.v = v
        return self.v


def ok(status=201, body=b"{}", headers=None):
    return Response(status, headers or {}, body)


def commands_body(*commands):
    items = []
    for cid, name, args in commands:
        items.append('{"id": "%s", "name": "%s", "args": %s}' % (cid, name, args))
    return ('{"commands": [%s]}' % ", ".join(items)).encode()


def device(clock=None, store=None, registry=None, **config):
    config.setdefault("backoff_base_ms", 100)
    config.setdefault("backoff_cap_ms", 1600)
    return Device(
        "dvc_t",
        registry or builtins,
        config=config,
        store=store or MemoryStore(),
        clock=clock or FakeClock(),
    )


def test_the_buffer_drops_the_oldest_and_counts_them():
    b = ReadingBuffer(3)
    for i in range(5):
        b.add({"value": i})
    assert [r["value"] for _, r in b.items] == [2, 3, 4]
    assert b.dropped == 2


def test_a_reading_without_a_set_clock_has_no_ts_and_one_with_it_has_rfc3339():
    d = device(FakeClock(wall=None))
    d.add_reading("t", 1.5)
    d.clock.wall = 1764504000123  # 2025-11-30T12:00:00.123Z
    d.add_reading("t", 2.5)
    readings = d.upload_request().body["readings"]
    assert readings[0] == {"sensor": "t", "value": 1.5}
    assert readings[1] == {"sensor": "t", "value": 2.5, "ts": "2025-11-30T12:00:00.123Z"}
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_readings_stay_until_a_2xx_and_only_what_was_sent_is_removed():
    d = device(batch_max=2)
    for i in range(3):
        d.add_reading("t", i, ts_ms=1764504000000 + i)
    req = d.upload_request()
    assert req.method == "POST" and req.path == "/sensors" and len(req.body["readings"]) == 2
    d.done(req, Response(0, error="timeout"))
    assert len(d.buffer) == 3 and d.upload_request() is None  # backing off
    d.clock.now += 100
    req = d.upload_request()
    d.add_reading("t", 9, ts_ms=1764504000009)  # arrives while the batch is in flight
    d.done(req, ok(201))
    assert [r["value"] for _, r in d.buffer.items] == [2, 9]
    assert d.sent == 2


def test_a_batch_refused_for_good_is_dropped_and_counted():
    events = []
    d = device()
    d.events = lambda *e: events.append(e[0])
    d.add_reading("t", 1)
    req = d.upload_request()
    d.done(req, ok(422, b'{"detail": []}'))
    assert len(d.buffer) == 0 and d.rejected == 1 and "refused" in events


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap_and_resets():
    b = Backoff(100, 1600, 10000)
    for n in range(8):
        d = min(1600, 100 * 2**n)
        delay = b.next_ms()
        assert d // 2 <= delay <= d, (n, delay)
    b.reset()
    assert b.next_ms() <= 100


def test_retry_after_is_honoured_with_a_little_jitter_and_a_cap():
    b = Backoff(100, 1600, 10000)
    delay = b.next_ms(Response(503, {"retry-after": "2"}))
    assert 2000 <= delay <= 2200
    assert 10000 <= b.next_ms(Response(503, {"retry-after": "3600"})) <= 11000
    assert b.next_ms(Response(503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) <= 1600


def test_a_command_runs_once_and_its_ack_is_retried_until_a_2xx():
    runs = []
    reg = Registry()
    reg.add("go", lambda dev, args: runs.append(args["n"]) or {"n": args["n"]})
    d = device(registry=reg, lease_s=30)
    poll = d.poll_request()
    assert poll.query == {"wait": 20, "limit": 10, "lease": 30}
    d.done(poll, ok(200, commands_body(("c1", "go", '{"n": 7}'))))
    assert runs == [7]
    ack = d.ack_request()
    assert ack.path == "/commands/c1/ack"
    assert ack.body == {"status": "succeeded", "result": {"n": 7}}
    d.done(ack, Response(503, {"retry-after": "1"}))
    assert d.ack_request() is None  # waiting
    d.clock.now += 1200
    d.done(poll, ok(200, commands_body(("c1", "go", '{"n": 7}'))))  # delivered again
    assert runs == [7] and d.duplicates == 1 and len(d.acks) == 1
    ack = d.ack_request()
    d.done(ack, ok(200))
    assert d.acks == [] and d.acked == 1 and runs == [7]


def test_after_a_restart_a_redelivered_command_is_acked_again_not_run():
    runs = []
    reg = Registry()
    reg.add("go", lambda dev, args: runs.append(1))
    store = MemoryStore()
    d = device(store=store, registry=reg)
    d.done(d.poll_request(), ok(200, commands_body(("c1", "go", "{}"))))
    assert runs == [1]
    again = device(store=store, registry=reg)  # a new boot with the same flash
    again.done(again.poll_request(), ok(200, commands_body(("c1", "go", "{}"))))
    assert runs == [1]
    assert again.ack_request().body == {"status": "succeeded", "result": {}}


def test_a_command_interrupted_by_a_restart_is_acked_failed_not_run_again():
    store = MemoryStore()
    store.save([["c1", "running", None]])
    runs = []
    reg = Registry()
    reg.add("go", lambda dev, args: runs.append(1))
    d = device(store=store, registry=reg)
    d.done(d.poll_request(), ok(200, commands_body(("c1", "go", "{}"))))
    assert runs == []
    assert d.ack_request().body["status"] == "failed"


def test_recent_ids_survive_in_a_file():
    store = FileStore("/tmp/iotcore-test-state.json")
    store.save([["c1", "succeeded", {"n": 1}]])
    d = device(store=FileStore("/tmp/iotcore-test-state.json"))
    assert d.recent.get("c1") == ["c1", "succeeded", {"n": 1}]
    assert FileStore("/tmp/iotcore-test-no-such-file.json").load() is None


def test_recent_ids_are_bounded():
    reg = Registry()
    reg.add("go", lambda dev, args: None)
    d = device(registry=reg, recent_ids=3)
    for i in range(5):
        d.deliver({"id": "c%d" % i, "name": "go", "args": {}})
    assert [e[0] for e in d.recent.entries] == ["c2", "c3", "c4"]


def test_unknown_commands_bad_arguments_and_crashing_handlers():
    reg = Registry()

    def picky(dev, args):
        raise Reject("no")

    def broken(dev, args):
        return 1 // 0

    reg.add("picky", picky)
    reg.add("broken", broken)
    d = device(registry=reg)
    assert reg.run(d, "nope", {})[0] == "rejected"
    assert reg.run(d, "picky", {}) == ("rejected", {"error": "no"})
    status, result = reg.run(d, "broken", {})
    assert status == "failed" and "ZeroDivisionError" in result["error"]


def test_the_built_in_handlers():
    d = device()
    d.outputs["relay"] = Pin()
    run = builtins.run
    assert run(d, "set_output", {"name": "relay", "on": True}) == (
        "succeeded",
        {"name": "relay", "on": True},
    )
    assert d.outputs["relay"].v == 1
    assert run(d, "set_output", {"name": "fan", "on": True})[0] == "rejected"
    assert run(d, "set_output", {"name": "relay", "on": "yes"})[0] == "rejected"
    assert run(d, "set_interval", {"seconds": 30}) == ("succeeded", {"seconds": 30})
    assert d.config["reading_interval_s"] == 30
    assert run(d, "set_interval", {"seconds": 0})[0] == "rejected"
    status, result = run(d, "ping", {})
    assert status == "succeeded" and result["pong"] is True


def test_reboot_happens_only_once_its_ack_is_accepted():
    restarts = []
    d = device()
    d.restart = lambda: restarts.append(1)
    d.done(d.poll_request(), ok(200, commands_body(("r1", "reboot", "{}"))))
    assert restarts == []
    ack = d.ack_request()
    d.done(ack, Response(0, error="timeout"))
    assert restarts == []
    d.clock.now += 2000
    d.done(d.ack_request(), ok(200))
    assert restarts == [1]


def test_the_single_thread_loop_samples_sends_acks_and_long_polls_until_the_next_sample():
    reg = Registry()
    reg.add("go", lambda dev, args: None)
    clock = FakeClock(wall=1764504000000)
    d = device(clock=clock, registry=reg, reading_interval_s=10, poll_wait_s=20)
    d.sample = lambda dev: dev.add_reading("t", 1.0)
    loop = d.run()
    step = loop.send(None)
    assert isinstance(step, Request) and step.kind == "readings"
    step = loop.send(ok(201))
    assert step.kind == "polls" and step.query["wait"] == 10  # not past the next sample
    clock.now += 5000
    step = loop.send(ok(200, commands_body(("c1", "go", "{}"))))
    assert step.kind == "acks"
    step = loop.send(ok(200))
    assert step.kind == "polls" and step.query["wait"] == 5
    clock.now += 5000
    step = loop.send(ok(204, b""))
    assert step.kind == "readings"  # the next sample, sent at once
    step = loop.send(Response(0, error="down"))
    clock.now += 1
    # Readings wait for their backoff; polling goes on meanwhile.
    assert step.kind == "polls"
    step = loop.send(Response(0, error="down"))
    assert isinstance(step, Sleep) and step.ms <= 200


def test_a_garbled_poll_answer_backs_off_instead_of_stopping_the_device():
    d = device()
    d.done(d.poll_request(), ok(200, b"<html>bad gateway</html>"))
    assert d.due["polls"] > d.clock.now and d.executed == 0


def _sampling_loop(interval_s):
    """A device sampling every ``interval_s`` that has just sent its first readings: its
    clock and its loop, waiting for the POST's answer."""
    clock = FakeClock(wall=1764504000000)
    d = device(clock=clock, reading_interval_s=interval_s, poll_wait_s=20)
    d.sample = lambda dev: dev.add_reading("t", 1.0)
    loop = d.run()
    assert loop.send(None).kind == "readings"
    return clock, loop


def test_one_long_poll_spans_the_time_to_the_next_sample():
    clock, loop = _sampling_loop(10)
    clock.now += 60  # the POST took 60 ms: the poll still waits until the next sample
    step = loop.send(ok(201))
    assert step.kind == "polls" and step.query["wait"] == 10
    clock.now += 10000
    assert loop.send(ok(204, b"")).kind == "readings"  # then the sample, 60 ms late


def test_frequent_samples_do_not_starve_the_long_poll():
    clock, loop = _sampling_loop(1)
    clock.now += 300
    step = loop.send(ok(201))
    assert step.kind == "polls" and step.query["wait"] == 1


def test_the_http_transport_reads_answers_and_urls():
    stream = io.BytesIO(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\n{}"
    )
    r = _read_response(stream)
    assert r.status == 503 and r.headers["retry-after"] == "2" and r.json() == {}
    chunked = io.BytesIO(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert _read_response(chunked).json() == {"a": 1}
    assert split_url("https://iot.example.com") == ("https", "iot.example.com", 443, "")
    assert split_url("http://127.0.0.1:8080/api/") == ("http", "127.0.0.1", 8080, "/api")
    req = Request("polls", "GET", "/commands", {"wait": 5, "limit": 10})
    assert req.url("/api") == "/api/commands?limit=10&wait=5"


def names():
    return [n for n in sorted(globals()) if n.startswith("test_")]


def run_all():
    """Used under MicroPython: one line per case, "PASS name" or "FAIL name: why"."""
    for name in names():
        try:
            globals()[name]()
            print("PASS " + name)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            print("FAIL %s: %s %s" % (name, type(exc).__name__, exc))
