"""What the protocol's loops yield and get back, and :func:`drive`, which carries them out.

A loop (``Device.run``, ``uploads``, ``commands``) is a generator: it yields a :class:`Request`
and receives the :class:`Response`, or yields a :class:`Sleep` and receives None. ``drive``
runs one over a blocking transport (sockets on the board); ``host.drive_async`` over httpx.
"""

import time

try:
    import json
except ImportError:  # very small MicroPython builds
    import ujson as json  # type: ignore[no-redef]

_MP = hasattr(time, "ticks_ms")


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
