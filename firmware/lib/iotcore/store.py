"""Where a device keeps what must survive a restart (its recent command ids): in memory, or in
a JSON file (flash on the board)."""

try:
    import json
except ImportError:  # very small MicroPython builds
    import ujson as json  # type: ignore[no-redef]


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
