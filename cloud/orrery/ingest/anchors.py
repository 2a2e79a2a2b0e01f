"""Device boots (sessions) and their time anchors: the one place that knows a boot's uptime -> unix
time offset, learns it once, and gives the readings and events stored before it their event time.

An event time that cannot be true (before 2020, or more than a day ahead of the companion's
clock: a bad anchor, a skewed board) is never stored: the reading keeps no event time, and a
``time_faults`` row says why (``plausible``, ``fault_row``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS, SESSIONS, TIME_FAULTS, insert_ignore
from cloud.orrery.jsonlog import jlog

EARLIEST_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: no reading of this fleet is older
AHEAD_MS = 86_400_000  # how far an event time may lie ahead of the companion's clock
TOO_EARLY = "before 2020"
TOO_LATE = "more than a day ahead of the companion's clock"


def plausible(now: int) -> tuple[int, int]:
    """The event times (unix ms, inclusive) that can be true when the companion's clock says
    ``now``."""
    return EARLIEST_MS, now + AHEAD_MS


def fault_row(device_id: int, boot: int, seq: int, event_ms: int, now: int) -> dict:
    """A ``time_faults`` row: the reading's event time ``event_ms`` cannot be true."""
    return {
        "device_id": device_id,
        "boot": boot,
        "seq": seq,
        "event_ms": event_ms,
        "reason": TOO_EARLY if event_ms < EARLIEST_MS else TOO_LATE,
        "detected_ms": now,
    }


def session_row(device_id: int, boot: int, now: int, first, last, anchor) -> dict:
    """A device_sessions row; ``anchor`` is (uptime ms, unix ms) or None."""
    return {
        "device_id": device_id,
        "boot": boot,
        "first_seen_ms": now,
        "last_seen_ms": now,
        "first_seq": first,
        "last_seq": last,
        "anchor_up_ms": anchor[0] if anchor else None,
        "anchor_unix_ms": anchor[1] if anchor else None,
    }


class Sessions:
    """Upserts ``device_sessions`` rows and caches each (device, boot)'s time anchor.

    ``clear`` drops the cache (after a rolled-back transaction it may be ahead of the database).
    """

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        self._anchors: dict[tuple[int, int], tuple[int, int] | None] = {}
        self._upsert = None

    def clear(self) -> None:
        """Forget the cached anchors."""
        self._anchors.clear()

    def anchor(self, conn: Connection, device_id: int, boot: int) -> tuple[int, int] | None:
        """The (uptime ms, unix ms) anchor of a device's boot, or None while it is not known."""
        key = (device_id, boot)
        if key not in self._anchors:
            row = conn.execute(
                sa.select(SESSIONS.c.anchor_up_ms, SESSIONS.c.anchor_unix_ms).where(
                    SESSIONS.c.device_id == device_id, SESSIONS.c.boot == boot
                )
            ).first()
            self._anchors[key] = (row[0], row[1]) if row and row[0] is not None else None
        return self._anchors[key]

    def _statement(self):
        if self._upsert is None:
            if self.pg:
                from sqlalchemy.dialects.postgresql import insert

                lo, hi = sa.func.least, sa.func.greatest
            else:
                from sqlalchemy.dialects.sqlite import insert

                lo, hi = sa.func.min, sa.func.max
            stmt = insert(SESSIONS)
            ex, t = stmt.excluded, SESSIONS.c
            self._upsert = stmt.on_conflict_do_update(
                index_elements=["device_id", "boot"],
                set_={
                    "last_seen_ms": ex.last_seen_ms,
                    "first_seq": sa.func.coalesce(
                        lo(t.first_seq, ex.first_seq), t.first_seq, ex.first_seq
                    ),
                    "last_seq": sa.func.coalesce(
                        hi(t.last_seq, ex.last_seq), t.last_seq, ex.last_seq
                    ),
                    "anchor_up_ms": sa.func.coalesce(t.anchor_up_ms, ex.anchor_up_ms),
                    "anchor_unix_ms": sa.func.coalesce(t.anchor_unix_ms, ex.anchor_unix_ms),
                },
            )
        return self._upsert

    def upsert(self, conn: Connection, rows: list[dict]) -> None:
        """Create or update (device, boot) sessions: seen times, seq span, and the time anchor,
        which is learned once and never changed."""
        conn.execute(self._statement(), rows)

    def learn(
        self, conn: Connection, device_id: int, device: str, boot: int, now: int, anchor
    ) -> None:
        """Create or update one session; learn its time anchor (the board's uptime and unix
        time, each as seconds and ms) if it is new."""
        a = None
        if anchor is not None and self.anchor(conn, device_id, boot) is None:
            a = (anchor[0] * 1000 + anchor[1], anchor[2] * 1000 + anchor[3])
        self.upsert(conn, [session_row(device_id, boot, now, None, None, a)])
        if a:
            self._anchors[(device_id, boot)] = a
            self._backfill(conn, device_id, device, boot, a[1] - a[0], now)

    def _backfill(
        self, conn: Connection, device_id: int, device: str, boot: int, off: int, now: int
    ) -> None:
        # readings and events of this boot stored before the anchor get their event time now,
        # when it can be true; readings whose time cannot get a time_faults row instead
        lo, hi = plausible(now)
        for table in (READINGS, EVENTS):
            untimed = (
                table.c.device_id == device_id,
                table.c.boot == boot,
                table.c.event_ms.is_(None),
            )
            at = table.c.up_ms + off
            n = conn.execute(
                sa.update(table).where(*untimed, at.between(lo, hi)).values(event_ms=at)
            ).rowcount
            if n:
                jlog("event_time_backfilled", device=device, boot=boot, table=table.name, rows=n)
            if table is EVENTS:
                continue
            bad = sa.select(
                table.c.device_id,
                table.c.boot,
                table.c.seq,
                at,
                sa.case((at < EARLIEST_MS, TOO_EARLY), else_=TOO_LATE),
                sa.literal(now, sa.BigInteger),
            ).where(*untimed, sa.not_(at.between(lo, hi)))
            cols = ["device_id", "boot", "seq", "event_ms", "reason", "detected_ms"]
            ins = insert_ignore(conn, TIME_FAULTS).from_select(cols, bad)
            faults = len(conn.execute(ins.returning(TIME_FAULTS.c.seq)).all())  # new ones only
            if faults:
                conn.execute(
                    sa.update(DEVICES)
                    .where(DEVICES.c.id == device_id)
                    .values(bad_time=DEVICES.c.bad_time + faults)
                )
                jlog("event_time_refused", device=device, boot=boot, rows=faults, off_ms=off)
