"""The heap a compiled workflow holds on a board: its Program, an Executor running it and
their filter chains, by MicroPython's 32-bit heap model (the dual tests check it against
``gc.mem_alloc``).
"""

from array import array

from shared.filters.spec import chain_footprint
from shared.workflow.executor import Executor

# Heap model of MicroPython's 32-bit ports: 16-byte GC blocks; an instance is one block
# plus its attribute table (8 bytes per slot, slots as below); a str or bytes a 16-byte
# header plus its data and NUL; an array a header plus its items; a tuple one block.
_SLOTS = (0, 2, 4, 6, 8, 10, 12, 17, 23, 29, 37, 47, 59, 73)


def _blocks(n):
    return (n + 15) // 16 * 16


def _heap(x):
    if isinstance(x, (str, bytes)):
        return 16 + _blocks(len(x) + 1)
    if isinstance(x, array):
        return 16 + _blocks(4 * len(x))
    if isinstance(x, tuple):
        n = _blocks(8 + 4 * len(x)) if x else 0
        for v in x:
            n += _heap(v)
        return n
    return 0


def _instance(obj, skip):
    d = obj.__dict__
    slots = 0
    for s in _SLOTS:
        slots = s
        if s >= len(d):
            break
    n = 16 + _blocks(8 * slots)
    for k in d:
        v = d[k]
        shared = False
        for s in skip:
            shared = shared or v is s
        if not shared:
            n += _heap(v)
    return n


def heap_bytes(prog):
    """Upper bound of the MicroPython heap held by ``prog`` plus an Executor running it
    (with its filter chains); interned names make the real figure a little lower."""
    ex = Executor(prog, None, None)
    n = _instance(prog, ()) + _instance(ex, list(prog.__dict__.values()))
    for i in range(len(prog.input_names)):
        n += chain_footprint(prog.filters(i))
    return n
