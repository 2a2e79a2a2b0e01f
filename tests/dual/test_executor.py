"""Executor semantics, snapshots, migration, golden traces and zero allocation.

Programs come from the compiled blobs in tests/golden/executor.json (test_workflow checks
that compiling the sources gives exactly those blobs), so this module never runs the
compiler on MicroPython.

No test here calls gc.collect(): in the WASI MicroPython build a collection frees the
heap-allocated call frames of the Python functions on the stack (the test runner's among
them). The exact heap measurement therefore runs in a fresh interpreter (see
test_heap_footprint), and the whole module keeps well under the heap so no automatic
collection happens.
"""

from _util import MICROPYTHON, REPO, load_json, raises

from shared.workflow.executor import Executor, elapsed, ticks_add
from shared.workflow.form import (
    EV_BOOT,
    EV_COMMAND,
    EV_LINK_DOWN,
    EV_LINK_UP,
    EV_SAMPLE,
    EV_TIMER,
    NO_VALUE,
    S16_MAX,
    TICKS_MAX,
    VAR_MAX,
)
from shared.workflow.program import Program
from shared.workflow.snapshot import migrate_snapshot

try:
    GOLDEN = load_json("tests/golden/executor.json")
except OSError:  # not generated yet (python -m tools.dev.golden.workflows imports play from here)
    GOLDEN = None


def program(name):
    return Program(bytes.fromhex(GOLDEN["workflows"][name]["blob"]))


if GOLDEN is not None:
    LAB = program("lab")
    GREENHOUSE = program("greenhouse")
    GREENHOUSE_V1 = program("greenhouse_v1")


