"""The workflow registry: immutable versions, diffs, and replay of a device's readings.

A version is stored with its authoring JSON, its compiled device form and that form's hash.
Pushing the same content again is a no-op; different content under an existing name and
version is refused. Content means the compiled form: whitespace and key order don't count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import WORKFLOWS
from shared import workflow


class RegistryError(ValueError):
    """A registry operation was refused; the message says why."""


@dataclass
class Pushed:
    """The outcome of a push."""

    name: str
    version: int
    hash: str
    created: bool


def push(conn: Connection, text: bytes, profile: dict | None, now_ms: int) -> Pushed:
    """Validate, compile and store a workflow version; raise RegistryError or WorkflowError."""
    compiled = workflow.compile(text, profile)
    row = conn.execute(
        sa.select(WORKFLOWS.c.hash).where(
            WORKFLOWS.c.name == compiled.name, WORKFLOWS.c.version == compiled.version
        )
    ).first()
    if row is not None:
        if row.hash == compiled.hash:
            return Pushed(compiled.name, compiled.version, compiled.hash, False)
        raise RegistryError(
            f"{compiled.name}@{compiled.version} already exists with other content "
            f"(hash {row.hash[:12]}…, this is {compiled.hash[:12]}…): versions are immutable, "
            f"push it as version {latest(conn, compiled.name) + 1}"
        )
    conn.execute(
        sa.insert(WORKFLOWS),
        [
            {
                "name": compiled.name,
                "version": compiled.version,
                "hash": compiled.hash,
                "definition": text.decode("utf-8"),
                "blob": compiled.blob,
                "heap_bytes": compiled.heap_bytes,
                "created_ms": now_ms,
            }
        ],
    )
    return Pushed(compiled.name, compiled.version, compiled.hash, True)


def latest(conn: Connection, name: str) -> int:
    """The highest version of ``name`` (0 if none)."""
    return (
        conn.execute(
            sa.select(sa.func.max(WORKFLOWS.c.version)).where(WORKFLOWS.c.name == name)
        ).scalar()
        or 0
    )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, _, ver = ref.partition("@")
    if not name:
        raise RegistryError(f"{ref!r}: expected NAME or NAME@VERSION")
    if not ver:
        return name, None
    try:
        v = int(ver)
    except ValueError:
        raise RegistryError(f"{ref!r}: version must be an integer") from None
    return name, v


def get(conn: Connection, ref: str):
    """The workflow row for ``NAME@VER`` (or the latest of ``NAME``); RegistryError if absent."""
    name, ver = parse_ref(ref)
    q = sa.select(WORKFLOWS).where(WORKFLOWS.c.name == name)
    q = (
        q.where(WORKFLOWS.c.version == ver)
        if ver is not None
        else q.order_by(WORKFLOWS.c.version.desc())
    )
    row = conn.execute(q.limit(1)).first()
    if row is None:
        known = [
            f"{n}@{v}"
            for n, v in conn.execute(
                sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version).where(WORKFLOWS.c.name == name)
            )
        ]
        raise RegistryError(
            f"no workflow {ref!r} in the registry"
            + (f" (known: {', '.join(known)})" if known else "")
        )
    return row


# --- diff ------------------------------------------------------------------------------------


def _index(defn: dict) -> dict:
    states = defn.get("states", {})
    if isinstance(states, list):
        states = {s.get("name"): s for s in states}
    trans = {}
    for sname, s in states.items():
        for i, t in enumerate(s.get("on", s.get("transitions", [])) or []):
            trans[f"{sname}#{i}"] = t
    params = {}
    for key in ("inputs", "vars", "variables", "outputs", "timers", "migrate"):
        if key in defn:
            params[key] = defn[key]
    return {
        "states": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("on", "transitions")}
            for k, v in states.items()
        },
        "transitions": trans,
        "parameters": params,
    }


def diff(a: dict, b: dict) -> dict:
    """What changed from definition ``a`` to ``b``: states, transitions and parameters, each as
    added / removed / changed keys (changed with both values)."""
    ia, ib = _index(a), _index(b)
    out = {}
    for part in ("states", "transitions", "parameters"):
        x, y = ia[part], ib[part]
        out[part] = {
            "added": {k: y[k] for k in sorted(set(y) - set(x))},
            "removed": {k: x[k] for k in sorted(set(x) - set(y))},
            "changed": {
                k: {"from": x[k], "to": y[k]} for k in sorted(set(x) & set(y)) if x[k] != y[k]
            },
        }
    return out


# --- simulate --------------------------------------------------------------------------------


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


def definition(row) -> dict:
    """The authoring JSON of a registry row."""
    return json.loads(row.definition)
