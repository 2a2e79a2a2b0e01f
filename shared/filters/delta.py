"""Delta: emit only on a change of at least a threshold (filter type ``delta``)."""

from shared.filters import check_int, const  # const: folded by mpy-cross

_SMAX = const(32767)


class Delta:
    """Emit a sample only when it differs from the last emitted one by >= ``threshold``.

    The first sample is always emitted.
    """

    def __init__(self, threshold):
        self.threshold = check_int("threshold", threshold, 0, _SMAX)
        self.reset()

    def reset(self):
        """Forget the last emitted sample."""
        self._on = False
        self._last = 0

    def update(self, x):
        """Return ``x`` if it moved far enough from the last emitted sample, else None."""
        if self._on:
            d = x - self._last  # |d| <= 65534
            if -self.threshold < d < self.threshold:
                return None
        self._on = True
        self._last = x
        return x
