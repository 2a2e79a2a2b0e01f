"""Device boots (sessions) and their time anchors: the one place that knows a boot's uptime -> unix
time offset, learns it once, and gives the readings and events stored before it their event time.

An event time that cannot be true (before 2020, or more than a day ahead of the companion's
clock: a bad anchor, a skewed board) is never stored: the reading keeps no event time, and a
``time_faults`` row says why (``plausible``, ``fault_row``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS, SESSIONS, TIME_FAULTS
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


def _upsert_sql(values: str, lo: str, hi: str) -> str:
    t = "device_sessions"
    return (
        "INSERT INTO device_sessions (device_id, boot, first_seen_ms, last_seen_ms, first_seq,"
        f" last_seq, anchor_up_ms, anchor_unix_ms, clock_offset_ms) {values}"
        " ON CONFLICT (device_id, boot) DO UPDATE SET last_seen_ms = excluded.last_seen_ms,"
        f" first_seq = coalesce({lo}({t}.first_seq, excluded.first_seq), {t}.first_seq,"
        " excluded.first_seq),"
        f" last_seq = coalesce({hi}({t}.last_seq, excluded.last_seq), {t}.last_seq,"
        " excluded.last_seq),"
        f" anchor_up_ms = coalesce({t}.anchor_up_ms, excluded.anchor_up_ms),"
        f" anchor_unix_ms = coalesce({t}.anchor_unix_ms, excluded.anchor_unix_ms),"
        f" clock_offset_ms = coalesce({hi}({t}.clock_offset_ms, excluded.clock_offset_ms),"
        f" {t}.clock_offset_ms, excluded.clock_offset_ms)"
    )


# (device_id, boot, now, first, last, anchor up, anchor unix, offset): now is both seen times
_SQLITE_UPSERT = _upsert_sql("VALUES (?, ?, ?3, ?3, ?, ?, ?, ?, ?)", "min", "max")
_PG_UPSERT = _upsert_sql(
    "SELECT d, b, n, n, f, l, au, ax, o FROM unnest(%s::int[], %s::bigint[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])"
    " AS v(d, b, n, f, l, au, ax, o)",
    "least",
    "greatest",
)


def pg_array(values) -> str:
    """A PostgreSQL array literal of integers and NULLs (text: much cheaper to send than a
    list)."""
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


class Sessions:
    """Upserts ``device_sessions`` rows and caches each (device, boot)'s time anchor.

    ``clear`` drops the cache (after a rolled-back transaction it may be ahead of the database).
    """

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        self._anchors: dict[tuple[int, int], tuple[int, int] | None] = {}
        # sessions the database did not have when looked up, nor upserted since: no reading of
        # theirs is stored (a batch's readings and its session are written together)
        self._fresh: set[tuple[int, int]] = set()
        self._upsert = None
        self._fill: tuple | None = None

    def clear(self) -> None:
        """Forget the cached anchors."""
        self._anchors.clear()
        self._fresh.clear()

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
            if row is None:
                self._fresh.add(key)
        return self._anchors[key]

    def _insert(self):
        if self.pg:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert

    def _statement(self):
        if self._upsert is None:
            if self.pg:
                lo, hi = sa.func.least, sa.func.greatest
            else:
                lo, hi = sa.func.min, sa.func.max
            stmt = self._insert()(SESSIONS)
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
        if self._fresh:
            self._fresh.difference_update((r["device_id"], r["boot"]) for r in rows)

    def load(self, conn: Connection, keys) -> dict[tuple[int, int], int | None]:
        """Look (device, boot) sessions up in bulk: cache their anchors (a key without a row is
        fresh) and return each key's stored clock offset (None: none yet, or no row)."""
        keys = set(keys)
        offsets: dict[tuple[int, int], int | None] = dict.fromkeys(keys)
        dids = sorted({k[0] for k in keys})
        boots = sorted({k[1] for k in keys})
        c = SESSIONS.c
        found = set()
        for i in range(0, len(dids), 500):
            rows = conn.execute(
                sa.select(
                    c.device_id, c.boot, c.anchor_up_ms, c.anchor_unix_ms, c.clock_offset_ms
                ).where(c.device_id.in_(dids[i : i + 500]), c.boot.in_(boots))
            ).all()
            for did, boot, up, unix, off in rows:
                key = (did, boot)
                if key in keys:
                    found.add(key)
                    self._anchors[key] = (up, unix) if up is not None else None
                    offsets[key] = off
        for key in keys - found:
            self._anchors[key] = None
            self._fresh.add(key)
        return offsets

    def unknown(self, keys) -> list[tuple[int, int]]:
        """The (device, boot) keys not looked up yet (``load`` them)."""
        return [k for k in keys if k not in self._anchors]

    def cached(self, device_id: int, boot: int) -> tuple[int, int] | None:
        """The anchor as cached (``load`` or ``anchor`` first), None when not known."""
        return self._anchors.get((device_id, boot))

    def learn_all(self, conn: Connection, learned: list, now: int) -> None:
        """Learn the anchors of (device id, device name, boot, anchor) sessions whose anchor is
        not known yet (``load`` first). A session the database does not have yet is only cached:
        its row comes with the readings' (``upsert_many``, which keeps the first anchor)."""
        new = []
        for did, name, boot, anchor in learned:
            key = (did, boot)
            if self._anchors.get(key) is not None:
                continue  # two batches of the group: the first one's
            if key not in self._fresh:
                self.learn(conn, did, name, boot, now, anchor)
                continue
            a = (anchor[0] * 1000 + anchor[1], anchor[2] * 1000 + anchor[3])
            self._anchors[key] = a
            new.append((did, name, boot, a[1] - a[0]))
        if not new:
            return
        # no reading of a fresh session is stored yet, but events may be: those get their time
        dids = sorted({d for d, *_ in new})
        waiting = set()
        for i in range(0, len(dids), 500):
            waiting.update(
                conn.execute(
                    sa.select(EVENTS.c.device_id, EVENTS.c.boot)
                    .where(EVENTS.c.device_id.in_(dids[i : i + 500]), EVENTS.c.event_ms.is_(None))
                    .distinct()
                ).all()
            )
        for did, name, boot, off in new:
            if (did, boot) in waiting:
                self._backfill(conn, did, name, boot, off, now, readings=False)

    def upsert_many(self, conn: Connection, rows: list[tuple]) -> None:
        """Create or update sessions as ``upsert`` does, from (device id, boot, now, first
        seq, last seq, anchor up ms, anchor unix ms, clock offset ms or None) tuples (one per
        session) in one statement on PostgreSQL, one prepared executemany on SQLite. A clock
        offset is kept when higher than the stored one."""
        if not rows:
            return
        rows.sort()  # one lock order for every worker
        raw = conn.connection.driver_connection
        cur = raw.cursor()  # type: ignore[union-attr]
        try:
            if self.pg:
                cols = list(zip(*rows, strict=True))
                cur.execute(_PG_UPSERT, [pg_array(c) for c in cols])
            else:
                cur.executemany(_SQLITE_UPSERT, rows)
        finally:
            cur.close()
        if self._fresh:
            self._fresh.difference_update((r[0], r[1]) for r in rows)

    def learn(
        self, conn: Connection, device_id: int, device: str, boot: int, now: int, anchor
    ) -> None:
        """Create or update one session; learn its time anchor (the board's uptime and unix
        time, each as seconds and ms) if it is new."""
        a = None
        if anchor is not None and self.anchor(conn, device_id, boot) is None:
            a = (anchor[0] * 1000 + anchor[1], anchor[2] * 1000 + anchor[3])
        fresh = (device_id, boot) in self._fresh
        self.upsert(conn, [session_row(device_id, boot, now, None, None, a)])
        if a:
            self._anchors[(device_id, boot)] = a
            self._backfill(conn, device_id, device, boot, a[1] - a[0], now, readings=not fresh)

    def _fill_statements(self) -> tuple:
        # (readings update, events update, time_faults insert), built once
        if self._fill is None:
            did, boot, off, lo, hi, now = (
                sa.bindparam(n, type_=sa.BigInteger)
                for n in ("b_did", "b_boot", "b_off", "b_lo", "b_hi", "b_now")
            )
            out = []
            for table in (READINGS, EVENTS):
                at = table.c.up_ms + off
                out.append(
                    sa.update(table)
                    .where(
                        table.c.device_id == did,
                        table.c.boot == boot,
                        table.c.event_ms.is_(None),
                        at.between(lo, hi),
                    )
                    .values(event_ms=at)
                )
            at = READINGS.c.up_ms + off
            bad = sa.select(
                READINGS.c.device_id,
                READINGS.c.boot,
                READINGS.c.seq,
                at,
                sa.case((at < EARLIEST_MS, TOO_EARLY), else_=TOO_LATE),
                now,
            ).where(
                READINGS.c.device_id == did,
                READINGS.c.boot == boot,
                READINGS.c.event_ms.is_(None),
                sa.not_(at.between(lo, hi)),
            )
            cols = ["device_id", "boot", "seq", "event_ms", "reason", "detected_ms"]
            out.append(
                self._insert()(TIME_FAULTS)
                .from_select(cols, bad)
                .on_conflict_do_nothing()
                .returning(TIME_FAULTS.c.seq)  # counted: an insert's rowcount is not exact
            )
            self._fill = tuple(out)
        return self._fill

    def _backfill(
        self,
        conn: Connection,
        device_id: int,
        device: str,
        boot: int,
        off: int,
        now: int,
        readings: bool,
    ) -> None:
        # readings (unless none can be stored yet) and events of this boot stored before the
        # anchor get their event time now, when it can be true; readings whose time cannot
        # get a time_faults row instead
        fill_readings, fill_events, faults_of = self._fill_statements()
        lo, hi = plausible(now)
        p = {"b_did": device_id, "b_boot": boot, "b_off": off, "b_lo": lo, "b_hi": hi, "b_now": now}
        for table, stmt in ((READINGS, fill_readings), (EVENTS, fill_events)):
            if table is READINGS and not readings:
                continue
            n = conn.execute(stmt, p).rowcount
            if n:
                jlog("event_time_backfilled", device=device, boot=boot, table=table.name, rows=n)
        if not readings:
            return
        faults = len(conn.execute(faults_of, p).all())
        if faults:
            conn.execute(
                sa.update(DEVICES)
                .where(DEVICES.c.id == device_id)
                .values(bad_time=DEVICES.c.bad_time + faults)
            )
            jlog("event_time_refused", device=device, boot=boot, rows=faults, off_ms=off)
