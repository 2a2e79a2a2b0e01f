"""A device's readings as inline SVG, drawn on the server: one small chart per channel, its
name, unit and scaled values (no script, no image request, no style attribute)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

W, H = 640, 150
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 18, 22
MAX_POINTS = 600  # a polyline's points: more would not show on 640 pixels


def _num(v: float) -> str:
    return f"{v:.6g}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def series(rows: Iterable[tuple], keep: int = 5000) -> dict[str, dict]:
    """The newest ``keep`` readings with an event time (rows of ``queries.export_rows``) per
    channel: ``{name: {"unit", "points": [(event_ms, scaled), ...]}}``, by channel number."""
    out: dict[int, dict] = {}
    for _seq, _boot, ch, name, _raw, scaled, unit, _iso, event_ms, _up, _hist in rows:
        if event_ms is None:
            continue
        s = out.setdefault(ch, {"name": name, "unit": unit, "points": deque(maxlen=keep)})
        s["points"].append((event_ms, scaled))
    return {
        s["name"]: {"unit": s["unit"], "points": sorted(s["points"])}
        for _, s in sorted(out.items())
    }


def chart(name: str, unit: str, points: list[tuple[int, float]]) -> str:
    """One channel's readings as an ``<svg>`` element (escaped text throughout)."""
    label = escape(f"{name} ({unit})" if unit else name)
    if not points:
        return ""
    step = max(1, -(-len(points) // MAX_POINTS))  # rounded up: at most MAX_POINTS, and the last
    pts = points[::step]
    if pts[-1] != points[-1]:
        pts.append(points[-1])
    t0, t1 = points[0][0], points[-1][0]
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    span_t = (t1 - t0) or 1
    span_v = (hi - lo) or 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def xy(t: int, v: float) -> str:
        x = LEFT + pw * (t - t0) / span_t
        y = TOP + ph * (1 - (v - lo) / span_v)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in pts)
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{label}: {len(points)} readings" data-channel="{escape(name)}">'
        f'<text x="{LEFT}" y="12" class="title">{label} · {len(points)} readings</text>'
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>'
        f'<text x="{LEFT - 4}" y="{TOP + 8}" class="axis" text-anchor="end">{_num(hi)}</text>'
        f'<text x="{LEFT - 4}" y="{TOP + ph}" class="axis" text-anchor="end">{_num(lo)}</text>'
        f'<text x="{LEFT}" y="{H - 6}" class="axis">{_when(t0)}</text>'
        f'<text x="{W - RIGHT}" y="{H - 6}" class="axis" text-anchor="end">{_when(t1)} UTC</text>'
        f'<polyline points="{line}" class="line"/>'
        "</svg>"
    )


def charts(rows: Iterable[tuple]) -> list[str]:
    """Every channel's chart (``series`` then ``chart``), by channel number."""
    return [chart(name, s["unit"], s["points"]) for name, s in series(rows).items()]
