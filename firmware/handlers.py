# Command handlers: the built-ins (ping, set_output, set_interval, reboot) plus your own.
# A handler is f(device, args) -> dict | None; raise Reject for arguments it cannot take.
from iotcore.core import Reject
from iotcore.handlers import registry


@registry.command()
def blink(device, args):
    """An example: {"times": 3} blinks the LED output."""
    import time

    times = args.get("times", 1)
    if not isinstance(times, int) or not 1 <= times <= 20:
        raise Reject("'times' must be 1 to 20")
    led = device.outputs.get("led")
    if led is None:
        raise Reject("no LED output")
    for _ in range(times):
        led.value(1)
        time.sleep_ms(150)
        led.value(0)
        time.sleep_ms(150)
    return {"blinked": times}
