"""Each boot's clock offset: the board's wall clock minus the companion's, estimated from what
the companion observes, kept in ``device_sessions.clock_offset_ms``.

A live (not historical) readings batch of a boot with a time anchor gives the board's wall time
of its newest record (the anchor's unix time plus the record's uptime since the anchor). The
companion receives the batch after that record was taken, so

    (board's wall time of the newest record) - (companion's clock when the batch is stored)

is the true offset minus that record's delay, never more than the true offset. The estimate is
the highest value over the boot's live batches (the freshest record wins). The board marks a
batch historical when its newest record was more than 30 s old when it was published
(``firmware/uplink.py``), so a live batch's delay is at most 30 s plus its way to the companion
(typically one sampling period plus a second): the estimate is low by that much at most, and
by less the more live batches arrive. Historical batches (backlog, earlier boots) and boots
without an anchor (no wall time) give none. Clock drift within a boot is not modelled (an ESP32
drifts by seconds a day, far inside the 300 s a command's iat may lie ahead).
"""

from __future__ import annotations

import logging

from cloud.orrery.clock import fmt_ms
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

STEP_MS = 1000  # a fresher estimate is stored only when it moves by this much


def fmt_offset(ms: int | None) -> str:
    """A clock offset as text: ``+1h``, ``-6m40s``, ``+0s``; ``-`` when unknown."""
    if ms is None:
        return "-"
    s = round(ms / 1000)
    return ("-" if s < 0 else "+") + fmt_ms(abs(s) * 1000)


class ClockOffsets:
    """Keeps each (device, boot)'s estimate, in the database and cached here.

    ``clear`` drops the cache (after a rolled-back transaction it may be ahead of the database).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], int | None] = {}

    def clear(self) -> None:
        """Forget the cached estimates."""
        self._known.clear()

    def missing(self, keys) -> list[tuple[int, int]]:
        """The (device, boot) keys whose stored estimate is not cached (``prime`` them)."""
        return [k for k in keys if k not in self._known]

    def prime(self, known: dict[tuple[int, int], int | None]) -> None:
        """Cache stored estimates (None: none yet), as ``Sessions.load`` returns them."""
        self._known.update(known)

    def estimate(self, device_id: int, device: str, boot: int, est_ms: int) -> int | None:
        """One live batch's value (board's wall time of its newest record minus now), its key
        primed: the estimate to store in the boot's session row (which keeps the highest), or
        None when it is no news. Logs the first estimate of a boot, as a warning when the
        board's clock is further off than a command's iat may lie ahead (``CLOCK_SKEW``)."""
        key = (device_id, boot)
        known = self._known[key]
        if known is not None and est_ms < known + STEP_MS:
            return None
        self._known[key] = est_ms
        if known is None or est_ms - known >= 60_000:
            off = abs(est_ms) >= codec.CLOCK_SKEW * 1000
            jlog("clock_offset", logging.WARNING if off else logging.INFO, device=device,
                 boot=boot, offset_s=round(est_ms / 1000), offset=fmt_offset(est_ms))  # fmt: skip
        return est_ms
