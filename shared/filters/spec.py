"""Authoring-time filter specs: a JSON-like dict -> the compact ``(code, params)`` of filters.

Boards never import this module; the workflow compiler runs it (on CPython and, in tests,
on MicroPython). Floats appear only here: they are turned into the integer parameters that
``shared.filters.catalog.build`` takes. Every bad spec raises ValueError whose message starts with
the offending field (``"alpha: 2.5 is outside (0, 1]"``); nothing else is ever raised.

Specs (``period_ms`` is the channel's sample period; optional keys in brackets)

==================  ==========================================================  ==========
type                keys                                                        params
==================  ==========================================================  ==========
moving_average      window 1..64 [partial]                                      window, partial
median              window odd 1..63 [partial]                                  window, partial
min, max            window 1..64 [partial]                                      window, partial
ema, lowpass,       alpha in (0, 1], or cutoff_hz below Nyquist:                alpha_q14
highpass              alpha = 1 - exp(-2*pi*cutoff_hz*period_ms/1000)
biquad              design (lowpass|highpass|bandpass|notch) cutoff_hz [q=0.7071]  b0 b1 b2 a1 a2
                      or coeffs [b0, b1, b2, a1, a2] (a0 = 1)
delta               threshold 0..32767                                          threshold
clamp               [min] [max] (at least one; S16) [drop]                      lo, hi, drop
calibrate           gain (|gain| <= 32767) [offset=0]                           mult, shift, offset
hysteresis          low high (S16, low < high)                                  low, high
debounce, throttle, samples 1..32767, or ms (ceil(ms / period_ms) samples)      n
heartbeat
==================  ==========================================================  ==========

Biquad quantization: each designed coefficient c becomes round(c * 2**14) (half away from
zero), so it is within 2**-15 of c; for the four designs b1 is then moved so that the
quantized DC gain is exactly 1 (lowpass, notch) or 0 (highpass, bandpass), which moves it
by at most 2**-13 in all. At run time each product also loses its low 3 bits before the
sum (see ``shared.filters.biquad``). ``biquad_quantization_error`` reports what quantization does
to a design; ``compile_spec`` refuses coefficients outside Q14 and unstable quantized poles.

Biquad dead band: the rounding and truncation in the feedback loop let the output settle up
to ``biquad_dead_band`` = (0.5 + 5 * 2**-11) / |1 + a1 + a2| LSB away from the exact response
to a constant input, with a1, a2 as quantized. It grows with the square of fs / cutoff: about
2 LSB at cutoff_hz = fs/10, 16 LSB near fs/33, and thousands below fs/200 (a low-pass at
0.002 Hz sampled at 1 Hz turns a constant 10000 into 13958 and 1000 into 0). ``compile_spec``
refuses a biquad whose dead band exceeds ``BIQUAD_DEAD_BAND_MAX`` (16 LSB): sample that input
less often (a longer period_ms), or use ema/lowpass, whose state keeps Q14 fractions.
"""

import math

from shared.filters import MAX_COUNT, MAX_WINDOW, SAMPLE_MAX
from shared.filters.catalog import FILTER_CODES, build, build_chain

_ONE = 16384
BIQUAD_DEAD_BAND_MAX = 16  # LSB: the most a biquad's output may settle away from a constant input
_KEYS = {
    "moving_average": ("window", "partial"),
    "median": ("window", "partial"),
    "min": ("window", "partial"),
    "max": ("window", "partial"),
    "ema": ("alpha", "cutoff_hz"),
    "lowpass": ("alpha", "cutoff_hz"),
    "highpass": ("alpha", "cutoff_hz"),
    "biquad": ("design", "cutoff_hz", "q", "coeffs"),
    "delta": ("threshold",),
    "clamp": ("min", "max", "drop"),
    "calibrate": ("gain", "offset"),
    "hysteresis": ("low", "high"),
    "debounce": ("samples", "ms"),
    "throttle": ("samples", "ms"),
    "heartbeat": ("samples", "ms"),
}
DESIGNS = ("lowpass", "highpass", "bandpass", "notch")
_DC_GAIN = {"lowpass": 1, "notch": 1, "highpass": 0, "bandpass": 0}
_COEFF_NAMES = ("b0", "b1", "b2", "a1", "a2")
_NUM = (int, float)


def _bad(field, msg):
    return ValueError(field + ": " + msg)


