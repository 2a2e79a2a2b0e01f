"""Ingest and reconciliation: board messages in, exactly one correctly timed row per reading out.

``Ingest.handle`` takes a group of MQTT messages and stores them in ONE transaction; the service
acks the messages to the broker only after that commit, so a crash at any point redelivers them
and the (device, boot, seq) key drops the repeats. ``Ingest.reconcile`` runs periodically: it
merges received ranges, finds gaps once the reorder window has passed, asks the board to resend
exactly those ranges (signed ``resend`` commands), and turns what the board reported dropped,
or no longer holds, into permanent-loss records with their reason.

Nothing a board sends can crash it: every message is stored, or dead-lettered with a reason.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud.orrery.clock import now_ms
from cloud.orrery.db.tables import (
    ALERTS,
    DEAD_LETTERS,
    DEVICES,
    EVENTS,
    GAPS,
    LOSSES,
    RANGES,
    READING_COLS,
    READINGS,
    SESSIONS,
    insert_ignore,
)
from cloud.orrery.fleet import commands, keys
from cloud.orrery.jsonlog import jlog
from shared import codec as P

MAX_JSON = 16384
DEAD_PAYLOAD = 4096


def _session_row(device_id: int, boot: int, now: int, first, last, anchor) -> dict:
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


# --- ranges ----------------------------------------------------------------------------------


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge inclusive ranges, joining adjacent ones."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(
    ranges: Iterable[tuple[int, int]], minus: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Inclusive ``ranges`` minus the merged ranges ``minus``."""
    out = []
    for a, b in merge(ranges):
        for c, d in minus:
            if d < a:
                continue
            if c > b:
                break
            if c > a:
                out.append((a, c - 1))
            a = d + 1
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return out


def count(ranges: Iterable[tuple[int, int]]) -> int:
    """How many numbers the inclusive ranges hold."""
    return sum(b - a + 1 for a, b in ranges)


# --- alerts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """A live alert: channel ``channel`` reads above (``>``) or below (``<``) ``level``."""

    channel: int
    op: str
    level: int

    @classmethod
    def parse(cls, text: str) -> AlertRule:
        """Parse ``CHANNEL>LEVEL`` or ``CHANNEL<LEVEL`` (raw S16 values), e.g. ``0>3000``."""
        for op in (">", "<"):
            if op in text:
                ch, _, lv = text.partition(op)
                try:
                    rule = cls(int(ch), op, int(lv))
                except ValueError:
                    break
                if not 0 <= rule.channel <= 255 or not -32767 <= rule.level <= 32767:
                    break
                return rule
        raise ValueError(
            f"alert rule {text!r}: expected CHANNEL>LEVEL or CHANNEL<LEVEL, e.g. 0>3000"
        )

    @property
    def name(self) -> str:
        return f"{self.channel}{self.op}{self.level}"

    def trips(self, channel: int, value: int) -> bool:
        return channel == self.channel and (
            value > self.level if self.op == ">" else value < self.level
        )


# --- ingest ----------------------------------------------------------------------------------


