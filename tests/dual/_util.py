"""Helpers for tests that run unchanged on CPython and on MicroPython."""

import sys

MICROPYTHON = sys.implementation.name == "micropython"
if MICROPYTHON:
    REPO = "/repo"
else:
    REPO = __file__.rsplit("/", 3)[0]

GOLDEN = REPO + "/tests/golden"


def load_json(path):
    """Read a JSON file from the repository (a path relative to the repo root)."""
    import json

    with open(REPO + "/" + path) as f:
        return json.load(f)


def raises(exc_type, fn, *args):
    """Assert that ``fn(*args)`` raises ``exc_type``; return the exception."""
    try:
        fn(*args)
    except exc_type as e:
        return e
    raise AssertionError("expected " + exc_type.__name__)


def allocates(fn):
    """True if calling ``fn()`` allocates on the heap (MicroPython only).

    Two witnesses: ``heap_lock()`` (an allocation raises MemoryError) and the interpreter's
    running total of allocated bytes (``mem_total``), which also sees the one allocation
    heap_lock hides: a call frame too large for the C stack falls back to it silently when
    the heap is locked. Pass a zero-argument closure: ``fn(*args)`` would itself allocate.
    """
    import micropython

    before = micropython.mem_total()
    micropython.heap_lock()
    try:
        fn()
        result = False
    except MemoryError:
        result = True
    finally:
        micropython.heap_unlock()
    before = micropython.mem_total() - before
    return result or before != 0
