"""Reconnect delays: exponential backoff with full jitter.

Attempt ``n`` (counted from 0 after a ``reset()``) waits a uniformly random delay in
``[0, min(cap_ms, base_ms * 2**n)]`` ms. Full jitter spreads a fleet that lost its broker at
the same moment, so the boards do not come back in lock step.
"""

import sys

from shared import const

# cap_ms + 1 must stay a small int on a 32-bit MicroPython (-2**30 .. 2**30-1).
MAX_MS = const(0x3FFFFFFE)


def int30(b):
    """The low 30 bits of 4 big-endian bytes: a small int in [0, 2**30)."""
    return ((b[0] & 0x3F) << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


if sys.implementation.name == "micropython":
    from os import urandom

    def default_rand():
        """A random int in [0, 2**30) from the hardware RNG."""
        return int30(urandom(4))

else:
    from random import getrandbits

    def default_rand():
        """A random int in [0, 2**30)."""
        return getrandbits(30)


class Backoff:
    """Delays for retrying a connection; ``rand()`` returns a random int (at least 0..2**30-1
    for an unbiased spread), injectable for deterministic tests."""

    def __init__(self, base_ms=500, cap_ms=60000, rand=None):
        if not 0 < base_ms <= cap_ms <= MAX_MS:
            raise ValueError("need 0 < base_ms <= cap_ms <= MAX_MS")
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._rand = rand or default_rand
        self.attempt = 0  # stops counting once the ceiling reaches cap_ms
        self.ceiling_ms = base_ms  # upper bound of the next delay

    def next_delay_ms(self):
        """Return the next delay in ms, uniformly random in [0, ceiling_ms]; then grow the ceiling."""
        c = self.ceiling_ms
        delay = self._rand() % (c + 1)
        if c < self.cap_ms:
            # Doubling past cap_ms could leave the small-int range: clamp before shifting.
            self.ceiling_ms = self.cap_ms if c > self.cap_ms >> 1 else c << 1
            self.attempt += 1
        return delay

    def reset(self):
        """Start again from base_ms (call after a successful connection)."""
        self.attempt = 0
        self.ceiling_ms = self.base_ms
