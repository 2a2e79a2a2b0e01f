"""CalibrateLinear: ``round(x * mult / 2**shift) + offset`` (filter type ``calibrate``)."""

from shared.filters import Filter, Reset, check_int, const, saturate

_SMAX = const(32767)


class CalibrateLinear(Filter):
    """``y = round(x * mult / 2**shift) + offset``, saturated to S16 (``saturated`` counts).

    ``mult`` in [-32767, 32767] and ``shift`` in [0, 14] give gains from 2**-14 to 32767
    with 15 significant bits; ``offset`` is in S16.
    """

    def __init__(self, mult, shift, offset):
        self.start(
            _run(
                self,
                check_int("mult", mult, -_SMAX, _SMAX),
                check_int("shift", shift, 0, 14),
                check_int("offset", offset, -_SMAX, _SMAX),
            )
        )


def _run(f, mult, shift, offset):
    h = (1 << shift) >> 1  # 0 for shift 0: the rounding below is then exact
    y = None
    while True:
        f.saturated = 0
        try:
            while True:
                y = yield y
                y *= mult  # |x * mult| <= 32767**2 < 2**30 - 2**14
                if y >= 0:  # shr_round(y, shift) + offset: >= -32767, so only the top can pass
                    y = ((y + h) >> shift) + offset  # < 32767**2 + 32767 < 2**30
                    if y > _SMAX:
                        y = saturate(f, y)
                else:
                    y = offset - ((h - y) >> shift)
                    if y < -_SMAX:
                        y = saturate(f, y)
        except Reset:
            y = None