def _qround(v):
    # round(v) half away from zero, for a finite float of moderate size.
    if v >= 0:
        return int(v + 0.5)
    return -int(0.5 - v)


def _g(v):
    return "%.6g" % v


def _number(field, v, lo, hi, lo_open=False):
    """``v`` as a float after checking it is a finite number in [lo, hi] (or (lo, hi])."""
    if type(v) is bool or not isinstance(v, _NUM):
        raise _bad(field, "%r is not a number" % (v,))
    if isinstance(v, float) and (v != v or v == math.inf or v == -math.inf):
        raise _bad(field, "%r is not a finite number" % (v,))
    if v > hi or v < lo or (lo_open and v == lo):
        raise _bad(field, "%r is outside %s%s, %s]" % (v, "(" if lo_open else "[", lo, hi))
    return float(v)


def _integer(field, v, lo, hi):
    if type(v) is not int:
        raise _bad(field, "%r is not an integer" % (v,))
    if v < lo or v > hi:
        raise _bad(field, "%d is outside [%d, %d]" % (v, lo, hi))
    return v


def _sample(field, v, lo=-SAMPLE_MAX):
    """An int in [lo, 32767]: a value in the S16 sample domain."""
    if type(v) is not int:
        raise _bad(field, "%r is not an integer" % (v,))
    if v > SAMPLE_MAX or v < -SAMPLE_MAX:
        raise _bad(field, "%d overflows the S16 sample range [-32767, 32767]" % v)
    if v < lo:
        raise _bad(field, "%d is outside [%d, %d]" % (v, lo, SAMPLE_MAX))
    return v


def _bool(field, v):
    if v is not True and v is not False:
        raise _bad(field, "%r is not true or false" % (v,))
    return 1 if v else 0


def _period(period_ms, field):
    # The sample period in ms, checked only where a spec needs it.
    if type(period_ms) is bool or not isinstance(period_ms, _NUM):
        raise _bad("period_ms", "%r is not a number (%s needs it)" % (period_ms, field))
    return _number("period_ms", period_ms, 0, 86400000, True)


def _one_of(spec, a, b):
    # Exactly one of two alternative keys; returns the one present.
    if a in spec and b in spec:
        raise _bad(a, "give either %s or %s, not both" % (a, b))
    if a not in spec and b not in spec:
        raise _bad(a, "missing (give %s or %s)" % (a, b))
    return a if a in spec else b


def _nyquist(fc, period):
    nyq = 500.0 / period
    if fc >= nyq:
        raise _bad(
            "cutoff_hz",
            "%s must be below the Nyquist frequency %s Hz (period_ms %s)"
            % (_g(fc), _g(nyq), _g(period)),
        )


def _alpha(spec, period_ms):
    key = _one_of(spec, "alpha", "cutoff_hz")
    if key == "alpha":
        a = _number("alpha", spec["alpha"], 0, 1, True)
        q = _qround(a * _ONE)
        if q < 1:
            raise _bad("alpha", "%r is below the Q14 resolution 1/16384" % (spec["alpha"],))
        return (q,)
    fc = _number("cutoff_hz", spec["cutoff_hz"], 0, 1000000, True)
    t = _period(period_ms, "cutoff_hz")
    _nyquist(fc, t)
    a = 1.0 - math.exp(-2.0 * math.pi * fc * t / 1000.0)
    q = _qround(a * _ONE)
    if q < 1:
        raise _bad(
            "cutoff_hz",
            "%s Hz gives alpha %s, below the Q14 resolution 1/16384" % (_g(fc), _g(a)),
        )
    return (q,)


def _window(spec, kind):
    if "window" not in spec:
        raise _bad("window", "missing")
    w = _integer("window", spec["window"], 1, MAX_WINDOW)
    if kind == "median" and not w & 1:
        raise _bad("window", "%d must be odd for median" % w)
    return (w, _bool("partial", spec.get("partial", False)))


