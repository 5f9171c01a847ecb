"""Wi-Fi station with retries and exponential backoff."""

import time


def connect(ssid, password, attempts=0, timeout_s=15, log=print):
    """Connect (again) until up; ``attempts`` 0 means keep trying. Returns the WLAN."""
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    delay_s, tried = 1, 0
    while not wlan.isconnected():
        tried += 1
        log("wifi: connecting to %s (attempt %d)" % (ssid, tried))
        try:
            wlan.connect(ssid, password)
        except OSError as exc:
            log("wifi: %s" % exc)
        deadline = time.ticks_add(time.ticks_ms(), timeout_s * 1000)
        while not wlan.isconnected() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            time.sleep_ms(200)
        if wlan.isconnected():
            break
        if attempts and tried >= attempts:
            raise OSError("wifi: not connected after %d attempts" % tried)
        wlan.disconnect()
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 60)
    log("wifi: connected, %s" % (wlan.ifconfig()[0],))
    return wlan


def sync_clock(log=print):
    """Set the clock by NTP; without it readings go without ts (the API stamps them)."""
    try:
        import ntptime

        ntptime.settime()
        log("clock: set by NTP")
        return True
    except (OSError, OverflowError, ImportError) as exc:
        log("clock: not set (%s)" % exc)
        return False
