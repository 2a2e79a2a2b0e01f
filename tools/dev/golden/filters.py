"""Write ``tests/golden/filters.json``: golden vectors for ``shared.filters`` (CPython only).

``python -m tools.dev.golden.filters`` compiles each spec, runs its inputs through the chain and
stores spec, compiled ``(code, params)``, inputs (None = failed read) and outputs (None =
the chain stopped). ``tests/dual/test_filters.py`` recomputes them on CPython and on
MicroPython and compares exactly.

Inputs come from a small LCG, so the file is reproducible. Before writing, each linear
filter's integer output is checked against a float reference run on the same valid samples,
with the filter's own quantized coefficients (coefficient quantization is measured
separately, by ``shared.filters.spec.biquad_quantization_error``). Tolerances, in LSB:

- moving_average: 0.5 (the mean is rounded once, exactly)
- ema, lowpass, highpass: 1 (0.5 output rounding + at most 2**-15 / alpha from the per-step
  Q14 rounding, which is <= 0.5 for any alpha >= 2**-14)
- biquad: (0.5 + 5 * 2**-11) * L1, where L1 = sum |h| of the impulse response of 1 / A(z):
  each output carries at most 0.5 LSB of rounding plus 5 * 2**-11 LSB of product truncation,
  and the recursion feeds that error back through 1 / A(z). Saturation is applied to the
  reference too (clipping never widens a difference).
- calibrate (against the float gain itself): 0.5 + 32767 * 2**-(shift + 1)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from shared.filters.catalog import build_chain
from shared.filters.spec import compile_spec

REPO = Path(__file__).resolve().parents[3]
OUT = REPO / "tests" / "golden" / "filters.json"
PERIOD_MS = 100
SMAX = 32767


class Lcg:
    """A tiny deterministic generator (glibc constants), instead of ``random``."""

    def __init__(self, seed: int) -> None:
        self.s = seed

    def next(self, n: int) -> int:
        """An int in [0, n)."""
        self.s = (1103515245 * self.s + 12345) & 0x7FFFFFFF
        return (self.s >> 8) % n


def analog(seed: int, n: int = 64) -> list[int | None]:
    """A noisy slow sine with a step, the two extremes, and failed reads (None)."""
    g = Lcg(seed)
    out: list[int | None] = []
    for i in range(n):
        v = int(4000 * math.sin(i / 6.0)) + g.next(801) - 400
        if 30 <= i < 38:
            v += 15000
        out.append(max(-SMAX, min(SMAX, v)))
    for i, v in ((20, SMAX), (21, -SMAX), (22, SMAX), (45, -SMAX), (46, -SMAX)):
        out[i] = v
    for i in range(n):
        if g.next(9) == 0:
            out[i] = None
    return out


def digital(seed: int, n: int = 48) -> list[int | None]:
    """A two-level line that flaps: runs of 1..5 equal samples, and failed reads."""
    g = Lcg(seed)
    out: list[int | None] = []
    level = 0
    while len(out) < n:
        out.extend([level] * (1 + g.next(5)))
        level = 1000 - level
    out = out[:n]
    for i in range(n):
        if g.next(12) == 0:
            out[i] = None
    return out


def ramp(seed: int, n: int = 64) -> list[int | None]:
    """A noisy triangle that crosses a 1000..1500 band several times."""
    g = Lcg(seed)
    out: list[int | None] = []
    for i in range(n):
        t = i % 32
        base = 600 + 75 * (t if t < 16 else 32 - t)
        out.append(base + g.next(121) - 60)
    out[5] = None
    out[40] = SMAX
    out[41] = -SMAX
    return out


VECTORS: list[tuple[str, list[dict], str, int]] = [
    ("moving_average", [{"type": "moving_average", "window": 8}], "analog", 1),
    (
        "moving_average_partial",
        [{"type": "moving_average", "window": 5, "partial": True}],
        "analog",
        2,
    ),
    ("ema", [{"type": "ema", "alpha": 0.2}], "analog", 3),
    ("median", [{"type": "median", "window": 5}], "analog", 4),
    ("median_partial", [{"type": "median", "window": 5, "partial": True}], "analog", 5),
    ("min", [{"type": "min", "window": 4}], "analog", 6),
    ("max_partial", [{"type": "max", "window": 4, "partial": True}], "analog", 7),
    ("lowpass_cutoff", [{"type": "lowpass", "cutoff_hz": 0.5}], "analog", 8),
    ("lowpass_alpha", [{"type": "lowpass", "alpha": 0.1}], "analog", 9),
    ("highpass", [{"type": "highpass", "cutoff_hz": 0.5}], "analog", 10),
    (
        "biquad_lowpass",
        [{"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.7071}],
        "analog",
        11,
    ),
    ("biquad_highpass", [{"type": "biquad", "design": "highpass", "cutoff_hz": 0.5}], "analog", 12),
    (
        "biquad_bandpass",
        [{"type": "biquad", "design": "bandpass", "cutoff_hz": 1.0, "q": 2.0}],
        "analog",
        13,
    ),
    (
        "biquad_notch",
        [{"type": "biquad", "design": "notch", "cutoff_hz": 2.0, "q": 1.0}],
        "analog",
        14,
    ),
    ("biquad_coeffs", [{"type": "biquad", "coeffs": [0.2, 0.3, 0.2, -0.5, 0.2]}], "analog", 15),
    ("delta", [{"type": "delta", "threshold": 500}], "analog", 16),
    ("clamp", [{"type": "clamp", "min": -1000, "max": 3000}], "analog", 17),
    ("clamp_drop", [{"type": "clamp", "min": -1000, "max": 3000, "drop": True}], "analog", 18),
    ("calibrate", [{"type": "calibrate", "gain": 0.805, "offset": -12}], "analog", 19),
    ("calibrate_saturating", [{"type": "calibrate", "gain": 3.7, "offset": 100}], "analog", 20),
    ("hysteresis", [{"type": "hysteresis", "low": 1000, "high": 1500}], "ramp", 21),
    ("debounce", [{"type": "debounce", "samples": 3}], "digital", 22),
    ("debounce_ms", [{"type": "debounce", "ms": 250}], "digital", 23),
    ("throttle_ms", [{"type": "throttle", "ms": 500}], "analog", 24),
    ("throttle", [{"type": "throttle", "samples": 3}], "digital", 25),
    ("heartbeat", [{"type": "heartbeat", "samples": 4}], "analog", 26),
    ("heartbeat_ms", [{"type": "heartbeat", "ms": 1000}], "analog", 27),
    (
        "chain_smooth",
        [
            {"type": "clamp", "min": -500, "max": 20000},
            {"type": "median", "window": 5},
            {"type": "moving_average", "window": 4},
            {"type": "calibrate", "gain": 0.805, "offset": -12},
            {"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.7071},
        ],
        "analog",
        28,
    ),
    (
        "chain_threshold_events",
        [
            {"type": "calibrate", "gain": 1.25, "offset": -200},
            {"type": "lowpass", "alpha": 0.5},
            {"type": "hysteresis", "low": 1000, "high": 1500},
            {"type": "debounce", "samples": 2},
            {"type": "delta", "threshold": 1},
        ],
        "ramp",
        29,
    ),
    (
        "chain_edges",
        [
            {"type": "highpass", "alpha": 0.3},
            {"type": "max", "window": 3, "partial": True},
            {"type": "throttle", "samples": 2},
            {"type": "heartbeat", "samples": 2},
        ],
        "analog",
        30,
    ),
]
SIGNALS = {"analog": analog, "digital": digital, "ramp": ramp}


def run(
    compiled: list[tuple[int, tuple[int, ...]]], inputs: list[int | None]
) -> tuple[list, object]:
    chain = build_chain(compiled)
    return [chain.update(x) for x in inputs], chain


def _valid(inputs: list[int | None]) -> list[int]:
    return [x for x in inputs if x is not None]


def _ema_ref(xs: list[int], alpha: float) -> list[float]:
    out, y = [], None
    for x in xs:
        y = float(x) if y is None else y + alpha * (x - y)
        out.append(y)
    return out


def _clip(v: float) -> float:
    return max(-SMAX, min(SMAX, v))


def check_reference(
    spec: dict, params: tuple[int, ...], xs: list[int], ys: list[int | None]
) -> float:
    """Assert the integer outputs follow a float reference; return the largest difference."""
    kind = spec["type"]
    if kind == "moving_average":
        w, partial = params
        ref: list[float | None] = []
        for i in range(len(xs)):
            win = xs[max(0, i - w + 1) : i + 1]
            ref.append(sum(win) / len(win) if len(win) == w or partial else None)
        tol = 0.5
    elif kind in ("ema", "lowpass"):
        ref = list(_ema_ref(xs, params[0] / 16384))
        tol = 1.0
    elif kind == "highpass":
        ref = [_clip(x - y) for x, y in zip(xs, _ema_ref(xs, params[0] / 16384), strict=True)]
        tol = 1.0
    elif kind == "biquad":
        b0, b1, b2, a1, a2 = (c / 16384 for c in params)
        x1 = x2 = y1 = y2 = 0.0
        ref = []
        for x in xs:
            y = _clip(b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2)
            x2, x1, y2, y1 = x1, float(x), y1, y
            ref.append(y)
        tol = (0.5 + 5 / 2048) * _l1_all_pole(a1, a2)
    elif kind == "calibrate":
        ref = [_clip(x * spec["gain"] + spec.get("offset", 0)) for x in xs]
        tol = 0.5 + SMAX * 2.0 ** -(params[1] + 1)
    else:
        return 0.0
    assert len(ref) == len(ys)
    worst = 0.0
    for i, (r, y) in enumerate(zip(ref, ys, strict=True)):
        if r is None or y is None:
            assert r is None and y is None, (spec, i, r, y)
            continue
        worst = max(worst, abs(y - r))
        assert abs(y - r) <= tol + 1e-9, (
            f"{spec}: sample {i}: int {y} vs float {r:.3f} (tol {tol:.3f})"
        )
    return worst


def _l1_all_pole(a1: float, a2: float, n: int = 5000) -> float:
    """sum |h[k]| for the impulse response of 1 / (1 + a1 z^-1 + a2 z^-2)."""
    total, h1, h2 = 0.0, 0.0, 0.0
    for k in range(n):
        h = (1.0 if k == 0 else 0.0) - a1 * h1 - a2 * h2
        total += abs(h)
        h2, h1 = h1, h
    return total


def generate() -> dict:
    vectors = []
    for name, specs, signal, seed in VECTORS:
        compiled = [compile_spec(s, PERIOD_MS) for s in specs]
        inputs = SIGNALS[signal](seed)
        outputs, chain = run(compiled, inputs)
        assert all(y is None or (type(y) is int and -SMAX <= y <= SMAX) for y in outputs), name
        assert any(y is not None for y in outputs), name
        if len(specs) == 1:
            valid_out = [y for x, y in zip(inputs, outputs, strict=True) if x is not None]
            worst = check_reference(specs[0], compiled[0][1], _valid(inputs), valid_out)
        else:
            worst = None
        vectors.append(
            {
                "name": name,
                "specs": specs,
                "compiled": [[code, list(params)] for code, params in compiled],
                "inputs": inputs,
                "outputs": outputs,
                "invalid": chain.invalid,
                "max_error_vs_float": None if worst is None else round(worst, 3),
            }
        )
    return {
        "about": "Golden vectors for shared/filters, written by `python -m tools.dev.golden.filters`.",
        "period_ms": PERIOD_MS,
        "vectors": vectors,
    }


def main() -> int:
    data = generate()
    text = "{\n" + ",\n".join(_entry(k, v) for k, v in data.items()) + "\n}\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}: {len(data['vectors'])} vectors")
    return 0


def _entry(key: str, value: object) -> str:
    # One vector per line keeps diffs of the golden file readable.
    if key == "vectors":
        body = ",\n".join("    " + json.dumps(v) for v in value)  # type: ignore[attr-defined]
        return f'  "{key}": [\n{body}\n  ]'
    return f"  {json.dumps(key)}: {json.dumps(value)}"


if __name__ == "__main__":
    sys.exit(main())