def _biquad(spec, period_ms):
    if "coeffs" in spec:
        for k in ("design", "cutoff_hz", "q"):
            if k in spec:
                raise _bad(k, "give either coeffs or design (with cutoff_hz, q), not both")
        c = spec["coeffs"]
        if not isinstance(c, (list, tuple)) or len(c) != 5:
            raise _bad("coeffs", "%r is not a list of 5 numbers [b0, b1, b2, a1, a2]" % (c,))
        for i in range(5):
            if type(c[i]) is bool or not isinstance(c[i], _NUM):
                raise _bad("coeffs[%d]" % i, "%s=%r is not a number" % (_COEFF_NAMES[i], c[i]))
        q = quantize_biquad(c)
    else:
        if "design" not in spec:
            raise _bad("design", "missing (give design and cutoff_hz, or coeffs)")
        kind = spec["design"]
        if kind not in DESIGNS:  # a str or not, anything is compared safely with str items
            raise _bad("design", "unknown biquad design %r (%s)" % (kind, ", ".join(DESIGNS)))
        if "cutoff_hz" not in spec:
            raise _bad("cutoff_hz", "missing")
        fc = _number("cutoff_hz", spec["cutoff_hz"], 0, 1000000, True)
        qf = _number("q", spec.get("q", 0.7071), 0.01, 100)
        t = _period(period_ms, "cutoff_hz")
        _nyquist(fc, t)
        try:
            q = quantize_biquad(design_biquad(kind, fc, 1000.0 / t, qf), _DC_GAIN[kind])
        except ValueError as e:
            raise _bad("design", "%s at %s Hz: %s" % (kind, _g(fc), e)) from None
    # Stable iff both poles are inside the unit circle: |a2| < 1 and |a1| < 1 + a2.
    if not (-_ONE < q[4] < _ONE and abs(q[3]) < _ONE + q[4]):
        raise _bad(
            "coeffs" if "coeffs" in spec else "design",
            "a1=%s, a2=%s quantize to a pole on or outside the unit circle (radius %s)"
            % (_g(q[3] / _ONE), _g(q[4] / _ONE), _g(_pole_radius(q[3] / _ONE, q[4] / _ONE))),
        )
    band = biquad_dead_band(q)
    if band > BIQUAD_DEAD_BAND_MAX:
        band = int(math.ceil(band))
        if "coeffs" in spec:
            raise _bad(
                "coeffs",
                "a1=%s, a2=%s leave a dead band of %d LSB: the output can settle that far from a "
                "constant input (at most %d LSB); use poles further from z = 1, or another filter"
                % (_g(q[3] / _ONE), _g(q[4] / _ONE), band, BIQUAD_DEAD_BAND_MAX),
            )
        raise _bad(
            "cutoff_hz",
            "%s Hz sampled every %s ms leaves a dead band of %d LSB: the output can settle that "
            "far from a constant input (at most %d LSB); sample this input less often (a longer "
            "period_ms) or use another filter (ema, lowpass)"
            % (_g(fc), _g(t), band, BIQUAD_DEAD_BAND_MAX),
        )
    return q


def _clamp(spec):
    if "min" not in spec and "max" not in spec:
        raise _bad("min", "clamp needs min, max or both")
    lo = _sample("min", spec.get("min", -SAMPLE_MAX))
    hi = _sample("max", spec.get("max", SAMPLE_MAX))
    if lo > hi:
        raise _bad("min", "%d is greater than max %d" % (lo, hi))
    return (lo, hi, _bool("drop", spec.get("drop", False)))


def _calibrate(spec):
    if "gain" not in spec:
        raise _bad("gain", "missing")
    g = _number("gain", spec["gain"], -32767, 32767)
    # The largest shift whose multiplier fits keeps the most significant bits of the gain.
    shift = 14
    m = _qround(g * (1 << shift))
    while m > SAMPLE_MAX or m < -SAMPLE_MAX:
        shift -= 1
        m = _qround(g * (1 << shift))
    if m == 0 and g != 0:
        raise _bad(
            "gain", "%r rounds to 0 (the smallest nonzero |gain| is 2**-15)" % (spec["gain"],)
        )
    return (m, shift, _sample("offset", spec.get("offset", 0)))


def _hysteresis(spec):
    for k in ("low", "high"):
        if k not in spec:
            raise _bad(k, "missing")
    lo = _sample("low", spec["low"])
    hi = _sample("high", spec["high"])
    if lo >= hi:
        raise _bad("low", "%d must be below high %d" % (lo, hi))
    return (lo, hi)


def _count(spec, period_ms):
    key = _one_of(spec, "samples", "ms")
    if key == "samples":
        return (_integer("samples", spec["samples"], 1, MAX_COUNT),)
    ms = _number("ms", spec["ms"], 0, 1000000000000, True)
    n = ms / _period(period_ms, "ms")
    if n > MAX_COUNT:
        raise _bad(
            "ms",
            "%r is %s samples at period_ms %r, more than %d"
            % (spec["ms"], _g(n), period_ms, MAX_COUNT),
        )
    return (max(1, int(math.ceil(n))),)


