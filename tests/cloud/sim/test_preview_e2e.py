"""Fleet preview (issue 18, "Proof"), end to end: virtual boards running the real firmware, a real
Mosquitto, the companion in its own process (``orrery serve``'s service, its orchestrator on the
fleet's virtual clock), a real SQLite database, and the operator's side through the CLI
(in-process).

Every board runs ``kiln``: ``hot`` on each upward crossing of a level (in every state), a
``for_ms`` hold that starts ``cooling`` (a timer ends it), and from v2 on a latching ``alarm``
state. Each board's temperature swings to a peak of its own, so some boards cross both of the
levels v1 and v2 publish ``hot`` at, some only v2's lower one, some neither; a quarter of the
boards never set their clock (their readings and events have no event time).

1. v1 runs for 20 virtual minutes; the preview of a v1 -> v2 rollout shows the extra ``hot``
   events v2 would publish, per device exactly the upward crossings of each level in the
   readings the board stored (counted here, independently of the executor).
2. v2 is rolled out (in a quiet spell: every board idle, no timer running, no hold under way)
   and runs 20 virtual minutes, the boards that cool losing power once while cooling; replaying
   the readings the boards took then reproduces the events they published (boot, uptime,
   state, name, value, in order) and their state changes (their ``LOG_STATE`` log lines), on
   the clock-less boards and across the power cuts too.
3. A v3 whose alarm level is wrong is created with ``--preview-gate``: the preview breaks the
   gate, ``rollout start`` refuses in one line naming the bound and the devices, ``rollout
   status`` and the audit log show it, and no board is ever sent an install.
4. A rollback of the v2 rollout would strand the boards latched in ``alarm`` (v1 has no such
   state): the rollback's preview reports them, and the rollback is refused before it exists.

The timeline is seeded; only network timing varies between runs, and the quiet, drained spells
around the windows keep every assertion independent of it. The virtual clock starts two hours
back, so the CLI's default windows (up to the wall clock's now) hold the whole run.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.sim.fleet import VirtualFleet
from shared.workflow.form import NO_VALUE

N = 16
CLOCKLESS = 0.25
MIN = 60_000
HOT_V1, HOT_V2 = 3000, 2800  # the threshold v2 changes: where ``hot`` is published
COOL_AT = 3100  # above this for 5 s: cooling (20 s, a timer)
ALARM, ALARM_V3 = 3400, 3150  # v2's alarm level while cooling; v3's, wrong
LOW = 1500  # the quiet spells' temperature, below every level
# each board's peak temperature (base + amplitude), in turn: below both hot levels, between
# them, above both (cooling), above the alarm level
PEAKS = (2650, 2900, 2930, 3050, 3250, 3300, 3500, 3650)
GATE = "events.overheat_alarm<=+10%"
CUT = (3250, 3300)  # the boards with these peaks lose power once while cooling, in the v2 window
runner = CliRunner()


def kiln(version: int, hot: int, alarm: int | None = None) -> dict:
    """The test's workflow: v1 without ``alarm`` (``alarm`` None), v2 and v3 with it."""
    hot_t = {"when": {"crosses": "temp", "level": hot, "direction": "up"},
             "actions": [{"publish": "hot", "value": {"input": "temp"}}]}  # fmt: skip
    cooling_on = [hot_t, {"when": {"timer": "cool"}, "target": "idle"}]
    states = [
        {"name": "idle", "entry": [{"publish": "ready", "value": {"input": "temp"}}],
         "on": [hot_t,
                {"when": {"above": "temp", "level": COOL_AT, "for_ms": 5000}, "target": "cooling"}]},
        {"name": "cooling",
         "entry": [{"set_output": "fan", "value": 1}, {"start_timer": "cool", "ms": 20_000},
                   {"publish": "cooling", "value": {"input": "temp"}}],
         "exit": [{"set_output": "fan", "value": 0},
                  {"publish": "cooled", "value": {"input": "temp"}}],
         "on": cooling_on},
    ]  # fmt: skip
    events = ["ready", "hot", "cooling", "cooled"]
    if alarm is not None:
        cooling_on.insert(1, {"when": {"above": "temp", "level": alarm}, "target": "alarm"})
        states.append({"name": "alarm",
                       "entry": [{"publish": "overheat_alarm", "value": {"input": "temp"}}],
                       "on": [hot_t, {"when": {"command": "reset"}, "target": "idle"}]})  # fmt: skip
        events.append("overheat_alarm")
    return {
        "name": "kiln",
        "version": version,
        "description": f"hot above {hot}"
        + (f", alarm above {alarm} while cooling" if alarm else ""),
        "inputs": [
            {
                "name": "temp",
                "channel": "temp",
                "period_ms": 1000,
                "filters": [{"type": "median", "window": 3}],
            }
        ],  # fmt: skip
        "outputs": ["fan"],
        "timers": ["cool"],
        "events": events,
        "initial": "idle",
        "safe_states": ["idle"],
        "safe_wait_s": 120,
        "states": states,
    }


