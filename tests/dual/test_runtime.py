"""The runtime itself: prove the MicroPython run is real and has the ESP32's small-int limit."""

import sys

from _util import MICROPYTHON, allocates


def test_runtime_identity():
    if MICROPYTHON:
        assert sys.implementation.name == "micropython"
        assert sys.maxsize == 2147483647  # 32-bit, like the ESP32
    else:
        assert sys.implementation.name == "cpython"


def mp_test_small_int_boundary_allocates():
    top = (1 << 30) - 1
    assert not allocates(lambda: top + 0)
    assert allocates(lambda: top + 1)
    assert allocates(lambda: [1])
