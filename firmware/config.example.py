# Copy to config.py (kept out of git: it holds the device token) and fill in.
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"
SERVER_URL = "https://iot.example.com"  # http:// works too, for a server on the bench
DEVICE_TOKEN = "dvc_..."  # shown once by POST /devices
CA_CERT_FILE = "ca.der"  # the server's CA in DER form, to verify TLS; None: not verified

READING_INTERVAL_S = 10
POLL_WAIT_S = 20  # long poll, at most 30
BUFFER_MAX = 500  # readings kept while offline; the oldest are dropped beyond this
WATCHDOG_S = 60  # must exceed POLL_WAIT_S + 10 s of request timeout

I2C_SCL = 22
I2C_SDA = 21
SHT31_ADDRESS = 0x44  # None: no SHT31 fitted
OUTPUTS = {"relay": 26, "led": 2}  # name -> GPIO, for set_output
STATE_FILE = "state.json"  # recent command ids (flash)
