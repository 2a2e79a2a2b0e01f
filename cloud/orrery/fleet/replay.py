"""Replaying stored readings through the shared executor: what a workflow version did, or would
have done, with a device's readings."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    from shared.executor import EV_SAMPLE, Executor
    from shared.program import Program

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
    from shared.program import Program

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