@dataclass
class Message:
    """One MQTT message as the ingest sees it."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class Outcome:
    """What one ``handle`` call did."""

    inserted: int = 0
    duplicates: int = 0
    dead: int = 0
    outgoing: list[commands.Outgoing] = field(default_factory=list)


@dataclass
class _Dev:
    id: int
    name: str
    fleet: str


class Ingest:
    """Stores board messages and reconciles their sequence numbers (see the module docstring).

    ``secret`` is the fleet secret that signs resend commands (None: gaps are reported but not
    requested). ``clock`` gives unix ms (virtual in simulations). ``auto_register`` admits unknown devices on their first message instead of
    dead-lettering them. ``reorder_window_ms``: how long a hole may stay open before it is a gap.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        secret: bytes | None = None,
        auto_register: bool = False,
        alert_rules: Sequence[AlertRule] = (),
        reorder_window_ms: int = 10_000,
        resend_ttl_s: int = 86_400,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.secret = secret
        self.auto_register = auto_register
        self.alert_rules = tuple(alert_rules)
        self.reorder_window_ms = reorder_window_ms
        self.resend_ttl_s = resend_ttl_s
        self.pg = engine.dialect.name == "postgresql"
        self._devices: dict[str, _Dev] = {}
        self._anchors: dict[tuple[int, int], tuple[int, int] | None] = {}
        self.counters: dict[str, int] = defaultdict(int)
        self._upsert_session = None
        self._cursor = 0  # the device the last reconcile pass ended on
        self._count_stmt = (
            sa.update(DEVICES)
            .where(DEVICES.c.id == sa.bindparam("did"))
            .values(
                received=DEVICES.c.received + sa.bindparam("n"),
                duplicates=DEVICES.c.duplicates + sa.bindparam("dup"),
                historical=DEVICES.c.historical + sa.bindparam("hist"),
                last_seen_ms=sa.bindparam("now"),
                dirty=True,
            )
        )
        self._insert_sql = "INSERT INTO readings ({}) VALUES ({}) ON CONFLICT DO NOTHING".format(
            ",".join(READING_COLS), ",".join("?" * len(READING_COLS))
        )

    # --- the message path --------------------------------------------------------------------

    def handle(self, messages: Sequence[Message], now: int | None = None) -> Outcome:
        """Store a group of messages in one transaction and return what happened.

        Commit means durable: the caller acks the messages to the broker only after this
        returns. Raises only on database errors (then nothing of the group is stored).
        """
        now = self.clock() if now is None else now
        out = Outcome()
        with self.engine.begin() as conn:
            try:
                self._handle(conn, messages, now, out)
            except Exception:
                # the transaction rolls back, so the caches may be ahead of the database
                self._devices.clear()
                self._anchors.clear()
                raise
        self.counters["inserted"] += out.inserted
        self.counters["duplicates"] += out.duplicates
        self.counters["dead"] += out.dead
        return out

    def _handle(
        self, conn: Connection, messages: Sequence[Message], now: int, out: Outcome
    ) -> None:
        batches: list[tuple[_Dev, P.Batch]] = []
        for m in messages:
            reason, dev, kind = self._route(conn, m, now)
            if reason:
                self._dead(conn, m, dev.name if dev else None, reason, now, out)
                continue
            assert dev is not None
            try:
                reason = self._one(conn, dev, kind, m, now, out, batches)
            except (
                ValueError,
                TypeError,
                KeyError,
            ) as exc:  # decoders return errors; this is a net
                reason = f"malformed: {exc}"
            if reason:
                self._dead(conn, m, dev.name, reason, now, out)
        if batches:
            self._store_batches(conn, batches, now, out)

    def _route(self, conn: Connection, m: Message, now: int) -> tuple[str | None, _Dev | None, str]:
        parsed, err = P.parse_topic(m.topic)
        if err:
            return f"wrong topic: {err}", None, ""
        fleet, name, kind = parsed
        if kind == P.CMD:
            dev = self._device(conn, name, fleet, now, register=False)
            return (None if dev else "unknown device"), dev, kind
        limit = P.MAX_BATCH_BYTES if kind == P.READINGS else MAX_JSON
        if len(m.payload) > limit:
            return f"oversize: {len(m.payload)} bytes > {limit}", None, kind
        dev = self._device(conn, name, fleet, now, register=self.auto_register)
        if dev is None:
            return "unknown device", None, kind
        if dev.fleet != fleet:
            return f"fleet mismatch: device is in fleet {dev.fleet!r}", dev, kind
        return None, dev, kind

    def _device(
        self, conn: Connection, name: str, fleet: str, now: int, register: bool
    ) -> _Dev | None:
        dev = self._devices.get(name)
        if dev:
            return dev
        row = conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.fleet).where(DEVICES.c.name == name)
        ).first()
        if row is None:
            if not register:
                return None
            conn.execute(
                insert_ignore(conn, DEVICES), [{"name": name, "fleet": fleet, "created_ms": now}]
            )
            row = conn.execute(
                sa.select(DEVICES.c.id, DEVICES.c.fleet).where(DEVICES.c.name == name)
            ).first()
            jlog("device_registered", device=name, fleet=fleet)
        dev = self._devices[name] = _Dev(row.id, name, row.fleet)
        return dev

    def _dead(
        self, conn: Connection, m: Message, device: str | None, reason: str, now: int, out: Outcome
    ) -> None:
        out.dead += 1
        self.counters["dead:" + reason.split(":")[0]] += 1
        conn.execute(
            sa.insert(DEAD_LETTERS),
            [
                {
                    "received_ms": now,
                    "topic": m.topic[:512] if isinstance(m.topic, str) else repr(m.topic)[:512],
                    "device": device,
                    "reason": reason[:300],
                    "size": len(m.payload),
                    "payload": bytes(m.payload[:DEAD_PAYLOAD]),
                }
            ],
        )
        jlog(
            "dead_letter",
            logging.WARNING,
            topic=m.topic,
            device=device,
            reason=reason,
            size=len(m.payload),
        )

    def _one(
        self, conn, dev: _Dev, kind: str, m: Message, now: int, out: Outcome, batches
    ) -> str | None:
        if kind == P.READINGS:
            batch, err = P.decode_batch(m.payload)
            if err:
                return f"malformed batch: {err}"
            batches.append((dev, batch))
            return None
        if kind == P.STATE:
            s, err = P.decode_state(m.payload)
            return f"malformed state: {err}" if err else self._state(conn, dev, s, m.retain, now)
        if kind == P.EVENTS:
            e, err = P.decode_event(m.payload)
            return f"malformed event: {err}" if err else self._event(conn, dev, e, now)
        if kind == P.ACKS:
            a, err = P.decode_ack(m.payload)
            if err:
                return f"malformed ack: {err}"
            if a["id"] is None:
                jlog("ack_untrusted", device=dev.name, code=a["code"], detail=a["detail"])
                return None
            if not commands.apply_ack(conn, dev.id, a["id"], a["code"], a["detail"], now):
                return f"ack for unknown command: {a['id']!r}"
            self._touch(conn, dev, now)
            return None
        if kind == P.LOSS:
            loss, err = P.decode_loss(m.payload)
            if err:
                return f"malformed loss: {err}"
            conn.execute(
                sa.insert(LOSSES),
                [
                    {
                        "device_id": dev.id,
                        "first": loss["first"],
                        "last": loss["last"],
                        "reason": loss["reason"],
                        "source": "device",
                        "boot": loss["boot"],
                        "reported_ms": now,
                    }
                ],
            )
            conn.execute(
                sa.update(DEVICES)
                .where(DEVICES.c.id == dev.id)
                .values(dirty=True, last_seen_ms=now)
            )
            jlog(
                "loss_reported",
                device=dev.name,
                first=loss["first"],
                last=loss["last"],
                reason=loss["reason"],
            )
            return None
        if kind == P.PULL:
            _, err = P.decode_pull(m.payload)
            if err:
                return f"malformed pull: {err}"
            self._touch(conn, dev, now)
            out.outgoing.extend(commands.pending_for(conn, dev.id, now))
            return None
        if kind == P.CMD:
            if self.secret is None:
                return None
            cmd, err = P.verify_envelope(keys.device_key(self.secret, dev.name), m.payload)
            if err:
                return f"bad signature: {err}"
            if cmd["dev"] != dev.name:
                return "bad signature: envelope is for another device"
            return None
        return f"wrong topic: {kind} is not an uplink"

    def _touch(self, conn: Connection, dev: _Dev, now: int) -> None:
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(last_seen_ms=now))

    # --- state, events, anchors --------------------------------------------------------------

    def _state(self, conn: Connection, dev: _Dev, s: dict, retained: bool, now: int) -> None:
        cur = conn.execute(
            sa.select(DEVICES.c.boot, DEVICES.c.online, DEVICES.c.invalid_boot).where(
                DEVICES.c.id == dev.id
            )
        ).first()
        if not s["online"]:
            # a last will (or an offline state): only the boot that went away goes offline
            if cur.boot is None or cur.boot == s["boot"]:
                values: dict = {"online": False}
                if cur.online and not retained:
                    values["link_drops"] = DEVICES.c.link_drops + 1
                conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(**values))
                jlog("device_offline", device=dev.name, boot=s["boot"])
            return None
        values = {
            "online": bool(s["online"]),
            "boot": s["boot"],
            "fw": s["fw"],
            "wf": s["wf"],
            "wf_ver": s["wf_ver"],
            "wf_hash": s["wf_hash"],
            "backlog": s["backlog"],
            "last_seq": s["last_seq"],
            "synced": s["synced"],
            "dirty": True,
        }
        if not retained:
            values["last_seen_ms"] = now
        elif cur.boot is not None and cur.boot != s["boot"] and cur.online:
            # a retained state of an older boot must not overwrite a newer live one
            return None
        new_boot = cur.boot is not None and cur.boot != s["boot"]
        if new_boot and not retained:
            values["reboots"] = DEVICES.c.reboots + 1
        invalid = (s.get("extra") or {}).get("invalid")
        if type(invalid) is int and invalid >= 0:
            # the board counts invalid samples per boot; the registry keeps a running total
            before = 0 if new_boot or cur.invalid_boot is None else cur.invalid_boot
            values["invalid"] = DEVICES.c.invalid + max(0, invalid - before)
            values["invalid_boot"] = invalid
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(**values))
        self._session(conn, dev, s["boot"], now, s["anchor"])
        if cur.online is not True and s["online"] and not retained:
            jlog("device_online", device=dev.name, boot=s["boot"], fw=s["fw"], backlog=s["backlog"])
        return None

    def _anchor(self, conn: Connection, device_id: int, boot: int) -> tuple[int, int] | None:
        key = (device_id, boot)
        if key not in self._anchors:
            row = conn.execute(
                sa.select(SESSIONS.c.anchor_up_ms, SESSIONS.c.anchor_unix_ms).where(
                    SESSIONS.c.device_id == device_id, SESSIONS.c.boot == boot
                )
            ).first()
            self._anchors[key] = (row[0], row[1]) if row and row[0] is not None else None
        return self._anchors[key]

    def _session_stmt(self):
        if self._upsert_session is None:
            if self.pg:
                from sqlalchemy.dialects.postgresql import insert

                lo, hi = sa.func.least, sa.func.greatest
            else:
                from sqlalchemy.dialects.sqlite import insert

                lo, hi = sa.func.min, sa.func.max
            stmt = insert(SESSIONS)
            ex, t = stmt.excluded, SESSIONS.c
            self._upsert_session = stmt.on_conflict_do_update(
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
        return self._upsert_session

    def _sessions(self, conn: Connection, rows: list[dict]) -> None:
        """Create or update (device, boot) sessions: seen times, seq span, and the time anchor,
        which is learned once and never changed."""
        conn.execute(self._session_stmt(), rows)

    def _session(self, conn, dev: _Dev, boot: int, now: int, anchor, first=None, last=None) -> None:
        """Create or update one session; learn its time anchor if it is new."""
        a = None
        if anchor is not None and self._anchor(conn, dev.id, boot) is None:
            a = (anchor[0] * 1000 + anchor[1], anchor[2] * 1000 + anchor[3])
        self._sessions(conn, [_session_row(dev.id, boot, now, first, last, a)])
        if a:
            self._anchors[(dev.id, boot)] = a
            # readings and events of this boot stored before the anchor get their event time now
            for table in (READINGS, EVENTS):
                n = conn.execute(
                    sa.update(table)
                    .where(
                        table.c.device_id == dev.id,
                        table.c.boot == boot,
                        table.c.event_ms.is_(None),
                    )
                    .values(event_ms=table.c.up_ms + (a[1] - a[0]))
                ).rowcount
                if n:
                    jlog(
                        "event_time_backfilled",
                        device=dev.name,
                        boot=boot,
                        table=table.name,
                        rows=n,
                    )

    def _event(self, conn: Connection, dev: _Dev, e: dict, now: int) -> None:
        up = e["up_s"] * 1000 + e["up_ms"]
        a = self._anchor(conn, dev.id, e["boot"])
        n = conn.execute(
            insert_ignore(conn, EVENTS),
            [
                {
                    "device_id": dev.id,
                    "boot": e["boot"],
                    "seq": e["seq"],
                    "up_ms": up,
                    "event_ms": up + (a[1] - a[0]) if a else None,
                    "state": e["state"],
                    "event": e["event"],
                    "value": e["value"],
                    "received_ms": now,
                }
            ],
        ).rowcount
        values: dict = {"last_seen_ms": now}
        if n and ("alarm" in e["event"] or "fault" in e["event"]):
            values["alarms"] = DEVICES.c.alarms + 1
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(**values))

    # --- readings ----------------------------------------------------------------------------

    def _store_batches(self, conn: Connection, batches, now: int, out: Outcome) -> None:
        per_batch_rows = []
        for dev, b in batches:
            if b.anchor is not None and self._anchor(conn, dev.id, b.boot_id) is None:
                self._session(conn, dev, b.boot_id, now, b.anchor)
        for dev, b in batches:
            a = self._anchor(conn, dev.id, b.boot_id)
            off = (a[1] - a[0]) if a else None
            hist = b.historical
            did, boot = dev.id, b.boot_id
            if off is None:
                rows = [
                    (did, boot, seq, ch, val, up_s * 1000 + up_ms, None, hist, now)
                    for seq, up_s, up_ms, val, ch in b.records
                ]
            else:
                rows = [
                    (did, boot, seq, ch, val, u, u + off, hist, now)
                    for seq, up_s, up_ms, val, ch in b.records
                    for u in (up_s * 1000 + up_ms,)
                ]
            per_batch_rows.append(rows)
        inserted = self._insert_readings(conn, per_batch_rows)
        dev_stats: dict[int, list[int]] = {}
        sessions: dict[tuple[int, int], list] = {}
        ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        alerts = []
        for (dev, b), rows, n in zip(batches, per_batch_rows, inserted, strict=True):
            st = dev_stats.setdefault(dev.id, [0, 0, 0])
            st[0] += n
            st[1] += len(rows) - n
            if b.historical:
                st[2] += n
            last = b.first_seq + b.count - 1
            ranges[dev.id].append((b.first_seq, last))
            s = sessions.get((dev.id, b.boot_id))
            if s is None:
                sessions[(dev.id, b.boot_id)] = [dev, b.first_seq, last]
            else:
                s[1] = min(s[1], b.first_seq)
                s[2] = max(s[2], last)
            if n and self.alert_rules and not b.historical:
                for rule in self.alert_rules:
                    for r in rows:
                        if rule.trips(r[3], r[4]):
                            alerts.append(
                                {
                                    "device_id": dev.id,
                                    "rule": rule.name,
                                    "boot": r[1],
                                    "seq": r[2],
                                    "value": r[4],
                                    "event_ms": r[6],
                                    "created_ms": now,
                                }
                            )
                            jlog("alert", device=dev.name, rule=rule.name, seq=r[2], value=r[4])
                            break
        self._sessions(
            conn,
            [
                _session_row(dev.id, boot, now, first, last, None)
                for (_, boot), (dev, first, last) in sessions.items()
            ],
        )
        conn.execute(
            sa.insert(RANGES),
            [
                {"device_id": d, "first": a, "last": b}
                for d, rs in ranges.items()
                for a, b in merge(rs)
            ],
        )
        conn.execute(
            self._count_stmt,
            [
                {"did": did, "n": n, "dup": dup, "hist": hist, "now": now}
                for did, (n, dup, hist) in dev_stats.items()
            ],
        )
        for n, dup, _ in dev_stats.values():
            out.inserted += n
            out.duplicates += dup
        if alerts:
            conn.execute(sa.insert(ALERTS), alerts)
            per: dict[int, int] = defaultdict(int)
            for a in alerts:
                per[a["device_id"]] += 1
            for did, k in per.items():
                conn.execute(
                    sa.update(DEVICES)
                    .where(DEVICES.c.id == did)
                    .values(alarms=DEVICES.c.alarms + k)
                )

    def _insert_readings(self, conn: Connection, per_batch_rows: list[list[tuple]]) -> list[int]:
        """Insert every batch's rows, dropping repeats; return how many each batch added."""
        if not self.pg:
            # SQLAlchemy Core's driver-level executemany: one prepared INSERT ... ON CONFLICT DO
            # NOTHING per batch, whose rowcount is what the batch added
            sql = self._insert_sql
            return [conn.exec_driver_sql(sql, rows).rowcount for rows in per_batch_rows]
        # PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS readings_in (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cur.copy("COPY readings_in ({}) FROM STDIN".format(",".join(READING_COLS))) as cp:
                for rows in per_batch_rows:
                    for r in rows:
                        cp.write_row(r)
            cur.execute(
                "INSERT INTO readings ({0}) SELECT DISTINCT ON (device_id, boot, seq) {0} FROM readings_in "
                "ON CONFLICT DO NOTHING RETURNING device_id, boot, seq".format(
                    ",".join(READING_COLS)
                )
            )
            new = {tuple(r) for r in cur.fetchall()}
            cur.execute("TRUNCATE readings_in")
        counts = []
        for rows in per_batch_rows:
            n = 0
            for r in rows:
                k = (r[0], r[1], r[2])
                if k in new:
                    new.discard(k)
                    n += 1
            counts.append(n)
        return counts

    # --- reconciliation ----------------------------------------------------------------------

    def reconcile(
        self, now: int | None = None, budget_s: float | None = None
    ) -> list[commands.Outgoing]:
        """Merge ranges, update gaps and losses, queue resends; return commands to publish.

        With ``budget_s`` a pass stops after that much time and the next pass goes on from
        the next device, so reconciling a large fleet never stalls the ingest for long.
        """
        now = self.clock() if now is None else now
        outgoing: list[commands.Outgoing] = []
        with self.engine.begin() as conn:
            commands.expire(conn, now)
            due = conn.execute(
                sa.select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.fleet)
                .where(
                    sa.or_(
                        DEVICES.c.dirty.is_(True),
                        DEVICES.c.id.in_(sa.select(GAPS.c.device_id).distinct()),
                    )
                )
                .order_by(DEVICES.c.id)
            ).all()
        # start after the device the last pass ended on
        k = next((i for i, r in enumerate(due) if r.id > self._cursor), 0)
        due = due[k:] + due[:k]
        t0 = time.monotonic()
        for row in due:
            with self.engine.begin() as conn:
                outgoing.extend(
                    self._reconcile_device(conn, _Dev(row.id, row.name, row.fleet), now)
                )
            self._cursor = row.id
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                break
        return outgoing

    def _reconcile_device(self, conn: Connection, dev: _Dev, now: int) -> list[commands.Outgoing]:
        if self.pg:
            # one reconciler per device at a time, whatever the number of companions
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(7316002, :d)"), {"d": dev.id}
            ).scalar()
            if not got:
                return []
        d = conn.execute(
            sa.select(DEVICES.c.last_seq, DEVICES.c.backlog, DEVICES.c.dirty).where(
                DEVICES.c.id == dev.id
            )
        ).first()
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(dirty=False))
        rows = conn.execute(
            sa.select(RANGES.c.id, RANGES.c.first, RANGES.c.last).where(
                RANGES.c.device_id == dev.id
            )
        ).all()
        received = merge((r.first, r.last) for r in rows)
        if len(received) != len(rows):
            conn.execute(sa.delete(RANGES).where(RANGES.c.id.in_([r.id for r in rows])))
            conn.execute(
                sa.insert(RANGES),
                [{"device_id": dev.id, "first": a, "last": b} for a, b in received],
            )
        # the board counts everything up to its ack cursor (last_seq - backlog) as delivered
        frontier = received[-1][1] if received else 0
        if d.last_seq is not None and d.backlog is not None:
            frontier = max(frontier, d.last_seq - d.backlog)
        holes = subtract([(1, frontier)], received) if frontier else []

        # permanent loss: what the board reported dropped, minus anything that arrived after all
        lrows = conn.execute(
            sa.select(
                LOSSES.c.id,
                LOSSES.c.first,
                LOSSES.c.last,
                LOSSES.c.reason,
                LOSSES.c.source,
                LOSSES.c.boot,
                LOSSES.c.reported_ms,
            ).where(LOSSES.c.device_id == dev.id)
        ).all()
        kept = []
        for r in lrows:
            for a, b in subtract([(r.first, r.last)], received):
                kept.append((a, b, r.reason, r.source, r.boot, r.reported_ms))
        if kept != [(r.first, r.last, r.reason, r.source, r.boot, r.reported_ms) for r in lrows]:
            conn.execute(sa.delete(LOSSES).where(LOSSES.c.device_id == dev.id))
            if kept:
                conn.execute(
                    sa.insert(LOSSES),
                    [
                        {
                            "device_id": dev.id,
                            "first": a,
                            "last": b,
                            "reason": why,
                            "source": src,
                            "boot": boot,
                            "reported_ms": t,
                        }
                        for a, b, why, src, boot, t in kept
                    ],
                )
        lost = merge((k[0], k[1]) for k in kept)
        want = subtract(holes, lost)

        grows = conn.execute(
            sa.select(GAPS).where(GAPS.c.device_id == dev.id).order_by(GAPS.c.first)
        ).all()
        old = {(g.first, g.last): g for g in grows}
        cmd_status = {}
        ids = [g.command_id for g in grows if g.command_id]
        if ids:
            cmd_status = {
                r.id: r
                for r in conn.execute(
                    sa.select(
                        commands.COMMANDS.c.id,
                        commands.COMMANDS.c.status,
                        commands.COMMANDS.c.acked_ms,
                    ).where(commands.COMMANDS.c.id.in_(ids))
                )
            }
        new_gaps = []
        new_losses = []
        outgoing = []
        for a, b in want:
            g = old.get((a, b))
            if g is None:
                # a hole that shrank keeps the request of the gap it came from
                g = next((x for x in grows if x.first <= a and b <= x.last), None)
            gap = {
                "device_id": dev.id,
                "first": a,
                "last": b,
                "status": g.status if g else "pending",
                "reason": g.reason if g else "missing: waiting for the reorder window",
                "detected_ms": g.detected_ms if g else now,
                "updated_ms": g.updated_ms if g else now,
                "command_id": g.command_id if g else None,
                "attempts": g.attempts if g else 0,
            }
            cmd = cmd_status.get(gap["command_id"]) if gap["command_id"] else None
            if gap["status"] == "requested" and cmd is not None:
                if (
                    cmd.status == "done"
                    and cmd.acked_ms is not None
                    and now - cmd.acked_ms >= self.reorder_window_ms
                ):
                    # the board resent everything it holds and this is still missing
                    new_losses.append((a, b))
                    continue
                if cmd.status in ("failed", "expired", "canceled"):
                    gap["status"] = "pending"
                    gap["reason"] = f"resend {cmd.status}; will ask again"
            if gap["status"] == "pending" and now - gap["detected_ms"] >= self.reorder_window_ms:
                if self.secret is None:
                    gap["reason"] = "missing: no fleet secret to sign a resend"
                else:
                    attempt = gap["attempts"] + 1
                    cmd_id = f"resend:{dev.id}:{a}-{b}:{attempt}"
                    o = commands.queue(
                        conn,
                        self.secret,
                        device_id=dev.id,
                        device=dev.name,
                        fleet=dev.fleet,
                        cmd_id=cmd_id,
                        kind="resend",
                        args={"first": a, "last": b},
                        source="reconcile",
                        now_ms=now,
                        ttl_s=self.resend_ttl_s,
                    )
                    if o:
                        outgoing.append(o)
                    gap.update(
                        status="requested",
                        command_id=cmd_id,
                        attempts=attempt,
                        updated_ms=now,
                        reason=f"missing: resend {a}..{b} requested",
                    )
                    jlog("resend_requested", device=dev.name, first=a, last=b, attempt=attempt)
            new_gaps.append(gap)
        current = [(g.first, g.last, g.status, g.command_id, g.reason) for g in grows]
        if current != [
            (g["first"], g["last"], g["status"], g["command_id"], g["reason"]) for g in new_gaps
        ]:
            conn.execute(sa.delete(GAPS).where(GAPS.c.device_id == dev.id))
            if new_gaps:
                conn.execute(sa.insert(GAPS), new_gaps)
        if new_losses:
            conn.execute(
                sa.insert(LOSSES),
                [
                    {
                        "device_id": dev.id,
                        "first": a,
                        "last": b,
                        "reason": "not_held",
                        "source": "cloud",
                        "boot": None,
                        "reported_ms": now,
                    }
                    for a, b in new_losses
                ],
            )
            for a, b in new_losses:
                jlog("loss_not_held", device=dev.name, first=a, last=b)
        return outgoing

    # --- dispatch ----------------------------------------------------------------------------

    def queued_commands(self, now: int | None = None) -> list[commands.Outgoing]:
        """Queued commands to publish (resends, and later rollouts)."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            return commands.queued(conn, now)

    def mark_sent(self, ids: list[str], now: int | None = None) -> None:
        """Record that these commands were accepted by the broker."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            commands.mark_sent(conn, ids, now)
