"""WindowMin and WindowMax: the extremes of a sliding window (filter types ``min``, ``max``)."""

from shared.filters import MAX_WINDOW, check_flag, check_int, zeros


class WindowMin:
    """Smallest of the last ``window`` samples.

    The minimum is tracked and the ring rescanned only when the outgoing sample was it.
    """

    _sign = 1  # WindowMax stores negated samples and reuses the same code

    def __init__(self, window, partial=False):
        self.window = check_int("window", window, 1, MAX_WINDOW)
        self.partial = check_flag("partial", partial)
        self._ring = zeros("h", window)
        self.reset()

    def reset(self):
        """Forget every sample."""
        self._i = 0
        self._n = 0
        self._m = 0

    def update(self, x):
        """Add ``x``; return the window extreme, or None while the window is not full."""
        v = x * self._sign
        r = self._ring
        i = self._i
        old = r[i]
        r[i] = v
        i += 1
        if i == self.window:
            i = 0
        self._i = i
        n = self._n
        if n < self.window:
            n += 1
            self._n = n
            if n == 1 or v < self._m:
                self._m = v
            if n < self.window and not self.partial:
                return None
        elif v <= self._m:
            self._m = v
        elif old == self._m:
            self._m = self._scan()
        return self._m * self._sign

    def _scan(self):
        r = self._ring
        m = r[0]
        for i in range(1, self.window):
            if r[i] < m:
                m = r[i]
        return m


class WindowMax(WindowMin):
    """Largest of the last ``window`` samples."""

    _sign = -1
