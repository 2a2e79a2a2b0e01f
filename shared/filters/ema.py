"""Ema, LowPass and HighPass: first-order recursive filters (types ``ema``, ``lowpass``, ``highpass``)."""

from shared.filters import Q14_ONE, Filter, Reset, check_int, const, saturate

_SMAX = const(32767)


class Ema(Filter):
    """Exponential moving average ``y += alpha * (x - y)``, ``alpha_q14`` in [1, 16384].

    The state is y in Q14: an integer part and a fractional residual ``r`` in [0, 16384), so
    small steps accumulate instead of being lost: for a constant input the output converges
    to exactly that input. Each step is rounded half away from zero and never passes x.
    The output is the state rounded to an int; the first sample initialises the state.
    """

    _high = False

    def __init__(self, alpha_q14):
        self.start(_run(self, check_int("alpha_q14", alpha_q14, 1, Q14_ONE), self._high))


class LowPass(Ema):
    """First-order low-pass, ``alpha_q14 = round(16384 * (1 - exp(-2*pi*fc*T)))``.

    The same recurrence as Ema; ``shared.filters.spec`` derives alpha from a cutoff frequency.
    """


class HighPass(Ema):
    """First-order high-pass: ``x - LowPass(x)``, saturated to S16 (``saturated`` counts)."""

    _high = True


def _run(f, a, high):
    y = None
    while True:
        if high:
            f.saturated = 0
        try:
            x = yield y  # the first sample initialises the state
            v = x
            y = 0 if high else x
            r = 0
            while True:
                x = yield y
                if high:
                    h = x
                # Exact step: a*(x*2**14 - (v*2**14 + r)) / 2**14 = a*(x - v) - a*r/2**14, Q14.
                p = a * r  # 0 <= p < 2**28
                x = a * (x - v) - (p >> 14)  # |x - v| <= 65534, so |x| <= 16384*65534 + 16383
                p &= 0x3FFF  # the exact step is x - p/2**14: round it half away from zero
                if p > 8192 or (p == 8192 and x <= 0):
                    x -= 1
                x += r  # |x| <= 16384*65534 + 16384 < 2**30
                r = x & 0x3FFF
                v += x >> 14
                y = v
                if r > 8192 or (r == 8192 and v >= 0):
                    y += 1
                if high:
                    y = h - y  # |y| <= 65534
                    if y > _SMAX or y < -_SMAX:
                        y = saturate(f, y)
        except Reset:
            y = None
