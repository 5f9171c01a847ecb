"""Retry timing: exponential backoff with jitter, and a server's Retry-After honoured."""

try:
    import random
except ImportError:
    random = None


def uniform(low, high):
    if random is None:
        return high
    return low + (high - low) * (random.getrandbits(16) / 65536)


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
