"""Property tests for shared/filters/ and shared/filters/spec.py (CPython, hypothesis)."""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import filters
from shared.filters import spec as filter_spec
from shared.filters.biquad import Biquad
from shared.filters.calibrate import CalibrateLinear
from shared.filters.catalog import FILTER_CODES, build, build_chain
from shared.filters.ema import Ema, HighPass
from shared.filters.median import Median
from shared.filters.minmax import WindowMax, WindowMin
from shared.filters.moving_average import MovingAverage

SMAX = 32767
LO, HI = -(2**30), 2**30 - 1
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

samples = st.integers(-SMAX, SMAX)
readings = st.one_of(samples, st.none(), st.sampled_from([32768, -32768, 10**12, 1.5, True, "7"]))
q14 = st.sampled_from([-SMAX, SMAX, -16384, 16384, 0]) | st.integers(-SMAX, SMAX)
windows = st.integers(1, filters.MAX_WINDOW)
flags = st.integers(0, 1)
counts = st.integers(1, filters.MAX_COUNT)


@st.composite
def compiled_filter(draw):
    """A random valid (code, params) for a random filter kind."""
    code = draw(st.integers(1, 15))
    if code in (1, 4, 5):
        return code, (draw(windows), draw(flags))
    if code == 3:
        return code, (draw(windows.filter(lambda w: w & 1)), draw(flags))
    if code in (2, 6, 7):
        return code, (draw(st.integers(1, 16384)),)
    if code == 8:
        return code, tuple(draw(q14) for _ in range(5))
    if code == 9:
        return code, (draw(st.integers(0, SMAX)),)
    if code == 10:
        lo, hi = sorted((draw(samples), draw(samples)))
        return code, (lo, hi, draw(flags))
    if code == 11:
        return code, (draw(q14), draw(st.integers(0, 14)), draw(samples))
    if code == 12:
        lo = draw(st.integers(-SMAX, SMAX - 1))
        return code, (lo, draw(st.integers(lo + 1, SMAX)))
    return code, (draw(st.integers(1, 50) | counts),)


# --- runtime filters: never raise, always S16 ----------------------------------------------


@FUZZ
@given(st.lists(compiled_filter(), min_size=1, max_size=6), st.lists(readings, max_size=200))
def test_random_chains_never_raise_and_stay_in_s16(items, xs):
    chain = build_chain(items)
    valid = 0
    for x in xs:
        y = chain.update(x)
        assert y is None or (type(y) is int and -SMAX <= y <= SMAX)
        valid += type(x) is int and -SMAX <= x <= SMAX
    assert chain.invalid == len(xs) - valid


@FUZZ
@given(compiled_filter(), st.integers(1, 300))
def test_extreme_alternating_input_stays_in_s16(item, n):
    f = build(*item)
    for i in range(n):
        y = f.update(SMAX if i & 1 else -SMAX)
        assert y is None or -SMAX <= y <= SMAX


