"""Uptime from a wrapping millisecond tick, and the wall-clock anchor of this boot.

Ticks are MicroPython's ``time.ticks_ms()``: values in [0, 2**30) that wrap to 0. Uptime is
kept as whole seconds plus milliseconds, so it stays a small int for 34 years; wall time is
only ever an anchor (the uptime at which the board learned unix time, and that time), which
the cloud turns into timestamps (``shared.wire.codec.event_time_ms``).
"""

from shared import const

try:
    from time import sleep_ms, ticks_ms
except ImportError:  # CPython: a monotonic stand-in with the board's tick range
    import time as _time

    def ticks_ms():
        """Milliseconds from a monotonic clock, wrapping at 2**30 like MicroPython's."""
        return int(_time.monotonic() * 1000) & 0x3FFFFFFF

    def sleep_ms(ms):
        """Sleep ``ms`` milliseconds."""
        _time.sleep(ms / 1000)


TICKS_MASK = const(0x3FFFFFFF)  # ticks wrap at 2**30
_HALF = const(0x20000000)
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_U32_MAX = const(0xFFFFFFFF)


def elapsed_ms(now, then):
    """Milliseconds from tick ``then`` forward to tick ``now``, across one wrap; a small int.

    Unlike ``time.ticks_diff`` it never goes negative, so it covers up to 2**30 - 1 ms
    (about 12.4 days) between the two ticks. Allocates nothing.
    """
    return (now - then) & TICKS_MASK


def is_due(now, then):
    """True when tick ``then`` is not in the future of tick ``now`` (within half the tick range,
    across a wrap). Allocates nothing."""
    return ((now - then) & TICKS_MASK) < _HALF


class Uptime:
    """Time since this object was made, as ``.s`` seconds and ``.ms`` (0..999), from ``ticks_ms``.

    ``ticks_ms`` is a zero-argument callable returning ticks in [0, 2**30) that wrap like
    ``time.ticks_ms``. Call ``update()`` at least every ~6 days: a gap of 2**30 ms
    (12.4 days) or more between two updates loses whole tick periods without notice.
    """

    def __init__(self, ticks_ms):
        self._ticks = ticks_ms
        self._last = ticks_ms()
        self.s = 0
        self.ms = 0

    def update(self):
        """Advance ``.s`` and ``.ms`` to now. Allocates nothing."""
        now = self._ticks()
        d = (now - self._last) & TICKS_MASK
        self._last = now
        # d % 1000 first: self.ms + d could pass 2**30 and make a big int
        ms = self.ms + d % 1000
        s = self.s + d // 1000
        if ms >= 1000:
            ms -= 1000
            s += 1
        self.s = s
        self.ms = ms


class WallClock:
    """Unix time of this boot, once learned (from NTP or the cloud).

    The anchor is ``(up_s, up_ms, unix_s, unix_ms)``: the uptime when the time was learned and
    that time (seconds since 1970). A later ``sync`` replaces it, correcting drift; batches
    carry the anchor they were stamped with.
    """

    def __init__(self):
        self.synced = False
        self._anchor = None
        self._uptime = None

    def sync(self, unix_s, unix_ms, uptime):
        """Record that it is now ``unix_s`` s + ``unix_ms`` ms; ``uptime`` is the boot's Uptime."""
        if not (
            isinstance(unix_s, int) and not isinstance(unix_s, bool) and 0 <= unix_s <= _U32_MAX
        ):
            raise ValueError("unix_s must be an int in [0, 2**32)")
        if not (isinstance(unix_ms, int) and not isinstance(unix_ms, bool) and 0 <= unix_ms <= 999):
            raise ValueError("unix_ms must be an int in [0, 999]")
        uptime.update()
        self._anchor = (uptime.s, uptime.ms, unix_s, unix_ms)
        self._uptime = uptime
        self.synced = True

    def anchor(self):
        """The anchor tuple ``(up_s, up_ms, unix_s, unix_ms)``, or None before the first sync."""
        return self._anchor

    def now_unix(self):
        """Unix time now in whole seconds (a big int on the board), or None when not synced."""
        if not self.synced:
            return None
        up = self._uptime
        up.update()
        a = self._anchor
        return a[2] + (a[3] + (up.s - a[0]) * 1000 + up.ms - a[1]) // 1000


def ntp_ms(cfg):
    """A function giving unix ms from the NTP server of ``cfg`` (None while it cannot): the
    node's ``wall_ms`` on a board."""

    def wall_ms():
        try:
            import time

            import ntptime

            ntptime.host = cfg.get("ntp_host", "pool.ntp.org")
            ntptime.settime()
            return (
                (time.time() + 946684800) * 1000
                if time.gmtime(0)[0] == 2000
                else time.time() * 1000
            )
        except Exception:
            return None

    return wall_ms
