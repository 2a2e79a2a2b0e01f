"""shared/filters/ and shared/filters/spec.py, on CPython and on MicroPython.

No test here calls gc.collect() or allocates much: in the WASI MicroPython build a garbage
collection frees the heap-allocated call frames of outer Python functions (the test
runner's among them), so the whole module must run without one.
"""

from _util import allocates, load_json, raises

from shared.filters import Chain
from shared.filters.biquad import Biquad
from shared.filters.calibrate import CalibrateLinear
from shared.filters.catalog import FILTER_CODES, build, build_chain, filter_class
from shared.filters.clamp import Clamp
from shared.filters.debounce import Debounce
from shared.filters.delta import Delta
from shared.filters.ema import Ema, HighPass, LowPass
from shared.filters.heartbeat import Heartbeat
from shared.filters.hysteresis import Hysteresis
from shared.filters.median import Median
from shared.filters.minmax import WindowMax, WindowMin
from shared.filters.moving_average import MovingAverage
from shared.filters.spec import (
    BIQUAD_DEAD_BAND_MAX,
    biquad_dead_band,
    biquad_quantization_error,
    chain_footprint,
    compile_spec,
    design_biquad,
    footprint,
    quantize_biquad,
)
from shared.filters.throttle import Throttle

# One compiled instance of every kind (and the partial/drop variants), as the board gets them.
KINDS = (
    (1, (8, 0)),
    (1, (5, 1)),
    (2, (3277,)),
    (3, (5, 0)),
    (3, (7, 1)),
    (4, (4, 0)),
    (5, (4, 1)),
    (6, (4417,)),
    (7, (4417,)),
    (8, (1105, 2210, 1105, -18727, 6763)),
    (9, (20,)),
    (10, (-1000, 3000, 0)),
    (10, (-1000, 3000, 1)),
    (11, (13189, 14, -12)),
    (12, (1000, 1500)),
    (13, (3,)),
    (14, (3,)),
    (15, (3,)),
)
# Enough samples to wrap every window above twice, with extremes, repeats and band crossings.
SAMPLES = (
    123, 5000, -32767, 32767, 123, 123, 1200, 1600, 900, -7,
    123, 123, 123, 40, 41, 42, 3000, -3000, 123, 0,
)  # fmt: skip
CHAIN4 = [(10, (-500, 4000, 0)), (3, (5, 0)), (1, (4, 0)), (8, (1105, 2210, 1105, -18727, 6763))]


def run(f, xs):
    return [f.update(x) for x in xs]


def msg(fn, *args):
    return str(raises(ValueError, fn, *args))


# --- zero allocation (MicroPython only) ----------------------------------------------------


def _update_with(f, x):
    return lambda: f.update(x)


def _feed(f):
    for x in SAMPLES:
        f.update(x)


def mp_test_updates_do_not_allocate_under_heap_lock():
    chain = build_chain(CHAIN4)
    for code, params in KINDS + ((0, None),):
        f = chain if code == 0 else build(code, params)
        _feed(f)  # warm up: windows full and wrapped
        for x in SAMPLES:
            assert not allocates(_update_with(f, x)), (code, params, x)
    assert not allocates(lambda: chain.update(None))
    assert not allocates(lambda: chain.update(40000))
    assert chain.invalid == 2


def mp_test_updates_allocate_zero_bytes():
    # heap_lock cannot see one kind of allocation: a call frame needing more than 11 words
    # is taken from the heap and, when the heap is locked, silently from the C stack.
    # micropython.mem_total() (total bytes ever allocated) sees it.
    import micropython

    assert hasattr(micropython, "mem_total")
    chain = build_chain(CHAIN4)
    for code, params in KINDS + ((0, None),):
        f = chain if code == 0 else build(code, params)
        _feed(f)
        before = micropython.mem_total()
        _feed(f)
        _feed(f)
        assert micropython.mem_total() == before, (code, params)
    before = micropython.mem_total()
    chain.update(None)
    chain.update(-32768)
    assert micropython.mem_total() == before


