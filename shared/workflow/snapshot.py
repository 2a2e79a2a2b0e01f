"""Executor snapshots (the layout is ``shared.workflow.form``'s): decode and check one,
restore it into an executor, or carry it over to another version of the program. Once per
activation or install, so a board imports this module only then and drops it again
(``firmware.drop``).
"""

import struct

from shared import const

# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_DURATION_MAX = const(536870911)  # ms; half the 2**30 tick range, so tick diffs are exact
_PERIOD_MIN = const(10)  # ms
_S16_MAX = const(32767)
_SNAP_FORMAT = const(1)
_SNAP_HEADER = const(16)  # bytes before the int32 words
_VAR_MAX = const(536870911)  # 2**29 - 1
# Copied from shared/workflow/executor.py by python -m tools.dev.consts: edit them there.
_OFF = const(-1)  # a timer that is not running; a for_ms hold not started


def restore(ex, snap):
    """``Executor.restore(snap)``: load a snapshot of ex's program into ``ex``."""
    state, vs, outs, timers, periods = _parse(ex.program, snap)
    now = ex._clock()
    ex.state = state
    ex._now = now
    for i in range(len(vs)):
        ex.vars[i] = vs[i]
    for i in range(len(outs)):
        ex.outputs[i] = outs[i]
    for i in range(len(timers)):
        ex._arm(i, timers[i])
    for i in range(len(periods)):
        ex._period[i] = periods[i]
    for t in range(len(ex._hold)):
        ex._hold[t] = _OFF
    ex._restored = True


def _parse(p, snap):
    # Decode and check a snapshot of program p: (state, vars, outputs, timers, periods).
    if not isinstance(snap, (bytes, bytearray)):
        raise ValueError("snapshot: expected bytes, got " + type(snap).__name__)
    nv, no, nt, ni = (len(p.var_names), len(p.output_names), len(p.timer_names), len(p.input_names))
    size = _SNAP_HEADER + 4 * (nv + no + nt + ni)
    if len(snap) < _SNAP_HEADER or bytes(snap[:8]) != p.hash_prefix:
        raise ValueError(
            "snapshot: not from program %s v%d (hash %s...)" % (p.name, p.version, p.hash[:16])
        )
    if snap[8] != _SNAP_FORMAT or tuple(snap[10:14]) != (nv, no, nt, ni) or len(snap) != size:
        raise ValueError(
            "snapshot: malformed (format %d, %d bytes, want format %d, %d bytes)"
            % (snap[8], len(snap), _SNAP_FORMAT, size)
        )
    state = snap[9]
    if state >= len(p.state_names):
        raise ValueError("snapshot: state %d is out of range" % state)
    w = struct.unpack_from("<%di" % (nv + no + nt + ni), snap, _SNAP_HEADER)
    vs, outs, timers, periods = (
        w[:nv],
        w[nv : nv + no],
        w[nv + no : nv + no + nt],
        w[nv + no + nt :],
    )
    for v in vs:
        _check("var", v, -_VAR_MAX, _VAR_MAX)
    for v in outs:
        _check("output", v, -_S16_MAX, _S16_MAX)
    for v in timers:
        _check("timer", v, -1, _DURATION_MAX)
    for v in periods:
        _check("period_ms", v, _PERIOD_MIN, _DURATION_MAX)
    return state, vs, outs, timers, periods


def _check(what, v, lo, hi):
    if v < lo or v > hi:
        raise ValueError("snapshot: %s value %d is outside [%d, %d]" % (what, v, lo, hi))


def migrate_snapshot(old_program, snap, new_program):
    """Carry a snapshot of ``old_program`` over to ``new_program``; return its bytes.

    The state maps through ``new_program``'s migrate map for ``old_program.version``, else
    to the state of the same name; ValueError names a state with no place in the new
    version. Vars, outputs, timers and changed periods carry over by name; new vars get
    their init, new outputs 0, new timers stay stopped, other periods are the new defaults.
    """
    state, vs, outs, timers, periods = _parse(old_program, snap)
    s = migrated_state(old_program, old_program.state_names[state], new_program)
    p = new_program
    words = []
    _carry(words, p.var_names, old_program.var_names, vs, p.var_init)
    _carry(words, p.output_names, old_program.output_names, outs, 0)
    _carry(words, p.timer_names, old_program.timer_names, timers, -1)
    changed = []
    for i in range(len(periods)):
        changed.append(periods[i] if periods[i] != old_program.period_ms[i] else -1)
    n = len(words)
    _carry(words, p.input_names, old_program.input_names, changed, -1)
    for i in range(len(p.input_names)):
        if words[n + i] < 0:
            words[n + i] = p.period_ms[i]
    head = bytes(p.hash_prefix) + bytes(
        (
            _SNAP_FORMAT,
            s,
            len(p.var_names),
            len(p.output_names),
            len(p.timer_names),
            len(p.input_names),
            0,
            0,
        )
    )
    return head + struct.pack("<%di" % len(words), *words)


def migrated_state(old_program, old_name, new_program):
    """The index in ``new_program`` of ``old_program``'s state named ``old_name``: through
    ``new_program``'s migrate map for ``old_program.version``, else the state of the same
    name; ValueError naming the state when it has no place in the new version (the board
    then refuses the install)."""
    new = new_program.migration(old_program.version)
    if new is not None and old_name in new:
        return new[old_name]
    if old_name in new_program.state_names:
        return new_program.state_names.index(old_name)
    raise ValueError(
        "state %r of %s v%d has no place in v%d: no migrate entry and no state of that name"
        % (old_name, old_program.name, old_program.version, new_program.version)
    )


def _carry(words, names, old_names, old_values, default):
    # Append each of names' value: the old one if old_names has that name, else the
    # default (one per name if a tuple, else the same int for all).
    for i in range(len(names)):
        if names[i] in old_names:
            words.append(old_values[old_names.index(names[i])])
        elif isinstance(default, tuple):
            words.append(default[i])
        else:
            words.append(default)
