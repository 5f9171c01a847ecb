"""The device protocol, the same on MicroPython (ESP32) and CPython (simulator, chaos fleet,
tests). It does no I/O itself: the loops are generators that yield a :class:`Request` (and get
a :class:`Response` back) or a :class:`Sleep`; a driver runs them over a transport (blocking
sockets on the board, httpx on CPython). Times are integer milliseconds: ESP32 floats are
32-bit, too coarse for clocks.

Rules it keeps:
- readings wait in a bounded buffer until a 2xx; when full, the oldest is dropped and counted;
- each command id runs once: recent ids are persisted (flash on the board) before running;
- each ack is retried until a 2xx; a redelivered command is acked again, not run again;
- failures back off exponentially with jitter; a Retry-After is honoured.
"""

import time

try:
    import json
except ImportError:  # very small MicroPython builds
    import ujson as json  # type: ignore[no-redef]

try:
    import random
except ImportError:
    random = None

_MP = hasattr(time, "ticks_ms")
SYNCED_AFTER_MS = 1577836800000  # 2020-01-01: a wall clock before that is not set yet
# Answers that no retry can change: drop what was sent (and count it) instead of retrying.
PERMANENT = (400, 413, 422)

DEFAULTS = {
    "reading_interval_s": 10,
    "poll_wait_s": 20,  # long poll; the API allows up to 30
    "poll_limit": 10,
    "lease_s": None,  # None: the API's default
    "buffer_max": 500,
    "batch_max": 100,
    "backoff_base_ms": 500,
    "backoff_cap_ms": 60000,
    "retry_after_cap_ms": 300000,
    "recent_ids": 64,
    "request_timeout_s": 10,
}


# ----- effects -----
class Request:
    def __init__(self, kind, method, path, query=None, body=None, timeout_ms=10000):
        self.kind = kind  # "readings", "polls" or "acks"
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.timeout_ms = timeout_ms

    def url(self, base):
        if not self.query:
            return base + self.path
        parts = ["%s=%s" % (k, self.query[k]) for k in sorted(self.query)]
        return base + self.path + "?" + "&".join(parts)


class Response:
    """status 0: no answer (``error`` says why)."""

    def __init__(self, status, headers=None, body=b"", error=None):
        self.status = status
        self.headers = headers or {}  # lower-case names
        self.body = body
        self.error = error
        self.raw = None  # the host library's own response, when there is one

    def ok(self):
        return 200 <= self.status < 300

    def json(self):
        body = self.body
        if isinstance(body, bytes):
            body = body.decode()
        return json.loads(body) if body else None


class Sleep:
    def __init__(self, ms):
        self.ms = ms if ms > 1 else 1


# ----- clocks, randomness, persistence -----
class Clock:
    """now_ms(): monotonic; wall_ms(): Unix time, or None while the clock is not set."""

    def __init__(self):
        self._elapsed = 0
        self._last = time.ticks_ms() if _MP else 0

    def now_ms(self):
        if _MP:
            t = time.ticks_ms()
            self._elapsed += time.ticks_diff(t, self._last)
            self._last = t
            return self._elapsed
        return time.monotonic_ns() // 1000000

    def wall_ms(self):
        ms = time.time_ns() // 1000000 if hasattr(time, "time_ns") else int(time.time()) * 1000
        return ms if ms >= SYNCED_AFTER_MS else None


def uniform(low, high):
    if random is None:
        return high
    return low + (high - low) * (random.getrandbits(16) / 65536)


_second = [None, ""]  # the last second formatted: a device stamps several readings in one


def rfc3339(ms):
    s = ms // 1000
    if _second[0] != s:
        t = time.gmtime(s)
        _second[1] = "%04d-%02d-%02dT%02d:%02d:%02d" % (t[0], t[1], t[2], t[3], t[4], t[5])
        _second[0] = s
    return "%s.%03dZ" % (_second[1], ms % 1000)


class MemoryStore:
    def __init__(self):
        self.value = None

    def load(self):
        return self.value

    def save(self, value):
        self.value = value


class FileStore:
    """A JSON file; written to a temporary name, then renamed over the old one."""

    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def save(self, value):
        import os

        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(value))
        os.rename(tmp, self.path)


