"""MovingAverage: the rounded mean of a sliding window (filter type ``moving_average``)."""

from shared.filters import MAX_WINDOW, Filter, Reset, check_flag, check_int

_ZERO = [0]  # the ring is made as _ZERO * window: one list, no garbage


class MovingAverage(Filter):
    """Rounded mean of the last ``window`` samples, from a running sum over a ring."""

    def __init__(self, window, partial=False):
        self.start(_run(check_int("window", window, 1, MAX_WINDOW), check_flag("partial", partial)))


def _run(window, partial):
    r = _ZERO * window
    y = None
    while True:
        for i in range(window):
            r[i] = 0
        # The ring is written backwards (the wrap test compares with 0). While it fills, the
        # index is negative: -k for the k-th sample, and r[-k] is slot window - k.
        i = -1
        s = 0  # the sum of the ring; slots not yet filled hold 0; |s| <= 64 * 32767 < 2**21
        try:
            while True:
                x = yield y
                s += x - r[i]
                r[i] = x
                if i > 0:  # the common case: a full window, no wrap
                    i -= 1
                    n = window
                elif i == 0 or i == -window:  # wrapped, or the window is now full
                    i = window - 1
                    n = window
                else:  # filling: -i samples so far
                    n = -i
                    i -= 1
                    if not partial:
                        y = None
                        continue
                # s / n rounded half away from zero: (s + n // 2) // n for s >= 0 (for odd
                # n, 2s + n is odd, so the floor of (2s + n) / 2n is that of (s + (n-1)/2) / n).
                if s >= 0:
                    y = (s + (n >> 1)) // n
                else:
                    y = -(((n >> 1) - s) // n)
        except Reset:
            y = None