def compile_spec(spec, period_ms):
    """Compile one authoring spec to ``(code, params)`` for ``catalog.build``.

    ``period_ms`` is the sample period (used by cutoff_hz and ms). Raises ValueError naming
    the field and the reason for anything that is not a valid spec.
    """
    if not isinstance(spec, dict):
        raise _bad("spec", "%r is not an object" % (spec,))
    if "type" not in spec:
        raise _bad("type", "missing")
    kind = spec["type"]
    if type(kind) is not str or kind not in _KEYS:
        raise _bad("type", "unknown filter %r" % (kind,))
    allowed = _KEYS[kind]
    for k in spec:
        if k != "type" and k not in allowed:
            raise ValueError("unknown key %r" % (k,))
    if kind in ("moving_average", "median", "min", "max"):
        params = _window(spec, kind)
    elif kind in ("ema", "lowpass", "highpass"):
        params = _alpha(spec, period_ms)
    elif kind == "biquad":
        params = _biquad(spec, period_ms)
    elif kind == "delta":
        if "threshold" not in spec:
            raise _bad("threshold", "missing")
        params = (_sample("threshold", spec["threshold"], 0),)
    elif kind == "clamp":
        params = _clamp(spec)
    elif kind == "calibrate":
        params = _calibrate(spec)
    elif kind == "hysteresis":
        params = _hysteresis(spec)
    else:
        params = _count(spec, period_ms)
    return FILTER_CODES[kind], params


def design_biquad(kind, cutoff_hz, sample_hz, q=0.7071):
    """RBJ audio-EQ-cookbook biquad as floats ``(b0, b1, b2, a1, a2)``, normalised to a0 = 1.

    ``kind`` is lowpass, highpass, bandpass (0 dB peak gain) or notch; ``cutoff_hz`` the
    corner or centre frequency, below ``sample_hz / 2``; ``q`` > 0.
    """
    if kind not in DESIGNS:
        raise _bad("design", "unknown biquad design %r (%s)" % (kind, ", ".join(DESIGNS)))
    if not sample_hz > 0:
        raise _bad("sample_hz", "%r must be > 0" % (sample_hz,))
    if not 0 < cutoff_hz < sample_hz / 2:
        raise _bad("cutoff_hz", "%r is outside (0, %s)" % (cutoff_hz, _g(sample_hz / 2)))
    if not q > 0:
        raise _bad("q", "%r must be > 0" % (q,))
    w0 = 2.0 * math.pi * cutoff_hz / sample_hz
    cw = math.cos(w0)
    al = math.sin(w0) / (2.0 * q)
    if kind == "lowpass":
        b0 = b2 = (1.0 - cw) / 2.0
        b1 = 1.0 - cw
    elif kind == "highpass":
        b0 = b2 = (1.0 + cw) / 2.0
        b1 = -(1.0 + cw)
    elif kind == "bandpass":
        b0 = al
        b1 = 0.0
        b2 = -al
    else:
        b0 = b2 = 1.0
        b1 = -2.0 * cw
    a0 = 1.0 + al
    return (b0 / a0, b1 / a0, b2 / a0, -2.0 * cw / a0, (1.0 - al) / a0)


def quantize_biquad(coeffs, dc_gain=None):
    """Float ``(b0, b1, b2, a1, a2)`` -> Q14 ints, each rounded half away from zero.

    With ``dc_gain`` 0 or 1, b1 is then set so that the quantized DC gain
    ``(b0+b1+b2) / (1+a1+a2)`` is exactly that. Raises ValueError naming the coefficient
    that does not fit Q14, e.g. ``"coeffs[3]: a1=-2.1 does not fit Q14 [-2, 2)"``.
    """
    if dc_gain is not None and dc_gain != 0 and dc_gain != 1:
        raise _bad("dc_gain", "%r is not 0, 1 or None" % (dc_gain,))
    out = []
    for i in range(5):
        c = coeffs[i]
        if not -2.0 < c < 2.0:  # also refuses nan
            raise _bad("coeffs[%d]" % i, "%s=%r does not fit Q14 [-2, 2)" % (_COEFF_NAMES[i], c))
        out.append(_qround(c * _ONE))
    if dc_gain is not None:
        out[1] = dc_gain * (_ONE + out[3] + out[4]) - out[0] - out[2]
    for i in range(5):
        if not -SAMPLE_MAX <= out[i] <= SAMPLE_MAX:
            raise _bad(
                "coeffs[%d]" % i,
                "%s=%s does not fit Q14 [-2, 2)" % (_COEFF_NAMES[i], _g(out[i] / _ONE)),
            )
    return tuple(out)


