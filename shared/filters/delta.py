"""Delta: emit only on a change of at least a threshold (filter type ``delta``)."""

from shared.filters import Filter, Reset, check_int, const

_SMAX = const(32767)


class Delta(Filter):
    """Emit a sample only when it differs from the last emitted one by >= ``threshold``.

    The first sample is always emitted.
    """

    def __init__(self, threshold):
        self.start(_run(check_int("threshold", threshold, 0, _SMAX)))


def _run(t):
    y = None
    while True:
        try:
            last = yield y  # the first sample is emitted
            y = last
            while True:
                x = yield y
                y = x - last  # |y| <= 65534
                if -t < y < t:
                    y = None
                else:
                    last = x
                    y = x
        except Reset:
            y = None
