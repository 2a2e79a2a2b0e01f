"""Message handling: board messages in, exactly one correctly timed row per reading out.

``Ingest.handle`` takes a group of MQTT messages and stores them in ONE transaction; the service
acks the messages to the broker only after that commit, so a crash at any point redelivers them
and the (device, boot, seq) key drops the repeats. ``Ingest.store`` is what the service calls: it
never stops on a message that the database refuses (it isolates and dead-letters it).
``Ingest.reconcile`` runs periodically: it reconciles the devices with news, a bounded pass at a
time (``ingest.reconcile`` says how).

Nothing a board sends can crash it: every message is stored, or dead-lettered with a reason.
Stored data is never silently wrong: a reading whose content differs from the one stored under
its (device, boot, seq) is a conflict (the first stays; the other is kept in
``reading_conflicts`` and counted), and one whose event time cannot be true is stored without
it (``anchors``).
"""

from __future__ import annotations

import contextlib
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
    CONFLICTS,
    DEAD_LETTERS,
    DEVICE_LOGS,
    DEVICES,
    EVENTS,
    LOSSES,
    READING_COLS,
    TIME_FAULTS,
    WORKFLOWS,
    insert_ignore,
    insert_new,
)
from cloud.orrery.fleet import commands, keys, logs
from cloud.orrery.ingest import reconcile
from cloud.orrery.ingest.alerts import AlertRule, is_alarm
from cloud.orrery.ingest.anchors import Sessions, fault_row, pg_array, plausible
from cloud.orrery.ingest.ranges import merge
from cloud.orrery.ingest.skew import ClockOffsets
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

MAX_JSON = 16384
DEAD_PAYLOAD = MAX_JSON  # a dead letter keeps every message within the size limits whole
RECONCILE_STEP = 100  # devices reconciled in one transaction (the budget is checked after each)


@dataclass
class Message:
    """One MQTT message as the ingest sees it. ``batch``: a readings payload already decoded
    (``codec.decode_batch(payload)``'s result), or None to decode it when handled."""

    topic: str
    payload: bytes
    retain: bool = False
    batch: tuple | None = None


