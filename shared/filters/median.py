"""Median: the median of a sliding window (filter type ``median``)."""

from shared.filters import MAX_WINDOW, Filter, Reset, check_flag, check_int, const, shr_round

_LOW = [-32768]  # lists are made as _LOW * n: one list, no garbage
_PLACE = const(-32768)  # below any sample


class Median(Filter):
    """Median of the last ``window`` samples (``window`` odd).

    Keeps a sorted copy of the window in a list, between sentinels below and above any
    sample: each sample replaces the outgoing one (``list.remove`` and ``list.insert`` shift
    in C), so nothing is sorted per sample. Until the window is full, the ring and the sorted
    copy hold placeholders (-32768, below any sample). With ``partial=True`` and an even
    count seen so far, the median is the rounded mean of the two middle samples.
    """

    def __init__(self, window, partial=False):
        check_int("window", window, 1, MAX_WINDOW)
        if not window & 1:
            raise ValueError("window: %d must be odd for median" % window)
        self.start(_run(window, check_flag("partial", partial)))


def _run(window, partial):
    r = _LOW * window
    s = _LOW * (window + 2)
    m = (window >> 1) + 1  # where the median sits once the window is full
    y = None
    while True:
        for i in range(window):
            r[i] = _PLACE
            s[i] = _PLACE
        s[window] = _PLACE
        s[window + 1] = 32768
        i = -1  # as in MovingAverage: negative while filling, the ring written backwards
        try:
            while True:
                x = yield y
                s.remove(r[i])  # the outgoing sample (or a placeholder)
                r[i] = x
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
                    i -= 1
                    y = s[m]
                elif i == 0 or i == -window:  # wrapped, or the window is now full
                    i = window - 1
                    y = s[m]
                else:  # filling: -i samples so far, above window + 1 + i placeholders
                    y = None
                    if partial:
                        j = window + 1 + i + (-i >> 1)  # the upper middle of the -i samples
                        if i & 1:
                            y = s[j]
                        else:  # an even count: the rounded mean of the middle two
                            y = shr_round(s[j - 1] + s[j], 1)
                    i -= 1
        except Reset:
            y = None