def cli(f: VirtualFleet, *args: str, ok: bool = True) -> tuple[int, str]:
    """``orrery ARGS --db …`` in-process: (exit code, output); asserts success unless ``ok``
    is False."""
    r = runner.invoke(app, [*args, "--db", f.db_url], env={"ORRERY_SECRET": f.secret.decode()})
    if ok:
        assert r.exit_code == 0, r.output
    return r.exit_code, r.output


def run_until(f: VirtualFleet, pred, virtual_ms: int, real_s: float = 60) -> bool:
    """Run the fleet a virtual second at a time (a little real time after each, so the
    companion, which ticks once a real second, sees the clock) until ``pred()``."""
    end, deadline = f.now_ms + virtual_ms, time.monotonic() + real_s
    while not pred():
        if f.now_ms >= end or time.monotonic() > deadline:
            return False
        f.run(1000)
        time.sleep(0.01)
    return True


# --- the boards' side --------------------------------------------------------------------------


class Climate:
    """Each board's temperature: a swing to its own peak (``PEAKS`` in turn, seeded amplitude
    and period), or ``quiet`` (constant, below every level)."""

    def __init__(self, f: VirtualFleet, seed: int = 11) -> None:
        rng = random.Random(seed)
        self.f = f
        self.params: dict[str, dict] = {}
        for i, name in enumerate(sorted(f.boards)):
            peak = PEAKS[i % len(PEAKS)]
            amp = rng.randrange(300, 600)
            self.params[name] = {"base": peak - amp, "amplitude": amp,
                                 "period_s": rng.randrange(240, 480), "noise": 6, "drift": 30}  # fmt: skip

    def swing(self) -> None:
        for name, p in self.params.items():
            self.f.boards[name].hal.configure("temp", **p, dropout_ppm=1000)

    def quiet(self) -> None:
        for name in self.params:
            self.f.boards[name].hal.configure("temp", base=LOW, amplitude=0, noise=0,
                                              dropout_ppm=1000)  # fmt: skip


def uptimes(f: VirtualFleet) -> dict[str, tuple[int, int]]:
    """Each board's (boot id, uptime ms) now: where a window starts or ends on the board."""
    out = {}
    for name, b in f.boards.items():
        up = b.node.up
        up.update()
        out[name] = (b.boot_id, up.s * 1000 + up.ms)
    return out


def inside(
    ranks: dict[int, int], boot: int, up: int, start: tuple[int, int], end: tuple[int, int]
) -> bool:
    """Whether (boot, up) lies in [start, end) (each a (boot, uptime)) on a board whose boots
    came in the order ``ranks`` gives (boot ids are random: their order is the board's)."""

    def at(b: int, u: int) -> tuple[int, int]:
        return ranks[b], u

    return at(*start) <= at(boot, up) < at(*end)


# --- what the database holds ---------------------------------------------------------------------


def readings(f: VirtualFleet) -> dict[str, list[tuple[int, int, int]]]:
    """Each board's stored temperature readings (boot, up_ms, value), in the order it took
    them: by seq, which its flash store counts on across boots."""
    out: dict[str, list] = defaultdict(list)
    for name, boot, up, value in f.rows(
        "SELECT d.name, r.boot, r.up_ms, r.value FROM readings r JOIN devices d"
        " ON d.id = r.device_id ORDER BY d.name, r.seq"
    ):
        out[name].append((boot, up, value))
    return out


def boot_ranks(stored: dict[str, list[tuple[int, int, int]]]) -> dict[str, dict[int, int]]:
    """Each board's boots in the order it went through them (of its readings, by seq)."""
    out: dict[str, dict[int, int]] = {}
    for name, rows in stored.items():
        ranks: dict[int, int] = {}
        for boot, _, _ in rows:
            ranks.setdefault(boot, len(ranks))
        out[name] = ranks
    return out


def board_events(f: VirtualFleet, ranks: dict[str, dict[int, int]]) -> dict[str, list[dict]]:
    """Each board's published events, in its order (its boots in turn, then the event seq of
    each boot)."""
    out: dict[str, list] = defaultdict(list)
    for name, boot, seq, up, at, state, event, value in f.rows(
        "SELECT d.name, e.boot, e.seq, e.up_ms, e.event_ms, e.state, e.event, e.value FROM"
        " events e JOIN devices d ON d.id = e.device_id"
    ):
        out[name].append({"boot": boot, "seq": seq, "up_ms": up, "event_ms": at,
                          "state": state, "event": event, "value": value})  # fmt: skip
    for name, evs in out.items():
        evs.sort(key=lambda e: (ranks[name][e["boot"]], e["seq"]))
    return out


