"""A simulated board with BoardHal's interface, for CPython and MicroPython, plus a virtual clock.

Each channel is ``base + drift + amplitude * sin(2 pi t / period) + noise``, with occasional
spikes and dropouts (None), clamped to the sensor's physical range. Everything is integer
arithmetic on small ints with one random generator per channel, so a seed and the same calls
give the same samples on both runtimes, and ``read`` allocates nothing.
"""

from firmware.clock import TICKS_MASK, Uptime
from firmware.hal import output_value
from firmware.profile import ADC, parse_profile

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# round(32767 * sin(k * pi / 32)) for k = 0..16: a quarter wave, 64 steps to the period
# fmt: off
_QUARTER = (0, 3212, 6393, 9512, 12539, 15446, 18204, 20787, 23170, 25329, 27245, 28898,
            30273, 31356, 32137, 32609, 32767)
# fmt: on
# Two multiply-with-carry generators on 15-bit digits: a * 2**15 - 1 and (a * 2**15 - 2) / 2
# are both prime for these multipliers, and every state stays below 2**30.
_A1 = const(32760)
_A2 = const(32730)
_MWC1 = const(32760 * 32768 - 1)
_MWC2 = const(32730 * 32768 - 1)

# (base, amplitude, period_s, noise, spike, drift, lo, hi) by sensor quantity
_PRESETS = {
    "adc": (1200, 250, 900, 6, 900, 60, 0, 3300),
    "temperature": (2150, 350, 86400, 4, 1500, 120, -4000, 12500),
    # humidity falls as the temperature rises: the same sine, inverted
    "humidity": (5500, -1200, 86400, 15, 2500, 300, 0, 10000),
}
_PARAMS = "base amplitude period_s noise spike drift lo hi spike_ppm dropout_ppm".split()


def _sin64(i):
    # sin(2 pi i / 64) in Q15
    i &= 63
    j = i & 15
    v = _QUARTER[16 - j] if i & 16 else _QUARTER[j]
    return -v if i & 32 else v


def index_of(names, name, what):
    """Index of ``name`` in ``names``; ValueError naming ``what`` if it is not there."""
    for i in range(len(names)):
        if names[i] == name:
            return i
    raise ValueError(f"unknown {what} {name!r}")


