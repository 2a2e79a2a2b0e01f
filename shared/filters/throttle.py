"""Throttle: pass a sample, then suppress the next n - 1 (filter type ``throttle``)."""

from shared.filters import MAX_COUNT, check_int


class Throttle:
    """Leading edge: pass a sample, then suppress the next ``n - 1``."""

    def __init__(self, n):
        self.n = check_int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Pass the next sample."""
        self._k = 0

    def update(self, x):
        """Return ``x`` on the first of every ``n`` samples, else None."""
        k = self._k
        self._k = k + 1 if k + 1 < self.n else 0
        if k:
            return None
        return x