def state_lines(
    f: VirtualFleet, ranks: dict[str, dict[int, int]]
) -> dict[str, list[tuple[int, int, int, int, int]]]:
    """Each board's ``LOG_STATE`` log lines (boot, seq, up_ms, state index, transitions since
    the line before), in its order."""
    from shared.wire.constants import LOG_STATE

    out: dict[str, list] = defaultdict(list)
    for name, boot, seq, up, a, b in f.rows(
        "SELECT d.name, l.boot, l.seq, l.up_ms, l.a, l.b FROM device_logs l JOIN devices d"
        " ON d.id = l.device_id WHERE l.code = :c",
        c=LOG_STATE,
    ):
        out[name].append((boot, seq, up, a, b))
    for name, lines in out.items():
        lines.sort(key=lambda ln: (ranks[name][ln[0]], ln[1]))
    return out


def log_seqs(f: VirtualFleet) -> dict[str, list[tuple[int, int]]]:
    """Each board's log lines' (boot, seq), to check none was lost."""
    out: dict[str, list] = defaultdict(list)
    for name, boot, seq in f.rows(
        "SELECT d.name, l.boot, l.seq FROM device_logs l JOIN devices d ON d.id = l.device_id"
        " ORDER BY d.name, l.boot, l.seq"
    ):
        out[name].append((boot, seq))
    return out


def crossings(values: list[tuple[int, int, int]], level: int) -> int:
    """Upward crossings of ``level`` (the value before at or below it, this one above), within a
    boot: what ``crosses … direction up`` fires on, counted here from the stored readings."""
    n = 0
    for (b0, _, v0), (b1, _, v1) in zip(values, values[1:], strict=False):
        n += b0 == b1 and v0 <= level < v1
    return n


# --- the scenario --------------------------------------------------------------------------------


@dataclass
class Outcome:
    names: list[str] = field(default_factory=list)
    clockless: list[str] = field(default_factory=list)
    v1_readings: dict = field(default_factory=dict)
    v1_events: dict = field(default_factory=dict)
    create_v2: tuple = ()  # (exit code, output) of its create --preview --json
    preview_v2: dict = field(default_factory=dict)  # the preview of the v1 -> v2 rollout
    rid2: int = 0
    v2_finished: bool = False
    v2_states: dict = field(default_factory=dict)  # each board's state when the window opened
    v2_versions: dict = field(default_factory=dict)
    since2: int = 0
    until2: int = 0
    up_since2: dict = field(default_factory=dict)
    up_until2: dict = field(default_factory=dict)
    v2_final: dict = field(default_factory=dict)  # each board's state when the window closed
    cut: dict = field(default_factory=dict)  # board -> its boot when its power was cut
    ranks: dict = field(default_factory=dict)  # board -> {boot id: its place}
    v2_readings: dict = field(default_factory=dict)
    v2_event_times: dict = field(default_factory=dict)  # clock-less board -> its readings' times
    v2_events: dict = field(default_factory=dict)
    v2_lines: dict = field(default_factory=dict)
    v2_log_seqs: dict = field(default_factory=dict)
    events_dropped: dict = field(default_factory=dict)
    state_names_v2: list = field(default_factory=list)
    replay_v2: dict = field(default_factory=dict)  # the engine's own streams, per device
    preview_v3: dict = field(default_factory=dict)  # v2 -> v3 over the v2 window
    rid3: int = 0
    gate_create: tuple = ()
    gate_start: tuple = ()
    gate_start_api: str = ""
    gate_status: str = ""  # `rollout status` as a person reads it (whitespace collapsed)
    gate_status_json: dict = field(default_factory=dict)
    gate_log: list = field(default_factory=list)  # `rollout log --json`
    v3_commands: int = -1
    installs: int = -1
    v3_versions: dict = field(default_factory=dict)
    v3_state: str = ""
    latched: list = field(default_factory=list)  # boards in alarm when the rollback is asked
    rollback_preview: tuple = ()
    rollback_refused: tuple = ()
    rollouts_before: list = field(default_factory=list)
    rollouts_after: list = field(default_factory=list)
    v2_after: str = ""  # the v2 rollout's state after the refused rollback
    log: str = ""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preview")
    paths = []
    for v, d in ((1, kiln(1, HOT_V1)), (2, kiln(2, HOT_V2, ALARM)), (3, kiln(3, HOT_V2, ALARM_V3))):
        p = tmp / f"kiln_v{v}.json"
        p.write_text(json.dumps(d))
        paths.append(p)
    # the virtual clock starts two hours back, so its whole run stays behind the wall clock and
    # the CLI's default window (the last 24 h up to now) holds every reading
    f = VirtualFleet(N, f"sqlite:///{tmp / 'cloud.db'}", seed=3, uplink_ms=10_000,
                     clockless=CLOCKLESS, health_window_s=10, flash_workflow=paths[0],
                     push=paths, start_ms=now_ms() - 2 * 3_600_000)  # fmt: skip
    try:
        yield run(f)
    finally:
        f.close()


