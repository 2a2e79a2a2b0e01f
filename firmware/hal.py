"""Board hardware from a board profile (``hw/boards/*.json``): sensor channels, outputs and
the safe-mode pin.

Channels and outputs are numbered in sorted name order, the same on every runtime
(MicroPython dicts do not keep insertion order). Samples are S16 ints in the channel's unit:
mV for ADC channels, centi-degrees C and centi-%RH for the SHT31. A failed read is None.
``read`` and ``set_output`` allocate nothing once the HAL is built.

``machine`` is injectable so the hardware paths can be tested against a fake module; on a
board the real one is imported. Checking a profile and building the hardware from it is
``firmware.profile``'s, imported for that only (the node drops it again).
"""

from firmware.clock import elapsed_ms, sleep_ms, ticks_ms
from shared import const

ADC = const(0)
I2C = const(1)
GPIO = const(0)
PWM = const(1)
S16_MAX = const(32767)

_SHT31_MEASURE = b"\x24\x00"  # single shot, high repeatability, no clock stretching
_SHT31_WAIT_MS = const(16)  # the datasheet's 15.5 ms maximum for high repeatability
_SHT31_FRESH_MS = const(250)  # one measurement serves both quantities within this window


def index_of(names, name, what):
    """Index of ``name`` in ``names``; ValueError naming ``what`` if it is not there."""
    for i in range(len(names)):
        if names[i] == name:
            return i
    raise ValueError("unknown {} {!r}".format(what, name))


def output_value(kind, top, value):
    """The value an output actually takes: 0/1 for GPIO (any true value is 1), 0..top for PWM."""
    if kind == GPIO:
        return 1 if value else 0
    if value < 0:
        return 0
    return top if value > top else value


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
            self._i2c.writeto(self._addr, _SHT31_MEASURE)
            sleep_ms(_SHT31_WAIT_MS)
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
        if not (self._fresh & bit) or elapsed_ms(ticks_ms(), self._at) >= _SHT31_FRESH_MS:
            if not self._measure():
                return None
        self._fresh &= ~bit
        return self._rh if quantity else self._t


class BoardHal:
    """The board's channels and outputs, built from a profile dict.

    ``machine`` defaults to the real module; ``i2c`` to a ``machine.I2C`` on the profile's bus.
    ``outputs`` holds each output's current value; ``channel_names`` and ``output_names`` are
    in index order.
    """

    def __init__(self, profile, machine=None, i2c=None):
        from firmware import profile as setup  # checks and builds once, then is dropped

        setup.build(self, profile, machine, i2c)

    def channel_index(self, name):
        """Index of channel ``name`` (ValueError if unknown)."""
        return index_of(self.channel_names, name, "channel")

    def output_index(self, name):
        """Index of output ``name`` (ValueError if unknown)."""
        return index_of(self.output_names, name, "output")

    def read(self, index):
        """One sample of channel ``index``: an S16 int in the channel's unit, or None."""
        if self._kinds[index] == ADC:
            mv = self._dev[index].read_uv() // 1000
            if mv > S16_MAX:
                return S16_MAX
            return -S16_MAX if mv < -S16_MAX else mv
        return self._dev[index].read(self._quantity[index])

    def set_output(self, index, value):
        """Drive output ``index``; GPIO takes 0/1, PWM 0..max (clamped). Returns the value set."""
        kind = self._okinds[index]
        v = output_value(kind, self._omax[index], value)
        if kind == GPIO:
            self._out[index].value(v)
        elif v == self._omax[index]:
            self._out[index].duty_u16(65535)  # fully on, whatever the rounding of the scale
        else:
            self._out[index].duty_u16((v * self._oscale[index] + 8192) >> 14)
        self.outputs[index] = v
        return v

    def safe_mode_pin_held(self):
        """True while the profile's safe-mode pin (active low, e.g. the BOOT button) is held."""
        return self._safe is not None and self._safe.value() == 0
