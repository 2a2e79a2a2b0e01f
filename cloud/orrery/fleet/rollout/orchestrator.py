"""Staged rollouts of workflow versions: a durable state machine in the database.

Per device: queued -> sent -> acked -> installing -> succeeded | failed | rejected | timed-out,
or offline-pending while the board is away (its command waits for the board's pull), or
canceled. Per rollout: draft -> running <-> paused -> finished | partial | canceled.

Rules (and the hawkBit complaints they answer):
- a device succeeds only on its final OK ack, which a board sends after the new version ran its
  health window (hawkBit #3185);
- offline devices never block a wave: they are offline-pending, get the command when they
  reconnect (the board pulls its pending commands), and status says "converged X%, Y offline
  pending" (hawkBit #693);
- devices that join the target later are picked up in the current wave (#1529);
- ``retry --failed`` re-queues just the failures (#3251);
- cancel takes effect at once for queued devices; in-progress devices finish and report
  (``--force`` cancels them too); it never waits on a device (#952);
- a failure threshold with a minimum sample auto-pauses and says why; a health gate compares
  upgraded with not-yet-upgraded boards over the soak and pauses on a significant regression;
- only one rollout at a time may change a given device;
- a version whose migrate map has no place for the state a device last reported is refused
  before the rollout (or a rollback) is created, naming those devices (``compat``);
- a rollout ends once its last wave met its threshold, soaked, and none of its online devices
  is still waiting for a result: ``finished`` when no device failed, was rejected or timed
  out, else ``partial`` with the reason (and a finished rollout whose late device fails
  becomes partial);
- pause and resume are idempotent;
- a schedule (``--start-at``, ``--window`` in UTC, a zone or each device's own) decides which
  queued devices a tick may send (``gate``); outside it nothing new is sent, and an offline
  board's command expires when its window closes;
- every state change goes to the audit log.

Durability: every decision is a database transaction, and command ids are
``rollout:<id>:<device>:<attempt>``, inserted once; a restarted orchestrator re-derives
everything from the database and sends nothing twice. Several orchestrators on one PostgreSQL
database take a per-rollout lease under ``SELECT … FOR UPDATE SKIP LOCKED``; on SQLite run one.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from operator import itemgetter

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import (
    BUNDLES,
    COMMANDS,
    DEVICES,
    ROLLOUT_DEVICES,
    ROLLOUT_LOG,
    ROLLOUTS,
    WORKFLOWS,
)
from cloud.orrery.fleet import bundles, commands
from cloud.orrery.fleet.preview import stored
from cloud.orrery.fleet.rollout import compat, gate, health, ota, plan
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

DEVICE_STATES = (
    "queued", "sent", "acked", "installing", "succeeded", "failed", "rejected", "timed-out",
    "canceled", "offline-pending", "rolled-back",
)  # fmt: skip
# rolled-back: a board that booted a new app bundle on trial and fell back to its previous one
FINAL = ("succeeded", "failed", "rejected", "timed-out", "canceled", "rolled-back")
FAILED = ("failed", "rejected", "timed-out", "rolled-back")
IN_FLIGHT = ("sent", "acked", "installing", "offline-pending")
WAITING = ("queued", "sent", "acked", "installing")  # no result yet (offline-pending aside)
ACTIVE_ROLLOUT = ("draft", "running", "paused")
ENDED = ("finished", "partial")  # ended by the orchestrator (canceled: by the operator)
# a rollout row as the orchestrator reads it: all but its stored preview
ROLLOUT_COLS = tuple(c for c in ROLLOUTS.c if c.name != "preview")
GATE_MAX: int = ROLLOUTS.c.preview_gate.type.length  # characters of a --preview-gate
REJECT_CODES = (
    codec.BAD_SIGNATURE,
    codec.EXPIRED,
    codec.REPLAYED,
    codec.MALFORMED,
    codec.UNKNOWN_KIND,
    codec.REJECTED,
    codec.BUSY,
)


# --- the orchestrator ------------------------------------------------------------------------


class Orchestrator:
    """Creates and drives rollouts. ``tick`` advances every running rollout by one step."""

    def __init__(
        self,
        engine: Engine,
        secret: bytes | None,
        *,
        owner: str = "orrery",
        actor: str | None = None,
        clock: Callable[[], int] = now_ms,
        lease_ms: int = 30_000,
        significance: float = 0.01,
        join_every_ms: int = 5_000,
    ) -> None:
        self.engine = engine
        self.secret = secret
        self.owner = owner
        self.actor = actor  # who acts through this instance (audit); None: the orchestrator
        self.clock = clock
        self.lease_ms = lease_ms
        self.significance = significance
        self.join_every_ms = join_every_ms
        self._next_join: dict[int, int] = {}  # rollout id -> when its next join scan may run
        self._held: dict[int, bool] = {}  # rollout id -> its schedule held it at the last dispatch
        self.pg = engine.dialect.name == "postgresql"
        self.ota = ota.Delivery(secret)  # bundle rollouts' downloads

    # --- audit -------------------------------------------------------------------------------

    def _log(
        self,
        conn: Connection,
        rid: int,
        event: str,
        detail: str | None = None,
        device_id: int | None = None,
    ) -> None:
        conn.execute(
            sa.insert(ROLLOUT_LOG),
            [
                {
                    "rollout_id": rid,
                    "device_id": device_id,
                    "at_ms": self.clock(),
                    "event": event,
                    "detail": detail,
                    "actor": self.actor,
                }
            ],
        )

    def _set_members(
        self, conn: Connection, rid: int, changes: list[tuple[int, str, str | None]], **extra
    ) -> None:
        """Move devices to new states, logging each change."""
        if not changes:
            return
        now = self.clock()
        # one statement for every change, as plain tuples through the driver's executemany
        sets = "".join(f", {k} = ?" for k in extra)
        fixed = tuple(extra.values())
        _many(conn, f"UPDATE rollout_devices SET state = ?, updated_ms = ?, detail = ?{sets}"
                    " WHERE rollout_id = ? AND device_id = ?",
              [(state, now, detail, *fixed, rid, did) for did, state, detail in changes])  # fmt: skip
        _many(conn, "INSERT INTO rollout_log (rollout_id, device_id, at_ms, event, detail, actor)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
              [(rid, did, now, state, detail, self.actor) for did, state, detail in changes])  # fmt: skip

    # --- create --------------------------------------------------------------------------------

    def _targets(
        self, conn: Connection, terms: list[plan.Term], rid: int | None, not_on=None,
        not_on_fw: str | None = None,
    ) -> tuple[list, dict[str, list[str]]]:  # fmt: skip
        """The devices ``terms`` select that no other running or paused rollout is changing.

        With ``rid``, only devices not yet in that rollout; with ``not_on`` (a workflow row),
        only devices not already running that version (both filtered in SQL).
        """
        busy_q = (
            sa.select(ROLLOUT_DEVICES.c.device_id, ROLLOUT_DEVICES.c.rollout_id)
            .join(ROLLOUTS, ROLLOUTS.c.id == ROLLOUT_DEVICES.c.rollout_id)
            .where(
                ROLLOUTS.c.state.in_(("running", "paused")), ROLLOUT_DEVICES.c.state.notin_(FINAL)
            )
        )
        if rid is not None:
            busy_q = busy_q.where(ROLLOUT_DEVICES.c.rollout_id != rid)
        busy = dict(conn.execute(busy_q).all())
        where = []
        if rid is not None:
            where.append(
                ~sa.exists().where(
                    ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.device_id == DEVICES.c.id
                )
            )
        if not_on is not None:
            where.append(
                sa.or_(
                    DEVICES.c.wf.is_(None),
                    DEVICES.c.wf_ver.is_(None),
                    DEVICES.c.wf != not_on.name,
                    DEVICES.c.wf_ver != not_on.version,
                )
            )
        if not_on_fw is not None:
            where.append(sa.or_(DEVICES.c.fw.is_(None), DEVICES.c.fw != not_on_fw))
        rows = plan.select_devices(conn, terms, *where)
        if not busy:
            return rows, {}
        chosen, excluded = [], defaultdict(list)
        for d in rows:
            if d.id in busy:
                excluded[f"busy in rollout {busy[d.id]}"].append(d.name)
            else:
                chosen.append(d)
        return chosen, dict(excluded)

    def create(
        self,
        workflow_ref: str | None,
        target: str,
        waves: str = "5,10%,50%,100%",
        success: str = "95%",
        max_failures: str = "2%",
        min_devices: int = 20,
        soak: str = "10m",
        timeout: str = "24h",
        rate: str = "100/min",
        health: str = "60s",
        dry_run: bool = False,
        start_at: str | None = None,
        window: str | None = None,
        window_tz: str | None = None,
        bundle: str | None = None,
        preview_gate: str | None = None,
    ) -> plan.Plan:
        """Plan a rollout (a draft) or, with ``dry_run``, only show the plan. ``start_at`` (ISO
        8601 with an offset), ``window`` and ``window_tz`` say when it may send (``schedule``).
        With ``bundle`` (``NAME@VERSION`` of an app bundle; ``workflow_ref`` None) it rolls out
        that app: refused, naming them, when a target device's profile or ``.mpy`` version is
        not the bundle's. ``preview_gate``: bounds its preview must keep to before it may
        start (``fleet.preview.stored``), checked against the version here."""
        from cloud.orrery.fleet import registry

        if (workflow_ref is None) == (bundle is None):
            raise plan.RolloutError("give one of --workflow NAME@VERSION or --bundle NAME@VERSION")

        wv = plan.parse_waves(waves)
        terms = plan.parse_target(target)
        when = gate.parse_options(start_at, window, window_tz, self.clock())
        vals = {
            "target": target,
            "waves": json.dumps(wv),
            "success_pct": plan.parse_pct(success, "--success"),
            "max_fail_pct": plan.parse_pct(max_failures, "--max-failures"),
            "min_devices": min_devices,
            "soak_s": plan.parse_duration(soak, "--soak"),
            "timeout_s": plan.parse_duration(timeout, "--timeout"),
            "rate_per_min": plan.parse_rate(rate),
            "health_s": plan.parse_duration(health, "--health"),
            **when,
        }
        if min_devices < 1:
            raise plan.RolloutError("--min-devices must be at least 1")
        if not 1 <= vals["health_s"] <= 86400:
            raise plan.RolloutError("--health must be between 1s and 1d")
        if preview_gate is not None:
            if bundle is not None:
                raise plan.RolloutError(
                    "--preview-gate: a preview replays workflows, not app bundles"
                )
            vals["preview_gate"] = " ".join(preview_gate.split()) or None
            if vals["preview_gate"] is None:
                raise plan.RolloutError(
                    "--preview-gate: give at least one bound, e.g. events.fault_raised<=+10%"
                )
            if len(vals["preview_gate"]) > GATE_MAX:
                raise plan.RolloutError(f"--preview-gate: longer than {GATE_MAX} characters")
        with self.engine.begin() as conn:
            try:
                if bundle is not None:
                    wf = bundles.get(conn, bundle, with_data=False)
                else:
                    wf = registry.get(conn, workflow_ref or "")
            except registry.RegistryError as exc:
                raise plan.RolloutError(str(exc)) from None
            ref = f"{wf.name}@{wf.version}"
            if vals.get("preview_gate"):
                stored.check_gate(vals["preview_gate"], wf.blob)
            found, excluded = self._targets(conn, terms, None)
            # rows are (id, name, fleet, profile, fw, wf, wf_ver, online): see plan.TARGET_COLS;
            # positional access, as this runs once per device of the fleet
            devices, already = [], []
            for d in found:
                on = d[4] == wf.version if bundle else d[5] == wf.name and d[6] == wf.version
                (already if on else devices).append(d)
            if already:
                excluded["already running this version"] = [d[1] for d in already]
            if not devices:
                raise plan.RolloutError(
                    f"--target {target!r} selects no device that needs {ref}"
                    + (
                        f" (excluded: {', '.join(f'{k}: {len(v)}' for k, v in excluded.items())})"
                        if excluded
                        else ""
                    )
                )
            if bundle is not None:
                bad_b = self._incompatible(conn, wf, [d[0] for d in devices])
                if bad_b:
                    raise plan.RolloutError(refusal(ref, bad_b, len(devices)))
            else:
                bad = compat.stranded(conn, wf.blob, {(d[5], d[6]) for d in devices if d[5]})
                hit = [bad[d[0]] for d in devices if d[0] in bad]
                if hit:
                    raise plan.RolloutError(compat.refusal(ref, hit))
            # a pseudo-random order seeded by the plan, so canaries are spread over the fleet
            # (device id order first: the shuffle does not depend on how rows were fetched)
            devices.sort(key=itemgetter(0))
            by_id = devices[:]
            random.Random(f"{ref}:{target}:{self.clock()}").shuffle(devices)
            sizes = plan.wave_sizes(wv, len(devices))
            rid = None
            now = self.clock()
            if not dry_run:
                which = {"bundle_id": wf.id} if bundle else {"workflow_id": wf.id}
                rid = conn.execute(
                    sa.insert(ROLLOUTS).returning(ROLLOUTS.c.id),
                    [{**which, "state": "draft", "created_ms": now,
                      "created_by": self.actor, **vals}],  # fmt: skip
                ).scalar_one()
            plan_waves, waves_of, start = [], [], 0
            for i, n in enumerate(sizes):
                chunk = devices[start:n]
                names = [d[1] for d in chunk]
                waves_of.append(chunk)
                plan_waves.append(
                    {"wave": i + 1, "size": wv[i], "devices": names, "count": len(names),
                     "offline": sum(not d[7] for d in chunk)}
                )  # fmt: skip
                start = n
            if not dry_run:
                self._insert_members(conn, rid, waves_of, by_id, now)
                self._log(
                    conn,
                    rid,
                    "created",
                    ("bundle " if bundle else "")
                    + f"{ref} to {len(devices)} device(s) in {len(wv)} wave(s)"
                    + gate.describe(when),
                )
            no_tz = gate.without_zone(conn, when, [d[0] for d in devices])
        return plan.Plan(rid, ref, plan_waves, excluded, gate.schedule_view(when), no_tz,
                         "bundle" if bundle else "workflow")  # fmt: skip

    @staticmethod
    def _incompatible(conn: Connection, b, device_ids: list[int]) -> dict[str, str]:
        """``bundles.incompatible`` for these devices (by name: why)."""
        out: dict[str, str] = {}
        for i in range(0, len(device_ids), commands.CHUNK):
            rows = conn.execute(
                sa.select(DEVICES.c.name, DEVICES.c.profile, DEVICES.c.mpy)
                .where(DEVICES.c.id.in_(device_ids[i : i + commands.CHUNK]))
                .order_by(DEVICES.c.name)
            ).all()
            out.update(bundles.incompatible(b, rows))
        return out

    def _insert_members(
        self, conn: Connection, rid: int, waves: list[list], by_id: list, now: int
    ) -> None:
        """Insert a new rollout's members, ``waves`` of rows as ``plan.TARGET_COLS`` (the same
        rows in ``by_id``, in device id order), in bulk:
        one COPY on PostgreSQL, one INSERT … SELECT per wave on SQLite. The table has no
        foreign keys to check row by row (migration 0005): the ids come from this transaction.
        """
        cols = "rollout_id, device_id, wave, state, attempt, prev_wf, prev_ver, prev_fw, updated_ms"
        if not self.pg:
            # the wave's device ids as one JSON array: no per-member round trip or row object
            sql = (
                f"INSERT INTO rollout_devices ({cols}) SELECT ?, id, ?, 'queued', 0, wf, wf_ver,"
                " fw, ? FROM devices WHERE id IN (SELECT value FROM json_each(?))"
            )
            for i, chunk in enumerate(waves):
                if chunk:
                    conn.exec_driver_sql(sql, (rid, i, now, json.dumps([d[0] for d in chunk])))
            return
        # COPY's text format, written whole: no per-row call and no tuple per member
        wave_of = {d[0]: i for i, chunk in enumerate(waves) for d in chunk}
        prev: dict[tuple, str] = {}  # (wf, wf_ver, fw) -> its three cells: a fleet runs a few
        for d in by_id:
            if (d[5], d[6], d[4]) not in prev:
                prev[d[5], d[6], d[4]] = "\t".join(map(_copy_text, (d[5], d[6], d[4])))
        # in device id order, as the indexes are: appended to, not split at random pages (and
        # strings only, which the garbage collector does not track)
        lines = [
            f"{rid}\t{d[0]}\t{wave_of[d[0]]}\tqueued\t0\t{prev[d[5], d[6], d[4]]}\t{now}\n"
            for d in by_id
        ]
        with conn.connection.driver_connection.cursor() as cur:
            with cur.copy(f"COPY rollout_devices ({cols}) FROM STDIN") as copy:
                copy.write("".join(lines))

    @property
    def downloading(self) -> bool:
        """Whether a bundle rollout had a download under way at the last tick: each chunk's
        round trip waits for a tick, so ``orrery serve`` ticks more often then."""
        return any(self.ota.active.values())

    def _bundle(self, conn: Connection, r):
        """The bundle (registry row without its bytes) a bundle rollout rolls out."""
        return conn.execute(
            sa.select(BUNDLES.c.id, BUNDLES.c.name, BUNDLES.c.version, BUNDLES.c.sha256,
                      BUNDLES.c.size, BUNDLES.c.profile, BUNDLES.c.mpy_version)
            .where(BUNDLES.c.id == r.bundle_id)
        ).first()  # fmt: skip

    def _subject(self, conn: Connection, r) -> str:
        """``NAME@VERSION`` of what rollout ``r`` rolls out (a workflow or a bundle)."""
        if r.bundle_id is not None:
            b = self._bundle(conn, r)
        else:
            b = conn.execute(
                sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version).where(WORKFLOWS.c.id == r.workflow_id)
            ).first()
        return f"{b.name}@{b.version}"

    # --- operator actions ------------------------------------------------------------------

    def _rollout(self, conn: Connection, rid: int, lock: bool = False):
        # every column but the stored preview (large; ``stored.stored`` reads it)
        q = sa.select(*ROLLOUT_COLS).where(ROLLOUTS.c.id == rid)
        if lock and self.pg:
            q = q.with_for_update()
        r = conn.execute(q).first()
        if r is None:
            raise plan.RolloutError(f"no rollout {rid} (see `orrery rollout list`)")
        return r

    def _transition(
        self,
        rid: int,
        allowed: tuple[str, ...],
        to: str,
        event: str,
        detail: str | None = None,
        **values,
    ) -> bool:
        """Move rollout ``rid`` from one of ``allowed`` to ``to``; True if it moved, False if it
        was in ``to`` already (nothing to do); RolloutError from any other state."""
        with self.engine.begin() as conn:
            r = self._rollout(conn, rid, lock=True)
            if r.state == to:
                return False
            if r.state not in allowed:
                raise plan.RolloutError(
                    f"rollout {rid} is {r.state}; {event} needs it {' or '.join(allowed)}"
                )
            conn.execute(sa.update(ROLLOUTS).where(ROLLOUTS.c.id == rid).values(state=to, **values))
            self._log(conn, rid, event, detail)
        return True

    def start(self, rid: int) -> None:
        """Start a draft rollout; refused while another running or paused rollout is changing
        any of its devices (drafts may overlap; only one rollout at a time changes a device),
        and when its stored preview broke its ``--preview-gate`` (a gated draft without a
        stored preview runs one first, over the last ``stored.DEFAULT_SINCE``)."""
        with self.engine.connect() as conn:
            r = self._rollout(conn, rid)
            unpreviewed = r.preview_gate and r.preview_ms is None
        if r.state == "draft" and unpreviewed:
            stored.preview(self.engine, rid, actor=self.actor, clock=self.clock)
        with self.engine.begin() as conn:
            r = self._rollout(conn, rid, lock=True)
            if r.state != "draft":
                raise plan.RolloutError(f"rollout {rid} is {r.state}; started needs it draft")
            got = stored.stored(conn, rid) if r.preview_gate else None
            why = stored.refusal(rid, r.preview_gate, *(got or (None, None)))
            if why:
                raise plan.RolloutError(why)
            other = ROLLOUT_DEVICES.alias("other")
            clash = conn.execute(
                sa.select(other.c.rollout_id, DEVICES.c.name)
                .select_from(ROLLOUT_DEVICES)
                .join(other, other.c.device_id == ROLLOUT_DEVICES.c.device_id)
                .join(ROLLOUTS, ROLLOUTS.c.id == other.c.rollout_id)
                .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
                .where(ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.state.notin_(FINAL),
                       other.c.rollout_id != rid, other.c.state.notin_(FINAL),
                       ROLLOUTS.c.state.in_(("running", "paused")))
                .order_by(other.c.rollout_id, DEVICES.c.name)
            ).all()  # fmt: skip
            if clash:
                busy = clash[0].rollout_id
                names = [x.name for x in clash if x.rollout_id == busy]
                raise plan.RolloutError(
                    f"rollout {rid} cannot start: {len(names)} of its devices are being changed "
                    f"by rollout {busy} ({', '.join(names[:8])}{' …' if len(names) > 8 else ''}); "
                    f"start it once rollout {busy} is done, or cancel one of them"
                )
            conn.execute(
                sa.update(ROLLOUTS)
                .where(ROLLOUTS.c.id == rid)
                .values(state="running", started_ms=self.clock())
            )
            self._log(conn, rid, "started")

    def pause(self, rid: int, reason: str = "paused by operator") -> bool:
        """Pause: nothing new is sent; what is in flight still reports. Pausing a paused
        rollout changes nothing; returns whether this call paused it."""
        return self._transition(rid, ("running",), "paused", "paused", reason, reason=reason)

    def resume(self, rid: int) -> bool:
        """Resume a paused rollout (after a failure pause the operator has looked at why).
        Resuming a running rollout changes nothing; returns whether this call resumed it."""
        return self._transition(
            rid, ("paused",), "running", "resumed", reason=None, wave_met_ms=None
        )

    def cancel(self, rid: int, force: bool = False) -> dict:
        """Cancel: queued devices at once; in-flight ones finish and report unless ``force``."""
        now = self.clock()
        with self.engine.begin() as conn:
            r = self._rollout(conn, rid, lock=True)
            if r.state not in ACTIVE_ROLLOUT:
                raise plan.RolloutError(f"rollout {rid} is already {r.state}")
            states = ("queued",) + (IN_FLIGHT if force else ("offline-pending",))
            rows = conn.execute(
                sa.select(ROLLOUT_DEVICES.c.device_id, ROLLOUT_DEVICES.c.command_id).where(
                    ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.state.in_(states)
                )
            ).all()
            ids = [x.command_id for x in rows if x.command_id]
            if ids:
                conn.execute(
                    sa.update(COMMANDS)
                    .where(COMMANDS.c.id.in_(ids), COMMANDS.c.status.in_(commands.OPEN))
                    .values(status="canceled")
                )
            self._set_members(
                conn, rid, [(x.device_id, "canceled", "rollout canceled") for x in rows]
            )
            if r.bundle_id is not None and rows:  # their downloads stop too
                ota.cancel_chunks(conn, rid, [x.device_id for x in rows])
            conn.execute(
                sa.update(ROLLOUTS)
                .where(ROLLOUTS.c.id == rid)
                .values(state="canceled", finished_ms=now, reason="canceled by operator")
            )
            self._log(
                conn, rid, "canceled", "force" if force else "in-flight devices finish and report"
            )
        return {"canceled_devices": len(rows)}

    def retry_failed(self, rid: int) -> int:
        """Re-queue only the devices that failed, were rejected or timed out."""
        with self.engine.begin() as conn:
            r = self._rollout(conn, rid, lock=True)
            if r.state == "canceled":
                raise plan.RolloutError(f"rollout {rid} is canceled; create a new one")
            rows = conn.execute(
                sa.select(ROLLOUT_DEVICES.c.device_id).where(
                    ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.state.in_(FAILED)
                )
            ).all()
            self._set_members(
                conn, rid, [(x.device_id, "queued", "retry") for x in rows], command_id=None
            )
            if r.bundle_id is not None and rows:  # the old attempt's chunks are not sent
                ota.cancel_chunks(conn, rid, [x.device_id for x in rows])
            if r.state in ENDED and rows:
                conn.execute(
                    sa.update(ROLLOUTS)
                    .where(ROLLOUTS.c.id == rid)
                    .values(state="running", finished_ms=None, reason=None)
                )
            self._log(conn, rid, "retry", f"{len(rows)} failed device(s) re-queued")
        return len(rows)

    def rollback_plan(self, rid: int) -> list[tuple[str, int, list[str]]]:
        """What ``rollback`` would do: per previous version ``(name, version, devices)`` that
        rollout ``rid`` changed (succeeded, installing or acked). Refused (RolloutError, naming
        them) when a device's current state has no place in the version it would go back to."""
        from cloud.orrery.fleet import registry

        changed = ROLLOUT_DEVICES.c.state.in_(("succeeded", "installing", "acked"))
        with self.engine.connect() as conn:
            r = self._rollout(conn, rid)
            if r.bundle_id is not None:
                return self._bundle_rollback_plan(conn, r)
            rows = conn.execute(
                sa.select(ROLLOUT_DEVICES.c.prev_wf, ROLLOUT_DEVICES.c.prev_ver, DEVICES.c.id, DEVICES.c.name,
                          DEVICES.c.wf, DEVICES.c.wf_ver)
                .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
                .where(ROLLOUT_DEVICES.c.rollout_id == rid, changed, ROLLOUT_DEVICES.c.prev_wf.is_not(None))
                .order_by(ROLLOUT_DEVICES.c.prev_wf, ROLLOUT_DEVICES.c.prev_ver, DEVICES.c.name)
            ).all()  # fmt: skip
            groups: dict[tuple[str, int], list] = defaultdict(list)
            for wf, ver, did, name, now_wf, now_ver in rows:
                groups[(wf, ver)].append((did, name, now_wf, now_ver))
            out, hit = [], []
            for (wf, ver), members in groups.items():
                try:
                    target = registry.get(conn, f"{wf}@{ver}")
                except registry.RegistryError as exc:
                    raise plan.RolloutError(f"cannot roll back to {wf}@{ver}: {exc}") from None
                running = {(m[2], m[3]) for m in members if m[2]}
                bad = compat.stranded(conn, target.blob, running)
                hit += [(f"{wf}@{ver}", bad[m[0]]) for m in members if m[0] in bad]
                out.append((wf, ver, [m[1] for m in members]))
        if hit:
            raise plan.RolloutError(compat.refusal(" / ".join(sorted({w for w, _ in hit})), [x for _, x in hit]))
        return out

    def _bundle_rollback_plan(self, conn: Connection, r) -> list[tuple[str, str, list[str]]]:
        """``rollback_plan`` of a bundle rollout: per app version its boards ran before
        ``(name, version, devices)``, for the boards that switched to the new one (installing
        or succeeded). Refused, naming them, when a board ran no known version before, when
        that version is not in the registry, or when the board cannot run it."""
        b = self._bundle(conn, r)
        rows = conn.execute(
            sa.select(ROLLOUT_DEVICES.c.prev_fw, DEVICES.c.id, DEVICES.c.name)
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .where(ROLLOUT_DEVICES.c.rollout_id == r.id,
                   ROLLOUT_DEVICES.c.state.in_(("succeeded", "installing")))
            .order_by(ROLLOUT_DEVICES.c.prev_fw, DEVICES.c.name)
        ).all()  # fmt: skip
        groups: dict[str | None, list] = defaultdict(list)
        for prev, did, name in rows:
            groups[prev].append((did, name))

        def few(m: list) -> str:
            return ", ".join(n for _, n in m[:5]) + (f" … (+{len(m) - 5})" if len(m) > 5 else "")

        head = f"cannot roll back rollout {r.id}"
        if None in groups:
            m = groups[None]
            raise plan.RolloutError(
                f"{head}: {len(m)} device(s) reported no app version before it ({few(m)})"
            )
        out = []
        for prev, members in groups.items():
            ref = f"{b.name}@{prev}"
            try:
                target = bundles.get(conn, ref, with_data=False)
            except bundles.RegistryError:
                raise plan.RolloutError(
                    f"{head}: {len(members)} device(s) ran {ref} before it ({few(members)}), "
                    f"which is not in the registry: push that version, or roll forward"
                ) from None
            bad = self._incompatible(conn, target, [d for d, _ in members])
            if bad:
                raise plan.RolloutError(head + ": " + refusal(ref, bad, len(members)))
            out.append((b.name, str(prev), [n for _, n in members]))
        return out

    def rollback(self, rid: int) -> list[int]:
        """Cancel the rollout and start, per previous version, a one-wave rollout that puts
        every device it changed back on that version; returns the new rollouts' ids. Nothing
        is changed when a device would reject its previous version (``rollback_plan``)."""
        groups = self.rollback_plan(rid)
        with self.engine.connect() as conn:
            r = self._rollout(conn, rid)
        if r.state in ("running", "paused"):
            self.cancel(rid)
        return [self._rollback_one(rid, wf, ver, names, r) for wf, ver, names in groups]

    def _rollback_one(self, rid: int, wf: str, ver, names: list[str], r) -> int:
        from cloud.orrery.fleet import registry

        with self.engine.begin() as conn:
            if r.bundle_id is not None:
                which = {"bundle_id": bundles.get(conn, f"{wf}@{ver}", with_data=False).id}
            else:
                which = {"workflow_id": registry.get(conn, f"{wf}@{ver}").id}
            new = conn.execute(
                sa.insert(ROLLOUTS).returning(ROLLOUTS.c.id),
                [{**which, "target": f"rollback of rollout {rid}", "waves": json.dumps(["100%"]),
                  "success_pct": 0.0, "max_fail_pct": 100.0, "min_devices": 1, "soak_s": 0, "timeout_s": r.timeout_s,
                  "rate_per_min": r.rate_per_min, "health_s": r.health_s, "state": "running", "created_ms": self.clock(),
                  "started_ms": self.clock(), "created_by": self.actor}],
            ).scalar_one()  # fmt: skip
            ids = {
                name: (did, fw)
                for name, did, fw in conn.execute(
                    sa.select(DEVICES.c.name, DEVICES.c.id, DEVICES.c.fw).where(
                        DEVICES.c.name.in_(names)
                    )
                )
            }
            now = self.clock()
            conn.execute(
                sa.insert(ROLLOUT_DEVICES),
                [
                    {
                        "rollout_id": new,
                        "device_id": ids[n][0],
                        "wave": 0,
                        "state": "queued",
                        "prev_fw": ids[n][1],  # what a rollback of this rollback goes back to
                        "updated_ms": now,
                    }
                    for n in names
                ],
            )
            self._log(
                conn,
                new,
                "created",
                f"rollback of rollout {rid}: {wf}@{ver} to {len(names)} device(s)",
            )
            self._log(
                conn,
                rid,
                "rolled-back",
                f"rollout {new} puts {len(names)} device(s) back on {wf}@{ver}",
            )
        return new

    # --- driving -----------------------------------------------------------------------------

    def tick(self) -> list[commands.Outgoing]:
        """One step of every running (or finished but not converged) rollout; returns the
        commands to publish now."""
        out: list[commands.Outgoing] = []
        with self.engine.connect() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    sa.select(ROLLOUTS.c.id)
                    .where(ROLLOUTS.c.state.in_(("running", "paused", *ENDED, "canceled")))
                    .order_by(ROLLOUTS.c.id)
                )
            ]
        for rid in ids:
            out.extend(self._tick_one(rid))
        return out

    def broker_restarted(self) -> list[int]:
        """The companion is subscribed again after it lost the broker: the soak of every
        running rollout starts over, from fresh baselines. Returns the rollouts' ids.

        A broker that goes down drops every board's link at once, and the wills it sends as it
        closes the connections reach the companion only until it closes the companion's own:
        for the boards it closes first, those that connected first, i.e. the first wave's. Such
        link drops say nothing about an upgrade, yet the gate would compare them (it paused
        rollouts on "link_drops: 14 on 14 upgraded vs 20 on 126 not upgraded")."""
        now = self.clock()
        restarted = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(ROLLOUTS.c.id).where(
                    ROLLOUTS.c.state == "running", ROLLOUTS.c.wave_met_ms.is_not(None)
                )
            ).all()
            for (rid,) in rows:
                if not self._lease(conn, rid, now):
                    continue
                conn.execute(
                    sa.update(ROLLOUTS).where(ROLLOUTS.c.id == rid).values(wave_met_ms=now)
                )
                health.snapshot_baseline(conn, rid, self.pg)
                self._log(conn, rid, "soak-restarted", "the broker restarted: the soak starts over")
                restarted.append(rid)
        return restarted

    def _lease(self, conn: Connection, rid: int, now: int) -> bool:
        q = sa.select(ROLLOUTS.c.lease_owner, ROLLOUTS.c.lease_until_ms).where(ROLLOUTS.c.id == rid)
        if self.pg:
            q = q.with_for_update(skip_locked=True)
        row = conn.execute(q).first()
        if row is None:
            return False
        if row.lease_owner not in (None, self.owner) and (row.lease_until_ms or 0) > now:
            return False
        conn.execute(
            sa.update(ROLLOUTS)
            .where(ROLLOUTS.c.id == rid)
            .values(lease_owner=self.owner, lease_until_ms=now + self.lease_ms)
        )
        return True

    def _tick_one(self, rid: int) -> list[commands.Outgoing]:
        now = self.clock()
        out: list[commands.Outgoing] = []
        with self.engine.begin() as conn:
            if not self._lease(conn, rid, now):
                return []
            r = self._rollout(conn, rid)
            self._sync(conn, r, now)
            if r.bundle_id is not None:  # downloads in flight go on, paused or not
                out = self.ota.step(conn, r, self._bundle(conn, r), now)
            if r.state == "running":
                self._join(conn, r, now)
                c = self.counts(conn, r.id, r.wave)
                if c["queued"]:
                    out = out + self._dispatch(conn, r, now)
                    c = None  # counted again: the dispatch moved members on
                self._evaluate(conn, r, now, c)
        return out

    def _sync(self, conn: Connection, r, now: int) -> None:
        """Derive device states from their commands' acks, the registry and the clock.

        The database leaves out the members whose state stays as it is (a command sent and
        not answered, on a device as online as its state says, within the timeout; a device
        installing): while a wave's acks come in, a tick reads the answered ones, not the wave.

        A bundle rollout's member is installing once its board reports the bundle's version
        (its trial boot), and succeeded only on the install's final OK with the board
        reporting that version; a board that fell back (FAILED "rolled back: …") is
        ``rolled-back``.
        """
        bundle = r.bundle_id is not None
        if bundle:
            target_hash = self._bundle(conn, r).version
            running = DEVICES.c.fw  # what the board says it runs
        else:
            target_hash = conn.execute(
                sa.select(WORKFLOWS.c.hash).where(WORKFLOWS.c.id == r.workflow_id)
            ).scalar()
            running = DEVICES.c.wf_hash
        online = DEVICES.c.online.is_(True)
        unchanged = sa.or_(
            COMMANDS.c.status.is_(None),
            sa.and_(
                COMMANDS.c.status.in_(commands.WAITING),
                ROLLOUT_DEVICES.c.state == sa.case((online, "sent"), else_="offline-pending"),
                sa.not_(sa.and_(online, ROLLOUT_DEVICES.c.sent_ms.is_not(None),
                                ROLLOUT_DEVICES.c.sent_ms < now - r.timeout_s * 1000)),
            ),
            sa.and_(
                COMMANDS.c.status == "acked",
                ROLLOUT_DEVICES.c.state
                == sa.case((running == target_hash, "installing"), else_="acked"),
            ),
        )  # fmt: skip
        rows = conn.execute(
            sa.select(
                ROLLOUT_DEVICES.c.device_id, ROLLOUT_DEVICES.c.state, ROLLOUT_DEVICES.c.sent_ms, ROLLOUT_DEVICES.c.attempt,
                COMMANDS.c.status, COMMANDS.c.ack_code, COMMANDS.c.ack_detail, COMMANDS.c.exp,
                DEVICES.c.online, running.label("running"),
            )
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .outerjoin(COMMANDS, COMMANDS.c.id == ROLLOUT_DEVICES.c.command_id)
            .where(ROLLOUT_DEVICES.c.rollout_id == r.id, ROLLOUT_DEVICES.c.state.in_(IN_FLIGHT),
                   sa.not_(unchanged))
        ).all()  # fmt: skip
        if not rows:
            return
        changes: list[tuple[int, str, str | None]] = []
        requeue = []
        for m in rows:
            new, detail = m.state, None
            st = m.status
            if st == "done" and bundle and m.running != target_hash:
                # OK, but the board's state report does not show the bundle yet
                new, detail = "installing", f"acked {m.ack_detail!r}; it reports fw {m.running}"
                if m.sent_ms is not None and now - m.sent_ms > r.timeout_s * 1000:
                    new = "failed"
                    detail = f"acked {m.ack_detail!r} but reports fw {m.running}, not {target_hash}"
                if new == m.state:
                    continue
            elif st == "done":
                new, detail = "succeeded", m.ack_detail or "health window passed"
            elif st == "failed" and bundle and (m.ack_detail or "").startswith("rolled back"):
                new, detail = "rolled-back", m.ack_detail
            elif st == "failed":
                new = "rejected" if m.ack_code in REJECT_CODES else "failed"
                detail = f"{codec.ACK_NAMES.get(m.ack_code, m.ack_code)}: {m.ack_detail or ''}".strip()
            elif st == "acked":
                new = "installing" if m.running == target_hash else "acked"
            elif st == "expired" or st == "canceled":
                if not m.online or (st == "expired" and gate.cut_short(r, m.sent_ms, m.exp)):
                    # still away, or its window closed first: a fresh command waits (for its pull)
                    requeue.append(m.device_id)
                    continue
                new, detail = "timed-out", f"command {st} without an answer"
            elif st in commands.WAITING:  # refused by the board's clock: signed again
                new = "sent" if m.online else "offline-pending"
                if m.online and m.sent_ms is not None and now - m.sent_ms > r.timeout_s * 1000:
                    new, detail = "timed-out", f"no result within {r.timeout_s}s"
            if new != m.state:
                changes.append((m.device_id, new, detail))
        self._set_members(conn, r.id, changes)
        if r.state in ENDED and any(state in FAILED for _, state, _ in changes):
            self._settle(conn, r, self.clock())  # a late device failed: finished is no more
        if requeue:
            self._set_members(
                conn,
                r.id,
                [(d, "queued", "command expired while offline; sending again") for d in requeue],
                command_id=None,
            )

    def _join(self, conn: Connection, r, now: int) -> None:
        """Devices that match the target but joined after creation go into the current wave.

        The scan reads every device, so it runs at most every ``join_every_ms`` per rollout.
        """
        if r.target.startswith("rollback of") or now < self._next_join.get(r.id, 0):
            return
        self._next_join[r.id] = now + self.join_every_ms
        if r.bundle_id is not None:
            b = self._bundle(conn, r)
            new, _ = self._targets(conn, plan.parse_target(r.target), r.id, not_on_fw=b.version)
            bad = self._incompatible(conn, b, [d.id for d in new]) if new else {}
            new = [d for d in new if d.name not in bad]  # never sent what it cannot run
        else:
            wf = conn.execute(
                sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version).where(WORKFLOWS.c.id == r.workflow_id)
            ).first()
            new, _ = self._targets(conn, plan.parse_target(r.target), r.id, not_on=wf)
        if new:
            conn.execute(
                sa.insert(ROLLOUT_DEVICES),
                [{"rollout_id": r.id, "device_id": d.id, "wave": r.wave, "state": "queued", "prev_wf": d.wf,
                  "prev_ver": d.wf_ver, "prev_fw": d.fw, "updated_ms": now} for d in new],
            )  # fmt: skip
            conn.execute(
                sa.insert(ROLLOUT_LOG),
                [{"rollout_id": r.id, "device_id": d.id, "at_ms": now, "event": "joined",
                  "detail": f"{d.name} joined the target; added to wave {r.wave + 1}"} for d in new],
            )  # fmt: skip

    def _dispatch(self, conn: Connection, r, now: int) -> list[commands.Outgoing]:
        """Queue and sign the install command of queued devices in waves up to the current one,
        within the rate limit."""
        if self.secret is None:
            return []
        sent_last_minute = conn.execute(
            sa.select(sa.func.count()).where(
                ROLLOUT_DEVICES.c.rollout_id == r.id, ROLLOUT_DEVICES.c.sent_ms > now - 60_000
            )
        ).scalar()
        budget = r.rate_per_min - sent_last_minute
        if budget <= 0:
            return []
        may, until = gate.may_send(conn, r, now)  # the schedule: True, False or a condition
        gate.log_change(conn, r, may, now, self._held)
        if may is False:
            return []
        rows = conn.execute(
            sa.select(
                ROLLOUT_DEVICES.c.device_id,
                ROLLOUT_DEVICES.c.attempt,
                DEVICES.c.name,
                DEVICES.c.fleet,
                DEVICES.c.online,
            )
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .where(
                ROLLOUT_DEVICES.c.rollout_id == r.id,
                ROLLOUT_DEVICES.c.state == "queued",
                ROLLOUT_DEVICES.c.wave <= r.wave,
                *([] if may is True else [may]),
            )
            .order_by(ROLLOUT_DEVICES.c.wave, DEVICES.c.online.desc(), ROLLOUT_DEVICES.c.device_id)
            .limit(budget)
        ).all()
        if not rows:
            return []
        if r.bundle_id is not None:
            kind, args = ota.KIND_INSTALL, ota.install_args(self._bundle(conn, r))
        else:
            kind = "install_workflow"
            wf = conn.execute(
                sa.select(WORKFLOWS.c.blob, WORKFLOWS.c.hash).where(WORKFLOWS.c.id == r.workflow_id)
            ).first()
            args = {
                "blob": base64.b64encode(wf.blob).decode(),
                "sha256": wf.hash,
                "health_s": r.health_s,
            }
        ttl = max(60, min(r.timeout_s, codec.MAX_LIFETIME))
        out, updates, logs = [], [], []
        ids = [f"rollout:{r.id}:{m.device_id}:{m.attempt + 1}" for m in rows]
        queued = self._queue_installs(conn, r, rows, ids, kind, args, now, ttl, gate.away_ttl(ttl, until, now))
        offline = "offline: the command waits for its pull"
        for m, cmd_id, o in zip(rows, ids, queued, strict=True):
            state = "sent" if m.online else "offline-pending"
            updates.append((state, m.attempt + 1, cmd_id, now, now, None if m.online else offline,
                            r.id, m.device_id))  # fmt: skip
            logs.append((r.id, m.device_id, now, state, cmd_id))
            if o is not None and m.online:
                out.append(o)
        # a wave's rows as plain tuples through the driver's executemany: no statement built
        # or parameter dict processed per member
        _many(conn, "UPDATE rollout_devices SET state = ?, attempt = ?, command_id = ?, sent_ms = ?,"
                    " updated_ms = ?, detail = ? WHERE rollout_id = ? AND device_id = ?", updates)  # fmt: skip
        _many(conn, "INSERT INTO rollout_log (rollout_id, device_id, at_ms, event, detail)"
                    " VALUES (?, ?, ?, ?, ?)", logs)  # fmt: skip
        if r.bundle_id is not None:  # a fresh download: it starts where the board's ack says
            _many(conn, "UPDATE rollout_devices SET dl_chunks = ?, dl_next = NULL, dl_sent = NULL,"
                        " dl_ms = ? WHERE rollout_id = ? AND device_id = ?",
                  [(args["chunks"], now, r.id, m.device_id) for m in rows])  # fmt: skip
        return out

    def _queue_installs(self, conn: Connection, r, rows, ids, kind, args, now, ttl, away_ttl):
        """``commands.queue_many`` for the members ``rows``; an offline member's command lives
        ``away_ttl`` (when its window closes: ``gate.away_ttl``), an online one's ``ttl``."""
        queued: list = [None] * len(rows)
        for online, life in ((True, ttl), (False, away_ttl)) if away_ttl != ttl else ((None, ttl),):
            idx = [i for i, m in enumerate(rows) if online is None or bool(m.online) == online]
            got = commands.queue_many(conn, self.secret, [(rows[i].device_id, rows[i].name, rows[i].fleet, ids[i]) for i in idx],
                                      kind=kind, args=args, source=f"rollout:{r.id}", now_ms=now, ttl_s=life,
                                      sent_by=r.created_by)  # fmt: skip
            for i, o in zip(idx, got, strict=True):
                queued[i] = o
        return queued

    def counts(self, conn: Connection, rid: int, upto_wave: int | None = None) -> Counter:
        """Device states of a rollout (waves up to ``upto_wave`` if given)."""
        q = sa.select(ROLLOUT_DEVICES.c.state, sa.func.count()).where(
            ROLLOUT_DEVICES.c.rollout_id == rid
        )
        if upto_wave is not None:
            q = q.where(ROLLOUT_DEVICES.c.wave <= upto_wave)
        return Counter(dict(conn.execute(q.group_by(ROLLOUT_DEVICES.c.state)).all()))

    def _evaluate(self, conn: Connection, r, now: int, c: Counter | None = None) -> None:
        # ``c``: the members' states up to the current wave, if counted since the last change
        waves = json.loads(r.waves)
        c = self.counts(conn, r.id, r.wave) if c is None else c
        failed = sum(c[s] for s in FAILED)
        done = c["succeeded"] + failed
        online_members = sum(c.values()) - c["offline-pending"] - c["canceled"]
        if failed and done >= r.min_devices and 100 * failed / done > r.max_fail_pct:
            why = f"failure threshold: {failed} of {done} decided devices failed ({100 * failed / done:.1f}% > {r.max_fail_pct:g}%)"
            self._pause(conn, r, why)
            return
        pending = c["queued"] + c["sent"] + c["acked"] + c["installing"]
        rate = 100 * c["succeeded"] / online_members if online_members else 100.0
        if rate < r.success_pct:
            if pending == 0 and online_members:
                self._pause(
                    conn,
                    r,
                    f"wave {r.wave + 1} ended below the success threshold: {c['succeeded']} of {online_members} ({rate:.1f}% < {r.success_pct:g}%)",
                )
            return
        if r.wave_met_ms is None:
            conn.execute(sa.update(ROLLOUTS).where(ROLLOUTS.c.id == r.id).values(wave_met_ms=now))
            self._log(
                conn,
                r.id,
                "wave-met",
                f"wave {r.wave + 1}: {c['succeeded']} of {online_members} succeeded ({rate:.1f}%); soaking {r.soak_s}s",
            )
            self._baseline(conn, r)
            return
        if now - r.wave_met_ms < r.soak_s * 1000:
            return
        evidence = self.health_gate(conn, r)
        if evidence.get("regressed"):
            self._pause(conn, r, "health gate: " + "; ".join(evidence["regressed"]))
            return
        if r.wave + 1 >= len(waves):
            if not self._waiting_online(conn, r.id):
                self._settle(conn, r, now)
        else:
            conn.execute(
                sa.update(ROLLOUTS)
                .where(ROLLOUTS.c.id == r.id)
                .values(wave=r.wave + 1, wave_met_ms=None)
            )
            self._log(conn, r.id, "wave-advanced", f"wave {r.wave + 2} of {len(waves)} starts")

    def _waiting_online(self, conn: Connection, rid: int) -> int:
        """Members still waiting for a result that may come now: queued, or in flight on a
        device that is online (an offline device never holds a rollout up)."""
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(ROLLOUT_DEVICES)
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .where(
                ROLLOUT_DEVICES.c.rollout_id == rid,
                ROLLOUT_DEVICES.c.state.in_(WAITING),
                sa.or_(ROLLOUT_DEVICES.c.state == "queued", DEVICES.c.online.is_(True)),
            )
        ).scalar_one()

    def _settle(self, conn: Connection, r, now: int) -> None:
        """End rollout ``r`` (or correct how it ended): ``finished`` if no member failed, was
        rejected or timed out, else ``partial`` with the reason."""
        c = self.counts(conn, r.id)
        failed = sum(c[s] for s in FAILED)
        state, why = ("partial", self._failures(conn, r, c)) if failed else ("finished", None)
        if r.state == state and r.reason == why:
            return
        values: dict = {"state": state, "reason": why}
        if r.state not in ENDED:
            values["finished_ms"] = now
        conn.execute(sa.update(ROLLOUTS).where(ROLLOUTS.c.id == r.id).values(**values))
        if r.state != state:
            text = self.summary(conn, r.id)["converged_text"]
            self._log(conn, r.id, state, text + (f"; {why}" if why else ""))
            jlog(f"rollout_{state}", rollout=r.id, reason=why)

    def _failures(self, conn: Connection, r, c: Counter) -> str:
        """Why a rollout is partial: how many members failed, how, and the commonest reason."""
        failed = sum(c[s] for s in FAILED)
        what = self._subject(conn, r)
        how = ", ".join(f"{c[s]} {s}" for s in FAILED if c[s])
        detail = conn.execute(
            sa.select(ROLLOUT_DEVICES.c.detail)
            .where(ROLLOUT_DEVICES.c.rollout_id == r.id, ROLLOUT_DEVICES.c.state.in_(FAILED))
            .group_by(ROLLOUT_DEVICES.c.detail)
            .order_by(sa.func.count().desc(), ROLLOUT_DEVICES.c.detail)
            .limit(1)
        ).scalar()
        return (
            f"{failed} of {sum(c.values())} device(s) did not take {what} ({how})"
            + (f": {detail}" if detail else "")
        )

    def _pause(self, conn: Connection, r, why: str) -> None:
        conn.execute(
            sa.update(ROLLOUTS).where(ROLLOUTS.c.id == r.id).values(state="paused", reason=why)
        )
        self._log(conn, r.id, "auto-paused", why)
        jlog("rollout_paused", rollout=r.id, reason=why)

    # --- health gate ---------------------------------------------------------------------------

    def _baseline(self, conn: Connection, r) -> None:
        health.snapshot_baseline(conn, r.id, self.pg)

    def health_gate(self, conn: Connection, r) -> dict:
        """The health gate's evidence for rollout row ``r`` (see ``health.gate``)."""
        return health.gate(conn, r, self.significance)

    # --- reporting -----------------------------------------------------------------------------

    def _downloads(self, conn: Connection, r) -> list[dict]:
        return [] if r.bundle_id is None else _downloads_of(conn, r.id)

    def summary(self, conn: Connection, rid: int) -> dict:
        """Counts, per-wave progress and the converged/offline-pending line."""
        r = self._rollout(conn, rid)
        waves = json.loads(r.waves)
        per_wave = []
        for w in range(len(waves)):
            c = Counter(dict(conn.execute(
                sa.select(ROLLOUT_DEVICES.c.state, sa.func.count()).where(ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.wave == w).group_by(ROLLOUT_DEVICES.c.state)
            ).all()))  # fmt: skip
            per_wave.append(
                {"wave": w + 1, "size": waves[w], "total": sum(c.values()), "states": dict(c)}
            )
        total = self.counts(conn, rid)
        n = sum(total.values())
        conv = total["succeeded"]
        return {
            "id": rid,
            "workflow": self._subject(conn, r),  # NAME@VERSION, of a bundle for kind "bundle"
            "kind": "workflow" if r.bundle_id is None else "bundle",
            "downloads": self._downloads(conn, r),
            "target": r.target,
            "state": r.state,
            "reason": r.reason,
            "wave": r.wave + 1,
            "waves": per_wave,
            "states": dict(total),
            "devices": n,
            "converged_pct": round(100 * conv / n, 1) if n else 0.0,
            "offline_pending": total["offline-pending"],
            "converged_text": f"converged {100 * conv / n if n else 0:.0f}%, {total['offline-pending']} offline pending",
            "schedule": gate.status(conn, r, self.clock()),
            **self._safe_waits(conn, rid),
            "preview_gate": r.preview_gate,
            "preview": stored.view(conn, rid) if r.preview_ms is not None else None,
        }

    def _safe_waits(self, conn: Connection, rid: int, most: int = 20) -> dict:
        """The members whose board waits for a safe state before it installs (its command acked
        IN_PROGRESS ``commands.SAFE_WAIT``, seen before the next tick moves the member on): how
        many, and up to ``most`` of them."""
        q = (
            sa.select(DEVICES.c.name, COMMANDS.c.ack_detail, COMMANDS.c.acked_ms)
            .select_from(ROLLOUT_DEVICES)
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .join(COMMANDS, COMMANDS.c.id == ROLLOUT_DEVICES.c.command_id)
            .where(
                ROLLOUT_DEVICES.c.rollout_id == rid,
                ROLLOUT_DEVICES.c.state.in_(IN_FLIGHT),
                COMMANDS.c.status == "acked",
                COMMANDS.c.ack_code == codec.IN_PROGRESS,
                COMMANDS.c.ack_detail.startswith(commands.SAFE_WAIT, autoescape=True),
            )
        )
        rows = conn.execute(q.order_by(COMMANDS.c.acked_ms, DEVICES.c.name)).all()
        return {
            "waiting_safe": len(rows),
            "waiting_safe_devices": [
                {"device": x.name, "detail": x.ack_detail, "since": iso(x.acked_ms)}
                for x in rows[:most]
            ],
        }

    def detail(self, conn: Connection, rid: int) -> dict:
        """What the console's rollout page shows beyond ``summary``: the soak of the current
        wave (``soak``: when it started and ends, seconds left; None while the wave has not
        met its threshold) and the health gate's evidence (``health``: upgraded vs control
        per metric). Its members one by one: ``rollout.members``."""
        r = self._rollout(conn, rid)
        soak = None
        if r.wave_met_ms is not None and r.state in ACTIVE_ROLLOUT:
            ends = r.wave_met_ms + r.soak_s * 1000
            soak = {"wave": r.wave + 1, "since": iso(r.wave_met_ms), "ends": iso(ends),
                    "soak_s": r.soak_s, "left_s": max(0, round((ends - self.clock()) / 1000))}  # fmt: skip
        return {"soak": soak, "health": self.health_gate(conn, r)}


