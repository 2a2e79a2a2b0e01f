"""Replaying stored readings through the shared executor: what a workflow version did, or would
have done, with a device's readings."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import EVENTS, READINGS


@dataclass
class Trace:
    """What a workflow version did (or would have done) with a stream of readings."""

    version: str
    transitions: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    final_state: str | None = None
    note: str | None = None


class _Host:
    def __init__(self, trace: Trace, prog, now):
        self.trace, self.prog, self.now = trace, prog, now

    def output(self, i, v):
        self.trace.outputs.append(
            {"t": self.now(), "output": self.prog.output_names[i], "value": v}
        )

    def publish(self, i, v):
        self.trace.events.append({"t": self.now(), "event": self.prog.event_names[i], "value": v})

    def set_period(self, i, ms):
        pass


def replay(
    blob: bytes, readings: list[tuple[int, int, int]], channel_names: list[str], same_filters: bool
) -> Trace:
    """Run a compiled workflow over ``readings`` ((t_ms, channel index, value), time-ordered).

    The stored readings are the running version's filtered values: when this version has the
    same filter chains they go straight to the executor (an exact replay); otherwise they are
    run through this version's filters (an approximation, said in ``note``).
    """
    from shared.workflow.executor import Executor
    from shared.workflow.form import EV_SAMPLE
    from shared.workflow.program import Program

    prog = Program(blob)
    trace = Trace(f"{prog.name}@{prog.version}")
    now = [0]
    ex = Executor(prog, _Host(trace, prog, lambda: now[0]), lambda: now[0] & 0x3FFFFFFF)
    inputs: dict[int, list[int]] = {}
    for i, ch in enumerate(prog.input_channels):
        if ch in channel_names:
            inputs.setdefault(channel_names.index(ch), []).append(i)
    if not same_filters:
        trace.note = "filter chains differ from the running version: stored (filtered) readings were re-filtered"
    state = ex.state
    if readings:
        now[0] = readings[0][0]
    ex.start()

    def mark():
        nonlocal state
        if ex.state != state:
            trace.transitions.append(
                {"t": now[0], "from": prog.state_names[state], "to": prog.state_names[ex.state]}
            )
            state = ex.state

    mark()
    for t, ch, value in readings:
        now[0] = t
        ex.tick()
        mark()
        for i in inputs.get(ch, ()):
            if same_filters:
                ex.step(EV_SAMPLE, i, value)
            else:
                ex.feed(i, value)
            mark()
    trace.final_state = prog.state_names[ex.state]
    return trace


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


def stored_stream(
    conn: Connection, device: int, since_ms: int | None = None, until_ms: int | None = None
) -> list[tuple[int, int, int]]:
    """A device's stored readings as ``replay`` takes them: (t_ms, channel, value) by seq, t
    being the event time, or the uptime for readings without a time anchor."""
    q = sa.select(
        READINGS.c.event_ms, READINGS.c.up_ms, READINGS.c.channel, READINGS.c.value
    ).where(READINGS.c.device_id == device)
    if since_ms is not None:
        q = q.where(READINGS.c.event_ms >= since_ms)
    if until_ms is not None:
        q = q.where(READINGS.c.event_ms < until_ms)
    return [
        (r.up_ms if r.event_ms is None else r.event_ms, r.channel, r.value)
        for r in conn.execute(q.order_by(READINGS.c.seq))
    ]


def board_events(conn: Connection, device: int) -> list[dict]:
    """The workflow events a device published, in order."""
    return [
        {"t": e.event_ms, "state": e.state, "event": e.event, "value": e.value}
        for e in conn.execute(
            sa.select(EVENTS)
            .where(EVENTS.c.device_id == device)
            .order_by(EVENTS.c.boot, EVENTS.c.seq)
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
