"""Time in the companion: unix ms now, unix ms as ISO 8601 text, and durations as text."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Wall-clock unix time in ms."""
    return int(time.time() * 1000)


def parse_instant(text: str) -> int:
    """ISO 8601 (naive = UTC) or unix seconds -> unix ms; ValueError for anything else."""
    try:
        return int(float(text) * 1000)
    except (ValueError, OverflowError):
        pass
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """unix ms -> ISO 8601 UTC with ms, or None."""
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def fmt_ms(ms: int) -> str:
    """``90_000`` -> ``1m30s``; days, hours, minutes and seconds as needed."""
    s = int(ms // 1000)
    parts = []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            parts.append(f"{s // n}{unit}")
            s %= n
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts)
