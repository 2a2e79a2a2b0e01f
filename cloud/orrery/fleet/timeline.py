"""One device's history from what the companion stores, and what ``devices show`` adds to its
registry row: tags, its workflow state, its rollouts.

``timeline`` merges, per device: boots (``device_sessions``), workflow events and the state
changes they show (``events``), the board's own log lines (``device_logs``: its warnings,
errors and state changes), commands and what became of them (``commands``: queued, last
published, acked or expired; operator commands with who sent them), installs (the rollout audit
log's lines for the device), losses and gaps (the loss ledger), live alerts and dead letters.
Each entry carries its time and where that time comes from (``TIME_SOURCES``): the board's own
clock where the entry has an event time (its boot's time anchor), else when the companion
received it from the board, or when the companion recorded something it did itself.

Every function takes a Connection and returns plain data, for the CLI and the HTTP API alike.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso, parse_instant
from cloud.orrery.db.tables import (
    ALERTS,
    BUNDLES,
    COMMANDS,
    DEAD_LETTERS,
    DEVICE_LOGS,
    DEVICES,
    EVENTS,
    GAPS,
    LOSSES,
    ROLLOUT_DEVICES,
    ROLLOUT_LOG,
    ROLLOUTS,
    SESSIONS,
    TAGS,
    WORKFLOWS,
)
from cloud.orrery.fleet import device_commands
from cloud.orrery.fleet.rollout import plan
from shared.wire import codec

# where an entry's time comes from
EVENT = "event"  # the board's clock: its event time, from its boot's time anchor
RECEIVED = "received"  # the companion's clock when the message came in
RECORDED = "recorded"  # the companion's clock when it did this itself (a command, a rollout step)
TIME_SOURCES = (EVENT, RECEIVED, RECORDED)
# in this order when at the same time: a boot before its events, a gap before its resend, a
# command queued before it is published and acked
KINDS = ("boot", "state", "event", "log", "alert", "loss", "gap", "dead-letter", "command", "install",
         "sent", "ack", "expired")  # fmt: skip
DEFAULT_LIMIT = 200


class TimelineError(ValueError):
    """A bad request (an unknown device, a bad ``--since``); the message says why, in one line."""


@dataclass
class Entry:
    """One thing that happened to a device: ``at_ms`` (unix ms) by ``time_source``, its
    ``kind`` (``KINDS``), a line for a person, and its fields as data."""

    at_ms: int
    time_source: str
    kind: str
    summary: str
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The entry as JSON-ready data, its time as ISO 8601 (``at``) and unix ms."""
        return {"at": iso(self.at_ms), **asdict(self)}


# --- inputs ----------------------------------------------------------------------------------

def parse_since(text: str, now_ms: int, name: str = "--since") -> int:
    """``--since`` (or the option ``name``): a duration back from ``now_ms`` (``90s``, ``10m``,
    ``24h``, ``7d``), an ISO 8601 time (naive = UTC) or unix seconds -> unix ms. TimelineError
    for anything else."""
    if re.fullmatch(r"\d+[smhd]", text.strip()):  # a plain number is unix seconds here
        return now_ms - plan.parse_duration(text, name) * 1000
    try:
        return parse_instant(text)
    except (ValueError, OverflowError, OSError):
        raise TimelineError(
            f"{name}: {text!r} is neither a duration (90s, 10m, 24h, 7d), an ISO 8601 time "
            "(2026-11-21T10:00:00) nor unix seconds"
        ) from None


def device_ref(conn: Connection, name: str) -> tuple[int, str]:
    """``(id, name)`` of device ``name``; TimelineError when it is not registered."""
    did = conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == name)).scalar()
    if did is None:
        raise TimelineError(f"unknown device {name!r} (see `orrery devices list`)")
    return did, name


# --- what ``devices show`` adds ----------------------------------------------------------------


def tags(conn: Connection, device: int) -> dict[str, str]:
    """A device's tags, by key."""
    q = sa.select(TAGS.c.key, TAGS.c.value).where(TAGS.c.device_id == device).order_by(TAGS.c.key)
    return dict(conn.execute(q).all())