def refusal(ref: str, why: dict[str, str], of: int) -> str:
    """One line refusing bundle ``ref`` for the devices ``why`` names (name: reason)."""
    first = "; ".join(f"{n}: {w}" for n, w in list(why.items())[:5])
    more = f"; … (+{len(why) - 5} more)" if len(why) > 5 else ""
    return (
        f"bundle {ref} cannot run on {len(why)} of the {of} target device(s), nothing was sent: "
        f"{first}{more}"
    )


def _downloads_of(conn: Connection, rid: int) -> list[dict]:
    """Members of bundle rollout ``rid`` downloading now: device, chunk K/N (by device name)."""
    rows = conn.execute(
        sa.select(DEVICES.c.name, ROLLOUT_DEVICES.c.dl_next, ROLLOUT_DEVICES.c.dl_chunks,
                  ROLLOUT_DEVICES.c.state)
        .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
        .where(ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.dl_chunks.is_not(None),
               ROLLOUT_DEVICES.c.state.in_(IN_FLIGHT),
               sa.or_(ROLLOUT_DEVICES.c.dl_next.is_(None),
                      ROLLOUT_DEVICES.c.dl_next < ROLLOUT_DEVICES.c.dl_chunks))
        .order_by(DEVICES.c.name)
    ).all()  # fmt: skip
    return [
        {"device": n, "next": k or 0, "chunks": c, "progress": f"chunk {k or 0}/{c}", "state": st}
        for n, k, c, st in rows
    ]