@dataclass
class Outcome:
    """What one ``handle`` call did."""

    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    bad_time: int = 0
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
    requested). ``clock`` gives unix ms (virtual in simulations). ``auto_register`` admits
    unknown devices on their first message instead of dead-lettering them.
    ``reorder_window_ms``: how long a hole may stay open before it is a gap. ``resend_ttl_s``: a
    resend command's lifetime; ``retry``: when a command without an ack is published again
    (``fleet.commands.RetryPolicy``). ``max_gap``: the most readings one gap or loss report
    may span; a larger one is a protocol anomaly, never requested nor recorded as a loss
    (``reconcile.MAX_GAP``).
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
        max_gap: int = reconcile.MAX_GAP,
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
        self.max_gap = max_gap
        self.pg = engine.dialect.name == "postgresql"
        self._devices: dict[str, _Dev] = {}
        self._state_names: dict[tuple[str, int], tuple[str, ...]] = {}  # per workflow version
        self.sessions = Sessions(self.pg)
        self.counters: dict[str, int] = defaultdict(int)
        self._cursor = 0  # the device the last reconcile pass ended on
        # called in each ``handle`` just before its commit (the service decodes what comes
        # next while the database commits: the commit holds no interpreter lock)
        self.before_commit: Callable[[], None] | None = None
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
                if self.before_commit is not None:
                    self.before_commit()
            except Exception as exc:
                # the transaction rolls back, so the caches may be ahead of the database
                self._devices.clear()
                self.sessions.clear()
                self.offsets.clear()
                with contextlib.suppress(Exception):  # the staging table rolled back with it
                    conn.connection.info.pop("readings_in", None)
                dbapi = self.engine.dialect.loaded_dbapi
                if isinstance(exc, dbapi.Error):  # a raw cursor's: as SQLAlchemy raises them
                    raise sa.exc.DBAPIError.instance(None, None, exc, dbapi.Error) from exc
                raise
        self.counters["inserted"] += out.inserted
        self.counters["duplicates"] += out.duplicates
        self.counters["conflicts"] += out.conflicts
        self.counters["bad_time"] += out.bad_time
        self.counters["dead"] += out.dead
        return out

    def store(
        self, messages: Sequence[Message], committed: Callable[[list[int], Outcome], None]
    ) -> None:
        """Store ``messages`` as ``handle`` does, and never stop on one of them.

        A group that fails with an error its content causes (``caused_by_data``) is split in
        halves, each stored on its own, down to the message(s) causing it; each of those is
        dead-lettered with the error as its reason. ``committed(indexes, outcome)`` is called
        after each commit with the indexes (into ``messages``) it made durable: the service
        acks those. Any other error (the database unreachable, locked, ...) is raised: the
        messages not passed to ``committed`` yet are then still to be stored.
        """
        todo = [list(range(len(messages)))]
        while todo:
            part = todo.pop()
            try:
                out = self.handle([messages[i] for i in part])
            except Exception as exc:
                if not self.caused_by_data(exc):
                    raise
                if len(part) == 1:
                    out = self._refuse(messages[part[0]], exc)
                else:
                    jlog("store_isolating", logging.WARNING, messages=len(part), error=_why(exc))
                    todo += [part[len(part) // 2 :], part[: len(part) // 2]]
                    continue
            committed(part, out)

    def caused_by_data(self, exc: BaseException) -> bool:
        """True when ``exc`` comes from what was being stored (a value the database refuses,
        text it cannot encode, a message the code cannot handle), not from the database being
        unreachable or busy: retrying the same messages would fail the same way."""
        if isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError):
            exc = exc.orig  # raised while preparing the statement's parameters
        if isinstance(exc, sa.exc.DBAPIError):
            return isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError))
        dbapi = self.engine.dialect.loaded_dbapi  # errors of a raw cursor (COPY) come unwrapped
        if isinstance(exc, dbapi.Error):
            return isinstance(exc, (dbapi.DataError, dbapi.IntegrityError))
        return isinstance(exc, (ValueError, TypeError, LookupError, ArithmeticError))

    def _refuse(self, m: Message, exc: BaseException) -> Outcome:
        # the one message that fails its group: dead-lettered on its own, with the error
        out = Outcome()
        reason = "store failed: " + _why(exc)
        parsed, _ = codec.parse_topic(m.topic)
        try:
            with self.engine.begin() as conn:
                self._dead(conn, m, parsed[1] if parsed else None, reason, self.clock(), out)
        except Exception as again:
            if not self.caused_by_data(again):
                raise
            # not even its dead letter can be stored: the log keeps it whole, and ingest goes on
            jlog(
                "message_dropped",
                logging.ERROR,
                topic=_text(str(m.topic)),
                reason=reason,
                error=_why(again),
                payload=bytes(m.payload).hex(),
            )
        self.counters["dead"] += out.dead
        return out

    def _handle(
        self, conn: Connection, messages: Sequence[Message], now: int, out: Outcome
    ) -> None:
        batches: list[tuple[_Dev, codec.Batch]] = []
        self._acks: list[tuple[Message, _Dev, dict]] = []  # applied together (_flush_acks)
        self._prefetch(conn, messages)
        for m in messages:
            reason, dev, kind = self._route(conn, m, now)
            if reason:
                self._flush_acks(conn, now, out)  # dead letters in the order of the messages
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
                self._flush_acks(conn, now, out)
                self._dead(conn, m, dev.name, reason, now, out)
        self._flush_acks(conn, now, out)
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
        limit = codec.MAX_BATCH_BYTES if kind in (codec.READINGS, codec.LOG) else MAX_JSON
        if len(m.payload) > limit:
            return f"oversize: {len(m.payload)} bytes > {limit}", None, kind
        dev = self._device(conn, name, fleet, now, register=self.auto_register)
        if dev is None:
            return "unknown device", None, kind
        if dev.fleet != fleet:
            return f"fleet mismatch: device is in fleet {dev.fleet!r}", dev, kind
        return None, dev, kind

    def _prefetch(self, conn: Connection, messages: Sequence[Message]) -> None:
        # the group's devices not cached yet, in one SELECT (not one per device in _device)
        names = set()
        for m in messages:
            parsed, _ = codec.parse_topic(m.topic)  # ids only: no text a database refuses
            if parsed is not None and parsed[1] not in self._devices:
                names.add(parsed[1])
        if not names:
            return
        todo = list(names)
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:  # on the driver's cursor: a wave's new devices are hundreds of names a group
            for i in range(0, len(todo), commands.CHUNK):
                chunk = todo[i : i + commands.CHUNK]
                if self.pg:
                    cur.execute(
                        "SELECT id, name, fleet FROM devices WHERE name = ANY(%s)", (chunk,)
                    )
                else:
                    cur.execute("SELECT id, name, fleet FROM devices WHERE name IN ({})".format(
                        ",".join("?" * len(chunk))), chunk)  # fmt: skip
                for did, name, fleet in cur.fetchall():
                    self._devices[name] = _Dev(did, name, fleet)
        finally:
            cur.close()

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
                    "topic": _text(m.topic if isinstance(m.topic, str) else repr(m.topic))[:512],
                    "device": device,
                    "reason": _text(reason)[:300],
                    "size": len(m.payload),
                    "payload": bytes(m.payload[:DEAD_PAYLOAD]),
                }
            ],
        )
        jlog(
            "dead_letter",
            logging.WARNING,
            topic=_text(str(m.topic)),
            device=device,
            reason=reason,
            size=len(m.payload),
        )

    def _one(
        self, conn, dev: _Dev, kind: str, m: Message, now: int, out: Outcome, batches
    ) -> str | None:
        if kind != codec.ACKS and kind != codec.CMD:
            # what this message does sees every earlier ack (a command's audit reads nothing
            # an ack changes: acks and the commands they answer, interleaved, stay one group)
            self._flush_acks(conn, now, out)
        if kind == codec.READINGS:
            batch, err = m.batch or codec.decode_batch(m.payload)
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
        if kind == codec.LOG:
            lg, err = codec.decode_log(m.payload)
            return f"malformed log: {err}" if err else self._log(conn, dev, lg, now)
        if kind == codec.ACKS:
            a, err = codec.decode_ack(m.payload)
            if err:
                return f"malformed ack: {err}"
            if a["id"] is None:
                jlog("ack_untrusted", device=dev.name, code=a["code"], detail=a["detail"])
                return None
            self._acks.append((m, dev, a))
            return None
        if kind == codec.LOSS:
            loss, err = codec.decode_loss(m.payload)
            if err:
                return f"malformed loss: {err}"
            n = loss["last"] - loss["first"] + 1
            if n > self.max_gap:
                return (
                    f"anomaly: a loss report of {n} readings ({loss['first']}..{loss['last']}),"
                    f" more than the maximum gap of {self.max_gap}"
                )
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

    def _flush_acks(self, conn: Connection, now: int, out: Outcome) -> None:
        """Apply the acks gathered since the last flush, in order, as many statements at once
        (``commands.apply_acks``): the devices of known commands touched, the others'
        acks dead-lettered."""
        pending, self._acks = self._acks, []
        if not pending:
            return
        known = commands.apply_acks(
            conn, [(dev.id, a["id"], a["code"], a["detail"]) for _, dev, a in pending], now
        )
        seen = []
        for (m, dev, a), ok in zip(pending, known, strict=True):
            if ok:
                seen.append(dev.id)
            else:
                self._dead(conn, m, dev.name, f"ack for unknown command: {a['id']!r}", now, out)
        seen = list(dict.fromkeys(seen))
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for i in range(0, len(seen), commands.CHUNK):
                chunk = seen[i : i + commands.CHUNK]
                if self.pg:
                    cur.execute(_PG_TOUCH, (now, chunk))
                else:
                    cur.execute(_SQLITE_TOUCH.format(",".join("?" * len(chunk))), (now, *chunk))
        finally:
            cur.close()

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
        if s.get("mpy") and len(s["mpy"]) <= 16:  # older boards send none: keep what is known
            values["mpy"] = s["mpy"]
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
        at = up + (a[1] - a[0]) if a else None
        lo, hi = plausible(now)
        if at is not None and not lo <= at <= hi:
            jlog("event_time_refused", device=dev.name, boot=e["boot"], seq=e["seq"], event_ms=at)
            at = None
        new = conn.execute(  # RETURNING: an insert's rowcount is not exact on PostgreSQL
            insert_ignore(conn, EVENTS).returning(EVENTS.c.seq),
            [
                {
                    "device_id": dev.id,
                    "boot": e["boot"],
                    "seq": e["seq"],
                    "up_ms": up,
                    "event_ms": at,
                    "state": e["state"],
                    "event": e["event"],
                    "value": e["value"],
                    "received_ms": now,
                }
            ],
        ).all()
        values: dict = {"last_seen_ms": now}
        if new and is_alarm(e["event"]):
            values["alarms"] = DEVICES.c.alarms + 1
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(**values))

    def _log(self, conn: Connection, dev: _Dev, lg: dict, now: int) -> None:
        # each line once (a redelivery inserts nothing), its event time from the boot's anchor
        a = self.sessions.anchor(conn, dev.id, lg["boot"])
        lo, hi = plausible(now)
        states = self._states(conn, dev.id)
        rows = []
        for seq, up_s, up_ms, code, x, y in lg["lines"]:
            up = up_s * 1000 + up_ms
            at = up + (a[1] - a[0]) if a else None
            rows.append(
                {
                    "device_id": dev.id,
                    "boot": lg["boot"],
                    "seq": seq,
                    "up_ms": up,
                    "event_ms": at if at is not None and lo <= at <= hi else None,
                    "level": logs.level_and_name(code)[0],
                    "code": code,
                    "a": x,
                    "b": y,
                    "text": logs.render(code, x, y, states),
                    "received_ms": now,
                }
            )
        conn.execute(insert_ignore(conn, DEVICE_LOGS), rows)
        self._touch(conn, dev, now)

    def _states(self, conn: Connection, device: int) -> tuple[str, ...] | None:
        # the state names of the workflow the device reported last (None: none, or unknown)
        r = conn.execute(
            sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version, WORKFLOWS.c.blob)
            .join(
                DEVICES,
                sa.and_(DEVICES.c.wf == WORKFLOWS.c.name, DEVICES.c.wf_ver == WORKFLOWS.c.version),
            )
            .where(DEVICES.c.id == device)
        ).first()
        if r is None:
            return None
        key = (r.name, r.version)
        if key not in self._state_names:
            from shared.workflow.program import Program

            self._state_names[key] = tuple(Program(r.blob).state_names)
        return self._state_names[key]

    # --- readings ----------------------------------------------------------------------------

    def _store_batches(self, conn: Connection, batches, now: int, out: Outcome) -> None:
        per_batch_rows = []
        faults: dict[int, list[dict]] = defaultdict(list)  # device id -> time_faults rows
        sessions_, offsets = self.sessions, self.offsets
        keys = {(dev.id, b.boot_id) for dev, b in batches}
        unknown = set(sessions_.unknown(keys)).union(offsets.missing(keys))
        if unknown:  # one query for the sessions this worker has not seen yet
            offsets.prime(sessions_.load(conn, unknown))
        learned = [
            (dev.id, dev.name, b.boot_id, b.anchor)
            for dev, b in batches
            if b.anchor is not None and sessions_.cached(dev.id, b.boot_id) is None
        ]
        if learned:
            sessions_.learn_all(conn, learned, now)
        lo, hi = plausible(now)
        offs = []  # per batch: its boot's offset from uptime to the board's wall time, or None
        for dev, b in batches:
            a = sessions_.cached(dev.id, b.boot_id)
            off = (a[1] - a[0]) if a else None
            offs.append(off)
            hist = b.historical
            did, boot = dev.id, b.boot_id
            if off is None:
                rows = [
                    (did, boot, seq, ch, val, up_s * 1000 + up_ms, None, hist, now)
                    for seq, up_s, up_ms, val, ch in b.records
                ]
            elif lo <= b.up_min * 1000 + off and b.up_max * 1000 + 999 + off <= hi:
                rows = [
                    (did, boot, seq, ch, val, u, u + off, hist, now)
                    for seq, up_s, up_ms, val, ch in b.records
                    for u in (up_s * 1000 + up_ms,)
                ]
            else:  # some event time cannot be true: those readings are stored without one
                rows = _checked_rows(did, b, off, lo, hi, now, faults[did])
            per_batch_rows.append(rows)
        inserted, conflicting = self._insert_readings(conn, per_batch_rows)
        dev_stats: dict[int, list[int]] = {}  # inserted, dropped, historical, conflicts, bad time
        sessions: dict[tuple[int, int], list] = {}
        ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        alerts = []
        for (dev, b), rows, n in zip(batches, per_batch_rows, inserted, strict=True):
            st = dev_stats.setdefault(dev.id, [0, 0, 0, 0, 0])
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
        if conflicting:
            self._conflicts(conn, batches, conflicting, dev_stats)
        for did, rows in faults.items():
            if rows:
                dev_stats[did][4] = insert_new(conn, TIME_FAULTS, rows)
        clock: dict[tuple[int, int], int] = {}  # new clock offset estimates
        for (dev, b), rows, off in zip(batches, per_batch_rows, offs, strict=True):
            if not b.historical and off is not None:  # live, with the board's wall time
                # the board's own time of its newest reading, even one too far off to store
                est = offsets.estimate(dev.id, dev.name, b.boot_id, rows[-1][5] + off - now)
                if est is not None:
                    key = (dev.id, b.boot_id)
                    clock[key] = max(est, clock.get(key, est))
        rows_ = []
        for (did, boot), (_, first, last) in sessions.items():
            a = sessions_.cached(did, boot)
            au, ax = a if a else (None, None)
            rows_.append((did, boot, now, first, last, au, ax, clock.get((did, boot))))
        sessions_.upsert_many(conn, rows_)
        self._ranges_and_counts(
            conn,
            [(d, a, b) for d, rs in ranges.items() for a, b in merge(rs)],
            [
                (n, dropped - conf, conf, bad, hist, now, did)
                for did, (n, dropped, hist, conf, bad) in dev_stats.items()
            ],
        )
        for n, dropped, _, conf, bad in dev_stats.values():
            out.inserted += n
            out.duplicates += dropped - conf
            out.conflicts += conf
            out.bad_time += bad
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

    def _ranges_and_counts(self, conn: Connection, ranges: list[tuple], counts: list[tuple]):
        # the received ranges, and each device's counters: one statement each on PostgreSQL,
        # a prepared executemany each on SQLite
        if not ranges or not counts:
            return
        counts.sort(key=lambda c: c[-1])  # one lock order for every worker
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.pg:
                cur.execute(_PG_RANGES, [pg_array(c) for c in zip(*ranges, strict=True)])
                cols = list(zip(*counts, strict=True))
                cur.execute(_PG_COUNTS, [counts[0][5]] + [pg_array(c) for c in cols[:5] + cols[6:]])
            else:
                cur.executemany(_SQLITE_RANGES, ranges)
                cur.executemany(_SQLITE_COUNTS, counts)
        finally:
            cur.close()

    def _conflicts(self, conn: Connection, batches, conflicting, dev_stats) -> None:
        # keep each different content once (reading_conflicts' key holds it) and count the new
        # ones: an identical redelivery of a conflicting reading is a duplicate, like any other
        names = {dev.id: dev.name for dev, _ in batches}
        per: dict[int, list[dict]] = defaultdict(list)
        for r, _stored in conflicting:
            per[r[0]].append(
                {
                    "device_id": r[0],
                    "boot": r[1],
                    "seq": r[2],
                    "channel": r[3],
                    "value": r[4],
                    "up_ms": r[5],
                    "historical": r[7],
                    "received_ms": r[8],
                }
            )
        for did, rows in per.items():
            new = insert_new(conn, CONFLICTS, rows)
            dev_stats[did][3] = new
            seqs = sorted({(r["boot"], r["seq"]) for r in rows})
            jlog(
                "reading_conflict",
                logging.WARNING,
                device=names[did],
                readings=len(rows),
                new=new,
                first=seqs[0],
                last=seqs[-1],
            )

    def _insert_readings(
        self, conn: Connection, per_batch_rows: list[list[tuple]]
    ) -> tuple[list[int], list[tuple[tuple, tuple]]]:
        """Insert every batch's rows, dropping repeats of a stored (device, boot, seq). Return
        how many rows each batch added, and the conflicts: each dropped row whose content
        (channel, value, up_ms) differs from the stored one, with the stored content.

        Content is compared in bulk, and only for the rows the insert dropped: nothing is
        added to a group of new readings."""
        if not self.pg:
            # the driver's executemany of one prepared INSERT ... ON CONFLICT DO NOTHING per
            # batch, whose rowcount is what the batch added, a device's batches after each
            # other (their index pages are the same; in the group's order, so the first one
            # stays); a batch that dropped some reads back what is stored under its seqs
            sql, counts, conflicts = self._insert_sql, [0] * len(per_batch_rows), []
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            order = sorted(range(len(per_batch_rows)), key=lambda i: per_batch_rows[i][0][:2])
            try:
                for i in order:
                    rows = per_batch_rows[i]
                    cur.executemany(sql, rows)
                    n = counts[i] = cur.rowcount
                    if n < len(rows):
                        first = rows[0]
                        cur.execute(
                            "SELECT seq, channel, value, up_ms FROM readings"
                            " WHERE device_id = ? AND boot = ? AND seq BETWEEN ? AND ?",
                            (first[0], first[1], first[2], rows[-1][2]),
                        )
                        for seq, *content in cur.fetchall():
                            r = rows[seq - first[2]]
                            if r[3:6] != tuple(content):
                                conflicts.append((r, tuple(content)))
            finally:
                cur.close()
            return counts, conflicts
        # PostgreSQL: COPY into a temporary table (created once per connection), then one
        # INSERT ... SELECT ... ON CONFLICT (in key order: the index takes it faster). A
        # reading twice in the group is copied once (the first; a different second is a
        # conflict), so it needs no DISTINCT ON. Batches are compared as seq spans: only one
        # that overlaps an earlier batch of its boot in the group is looked at row by row.
        spans: dict[tuple, list[tuple[int, int, int]]] = {}  # (device, boot) -> (lo, hi, batch)
        repeats: dict[int, int] = defaultdict(int)  # batch -> its readings an earlier one had
        conflicts = []
        copied = []
        for i, rows in enumerate(per_batch_rows):
            lo, hi = rows[0][2], rows[-1][2]
            prev = spans.setdefault(rows[0][:2], [])
            if any(a <= hi and lo <= b for a, b, _ in prev):
                keep = []
                for r in rows:
                    j = _first_batch(prev, r[2])
                    if j is None:
                        keep.append(r)
                        continue
                    repeats[i] += 1
                    f = _row(per_batch_rows[j], r[2])
                    if f[3:6] != r[3:6]:
                        conflicts.append((r, f[3:6]))
                rows = keep
            prev.append((lo, hi, i))
            copied.append(rows)
        # COPY's text format in bulk: None is the only non-number (event_ms), booleans as words
        text = "".join([_COPY_LINE % r for rows in copied for r in rows]).replace("None", "\\N")
        info = conn.connection.info
        with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            if not info.get("readings_in"):
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS readings_in"
                    " (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                info["readings_in"] = True  # forgotten when a transaction fails (``handle``)
            with cur.copy(_PG_COPY) as cp:
                cp.write(text.encode())
            cur.execute(_PG_INSERT)
            new = cur.fetchall()
            counts = [0] * len(per_batch_rows)
            for d, b, seq in new:
                sp = spans[(d, b)]
                counts[sp[0][2] if len(sp) == 1 else _first_batch(sp, seq)] += 1
            dropped = _dropped(per_batch_rows, counts, repeats, spans, new)
            if dropped:
                # the stored readings that differ, in one query: the dropped rows go as six
                # arrays (as text: much cheaper to send than lists of ints), each looked up by
                # the primary key (OFFSET 0 keeps the planner from hashing the whole table)
                cols = list(zip(*dropped, strict=True))
                cur.execute(
                    "SELECT k.d, k.b, k.s, r.channel, r.value, r.up_ms"
                    " FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::int[], %s::int[],"
                    " %s::bigint[]) AS k(d, b, s, ch, v, up)"
                    " CROSS JOIN LATERAL (SELECT channel, value, up_ms FROM readings"
                    " WHERE device_id = k.d AND boot = k.b AND seq = k.s OFFSET 0) AS r"
                    " WHERE (r.channel, r.value, r.up_ms) IS DISTINCT FROM (k.ch, k.v, k.up)",
                    ["{" + ",".join(map(str, cols[c])) + "}" for c in range(6)],
                )
                for d, b, seq, *content in cur.fetchall():
                    j = _first_batch(spans[(d, b)], seq)
                    conflicts.append((_row(per_batch_rows[j], seq), tuple(content)))
        return counts, conflicts  # readings_in empties itself at commit (ON COMMIT DELETE ROWS)

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
        for i in range(0, len(due), RECONCILE_STEP):
            part = due[i : i + RECONCILE_STEP]
            with self.engine.begin() as conn:
                outgoing.extend(
                    reconcile.reconcile_devices(
                        conn,
                        part,
                        now,
                        secret=self.secret,
                        reorder_window_ms=self.reorder_window_ms,
                        resend_ttl_s=self.resend_ttl_s,
                        retry=self.retry,
                        pg=self.pg,
                        max_gap=self.max_gap,
                    )
                )
            self._cursor = part[-1].id
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


