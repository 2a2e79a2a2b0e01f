"""Hysteresis: a two-level output with separate on and off levels (filter type ``hysteresis``)."""

from shared.filters import Filter, Reset, check_int, const

_SMAX = const(32767)


class Hysteresis(Filter):
    """Two-level output: 1 once ``x >= high``, 0 once ``x <= low``, unchanged in between.

    The output starts at 0; ``low < high``.
    """

    def __init__(self, low, high):
        check_int("low", low, -_SMAX, _SMAX)
        check_int("high", high, -_SMAX, _SMAX)
        if low >= high:
            raise ValueError("low: %d must be below high %d" % (low, high))
        self.start(_run(low, high))


def _run(low, high):
    y = None
    while True:
        out = 0
        try:
            while True:
                x = yield y
                if x >= high:
                    out = 1
                elif x <= low:
                    out = 0
                y = out
        except Reset:
            y = None
