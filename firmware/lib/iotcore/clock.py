"""Time as the protocol needs it: a monotonic clock and the wall clock in integer milliseconds
(ESP32 floats are 32-bit, too coarse for clocks), and RFC 3339 stamps for readings."""

import time

_MP = hasattr(time, "ticks_ms")
SYNCED_AFTER_MS = 1577836800000  # 2020-01-01: a wall clock before that is not set yet


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


_second = [None, ""]  # the last second formatted: a device stamps several readings in one


def rfc3339(ms):
    s = ms // 1000
    if _second[0] != s:
        t = time.gmtime(s)
        _second[1] = "%04d-%02d-%02dT%02d:%02d:%02d" % (t[0], t[1], t[2], t[3], t[4], t[5])
        _second[0] = s
    return "%s.%03dZ" % (_second[1], ms % 1000)
