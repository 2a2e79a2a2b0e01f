"""Integer-only fixed-point sensor filters on preallocated ring buffers.

Boards import this module; it runs unchanged on CPython 3.11 and on MicroPython.

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
    One rule: round half away from zero (``_shr_round``; the updates inline the same
    expressions, as a call costs more than the rest of them). Right shifts of negative ints
    are arithmetic (floor) on both runtimes, so every result is bit-identical on CPython and
    MicroPython. The one other truncation is Biquad's floor of each product by 3 bits before
    summing, under 5 * 2**-11 LSB per output (see Biquad).
Counters
    Counters (``Chain.accepted`` ...) wrap to 0 after 2**29 - 1, so they stay small ints.

Interface
---------
Every filter has ``update(x)`` -> int or None (None: nothing to emit; a Chain stops there)
and ``reset()``; ``__call__`` is the same function, which is how a Chain calls it (on
MicroPython ``f(x)`` finds it on the class alone, ``f.update(x)`` searches the instance's
attributes first). ``update(x)`` expects an int in S16 (``Chain.update`` checks this, once
for the chain) and allocates nothing on MicroPython: no floats, big ints, containers or
slices, and each update keeps its locals plus stack depth within 11 words (MicroPython puts
larger call frames on the heap). Windowed filters (window 1..MAX_WINDOW) emit None until
the window is full; with ``partial=True`` they emit over the samples seen so far.

Speed: MicroPython interprets every bytecode, attribute lookup and call, so their count is
the cost. The hot updates read an attribute once into a local when they need it twice, test
the common case first (a full window, an unsaturated output), and write rings backwards so
that the wrap test compares with 0. (``@micropython.native`` would speed them up further on a board; the benchmark and
the tests measure plain bytecode, which the WASI runtime runs.)

``FILTER_CODES``, ``build`` and ``build_chain`` turn the compact ``(code, params)`` form
produced by ``shared.filterspec.compile_spec`` into filter instances.
"""

from array import array

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
_INT = int  # module-level names are found faster than builtins on MicroPython
_LOW = [-32768]  # Median's sorted list is made as _LOW * n: one list, no garbage


def _int(name, v, lo, hi):
    # Constructor argument check: an int (not a bool) in [lo, hi].
    if type(v) is not int:
        raise ValueError("%s: %r is not an int" % (name, v))
    if v < lo or v > hi:
        raise ValueError("%s: %d is outside [%d, %d]" % (name, v, lo, hi))
    return v


def _flag(name, v):
    # A bool, or 0/1 as compiled params carry it.
    if v is True or v is False:
        return v
    if type(v) is int and (v == 0 or v == 1):
        return v == 1
    raise ValueError("%s: %r is not a bool or 0/1" % (name, v))


def _zeros(typecode, n):
    # Grown by append so construction leaves no garbage (a [0] * n list would).
    a = array(typecode)
    for _ in range(n):
        a.append(0)
    return a


def _shr_round(v, s):
    """``v / 2**s`` rounded half away from zero; ``s >= 1``, ``|v| + 2**(s-1) < 2**30``."""
    h = 1 << (s - 1)
    if v >= 0:
        return (v + h) >> s
    return -((h - v) >> s)


def _clip(f, v):
    # Saturate an out-of-range v to S16 and count it in f.saturated.
    f.saturated = (f.saturated + 1) & _CMASK
    if v > 0:
        return _SMAX
    return -_SMAX