def mp_test_footprint_is_the_measured_heap():
    # gc.mem_alloc() grows by exactly what build() allocates: it leaves no garbage, and no
    # collection runs in between (see the module docstring for why none is forced). The
    # model is exact, so a change to a filter's generator that grows its frame fails here.
    import gc

    cases = KINDS + ((1, (64, 0)), (3, (63, 0)), (4, (1, 1)), (5, (17, 0)))
    for code, _ in cases:  # a class's module is code, loaded on first use: not the footprint
        filter_class(code)
    got = [0] * len(cases)
    for i in range(len(cases)):
        before = gc.mem_alloc()
        f = build(cases[i][0], cases[i][1])
        got[i] = gc.mem_alloc() - before
        assert f is not None
    for i in range(len(cases)):
        code, params = cases[i]
        assert got[i] == footprint(code, params), (code, params, got[i], footprint(code, params))
    for items in (CHAIN4, CHAIN4 + CHAIN4[:1], []):
        before = gc.mem_alloc()
        chain = build_chain(items)
        used = gc.mem_alloc() - before
        assert used == chain_footprint(items), (len(items), used, chain_footprint(items))
        assert chain is not None


# --- windowed filters ----------------------------------------------------------------------


def test_moving_average_waits_for_a_full_window():
    assert run(MovingAverage(3), [3, 6, 9, 12, 0]) == [None, None, 6, 9, 7]


def test_moving_average_partial_averages_what_it_has():
    # 3, (3+6)/2 = 4.5 -> 5, then full windows; never divides a part-full window by 3
    assert run(MovingAverage(3, partial=True), [3, 6, 9, 12]) == [3, 5, 6, 9]


def test_moving_average_rounds_half_away_from_zero():
    assert run(MovingAverage(2), [-1, -2, 1, 2, -5]) == [None, -2, -1, 2, -2]


def test_moving_average_extremes_and_reset():
    f = MovingAverage(4)
    assert run(f, [32767] * 4 + [-32767] * 4) == [None] * 3 + [32767, 16384, 0, -16384, -32767]
    f.reset()
    assert run(f, [8, 8, 8, 9]) == [None, None, None, 8]


