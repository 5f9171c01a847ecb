# Runs at every start, before main.py: join Wi-Fi (retrying) and set the clock.
import config
import wifi

try:
    wifi.connect(config.WIFI_SSID, config.WIFI_PASSWORD, attempts=10)
    wifi.sync_clock()
except OSError as exc:
    # main.py starts anyway: readings are buffered and Wi-Fi is retried from the loop.
    print("boot:", exc)
