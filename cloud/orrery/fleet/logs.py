"""A board's log lines (``up/log``): the text of a line, as the ingest writes it when the line
arrives, and reading the stored lines back for ``orrery devices logs`` and the timeline.

A board sends each line as a code and two small ints (``shared/wire/__init__.py``, "Log
lines"); the text is the companion's. Every function takes a Connection and returns plain
data, for the CLI and the HTTP API alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import DEVICE_LOGS
from shared.wire import codec

DEFAULT_LIMIT = 100


def level_and_name(code: int) -> tuple[str, str]:
    """``(level, name)`` of a line's code; a code this side does not know is a warning."""
    return codec.LOG_CODES.get(code, ("warning", f"code_{code}"))


def render(code: int, a: int, b: int, states: Sequence[str] | None = None) -> str:
    """The text of a line; ``states`` are the state names of the workflow the device runs
    (None: unknown, the index is shown)."""
    if code == codec.LOG_BOOT:
        return "boot: the app started"
    if code == codec.LOG_STATE:
        name = states[a] if states is not None and 0 <= a < len(states) else f"#{a}"
        return f"state -> {name}" + (f" ({b} transitions)" if b != 1 else "")
    if code == codec.LOG_LINK_UP:
        return "link up" + (f" ({a} failed connects this boot)" if a else "")
    if code == codec.LOG_LINK_DOWN:
        return "link down: a connect failed"
    if code == codec.LOG_REFUSED:
        return f"command refused: {codec.ACK_NAMES.get(a, str(a))}"
    if code == codec.LOG_FAILED:
        return f"command failed (acked {codec.ACK_NAMES.get(a, str(a))})"
    if code == codec.LOG_FAULT:
        return "workflow fault: the workflow raised (a trial rolls back)"
    if code == codec.LOG_INBOX_FULL:
        return "inbox full: a command dropped (pulled again on reconnect)"
    if code == codec.LOG_LOSS:
        why = codec.LOSS_REASONS[a] if 0 <= a < len(codec.LOSS_REASONS) else f"reason {a}"
        return f"store lost {b} reading(s): {why}"
    return f"code {code} ({a}, {b})"


@dataclass
class Line:
    """One stored line: when (the board's event time if its boot's anchor is known, else when
    it was received), its level, what, and where it is in the board's log (boot, seq)."""

    boot: int
    seq: int
    at_ms: int
    time_source: str  # "event" (the board's clock) or "received" (the companion's)
    level: str
    name: str
    text: str
    up_ms: int
    received_ms: int

    def as_dict(self) -> dict:
        """The line as JSON-ready data, its time as ISO 8601 (``at``) and unix ms."""
        return {
            "at": iso(self.at_ms),
            "at_ms": self.at_ms,
            "time_source": self.time_source,
            "level": self.level,
            "code": self.name,
            "text": self.text,
            "boot": self.boot,
            "seq": self.seq,
            "up_ms": self.up_ms,
            "received_ms": self.received_ms,
        }


_AT = sa.func.coalesce(DEVICE_LOGS.c.event_ms, DEVICE_LOGS.c.received_ms)


def _line(r) -> Line:
    return Line(
        r.boot,
        r.seq,
        r.at,
        "event" if r.event_ms is not None else "received",
        r.level,
        level_and_name(r.code)[1],
        r.text,
        r.up_ms,
        r.received_ms,
    )


def lines(
    conn: Connection,
    device: int,
    since_ms: int | None = None,
    limit: int = DEFAULT_LIMIT,
    received_after_ms: int | None = None,
) -> list[Line]:
    """Device ``device``'s newest ``limit`` lines at or after ``since_ms`` (their time), oldest
    first; with ``received_after_ms``, only lines received at or after it (``follow``)."""
    q = sa.select(DEVICE_LOGS, _AT.label("at")).where(DEVICE_LOGS.c.device_id == device)
    if since_ms is not None:
        q = q.where(_AT >= since_ms)
    if received_after_ms is not None:
        q = q.where(DEVICE_LOGS.c.received_ms >= received_after_ms)
    q = q.order_by(_AT.desc(), DEVICE_LOGS.c.boot.desc(), DEVICE_LOGS.c.seq.desc()).limit(limit)
    return [_line(r) for r in reversed(conn.execute(q).all())]


class Follower:
    """What ``devices logs --follow`` prints after its first lines: ``poll`` returns each line
    stored after the follower was made, once. Make it before reading the first lines and
    ``mark`` those, so that a line stored in between is printed exactly once too."""

    def __init__(self, conn: Connection, device: int, since_ms: int | None = None) -> None:
        self.device = device
        self.since_ms = since_ms
        c = DEVICE_LOGS.c
        self.cursor = (
            conn.execute(
                sa.select(sa.func.max(c.received_ms)).where(c.device_id == device)
            ).scalar()
            or 0
        )
        q = sa.select(c.boot, c.seq).where(c.device_id == device, c.received_ms == self.cursor)
        self.seen = {(r.boot, r.seq) for r in conn.execute(q)}

    def mark(self, shown: Sequence[Line]) -> None:
        """Lines printed already (never returned by ``poll``)."""
        self.seen.update((x.boot, x.seq) for x in shown)

    def poll(self, conn: Connection) -> list[Line]:
        """The lines received since the last poll, oldest first."""
        new = [
            x
            for x in lines(conn, self.device, self.since_ms, 10_000, received_after_ms=self.cursor)
            if (x.boot, x.seq) not in self.seen
        ]
        self.mark(new)
        for x in new:
            self.cursor = max(self.cursor, x.received_ms)
        return new