# ----- parts -----
class Backoff:
    """Exponential with "equal jitter": the n-th delay is uniform in [d/2, d], d = base * 2^n,
    capped. A Retry-After (seconds) replaces it, plus up to 10 % jitter so devices spread."""

    def __init__(self, base_ms, cap_ms, retry_after_cap_ms):
        self.base_ms, self.cap_ms, self.retry_after_cap_ms = base_ms, cap_ms, retry_after_cap_ms
        self.failures = 0

    def reset(self):
        self.failures = 0

    def next_ms(self, response=None):
        self.failures += 1
        after = retry_after_ms(response)
        if after is not None:
            after = min(after, self.retry_after_cap_ms)
            return int(after + uniform(0, after / 10))
        d = min(self.cap_ms, self.base_ms * (1 << min(self.failures - 1, 20)))
        return int(uniform(d / 2, d))


def retry_after_ms(response):
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0, int(float(value) * 1000))
    except ValueError:  # an HTTP date: use our own backoff
        return None


class ReadingBuffer:
    """Readings not yet accepted, oldest first; at most ``limit`` (the oldest go first, counted
    in ``dropped``). Each has a sequence number, so confirming a batch removes exactly what was
    sent even if readings were added or dropped meanwhile."""

    def __init__(self, limit):
        self.limit = limit
        self.items = []
        self.seq = 0
        self.dropped = 0

    def __len__(self):
        return len(self.items)

    def add(self, reading):
        self.seq += 1
        self.items.append((self.seq, reading))
        while len(self.items) > self.limit:
            self.items.pop(0)
            self.dropped += 1

    def batch(self, n):
        taken = self.items[:n]
        return (taken[-1][0] if taken else 0), [r for _, r in taken]

    def confirm(self, last_seq):
        i = 0
        while i < len(self.items) and self.items[i][0] <= last_seq:
            i += 1
        del self.items[:i]


class RecentIds:
    """The last ``limit`` command ids with their outcome, persisted in ``store``."""

    def __init__(self, store, limit):
        self.store, self.limit = store, limit
        self.entries = store.load() or []  # [[id, status, result], ...], oldest first

    def get(self, command_id):
        for e in self.entries:
            if e[0] == command_id:
                return e
        return None

    def put(self, command_id, status, result):
        e = self.get(command_id)
        if e is None:
            self.entries.append([command_id, status, result])
            del self.entries[: max(0, len(self.entries) - self.limit)]
        else:
            e[1], e[2] = status, result
        self.store.save(self.entries)


class Reject(Exception):
    """Raised by a handler: the command is acked ``rejected`` (bad arguments, not supported)."""