@FUZZ
@given(
    st.sampled_from(["biquad", "ema", "highpass", "calibrate"]),
    st.lists(q14, min_size=5, max_size=5),
    st.integers(0, 14),
    st.integers(1, 400),
)
def test_linear_filters_under_full_scale_square_waves(kind, c, shift, period):
    if kind == "biquad":
        f = Biquad(*c)
    elif kind == "calibrate":
        f = CalibrateLinear(c[0], shift, c[1])
    else:
        alpha = abs(c[0]) % 16384 + 1
        f = Ema(alpha) if kind == "ema" else HighPass(alpha)
    for i in range(400):
        y = f.update(SMAX if (i // period) & 1 else -SMAX)
        assert -SMAX <= y <= SMAX


# --- the small-int bounds -------------------------------------------------------------------


def test_worst_case_intermediates_fit_small_ints():
    """Each intermediate expression of each update, at its extreme operands."""
    s, q, w = SMAX, SMAX, filters.MAX_WINDOW
    worst = {
        # MovingAverage: running sum; _div_round(v, d) forms v + v + d
        "ma_sum": w * s,
        "ma_round": 2 * w * s + w,
        # Ema: p = a*r; s = a*(x - y) - (p >> 14) - 1; s + r
        "ema_p": 16384 * 16383,
        "ema_step": 16384 * (2 * s) + 16383 + 1,
        "ema_step_plus_r": 16384 * (2 * s) + 16383 + 1 + 16383,
        "highpass": 2 * s,
        # Biquad: each product, the five floored products summed, + 2**10 to round
        "bq_product": q * s,
        "bq_sum": 5 * ((q * s) >> 3) + 1024,
        # CalibrateLinear: x*mult, + 2**13 to round at shift 14, + offset at shift 0
        "cal_product": s * q + (1 << 13),
        "cal_offset": s * q + s,
        "delta": 2 * s,
        "median_pair": 2 * s + 1,
        "counter": filters._CMASK + 1,
        "throttle": filters.MAX_COUNT + 1,
    }
    for name, v in worst.items():
        assert LO <= -v and v <= HI, name
    # and the most negative operand of the asymmetric ones
    assert -16384 * (2 * s) - 16383 - 1 >= LO


def _small_int_tracer(bad):
    """A sys.settrace hook: every int local, and every int attribute of ``self``, of every
    line executed in shared/filters/ must be a small int."""
    path = os.path.dirname(filters.__file__) + os.sep

    def check(frame):
        for k, v in frame.f_locals.items():
            if type(v) is int and not LO <= v <= HI:
                bad.append((frame.f_code.co_name, k, v))
        obj = frame.f_locals.get("self")
        if obj is not None and hasattr(obj, "__dict__"):
            for k, v in vars(obj).items():
                if type(v) is int and not LO <= v <= HI:
                    bad.append((type(obj).__name__, k, v))

    def local(frame, event, arg):
        check(frame)
        if event == "return" and type(arg) is int and not LO <= arg <= HI:
            bad.append((frame.f_code.co_name, "return", arg))
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(path) else None

    return tracer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(compiled_filter(), min_size=1, max_size=4),
    st.lists(st.one_of(st.sampled_from([SMAX, -SMAX, 0, None]), samples), max_size=120),
)
def test_instrumented_run_keeps_every_value_a_small_int(items, xs):
    chain = build_chain(items)
    bad: list = []
    sys.settrace(_small_int_tracer(bad))
    try:
        for x in xs:
            chain.update(x)
        for i in range(64):  # and the extreme square wave
            chain.update(SMAX if i & 1 else -SMAX)
    finally:
        sys.settrace(None)
    assert not bad, bad[:5]


EXTREMES = (
    (1, (64, 0)),
    (1, (1, 1)),
    (2, (16384,)),
    (2, (1,)),
    (3, (63, 1)),
    (4, (64, 1)),
    (5, (2, 0)),
    (6, (8192,)),
    (7, (16384,)),
    (7, (1,)),
    (8, (SMAX, SMAX, SMAX, -SMAX, -SMAX)),
    (8, (-SMAX, -SMAX, -SMAX, SMAX, SMAX)),
    (9, (0,)),
    (9, (SMAX,)),
    (10, (-SMAX, SMAX, 0)),
    (11, (SMAX, 0, SMAX)),
    (11, (-SMAX, 14, -SMAX)),
    (12, (-SMAX, SMAX)),
    (13, (filters.MAX_COUNT,)),
    (14, (2,)),
    (15, (filters.MAX_COUNT,)),
)


def test_instrumented_extremes_of_every_kind():
    for item in EXTREMES:
        f = build(*item)
        bad: list = []
        sys.settrace(_small_int_tracer(bad))
        try:
            for i in range(200):
                f.update(SMAX if (i // (1 + i % 3)) & 1 else -SMAX)
        finally:
            sys.settrace(None)
        assert not bad, (item, bad[:5])


# --- against exact and float references -----------------------------------------------------


def _round_half_away(fr: Fraction) -> int:
    n = math.floor(abs(fr) + Fraction(1, 2))
    return n if fr >= 0 else -n


@FUZZ
@given(windows, st.booleans(), st.lists(samples, min_size=1, max_size=150))
def test_windowed_filters_match_brute_force(w, partial, xs):
    fs = (MovingAverage(w, partial), WindowMin(w, partial), WindowMax(w, partial))
    mw = w if w & 1 else w - 1
    med = Median(mw, partial)
    for i, x in enumerate(xs):
        win = xs[max(0, i - w + 1) : i + 1]
        full = len(win) == w
        want = (_round_half_away(Fraction(sum(win), len(win))), min(win), max(win))
        for f, v in zip(fs, want, strict=True):
            assert f.update(x) == (v if full or partial else None)
        mwin = sorted(xs[max(0, i - mw + 1) : i + 1])
        m = med.update(x)
        if len(mwin) == mw:
            assert m == mwin[len(mwin) // 2]
        elif not partial:
            assert m is None
        elif len(mwin) & 1:
            assert m == mwin[len(mwin) // 2]
        else:
            pair = mwin[len(mwin) // 2 - 1] + mwin[len(mwin) // 2]
            assert m == _round_half_away(Fraction(pair, 2))


@FUZZ
@given(st.integers(1, 16384), st.lists(samples, min_size=1, max_size=300))
def test_ema_within_one_lsb_of_the_float_recurrence(alpha, xs):
    f, hp = Ema(alpha), HighPass(alpha)
    a = alpha / 16384
    y = None
    for x in xs:
        y = float(x) if y is None else y + a * (x - y)
        assert abs(f.update(x) - y) <= 1
        assert abs(hp.update(x) - max(-SMAX, min(SMAX, x - y))) <= 1


@FUZZ
@given(st.integers(64, 16384), samples, samples)
def test_ema_converges_exactly(alpha, start, target):
    f = Ema(alpha)
    f.update(start)
    # Geometric approach, then at most 8192/alpha steps of one Q14 unit each: every nonzero
    # step moves the state toward the target, and steps stop only within half an LSB of it.
    steps = int(math.log(abs(target - start) * 16384 + 2) * 16384 / alpha + 16384 / alpha) + 10
    for _ in range(steps):
        f.update(target)
    for _ in range(3):
        assert f.update(target) == target


@st.composite
def biquad_design(draw):
    kind = draw(st.sampled_from(filter_spec.DESIGNS))
    fs = draw(st.sampled_from([10.0, 50.0, 100.0, 1000.0]))
    fc = draw(st.floats(0.02, 0.45)) * fs
    q = draw(st.floats(0.3, 3.0))
    return kind, fc, fs, q


def _l1_all_pole(a1: float, a2: float) -> float:
    total, h1, h2 = 0.0, 0.0, 0.0
    for k in range(4000):
        h = (1.0 if k == 0 else 0.0) - a1 * h1 - a2 * h2
        total += abs(h)
        h2, h1 = h1, h
    return total


@FUZZ
@given(biquad_design(), st.lists(st.integers(-8000, 8000), min_size=1, max_size=200))
def test_biquad_follows_the_float_filter_within_its_error_bound(design, xs):
    kind, fc, fs, q = design
    spec = {"type": "biquad", "design": kind, "cutoff_hz": fc, "q": q}
    try:
        code, params = filter_spec.compile_spec(spec, 1000.0 / fs)
    except ValueError:
        return  # quantized onto/over the unit circle: refused, which is the point
    f = build(code, params)
    b0, b1, b2, a1, a2 = (c / 16384 for c in params)
    tol = (0.5 + 5 / 2048) * _l1_all_pole(a1, a2)
    x1 = x2 = y1 = y2 = 0.0
    for x in xs:
        y = max(-SMAX, min(SMAX, b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2))
        x2, x1, y2, y1 = x1, float(x), y1, y
        assert abs(f.update(x) - y) <= tol + 1e-9


@FUZZ
@given(st.floats(-32767, 32767), samples, samples)
def test_calibrate_gain_precision(gain, offset, x):
    spec = {"type": "calibrate", "gain": gain, "offset": offset}
    try:
        code, (mult, shift, off) = filter_spec.compile_spec(spec, 100)
    except ValueError as e:
        assert str(e).startswith("gain:") and abs(gain) < 2**-15
        return
    assert abs(mult / 2**shift - gain) <= 2 ** -(shift + 1)
    assert shift == 14 or abs(filter_spec._qround(gain * 2 ** (shift + 1))) > SMAX  # no finer shift fits
    y = build(code, (mult, shift, off)).update(x)
    ref = max(-SMAX, min(SMAX, x * gain + offset))
    assert abs(y - ref) <= 0.5 + abs(x) * 2.0 ** -(shift + 1) + 1e-9


# --- compile_spec: only ValueError, and what it compiles always builds ---------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.integers(-100, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e4, 1e4),
    st.text(max_size=8),
    st.sampled_from(list(FILTER_CODES) + list(filter_spec.DESIGNS)),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "type", "window", "partial", "alpha", "cutoff_hz", "design", "q", "coeffs", "threshold",
    "min", "max", "drop", "gain", "offset", "low", "high", "samples", "ms",
]  # fmt: skip
keys = st.sampled_from(FIELDS + ["extra"])


@st.composite
def specs(draw):
    d = draw(st.dictionaries(keys, json_values, max_size=5))
    if draw(st.booleans()):
        d["type"] = draw(st.sampled_from(list(FILTER_CODES)))
    return d


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(specs(), json_values),
    st.one_of(st.sampled_from([100, 1, 0.5, 1000, 86400000]), json_scalars),
)
def test_compile_spec_raises_only_value_error(spec, period_ms):
    try:
        code, params = filter_spec.compile_spec(spec, period_ms)
    except ValueError as e:
        text = str(e)
        field = text.split(":", 1)[0].split("[")[0]
        assert text.startswith("unknown key ") or field in FIELDS + ["spec", "period_ms"], text
        return
    assert type(code) is int and type(params) is tuple and all(type(p) is int for p in params)
    f = build(code, params)  # whatever compiles also builds
    assert filter_spec.footprint(code, params) >= 32
    for x in (SMAX, -SMAX, 0):
        y = f.update(x)
        assert y is None or -SMAX <= y <= SMAX


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | q14, min_size=5, max_size=5))
def test_quantize_biquad_raises_only_value_error(c):
    try:
        q = filter_spec.quantize_biquad(c)
    except ValueError as e:
        assert str(e).startswith("coeffs[")
        return
    assert all(-SMAX <= v <= SMAX for v in q)
    assert max(abs(v / 16384 - x) for v, x in zip(q, c, strict=True)) <= 2**-15
