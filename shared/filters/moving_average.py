"""MovingAverage: the rounded mean of a sliding window (filter type ``moving_average``)."""

from shared.filters import MAX_WINDOW, check_flag, check_int, zeros


class MovingAverage:
    """Rounded mean of the last ``window`` samples, from a running sum over a ring."""

    def __init__(self, window, partial=False):
        self.window = check_int("window", window, 1, MAX_WINDOW)
        self.partial = check_flag("partial", partial)
        self._ring = zeros("h", window)
        self.reset()

    def reset(self):
        """Forget every sample."""
        r = self._ring
        for i in range(self.window):
            r[i] = 0
        # The ring is written backwards (the wrap test compares with 0). While it fills, the
        # index is negative: -k for the k-th sample, and r[-k] is slot window - k.
        self._i = -1
        self._n = 0  # samples in the window (kept on the slow path only)
        self._sum = 0

    def update(self, x):
        """Add ``x``; return the window mean, or None while the window is not full."""
        r = self._ring
        i = self._i
        s = self._sum + x - r[i]  # slots not yet filled hold 0; |s| <= 64 * 32767 < 2**21
        self._sum = s
        r[i] = x
        if i > 0:  # the common case: a full window, no wrap
            self._i = i - 1
            n = self.window
        else:
            n = self.window
            if i == 0 or i == -n:  # wrapped, or the window is now full
                self._i = n - 1
                self._n = n
            else:  # filling: -i samples so far
                self._i = i - 1
                self._n = -i
                if not self.partial:
                    return None
                n = -i
        # s / n rounded half away from zero: (s + n // 2) // n for s >= 0 (for odd n, 2s + n
        # is odd, so the floor of (2s + n) / 2n is the floor of (s + (n - 1) / 2) / n).
        if s >= 0:
            return (s + (n >> 1)) // n
        return -(((n >> 1) - s) // n)
