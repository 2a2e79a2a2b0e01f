"""The Sensirion SHT3x temperature and humidity sensor on I2C, read in single-shot mode."""

from firmware.clock import elapsed_ms, sleep_ms, ticks_ms
from shared import const

_MEASURE = b"\x24\x00"  # single shot, high repeatability, no clock stretching
_WAIT_MS = const(16)  # the datasheet's 15.5 ms maximum for high repeatability
_FRESH_MS = const(250)  # one measurement serves both quantities within this window


def crc8(buf, start, end):
    """Sensirion CRC-8 (polynomial 0x31, init 0xFF) of ``buf[start:end]``. Allocates nothing."""
    crc = 0xFF
    for i in range(start, end):
        crc ^= buf[i]
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ 0x31) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc


class Sht31:
    """A Sensirion SHT3x on I2C, read in single-shot mode.

    One measurement gives both quantities; each is handed out once, within 250 ms, so reading
    temperature and humidity in the same sample instant costs one I2C transaction. A
    measurement blocks for 16 ms (the sensor's conversion time).
    """

    def __init__(self, i2c, address):
        self._i2c = i2c
        self._addr = address
        self._buf = bytearray(6)
        self._t = 0
        self._rh = 0
        self._fresh = 0  # bit 0 temperature, bit 1 humidity: measured and not yet read
        self._at = 0

    def _measure(self):
        self._fresh = 0
        try:
            self._i2c.writeto(self._addr, _MEASURE)
            sleep_ms(_WAIT_MS)
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError:
            return False
        b = self._buf
        if crc8(b, 0, 2) != b[2] or crc8(b, 3, 5) != b[5]:
            return False
        # -45 + 175 * raw / 65535 degC and 100 * raw / 65535 %RH, in hundredths, rounded;
        # 65535 = 5 * 13107 keeps every product below 2**30
        self._t = -4500 + (3500 * (b[0] << 8 | b[1]) + 6553) // 13107
        self._rh = (2000 * (b[3] << 8 | b[4]) + 6553) // 13107
        self._fresh = 3
        self._at = ticks_ms()
        return True

    def read(self, quantity):
        """Temperature (quantity 0, centi-degC) or humidity (1, centi-%RH), or None on failure."""
        bit = 1 << quantity
        if not (self._fresh & bit) or elapsed_ms(ticks_ms(), self._at) >= _FRESH_MS:
            if not self._measure():
                return None
        self._fresh &= ~bit
        return self._rh if quantity else self._t