class _Signal:
    # CPython: no per-instance dict (six signals on each of thousands of virtual boards)
    __slots__ = (
        "_z", "_w", "_drift", "_step", "base", "amplitude", "period_s", "noise", "spike",
        "drift", "lo", "hi", "spike_ppm", "dropout_ppm",
    )  # fmt: skip

    def __init__(self, seed, index, preset, spike_ppm, dropout_ppm):
        s = seed % 1000003
        self._z = (s * 31 + index * 977 + 1) % (_MWC1 - 1) + 1
        self._w = (s * 17 + index * 131 + 7) % (_MWC2 - 1) + 1
        for _ in range(8):
            self.rand()
        self.set(*(preset + (spike_ppm, dropout_ppm)))
        self._drift = 0

    def set(self, base, amplitude, period_s, noise, spike, drift, lo, hi, spike_ppm, dropout_ppm):
        for v in (base, amplitude, period_s, noise, spike, drift, lo, hi, spike_ppm, dropout_ppm):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError("signal parameters must be ints")
        for v in (base, amplitude, lo, hi):
            if not -32767 <= v <= 32767:
                raise ValueError("base, amplitude, lo and hi must be in -32767..32767")
        if not 10 <= period_s <= 172800:
            raise ValueError("period_s must be in 10..172800")
        for v in (noise, spike, drift):
            if not 0 <= v <= 32767:
                raise ValueError("noise, spike and drift must be in 0..32767")
        if not (0 <= spike_ppm <= 1000000 and 0 <= dropout_ppm <= 1000000):
            raise ValueError("spike_ppm and dropout_ppm must be in 0..1000000")
        if lo > hi:
            raise ValueError("lo must not be above hi")
        self.base = base
        self.amplitude = amplitude
        self.period_s = period_s
        self.noise = noise
        self.spike = spike
        self.drift = drift
        self.lo = lo
        self.hi = hi
        self.spike_ppm = spike_ppm
        self.dropout_ppm = dropout_ppm
        self._step = period_s * 1000 // 64  # ms per sine table step

    def rand(self):
        """30 random bits."""
        z = self._z
        z = _A1 * (z & 0x7FFF) + (z >> 15)
        self._z = z
        w = self._w
        w = _A2 * (w & 0x7FFF) + (w >> 15)
        self._w = w
        return (z & 0x7FFF) << 15 | (w & 0x7FFF)

    # read() is split in small methods: a call frame over ~11 words (locals plus stack) is a
    # heap allocation on MicroPython, on every call. The rand() order is part of the golden
    # sequence: dropout, noise, then the walk/spike draw.

    def _sine(self, s, ms):
        t = (s % self.period_s) * 1000 + ms
        i = t // self._step
        a = _sin64(i)
        return a + ((_sin64(i + 1) - a) * ((t % self._step) * 256 // self._step) >> 8)

    def _noise(self):
        r = self.rand()
        n = self.noise + 1
        return (r & 0x7FFF) % n + (r >> 15) % n - self.noise

    def _walk(self):
        r = self.rand()
        d = self._drift + r % 3 - 1  # a bounded random walk
        if -self.drift <= d <= self.drift:
            self._drift = d
        return r

    def read(self, s, ms):
        if self.rand() % 1000000 < self.dropout_ppm:
            return None
        v = self.base + (self.amplitude * self._sine(s, ms) >> 15) + self._noise()
        r = self._walk()
        v += self._drift
        if (r >> 2) % 1000000 < self.spike_ppm:
            v += self.spike if r & 0x20000000 else -self.spike
        if v < self.lo:
            return self.lo
        return self.hi if v > self.hi else v


class SimHal:
    """BoardHal's interface on synthetic sensors and recorded outputs.

    ``clock_ms`` is a zero-argument tick source like ``time.ticks_ms`` (``VirtualClock.ticks_ms``
    in simulations). Rates are in parts per million, for every channel; ``configure`` tunes one.
    ``outputs`` holds each output's current value and ``log`` its changes as
    ``(ms since start, output index, value)``, the oldest dropped past ``log_limit`` (0: none
    kept).
    Set ``pin_held`` to simulate the safe-mode button.
    """

    def __init__(self, profile, seed, clock_ms, dropout_ppm=5000, spike_ppm=1000, log_limit=1000):
        channels, outputs = parse_profile(profile)
        self._uptime = Uptime(clock_ms)
        self.channel_names = [c[0] for c in channels]
        self._signals = []
        for i, (_name, kind, spec) in enumerate(channels):
            sig = _Signal(
                seed,
                i,
                _PRESETS["adc" if kind == ADC else spec["quantity"]],
                spike_ppm,
                dropout_ppm,
            )
            if kind == ADC:
                sig.base = 300 + sig.rand() % 2400  # ADC channels sit at different levels
            self._signals.append(sig)
        self.output_names = [o[0] for o in outputs]
        self.outputs = [0] * len(outputs)
        self._okinds = [o[1] for o in outputs]
        self._omax = [o[2].get("max", 1) for o in outputs]
        self.log = []
        self.log_limit = log_limit
        self.pin_held = False

    def configure(self, channel, **params):
        """Change one channel's model; ``channel`` is a name or index. Keys: base, amplitude,
        period_s, noise, spike, drift (the random walk's bound), lo, hi, spike_ppm, dropout_ppm.
        """
        if isinstance(channel, str):
            channel = self.channel_index(channel)
        sig = self._signals[channel]
        values = []
        for k in _PARAMS:
            values.append(params.pop(k, getattr(sig, k)))
        if params:
            raise ValueError("unknown parameter " + ", ".join(params))
        sig.set(*values)

    def channel_index(self, name):
        """Index of channel ``name`` (ValueError if unknown)."""
        return index_of(self.channel_names, name, "channel")

    def output_index(self, name):
        """Index of output ``name`` (ValueError if unknown)."""
        return index_of(self.output_names, name, "output")

    def read(self, index):
        """One synthetic sample of channel ``index``: an S16 int, or None for a dropout."""
        up = self._uptime
        up.update()
        return self._signals[index].read(up.s, up.ms)

    def set_output(self, index, value):
        """Set output ``index`` like BoardHal does (GPIO 0/1, PWM clamped); log a change."""
        v = output_value(self._okinds[index], self._omax[index], value)
        if v != self.outputs[index]:
            self.outputs[index] = v
            up = self._uptime
            up.update()
            if self.log_limit:
                self.log.append((up.s * 1000 + up.ms, index, v))
                while len(self.log) > self.log_limit:
                    self.log.pop(0)
        return v

    def safe_mode_pin_held(self):
        """The simulated safe-mode button: ``pin_held``."""
        return self.pin_held


class VirtualClock:
    """A clock the simulation drives: ticks wrapping at 2**30 and an optional wall clock.

    ``unix_ms()`` is None until the wall time is set (a board that never got NTP).
    """

    def __init__(self, ticks=0, unix_ms=None):
        self._ticks = ticks & TICKS_MASK
        self._unix = unix_ms

    def ticks_ms(self):
        """The current tick, like ``time.ticks_ms()``."""
        return self._ticks

    def advance(self, ms):
        """Move time forward by ``ms`` >= 0 milliseconds."""
        if ms < 0:
            raise ValueError("time does not run backwards")
        if self._unix is not None:
            self._unix += ms
        ms &= TICKS_MASK  # whole tick periods change nothing
        t = self._ticks
        # kept below 2**30 throughout, so no big int on MicroPython
        self._ticks = ms - (TICKS_MASK - t) - 1 if ms > TICKS_MASK - t else t + ms

    def unix_ms(self):
        """Wall time in unix ms, or None if it was never set."""
        return self._unix

    def set_unix_ms(self, unix_ms):
        """Set (or with None, unset) the wall time, e.g. to inject a jump."""
        self._unix = unix_ms
