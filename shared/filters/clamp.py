"""Clamp: saturate into [lo, hi], or drop what is outside (filter type ``clamp``)."""

from shared.filters import Filter, Reset, check_flag, check_int, const

_SMAX = const(32767)
_CMASK = const(0x1FFFFFFF)


class Clamp(Filter):
    """Saturate into [lo, hi], or with ``drop`` return None for out-of-range samples.

    ``out_of_range`` counts the samples that were clamped or dropped.
    """

    def __init__(self, lo, hi, drop=False):
        check_int("lo", lo, -_SMAX, _SMAX)
        check_int("hi", hi, -_SMAX, _SMAX)
        if lo > hi:
            raise ValueError("lo: %d is greater than hi %d" % (lo, hi))
        self.start(_run(self, lo, hi, check_flag("drop", drop)))


def _run(f, lo, hi, drop):
    y = None
    while True:
        f.out_of_range = 0
        try:
            while True:
                y = yield y
                if y < lo:
                    y = lo
                elif y > hi:
                    y = hi
                else:
                    continue
                f.out_of_range = (f.out_of_range + 1) & _CMASK
                if drop:
                    y = None
        except Reset:
            y = None
