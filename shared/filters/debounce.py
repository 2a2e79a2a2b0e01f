"""Debounce: pass a value once it has held for n samples (filter type ``debounce``)."""

from shared.filters import MAX_COUNT, check_int


class Debounce:
    """Pass a value only once it has been the same for ``n`` consecutive samples.

    While the value keeps changing the output is None; once stable it is passed on every
    sample until it changes.
    """

    def __init__(self, n):
        self.n = check_int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Forget the run of equal samples."""
        self._last = 0
        self._run = 0

    def update(self, x):
        """Return ``x`` if it is stable, else None."""
        if x == self._last and self._run:
            if self._run < self.n:
                self._run += 1
        else:
            self._last = x
            self._run = 1
        if self._run < self.n:
            return None
        return x
