"""The replay driver: a board's main loop over the shared executor, fed a device's stored
readings instead of its sensors. ``workflow simulate`` and the fleet preview both replay
through it; it is the only one.

What the board does (``firmware/sampler.py``, ``firmware/installer.py``) and how the driver
follows it:

- The executor's clock is the board's uptime (``up_ms & 0x3FFFFFFF``, ticks that wrap), so
  readings replay in the board's order (by seq), whether or not they have an event time.
- A pass is the readings of one boot taken at the same uptime: each is stepped (a sample event
  with its stored, already filtered value), then ``tick()``. A timer or a for_ms hold
  (``next_deadline_ms``) that falls before the next pass is ticked at its own time, as the
  board's loop, which ticks every few ms, would. A program with neither never needs a tick.
- After a pass in which an output was set or a transition fired the board saves the executor's
  snapshot; a new boot is a new executor that restores the last one saved and starts (its
  outputs re-applied, the boot event delivered).
- Stored readings are the running version's filtered values: a version with the same filter
  chains steps them directly (exact); one with other chains runs them through its own
  (``feed``; an approximation, said in the note).

Time spent in a state or with an output on counts between the readings of a boot (not across
the gap of a reboot, nor before the first reading or after the last).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cloud.orrery.ingest.alerts import AlertRule, is_alarm
from shared.workflow.executor import _MET, Executor
from shared.workflow.form import _T_ARG, _T_EVENT, _T_FOR, _TW, EV_SAMPLE, NO_VALUE, SNAP_HEADER
from shared.workflow.program import Program
from shared.workflow.snapshot import migrate_snapshot

MASK = 0x3FFFFFFF  # the executor's clock: the board's uptime in wrapping ms ticks
_NEVER = 1 << 62  # no deadline
REFILTERED = (
    "filter chains differ from the running version: stored (filtered) readings were re-filtered"
    " (approximate)"
)

# A stored reading as the driver takes them, in the board's order (seq: the board numbers its
# readings 1, 2, ... across boots, while boot ids are random):
# (boot, up_ms, event_ms or None, channel index on the board, value, seq).
Row = tuple[int, int, "int | None", int, int, int]


def new_cell() -> list:
    """What the driver shares with the sides of one replay (give each the same)."""
    return [0, 0, None, None, None]


class Version:
    """A compiled workflow version made ready for replay on boards with these channels (the
    board profile's channel names, in index order). Built once per version and profile."""

    def __init__(self, blob: bytes, channel_names: Sequence[str]) -> None:
        p = Program(blob)
        self.blob = blob
        self.program = p
        self.ref = f"{p.name}@{p.version}"
        self.hash = p.hash
        self.state_names: tuple[str, ...] = p.state_names
        self.input_names: tuple[str, ...] = p.input_names
        self.output_names: tuple[str, ...] = p.output_names
        self.event_names: tuple[str, ...] = p.event_names
        self.initial: int = p.initial
        chans = p.input_channels
        by_channel: dict[int, list[int]] = {}
        for i, name in enumerate(chans):
            if name in channel_names:
                by_channel.setdefault(list(channel_names).index(name), []).append(i)
        # board channel index -> the inputs reading it
        self.inputs: dict[int, tuple[int, ...]] = {c: tuple(v) for c, v in by_channel.items()}
        self.channel_names = tuple(channel_names)
        trans = p.trans
        # timers or for_ms holds: only then does anything happen between samples
        self.timed = bool(p.timer_names) or any(
            trans[t * _TW + _T_FOR] for t in range(len(trans) // _TW)
        )
        # board channels feeding an input that a for_ms hold watches
        self.hold_channels = frozenset(
            c
            for c, ins in self.inputs.items()
            for t in range(len(trans) // _TW)
            if trans[t * _TW + _T_FOR]
            and trans[t * _TW + _T_EVENT] == EV_SAMPLE
            and trans[t * _TW + _T_ARG] in ins
        )
        self.filters = [(chans[i], list(p.filters(i))) for i in range(len(self.input_names))]
        self.alarms = tuple(is_alarm(n) for n in self.event_names)

    def same_filters(self, other: Version) -> bool:
        """True if ``other`` filters every input as this version does."""
        return self.filters == other.filters

    def snapshot_in(self, state: int) -> bytes:
        """A snapshot of this version in ``state``: vars at their init, outputs 0, timers
        stopped, default periods (what a device's last reported state tells of it)."""
        ex = Executor(self.program, _Quiet(), _zero)
        snap = bytearray(ex.snapshot())
        snap[9] = state  # the snapshot's state byte (shared.workflow.form's layout)
        assert len(snap) >= SNAP_HEADER
        return bytes(snap)

    def migrated(self, snap: bytes, new: Version) -> bytes:
        """``snap`` (of this version) carried over to ``new`` as the board migrates it on
        install; ValueError names a state with no place in ``new``."""
        return migrate_snapshot(self.program, snap, new.program)


def _zero() -> int:
    return 0


class _Quiet:
    def output(self, i, v):
        pass

    def publish(self, i, v):
        pass

    def set_period(self, i, ms):
        pass


class Side:
    """One version replayed on one device: its executor (the host it calls is this object),
    what it did (the metrics ``as_metrics`` returns) and, with ``trace``, every transition,
    event and output with its time (``workflow simulate``'s trace)."""

    def __init__(
        self,
        version: Version,
        cell: list,
        *,
        refilter: bool = False,
        rules: Sequence[AlertRule] = (),
        trace: bool = False,
    ) -> None:
        v = version
        self.version = v
        # shared with the driver: [clock ticks, uptime ms, the row being stepped (None for a
        # deadline), event time minus uptime of the pass (None: no event time), boot]
        self.cell = cell
        self.refilter = refilter
        self.rules: dict[int, tuple[AlertRule, ...]] = {}
        for r in rules:
            self.rules[r.channel] = (*self.rules.get(r.channel, ()), r)
        # what ``take`` asks of every reading: the inputs of a channel, whether the stored value
        # goes straight to the executor, the channels a for_ms hold watches
        self.inputs = v.inputs.get
        self.plain = not refilter and not self.rules
        self.hold = v.hold_channels
        self.trace: dict[str, list] | None = (
            {"transitions": [], "events": [], "outputs": []} if trace else None
        )
        self.ex: Executor | None = None
        self.snap: bytes | None = None  # the last snapshot the board saved
        self.dirty = False
        self.stale = True  # nd_at needs asking again
        self.nd_at = _NEVER  # uptime of the next timer or for_ms deadline (_NEVER: none)
        self.tr = 0  # the executor's transition counter when last looked at
        self.state = v.initial
        self.since = 0  # uptime the current state was entered (or its boot's first reading)
        self.transitions = 0
        self.state_changes = 0
        self.alerts = 0
        self.ev_counts = [0] * len(v.event_names)
        self.out_sets = [0] * len(v.output_names)
        self.out_val = [0] * len(v.output_names)
        self.out_since = [0] * len(v.output_names)
        self.out_on_ms = [0] * len(v.output_names)
        self.state_ms = [0] * len(v.state_names)
        # behaviour since the driver last compared the sides:
        # (what, state, up_ms, row or None, boot, event time offset or None)
        self.items: list[tuple] = []
        self.mark = 0  # where the current step's items begin in ``items``
        self.last_up = 0

    # The executor's host.

    def output(self, i: int, v: int) -> None:
        """The executor sets output ``i``."""
        cell = self.cell
        up = cell[1]
        self.out_sets[i] += 1
        old = self.out_val[i]
        if (old != 0) != (v != 0):
            if old:
                self.out_on_ms[i] += up - self.out_since[i]
            else:
                self.out_since[i] = up
        self.out_val[i] = v
        self.dirty = True
        name = self.version.output_names[i]
        self.items.append((f"output {name}={v}", self._state_name(), up, cell[2], cell[4], cell[3]))
        if self.trace is not None:
            self.trace["outputs"].append({"t": _t(cell, up), "output": name, "value": v})

    def publish(self, i: int, v: int) -> None:
        """The executor publishes event ``i``."""
        cell = self.cell
        up = cell[1]
        self.ev_counts[i] += 1
        if self.version.alarms[i]:
            self.alerts += 1
        name = self.version.event_names[i]
        self.items.append((f"event {name}={v}", self._state_name(), up, cell[2], cell[4], cell[3]))
        if self.trace is not None:
            self.trace["events"].append({"t": _t(cell, up), "event": name, "value": v})

    def set_period(self, i: int, ms: int) -> None:
        """The executor changes input ``i``'s period (stored readings keep their times)."""

    def _state_name(self) -> str:
        ex = self.ex
        return self.version.state_names[ex.state if ex is not None else self.state]

    # Driven by ``drive``.

    def boot(self, up: int, snap: bytes | None, start: bool) -> None:
        """A new executor at uptime ``up``: restore ``snap`` (None: none) and, if ``start``,
        start it (a board's boot; without a snapshot it enters the initial state)."""
        self.ex = ex = Executor(self.version.program, self, self.cell_clock())
        self.tr = 0
        if snap is not None:
            try:
                ex.restore(snap)
            except ValueError:
                pass  # the board, too, starts afresh from a snapshot it cannot restore
        self.open(up, ex.state if snap is not None else self.state)
        if start:
            ex.start()
            self.moved(up)
        self.mark = len(self.items)
        self.dirty = True
        self.stale = True
        self.nd_at = _NEVER

    def cell_clock(self):
        """The executor's clock: the driver's current uptime ticks."""
        cell = self.cell
        return lambda: cell[0]

    def open(self, up: int, state: int) -> None:
        """Time starts counting (a boot's first reading) in ``state``."""
        self.state = state
        self.since = up
        for i, v in enumerate(self.out_val):
            if v:
                self.out_since[i] = up
        self.last_up = up

    def close(self) -> None:
        """Time stops counting at the last reading or deadline of a boot."""
        up = self.last_up
        self.state_ms[self.state] += up - self.since
        self.since = up
        for i, v in enumerate(self.out_val):
            if v:
                self.out_on_ms[i] += up - self.out_since[i]
                self.out_since[i] = up

    def moved(self, up: int) -> None:
        """After a step or tick: note the transitions it fired (the counter moved)."""
        ex = self.ex
        n = ex.transitions
        if n == self.tr:
            return
        self.transitions += n - self.tr if n > self.tr else 1
        self.tr = n
        s = ex.state
        old = self.state
        names = self.version.state_names
        cell = self.cell
        what = f"transition {names[old]} → {names[s]}"
        self.items.insert(self.mark, (what, names[old], up, cell[2], cell[4], cell[3]))
        self.mark = len(self.items)
        self.dirty = True
        self.stale = True
        if s != old:
            self.state_changes += 1
            self.state_ms[old] += up - self.since
            self.since = up
            self.state = s
            if self.trace is not None:
                self.trace["transitions"].append(
                    {"t": _t(self.cell, up), "from": names[old], "to": names[s]}
                )

    def take(self, ch: int, value: int, up: int) -> None:
        """Step a stored reading of board channel ``ch`` taken at uptime ``up`` (the driver's
        per-reading path): into the inputs reading that channel, noting what it fired."""
        ins = self.inputs(ch)
        if ins is None:
            return
        ex = self.ex
        if self.plain:
            for i in ins:
                ex.step(EV_SAMPLE, i, value)
        else:
            self.sample(ins, ch, value)
        if ex.transitions != self.tr:
            self.moved(up)
        if ch in self.hold:
            self.stale = True

    def sample(self, ins: tuple[int, ...], ch: int, value: int) -> None:
        """Step a stored reading of board channel ``ch`` into inputs ``ins`` (through their
        filters when this version re-filters) and count the alert rules it trips."""
        ex = self.ex
        v: int | None = value
        if self.refilter:
            v = None
            for i in ins:
                f = ex.feed(i, value)
                if v is None:
                    v = f
        else:
            for i in ins:
                ex.step(EV_SAMPLE, i, value)
        rules = self.rules.get(ch)
        if rules and v is not None:
            for r in rules:
                if r.trips(ch, v):
                    self.alerts += 1

    def end_pass(self, up: int, until: int | None, row: tuple) -> None:
        """The end of the pass at uptime ``up`` (``row`` its last reading): tick, save the
        snapshot if anything changed, then tick the deadlines that fall before the next pass
        (at ``until``; None: the boot's last pass).

        The tick is skipped when it can do nothing: for a program without timers or for_ms
        holds, and when no deadline is due now and no hold came due with its guard false
        (the executor marks such a hold met, ``_MET``, and fires it on a later tick once the
        guard holds). ``next_deadline_ms`` is asked again only when a transition fired, an
        input a hold watches was sampled, or a deadline came due: otherwise the one known
        still stands."""
        ex = self.ex
        if self.version.timed:
            cell = self.cell
            cell[0] = up & MASK  # the other side's deadlines may have moved the clock on
            cell[1] = up
            cell[2] = row
            if self.stale or self.nd_at <= up:
                d = ex.next_deadline_ms()
                self.nd_at = up + d if d >= 0 else _NEVER
                self.stale = False
            due = self.nd_at <= up
            if due or _MET in ex._hold:
                ex.tick()
                if ex.transitions != self.tr:
                    self.moved(up)
                if self.stale or due:
                    d = ex.next_deadline_ms()
                    self.nd_at = up + d if d >= 0 else _NEVER
                    self.stale = False
        else:
            self.stale = False  # nothing to ask
        if self.dirty:
            self.snap = ex.snapshot()
            self.dirty = False
        self.last_up = up
        if until is not None and self.nd_at < until:
            self.deadlines(up, until)

    def deadlines(self, up: int, until: int) -> None:
        """Tick every timer or for_ms deadline due after ``up`` and before ``until``, each at
        its own time, saving the snapshot after each as the board's pass would."""
        cell = self.cell
        ex = self.ex
        cell[0] = up & MASK
        d = ex.next_deadline_ms()
        while d > 0 and up + d < until:
            up += d
            cell[0] = up & MASK
            cell[1] = up
            cell[2] = None
            ex.tick()
            if ex.transitions != self.tr:
                self.moved(up)
            if self.dirty:
                self.snap = ex.snapshot()
                self.dirty = False
            self.last_up = up
            d = ex.next_deadline_ms()
        self.nd_at = up + d if d >= 0 else _NEVER
        self.stale = False

    def as_metrics(self) -> dict:
        """What this version did: the report's M (``preview.model``)."""
        v = self.version
        return {
            "transitions": self.transitions,
            "state_changes": self.state_changes,
            "events": dict(zip(v.event_names, self.ev_counts, strict=True)),
            "events_total": sum(self.ev_counts),
            "outputs": {
                n: {"sets": s, "on_s": ms / 1000}
                for n, s, ms in zip(v.output_names, self.out_sets, self.out_on_ms, strict=True)
            },
            "alerts": self.alerts,
            "states_s": {n: ms / 1000 for n, ms in zip(v.state_names, self.state_ms, strict=True)},
            "final_state": v.state_names[self.state],
        }


def _t(cell: list, up: int) -> int:
    # an item's time: event time when the pass's reading has one, else the uptime
    off = cell[3]
    return up if off is None else up + off


def drive(
    rows: Iterable[Row], sides: Sequence[Side], starts: Sequence[tuple], powered_on: bool = False
) -> dict | None:
    """Replay ``rows`` (one device's, in the board's order: by seq) through ``sides`` (the
    running version first, if any), each starting from ``starts[i]`` = (snapshot or None,
    start at the first boot). Returns the first divergence of the first two sides (the
    report's ``divergence``; None if they behaved alike or there is one side).

    A later boot's executors begin at uptime 0, as the board's do at power-on (a restored
    timer runs out at the board's time, not later by the filters' delay before the first
    stored reading); so do the first boot's with ``powered_on`` (the rows begin with the
    device's first reading), else at the first reading."""
    cell = sides[0].cell
    diverged: dict | None = None
    a = sides[0]
    b = sides[1] if len(sides) > 1 else None
    it = iter(rows)
    row = next(it, None)
    boot = None
    take_a = a.take
    take_b = b.take if b is not None else None
    while row is not None:
        rb, up = row[0], row[1]
        if rb != boot:
            if boot is not None:
                for s in sides:
                    s.close()
            t0 = 0 if boot is not None or powered_on else up
            cell[0], cell[1], cell[2], cell[4] = t0 & MASK, t0, None, rb
            cell[3] = None if row[2] is None else row[2] - up
            for s, (snap, start) in zip(sides, starts, strict=True):
                s.boot(t0, snap if boot is None else s.snap, start or boot is not None)
                if t0 < up:
                    s.end_pass(t0, up, None)  # the board's first passes, before any reading
            boot = rb
        cell[0] = up & MASK
        cell[1] = up
        cell[3] = None if row[2] is None else row[2] - up
        # the pass: every reading of this boot at this uptime, stepped
        while True:
            cell[2] = row
            take_a(row[3], row[4], up)
            if take_b is not None:
                take_b(row[3], row[4], up)
            row = next(it, None)
            if row is None or row[1] != up or row[0] != rb:
                break
        until = row[1] if row is not None and row[0] == rb else None
        last = cell[2]
        a.end_pass(up, until, last)
        if b is not None:
            b.end_pass(up, until, last)
            if a.items or b.items:
                if diverged is None:
                    diverged = _first_difference(a, b)
                a.items.clear()
                b.items.clear()
                a.mark = b.mark = 0
        elif a.items:
            a.items.clear()
            a.mark = 0
    if boot is not None:
        for s in sides:
            s.close()
    return diverged


def _first_difference(a: Side, b: Side) -> dict | None:
    # the first item where the two sides' behaviour differs (what, state or time)
    ia, ib = a.items, b.items
    for k in range(max(len(ia), len(ib))):
        x = ia[k] if k < len(ia) else None
        y = ib[k] if k < len(ib) else None
        if x is not None and y is not None and x[:3] == y[:3]:
            continue
        first = x if y is None or (x is not None and x[2] <= y[2]) else y
        up, row, boot, off = first[2], first[3], first[4], first[5]
        return {
            "t_ms": None if off is None else up + off,
            "boot": boot,
            "up_ms": up,
            "input": _input(a, b, row),
            # a deadline's (a timer or a for_ms hold between readings): the inputs as they were
            "inputs": None if row is not None else _inputs(a if first is x else b),
            "running": None if x is None else {"state": x[1], "what": x[0]},
            "new": None if y is None else {"state": y[1], "what": y[0]},
        }
    return None


def _inputs(side: Side) -> dict[str, int]:
    # the last filtered value of each of ``side``'s inputs that has one
    last = side.ex.last if side.ex is not None else ()
    return {n: v for n, v in zip(side.version.input_names, last, strict=False) if v != NO_VALUE}


def _input(a: Side, b: Side, row) -> dict | None:
    # the reading a divergence happened on, named by the new version's input (else the
    # running one's, else the board's channel)
    if row is None:
        return None
    ch = row[3]
    for s in (b, a):
        ins = s.version.inputs.get(ch)
        if ins:
            return {"name": s.version.input_names[ins[0]], "value": row[4]}
    names = a.version.channel_names
    return {"name": names[ch] if 0 <= ch < len(names) else f"channel {ch}", "value": row[4]}