_SQLITE_TOUCH = "UPDATE devices SET last_seen_ms = ? WHERE id IN ({})"
_PG_TOUCH = "UPDATE devices SET last_seen_ms = %s WHERE id = ANY(%s)"
_SQLITE_RANGES = 'INSERT INTO received_ranges (device_id, "first", "last") VALUES (?, ?, ?)'
_PG_RANGES = (
    'INSERT INTO received_ranges (device_id, "first", "last")'
    " SELECT * FROM unnest(%s::int[], %s::bigint[], %s::bigint[])"
)
_COUNTS = (
    "UPDATE devices{t} SET received = {d}received + {}, duplicates = {d}duplicates + {},"
    " conflicts = {d}conflicts + {}, bad_time = {d}bad_time + {},"
    " historical = {d}historical + {}, last_seen_ms = {}, dirty = {true}"
)
_SQLITE_COUNTS = _COUNTS.format(*"??????", t="", d="", true="1") + " WHERE id = ?"
_PG_COUNTS = (
    _COUNTS.format("v.n", "v.dup", "v.conf", "v.bad", "v.hist", "%s", t=" AS x", d="x.",
                   true="true")
    + " FROM unnest(%s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::int[])"
    " AS v(n, dup, conf, bad, hist, id) WHERE x.id = v.id"
)  # fmt: skip


