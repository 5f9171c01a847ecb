"""Command handlers by name, and :class:`Reject` for a handler to refuse its arguments."""


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