def workflow_state(conn: Connection, device: int) -> dict | None:
    """The workflow state the device last reported: the state of its newest event (boards
    report their state with each event, not on their own), when that was, and whether it is
    of the boot the device runs now (after a reboot the workflow starts again). None when the
    device never sent an event."""
    r = conn.execute(
        sa.select(
            EVENTS.c.boot, EVENTS.c.state, EVENTS.c.event, EVENTS.c.event_ms, EVENTS.c.received_ms
        )
        .select_from(
            EVENTS.outerjoin(
                SESSIONS,
                sa.and_(SESSIONS.c.device_id == EVENTS.c.device_id, SESSIONS.c.boot == EVENTS.c.boot),
            )
        )
        .where(EVENTS.c.device_id == device)
        # the newest boot as the companion first saw it (boot ids are random), then its last event
        .order_by(
            sa.func.coalesce(SESSIONS.c.first_seen_ms, EVENTS.c.received_ms).desc(),
            EVENTS.c.seq.desc(),
        )
        .limit(1)
    ).first()
    if r is None:
        return None
    boot = conn.execute(sa.select(DEVICES.c.boot).where(DEVICES.c.id == device)).scalar()
    at, src = (r.event_ms, EVENT) if r.event_ms is not None else (r.received_ms, RECEIVED)
    return {
        "state": r.state,
        "event": r.event,
        "at": iso(at),
        "time_source": src,
        "boot": r.boot,
        "current_boot": r.boot == boot,
    }


# what a rollout rolls out: a workflow version or an app bundle (rollouts.bundle_id)
_SUBJECT = (
    WORKFLOWS.c.name.label("wf_name"),
    WORKFLOWS.c.version.label("wf_version"),
    BUNDLES.c.name.label("b_name"),
    BUNDLES.c.version.label("b_version"),
)


def _what(r) -> str:
    # NAME@VERSION of a row selected with _SUBJECT
    if r.wf_name is not None:
        return f"{r.wf_name}@{r.wf_version}"
    return f"{r.b_name}@{r.b_version}"


def rollout_history(conn: Connection, device: int) -> list[dict]:
    """Every rollout the device was a member of, oldest first: the workflow version it
    installed, the rollout's state, the device's state in it and the reason (its last
    detail), its wave and attempts, and when its state last changed."""
    q = (
        sa.select(
            ROLLOUTS.c.id,
            ROLLOUTS.c.state.label("rollout_state"),
            ROLLOUTS.c.created_by,
            *_SUBJECT,
            ROLLOUT_DEVICES.c.state,
            ROLLOUT_DEVICES.c.wave,
            ROLLOUT_DEVICES.c.attempt,
            ROLLOUT_DEVICES.c.detail,
            ROLLOUT_DEVICES.c.prev_wf,
            ROLLOUT_DEVICES.c.prev_ver,
            ROLLOUT_DEVICES.c.prev_fw,
            ROLLOUT_DEVICES.c.updated_ms,
        )
        .join(ROLLOUTS, ROLLOUTS.c.id == ROLLOUT_DEVICES.c.rollout_id)
        .outerjoin(WORKFLOWS, WORKFLOWS.c.id == ROLLOUTS.c.workflow_id)
        .outerjoin(BUNDLES, BUNDLES.c.id == ROLLOUTS.c.bundle_id)
        .where(ROLLOUT_DEVICES.c.device_id == device)
        .order_by(ROLLOUTS.c.id)
    )
    return [
        {
            "rollout": r.id,
            "workflow": _what(r),  # NAME@VERSION of the workflow, or of the bundle
            "from": (None if r.prev_wf is None else f"{r.prev_wf}@{r.prev_ver}")
            if r.wf_name is not None
            else (None if r.prev_fw is None else f"{r.b_name}@{r.prev_fw}"),
            "rollout_state": r.rollout_state,
            "state": r.state,
            "reason": r.detail,
            "wave": r.wave + 1,
            "attempts": r.attempt,
            "updated": iso(r.updated_ms),
            "created_by": r.created_by,
        }
        for r in conn.execute(q)
    ]


# --- the timeline, one source at a time --------------------------------------------------------
# Each returns the device's entries at or after ``since_ms`` (None: all), at most ``limit`` of
# the newest, in no particular order; ``timeline`` merges them.


def _newest(q, at, limit: int):
    return q.order_by(at.desc()).limit(limit)


