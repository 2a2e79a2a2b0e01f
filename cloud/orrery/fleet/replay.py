"""Replaying stored readings through the shared executor: what a workflow version did, or would
have done, with a device's readings."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import EVENTS, READINGS, SESSIONS


@dataclass
class Trace:
    """What a workflow version did (or would have done) with a stream of readings."""

    version: str
    transitions: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    final_state: str | None = None
    note: str | None = None


def replay(
    blob: bytes, readings: list[tuple], channel_names: list[str], same_filters: bool
) -> Trace:
    """Run a compiled workflow over ``readings`` with the replay driver
    (``cloud.orrery.fleet.preview.driver``, the board's main loop): stored rows
    ``(boot, up_ms, event_ms, channel index, value, seq)`` in the board's order, as
    ``stored_stream`` gives them, or ``(t_ms, channel index, value)`` taken one boot long with
    ``t_ms`` as both uptime and event time. The executor starts afresh at the first reading.

    The stored readings are the running version's filtered values: when this version has the
    same filter chains they go straight to the executor (an exact replay); otherwise they are
    run through this version's filters (an approximation, said in ``note``).
    """
    from cloud.orrery.fleet.preview.driver import REFILTERED, Side, Version, drive, new_cell

    v = Version(blob, channel_names)
    side = Side(v, new_cell(), refilter=not same_filters, trace=True)
    rows = [r if len(r) >= 5 else (0, r[0], r[0], r[1], r[2]) for r in readings]
    drive(rows, [side], [(None, True)])
    assert side.trace is not None
    return Trace(
        v.ref,
        side.trace["transitions"],
        side.trace["events"],
        side.trace["outputs"],
        v.state_names[side.state],
        None if same_filters else REFILTERED,
    )


def filters_of(blob: bytes) -> list:
    """Each input's channel and filter chain parameters, to compare two versions."""
    from shared.workflow.program import Program

    p = Program(blob)
    return [(p.input_channels[i], list(p.filters(i))) for i in range(len(p.input_names))]


def as_dict(t: Trace) -> dict:
    """A trace as plain data."""
    return {
        "version": t.version,
        "final_state": t.final_state,
        "note": t.note,
        "transitions": t.transitions,
        "events": t.events,
        "outputs": t.outputs,
    }


def in_window(since_ms: int | None, until_ms: int | None):
    """Which readings a window holds: those whose event time is in [since_ms, until_ms), and
    those without one received in it (None: unbounded on that side)."""
    c = READINGS.c
    on_time, received = [c.event_ms.is_not(None)], [c.event_ms.is_(None)]
    if since_ms is not None:
        on_time.append(c.event_ms >= since_ms)
        received.append(c.received_ms >= since_ms)
    if until_ms is not None:
        on_time.append(c.event_ms < until_ms)
        received.append(c.received_ms < until_ms)
    return sa.or_(sa.and_(*on_time), sa.and_(*received))


def stored_stream(
    conn: Connection, device: int, since_ms: int | None = None, until_ms: int | None = None
) -> list[tuple[int, int, int | None, int, int, int]]:
    """A device's stored readings in ``[since_ms, until_ms)`` (``in_window``) as ``replay``
    takes them: ``(boot, up_ms, event_ms, channel, value, seq)`` in the board's order (seq:
    the board numbers readings across boots; boot ids are random)."""
    c = READINGS.c
    q = (
        sa.select(c.boot, c.up_ms, c.event_ms, c.channel, c.value, c.seq)
        .where(c.device_id == device, in_window(since_ms, until_ms))
        .order_by(c.seq)
    )
    return [tuple(r) for r in conn.execute(q)]


def board_events(conn: Connection, device: int) -> list[dict]:
    """The workflow events a device published, in order: its boots as the companion first
    saw them (boot ids are random), then each boot's sequence."""
    e, b = EVENTS.c, SESSIONS.c
    return [
        {"t": r.event_ms, "state": r.state, "event": r.event, "value": r.value}
        for r in conn.execute(
            sa.select(e.event_ms, e.state, e.event, e.value)
            .select_from(
                EVENTS.outerjoin(SESSIONS, sa.and_(b.device_id == e.device_id, b.boot == e.boot))
            )
            .where(e.device_id == device)
            .order_by(b.first_seen_ms, e.boot, e.seq)
        )
    ]


class SimulateError(ValueError):
    """A simulation that cannot run: an unknown device, or its board profile is not valid."""


def simulate(
    conn: Connection,
    ref: str,
    device: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict:
    """Replay ``device``'s stored readings (between ``since_ms`` and ``until_ms``) through
    workflow version ``ref``, and through the version it runs, beside the events the board
    itself published (``workflow simulate``). SimulateError for an unknown device or a bad
    profile; RegistryError for an unknown version."""
    from cloud.orrery.fleet import devices, registry
    from firmware.profile import parse_profile
    from tools.board import profiles

    rows = devices.device_rows(conn, device)
    if not rows:
        raise SimulateError(f"unknown device {device!r} (see `orrery devices list`)")
    d = rows[0]
    did = devices.device_id(conn, device)
    assert did is not None
    new = registry.get(conn, ref)
    cur = registry.get(conn, d["workflow"]) if d["workflow"] else None
    stream = stored_stream(conn, did, since_ms, until_ms)
    actual = board_events(conn, did)
    try:
        channel_names = [
            c[0] for c in parse_profile(profiles.load(d["profile"] or profiles.DEFAULT))[0]
        ]
    except (ValueError, OSError) as exc:
        raise SimulateError(f"device {device}: board profile {d['profile']!r}: {exc}") from None
    same = cur is not None and filters_of(cur.blob) == filters_of(new.blob)
    return {
        "device": device,
        "readings": len(stream),
        "preview": as_dict(replay(new.blob, stream, channel_names, same)),
        "running": as_dict(replay(cur.blob, stream, channel_names, True)) if cur else None,
        "board_events": actual,
    }
