"""Device boots (sessions) and their time anchors: the one place that knows a boot's uptime -> unix
time offset, learns it once, and gives the readings and events stored before it their event time."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import EVENTS, READINGS, SESSIONS
from cloud.orrery.jsonlog import jlog


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
            # readings and events of this boot stored before the anchor get their event time now
            for table in (READINGS, EVENTS):
                n = conn.execute(
                    sa.update(table)
                    .where(
                        table.c.device_id == device_id,
                        table.c.boot == boot,
                        table.c.event_ms.is_(None),
                    )
                    .values(event_ms=table.c.up_ms + (a[1] - a[0]))
                ).rowcount
                if n:
                    jlog(
                        "event_time_backfilled",
                        device=device,
                        boot=boot,
                        table=table.name,
                        rows=n,
                    )
