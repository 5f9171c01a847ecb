"""Sensor drivers. Each has ``read() -> dict`` of sensor name -> value; a driver that fails
raises OSError (main.py logs it and skips that sensor until the next interval)."""

import time


class ChipTemperature:
    """The ESP32's own temperature sensor (die temperature, not the room's)."""

    def __init__(self, name="chip_temperature"):
        import esp32

        self.name = name
        self._esp32 = esp32

    def read(self):
        if hasattr(self._esp32, "mcu_temperature"):  # S2, S3, C3 and later: Celsius
            return {self.name: float(self._esp32.mcu_temperature())}
        fahrenheit = self._esp32.raw_temperature()  # the original ESP32
        return {self.name: round((fahrenheit - 32) / 1.8, 1)}


def crc8(data):
    """Sensirion's CRC-8 (polynomial 0x31, initial 0xFF)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SHT31:
    """Sensirion SHT31 temperature and humidity over I2C (address 0x44, or 0x45)."""

    MEASURE_HIGH = b"\x24\x00"  # single shot, high repeatability, no clock stretching

    def __init__(self, i2c, address=0x44, prefix=""):
        self.i2c, self.address, self.prefix = i2c, address, prefix

    def read(self):
        self.i2c.writeto(self.address, self.MEASURE_HIGH)
        time.sleep_ms(16)
        data = self.i2c.readfrom(self.address, 6)
        return self.decode(data)

    def decode(self, data):
        if crc8(data[0:2]) != data[2] or crc8(data[3:5]) != data[5]:
            raise OSError("SHT31: CRC mismatch")
        raw_t = data[0] << 8 | data[1]
        raw_h = data[3] << 8 | data[4]
        return {
            self.prefix + "temperature": round(-45 + 175 * raw_t / 65535, 2),
            self.prefix + "humidity": round(100 * raw_h / 65535, 2),
        }
