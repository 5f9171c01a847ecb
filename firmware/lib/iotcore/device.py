"""One device's protocol state and its loops: readings buffered and sent, commands polled, run
once and acked, failures backed off. No I/O: the loops yield effects (``iotcore.effects``)."""

from iotcore.backoff import Backoff
from iotcore.buffer import ReadingBuffer
from iotcore.clock import Clock, rfc3339
from iotcore.effects import Request, Sleep
from iotcore.recent_ids import RecentIds
from iotcore.store import MemoryStore

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
