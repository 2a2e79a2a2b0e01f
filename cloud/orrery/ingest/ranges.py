"""Inclusive ranges of sequence numbers: merge, subtract, count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge inclusive ranges, joining adjacent ones."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(
    ranges: Iterable[tuple[int, int]], minus: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Inclusive ``ranges`` minus the merged ranges ``minus``."""
    out = []
    for a, b in merge(ranges):
        for c, d in minus:
            if d < a:
                continue
            if c > b:
                break
            if c > a:
                out.append((a, c - 1))
            a = d + 1
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return out


def count(ranges: Iterable[tuple[int, int]]) -> int:
    """How many numbers the inclusive ranges hold."""
    return sum(b - a + 1 for a, b in ranges)
