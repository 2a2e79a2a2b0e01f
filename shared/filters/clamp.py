"""Clamp: saturate into [lo, hi], or drop what is outside (filter type ``clamp``)."""

from shared.filters import check_flag, check_int, const  # const: folded by mpy-cross

_SMAX = const(32767)
_CMASK = const(0x1FFFFFFF)


class Clamp:
    """Saturate into [lo, hi], or with ``drop`` return None for out-of-range samples.

    ``out_of_range`` counts the samples that were clamped or dropped.
    """

    def __init__(self, lo, hi, drop=False):
        self.lo = check_int("lo", lo, -_SMAX, _SMAX)
        self.hi = check_int("hi", hi, -_SMAX, _SMAX)
        if lo > hi:
            raise ValueError("lo: %d is greater than hi %d" % (lo, hi))
        self.drop = check_flag("drop", drop)
        self.out_of_range = 0

    def reset(self):
        """Zero the counter (the filter has no other state)."""
        self.out_of_range = 0

    def update(self, x):
        """Return ``x`` clamped into [lo, hi], or None if out of range and dropping."""
        if x < self.lo:
            x = self.lo
        elif x > self.hi:
            x = self.hi
        else:
            return x
        self.out_of_range = (self.out_of_range + 1) & _CMASK
        if self.drop:
            return None
        return x