def _median(xs):
    s = sorted(xs)
    n = len(s)
    if n & 1:
        return s[n // 2]
    v = s[n // 2 - 1] + s[n // 2]
    return (v + 1) // 2 if v >= 0 else -((1 - v) // 2)


def test_median_by_hand():
    assert run(Median(3), [5, 1, 9, 3, 3, 100, -4]) == [None, None, 5, 3, 3, 3, 3]


def test_median_partial_uses_the_samples_seen():
    # 5, mean of 1 and 5 = 3, then 5; an even count -3, -4 -> -3.5 -> -4
    assert run(Median(3, partial=True), [5, 1, 9]) == [5, 3, 5]
    assert run(Median(5, partial=True), [-3, -4]) == [-3, -4]


def test_median_and_window_extremes_match_a_brute_force_window():
    s = 7
    xs = []
    for _ in range(150):
        s = (1103515245 * s + 12345) & 0x7FFFFFFF
        xs.append((s >> 16) % 21 - 10)  # few distinct values: many duplicates
    xs[40:44] = [32767, -32767, 32767, -32767]
    for w in (1, 3, 7):
        for partial in (False, True):
            fs = (Median(w, partial), WindowMin(w, partial), WindowMax(w, partial))
            for i in range(len(xs)):
                win = xs[max(0, i - w + 1) : i + 1]
                full = len(win) == w
                want = (_median(win), min(win), max(win))
                for k in range(3):
                    got = fs[k].update(xs[i])
                    assert got == (want[k] if full or partial else None), (w, partial, k, i)


def test_window_min_rescans_when_the_minimum_leaves():
    assert run(WindowMin(3), [1, 5, 6, 7, 2, 9, 9, 9]) == [None, None, 1, 5, 2, 2, 2, 9]
    assert run(WindowMax(2, partial=True), [1, 5, 3, 2, -32767]) == [1, 5, 5, 3, 2]


# --- ema, low-pass, high-pass --------------------------------------------------------------


def test_ema_starts_at_the_first_sample_and_rounds():
    # alpha 0.5: 100 -> 50 -> 25 -> 12.5 (-> 13) -> 6.25 (-> 6)
    assert run(Ema(8192), [100, 0, 0, 0, 0]) == [100, 50, 25, 13, 6]
    assert run(Ema(8192), [-100, 0, 0, 0]) == [-100, -50, -25, -13]
    assert run(Ema(16384), [7, -32767, 32767]) == [7, -32767, 32767]


def test_ema_converges_exactly_to_a_constant_input():
    for alpha, start, target, steps in (
        (1000, -20000, 12345, 400),
        (1000, 20000, -12345, 400),
        (3277, -32767, 32767, 100),
        (1, 0, 1, 8200),  # the slowest alpha: a truncating EMA would stay at 0 forever
    ):
        f = Ema(alpha)
        f.update(start)
        y = None
        for _ in range(steps):
            y = f.update(target)
        assert y == target, (alpha, start, target, y)
        assert f.update(target) == target


def test_lowpass_is_the_ema_recurrence():
    xs = [0, 1000, 1000, -5000, 32767, -32767, 3]
    assert run(LowPass(4417), xs) == run(Ema(4417), xs)
    assert issubclass(LowPass, Ema)


def test_highpass_removes_dc_and_saturates():
    f = HighPass(4417)
    assert run(f, [1000] * 5) == [0] * 5
    f = HighPass(16384 // 4)
    assert run(f, [-32767, 32767]) == [0, 32767]  # 32767 - (-16384) saturates
    assert f.saturated == 1
    f.reset()
    assert f.update(500) == 0


# --- biquad -------------------------------------------------------------------------------


def test_biquad_identity_is_exact_at_the_extremes():
    f = Biquad(16384, 0, 0, 0, 0)
    xs = [32767, -32767, 1, -1, 0, 12345]
    assert run(f, xs) == xs
    assert f.saturated == 0


def test_biquad_lowpass_settles_to_its_input():
    code, params = compile_spec(
        {"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.7071}, 100
    )
    for target in (10000, -12345, 32767, -32767, 1, 0):
        f = build(code, params)
        for _ in range(60):
            y = f.update(target)
        assert -1 <= y - target <= 1, (target, y)


def test_biquad_extreme_alternating_input_stays_in_s16():
    f = build(8, (1105, 2210, 1105, -18727, 6763))
    g = build(8, (13117, -26234, 13117, -25576, 10508))  # highpass: gain 2-ish at Nyquist
    for i in range(40):
        x = 32767 if i & 1 else -32767
        for h in (f, g):
            y = h.update(x)
            assert -32767 <= y <= 32767
    assert g.saturated > 0


def test_biquad_history_keeps_the_saturated_output():
    # y = 2*x + 1*y1 would run away; with the saturated y kept it sits at the rail
    f = Biquad(32767, 0, 0, -16384, 0)
    assert run(f, [20000, 0, 0]) == [32767, 32767, 32767]


def test_design_and_quantize_biquad():
    d = design_biquad("lowpass", 1.0, 10.0)
    assert len(d) == 5 and abs(d[3] + 1.142977) < 1e-5 and abs(d[4] - 0.412798) < 1e-5
    assert quantize_biquad(d) == (1105, 2210, 1105, -18727, 6763)
    assert quantize_biquad([0.5, -0.5, 1.99, -1.99, 0.25]) == (8192, -8192, 32604, -32604, 4096)
    assert (
        msg(quantize_biquad, [1, 0, 0, -2.1, 0.5]) == "coeffs[3]: a1=-2.1 does not fit Q14 [-2, 2)"
    )
    assert msg(quantize_biquad, [1, 0, 2.0, 0, 0]) == "coeffs[2]: b2=2.0 does not fit Q14 [-2, 2)"
    assert msg(design_biquad, "comb", 1.0, 10.0).startswith("design: unknown biquad design")
    assert msg(design_biquad, "notch", 5.0, 10.0).startswith("cutoff_hz: 5.0 is outside")
    for kind in ("lowpass", "highpass", "bandpass", "notch"):
        b0, b1, b2, a1, a2 = design_biquad(kind, 1.0, 10.0, 0.9)
        dc = (b0 + b1 + b2) / (1 + a1 + a2)
        assert abs(dc - (1 if kind in ("lowpass", "notch") else 0)) < 1e-9, kind


def test_biquad_quantization_error_report():
    d = design_biquad("lowpass", 1.0, 10.0)
    e = biquad_quantization_error(d)
    assert 0 < e["max_coeff_error"] <= 2**-15
    assert abs(e["dc_gain"] - 1) < 1e-9 and abs(e["dc_gain_q14"] - 1) < 1e-3
    assert abs(e["pole_radius"] - e["pole_radius_q14"]) < 1e-3 and e["pole_radius"] < 1
    # with the DC gain pinned, the quantized DC gain is exactly 1 and b1 moves <= 2**-13
    e1 = biquad_quantization_error(design_biquad("lowpass", 0.3, 10.0), 1)
    assert e1["dc_gain_q14"] == 1.0 and e1["max_coeff_error"] <= 2**-13


def test_a_biquad_whose_dead_band_is_too_wide_is_refused():
    # a low-pass at 0.002 Hz sampled at 1 Hz: its quantized poles sit so close to z = 1 that
    # the output settles thousands of LSB away from a constant input
    params = quantize_biquad(design_biquad("lowpass", 0.002, 1.0), 1)
    for x, settled in ((10000, 13958), (1000, 0)):
        f = Biquad(*params)
        for _ in range(1000):
            y = f.update(x)
        assert y == settled, (x, y)
    assert biquad_dead_band(params) == 4116.0  # (0.5 + 5/2048) / (2 / 16384)
    spec = {"type": "biquad", "design": "lowpass", "cutoff_hz": 0.002}
    assert msg(compile_spec, spec, 1000) == (
        "cutoff_hz: 0.002 Hz sampled every 1000 ms leaves a dead band of 4116 LSB: the output "
        "can settle that far from a constant input (at most 16 LSB); sample this input less "
        "often (a longer period_ms) or use another filter (ema, lowpass)"
    )
    coeffs = [p / 16384 for p in params]
    assert msg(compile_spec, {"type": "biquad", "coeffs": coeffs}, 1000) == (
        "coeffs: a1=-1.98224, a2=0.982361 leave a dead band of 4116 LSB: the output can settle "
        "that far from a constant input (at most 16 LSB); use poles further from z = 1, or "
        "another filter"
    )
    # within the bound: fs/25 (just under 16 LSB) is accepted, fs/33 is not
    assert biquad_dead_band(compile_spec(dict(spec, cutoff_hz=0.04), 1000)[1]) <= BIQUAD_DEAD_BAND_MAX
    assert msg(compile_spec, dict(spec, cutoff_hz=0.03), 1000).startswith(
        "cutoff_hz: 0.03 Hz sampled every 1000 ms leaves a dead band of 17 LSB"
    )
    # the golden designs are far inside it (fs/10 and fs/20: about 2 and 6 LSB)
    assert biquad_dead_band((1105, 2210, 1105, -18727, 6763)) < 2
    assert biquad_quantization_error(design_biquad("lowpass", 0.5, 10.0), 1)["dead_band_lsb"] < 7


# --- event filters --------------------------------------------------------------------------


def test_delta_emits_first_and_big_moves():
    f = Delta(10)
    assert run(f, [0, 5, 10, 19, 21, 11, 2]) == [0, None, 10, None, 21, 11, None]
    f.reset()
    assert f.update(5) == 5
    assert run(Delta(32767), [0, 32766, -32767, 32767, 1]) == [0, None, -32767, 32767, None]


def test_clamp_saturates_or_drops():
    f = Clamp(-10, 10)
    assert run(f, [-11, -10, 0, 10, 32767]) == [-10, -10, 0, 10, 10]
    assert f.out_of_range == 2
    f = Clamp(-10, 10, drop=True)
    assert run(f, [-11, -10, 0, 10, 11]) == [None, -10, 0, 10, None]
    assert f.out_of_range == 2


def test_calibrate_rounds_offsets_and_saturates():
    assert run(CalibrateLinear(1, 1, 0), [3, -3, 1, -1, 2]) == [2, -2, 1, -1, 1]
    f = CalibrateLinear(13189, 14, -12)  # gain 0.805
    assert run(f, [1000, -1000, 0, 32767]) == [793, -817, -12, 26365]
    f = CalibrateLinear(32767, 0, 32767)
    assert run(f, [1, -1, 0]) == [32767, 0, 32767]
    assert run(f, [-32767]) == [-32767] and f.saturated == 2


def test_hysteresis_holds_inside_the_band():
    f = Hysteresis(10, 20)
    xs = [15, 19, 20, 15, 11, 10, 15, 25, 9]
    assert run(f, xs) == [0, 0, 1, 1, 1, 0, 0, 1, 0]


def test_debounce_waits_out_flapping():
    f = Debounce(3)
    xs = [1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    assert run(f, xs) == [None, None, None, None, None, 1, 1, None, None, 0, 0, None]
    assert run(Debounce(1), [4, 5, 5]) == [4, 5, 5]
    f = Debounce(2)
    assert run(f, [0, 0]) == [None, 0]  # the first value counts from zero as well
    f.reset()
    assert f.update(0) is None


def test_throttle_and_heartbeat_cadence():
    xs = list(range(10))
    assert run(Throttle(3), xs) == [0, None, None, 3, None, None, 6, None, None, 9]
    assert run(Heartbeat(3), xs) == [None, None, 2, None, None, 5, None, None, 8, None]
    assert run(Throttle(1), xs[:3]) == xs[:3] and run(Heartbeat(1), xs[:3]) == xs[:3]


# --- chains -------------------------------------------------------------------------------


def test_chain_rejects_failed_reads_without_touching_filters():
    c = Chain([MovingAverage(3)])
    xs = [10, None, 40000, 20, "x", -32768, 1.5, True, 30, 60]
    assert run(c, xs) == [None, None, None, None, None, None, None, None, 20, 37]
    assert c.invalid == 6


def test_chain_stops_at_the_first_none_and_resets():
    c = Chain([Throttle(2), MovingAverage(2)])
    assert run(c, [1, 2, None, 3, 4, 5]) == [None, None, None, 2, None, 4]
    assert c.invalid == 1
    c.reset()
    assert c.invalid == 0
    assert run(c, [9, 9, 7]) == [None, None, 8]
    assert Chain([]).update(5) == 5


def test_reset_keeps_update_and_matches_a_new_filter():
    # reset() throws Reset into the filter's generator: the same update (which a Chain
    # holds) starts over, exactly as a newly built filter, counters included
    for code, params in KINDS:
        f = build(code, params)
        u = f.update
        first = run(f, SAMPLES)
        f.reset()
        assert f.update is u, code
        assert run(f, SAMPLES) == first == run(build(code, params), SAMPLES), code
    c = build_chain(CHAIN4)
    first = run(c, SAMPLES)
    c.reset()
    assert run(c, SAMPLES) == first
    f = Clamp(0, 10)
    run(f, [20, -5, 3])
    assert f.out_of_range == 2
    f.reset()
    assert f.out_of_range == 0


def test_update_outside_the_interface_ends_the_filter():
    f = Biquad(1105, 2210, 1105, -18727, 6763)
    assert raises(TypeError, f.update, None) is not None
    assert raises(StopIteration, f.update, 5) is not None


def test_chain_outputs_stay_in_s16_for_extreme_inputs():
    chain = build_chain(
        [(11, (32767, 0, 0)), (7, (16384,)), (8, (13117, -26234, 13117, -25576, 10508))]
    )
    for i in range(30):
        y = chain.update(32767 if i % 3 else -32767)
        assert y is None or -32767 <= y <= 32767


# --- construction and compilation errors ---------------------------------------------------


def test_constructors_name_the_bad_argument():
    cases = (
        (MovingAverage, (0,), "window: 0 is outside [1, 64]"),
        (MovingAverage, (65,), "window: 65 is outside [1, 64]"),
        (MovingAverage, (True,), "window: True is not an int"),
        (MovingAverage, (4, 2), "partial: 2 is not a bool or 0/1"),
        (Median, (4,), "window: 4 must be odd for median"),
        (WindowMax, (3.0,), "window: 3.0 is not an int"),
        (Ema, (0,), "alpha_q14: 0 is outside [1, 16384]"),
        (HighPass, (16385,), "alpha_q14: 16385 is outside [1, 16384]"),
        (Biquad, (1, 2, 32768, 0, 0), "b2: 32768 is outside [-32767, 32767]"),
        (Biquad, (1, 2, 3, -32768, 0), "a1: -32768 is outside [-32767, 32767]"),
        (Delta, (-1,), "threshold: -1 is outside [0, 32767]"),
        (Clamp, (5, 1), "lo: 5 is greater than hi 1"),
        (Clamp, (0, 40000), "hi: 40000 is outside [-32767, 32767]"),
        (CalibrateLinear, (1, 15, 0), "shift: 15 is outside [0, 14]"),
        (CalibrateLinear, (1, 0, -32768), "offset: -32768 is outside [-32767, 32767]"),
        (Hysteresis, (5, 5), "low: 5 must be below high 5"),
        (Debounce, (0,), "n: 0 is outside [1, 32767]"),
        (Throttle, (32768,), "n: 32768 is outside [1, 32767]"),
        (Heartbeat, (None,), "n: None is not an int"),
    )
    for cls, args, want in cases:
        assert msg(cls, *args) == want, (cls, args)
    assert msg(Chain, [Delta(1), 5]) == "filters[1]: 5 has no update()"


def test_build_validates_code_and_params():
    assert msg(build, 99, (1,)) == "code: 99 is not a filter code"
    assert msg(build, "ema", (1,)) == "code: 'ema' is not a filter code"
    assert msg(build, 2, (1, 2)) == "ema: takes 1 params (alpha_q14), got 2"
    assert msg(build, 8, (1, 2, 3)) == "biquad: takes 5 params (b0, b1, b2, a1, a2), got 3"
    assert msg(build, 3, (4, 0)) == "median: window: 4 must be odd for median"
    assert msg(build, 1, 8) == "moving_average: params 8 is not a tuple"
    assert msg(build_chain, [(2, (1,)), (1, (0, 0))]).startswith("chain[1]: moving_average: window")
    assert msg(build_chain, [(2, (1,)), 7]) == "chain[1]: 7 is not a (code, params) pair"
    assert isinstance(build(12, [1, 2]), Hysteresis)


def test_filter_codes_cover_every_class():
    assert sorted(FILTER_CODES.values()) == list(range(1, 16))
    names = {
        "moving_average": MovingAverage, "ema": Ema, "median": Median,
        "min": WindowMin, "max": WindowMax, "lowpass": LowPass, "highpass": HighPass,
        "biquad": Biquad, "delta": Delta, "clamp": Clamp, "calibrate": CalibrateLinear,
        "hysteresis": Hysteresis, "debounce": Debounce, "throttle": Throttle,
        "heartbeat": Heartbeat,
    }  # fmt: skip
    for name, code in FILTER_CODES.items():
        assert filter_class(code) is names[name], name


def test_compile_spec_forms():
    cases = (
        ({"type": "ema", "alpha": 0.2}, (2, (3277,))),
        ({"type": "lowpass", "cutoff_hz": 0.5}, (6, (4417,))),  # 1 - exp(-pi/10) = 0.26961
        ({"type": "lowpass", "alpha": 0.1}, (6, (1638,))),
        ({"type": "highpass", "alpha": 1}, (7, (16384,))),
        ({"type": "median", "window": 5}, (3, (5, 0))),
        ({"type": "moving_average", "window": 8, "partial": True}, (1, (8, 1))),
        ({"type": "min", "window": 64}, (4, (64, 0))),
        ({"type": "max", "window": 1, "partial": False}, (5, (1, 0))),
        ({"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.707}, None),
        (
            {"type": "biquad", "coeffs": [0.2, 0.3, 0.2, -0.5, 0.2]},
            (8, (3277, 4915, 3277, -8192, 3277)),
        ),
        ({"type": "delta", "threshold": 5}, (9, (5,))),
        ({"type": "clamp", "min": -100, "max": 100, "drop": False}, (10, (-100, 100, 0))),
        ({"type": "clamp", "max": 100, "drop": True}, (10, (-32767, 100, 1))),
        ({"type": "calibrate", "gain": 0.805, "offset": -12}, (11, (13189, 14, -12))),
        ({"type": "calibrate", "gain": 2.5}, (11, (20480, 13, 0))),
        ({"type": "calibrate", "gain": -100.25}, (11, (-25664, 8, 0))),
        ({"type": "calibrate", "gain": 32767}, (11, (32767, 0, 0))),
        ({"type": "hysteresis", "low": 10, "high": 20}, (12, (10, 20))),
        ({"type": "debounce", "samples": 3}, (13, (3,))),
        ({"type": "debounce", "ms": 500}, (13, (5,))),
        ({"type": "debounce", "ms": 250}, (13, (3,))),  # ceil(2.5)
        ({"type": "throttle", "ms": 10000}, (14, (100,))),
        ({"type": "throttle", "samples": 1}, (14, (1,))),
        ({"type": "heartbeat", "ms": 60000}, (15, (600,))),
        ({"type": "heartbeat", "ms": 1}, (15, (1,))),
    )
    for spec, want in cases:
        got = compile_spec(spec, 100)
        assert type(got) is tuple and type(got[1]) is tuple, spec
        if want is not None:
            assert got == want, (spec, got)
    code, params = compile_spec({"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0}, 100)
    assert code == 8 and sum(params[:3]) == 16384 + params[3] + params[4]  # DC gain exactly 1
    assert compile_spec({"type": "lowpass", "cutoff_hz": 0.5}, 100.0) == (6, (4417,))


def test_compile_spec_errors_name_the_field():
    nan = float("nan")
    lp = {"type": "biquad", "design": "lowpass", "cutoff_hz": 0.0001}
    cases = (
        ("median", 100, "spec: 'median' is not an object"),
        ({"window": 3}, 100, "type: missing"),
        ({"type": "foo"}, 100, "type: unknown filter 'foo'"),
        ({"type": 3}, 100, "type: unknown filter 3"),
        ({"type": "delta", "threshold": 5, "x": 1}, 100, "unknown key 'x'"),
        ({"type": "ema", "alpha": 2.5}, 100, "alpha: 2.5 is outside (0, 1]"),
        ({"type": "ema", "alpha": 0}, 100, "alpha: 0 is outside (0, 1]"),
        ({"type": "ema", "alpha": nan}, 100, "alpha: nan is not a finite number"),
        ({"type": "ema", "alpha": True}, 100, "alpha: True is not a number"),
        ({"type": "ema", "alpha": "0.2"}, 100, "alpha: '0.2' is not a number"),
        ({"type": "ema", "alpha": 1e-05}, 100, "alpha: 1e-05 is below the Q14 resolution 1/16384"),
        ({"type": "ema"}, 100, "alpha: missing (give alpha or cutoff_hz)"),
        ({"type": "ema", "alpha": 0.5, "cutoff_hz": 1}, 100, "alpha: give either alpha or cutoff_hz, not both"),
        ({"type": "lowpass", "cutoff_hz": 6}, 100, "cutoff_hz: 6 must be below the Nyquist frequency 5 Hz (period_ms 100)"),
        ({"type": "lowpass", "cutoff_hz": 1}, 0, "period_ms: 0 is outside (0, 86400000]"),
        ({"type": "lowpass", "cutoff_hz": 1}, None, "period_ms: None is not a number (cutoff_hz needs it)"),
        ({"type": "median", "window": 4}, 100, "window: 4 must be odd for median"),
        ({"type": "median", "window": 65}, 100, "window: 65 is outside [1, 64]"),
        ({"type": "moving_average"}, 100, "window: missing"),
        ({"type": "moving_average", "window": True}, 100, "window: True is not an integer"),
        ({"type": "moving_average", "window": 8.0}, 100, "window: 8.0 is not an integer"),
        ({"type": "moving_average", "window": 8, "partial": 1}, 100, "partial: 1 is not true or false"),
        ({"type": "biquad", "coeffs": [1, 0, 0, -2.1, 0.5]}, 100, "coeffs[3]: a1=-2.1 does not fit Q14 [-2, 2)"),
        ({"type": "biquad", "coeffs": [1, 0, 0]}, 100, "coeffs: [1, 0, 0] is not a list of 5 numbers [b0, b1, b2, a1, a2]"),
        ({"type": "biquad", "coeffs": [1, 0, 0, None, 0]}, 100, "coeffs[3]: a1=None is not a number"),
        ({"type": "biquad", "coeffs": [0.5, 0, 0, 0, 1.0]}, 100, "coeffs: a1=0, a2=1 quantize to a pole on or outside the unit circle (radius 1)"),
        ({"type": "biquad", "coeffs": [1, 0, 0, 0, 0], "q": 1}, 100, "q: give either coeffs or design (with cutoff_hz, q), not both"),
        ({"type": "biquad", "design": "comb", "cutoff_hz": 1}, 100, "design: unknown biquad design 'comb' (lowpass, highpass, bandpass, notch)"),
        ({"type": "biquad", "cutoff_hz": 1}, 100, "design: missing (give design and cutoff_hz, or coeffs)"),
        ({"type": "biquad", "design": "notch"}, 100, "cutoff_hz: missing"),
        ({"type": "biquad", "design": "notch", "cutoff_hz": 1, "q": 0}, 100, "q: 0 is outside [0.01, 100]"),
        (lp, 100, "design: a1=-1.99994, a2=0.999939 quantize to a pole on or outside the unit circle (radius 1)"),
        ({"type": "delta", "threshold": 40000}, 100, "threshold: 40000 overflows the S16 sample range [-32767, 32767]"),
        ({"type": "delta", "threshold": -1}, 100, "threshold: -1 is outside [0, 32767]"),
        ({"type": "delta"}, 100, "threshold: missing"),
        ({"type": "clamp"}, 100, "min: clamp needs min, max or both"),
        ({"type": "clamp", "min": 100, "max": 50}, 100, "min: 100 is greater than max 50"),
        ({"type": "clamp", "min": 0, "drop": "yes"}, 100, "drop: 'yes' is not true or false"),
        ({"type": "calibrate"}, 100, "gain: missing"),
        ({"type": "calibrate", "gain": 40000}, 100, "gain: 40000 is outside [-32767, 32767]"),
        ({"type": "calibrate", "gain": 1e-06}, 100, "gain: 1e-06 rounds to 0 (the smallest nonzero |gain| is 2**-15)"),
        ({"type": "calibrate", "gain": 1, "offset": 0.5}, 100, "offset: 0.5 is not an integer"),
        ({"type": "hysteresis", "low": 20, "high": 10}, 100, "low: 20 must be below high 10"),
        ({"type": "hysteresis", "low": 20}, 100, "high: missing"),
        ({"type": "debounce", "samples": 0}, 100, "samples: 0 is outside [1, 32767]"),
        ({"type": "debounce", "samples": False}, 100, "samples: False is not an integer"),
        ({"type": "throttle", "ms": 1e9}, 100, "ms: 1000000000.0 is 1e+07 samples at period_ms 100, more than 32767"),
        ({"type": "throttle", "ms": -5}, 100, "ms: -5 is outside (0, 1000000000000]"),
        ({"type": "heartbeat", "ms": 100, "samples": 1}, 100, "samples: give either samples or ms, not both"),
        ({"type": "heartbeat"}, 100, "samples: missing (give samples or ms)"),
    )  # fmt: skip
    for spec, period, want in cases:
        assert msg(compile_spec, spec, period) == want, (spec, msg(compile_spec, spec, period))


def test_footprint_model_has_every_filter_code():
    from shared.filters import spec as filter_spec

    assert sorted(filter_spec._FIXED) == sorted(FILTER_CODES.values())
    for code, params in KINDS:
        f = build(code, params)
        # the instance holds its generator, its update and at most one counter
        assert 2 <= len(f.__dict__) <= 3, (code, sorted(f.__dict__))
    assert footprint(1, (8, 0)) == 144 + 48 and footprint(14, (3,)) == 128
    # the Chain and its filters list (80), and its list of 4 updates (32)
    assert chain_footprint(CHAIN4) == 80 + 32 + sum(footprint(c, p) for c, p in CHAIN4)
    assert msg(footprint, 3, (4, 0)) == "median: window: 4 must be odd for median"


# --- golden vectors -------------------------------------------------------------------------


def test_golden_vectors_are_bit_identical():
    data = load_json("tests/golden/filters.json")
    period = data["period_ms"]
    codes = set()
    chains = extremes = 0
    for v in data["vectors"]:
        compiled = []
        for i in range(len(v["specs"])):
            code, params = compile_spec(v["specs"][i], period)
            assert [code, list(params)] == v["compiled"][i], (v["name"], i)
            compiled.append((code, params))
            codes.add(code)
        chain = build_chain(compiled)
        out = [chain.update(x) for x in v["inputs"]]
        assert out == v["outputs"], v["name"]
        assert chain.invalid == v["invalid"], v["name"]
        assert None in v["inputs"], v["name"]
        extremes += 32767 in v["inputs"] and -32767 in v["inputs"]
        chains += len(compiled) >= 4
    assert sorted(codes) == list(range(1, 16))
    assert chains >= 2 and extremes >= 20