_COPY_LINE = "%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\n"  # a readings row (READING_COLS)
_PG_COPY = "COPY readings_in ({}) FROM STDIN".format(",".join(READING_COLS))
_PG_INSERT = (
    "INSERT INTO readings ({0}) SELECT {0} FROM readings_in ORDER BY device_id, boot, seq"
    " ON CONFLICT DO NOTHING RETURNING device_id, boot, seq".format(",".join(READING_COLS))
)


def _first_batch(spans: list[tuple[int, int, int]], seq: int) -> int | None:
    # the first batch of the group (in the group's order) holding ``seq`` of this boot
    for lo, hi, i in spans:
        if lo <= seq <= hi:
            return i
    return None


def _dropped(per_batch_rows, counts, repeats, spans, new) -> list[tuple]:
    # The rows a PostgreSQL insert dropped: a batch's copied rows (those not repeating an
    # earlier batch of the group) that it did not add. Whole batches in bulk; row by row only
    # for a batch that added part of its rows.
    out: list[tuple] = []
    added = None
    for i, rows in enumerate(per_batch_rows):
        copied = len(rows) - repeats.get(i, 0)
        if counts[i] == copied:
            continue
        if counts[i] == 0 and copied == len(rows):
            out += rows
            continue
        if added is None:
            added = set(new)
        sp = spans[rows[0][:2]]
        out += [r for r in rows if _first_batch(sp, r[2]) == i and r[:3] not in added]
    return out


def _row(rows: list[tuple], seq: int) -> tuple:
    # a batch's row of ``seq`` (a batch holds consecutive seqs)
    return rows[seq - rows[0][2]]


def _checked_rows(did: int, b: codec.Batch, off: int, lo: int, hi: int, now: int, faults) -> list:
    # a batch's rows with the event times that can be true; the others get None and a
    # time_faults row (appended to ``faults``)
    rows = []
    for seq, up_s, up_ms, val, ch in b.records:
        u = up_s * 1000 + up_ms
        at = u + off
        if not lo <= at <= hi:
            faults.append(fault_row(did, b.boot_id, seq, at, now))
            at = None
        rows.append((did, b.boot_id, seq, ch, val, u, at, b.historical, now))
    return rows


def _text(s: str) -> str:
    """``s`` with what a database cannot store (U+0000, lone surrogates) written as escapes."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _why(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).splitlines()
    return _text(f"{type(orig).__name__}: {lines[0] if lines else ''}")[:250]