def _dc_gain(c):
    den = 1.0 + c[3] + c[4]
    if den == 0:
        return math.inf
    return (c[0] + c[1] + c[2]) / den


def _pole_radius(a1, a2):
    # Largest |root| of z**2 + a1*z + a2.
    d = a1 * a1 - 4.0 * a2
    if d < 0:
        return math.sqrt(a2)
    d = math.sqrt(d)
    return max(abs(-a1 + d), abs(-a1 - d)) / 2.0


def biquad_dead_band(params):
    """How far (in LSB) a biquad with Q14 ``params`` (b0, b1, b2, a1, a2) may settle from the
    exact response to a constant input: the rounding (0.5 LSB) and the product truncation
    (5 * 2**-11 LSB) of one step, amplified by the loop's DC gain 1 / |1 + a1 + a2|."""
    den = abs(_ONE + params[3] + params[4])
    if den == 0:
        return math.inf
    return (0.5 + 5 / 2048) * _ONE / den


def biquad_quantization_error(coeffs, dc_gain=None):
    """What Q14 quantization does to a float biquad design.

    Returns ``{"max_coeff_error", "dc_gain", "dc_gain_q14", "pole_radius",
    "pole_radius_q14", "dead_band_lsb"}``: the largest absolute coefficient change, the DC
    gain and the largest pole radius of the float and of the quantized coefficients, and the
    quantized filter's dead band (``biquad_dead_band``).
    """
    q = quantize_biquad(coeffs, dc_gain)
    qf = [v / _ONE for v in q]
    err = 0.0
    for i in range(5):
        err = max(err, abs(qf[i] - coeffs[i]))
    return {
        "max_coeff_error": err,
        "dc_gain": _dc_gain(coeffs),
        "dc_gain_q14": _dc_gain(qf),
        "pole_radius": _pole_radius(coeffs[3], coeffs[4]),
        "pole_radius_q14": _pole_radius(qf[3], qf[4]),
        "dead_band_lsb": biquad_dead_band(q),
    }


# Heap model of MicroPython's 32-bit ports (1.2x): 16-byte GC blocks. A built filter holds
# its instance and attribute table (8 bytes per slot, grown two at a time), its generator
# (28 bytes plus 4 per local and stack word of its frame and 8 per try block: fixed by the
# bytecode) with the bound ``send`` that is its ``update``, and its lists (16 bytes plus 4 per
# item). Bytes per filter code apart from the lists: a dual test measures every one of them.
_FIXED = {
    1: 144,
    2: 160,
    3: 160,
    4: 160,
    5: 160,
    6: 160,
    7: 176,
    8: 176,
    9: 128,
    10: 160,
    11: 160,
    12: 144,
    13: 144,
    14: 128,
    15: 128,
}


def _blocks(nbytes):
    return (nbytes + 15) // 16 * 16


def _list_bytes(n):
    return 16 + _blocks(4 * n)


def _object_bytes(nattrs):
    return 16 + _blocks(8 * (nattrs + (nattrs & 1)))


def footprint(code, params):
    """Heap bytes a built filter holds on MicroPython (object and arrays): an upper bound.

    Exact on MicroPython 1.2x 32-bit ports, where the dual tests measure it. Raises
    ValueError as ``catalog.build`` does for an invalid ``(code, params)``.
    """
    build(code, params)
    n = _FIXED[code]
    if code in (1, 3, 4, 5):  # the ring
        n += _list_bytes(params[0])
    if code == 3:  # Median's sorted copy, between two sentinels
        n += _list_bytes(params[0] + 2)
    return n


def chain_footprint(items):
    """Heap bytes held by ``catalog.build_chain(items)``: the Chain, its list of filters and
    its list of their updates, and the filters."""
    build_chain(items)
    cap = 4
    while cap < len(items):
        cap *= 2
    n = _object_bytes(3) + 16 + _blocks(4 * cap)
    n += _list_bytes(max(1, len(items)))  # the updates (one slot even when there are none)
    for code, params in items:
        n += footprint(code, params)
    return n
