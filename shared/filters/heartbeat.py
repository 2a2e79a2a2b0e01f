"""Heartbeat: pass every n-th sample (filter type ``heartbeat``)."""

from shared.filters import MAX_COUNT, check_int


class Heartbeat:
    """Trailing edge: pass every ``n``-th sample (the latest value), suppress the others."""

    def __init__(self, n):
        self.n = check_int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Restart the count."""
        self._k = 0

    def update(self, x):
        """Return ``x`` on the last of every ``n`` samples, else None."""
        k = self._k + 1
        if k < self.n:
            self._k = k
            return None
        self._k = 0
        return x
