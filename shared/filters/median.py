"""Median: the median of a sliding window (filter type ``median``)."""

from shared.filters import MAX_WINDOW, check_flag, check_int, shr_round, zeros

_LOW = [-32768]  # the sorted list is made as _LOW * n: one list, no garbage


class Median:
    """Median of the last ``window`` samples (``window`` odd).

    Keeps a sorted copy of the window in a list, between sentinels below and above any
    sample: each sample replaces the outgoing one (``list.remove`` and ``list.insert`` shift
    in C), so nothing is sorted per sample. Until the window is full, the ring and the sorted
    copy hold placeholders (-32768, below any sample). With ``partial=True`` and an even
    count seen so far, the median is the rounded mean of the two middle samples.
    """

    def __init__(self, window, partial=False):
        self.window = check_int("window", window, 1, MAX_WINDOW)
        if not window & 1:
            raise ValueError("window: %d must be odd for median" % window)
        self.partial = check_flag("partial", partial)
        self._ring = zeros("h", window)
        self._sorted = _LOW * (window + 2)  # exactly window + 2 slots, no garbage
        self._mid = (window >> 1) + 1  # where the median sits once the window is full
        self.reset()

    def reset(self):
        """Forget every sample."""
        r = self._ring
        s = self._sorted
        for i in range(self.window):
            r[i] = -32768
            s[i] = -32768
        s[self.window] = -32768
        s[self.window + 1] = 32768
        self._i = -1  # as in MovingAverage: negative while filling, the ring written backwards

    def update(self, x):
        """Add ``x``; return the window median, or None while the window is not full."""
        s = self._sorted
        r = self._ring
        i = self._i
        s.remove(r[i])  # the outgoing sample (or a placeholder)
        r[i] = x
        m = self._mid
        j = m  # insert x in order, searching from the middle
        if s[j] < x:
            j += 1
            while s[j] < x:
                j += 1
        else:
            while s[j - 1] > x:
                j -= 1
        s.insert(j, x)
        if i > 0:
            self._i = i - 1
            return s[m]
        j = self.window
        if i == 0 or i == -j:  # wrapped, or the window is now full
            self._i = j - 1
            return s[m]
        self._i = i - 1
        if not self.partial:
            return None
        # -i samples so far, sorted in s[c:c - i] above c = window + 1 + i placeholders.
        j += 1 + i + (-i >> 1)  # c + n // 2 for the n = -i samples: the upper middle
        if i & 1:
            return s[j]
        return shr_round(s[j - 1] + s[j], 1)
