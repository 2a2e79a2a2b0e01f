"""WindowMin and WindowMax: the extremes of a sliding window (filter types ``min``, ``max``)."""

from shared.filters import MAX_WINDOW, Filter, Reset, check_flag, check_int

_ZERO = [0]  # the ring is made as _ZERO * window: one list, no garbage


class WindowMin(Filter):
    """Smallest of the last ``window`` samples.

    The minimum is tracked and the ring rescanned only when the outgoing sample was it.
    """

    _sign = 1  # WindowMax runs the same code on negated samples

    def __init__(self, window, partial=False):
        check_int("window", window, 1, MAX_WINDOW)
        self.start(_run(window, check_flag("partial", partial), self._sign))


class WindowMax(WindowMin):
    """Largest of the last ``window`` samples."""

    _sign = -1


def _run(window, partial, sign):
    r = _ZERO * window
    y = None
    while True:
        i = 0
        n = 0  # samples in the window; slots past n are not read until it is full
        m = 0  # the extreme of the window (of the samples times sign)
        try:
            while True:
                x = yield y
                x *= sign
                v = r[i]  # the outgoing sample
                r[i] = x
                i += 1
                if i == window:
                    i = 0
                if n < window:
                    n += 1
                    if n == 1 or x < m:
                        m = x
                    if n < window and not partial:
                        y = None
                        continue
                elif x <= m:
                    m = x
                elif v == m:  # the extreme left the window: rescan
                    m = r[0]
                    for v in range(1, window):
                        v = r[v]
                        if v < m:
                            m = v
                y = m * sign
        except Reset:
            y = None