def cut_while_cooling(f: VirtualFleet, o: Outcome) -> None:
    """Cut the power of the boards that cool (``CUT``), once each, while they cool (their
    timer running): at the start of the next pass, once everything the board published has
    left it (what a power cut loses of RAM is not the replay's to reproduce)."""
    for i, name in enumerate(o.names):
        b = f.boards[name]
        n = b.node
        if (
            PEAKS[i % len(PEAKS)] in CUT
            and name not in o.cut
            and n.wf.ex.state_name() == "cooling"
            and not n.ev_count
            and n.log_seq == n.log_sent
            and f.quiet(b)
        ):
            o.cut[name] = b.boot_id
            f.at(0, lambda name=name: f.power_cut(name))


def settle(f: VirtualFleet) -> bool:
    """Take the sensors away and deliver everything (``VirtualFleet.drain``)."""
    f.freeze()
    return f.drain(5 * MIN)


def run(f: VirtualFleet) -> Outcome:
    o = Outcome(names=sorted(f.boards))
    o.clockless = sorted(n for n, b in f.boards.items() if not b.synced)
    climate = Climate(f)
    climate.swing()
    f.start_companion()
    assert run_until(f, lambda: f.online_count() == N, 5 * MIN), "every board came online"

    # 1. v1 for 20 minutes, then a quiet spell
    f.run(20 * MIN)
    climate.quiet()
    f.run(MIN)
    assert settle(f), f.unsettled()
    o.v1_readings = readings(f)
    o.v1_events = board_events(f, boot_ranks(o.v1_readings))
    o.create_v2 = cli(f, "rollout", "create", "--workflow", "kiln@2", "--target",
                      f"fleet={f.fleet_id}", "--waves", "100%", "--success", "100%",
                      "--max-failures", "10%", "--min-devices", "1", "--soak", "0s",
                      "--health", "10s", "--rate", "1000/min", "--preview", "--json")  # fmt: skip
    created = json.loads(o.create_v2[1])
    o.rid2, o.preview_v2 = created["rollout_id"], created["preview"]

    # 2. v2, installed in the quiet spell; its window opens once every board runs it. Both of
    # its ends come after everything the boards took was delivered: a reading without an event
    # time falls in a window by when it arrived (``fleet.replay.in_window``), and this keeps
    # that independent of how fast the network was
    climate.quiet()  # the sensors back, still quiet
    cli(f, "rollout", "start", str(o.rid2))
    o.v2_finished = run_until(f, lambda: f.rollout_state(o.rid2)[0] == "finished", 5 * MIN)
    f.run(MIN)
    assert settle(f), f.unsettled()
    o.v2_versions = {n: b.version for n, b in f.boards.items()}
    o.v2_states = {n: b.node.wf.ex.state_name() for n, b in f.boards.items()}
    o.since2, o.up_since2 = f.now_ms, uptimes(f)
    climate.swing()
    f.run(20 * MIN, lambda: cut_while_cooling(f, o))
    climate.quiet()
    f.run(MIN)
    assert settle(f), f.unsettled()
    o.until2, o.up_until2 = f.now_ms, uptimes(f)
    o.v2_final = {n: b.node.wf.ex.state_name() for n, b in f.boards.items()}
    o.v2_readings = readings(f)
    o.v2_event_times = {
        n: [at for (at,) in f.rows("SELECT DISTINCT r.event_ms FROM readings r JOIN devices d"
                                   " ON d.id = r.device_id WHERE d.name = :n", n=n)]
        for n in o.clockless
    }  # fmt: skip
    o.ranks = boot_ranks(o.v2_readings)
    o.v2_events = board_events(f, o.ranks)
    o.v2_lines = state_lines(f, o.ranks)
    o.v2_log_seqs = log_seqs(f)
    o.events_dropped = {n: b.node.events_dropped for n, b in f.boards.items()}
    o.latched = sorted(n for n, b in f.boards.items() if b.node.wf.ex.state_name() == "alarm")
    o.state_names_v2 = list(f.boards[o.names[0]].node.wf.prog.state_names)

    # 3. v3 with a wrong alarm level, gated by its preview over the v2 window
    climate.quiet()
    since, until = iso(o.since2), iso(o.until2)
    o.gate_create = cli(f, "rollout", "create", "--workflow", "kiln@3", "--target",
                        f"fleet={f.fleet_id}", "--waves", "25%,100%", "--success", "100%",
                        "--max-failures", "10%", "--min-devices", "1", "--soak", "0s",
                        "--health", "10s", "--rate", "1000/min", "--preview", "--preview-since",
                        since, "--preview-gate", GATE, "--json", ok=False)  # fmt: skip
    o.rid3 = json.loads(o.gate_create[1])["rollout_id"]
    # the same preview over exactly the v2 window (stored in its place: it breaks the gate too)
    o.preview_v3 = json.loads(cli(f, "rollout", "preview", str(o.rid3), "--since", since,
                                  "--until", until, "--json", ok=False)[1])  # fmt: skip
    starts = {d["device"]: d["start_state"] for d in o.preview_v3["per_device"]}
    o.replay_v2 = replay_streams(f, "kiln@2", o.since2, o.until2, starts)
    o.gate_start = cli(f, "rollout", "start", str(o.rid3), ok=False)
    try:  # the orchestrator itself (the API's way in) refuses too
        f.operator().start(o.rid3)
    except Exception as exc:  # noqa: BLE001 - what it says is asserted
        o.gate_start_api = f"{type(exc).__name__}: {exc}"
    f.run(2 * MIN)  # the companion ticks meanwhile: a refused rollout sends nothing
    o.v3_state = f.rollout_state(o.rid3)[0]
    o.gate_status = " ".join(cli(f, "rollout", "status", str(o.rid3))[1].split())
    o.gate_status_json = json.loads(cli(f, "rollout", "status", str(o.rid3), "--json")[1])
    o.gate_log = json.loads(cli(f, "rollout", "log", str(o.rid3), "--json")[1])
    o.v3_commands = f.rows("SELECT count(*) FROM commands WHERE source = :s",
                           s=f"rollout:{o.rid3}")[0][0]  # fmt: skip
    o.installs = f.rows("SELECT count(*) FROM commands WHERE kind = 'install_workflow'")[0][0]
    o.v3_versions = {n: b.version for n, b in f.boards.items()}

    # 4. a rollback of the v2 rollout would strand the boards latched in alarm
    o.rollouts_before = [r[0] for r in f.rows("SELECT id FROM rollouts ORDER BY id")]
    o.rollback_preview = cli(f, "rollout", "preview", str(o.rid2), "--rollback", "--json",
                             ok=False)  # fmt: skip
    o.rollback_refused = cli(f, "rollout", "rollback", str(o.rid2), ok=False)
    o.rollouts_after = [r[0] for r in f.rows("SELECT id FROM rollouts ORDER BY id")]
    o.v2_after = f.rollout_state(o.rid2)[0]
    o.log = f.companion_tail(3000)
    return o