class Registry:
    """Command name -> handler(device, args) returning a dict (the ack's result) or None."""

    def __init__(self):
        self.handlers = {}

    def add(self, name, handler):
        self.handlers[name] = handler

    def command(self, name=None):
        def register(handler):
            self.add(name or handler.__name__, handler)
            return handler

        return register

    def run(self, device, name, args):
        handler = self.handlers.get(name)
        if handler is None:
            return "rejected", {"error": "unknown command " + name}
        try:
            result = handler(device, args)
        except Reject as exc:
            return "rejected", {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a failing handler must not stop the device
            return "failed", {"error": "%s: %s" % (type(exc).__name__, exc)}
        if result is None:
            result = {}
        elif not isinstance(result, dict):
            result = {"value": result}
        return "succeeded", result


# ----- the device -----
class Device:
    """One device's protocol state. ``sample(device)`` is called every reading interval and
    adds readings with :meth:`add_reading`; ``events(name, *args)`` hears what happens
    ("response", "sent", "delivered", "acked", "refused"); ``restart()`` reboots."""

    def __init__(
        self,
        token,
        registry,
        config=None,
        store=None,
        clock=None,
        sample=None,
        outputs=None,
        restart=None,
        events=None,
        log=None,
    ):
        cfg = dict(DEFAULTS)
        cfg.update(config or {})
        self.config = cfg
        self.token = token
        self.registry = registry
        self.clock = clock or Clock()
        self.sample = sample
        self.outputs = outputs if outputs is not None else {}
        self.restart = restart
        self.events = events
        self.log = log
        self.buffer = ReadingBuffer(cfg["buffer_max"])
        self.recent = RecentIds(store or MemoryStore(), cfg["recent_ids"])
        self.acks = []  # [id, status, result], oldest first
        self.after_ack = []  # (command id, callable) to run once that ack is accepted
        b = (cfg["backoff_base_ms"], cfg["backoff_cap_ms"], cfg["retry_after_cap_ms"])
        self.backoff = {"readings": Backoff(*b), "polls": Backoff(*b), "acks": Backoff(*b)}
        now = self.clock.now_ms()
        self.due = {"readings": now, "polls": now, "acks": now, "sample": now}
        self.sent = self.rejected = self.executed = self.duplicates = self.acked = 0
        self.stopped = False
        self.current_command = None
        self._in_flight = 0

    # -- readings --
    def add_reading(self, sensor, value, ts_ms=None):
        """Without a set clock the reading goes without ``ts``: the API stamps it on receipt."""
        reading = {"sensor": sensor, "value": value}
        ts_ms = ts_ms if ts_ms is not None else self.clock.wall_ms()
        if ts_ms is not None:
            reading["ts"] = rfc3339(ts_ms)
        self.buffer.add(reading)

    def set_interval(self, seconds):
        self.config["reading_interval_s"] = seconds
        self.due["sample"] = min(self.due["sample"], self.clock.now_ms() + int(seconds * 1000))

    def headers(self):
        return {"Authorization": "Bearer " + self.token}

    def _timeout_ms(self, extra_s=0):
        return int((self.config["request_timeout_s"] + extra_s) * 1000)

    def upload_request(self):
        if not len(self.buffer) or self.clock.now_ms() < self.due["readings"]:
            return None
        self._in_flight, readings = self.buffer.batch(self.config["batch_max"])
        return Request(
            "readings", "POST", "/sensors", body={"readings": readings},
            timeout_ms=self._timeout_ms(),
        )

    def upload_done(self, request, response):
        readings = request.body["readings"]
        if response.ok():
            self.buffer.confirm(self._in_flight)
            self.sent += len(readings)
            self._emit("sent", readings)
            self._succeeded("readings")
        elif response.status in PERMANENT:
            self.buffer.confirm(self._in_flight)
            self.rejected += len(readings)
            self._emit("refused", request, response)
            self._say("readings refused for good: %d" % response.status)
        else:
            self._failed("readings", response)

    # -- commands --
    def poll_request(self, wait_s=None):
        cfg = self.config
        wait = cfg["poll_wait_s"] if wait_s is None else wait_s
        query = {"wait": wait, "limit": cfg["poll_limit"]}
        if cfg["lease_s"]:
            query["lease"] = cfg["lease_s"]
        return Request("polls", "GET", "/commands", query, timeout_ms=self._timeout_ms(wait))

    def poll_done(self, request, response):
        if response.status == 204:
            self._succeeded("polls")
        elif response.status == 200:
            try:
                commands = response.json()["commands"]
            except (ValueError, KeyError, TypeError):  # a proxy's page, a cut body: poll again
                self._failed("polls", response)
                return
            self._succeeded("polls")
            for command in commands:
                self.deliver(command)
        else:
            self._failed("polls", response)

    def deliver(self, command):
        """Run a delivered command unless its id ran already; queue its ack either way."""
        cid = command["id"]
        seen = self.recent.get(cid)
        self._emit("delivered", command, seen is None)
        if seen is not None:
            self.duplicates += 1
            status, result = seen[1], seen[2]
            if status == "running":  # a restart interrupted it: it must not run again
                status, result = "failed", {"error": "interrupted by a restart"}
                self.recent.put(cid, status, result)
        else:
            self.recent.put(cid, "running", None)  # before running: at most once
            self.current_command = cid
            status, result = self.registry.run(self, command["name"], command.get("args") or {})
            self.recent.put(cid, status, result)
            self.executed += 1
        for a in self.acks:
            if a[0] == cid:
                return
        self.acks.append([cid, status, result])

    def ack_request(self):
        if not self.acks or self.clock.now_ms() < self.due["acks"]:
            return None
        cid, status, result = self.acks[0]
        body = {"status": status, "result": result}
        return Request(
            "acks", "POST", "/commands/%s/ack" % cid, body=body, timeout_ms=self._timeout_ms()
        )

    def ack_done(self, request, response):
        cid = self.acks[0][0]
        if response.ok() or response.status == 404:
            self.acks.pop(0)
            if response.ok():
                self.acked += 1
                self._emit("acked", cid)
                self._succeeded("acks")
            else:  # not this device's command (or deleted): nobody to tell
                self._emit("refused", request, response)
            todo = [f for c, f in self.after_ack if c == cid]
            self.after_ack = [(c, f) for c, f in self.after_ack if c != cid]
            for f in todo:
                f()
        else:
            self._failed("acks", response)

    def later(self, command_id, action):
        """Run ``action`` once the ack of ``command_id`` is accepted (e.g. a reboot)."""
        self.after_ack.append((command_id, action))

    # -- bookkeeping --
    def done(self, request, response):
        self._emit("response", request, response)
        if request.kind == "readings":
            self.upload_done(request, response)
        elif request.kind == "polls":
            self.poll_done(request, response)
        else:
            self.ack_done(request, response)

    def _succeeded(self, kind):
        self.backoff[kind].reset()
        self.due[kind] = self.clock.now_ms()

    def _failed(self, kind, response):
        delay = self.backoff[kind].next_ms(response)
        self.due[kind] = self.clock.now_ms() + delay
        self._say("%s: %s, retry in %d ms" % (kind, response.status or response.error, delay))

    def _emit(self, *args):
        if self.events is not None:
            self.events(*args)

    def _say(self, text):
        if self.log is not None:
            self.log(text)

    def _sample_if_due(self, now):
        if self.sample is not None and now >= self.due["sample"]:
            self.sample(self)
            step = int(self.config["reading_interval_s"] * 1000)
            self.due["sample"] = max(self.due["sample"] + step, now + step // 2)

    def stats(self):
        return {
            "buffered": len(self.buffer),
            "sent": self.sent,
            "dropped": self.buffer.dropped,
            "rejected": self.rejected,
            "executed": self.executed,
            "duplicates": self.duplicates,
            "acked": self.acked,
            "acks_pending": len(self.acks),
        }

    # -- loops (generators: yield Request or Sleep, receive Response or None) --
    def run(self):
        """Everything on one thread, as on the board: sample, send, ack, then long-poll until
        the next sample is due (at least 1 s)."""
        while not self.stopped:
            now = self.clock.now_ms()
            self._sample_if_due(now)
            request = self.upload_request() or self.ack_request()
            if request is None and not self.acks and now >= self.due["polls"]:
                wait = self.config["poll_wait_s"]
                if self.sample is not None:
                    # until the next sample, rounded up (at least 1 s): the sample may come
                    # up to 1 s late; rounding down cost a second, short poll per interval
                    wait = min(wait, max(1, (self.due["sample"] - now + 999) // 1000))
                request = self.poll_request(wait)
            if request is not None:
                response = yield request
                self.done(request, response)
                continue
            wake = [self.due["polls"]]
            if self.sample is not None:
                wake.append(self.due["sample"])
            if len(self.buffer):
                wake.append(self.due["readings"])
            if self.acks:
                wake.append(self.due["acks"])
            yield Sleep(min(wake) - now)

    def uploads(self):
        """Sampling and sending only (a host that polls in parallel with :meth:`commands`)."""
        while not self.stopped:
            now = self.clock.now_ms()
            self._sample_if_due(now)
            request = self.upload_request()
            if request is not None:
                response = yield request
                self.done(request, response)
                continue
            wake = [self.due["sample"]] if self.sample is not None else [now + 200]
            if len(self.buffer):
                wake.append(self.due["readings"])
            yield Sleep(min(wake) - now)

    def commands(self):
        """Polling, running and acking only."""
        while not self.stopped:
            now = self.clock.now_ms()
            request = self.ack_request()
            if request is None and not self.acks and now >= self.due["polls"]:
                request = self.poll_request()
            if request is not None:
                response = yield request
                self.done(request, response)
                continue
            yield Sleep((self.due["acks"] if self.acks else self.due["polls"]) - now)


def drive(loop, transport, sleep_ms=None, feed=None, max_sleep_ms=1000):
    """Run a loop generator over a blocking ``transport.request(Request) -> Response``.
    ``feed`` (a watchdog's) is called at every step and at least every ``max_sleep_ms``."""
    if sleep_ms is None:
        sleep_ms = time.sleep_ms if _MP else (lambda ms: time.sleep(ms / 1000))
    answer = None
    while True:
        try:
            effect = loop.send(answer)
        except StopIteration:
            return
        if feed is not None:
            feed()
        if isinstance(effect, Sleep):
            left = effect.ms
            while left > 0:
                step = min(left, max_sleep_ms)
                sleep_ms(step)
                left -= step
                if feed is not None:
                    feed()
            answer = None
        else:
            answer = transport.request(effect)
