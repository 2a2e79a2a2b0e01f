"""Hysteresis: a two-level output with separate on and off levels (filter type ``hysteresis``)."""

from shared.filters import check_int, const  # const: folded by mpy-cross

_SMAX = const(32767)


class Hysteresis:
    """Two-level output: 1 once ``x >= high``, 0 once ``x <= low``, unchanged in between.

    The output starts at 0; ``low < high``.
    """

    def __init__(self, low, high):
        self.low = check_int("low", low, -_SMAX, _SMAX)
        self.high = check_int("high", high, -_SMAX, _SMAX)
        if low >= high:
            raise ValueError("low: %d must be below high %d" % (low, high))
        self.reset()

    def reset(self):
        """Return to output 0."""
        self._out = 0

    def update(self, x):
        """Return 0 or 1."""
        if x >= self.high:
            self._out = 1
        elif x <= self.low:
            self._out = 0
        return self._out
