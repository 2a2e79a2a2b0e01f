"""Pure logic that runs unchanged on MicroPython and CPython: ``filters/`` (fixed-point sensor
filters), ``workflow/`` (definitions, the compiled device form and its executor) and ``wire/``
(the MQTT protocol between a board and the companion).

Every module of ``shared/`` and ``firmware/`` takes ``const`` from here: MicroPython's own, which
mpy-cross folds into the bytecode (it recognises ``X = const(...)`` by name), or on CPython the
identity.
"""

try:
    from micropython import const
except ImportError:

    def const(x):
        return x
