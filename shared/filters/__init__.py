"""Integer-only fixed-point sensor filters on preallocated ring buffers.

Everything here runs unchanged on CPython 3.11 and on MicroPython. One small class per
filter, each in its own module, so that a board loads only the filters its workflow uses:

==============================  =======================================================
module                          filter types (``shared.filters.spec``) and classes
==============================  =======================================================
``shared.filters``              ``Chain``; the number format; the helpers below
``shared.filters.catalog``      codes, ``build``, ``build_chain`` (loaded to build, then
                                dropped on a board)
``.moving_average``             moving_average: ``MovingAverage``
``.median``                     median: ``Median``
``.minmax``                     min, max: ``WindowMin``, ``WindowMax``
``.ema``                        ema, lowpass, highpass: ``Ema``, ``LowPass``, ``HighPass``
``.biquad``                     biquad: ``Biquad``
``.delta``                      delta: ``Delta``
``.clamp``                      clamp: ``Clamp``
``.calibrate``                  calibrate: ``CalibrateLinear``
``.hysteresis``                 hysteresis: ``Hysteresis``
``.debounce``                   debounce: ``Debounce``
``.throttle``, ``.heartbeat``   throttle: ``Throttle``; heartbeat: ``Heartbeat``
==============================  =======================================================

Number format
-------------
Samples (S16)
    Every sample is an int in [-32767, 32767]. -32768 is excluded so that saturation is
    symmetric and negating a sample never leaves the range. Drivers scale raw readings into
    this range (for example centi-degrees). Every filter output is an int in the same range.
Coefficients (Q14)
    A real coefficient c is stored as the int round(c * 16384) in [-32767, 32767], which
    represents [-1.99994, 1.99994]: "[-2, 2)" minus its bottom step, so quantizing a real
    coefficient errs by at most 2**-15. 32767 * 32767 = 1073676289 < 2**30, so any S16 x Q14
    product is a MicroPython small int.
Small ints
    Every intermediate value stays within [-2**30, 2**30 - 1], MicroPython's small-int range
    on 32-bit ports (beyond it an int is a heap object). The bound is noted beside each
    intermediate where it is not obvious.
Rounding
    One rule: round half away from zero (``shr_round``; the updates inline the same
    expressions, as a call costs more than the rest of them). Right shifts of negative ints
    are arithmetic (floor) on both runtimes, so every result is bit-identical on CPython and
    MicroPython. The one other truncation is Biquad's floor of each product by 3 bits before
    summing, under 5 * 2**-11 LSB per output (see Biquad).
Counters
    Counters (``Chain.invalid`` ...) wrap to 0 after 2**29 - 1, so they stay small ints.

Interface
---------
Every filter has ``update(x)`` -> int or None (None: nothing to emit; a Chain stops there)
and ``reset()``. ``update(x)`` expects an int in S16 (``Chain.update`` checks this, once for
the chain) and allocates nothing on MicroPython: no floats, big ints, containers or slices.
Windowed filters (window 1..MAX_WINDOW) emit None until the window is full; with
``partial=True`` they emit over the samples seen so far. Constructors check their arguments
and raise ValueError naming the parameter.

How a filter keeps its state: in the locals of a generator, started by the constructor, and
``update`` is that generator's ``send`` (see ``Filter``). MicroPython interprets every
bytecode, attribute lookup and call, so their count is the cost: a local costs a tenth of an
attribute, and resuming a generator skips the call frame set-up of a method. The generator
frame is allocated once, with the filter, so nothing is allocated per sample. The updates
also test the common case first (a full window, an unsaturated output) and write rings
backwards so that the wrap test compares with 0. A Chain keeps each filter's ``update``.
``@micropython.native`` would speed the updates up further on a board; the benchmark and the
tests measure plain bytecode, which the WASI runtime runs.
"""

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