def boot_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """Each boot: when it started on the board's clock (its time anchor minus the uptime it
    was taken at), else when the companion first heard of it."""
    start = SESSIONS.c.anchor_unix_ms - SESSIONS.c.anchor_up_ms
    at = sa.func.coalesce(start, SESSIONS.c.first_seen_ms)
    q = sa.select(SESSIONS, at.label("at")).where(SESSIONS.c.device_id == device)
    if since_ms is not None:
        q = q.where(at >= since_ms)
    out = []
    for s in conn.execute(_newest(q, at, limit)):
        seqs = "" if s.first_seq is None else f", seqs {s.first_seq}..{s.last_seq}"
        anchor = "no time anchor" if s.anchor_unix_ms is None else "time anchor known"
        out.append(
            Entry(
                s.at,
                EVENT if s.anchor_unix_ms is not None else RECEIVED,
                "boot",
                f"boot {s.boot} ({anchor}{seqs})",
                {
                    "boot": s.boot,
                    "first_seen": iso(s.first_seen_ms),
                    "last_seen": iso(s.last_seen_ms),
                    "clock_offset_ms": s.clock_offset_ms,
                    "seqs": None if s.first_seq is None else [s.first_seq, s.last_seq],
                },
            )
        )
    return out


def event_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """Workflow events, and a ``state`` entry where an event shows the workflow in another
    state than the device's event before it (the first event of a boot: the state it is in
    after starting). Boards send events with their state, not state changes as such: the
    change happened between the two events, at the latest at the first event in the new
    state, which is the time the entry gets."""
    at = sa.func.coalesce(EVENTS.c.event_ms, EVENTS.c.received_ms)
    q = sa.select(EVENTS, at.label("at")).where(EVENTS.c.device_id == device)
    if since_ms is not None:
        q = q.where(at >= since_ms)
    rows = sorted(conn.execute(_newest(q, at, limit)).all(), key=lambda r: (r.boot, r.seq))
    if not rows:
        return []
    before = conn.execute(  # the event before the first one here: what it changed from
        sa.select(EVENTS.c.boot, EVENTS.c.state)
        .where(
            EVENTS.c.device_id == device,
            sa.tuple_(EVENTS.c.boot, EVENTS.c.seq) < sa.tuple_(rows[0].boot, rows[0].seq),
        )
        .order_by(EVENTS.c.boot.desc(), EVENTS.c.seq.desc())
        .limit(1)
    ).first()
    prev = None if before is None else (before.boot, before.state)
    out = []
    for e in rows:
        src = EVENT if e.event_ms is not None else RECEIVED
        if prev is None or prev != (e.boot, e.state):
            was = prev[1] if prev is not None and prev[0] == e.boot else None
            out.append(
                Entry(
                    e.at,
                    src,
                    "state",
                    f"workflow in state {e.state}"
                    + (f" (was {was})" if was else f" (boot {e.boot})"),
                    {"state": e.state, "was": was, "boot": e.boot, "seq": e.seq},
                )
            )
        prev = (e.boot, e.state)
        value = "" if e.value is None else f" = {e.value}"
        out.append(
            Entry(
                e.at,
                src,
                "event",
                f"event {e.event}{value} in {e.state}",
                {
                    "event": e.event,
                    "state": e.state,
                    "value": e.value,
                    "boot": e.boot,
                    "seq": e.seq,
                    "received": iso(e.received_ms),
                },
            )
        )
    return out


def _command_text(kind: str, args: dict | None) -> str:
    if args is None:
        return kind
    if kind == "run_command":
        return f"run {args.get('name')}"
    if kind == "set_config":
        return "config " + ", ".join(args.get("changes", []))
    if kind == "cancel" and args.get("id"):
        return f"cancel {args['id']}"
    return kind


