"""The baseline for ``orrery bench device``: the same filters written the obvious way.

Floats, Python lists, ``sorted()`` and ``sum()``, as a first port from a desktop notebook
would have them. Runs on MicroPython (inside the benchmark) and on CPython.
"""

import math


class MovingAverage:
    def __init__(self, window, partial=False):
        self.window = window
        self.partial = partial
        self.buf = []

    def update(self, x):
        self.buf.append(float(x))
        if len(self.buf) > self.window:
            self.buf.pop(0)
        if len(self.buf) < self.window and not self.partial:
            return None
        return sum(self.buf) / len(self.buf)


class Ema:
    def __init__(self, alpha):
        self.alpha = alpha
        self.y = None

    def update(self, x):
        self.y = float(x) if self.y is None else self.y + self.alpha * (x - self.y)
        return self.y


class Median(MovingAverage):
    def update(self, x):
        self.buf.append(float(x))
        if len(self.buf) > self.window:
            self.buf.pop(0)
        if len(self.buf) < self.window and not self.partial:
            return None
        s = sorted(self.buf)
        return s[len(s) // 2]


class WindowMin(MovingAverage):
    def update(self, x):
        return None if MovingAverage.update(self, x) is None else min(self.buf)


class WindowMax(MovingAverage):
    def update(self, x):
        return None if MovingAverage.update(self, x) is None else max(self.buf)


class HighPass(Ema):
    def update(self, x):
        return float(x) - Ema.update(self, x)


class Biquad:
    def __init__(self, b0, b1, b2, a1, a2):
        self.c = [b0, b1, b2, a1, a2]
        self.x = [0.0, 0.0]
        self.y = [0.0, 0.0]

    def update(self, x):
        b0, b1, b2, a1, a2 = self.c
        y = b0 * x + b1 * self.x[0] + b2 * self.x[1] - a1 * self.y[0] - a2 * self.y[1]
        self.x = [float(x), self.x[0]]
        self.y = [y, self.y[0]]
        return y


class Delta:
    def __init__(self, threshold):
        self.threshold = threshold
        self.last = None

    def update(self, x):
        if self.last is None or abs(x - self.last) >= self.threshold:
            self.last = float(x)
            return self.last
        return None


class Clamp:
    def __init__(self, lo, hi, drop=False):
        self.lo, self.hi, self.drop = lo, hi, drop

    def update(self, x):
        if self.drop and not (self.lo <= x <= self.hi):
            return None
        return float(min(max(x, self.lo), self.hi))


class Calibrate:
    def __init__(self, gain, offset):
        self.gain, self.offset = gain, offset

    def update(self, x):
        return x * self.gain + self.offset


class Hysteresis:
    def __init__(self, low, high):
        self.low, self.high, self.state = low, high, 0

    def update(self, x):
        if x >= self.high:
            self.state = 1
        elif x <= self.low:
            self.state = 0
        return self.state


class Debounce:
    def __init__(self, n):
        self.n, self.history = n, []

    def update(self, x):
        self.history.append(x)
        self.history = self.history[-self.n :]
        if len(self.history) == self.n and all(v == x for v in self.history):
            return float(x)
        return None


class Throttle:
    def __init__(self, n):
        self.n, self.count = n, 0

    def update(self, x):
        self.count += 1
        if self.count == 1:
            return float(x)
        if self.count >= self.n:
            self.count = 0
        return None


class Heartbeat:
    def __init__(self, n):
        self.n, self.seen = n, []

    def update(self, x):
        self.seen.append(float(x))
        if len(self.seen) >= self.n:
            last = self.seen[-1]
            self.seen = []
            return last
        return None


def _samples(spec, period_ms, key="samples"):
    if key in spec:
        return spec[key]
    return max(1, math.ceil(spec["ms"] / period_ms))


def _alpha(spec, period_ms):
    if "alpha" in spec:
        return spec["alpha"]
    return 1.0 - math.exp(-2.0 * math.pi * spec["cutoff_hz"] * period_ms / 1000.0)


def make(spec, period_ms):
    """A naive filter from the same authoring spec the real compiler takes."""
    t = spec["type"]
    window = spec.get("window", 1)
    partial = spec.get("partial", False)
    if t == "moving_average":
        return MovingAverage(window, partial)
    if t == "median":
        return Median(window, partial)
    if t == "min":
        return WindowMin(window, partial)
    if t == "max":
        return WindowMax(window, partial)
    if t in ("ema", "lowpass"):
        return Ema(_alpha(spec, period_ms))
    if t == "highpass":
        return HighPass(_alpha(spec, period_ms))
    if t == "biquad":
        if "coeffs" in spec:
            return Biquad(*spec["coeffs"])
        from shared.filters.spec import design_biquad

        return Biquad(
            *design_biquad(
                spec["design"], spec["cutoff_hz"], 1000.0 / period_ms, spec.get("q", 0.7071)
            )
        )
    if t == "delta":
        return Delta(spec["threshold"])
    if t == "clamp":
        return Clamp(spec["min"], spec["max"], spec.get("drop", False))
    if t == "calibrate":
        return Calibrate(spec["gain"], spec.get("offset", 0))
    if t == "hysteresis":
        return Hysteresis(spec["low"], spec["high"])
    if t == "debounce":
        return Debounce(_samples(spec, period_ms))
    if t == "throttle":
        return Throttle(_samples(spec, period_ms))
    if t == "heartbeat":
        return Heartbeat(_samples(spec, period_ms))
    raise ValueError("unknown filter " + t)


class Chain:
    def __init__(self, filters):
        self.filters = filters

    def update(self, x):
        if x is None:
            return None
        for f in self.filters:
            x = f.update(x)
            if x is None:
                return None
        return x
