"""Starting an executor: building its state arrays and filter chains, and entering the
initial state (or re-applying a restored snapshot's outputs). Once per activation, so a board
imports this module only then and drops it again (``firmware.drop``);
``shared.workflow.executor`` keeps what runs per event.
"""

from array import array

from shared import const

# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_EV_BOOT = const(0)
_NO_VALUE = const(-536870912)  # -2**29: an input with no value yet; outside every range
_SNAP_HEADER = const(16)  # bytes before the int32 words
_TW = const(10)
# Copied from shared/workflow/executor.py by python -m tools.dev.consts: edit them there.
_OFF = const(-1)  # a timer that is not running; a for_ms hold not started


def init(ex, program, host, clock):
    """``Executor(program, host, clock)``: set up ``ex``."""
    p = program
    ex.program = p
    ex._host = host
    ex._clock = clock
    ex._st = p.states
    ex._tr = p.trans
    ex._gd = p.guards
    ex._ac = p.acts
    from shared.filters import catalog  # building chains only: start() needs none of it

    ni = len(p.input_names)
    chains = []
    for i in range(ni):
        chains.append(catalog.build_chain(p.filters(i)))
    ex._chains = tuple(chains)
    ex.vars = _zeros(len(p.var_names), 0)
    ex.outputs = _zeros(len(p.output_names), 0)
    ex.last = _zeros(ni, _NO_VALUE)
    ex._deadline = _zeros(len(p.timer_names), _OFF)
    ex._hold = _zeros(len(p.trans) // _TW, _OFF)
    ex._period = _zeros(ni, 0)
    ex._ntimers = len(p.timer_names)
    ex._snap_size = _SNAP_HEADER + 4 * (ni + len(p.var_names) + len(p.output_names) + ex._ntimers)
    ex.state = p.initial
    ex._now = 0
    ex._prev = _NO_VALUE
    ex._restored = False
    ex.transitions = 0
    ex.events = 0
    _reset(ex)


def _reset(ex):
    p = ex.program
    for i in range(len(p.var_init)):
        ex.vars[i] = p.var_init[i]
    for i in range(len(p.period_ms)):
        ex._period[i] = p.period_ms[i]


def start(ex):
    """``Executor.start()``: enter the initial state (or, after ``restore``, re-apply the
    saved outputs and periods through the host), then deliver the boot event."""
    ex._now = ex._clock()
    if ex._restored:
        for o in range(len(ex.outputs)):
            ex._host.output(o, ex.outputs[o])
        for i in range(len(ex._period)):
            if ex._period[i] != ex.program.period_ms[i]:
                ex._host.set_period(i, ex._period[i])
    else:
        _reset(ex)
        for o in range(len(ex.outputs)):
            ex.outputs[o] = 0
        ex._enter(ex.program.initial)
    ex.step(_EV_BOOT, 0)


def _zeros(n, fill):
    a = array("i", bytes(4 * n))
    for i in range(n):
        a[i] = fill
    return a
