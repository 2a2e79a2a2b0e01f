"""Message handling: board messages in, exactly one correctly timed row per reading out.

``Ingest.handle`` takes a group of MQTT messages and stores them in ONE transaction; the service
acks the messages to the broker only after that commit, so a crash at any point redelivers them
and the (device, boot, seq) key drops the repeats. ``Ingest.reconcile`` runs periodically: it
reconciles the devices with news, a bounded pass at a time (``ingest.reconcile`` says how).

Nothing a board sends can crash it: every message is stored, or dead-lettered with a reason.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud.orrery.clock import now_ms
from cloud.orrery.db.tables import (
    ALERTS,
    DEAD_LETTERS,
    DEVICES,
    EVENTS,
    LOSSES,
    RANGES,
    READING_COLS,
    insert_ignore,
)
from cloud.orrery.fleet import commands, keys
from cloud.orrery.ingest import reconcile
from cloud.orrery.ingest.alerts import AlertRule
from cloud.orrery.ingest.anchors import Sessions, session_row
from cloud.orrery.ingest.ranges import merge
from cloud.orrery.ingest.skew import ClockOffsets
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

MAX_JSON = 16384
DEAD_PAYLOAD = 4096


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
    ``resend_ttl_s``: a resend command's lifetime; ``retry``: when a command without an ack is
    published again (``fleet.commands.RetryPolicy``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        secret: bytes | None = None,
        auto_register: bool = False,
        alert_rules: Sequence[AlertRule] = (),
        reorder_window_ms: int = 10_000,
        resend_ttl_s: int = 3600,
        retry: commands.RetryPolicy = commands.DEFAULT_RETRY,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.secret = secret
        self.auto_register = auto_register
        self.alert_rules = tuple(alert_rules)
        self.reorder_window_ms = reorder_window_ms
        self.resend_ttl_s = resend_ttl_s
        self.retry = retry
        self.offsets = ClockOffsets()  # each boot's clock offset (ingest/skew.py)
        self.pg = engine.dialect.name == "postgresql"
        self._devices: dict[str, _Dev] = {}
        self.sessions = Sessions(self.pg)
        self.counters: dict[str, int] = defaultdict(int)
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
                self.sessions.clear()
                self.offsets.clear()
                raise
        self.counters["inserted"] += out.inserted
        self.counters["duplicates"] += out.duplicates
        self.counters["dead"] += out.dead
        return out

    def _handle(
        self, conn: Connection, messages: Sequence[Message], now: int, out: Outcome
    ) -> None:
        batches: list[tuple[_Dev, codec.Batch]] = []
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
        parsed, err = codec.parse_topic(m.topic)
        if err:
            return f"wrong topic: {err}", None, ""
        fleet, name, kind = parsed
        if kind == codec.CMD:
            dev = self._device(conn, name, fleet, now, register=False)
            return (None if dev else "unknown device"), dev, kind
        limit = codec.MAX_BATCH_BYTES if kind == codec.READINGS else MAX_JSON
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
        if kind == codec.READINGS:
            batch, err = codec.decode_batch(m.payload)
            if err:
                return f"malformed batch: {err}"
            batches.append((dev, batch))
            return None
        if kind == codec.STATE:
            s, err = codec.decode_state(m.payload)
            return f"malformed state: {err}" if err else self._state(conn, dev, s, m.retain, now)
        if kind == codec.EVENTS:
            e, err = codec.decode_event(m.payload)
            return f"malformed event: {err}" if err else self._event(conn, dev, e, now)
        if kind == codec.ACKS:
            a, err = codec.decode_ack(m.payload)
            if err:
                return f"malformed ack: {err}"
            if a["id"] is None:
                jlog("ack_untrusted", device=dev.name, code=a["code"], detail=a["detail"])
                return None
            if not commands.apply_ack(conn, dev.id, a["id"], a["code"], a["detail"], now):
                return f"ack for unknown command: {a['id']!r}"
            self._touch(conn, dev, now)
            return None
        if kind == codec.LOSS:
            loss, err = codec.decode_loss(m.payload)
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
        if kind == codec.PULL:
            _, err = codec.decode_pull(m.payload)
            if err:
                return f"malformed pull: {err}"
            self._touch(conn, dev, now)
            out.outgoing.extend(commands.pending_for(conn, dev.id, now))
            return None
        if kind == codec.CMD:
            if self.secret is None:
                return None
            cmd, err = codec.verify_envelope(keys.device_key(self.secret, dev.name), m.payload)
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
        self.sessions.learn(conn, dev.id, dev.name, s["boot"], now, s["anchor"])
        if cur.online is not True and s["online"] and not retained:
            jlog("device_online", device=dev.name, boot=s["boot"], fw=s["fw"], backlog=s["backlog"])
        return None

    def _event(self, conn: Connection, dev: _Dev, e: dict, now: int) -> None:
        up = e["up_s"] * 1000 + e["up_ms"]
        a = self.sessions.anchor(conn, dev.id, e["boot"])
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
            if b.anchor is not None and self.sessions.anchor(conn, dev.id, b.boot_id) is None:
                self.sessions.learn(conn, dev.id, dev.name, b.boot_id, now, b.anchor)
        for dev, b in batches:
            a = self.sessions.anchor(conn, dev.id, b.boot_id)
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
        self.sessions.upsert(
            conn,
            [
                session_row(dev.id, boot, now, first, last, None)
                for (_, boot), (dev, first, last) in sessions.items()
            ],
        )
        for (dev, b), rows in zip(batches, per_batch_rows, strict=True):
            if not b.historical and rows[-1][6] is not None:  # live, with wall time
                self.offsets.observe(conn, dev.id, dev.name, b.boot_id, rows[-1][6] - now)
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
            due = reconcile.due_devices(conn)
        # start after the device the last pass ended on
        k = next((i for i, r in enumerate(due) if r.id > self._cursor), 0)
        due = due[k:] + due[:k]
        t0 = time.monotonic()
        for row in due:
            with self.engine.begin() as conn:
                outgoing.extend(
                    reconcile.reconcile_device(
                        conn,
                        row,
                        now,
                        secret=self.secret,
                        reorder_window_ms=self.reorder_window_ms,
                        resend_ttl_s=self.resend_ttl_s,
                        retry=self.retry,
                        pg=self.pg,
                    )
                )
            self._cursor = row.id
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                break
        return outgoing

    # --- dispatch ----------------------------------------------------------------------------

    def queued_commands(self, now: int | None = None) -> list[commands.Outgoing]:
        """Commands to publish now: the ones a board refused by its clock, signed again for a
        new estimate of it; queued ones (resends, rollouts); and sent ones whose ack is overdue
        (``retry``), published again as they are."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            out = commands.resign(conn, self.secret, now)
            seen = {o.command_id for o in out}
            out += [o for o in commands.queued(conn, now) if o.command_id not in seen]
            overdue = commands.overdue(conn, now)
        if overdue:
            jlog("commands_overdue", count=len(overdue), ids=[o.command_id for o in overdue[:10]])
        return out + overdue

    def open_commands(self, now: int | None = None) -> list[commands.Outgoing]:
        """Every queued or sent, unexpired command of every device: what the service publishes
        again after it subscribed again, for the boards whose pull found no subscriber."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            return commands.pending_for(conn, None, now)

    def mark_sent(self, ids: list[str], now: int | None = None) -> None:
        """Record that these commands were accepted by the broker."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            commands.mark_sent(conn, ids, now, self.retry)
