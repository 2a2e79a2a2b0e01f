"""The preview a person reads in ten seconds."""

from __future__ import annotations


def summary_lines(report: dict) -> list[str]:
    """A few plain lines: what was replayed, what changes, who is stranded, the gate."""
    raise NotImplementedError  # issue 18: the engine helper writes it