SAMPLE_MAX = const(32767)  # samples and outputs are in [-SAMPLE_MAX, SAMPLE_MAX]
Q14_ONE = const(16384)  # 1.0 as a Q14 coefficient
MAX_WINDOW = const(64)  # largest window of MovingAverage, Median, WindowMin, WindowMax
MAX_COUNT = const(32767)  # largest n of Debounce, Throttle, Heartbeat

_SMAX = const(32767)
_CMASK = const(0x1FFFFFFF)
_SEQ = (list, tuple)  # built once: a (list, tuple) literal in a function is built per call
_NONE = [None]
_INT = int  # module-level names are found faster than builtins on MicroPython


def check_int(name, v, lo, hi):
    """``v`` if it is an int (not a bool) in [lo, hi], else ValueError naming ``name``."""
    if type(v) is not int:
        raise ValueError("%s: %r is not an int" % (name, v))
    if v < lo or v > hi:
        raise ValueError("%s: %d is outside [%d, %d]" % (name, v, lo, hi))
    return v


def check_flag(name, v):
    """``v`` as a bool if it is one, or 0/1 as compiled params carry it; else ValueError."""
    if v is True or v is False:
        return v
    if type(v) is int and (v == 0 or v == 1):
        return v == 1
    raise ValueError("%s: %r is not a bool or 0/1" % (name, v))


class Reset(Exception):
    """Thrown into a filter's generator by ``Filter.reset``: it starts over."""


class Filter:
    """The base of every filter: ``start`` runs the filter's generator to its first ``yield``
    and makes its ``send`` the filter's ``update``.

    A filter's generator sets its state up, yields None, then loops: ``x = yield y`` takes a
    sample and hands back the previous output. It catches ``Reset`` around that loop and sets
    its state up again, so ``reset()`` keeps the same ``update`` (a Chain holds it).
    An ``update`` outside the interface (not an int) raises and ends the generator: from then
    on ``update`` raises StopIteration; build a new filter. ``Chain.update`` checks every
    reading first, so a chain never gets there.
    """

    def start(self, g):
        """Run ``g`` to its first ``yield``; ``update`` becomes ``g.send``."""
        next(g)
        self._g = g
        self.update = g.send

    def reset(self):
        """Forget every sample and zero the counters."""
        self._g.throw(Reset)


def shr_round(v, s):
    """``v / 2**s`` rounded half away from zero; ``s >= 1``, ``|v| + 2**(s-1) < 2**30``."""
    h = 1 << (s - 1)
    if v >= 0:
        return (v + h) >> s
    return -((h - v) >> s)


def saturate(f, v):
    """S16's end on ``v``'s side, for an out-of-range ``v``; counts it in ``f.saturated``."""
    f.saturated = (f.saturated + 1) & _CMASK
    if v > 0:
        return _SMAX
    return -_SMAX


class Chain:
    """Run samples through ``filters`` in order (the sequence is kept, not copied).

    ``invalid`` counts the rejected readings.
    """

    def __init__(self, filters):
        if not isinstance(filters, _SEQ):
            raise ValueError("filters: %r is not a list" % (filters,))
        u = _NONE * len(filters)  # exactly one slot per filter, no garbage
        for i in range(len(filters)):
            f = getattr(filters[i], "update", None)
            if not callable(f):
                raise ValueError("filters[%d]: %r has no update()" % (i, filters[i]))
            u[i] = f
        self.filters = filters
        self._updates = u
        self.invalid = 0

    def reset(self):
        """Reset every filter and the counter."""
        for f in self.filters:
            f.reset()
        self.invalid = 0

    def update(self, x):
        """Feed one reading; return the chain's output or None.

        A reading that is None or not an int in S16 (a failed sensor read) is counted in
        ``invalid`` and touches no filter. Otherwise it goes through the filters in order
        and the first None stops it.
        """
        if x.__class__ is not _INT or x > _SMAX or x < -_SMAX:  # x.__class__: no call
            self.invalid = (self.invalid + 1) & _CMASK
            return None
        for u in self._updates:
            x = u(x)
            if x is None:
                return None
        return x
