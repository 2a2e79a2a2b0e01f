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
    """True if calling ``fn()`` allocates on the heap (MicroPython only, via heap_lock).

    Pass a zero-argument closure: a ``fn(*args)`` call would itself allocate the args tuple.
    """
    import micropython

    micropython.heap_lock()
    try:
        fn()
        result = False
    except MemoryError:
        result = True
    finally:
        micropython.heap_unlock()
    return result
