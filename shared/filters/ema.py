"""Ema, LowPass and HighPass: first-order recursive filters (types ``ema``, ``lowpass``, ``highpass``)."""

from shared.filters import Q14_ONE, check_int, const, saturate  # const: folded by mpy-cross

_SMAX = const(32767)


class Ema:
    """Exponential moving average ``y += alpha * (x - y)``, ``alpha_q14`` in [1, 16384].

    The state is y in Q14: an integer part and a fractional residual ``r`` in [0, 16384), so
    small steps accumulate instead of being lost: for a constant input the output converges
    to exactly that input. Each step is rounded half away from zero and never passes x.
    The output is the state rounded to an int; the first sample initialises the state.
    """

    def __init__(self, alpha_q14):
        self.alpha = check_int("alpha_q14", alpha_q14, 1, Q14_ONE)
        self.reset()

    def reset(self):
        """Forget the state; the next sample initialises it."""
        self._y = 0
        self._r = -1  # no state yet

    def update(self, x):
        """Add ``x``; return the rounded average."""
        r = self._r
        if r < 0:
            self._y = x
            self._r = 0
            return x
        a = self.alpha
        y = self._y
        # Exact step: a*(x*2**14 - (y*2**14 + r)) / 2**14 = a*(x - y) - a*r/2**14, in Q14.
        p = a * r  # 0 <= p < 2**28
        x = a * (x - y) - (p >> 14)  # |x - y| <= 65534, so |x| <= 16384*65534 + 16383
        p &= 0x3FFF  # the exact step is x - p/2**14: round it half away from zero
        if p > 8192 or (p == 8192 and x <= 0):
            x -= 1
        x += r  # |x| <= 16384*65534 + 16384 < 2**30
        r = x & 0x3FFF
        y += x >> 14
        self._y = y
        self._r = r
        if r > 8192 or (r == 8192 and y >= 0):
            return y + 1
        return y


class LowPass(Ema):
    """First-order low-pass, ``alpha_q14 = round(16384 * (1 - exp(-2*pi*fc*T)))``.

    The same recurrence as Ema; filterspec derives alpha from a cutoff frequency.
    """


class HighPass(Ema):
    """First-order high-pass: ``x - LowPass(x)``, saturated to S16 (``saturated`` counts)."""

    def __init__(self, alpha_q14):
        Ema.__init__(self, alpha_q14)
        self.saturated = 0

    def update(self, x):
        """Add ``x``; return it minus its low-passed value."""
        x -= Ema.update(self, x)  # |x| <= 65534
        if x > _SMAX or x < -_SMAX:
            x = saturate(self, x)
        return x
