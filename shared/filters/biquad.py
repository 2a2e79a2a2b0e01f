"""Biquad: a second-order IIR section with Q14 coefficients (filter type ``biquad``)."""

from shared.filters import Filter, Reset, check_int, const, saturate

_SMAX = const(32767)


class Biquad(Filter):
    """Second-order IIR section, Q14 coefficients with a0 = 1.

    ``y = b0*x + b1*x1 + b2*x2 - a1*y1 - a2*y2``. Each product (< 2**30) is floored by 3
    bits (< 2**27) before the five are summed (< 5 * 2**27 < 2**30); the sum is then
    shifted by the remaining 11 bits, rounded half away from zero. The output is saturated
    to S16 (``saturated`` counts) and the saturated value is what the history keeps.
    The sums run in transposed form (each product is added once, as soon as its sample is
    known), which gives exactly the Direct Form I result with half the state.

    Error against the real-valued filter: quantized coefficients are within 2**-15 of the
    designed ones (``shared.filters.spec`` may move b1 by up to 2**-13 to make the DC gain exact); the
    product truncation biases each output by less than 5 * 2**-11 LSB before rounding; and
    the rounding in the feedback loop gives a dead band: at DC the output can settle up to
    0.5 / |1 + a1 + a2| LSB away from the exact response (about 1 LSB at fc = fs/10, Q=0.707).
    """

    def __init__(self, b0, b1, b2, a1, a2):
        self.start(
            _run(
                self,
                check_int("b0", b0, -_SMAX, _SMAX),
                check_int("b1", b1, -_SMAX, _SMAX),
                check_int("b2", b2, -_SMAX, _SMAX),
                check_int("a1", a1, -_SMAX, _SMAX),
                check_int("a2", a2, -_SMAX, _SMAX),
            )
        )


def _run(f, b0, b1, b2, a1, a2):
    y = None
    while True:
        f.saturated = 0
        # Transposed form: s1 and s2 hold the sums of the floored products of past samples
        # that the next output and the one after it need (integer sums, so the same bits as
        # summing all five per output).
        s1 = 0
        s2 = 0
        try:
            while True:
                x = yield y
                y = ((b0 * x) >> 3) + s1  # |y| < 5 * 2**27
                if y >= 0:  # shr_round(y, 11), then saturate on that side
                    y = (y + 1024) >> 11
                    if y > _SMAX:
                        y = saturate(f, y)
                else:
                    y = -((1024 - y) >> 11)
                    if y < -_SMAX:
                        y = saturate(f, y)
                s1 = ((b1 * x) >> 3) - ((a1 * y) >> 3) + s2  # < 4 * 2**27
                s2 = ((b2 * x) >> 3) - ((a2 * y) >> 3)
        except Reset:
            y = None
