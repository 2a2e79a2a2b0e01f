"""Heartbeat: pass every n-th sample (filter type ``heartbeat``)."""

from shared.filters import MAX_COUNT, Filter, Reset, check_int


class Heartbeat(Filter):
    """Trailing edge: pass every ``n``-th sample (the latest value), suppress the others."""

    def __init__(self, n):
        self.start(_run(check_int("n", n, 1, MAX_COUNT)))


def _run(n):
    y = None
    while True:
        k = 0  # samples since the last one passed
        try:
            while True:
                x = yield y
                k += 1
                if k < n:
                    y = None
                else:
                    k = 0
                    y = x
        except Reset:
            y = None
