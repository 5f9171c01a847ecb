"""The command ids a device ran lately, with their outcomes: each command runs at most once,
even across restarts (the list is saved before a command runs)."""


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
