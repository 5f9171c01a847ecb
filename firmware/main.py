# The device loop: read sensors, send readings, long-poll commands, ack them; forever.
import time

import machine

import config
import wifi
from handlers import registry
from iotcore.core import Device, FileStore, drive
from iotcore.http import HttpTransport
from sensors import SHT31, ChipTemperature


def log(text):
    print("%d %s" % (time.ticks_ms(), text))


def sensors():
    found = []
    try:
        found.append(ChipTemperature())
    except ImportError:
        pass
    if config.SHT31_ADDRESS is not None:
        i2c = machine.I2C(0, scl=machine.Pin(config.I2C_SCL), sda=machine.Pin(config.I2C_SDA))
        found.append(SHT31(i2c, config.SHT31_ADDRESS))
    return found


def cadata():
    if not getattr(config, "CA_CERT_FILE", None):
        return None
    with open(config.CA_CERT_FILE, "rb") as f:
        return f.read()


def main():
    drivers = sensors()
    outputs = {}
    for name, pin in config.OUTPUTS.items():
        outputs[name] = machine.Pin(pin, machine.Pin.OUT, value=0)

    def sample(device):
        if not wifi_up():
            log("wifi down: reconnecting")
            try:
                wifi.connect(config.WIFI_SSID, config.WIFI_PASSWORD, attempts=1)
            except OSError as exc:
                log(str(exc))
        for d in drivers:
            try:
                for name, value in d.read().items():
                    device.add_reading(name, value)
            except OSError as exc:
                log("sensor %s: %s" % (type(d).__name__, exc))

    device = Device(
        config.DEVICE_TOKEN,
        registry,
        config={
            "reading_interval_s": config.READING_INTERVAL_S,
            "poll_wait_s": config.POLL_WAIT_S,
            "buffer_max": config.BUFFER_MAX,
        },
        store=FileStore(config.STATE_FILE),
        sample=sample,
        outputs=outputs,
        restart=machine.reset,
        log=log,
    )
    transport = HttpTransport(config.SERVER_URL, config.DEVICE_TOKEN, cadata())
    watchdog = machine.WDT(timeout=config.WATCHDOG_S * 1000)
    log("running; %d sensors, outputs %s" % (len(drivers), sorted(outputs)))
    drive(device.run(), transport, feed=watchdog.feed)


def wifi_up():
    import network

    return network.WLAN(network.STA_IF).isconnected()


try:
    main()
except Exception as exc:  # noqa: BLE001 - never stay down: log, wait, restart
    import sys

    sys.print_exception(exc)
    time.sleep(10)
    machine.reset()