def command_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """Each command to the device: queued (by whom, for what: an operator, a rollout, a resend),
    last published, its ack's result (the last one recorded), or its expiry."""
    c = COMMANDS.c
    cols = (
        c.id,
        c.kind,
        c.status,
        c.source,
        c.sent_by,
        c.created_ms,
        c.sent_ms,
        c.sends,
        c.acked_ms,
        c.ack_code,
        c.ack_detail,
        c.exp,
    )
    q = sa.select(*cols).where(c.device_id == device)
    if since_ms is not None:  # anything of it in the window: queued, published, acked, expired
        q = q.where(
            sa.or_(
                c.created_ms >= since_ms,
                c.sent_ms >= since_ms,
                c.acked_ms >= since_ms,
                sa.and_(c.status == "expired", c.exp * 1000 >= since_ms),
            )
        )
    q = q.order_by(c.created_ms.desc(), c.id.desc()).limit(limit)
    out = []
    for r in conn.execute(q):
        args = None
        if r.source == device_commands.SOURCE:  # an operator's: what was sent, as shown to all
            args = device_commands.show(conn, r.id)["args"]
        what = _command_text(r.kind, args)
        base = {
            "id": r.id,
            "kind": r.kind,
            "source": r.source,
            "sent_by": r.sent_by,
            "state": r.status,
        }
        by = f" by {r.sent_by}" if r.sent_by else ""
        out.append(
            Entry(
                r.created_ms,
                RECORDED,
                "command",
                f"{what} queued ({r.source}{by}) {r.id}",
                {**base, "args": args},
            )
        )
        if r.sent_ms is not None:
            out.append(
                Entry(
                    r.sent_ms,
                    RECORDED,
                    "sent",
                    f"{what} published (last of {r.sends}) {r.id}",
                    {**base, "sends": r.sends},
                )
            )
        if r.acked_ms is not None:
            result = codec.ACK_NAMES.get(r.ack_code, str(r.ack_code))
            detail = f": {r.ack_detail}" if r.ack_detail else ""
            out.append(
                Entry(
                    r.acked_ms,
                    RECEIVED,
                    "ack",
                    f"{what} acked {result}{detail} -> {r.status} {r.id}",
                    {**base, "result": result, "code": r.ack_code, "detail": r.ack_detail},
                )
            )
        elif r.status == "expired":
            out.append(
                Entry(r.exp * 1000, RECORDED, "expired", f"{what} expired unanswered {r.id}", base)
            )
    return [e for e in out if since_ms is None or e.at_ms >= since_ms]


def install_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """The rollout audit log's lines for the device: each state it went through in each
    rollout (queued again, sent, installing, succeeded, failed …), with the reason and who
    acted (None: the orchestrator)."""
    q = (
        sa.select(ROLLOUT_LOG, *_SUBJECT)
        .join(ROLLOUTS, ROLLOUTS.c.id == ROLLOUT_LOG.c.rollout_id)
        .outerjoin(WORKFLOWS, WORKFLOWS.c.id == ROLLOUTS.c.workflow_id)
        .outerjoin(BUNDLES, BUNDLES.c.id == ROLLOUTS.c.bundle_id)
        .where(ROLLOUT_LOG.c.device_id == device)
    )
    if since_ms is not None:
        q = q.where(ROLLOUT_LOG.c.at_ms >= since_ms)
    q = q.order_by(ROLLOUT_LOG.c.at_ms.desc(), ROLLOUT_LOG.c.id.desc()).limit(limit)
    return [
        Entry(
            r.at_ms,
            RECORDED,
            "install",
            f"rollout {r.rollout_id} ({_what(r)}): {r.event}"
            + (f": {r.detail}" if r.detail else "")
            + (f" by {r.actor}" if r.actor else ""),
            {
                "rollout": r.rollout_id,
                "workflow": _what(r),
                "state": r.event,
                "detail": r.detail,
                "actor": r.actor,
            },
        )
        for r in conn.execute(q)
    ]


def loss_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """The loss ledger: readings that will never arrive (reported by the board, or given up
    by the companion), and gaps: readings missing that may still come (pending, requested by
    a resend, or an anomaly too large to be true), when each was detected."""
    q = sa.select(LOSSES).where(LOSSES.c.device_id == device)
    g = sa.select(GAPS).where(GAPS.c.device_id == device)
    if since_ms is not None:
        q = q.where(LOSSES.c.reported_ms >= since_ms)
        g = g.where(GAPS.c.detected_ms >= since_ms)
    out = [
        Entry(
            r.reported_ms,
            RECEIVED if r.source == "device" else RECORDED,
            "loss",
            f"lost seqs {r.first}..{r.last} ({r.last - r.first + 1}): {r.reason}, by the {r.source}"
            + ("" if r.boot is None else f" (boot {r.boot})"),
            {
                "first": r.first,
                "last": r.last,
                "reason": r.reason,
                "source": r.source,
                "boot": r.boot,
            },
        )
        for r in conn.execute(_newest(q, LOSSES.c.reported_ms, limit))
    ]
    out += [
        Entry(
            r.detected_ms,
            RECORDED,
            "gap",
            f"gap seqs {r.first}..{r.last} ({r.last - r.first + 1}) {r.status}: {r.reason}",
            {
                "first": r.first,
                "last": r.last,
                "status": r.status,
                "reason": r.reason,
                "attempts": r.attempts,
                "command": r.command_id,
                "updated": iso(r.updated_ms),
            },
        )
        for r in conn.execute(_newest(g, GAPS.c.detected_ms, limit))
    ]
    return out