def replay_streams(f: VirtualFleet, ref: str, since_ms: int, until_ms: int, starts: dict) -> dict:
    """The engine's replay (its driver, ``fleet.preview.driver``) of each device's readings in
    [since_ms, until_ms) (the engine's window, ``fleet.replay.stored_stream``) through ``ref``,
    from the state the preview started it in (``starts``: device -> state name, the report's
    ``start_state``): per device its events and state changes, each with the uptime of the
    pass and the state the executor was in (what a board's event carries), and the
    transitions it fired."""
    from cloud.orrery.fleet import registry
    from cloud.orrery.fleet.preview.driver import Side, Version, drive, new_cell
    from cloud.orrery.fleet.replay import stored_stream
    from cloud.orrery.sim.board import PROFILE
    from firmware.profile import parse_profile

    class Traced(Side):
        """The driver's side, its trace noting the uptime and the state of each event and
        state change as the executor's host sees them (the driver's trace has the time)."""

        def publish(self, i: int, v: int) -> None:
            super().publish(i, v)
            assert self.trace is not None
            self.trace["events"][-1].update(
                boot=self.cell[4], up_ms=self.cell[1], state=self._state_name()
            )

        def moved(self, up: int) -> None:
            assert self.trace is not None
            n = len(self.trace["transitions"])
            super().moved(up)
            for t in self.trace["transitions"][n:]:
                t.update(boot=self.cell[4], up_ms=up)

    channels = [c[0] for c in parse_profile(PROFILE)[0]]
    out = {}
    with f.engine.connect() as conn:
        v = Version(registry.get(conn, ref).blob, channels)
        for name, did in conn.execute(sa.text("SELECT name, id FROM devices")).all():
            side = Traced(v, new_cell(), trace=True)
            snap = v.snapshot_in(v.state_names.index(starts[name]))
            drive(stored_stream(conn, did, since_ms, until_ms), [side], [(snap, False)])
            assert side.trace is not None
            out[name] = {
                **side.trace,
                "fired": side.transitions,
                "final": v.state_names[side.state],
            }
    return out


