"""The companion's wall clock: unix ms now, and unix ms as ISO 8601 text."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Wall-clock unix time in ms."""
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    """unix ms -> ISO 8601 UTC with ms, or None."""
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
