"""Readings waiting for a 2xx: a bounded buffer that drops (and counts) the oldest."""


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
