"""Throttle: pass a sample, then suppress the next n - 1 (filter type ``throttle``)."""

from shared.filters import MAX_COUNT, Filter, Reset, check_int


class Throttle(Filter):
    """Leading edge: pass a sample, then suppress the next ``n - 1``."""

    def __init__(self, n):
        self.start(_run(check_int("n", n, 1, MAX_COUNT)))


def _run(n):
    y = None
    while True:
        k = 0  # samples since the last one passed
        try:
            while True:
                x = yield y
                y = None if k else x
                k += 1
                if k == n:
                    k = 0
        except Reset:
            y = None
