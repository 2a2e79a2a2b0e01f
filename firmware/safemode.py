"""Crash counting and the safe-mode decision used by /main.py.

A boot counts as failed from the moment it starts (``boot_started``) until the app has run
healthy for the config's ``health_window_s`` (``boot_ok``, done by ``Feeder``). So a crash,
a watchdog reset, a hard fault or a power cut during that window all count, and ``limit``
failed boots in a row stop the board in safe mode: the REPL, without the app or the
watchdog, where mpremote can reach it. Safe mode also follows a held safe-mode pin.
"""

from firmware.clock import elapsed_ms, ticks_ms
from shared import const

_MAX_COUNT = const(999)


class CrashCounter:
    """The number of failed boots in a row, kept in the small text file ``path``.

    A missing or unreadable file reads as 0. Write failures are printed and otherwise
    ignored: a broken filesystem must not keep the app from starting.
    """

    def __init__(self, path):
        self.path = path
        try:
            with open(path) as f:
                n = int(f.read())
        except Exception:  # missing, unreadable or garbled
            n = 0
        self.count = n if 0 <= n <= _MAX_COUNT else 0

    def _write(self, n):
        self.count = n
        try:
            with open(self.path, "w") as f:
                f.write(str(n))
        except OSError as e:
            print("safemode: cannot write", self.path, e)

    def boot_started(self):
        """Count this boot as failed until ``boot_ok``; return the new count."""
        if self.count < _MAX_COUNT:
            self._write(self.count + 1)
        return self.count

    def boot_ok(self):
        """The app ran healthy: reset the count."""
        if self.count:
            self._write(0)

    def crashed(self):
        """Count a caught crash: one after ``boot_ok`` counts again, one before already did."""
        if self.count == 0:
            self._write(1)


def should_enter_safe_mode(pin_held, counter, limit=3):
    """Return ``(enter, reasons)``: whether to stop in safe mode, and why as one string.

    ``counter`` is a CrashCounter or a count.
    """
    n = counter if isinstance(counter, int) else counter.count
    reasons = []
    if pin_held:
        reasons.append("safe-mode pin held")
    if n >= limit:
        reasons.append(
            "{} boots in a row failed before running healthy (limit {})".format(n, limit)
        )
    return bool(reasons), "; ".join(reasons)


class Feeder:
    """The watchdog feed handed to the node as ``feed``.

    Feeds ``wdt`` and, the first time ``window_ms`` have passed since it was made, marks the
    boot healthy with ``counter.boot_ok()``. ``feed`` allocates nothing after that.
    ``ticks`` is the tick source (``time.ticks_ms``; a VirtualClock's in tests).
    """

    def __init__(self, wdt, counter, window_ms, ticks=None):
        self._wdt = wdt
        self._counter = counter
        self._window = window_ms
        self._ticks = ticks or ticks_ms
        self._start = self._ticks()
        self.healthy = False

    def feed(self):
        """Feed the watchdog; call it from the node's loop, well within the WDT timeout."""
        self._wdt.feed()
        if not self.healthy and elapsed_ms(self._ticks(), self._start) >= self._window:
            self.healthy = True
            self._counter.boot_ok()
