"""Debounce: pass a value once it has held for n samples (filter type ``debounce``)."""

from shared.filters import MAX_COUNT, Filter, Reset, check_int


class Debounce(Filter):
    """Pass a value only once it has been the same for ``n`` consecutive samples.

    While the value keeps changing the output is None; once stable it is passed on every
    sample until it changes.
    """

    def __init__(self, n):
        self.start(_run(check_int("n", n, 1, MAX_COUNT)))


def _run(n):
    y = None
    while True:
        last = 0
        k = 0  # the run of samples equal to last, up to n
        try:
            while True:
                x = yield y
                if x == last and k:
                    if k < n:
                        k += 1
                else:
                    last = x
                    k = 1
                y = None if k < n else x
        except Reset:
            y = None