def _many(conn: Connection, sql: str, rows: list[tuple]) -> None:
    # one statement (``?`` placeholders) for every row, by the driver's executemany
    if rows:
        conn.exec_driver_sql(sql.replace("?", "%s") if conn.dialect.name == "postgresql" else sql, rows)


def _copy_text(v: str | int | None) -> str:
    # a value in COPY's text format
    if v is None:
        return "\\N"
    v = str(v)
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:
        v = v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return v


def rollout_ids(conn: Connection) -> list[int]:
    """Every rollout's id, newest first."""
    return list(conn.execute(sa.select(ROLLOUTS.c.id).order_by(ROLLOUTS.c.id.desc())).scalars())


def audit_log(conn: Connection, rid: int) -> list[dict] | None:
    """Rollout ``rid``'s audit log, oldest first (``by``: who made each change, None for the
    orchestrator); None if there is no such rollout."""
    if conn.execute(sa.select(ROLLOUTS.c.id).where(ROLLOUTS.c.id == rid)).first() is None:
        return None
    names = dict(conn.execute(sa.select(DEVICES.c.id, DEVICES.c.name)).all())
    return [
        {"at": iso(r.at_ms), "device": names.get(r.device_id), "event": r.event, "detail": r.detail,
         "by": r.actor}
        for r in conn.execute(
            sa.select(ROLLOUT_LOG).where(ROLLOUT_LOG.c.rollout_id == rid).order_by(ROLLOUT_LOG.c.id)
        )
    ]
