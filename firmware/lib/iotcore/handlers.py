"""The built-in command handlers. A handler is ``f(device, args) -> dict | None``; the dict is
the ack's result. Raise :class:`Reject` for arguments it cannot take (acked ``rejected``); any
other exception acks ``failed``. Add your own with ``@registry.command()`` (see handlers.py
beside main.py)."""

from iotcore.registry import Registry, Reject

registry = Registry()


@registry.command()
def ping(device, args):
    return {"pong": True, "stats": device.stats()}


@registry.command()
def set_output(device, args):
    """``{"name": "relay", "on": true}``: switch one of the device's outputs (relay, LED)."""
    name = args.get("name")
    on = args.get("on")
    if name not in device.outputs:
        raise Reject("no output %r; have %s" % (name, sorted(device.outputs)))
    if not isinstance(on, bool):
        raise Reject("'on' must be true or false")
    device.outputs[name].value(1 if on else 0)
    return {"name": name, "on": on}


@registry.command()
def set_interval(device, args):
    """``{"seconds": 30}``: how often the sensors are read (1 s to 1 day)."""
    seconds = args.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise Reject("'seconds' must be a number")
    if not 1 <= seconds <= 86400:
        raise Reject("'seconds' must be between 1 and 86400")
    device.set_interval(seconds)
    return {"seconds": seconds}


@registry.command()
def reboot(device, args):
    """Restart once the ack is accepted (acking after the restart would run it again)."""
    if device.restart is None:
        raise Reject("this device cannot restart")
    device.later(device.current_command, device.restart)
    return {"rebooting": True}