class MovingAverage:
    """Rounded mean of the last ``window`` samples, from a running sum over a ring."""

    ARGS = ("window", "partial")

    def __init__(self, window, partial=False):
        self.window = _int("window", window, 1, MAX_WINDOW)
        self.partial = _flag("partial", partial)
        self._ring = _zeros("h", window)
        self.reset()

    def reset(self):
        """Forget every sample."""
        r = self._ring
        for i in range(self.window):
            r[i] = 0
        # The ring is written backwards (the wrap test compares with 0). While it fills, the
        # index is negative: -k for the k-th sample, and r[-k] is slot window - k.
        self._i = -1
        self._n = 0  # samples in the window (kept on the slow path only)
        self._sum = 0

    def update(self, x):
        """Add ``x``; return the window mean, or None while the window is not full."""
        r = self._ring
        i = self._i
        s = self._sum + x - r[i]  # slots not yet filled hold 0; |s| <= 64 * 32767 < 2**21
        self._sum = s
        r[i] = x
        n = self.window
        if i > 0:
            self._i = i - 1
        elif i == 0 or i == -n:  # wrapped, or the window is now full
            self._i = n - 1
            self._n = n
        else:  # filling: -i samples so far
            self._i = i - 1
            self._n = -i
            if not self.partial:
                return None
            n = -i
        if s >= 0:  # round half away from zero: 2*|s| + n < 2**22
            return (s + s + n) // (n + n)
        return -((n - s - s) // (n + n))

    __call__ = update


class Median:
    """Median of the last ``window`` samples (``window`` odd).

    Keeps a sorted copy of the window in a list, between sentinels below and above any
    sample: each sample replaces the outgoing one (``list.remove`` and ``list.insert`` shift
    in C), so nothing is sorted per sample. Until the window is full, the ring and the sorted
    copy hold placeholders (-32768, below any sample). With ``partial=True`` and an even
    count seen so far, the median is the rounded mean of the two middle samples.
    """

    ARGS = ("window", "partial")

    def __init__(self, window, partial=False):
        self.window = _int("window", window, 1, MAX_WINDOW)
        if not window & 1:
            raise ValueError("window: %d must be odd for median" % window)
        self.partial = _flag("partial", partial)
        self._ring = _zeros("h", window)
        self._sorted = _LOW * (window + 2)  # exactly window + 2 slots, no garbage
        self._mid = (window >> 1) + 1  # where the median sits once the window is full
        self.reset()

    def reset(self):
        """Forget every sample."""
        r = self._ring
        s = self._sorted
        for i in range(self.window):
            r[i] = -32768
            s[i] = -32768
        s[self.window] = -32768
        s[self.window + 1] = 32768
        self._i = -1  # as in MovingAverage: negative while filling, the ring written backwards

    def update(self, x):
        """Add ``x``; return the window median, or None while the window is not full."""
        s = self._sorted
        r = self._ring
        i = self._i
        s.remove(r[i])  # the outgoing sample (or a placeholder)
        r[i] = x
        m = self._mid
        j = m  # insert x in order, searching from the middle
        if s[j] < x:
            j += 1
            while s[j] < x:
                j += 1
        else:
            while s[j - 1] > x:
                j -= 1
        s.insert(j, x)
        if i > 0:
            self._i = i - 1
            return s[m]
        j = self.window
        if i == 0 or i == -j:  # wrapped, or the window is now full
            self._i = j - 1
            return s[m]
        self._i = i - 1
        if not self.partial:
            return None
        # -i samples so far, sorted in s[c:c - i] above c = window + 1 + i placeholders.
        j += 1 + i + (-i >> 1)  # c + n // 2 for the n = -i samples: the upper middle
        if i & 1:
            return s[j]
        return _shr_round(s[j - 1] + s[j], 1)

    __call__ = update


class WindowMin:
    """Smallest of the last ``window`` samples.

    The minimum is tracked and the ring rescanned only when the outgoing sample was it.
    """

    ARGS = ("window", "partial")
    _sign = 1  # WindowMax stores negated samples and reuses the same code

    def __init__(self, window, partial=False):
        self.window = _int("window", window, 1, MAX_WINDOW)
        self.partial = _flag("partial", partial)
        self._ring = _zeros("h", window)
        self.reset()

    def reset(self):
        """Forget every sample."""
        self._i = 0
        self._n = 0
        self._m = 0

    def update(self, x):
        """Add ``x``; return the window extreme, or None while the window is not full."""
        v = x * self._sign
        r = self._ring
        i = self._i
        old = r[i]
        r[i] = v
        i += 1
        if i == self.window:
            i = 0
        self._i = i
        n = self._n
        if n < self.window:
            n += 1
            self._n = n
            if n == 1 or v < self._m:
                self._m = v
            if n < self.window and not self.partial:
                return None
        elif v <= self._m:
            self._m = v
        elif old == self._m:
            self._m = self._scan()
        return self._m * self._sign

    __call__ = update

    def _scan(self):
        r = self._ring
        m = r[0]
        for i in range(1, self.window):
            if r[i] < m:
                m = r[i]
        return m


class WindowMax(WindowMin):
    """Largest of the last ``window`` samples."""

    _sign = -1


class Ema:
    """Exponential moving average ``y += alpha * (x - y)``, ``alpha_q14`` in [1, 16384].

    The state is y in Q14: an integer part and a fractional residual ``r`` in [0, 16384), so
    small steps accumulate instead of being lost: for a constant input the output converges
    to exactly that input. Each step is rounded half away from zero and never passes x.
    The output is the state rounded to an int; the first sample initialises the state.
    """

    ARGS = ("alpha_q14",)

    def __init__(self, alpha_q14):
        self.alpha = _int("alpha_q14", alpha_q14, 1, Q14_ONE)
        self.reset()

    def reset(self):
        """Forget the state; the next sample initialises it."""
        self._y = 0
        self._r = -1  # no state yet

    def update(self, x):
        """Add ``x``; return the rounded average."""
        r = self._r
        if r < 0:
            self._y = x
            self._r = 0
            return x
        a = self.alpha
        y = self._y
        # Exact step: a*(x*2**14 - (y*2**14 + r)) / 2**14 = a*(x - y) - a*r/2**14, in Q14.
        p = a * r  # 0 <= p < 2**28
        x = a * (x - y) - (p >> 14)  # |x - y| <= 65534, so |x| <= 16384*65534 + 16383
        p &= 0x3FFF  # the exact step is x - p/2**14: round it half away from zero
        if p > 8192 or (p == 8192 and x <= 0):
            x -= 1
        x += r  # |x| <= 16384*65534 + 16384 < 2**30
        r = x & 0x3FFF
        y += x >> 14
        self._y = y
        self._r = r
        if r > 8192 or (r == 8192 and y >= 0):
            return y + 1
        return y

    __call__ = update


class LowPass(Ema):
    """First-order low-pass, ``alpha_q14 = round(16384 * (1 - exp(-2*pi*fc*T)))``.

    The same recurrence as Ema; filterspec derives alpha from a cutoff frequency.
    """


class HighPass(Ema):
    """First-order high-pass: ``x - LowPass(x)``, saturated to S16 (``saturated`` counts)."""

    def __init__(self, alpha_q14):
        Ema.__init__(self, alpha_q14)
        self.saturated = 0

    def update(self, x):
        """Add ``x``; return it minus its low-passed value."""
        x -= Ema.update(self, x)  # |x| <= 65534
        if x > _SMAX or x < -_SMAX:
            x = _clip(self, x)
        return x

    __call__ = update


class Biquad:
    """Second-order IIR section, Q14 coefficients with a0 = 1.

    ``y = b0*x + b1*x1 + b2*x2 - a1*y1 - a2*y2``. Each product (< 2**30) is floored by 3
    bits (< 2**27) before the five are summed (< 5 * 2**27 < 2**30); the sum is then
    shifted by the remaining 11 bits, rounded half away from zero. The output is saturated
    to S16 (``saturated`` counts) and the saturated value is what the history keeps.
    The sums run in transposed form (each product is added once, as soon as its sample is
    known), which gives exactly the Direct Form I result with half the state.

    Error against the real-valued filter: quantized coefficients are within 2**-15 of the
    designed ones (filterspec may move b1 by up to 2**-13 to make the DC gain exact); the
    product truncation biases each output by less than 5 * 2**-11 LSB before rounding; and
    the rounding in the feedback loop gives a dead band: at DC the output can settle up to
    0.5 / |1 + a1 + a2| LSB away from the exact response (about 1 LSB at fc = fs/10, Q=0.707).
    """

    ARGS = ("b0", "b1", "b2", "a1", "a2")

    def __init__(self, b0, b1, b2, a1, a2):
        self.b0 = _int("b0", b0, -_SMAX, _SMAX)
        self.b1 = _int("b1", b1, -_SMAX, _SMAX)
        self.b2 = _int("b2", b2, -_SMAX, _SMAX)
        self.a1 = _int("a1", a1, -_SMAX, _SMAX)
        self.a2 = _int("a2", a2, -_SMAX, _SMAX)
        self.saturated = 0
        self.reset()

    def reset(self):
        """Zero the input and output history."""
        # Transposed form: _s1 and _s2 hold the sums of the floored products of past samples
        # that the next output and the one after it need (integer sums, so the same bits as
        # summing all five per output).
        self._s1 = 0
        self._s2 = 0
        # Unused: two slots that keep the object the size filterspec's heap model counts
        # (filterspec._ATTRS[8], from when the history was x1, x2, y1, y2).
        self._pad1 = None
        self._pad2 = None

    def update(self, x):
        """Add ``x``; return the filtered sample."""
        y = ((self.b0 * x) >> 3) + self._s1  # |y| < 5 * 2**27
        if y >= 0:  # _shr_round(y, 11), then saturate on that side
            y = (y + 1024) >> 11
            if y > _SMAX:
                y = _clip(self, y)
        else:
            y = -((1024 - y) >> 11)
            if y < -_SMAX:
                y = _clip(self, y)
        self._s1 = ((self.b1 * x) >> 3) - ((self.a1 * y) >> 3) + self._s2  # < 4 * 2**27
        self._s2 = ((self.b2 * x) >> 3) - ((self.a2 * y) >> 3)
        return y

    __call__ = update


class Delta:
    """Emit a sample only when it differs from the last emitted one by >= ``threshold``.

    The first sample is always emitted.
    """

    ARGS = ("threshold",)

    def __init__(self, threshold):
        self.threshold = _int("threshold", threshold, 0, _SMAX)
        self.reset()

    def reset(self):
        """Forget the last emitted sample."""
        self._on = False
        self._last = 0

    def update(self, x):
        """Return ``x`` if it moved far enough from the last emitted sample, else None."""
        if self._on:
            d = x - self._last  # |d| <= 65534
            if -self.threshold < d < self.threshold:
                return None
        self._on = True
        self._last = x
        return x

    __call__ = update


class Clamp:
    """Saturate into [lo, hi], or with ``drop`` return None for out-of-range samples.

    ``out_of_range`` counts the samples that were clamped or dropped.
    """

    ARGS = ("lo", "hi", "drop")

    def __init__(self, lo, hi, drop=False):
        self.lo = _int("lo", lo, -_SMAX, _SMAX)
        self.hi = _int("hi", hi, -_SMAX, _SMAX)
        if lo > hi:
            raise ValueError("lo: %d is greater than hi %d" % (lo, hi))
        self.drop = _flag("drop", drop)
        self.out_of_range = 0

    def reset(self):
        """Zero the counter (the filter has no other state)."""
        self.out_of_range = 0

    def update(self, x):
        """Return ``x`` clamped into [lo, hi], or None if out of range and dropping."""
        if x < self.lo:
            x = self.lo
        elif x > self.hi:
            x = self.hi
        else:
            return x
        self.out_of_range = (self.out_of_range + 1) & _CMASK
        if self.drop:
            return None
        return x

    __call__ = update


class CalibrateLinear:
    """``y = round(x * mult / 2**shift) + offset``, saturated to S16 (``saturated`` counts).

    ``mult`` in [-32767, 32767] and ``shift`` in [0, 14] give gains from 2**-14 to 32767
    with 15 significant bits; ``offset`` is in S16.
    """

    ARGS = ("mult", "shift", "offset")

    def __init__(self, mult, shift, offset):
        self.mult = _int("mult", mult, -_SMAX, _SMAX)
        self.shift = _int("shift", shift, 0, 14)
        self.offset = _int("offset", offset, -_SMAX, _SMAX)
        self._half = (1 << shift) >> 1  # 0 for shift 0: the rounding below is then exact
        self.saturated = 0

    def reset(self):
        """Zero the counter (the filter has no other state)."""
        self.saturated = 0

    def update(self, x):
        """Return the calibrated sample."""
        x *= self.mult  # |x * mult| <= 32767**2 < 2**30 - 2**14
        if x >= 0:  # _shr_round(x, shift) + offset: >= -32767, so it can only pass the top
            x = ((x + self._half) >> self.shift) + self.offset  # < 32767**2 + 32767 < 2**30
            if x > _SMAX:
                x = _clip(self, x)
        else:
            x = self.offset - ((self._half - x) >> self.shift)
            if x < -_SMAX:
                x = _clip(self, x)
        return x

    __call__ = update


class Hysteresis:
    """Two-level output: 1 once ``x >= high``, 0 once ``x <= low``, unchanged in between.

    The output starts at 0; ``low < high``.
    """

    ARGS = ("low", "high")

    def __init__(self, low, high):
        self.low = _int("low", low, -_SMAX, _SMAX)
        self.high = _int("high", high, -_SMAX, _SMAX)
        if low >= high:
            raise ValueError("low: %d must be below high %d" % (low, high))
        self.reset()

    def reset(self):
        """Return to output 0."""
        self._out = 0

    def update(self, x):
        """Return 0 or 1."""
        if x >= self.high:
            self._out = 1
        elif x <= self.low:
            self._out = 0
        return self._out

    __call__ = update


class Debounce:
    """Pass a value only once it has been the same for ``n`` consecutive samples.

    While the value keeps changing the output is None; once stable it is passed on every
    sample until it changes.
    """

    ARGS = ("n",)

    def __init__(self, n):
        self.n = _int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Forget the run of equal samples."""
        self._last = 0
        self._run = 0

    def update(self, x):
        """Return ``x`` if it is stable, else None."""
        if x == self._last and self._run:
            if self._run < self.n:
                self._run += 1
        else:
            self._last = x
            self._run = 1
        if self._run < self.n:
            return None
        return x

    __call__ = update


class Throttle:
    """Leading edge: pass a sample, then suppress the next ``n - 1``."""

    ARGS = ("n",)

    def __init__(self, n):
        self.n = _int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Pass the next sample."""
        self._k = 0

    def update(self, x):
        """Return ``x`` on the first of every ``n`` samples, else None."""
        k = self._k
        self._k = k + 1 if k + 1 < self.n else 0
        if k:
            return None
        return x

    __call__ = update


class Heartbeat:
    """Trailing edge: pass every ``n``-th sample (the latest value), suppress the others."""

    ARGS = ("n",)

    def __init__(self, n):
        self.n = _int("n", n, 1, MAX_COUNT)
        self.reset()

    def reset(self):
        """Restart the count."""
        self._k = 0

    def update(self, x):
        """Return ``x`` on the last of every ``n`` samples, else None."""
        k = self._k + 1
        if k < self.n:
            self._k = k
            return None
        self._k = 0
        return x

    __call__ = update


class Chain:
    """Run samples through ``filters`` in order (the sequence is kept, not copied).

    ``accepted`` counts valid samples and ``invalid`` the rejected ones.
    """

    def __init__(self, filters):
        if not isinstance(filters, _SEQ):
            raise ValueError("filters: %r is not a list" % (filters,))
        for i in range(len(filters)):
            if not hasattr(filters[i], "update"):
                raise ValueError("filters[%d]: %r has no update()" % (i, filters[i]))
            if not callable(filters[i]):
                raise ValueError("filters[%d]: %r is not callable as update" % (i, filters[i]))
        self.filters = filters
        self.accepted = 0
        self.invalid = 0

    def reset(self):
        """Reset every filter and both counters."""
        for f in self.filters:
            f.reset()
        self.accepted = 0
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
        self.accepted = (self.accepted + 1) & _CMASK
        for f in self.filters:
            x = f(x)  # __call__ is update
            if x is None:
                return None
        return x


FILTER_CODES = {
    "moving_average": 1,
    "ema": 2,
    "median": 3,
    "min": 4,
    "max": 5,
    "lowpass": 6,
    "highpass": 7,
    "biquad": 8,
    "delta": 9,
    "clamp": 10,
    "calibrate": 11,
    "hysteresis": 12,
    "debounce": 13,
    "throttle": 14,
    "heartbeat": 15,
}

# A dict, not a 16-item tuple literal: that would need a 16-slot stack in the module body.
_CLASSES = {
    1: MovingAverage,
    2: Ema,
    3: Median,
    4: WindowMin,
    5: WindowMax,
    6: LowPass,
    7: HighPass,
    8: Biquad,
    9: Delta,
    10: Clamp,
    11: CalibrateLinear,
    12: Hysteresis,
    13: Debounce,
    14: Throttle,
    15: Heartbeat,
}


def filter_class(code):
    """The class for a filter code; ValueError naming the code if there is none."""
    if type(code) is int and code in _CLASSES:
        return _CLASSES[code]
    raise ValueError("code: %r is not a filter code" % (code,))


def _name(code):
    for k in FILTER_CODES:
        if FILTER_CODES[k] == code:
            return k
    return str(code)


def build(code, params):
    """A new filter from its compiled ``(code, params)``; params are ints (flags 0/1).

    Raises ValueError naming the filter and the parameter for an unknown code, a wrong
    number of params or an out-of-range param.
    """
    cls = filter_class(code)
    if not isinstance(params, _SEQ):
        raise ValueError("%s: params %r is not a tuple" % (_name(code), params))
    if len(params) != len(cls.ARGS):
        raise ValueError(
            "%s: takes %d params (%s), got %d"
            % (_name(code), len(cls.ARGS), ", ".join(cls.ARGS), len(params))
        )
    try:
        return cls(*params)
    except ValueError as e:
        raise ValueError("%s: %s" % (_name(code), e)) from None


def build_chain(items):
    """A Chain from a list of compiled ``(code, params)`` pairs, in order."""
    if not isinstance(items, _SEQ):
        raise ValueError("chain: %r is not a list of (code, params)" % (items,))
    fs = []
    for i in range(len(items)):
        item = items[i]
        if not isinstance(item, _SEQ) or len(item) != 2:
            raise ValueError("chain[%d]: %r is not a (code, params) pair" % (i, item))
        try:
            fs.append(build(item[0], item[1]))
        except ValueError as e:
            raise ValueError("chain[%d]: %s" % (i, e)) from None
    return Chain(fs)
