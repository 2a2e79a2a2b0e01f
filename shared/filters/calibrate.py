"""CalibrateLinear: ``round(x * mult / 2**shift) + offset`` (filter type ``calibrate``)."""

from shared.filters import check_int, const, saturate  # const: folded by mpy-cross

_SMAX = const(32767)


class CalibrateLinear:
    """``y = round(x * mult / 2**shift) + offset``, saturated to S16 (``saturated`` counts).

    ``mult`` in [-32767, 32767] and ``shift`` in [0, 14] give gains from 2**-14 to 32767
    with 15 significant bits; ``offset`` is in S16.
    """

    def __init__(self, mult, shift, offset):
        self.mult = check_int("mult", mult, -_SMAX, _SMAX)
        self.shift = check_int("shift", shift, 0, 14)
        self.offset = check_int("offset", offset, -_SMAX, _SMAX)
        self._half = (1 << shift) >> 1  # 0 for shift 0: the rounding below is then exact
        self.saturated = 0

    def reset(self):
        """Zero the counter (the filter has no other state)."""
        self.saturated = 0

    def update(self, x):
        """Return the calibrated sample."""
        x *= self.mult  # |x * mult| <= 32767**2 < 2**30 - 2**14
        if x >= 0:  # shr_round(x, shift) + offset: >= -32767, so it can only pass the top
            x = ((x + self._half) >> self.shift) + self.offset  # < 32767**2 + 32767 < 2**30
            if x > _SMAX:
                x = saturate(self, x)
        else:
            x = self.offset - ((self._half - x) >> self.shift)
            if x < -_SMAX:
                x = saturate(self, x)
        return x