class Clock:
    """Virtual wrapping ms ticks."""

    def __init__(self, t=0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t = ticks_add(self.t, ms)


class Host:
    """Records host calls as [kind, name, value] lists."""

    def __init__(self, prog):
        self.p = prog
        self.log = []

    def output(self, i, v):
        self.log.append(["out", self.p.output_names[i], v])

    def publish(self, i, v):
        self.log.append(["pub", self.p.event_names[i], v])

    def set_period(self, i, ms):
        self.log.append(["period", self.p.input_names[i], ms])

    def take(self):
        log = self.log
        self.log = []
        return log


def run(prog=None, t=0):
    prog = prog or LAB
    clock = Clock(t)
    host = Host(prog)
    ex = Executor(prog, host, clock)
    ex.start()
    return ex, host, clock


def cmd(ex, name):
    i = ex.command_index(name)
    assert i >= 0, name
    return ex.step(EV_COMMAND, i)


def var(ex, name):
    return ex.vars[ex.program.var_names.index(name)]


def out(ex, name):
    return ex.outputs[ex.program.output_names.index(name)]


# Triggers and transitions.


def test_start_runs_initial_entry_then_boot():
    ex, host, _ = run()
    assert ex.state_name() == "s0"
    assert host.take() == [["out", "led", 1], ["pub", "note", 100]]
    assert var(ex, "n") == 5 and var(ex, "big") == 536870000
    assert ex.transitions == 1 and ex.events == 1


def test_link_events_and_set_period():
    ex, host, _ = run()
    host.take()
    assert ex.step(EV_LINK_UP, 0) == 1
    assert host.take() == [["pub", "note", 1]]
    assert ex.step(EV_LINK_DOWN, 0) == 1
    assert host.take() == [["pub", "note", 0], ["period", "a", 500]]
    assert ex.state_name() == "s0"


def test_command_external_transition_runs_exit_actions_entry():
    ex, host, _ = run()
    ex.feed(0, 42)
    host.take()
    assert cmd(ex, "go") == 1
    assert ex.state_name() == "s1"
    assert host.take() == [["out", "fan", 7], ["out", "led", 42]]
    assert ex.next_deadline_ms() == 500


def test_external_self_transition_runs_exit_and_entry():
    ex, host, _ = run()
    host.take()
    assert cmd(ex, "again") == 1
    assert ex.state_name() == "s0"
    assert host.take() == [["out", "fan", 7], ["out", "led", 1]]
    assert var(ex, "n") == 6


def test_internal_transition_runs_only_its_actions():
    ex, host, _ = run()
    host.take()
    assert cmd(ex, "inner") == 1
    assert host.take() == []
    assert var(ex, "n") == 6 and ex.transitions == 2


def test_unmatched_event_returns_0():
    ex, host, _ = run()
    host.take()
    assert ex.step(EV_TIMER, 0) == 0
    assert ex.step(EV_COMMAND, ex.command_index("stop")) == 0  # stop is only handled in s1
    assert ex.step(EV_BOOT, 0) == 1  # the boot transition is internal: it fires every time
    assert ex.events == 4 and ex.state_name() == "s0"


def test_operand_from_input_without_value_skips_the_action():
    ex, host, _ = run()
    host.take()
    cmd(ex, "go")  # s1 entry sets led from input a, which has no value yet
    assert host.take() == [["out", "fan", 7]]
    assert out(ex, "led") == 1


def test_add_var_saturates_and_outputs_clamp_to_s16():
    ex, host, _ = run()
    host.take()
    cmd(ex, "sat")
    assert var(ex, "big") == VAR_MAX and var(ex, "n") == VAR_MAX
    assert host.take() == [["out", "fan", S16_MAX]]
    cmd(ex, "neg")
    assert var(ex, "big") == -VAR_MAX
    assert host.take() == [["out", "fan", -S16_MAX]]


def test_above_for_ms_must_hold_on_every_sample():
    ex, host, clock = run()
    ex.feed(0, 150)
    clock.advance(500)
    ex.feed(0, 150)
    clock.advance(400)
    ex.feed(0, 100)  # not above 100: the hold restarts
    clock.advance(100)
    ex.feed(0, 101)
    assert ex.next_deadline_ms() == 1000
    clock.advance(999)
    assert ex.tick() == 0 and ex.next_deadline_ms() == 1
    clock.advance(1)
    assert ex.tick() == 1
    assert ex.state_name() == "s2"


def test_for_ms_fires_on_a_sample_once_held_long_enough():
    ex, host, clock = run()
    ex.feed(0, 200)
    clock.advance(1000)
    assert ex.step(EV_SAMPLE, 0, 200) == 1
    assert ex.state_name() == "s2"


def test_for_ms_hold_resets_on_state_entry_and_internal_repeats():
    ex, host, clock = run()
    ex.feed(0, 150)
    clock.advance(1000)
    ex.tick()
    assert ex.state_name() == "s2"
    host.take()
    n = var(ex, "n")
    ex.feed(0, 250)  # the s2 hold (above 200 for 300 ms) starts now, not at entry
    clock.advance(299)
    assert ex.tick() == 0
    clock.advance(1)
    assert ex.tick() == 1 and var(ex, "n") == n + 10
    assert ex.tick() == 0  # an internal for_ms transition needs a fresh full hold
    ex.feed(0, 250)
    clock.advance(300)
    ex.feed(0, 250)
    assert var(ex, "n") == n + 20 and ex.state_name() == "s2"


def test_crosses_up_and_down_need_strictly_past_and_a_previous_value():
    ex, host, _ = run()
    host.take()
    assert ex.feed(1, 10) == 10 and host.take() == []  # no previous value
    ex.feed(1, -5)
    assert host.take() == [["pub", "ev", 5]]  # down: publishes var n
    ex.feed(1, 0)
    assert host.take() == []  # not strictly past the level
    ex.feed(1, 5)
    assert host.take() == [["pub", "ev", 5]]  # up from 0 (equal): publishes input b
    ex.feed(1, 7)
    assert host.take() == []


def test_crosses_any_direction():
    for first, second in ((40, 60), (60, 40)):
        ex, host, _ = run()
        ex.feed(0, first)
        cmd(ex, "go")
        ex.feed(0, second)
        assert ex.state_name() == "s3", (first, second)


def test_timers_fire_in_order_across_tick_wraparound():
    ex, host, clock = run(t=TICKS_MAX - 300)
    cmd(ex, "go")
    host.take()
    clock.advance(400)  # wrapped past 2**30
    assert clock.t == 99
    assert ex.tick() == 0 and ex.next_deadline_ms() == 100
    clock.advance(100)
    assert ex.tick() == 1 and host.take() == [["pub", "note", 2]]
    assert ex.next_deadline_ms() == 500
    clock.advance(600)
    assert ex.tick() == 1 and ex.state_name() == "s0"
    assert ex.next_deadline_ms() == -1


def test_cancel_timer():
    ex, host, clock = run()
    cmd(ex, "go")
    cmd(ex, "stop")
    clock.advance(5000)
    assert ex.tick() == 1  # only t2
    assert ex.state_name() == "s1" and ex.next_deadline_ms() == -1


def test_guard_comparisons_and_inputs_without_value():
    ex, host, _ = run()
    cmd(ex, "inner")  # n = 6
    cmd(ex, "go")
    assert cmd(ex, "back") == 0  # input a has no value: the comparison is false
    ex.feed(0, 6)
    assert cmd(ex, "back") == 0  # a < n fails
    ex.feed(0, 5)
    assert cmd(ex, "back") == 1 and ex.state_name() == "s0"


def test_guard_var_against_var():
    ex, host, _ = run()
    ex.feed(0, 60)
    cmd(ex, "go")
    ex.feed(0, 40)
    assert ex.state_name() == "s3"
    assert cmd(ex, "back") == 1  # n != big


def test_final_state_ignores_events():
    ex, host, clock = run()
    ex.feed(0, 150)
    clock.advance(1000)
    ex.tick()
    host.take()
    assert cmd(ex, "end") == 1
    assert ex.state_name() == "done" and host.take() == [["out", "led", 0]]
    assert ex.program.is_final(ex.state)
    assert ex.step(EV_BOOT, 0) == 0 and cmd(ex, "go") == 0


def test_feed_counts_invalid_samples():
    ex, host, _ = run()
    assert ex.feed(0, None) is None
    assert ex.feed(1, 40000) is None
    assert ex.feed(1, 2000) == 1000  # clamp filter
    assert ex.invalid() == 2 and ex.events == 2
    assert ex.last[0] == NO_VALUE and ex.last[1] == 1000


def test_command_index_and_names():
    ex, _, _ = run()
    assert ex.command_index("go") == LAB.command_names.index("go")
    assert ex.command_index("nope") == -1
    assert LAB.state_names == ("s0", "s1", "s2", "s3", "done")
    assert LAB.input_channels == ("adc0", "adc1") and LAB.period_ms == (100, 200)


def test_elapsed_and_ticks_add_wrap():
    assert ticks_add(TICKS_MAX, 1) == 0
    assert ticks_add(TICKS_MAX - 5, 10) == 4
    assert ticks_add(7, 10) == 17
    assert elapsed(4, TICKS_MAX - 5) == 10
    assert elapsed(TICKS_MAX - 5, 4) == -10
    assert elapsed(1000, 400) == 600


def test_executor_constants_match_the_form():
    from shared.workflow import executor, form

    if MICROPYTHON:
        return  # private consts are folded away there; CPython keeps them as globals
    checked = 0
    for name in dir(executor):
        if name[:1] == "_" and name[1:2].isupper():
            twin = getattr(form, name[1:], getattr(form, name, None))
            if twin is not None:
                assert getattr(executor, name) == twin, name
                checked += 1
    assert checked >= 40, checked


# Snapshots and migration.


def test_snapshot_restore_round_trip():
    ex, host, clock = run(t=TICKS_MAX - 100)
    cmd(ex, "inner")
    ex.step(EV_LINK_DOWN, 0)
    ex.feed(0, 33)
    cmd(ex, "go")
    clock.advance(300)  # t1 has 700 ms left, t2 200
    snap = ex.snapshot()
    assert len(snap) == ex.snapshot_size()
    assert snap[:8] == LAB.hash_prefix

    clock2 = Clock(5)  # after a reboot ticks start over
    host2 = Host(LAB)
    ex2 = Executor(LAB, host2, clock2)
    ex2.restore(snap)
    ex2.start()
    # Every output comes back as it was, the changed period too; no entry actions run.
    assert host2.take() == [["out", "led", 33], ["out", "fan", 7], ["period", "a", 500]]
    assert ex2.state_name() == "s1" and var(ex2, "n") == 6
    assert ex2.next_deadline_ms() == 200
    clock2.advance(200)
    assert ex2.tick() == 1 and host2.take() == [["pub", "note", 2]]
    clock2.advance(500)
    assert ex2.tick() == 1 and ex2.state_name() == "s0"
    assert ex2.snapshot() != snap


def test_snapshot_into_preallocated_buffer():
    ex, _, _ = run()
    buf = bytearray(ex.snapshot_size() + 4)
    n = ex.snapshot_into(buf)
    assert n == ex.snapshot_size() and bytes(buf[:n]) == ex.snapshot()
    e = raises(ValueError, ex.snapshot_into, bytearray(3))
    assert "need %d" % n in str(e)


def test_restore_refuses_other_programs_and_malformed_snapshots():
    ex, _, _ = run()
    snap = ex.snapshot()
    other, _, _ = run(GREENHOUSE)
    e = raises(ValueError, other.restore, snap)
    assert "not from program greenhouse v2" in str(e)
    e = raises(ValueError, ex.restore, snap[:-1])
    assert "malformed" in str(e)
    bad = bytearray(snap)
    bad[9] = 9
    e = raises(ValueError, ex.restore, bytes(bad))
    assert "state 9 is out of range" in str(e)
    bad = bytearray(snap)
    bad[16:20] = b"\xff\xff\xff\x7f"
    e = raises(ValueError, ex.restore, bytes(bad))
    assert "var value 2147483647 is outside" in str(e)
    raises(ValueError, ex.restore, "text")
    assert ex.state_name() == "s0" and not ex._restored


def _v1_snapshot(state_cmds):
    ex, host, clock = run(GREENHOUSE_V1)
    ex.step(EV_LINK_DOWN, 0)
    for c in state_cmds:
        cmd(ex, c)
    clock.advance(1000)
    return ex.snapshot()


def test_migrate_by_map_carries_vars_outputs_timers_periods_by_name():
    snap = _v1_snapshot(["force_cool"])  # v1 state cool; the v2 map sends it to cooling
    new = migrate_snapshot(GREENHOUSE_V1, snap, GREENHOUSE)
    ex = Executor(GREENHOUSE, Host(GREENHOUSE), Clock(0))
    ex.restore(new)
    assert ex.state_name() == "cooling"
    assert var(ex, "cycles") == 0 and var(ex, "waterings") == 0 and var(ex, "alarm_level") == 3200
    assert out(ex, "fan") == 1 and out(ex, "relay1") == 1 and out(ex, "relay2") == 0
    assert ex.next_deadline_ms() == 59000  # cooldown carried; watering stays stopped
    assert list(ex._period) == [4000, 2000, 5000]  # temp's changed period carried


def test_migrate_by_same_name():
    snap = _v1_snapshot([])
    ex = Executor(GREENHOUSE, Host(GREENHOUSE), Clock(0))
    ex.restore(migrate_snapshot(GREENHOUSE_V1, snap, GREENHOUSE))
    assert ex.state_name() == "idle" and ex.next_deadline_ms() == -1


def test_migrate_refuses_a_state_with_no_place():
    snap = _v1_snapshot(["manual"])
    e = raises(ValueError, migrate_snapshot, GREENHOUSE_V1, snap, GREENHOUSE)
    assert str(e) == (
        "state 'manual' of greenhouse v1 has no place in v2: no migrate entry "
        "and no state of that name"
    )
    raises(ValueError, migrate_snapshot, GREENHOUSE, snap, GREENHOUSE)  # wrong old program


# The loader (shared.workflow.program.Program), on the golden lab blob.


def _lab_blob():
    return bytes.fromhex(GOLDEN["workflows"]["lab"]["blob"])


def _refused(blob, text):
    e = raises(ValueError, Program, blob)
    assert text in str(e), (text, str(e))


def _patch(blob, word, value):
    # Set int32 word `word` after the magic (the 18 header words, then the sections).
    import struct

    b = bytearray(blob)
    struct.pack_into("<i", b, 4 + 4 * word, value)
    return bytes(b)


def _filters_word(blob):
    # Word offset of the filters section: after states, transitions, guards, actions, inputs.
    import struct

    h = struct.unpack_from("<18i", blob, 4)
    return 18 + h[3] * 7 + h[4] * 10 + h[5] * 5 + h[6] * 4 + h[7] * 3


def test_program_loads_the_golden_blob():
    p = Program(_lab_blob())
    assert p.name == "lab" and p.version == 3 and p.hash == GOLDEN["workflows"]["lab"]["hash"]
    assert p.output_names == ("led", "fan") and p.var_names == ("n", "big")
    assert p.timer_names == ("t1", "t2") and p.event_names == ("ev", "note")
    assert p.command_names[:3] == ("go", "again", "inner") and p.var_init == (5, 536870000)
    assert p.filters(0) == [] and p.filters(1) == [(10, (-1000, 1000, 0))]
    assert len(p.trans) == 10 * 20 and p.migration(1) is None


def test_program_refuses_truncated_and_trailing_bytes():
    blob = _lab_blob()
    for n in (0, 3, 4, 75, 76, 77, len(blob) // 2, len(blob) - 1):
        raises(ValueError, Program, blob[:n])
    _refused(blob[:-1], "bytes where the header implies %d (truncated)" % len(blob))
    _refused(blob + b"\0", "(trailing bytes)")
    _refused(bytes(8193), "8193 bytes, over the 8192-byte limit")
    _refused("ORWF", "blob: expected bytes, got str")


def test_program_refuses_bad_magic_and_format():
    blob = _lab_blob()
    _refused(b"ORWX" + blob[4:], "bad magic")
    _refused(_patch(blob, 0, 2), "format 2, this loader reads format 1")


def test_program_refuses_counts_and_indexes_out_of_range():
    blob = _lab_blob()
    _refused(_patch(blob, 3, 33), "state count: 33 is outside [1, 32]")
    _refused(_patch(blob, 2, 5), "initial state: 5 is outside [0, 4]")
    # The first transition record follows the 5 state records of 7 words.
    _refused(_patch(blob, 18 + 35 + 9, 7), "transition 0 target: 7 is outside [-1, 4]")
    _refused(_patch(blob, 18 + 35 + 1, 5), "transition 0 arg: 5 is outside [0, 0]")
    _refused(_patch(blob, 18 + 35 + 0, 9), "transition 0 event: 9 is outside [0, 5]")
    _refused(_patch(blob, 18, 99), "state 0 transitions: range [99, 11) is not within")
    f = _filters_word(blob)
    _refused(_patch(blob, f, 99), "filter 0 code: 99 is not a filter code")
    _refused(_patch(blob, f + 2, 5), "filter 0 params: range [0, 5) is not within [0, 3)")


def test_program_checks_the_safe_states_in_the_state_flags():
    # pump: state 0 (idle) is safe, and both states carry safe_wait_s 2 from bit 8 on
    blob = bytes.fromhex(GOLDEN["workflows"]["pump"]["blob"])
    p = Program(blob)
    assert [p.states[s * 7 + 6] for s in range(2)] == [2 | 2 << 8, 2 << 8]
    _refused(_patch(blob, 18 + 7 + 6, 3 << 8), "state 1 flags: 256 is outside [0, 3]")
    _refused(_patch(blob, 18 + 6, 86401 << 8), "safe_wait_s: 86401 is outside [0, 86400]")
    # without safe states (no wait), no state may be marked safe
    _refused(_patch(_lab_blob(), 18 + 6, 2), "state 0 flags: 2 is outside [0, 1]")


def test_program_refuses_bad_strings():
    blob = bytearray(_lab_blob())
    i = blob.rindex(b"labs0s1")
    blob[i] = ord("L")
    _refused(bytes(blob), "strings: string 0 is not a name")
    blob[i] = ord("l")
    j = blob.rindex(b"s0s1")
    blob[j + 2 : j + 4] = b"s0"
    _refused(bytes(blob), "strings: duplicate state name 's0'")


# Golden traces.


def play(prog, trace):
    """Run a scripted trace; return [time, state, outputs, vars, host calls] after each step."""
    clock = Clock(trace["start_ms"])
    host = Host(prog)
    ex = Executor(prog, host, clock)
    ex.start()
    rows = [[clock.t, ex.state_name(), list(ex.outputs), list(ex.vars), host.take()]]
    for op in trace["script"]:
        k = op[0]
        if k == "at":
            clock.advance(op[1])
            ex.tick()
        elif k == "feed":
            ex.feed(prog.input_names.index(op[1]), op[2])
        elif k == "cmd":
            ex.step(EV_COMMAND, ex.command_index(op[1]))
        elif k == "link":
            ex.step(EV_LINK_UP if op[1] == "up" else EV_LINK_DOWN, 0)
        elif k == "reboot":
            snap = ex.snapshot()
            clock = Clock(op[1])
            ex = Executor(prog, host, clock)
            ex.restore(snap)
            ex.start()
        else:
            raise ValueError("unknown trace op %r" % (k,))
        rows.append([clock.t, ex.state_name(), list(ex.outputs), list(ex.vars), host.take()])
    return rows


def test_golden_traces():
    assert len(GOLDEN["traces"]) >= 2
    for trace in GOLDEN["traces"]:
        rows = play(program(trace["workflow"]), trace)
        expect = trace["expect"]
        assert len(rows) == len(expect), trace["name"]
        for i in range(len(rows)):
            assert rows[i] == expect[i], (trace["name"], i, rows[i], expect[i])


def test_golden_blobs_are_what_the_sources_compile_to():
    if MICROPYTHON:
        # test_workflow compiles the sources on MicroPython and checks the hashes.
        assert GREENHOUSE.hash == GOLDEN["workflows"]["greenhouse"]["hash"]
        return
    from shared.workflow import compiler

    for name, g in GOLDEN["workflows"].items():
        with open(REPO + "/cloud/orrery/sim/workflows/" + name + ".json", "rb") as f:
            c = compiler.compile(f.read())
        assert c.blob.hex() == g["blob"] and c.hash == g["hash"], name
        assert Program(c.blob).hash == c.hash


# Allocation and heap.


class _RecHost:
    # Records into preallocated arrays: allocates nothing.
    def __init__(self):
        from array import array

        self.out = array("i", [0] * 16)
        self.pub = array("i", [0] * 16)
        self.calls = 0

    def output(self, i, v):
        self.out[i] = v
        self.calls += 1

    def publish(self, i, v):
        self.pub[i] = v
        self.calls += 1

    def set_period(self, i, ms):
        self.calls += 1


class _Driver:
    """Replays a golden trace script one op per ``one()`` call, from preallocated arrays."""

    def __init__(self, prog, trace):
        from array import array

        self.prog = prog
        self.clock = Clock(trace["start_ms"])
        self.host = _RecHost()
        self.ex = Executor(prog, self.host, self.clock)
        self.ex.start()
        self.buf = bytearray(self.ex.snapshot_size())
        ops = trace["script"]
        self.kind = array("i", [0] * len(ops))
        self.arg = array("i", [0] * len(ops))
        self.val = array("i", [0] * len(ops))
        for i in range(len(ops)):
            op = ops[i]
            if op[0] == "at":
                self.val[i] = op[1]
            elif op[0] == "feed":
                self.kind[i] = 1 if op[2] is not None else 2
                self.arg[i] = prog.input_names.index(op[1])
                self.val[i] = op[2] or 0
            elif op[0] == "cmd":
                self.kind[i] = 3
                self.arg[i] = EV_COMMAND
                self.val[i] = self.ex.command_index(op[1])
            elif op[0] == "link":
                self.kind[i] = 3
                self.arg[i] = EV_LINK_UP if op[1] == "up" else EV_LINK_DOWN
            else:
                self.kind[i] = 4
                self.val[i] = op[1]
        self.i = 0

    def one(self):
        i = self.i
        k = self.kind[i]
        if k == 0:
            self.clock.advance(self.val[i])
            self.ex.tick()
            self.ex.next_deadline_ms()
        elif k == 1:
            self.ex.feed(self.arg[i], self.val[i])
        elif k == 2:
            self.ex.feed(self.arg[i], None)
        elif k == 3:
            self.ex.step(self.arg[i], self.val[i])
        else:
            self.ex.snapshot_into(self.buf)
        self.i = i + 1

    def reboot(self):
        # Restoring on a new Executor allocates by design; the snapshot itself does not.
        self.clock.t = self.val[self.i - 1]
        ex = Executor(self.prog, self.host, self.clock)
        ex.restore(bytes(self.buf))
        ex.start()
        self.ex = ex


def _alloc_bytes(fn):
    # Bytes allocated by fn() under heap_lock, or -1 if it raised MemoryError. heap_lock
    # cannot see call frames over 11 words (taken from the heap when it is unlocked and
    # silently from the C stack when locked); micropython.mem_total() does.
    import micropython

    m0 = micropython.mem_total()
    micropython.heap_lock()
    try:
        fn()
        locked_ok = True
    except MemoryError:
        locked_ok = False
    finally:
        micropython.heap_unlock()
    return micropython.mem_total() - m0 if locked_ok else -1


def mp_test_feed_step_tick_snapshot_allocate_nothing():
    for trace in GOLDEN["traces"]:
        d = _Driver(program(trace["workflow"]), trace)
        one = d.one
        bad = []
        while d.i < len(d.kind):
            i = d.i
            n = _alloc_bytes(one)
            if n:
                bad.append((trace["name"], i, trace["script"][i], n))
            if d.kind[i] == 4:
                d.reboot()
        assert bad == [], bad
        # The run took the golden trace's path: it ends in the same state, outputs, vars.
        last = trace["expect"][-1]
        got = [d.ex.state_name(), list(d.ex.outputs), list(d.ex.vars)]
        assert got == last[1:4], (trace["name"], got, last)
        assert d.host.calls >= 20, d.host.calls


_MEASURE = """
import gc
import json

from shared.workflow import executor, load, program, snapshot, start  # code, not workflow data
from shared.filters import catalog

for code in range(1, 16):  # every filter class's module: code too
    catalog.filter_class(code)


class Host:
    def output(self, i, v):
        pass

    def publish(self, i, v):
        pass

    def set_period(self, i, v):
        pass


# Everything lives in module globals: the collector must see it from a root.
HOLD = [None, None, Host(), None, None, None]


def clock():
    return 0


def build():
    HOLD[0] = program.Program(HOLD[3])
    HOLD[1] = executor.Executor(HOLD[0], HOLD[2], clock)


def measure(i):
    HOLD[3] = bytes.fromhex(HOLD[4][i])
    HOLD[0] = HOLD[1] = None
    gc.collect()
    m0 = gc.mem_alloc()
    build()
    gc.collect()
    HOLD[5].append(gc.mem_alloc() - m0)


def main():
    with open("/m/blobs.json") as f:
        HOLD[4] = json.load(f)
    HOLD[5] = []
    for i in range(len(HOLD[4])):
        measure(i)
    print(json.dumps(HOLD[5]))
"""


def test_heap_footprint():
    names = sorted(GOLDEN["workflows"])
    if MICROPYTHON:
        # Without a collection the delta also holds construction garbage, so it bounds
        # the retained heap from above: heap_bytes must not exceed 1.5x it + 512.
        import gc

        for name in names:
            blob = bytes.fromhex(GOLDEN["workflows"][name]["blob"])
            est = GOLDEN["workflows"][name]["heap_bytes"]
            m0 = gc.mem_alloc()
            p = Program(blob)
            ex = Executor(p, None, None)
            used = gc.mem_alloc() - m0
            assert ex.state == p.initial
            assert 0 < est <= used * 3 // 2 + 512, (name, used, est)
        return
    # The exact figure: gc.mem_alloc() across Program + Executor, with a collection before
    # and after, in a fresh MicroPython whose running code is rooted (module functions).
    import json
    import tempfile
    from pathlib import Path

    from tools.dev import mpwasm

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "measure.py").write_text(_MEASURE)
        blobs = [GOLDEN["workflows"][n]["blob"] for n in names]
        Path(tmp, "blobs.json").write_text(json.dumps(blobs))
        code = "import sys\nsys.path.insert(0, '/m')\nimport measure\nmeasure.main()\n"
        used = mpwasm.run_json(code, mounts={"/m": tmp})
    for name, n in zip(names, used, strict=True):
        est = GOLDEN["workflows"][name]["heap_bytes"]
        assert 0 < n <= est <= n * 1.5 + 512, (name, n, est)
        if name == "greenhouse":
            print("greenhouse heap: measured", n, "computed", est)
