# ruff: noqa: UP032, B904
# (MicroPython code: no f-strings, no exception chaining)
# The virtual board's ``machine`` module (MicroPython; loaded by board.mjs at every boot).
#
# The WebAssembly port has no ``machine``; this one stands in for an ESP32's peripherals so
# the firmware's own HAL code runs unchanged: ADC inputs give a slow, deterministic
# waveform in mV, an emulated Sensirion SHT31 answers on I2C (with real CRC-8 bytes),
# GPIO and PWM outputs remember their level, input pins read the level the host sets
# (VirtualBoard.set_pin; default high, as with a pull-up), WDT counts its feeds, and
# reset() asks the bridge for a hard reset (the app stops with SystemExit, as a reset
# never returns).
import time

import js

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset():
    js.vb_reset("hard")
    raise SystemExit


def soft_reset():
    raise SystemExit


def reset_cause():
    return int(js.vb_reset_cause())


def unique_id():
    return b"\x0b\x0a\x0e\x0d\x00\x01"


def freq(*args):
    return 160000000


def idle():
    pass


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    levels = {}

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        if value is not None:
            Pin.levels[id] = 1 if value else 0

    def init(self, mode=-1, pull=-1, value=None):
        self.__init__(self.id, mode, pull, value)

    def value(self, v=None):
        if v is None:
            if self.mode == Pin.OUT:
                return Pin.levels.get(self.id, 0)
            return int(js.vb_pin_level(self.id))
        Pin.levels[self.id] = 1 if v else 0
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def __repr__(self):
        return "Pin({})".format(self.id)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=3):
        self.pin = pin.id if isinstance(pin, Pin) else pin
        self._atten = atten

    def atten(self, a):
        self._atten = a

    def width(self, w):
        pass

    def _mv(self):
        # a triangle wave per pin, 60 s period, 500..2900 mV, offset by the pin number
        t = (time.ticks_ms() // 100 + self.pin * 37) % 600
        tri = t if t < 300 else 600 - t
        return 500 + tri * 8

    def read_uv(self):
        return self._mv() * 1000

    def read_u16(self):
        return self._mv() * 65535 // 3300

    def read(self):
        return self._mv() * 4095 // 3300


def _crc8(data):
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class I2C:
    SHT31 = (0x44,)

    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.freq = freq
        self._pending = {}

    def scan(self):
        return list(I2C.SHT31)

    def writeto(self, addr, buf, stop=True):
        if addr not in I2C.SHT31:
            raise OSError(19)  # ENODEV, as the ESP32 port reports a missing device
        if bytes(buf[:2]) == b"\x24\x00":
            self._pending[addr] = self._measure()
        return len(buf)

    def _measure(self):
        # 20.00..25.00 degC and 40..50 %RH, slowly varying
        s = (time.ticks_ms() // 1000) % 60
        t_centi = 2000 + s * 8
        rh_centi = 4000 + s * 16
        t_raw = (t_centi + 4500) * 65535 // 17500
        rh_raw = rh_centi * 65535 // 10000
        out = bytearray()
        for raw in (t_raw, rh_raw):
            word = bytes(((raw >> 8) & 0xFF, raw & 0xFF))
            out += word + bytes((_crc8(word),))
        return out

    def readfrom_into(self, addr, buf, stop=True):
        data = self._pending.pop(addr, None)
        if data is None:
            raise OSError(19)
        for i in range(min(len(buf), len(data))):
            buf[i] = data[i]

    def readfrom(self, addr, n, stop=True):
        buf = bytearray(n)
        self.readfrom_into(addr, buf)
        return bytes(buf)


SoftI2C = I2C


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=0, duty=None):
        self.pin = pin
        self._freq = freq
        self._duty = duty_u16 if duty is None else duty * 64

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f
        return None

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        self._duty = d
        return None

    def duty(self, d=None):
        if d is None:
            return self._duty // 64
        self._duty = d * 64
        return None

    def deinit(self):
        pass


class WDT:
    feeds = 0

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        WDT.feeds += 1
