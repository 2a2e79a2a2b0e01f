"""Virtual time shared with a companion process: unix ms in a small memory-mapped file."""

from __future__ import annotations

import contextlib
import mmap
import struct
from pathlib import Path


class SharedClock:
    """Virtual unix ms in a memory-mapped file: the fleet writes it, a companion process reads it.

    The file also carries the companion's side, so the fleet never runs ahead of it: how many
    board messages it has stored, how many it holds (received, not stored yet) and how many
    subscriptions the broker has granted it. Two copies of the time are written; a reader
    retries until they agree, so it never sees a torn value.
    """

    SIZE = 40

    def __init__(self, path: str | Path, create: bool = False, unix_ms: int = 0) -> None:
        self.path = Path(path)
        if create:
            self.path.write_bytes(struct.pack("<qqqqq", unix_ms, unix_ms, 0, 0, 0))
        self._f = open(self.path, "r+b")  # noqa: SIM115
        self._m = mmap.mmap(self._f.fileno(), self.SIZE)

    def set(self, unix_ms: int) -> None:
        struct.pack_into("<qq", self._m, 0, unix_ms, unix_ms)

    def __call__(self) -> int:
        while True:
            a, b = struct.unpack_from("<qq", self._m, 0)
            if a == b:
                return a

    def _get(self, slot: int) -> int:
        return struct.unpack_from("<q", self._m, 8 * slot)[0]

    def _put(self, slot: int, v: int) -> None:
        struct.pack_into("<q", self._m, 8 * slot, v)

    processed = property(
        lambda self: self._get(2), lambda self, v: self._put(2, v), doc="board messages stored"
    )
    subscribed = property(
        lambda self: self._get(3), lambda self, v: self._put(3, v), doc="SUBACKs received"
    )
    holding = property(
        lambda self: self._get(4), lambda self, v: self._put(4, v), doc="messages held, unstored"
    )

    def reset(self) -> None:
        """Zero the companion's counters (before a companion starts)."""
        for slot in (2, 3, 4):
            self._put(slot, 0)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._m.close()
        self._f.close()