def log_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """The board's log lines (``up/log``): its warnings, errors and workflow state changes."""
    at = sa.func.coalesce(DEVICE_LOGS.c.event_ms, DEVICE_LOGS.c.received_ms)
    q = sa.select(DEVICE_LOGS, at.label("at")).where(DEVICE_LOGS.c.device_id == device)
    if since_ms is not None:
        q = q.where(at >= since_ms)
    return [
        Entry(
            r.at,
            EVENT if r.event_ms is not None else RECEIVED,
            "log",
            f"{r.level}: {r.text}",
            {"level": r.level, "code": r.code, "a": r.a, "b": r.b, "boot": r.boot, "seq": r.seq},
        )
        for r in conn.execute(_newest(q, at, limit))
    ]


def alert_entries(conn: Connection, device: int, since_ms: int | None, limit: int) -> list[Entry]:
    """Live alerts: a live reading crossed a rule (at the reading's event time if known)."""
    at = sa.func.coalesce(ALERTS.c.event_ms, ALERTS.c.created_ms)
    q = sa.select(ALERTS, at.label("at")).where(ALERTS.c.device_id == device)
    if since_ms is not None:
        q = q.where(at >= since_ms)
    return [
        Entry(
            r.at,
            EVENT if r.event_ms is not None else RECEIVED,
            "alert",
            f"alert {r.rule}: reading {r.value} (boot {r.boot}, seq {r.seq})",
            {"rule": r.rule, "value": r.value, "boot": r.boot, "seq": r.seq},
        )
        for r in conn.execute(_newest(q, at, limit))
    ]


def dead_letter_entries(
    conn: Connection, name: str, since_ms: int | None, limit: int
) -> list[Entry]:
    """Messages from the device (by its id in their topic) that the ingest refused, and why."""
    q = sa.select(
        DEAD_LETTERS.c.id,
        DEAD_LETTERS.c.received_ms,
        DEAD_LETTERS.c.topic,
        DEAD_LETTERS.c.reason,
        DEAD_LETTERS.c.size,
    ).where(DEAD_LETTERS.c.device == name)
    if since_ms is not None:
        q = q.where(DEAD_LETTERS.c.received_ms >= since_ms)
    return [
        Entry(
            r.received_ms,
            RECEIVED,
            "dead-letter",
            f"dead letter on {r.topic.rsplit('/', 1)[-1]} ({r.size} bytes): {r.reason}",
            {"id": r.id, "topic": r.topic, "reason": r.reason, "size": r.size},
        )
        for r in conn.execute(_newest(q, DEAD_LETTERS.c.received_ms, limit))
    ]


_ORDER = {k: i for i, k in enumerate(KINDS)}


def timeline(
    conn: Connection, name: str, since_ms: int | None = None, limit: int = DEFAULT_LIMIT
) -> list[Entry]:
    """Device ``name``'s history, oldest first: its newest ``limit`` entries at or after
    ``since_ms`` (None: from the start). TimelineError for an unknown device or a ``limit``
    below 1.

    Times from the board's clock (``EVENT``) are its own: a board whose clock is off (``devices
    show`` gives the offset) places them that far off the companion's."""
    if limit < 1:
        raise TimelineError(f"--limit: {limit} must be at least 1")
    did, name = device_ref(conn, name)
    entries: list[Entry] = []
    for source in (
        boot_entries,
        event_entries,
        log_entries,
        command_entries,
        install_entries,
        loss_entries,
        alert_entries,
    ):
        entries += source(conn, did, since_ms, limit)
    entries += dead_letter_entries(conn, name, since_ms, limit)
    entries.sort(key=lambda e: (e.at_ms, _ORDER[e.kind]))
    return entries[-limit:]