# --- the proofs ----------------------------------------------------------------------------------


def by_device(rep: dict) -> dict[str, dict]:
    return {d["device"]: d for d in rep["per_device"]}


def nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def first_difference(a: list, b: list) -> tuple:
    """Where two sequences part first: (index, a's item, b's item)."""
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x != y:
            return i, x, y
    return ()


def window_of(o: Outcome, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the v2 window starts and ends on board ``name``: (boot, uptime) both."""
    return o.up_since2[name], o.up_until2[name]


def events_in(o: Outcome, name: str) -> list[dict]:
    """The events board ``name`` published in the v2 window (events table rows)."""
    a, z = window_of(o, name)
    return [e for e in o.v2_events[name] if inside(o.ranks[name], e["boot"], e["up_ms"], a, z)]


def reported(o: Outcome, name: str) -> list[tuple]:
    """What board ``name`` published in the v2 window: (boot, uptime, state, event, value)."""
    return [(e["boot"], e["up_ms"], e["state"], e["event"], e["value"]) for e in events_in(o, name)]


def s16(v: int) -> int | None:
    """An event's value as a board sends it: an input without a value is None, others S16."""
    return None if v == NO_VALUE else max(-32767, min(32767, v))


def state_changes(o: Outcome, name: str) -> tuple[list[tuple[int, int, str]], int]:
    """Board ``name``'s state changes in the v2 window from its ``LOG_STATE`` lines (a line
    per main-loop pass that fired transitions: the state it ended in, how many fired), as
    (boot, uptime, state entered), and the transitions it fired in all."""
    a, z = window_of(o, name)
    lines = [ln for ln in o.v2_lines[name] if inside(o.ranks[name], ln[0], ln[2], a, z)]
    changes, state = [], o.v2_states[name]
    for boot, _, up, index, _ in lines:
        s = o.state_names_v2[index]
        if s != state:
            changes.append((boot, up, s))
            state = s
    return changes, sum(ln[4] for ln in lines)


def test_a_lower_threshold_shows_the_extra_events_it_would_publish(scenario):
    """The preview of v1 -> v2 (v2 publishes ``hot`` at 2800 instead of 3000): per device,
    each side publishes ``hot`` exactly as often as the stored readings cross its level
    upwards, and the devices whose readings peak between the two levels are the ones that
    gain events they never had."""
    o = scenario
    code, _ = o.create_v2
    assert code == 0, o.create_v2
    rep = o.preview_v2
    assert (rep["to"], rep["devices"], rep["replayed"]) == ("kiln@2", N, N)
    assert rep["stranded"] == [] and rep["gate"] is None
    per = by_device(rep)
    between = []
    for n in o.names:
        rs, d = o.v1_readings[n], per[n]
        assert (d["running_version"], d["new_version"]) == ("kiln@1", "kiln@2"), d
        assert d["readings"] == len(rs), n
        assert d["note"] is None, d["note"]  # the same filters: an exact replay
        want = (crossings(rs, HOT_V1), crossings(rs, HOT_V2))
        assert (d["running"]["events"]["hot"], d["new"]["events"]["hot"]) == want, n
        if HOT_V2 < max(v for _, _, v in rs) <= HOT_V1:
            between.append(n)
            assert want[0] == 0 < want[1], (n, want)
            # where the two part first: the first reading that crosses v2's level upwards
            boot, up, value = next(
                r1 for r0, r1 in zip(rs, rs[1:], strict=False)
                if r0[0] == r1[0] and r0[2] <= HOT_V2 < r1[2]
            )  # fmt: skip
            div = d["divergence"]
            assert (div["boot"], div["up_ms"], div["input"]) == (
                boot, up, {"name": "temp", "value": value}), (n, div)  # fmt: skip
    assert len(between) >= 2, "boards whose readings cross only v2's level"
    changed = {n for n in o.names if per[n]["divergence"] is not None}
    assert set(between) <= changed and rep["changed"] == len(changed)
    t = rep["totals"]
    assert t["running"]["events"]["hot"] == sum(
        crossings(o.v1_readings[n], HOT_V1) for n in o.names
    )
    assert t["new"]["events"]["hot"] == sum(crossings(o.v1_readings[n], HOT_V2) for n in o.names)
    assert t["new"]["events"]["hot"] > t["running"]["events"]["hot"]
    assert rep["summary"], "the ten-second summary"


def test_a_the_running_side_is_what_the_v1_boards_published(scenario):
    """The preview's running side over v1's whole run (from before the boards' first boot) is
    what each board published: every event, counted by name (the boot's too: each board
    entered its initial state, which publishes ``ready``, when it first booted)."""
    o = scenario
    per = by_device(o.preview_v2)
    differ = {}
    for n in o.names:
        board = dict(Counter(e["event"] for e in o.v1_events[n]))
        replayed = nonzero(per[n]["running"]["events"])
        if replayed != board:
            differ[n] = {"replayed": replayed, "board": board,
                         "start": per[n]["start_state_source"]}  # fmt: skip
    assert not differ, "; ".join(
        f"{n} (start {d['start']}): only the board {dict(Counter(d['board']) - Counter(d['replayed']))}"
        f", only the replay {dict(Counter(d['replayed']) - Counter(d['board']))}"
        for n, d in differ.items()
    )


def test_b_replaying_v2s_window_reproduces_the_boards_events_and_state_changes(scenario):
    """After the v2 rollout, the engine's replay of the readings each board took reproduces
    the events it published (boot, uptime, state, name, value, in order) and its state
    changes, across a power cut while cooling too (a new boot restores the state the board
    saved, its timer with the time it had left then), and the preview's running side counts
    exactly what the boards did."""
    o = scenario
    assert o.v2_finished, o.log[-1500:]
    cooling = [n for i, n in enumerate(o.names) if PEAKS[i % len(PEAKS)] in CUT]
    assert sorted(o.cut) == cooling, "each cooling board lost power once, while cooling"
    assert all(o.up_until2[n][0] != boot for n, boot in o.cut.items()), "and booted again"
    assert set(o.v2_versions.values()) == {2}, o.v2_versions
    assert set(o.v2_states.values()) == {"idle"}, "the window opens with every board idle"
    assert not any(o.events_dropped.values()), "no board dropped an event"
    for n, seqs in o.v2_log_seqs.items():  # no log line (state change) lost on the way
        for boot in {b for b, _ in seqs}:
            s = [q for b, q in seqs if b == boot]
            assert s == list(range(s[0], s[0] + len(s))), (n, boot)
    per = by_device(o.preview_v3)
    seen: Counter = Counter()
    differ = {}  # device -> where the replay and the board part first, per aspect
    for n in o.names:
        want = reported(o, n)
        seen.update(e[3] for e in want)
        r = o.replay_v2[n]
        got = [
            (e["boot"], e["up_ms"], e["state"], e["event"], s16(e["value"])) for e in r["events"]
        ]
        changes, fired = state_changes(o, n)
        moved = [(t["boot"], t["up_ms"], t["to"]) for t in r["transitions"]]
        # the driver's own times: the event time where the board has a clock, else the uptime
        times = [e["t"] for e in r["events"]]
        board_times = [
            e["up_ms"] if e["event_ms"] is None else e["event_ms"] for e in events_in(o, n)
        ]
        # the preview over the same window: its running side is the board's own behaviour
        d = per[n]
        m = d["running"]
        counted = (nonzero(m["events"]), m["transitions"], m["state_changes"], m["final_state"])
        board = (dict(Counter(e[3] for e in want)), fired, len(changes), o.v2_final[n])
        checks = {
            "events": (got, want),
            "state changes": (moved, changes),
            "transitions fired": (r["fired"], fired),
            "event times": (times, board_times),
            "start": ((d["start_state"], d["start_state_source"]), ("idle", "reported")),
            "preview's running side": (counted, board),
        }
        bad = {
            k: first_difference(a, b) if isinstance(a, list) else (a, b)
            for k, (a, b) in checks.items()
            if a != b
        }
        if bad:
            differ[n] = bad
    assert not differ, "; ".join(
        f"{n}{' (power cut)' if n in o.cut else ''}: {bad}" for n, bad in differ.items()
    )
    # the window held a threshold (hot), a for_ms hold (cooling), a timer (cooled), an alarm
    assert all(seen[e] > 0 for e in ("hot", "cooling", "cooled", "ready", "overheat_alarm")), seen


def test_b_boards_without_a_clock_replay_in_device_order(scenario):
    """Boards whose clock was never set store readings and events without an event time; the
    replay takes their readings in the board's order and reproduces their events too."""
    o = scenario
    assert o.clockless, "some boards never set their clock"
    busy = [n for n in o.clockless if reported(o, n)]
    assert busy, "some clock-less board published events in the window"
    assert any(n in o.cut for n in o.clockless), "one of them lost power in the window too"
    differ = {}
    for n in o.clockless:
        assert all(e["event_ms"] is None for e in o.v2_events[n]), n
        assert all(at is None for at in o.v2_event_times[n]), n  # nor their readings
        got = [(e["boot"], e["up_ms"], e["state"], e["event"], s16(e["value"]))
               for e in o.replay_v2[n]["events"]]  # fmt: skip
        if got != reported(o, n):
            differ[n] = first_difference(got, reported(o, n))
    assert not differ, "; ".join(
        f"{n}{' (power cut)' if n in o.cut else ''}: {d}" for n, d in differ.items()
    )


def breaking(o: Outcome) -> list[str]:
    """The boards that v3 would have alarmed and v2 did not (from 0 to more: +inf%): in the
    v2 window, a reading above v3's alarm level while the board was cooling (between its
    ``cooling`` and the event that ended it), and no ``overheat_alarm`` of its own. Until
    that reading v2 and v3 behave alike (they differ in that level alone)."""
    out = []
    for n in o.names:
        a, z = window_of(o, n)
        evs = [e for e in o.v2_events[n] if inside(o.ranks[n], e["boot"], e["up_ms"], a, z)]
        if any(e["event"] == "overheat_alarm" for e in evs):
            continue
        rank = o.ranks[n]
        rs = [((rank[b], up), v) for b, up, v in o.v2_readings[n] if inside(rank, b, up, a, z)]
        start = None
        for e in evs:
            at = (rank[e["boot"]], e["up_ms"])
            if e["event"] == "cooling":
                start = at
            elif e["event"] == "cooled" and start is not None:
                if any(start < t <= at and v > ALARM_V3 for t, v in rs):
                    out.append(n)
                    break
                start = None
    return sorted(out)


def test_c_a_v3_that_breaks_its_gate_is_stopped_before_wave_1(scenario):
    o = scenario
    code, out = o.gate_create
    assert code == 3, out  # created (a draft) all the same, its preview refused
    rep = json.loads(out)["preview"]
    expect = breaking(o)
    assert expect, "boards that cool without v2's alarm but past v3's"
    for r in (rep, o.preview_v3):
        g = r["gate"]
        assert (g["bounds"], g["passed"]) == (GATE, False), g
        assert [b["bound"] for b in g["breaches"]] == [GATE], g
        assert sorted(g["breaches"][0]["devices"]) == expect, g
    per = by_device(o.preview_v3)
    for n in expect:
        assert (
            per[n]["running"]["events"]["overheat_alarm"],
            per[n]["new"]["events"]["overheat_alarm"],
        ) == (0, 1)
    # start refuses, in one line naming the bound and the devices
    code, text = o.gate_start
    assert code != 0
    line = text.strip()
    assert "\n" not in line and "Traceback" not in line, text
    assert f"rollout {o.rid3} cannot start" in line and GATE in line, line
    assert f"on {len(expect)} device(s)" in line, line
    named = [n for n in o.names if n in line]
    assert named and set(named) <= set(expect), line
    assert f"rollout {o.rid3} cannot start" in o.gate_start_api and GATE in o.gate_start_api
    # nothing was ever sent: the rollout is a draft, no command of it, every board on v2
    assert o.v3_state == "draft"
    assert o.v3_commands == 0 and o.installs == N, (o.v3_commands, o.installs)
    assert set(o.v3_versions.values()) == {2}
    # rollout status and the audit log show the gate and the preview's verdict
    broken = f"gate broken: {GATE} on {len(expect)} device(s)"
    assert f"preview gate: {GATE}" in o.gate_status and broken in o.gate_status, o.gate_status
    s = o.gate_status_json
    assert (s["state"], s["preview_gate"], s["preview"]["passed"]) == ("draft", GATE, False), s
    assert broken in s["preview"]["verdict"], s["preview"]
    previews = [e["detail"] for e in o.gate_log if e["event"] == "preview"]
    assert previews and all(broken in d for d in previews), o.gate_log


def test_d_a_rollback_that_would_strand_boards_is_reported_and_refused(scenario):
    o = scenario
    assert o.latched, "some boards latched in alarm (v2's state, which v1 lacks)"
    code, out = o.rollback_preview
    assert code == 3, out
    rep = json.loads(out)
    assert rep["to"] == "previous versions"
    stranded = rep["stranded"]
    assert sorted(s["device"] for s in stranded) == o.latched, stranded
    assert all(
        (s["version"], s["state"]) == ("kiln@2", "alarm") and "has no place in v1" in s["why"]
        for s in stranded
    ), stranded
    code, text = o.rollback_refused
    assert code != 0
    line = text.strip()
    assert "\n" not in line and "Traceback" not in line, text
    assert "kiln@1" in line and all(n in line for n in o.latched), line
    assert o.rollouts_after == o.rollouts_before, "no rollback was created"
    assert o.v2_after == "finished", "and the rollout it would undo was left as it was"
