"""``--preview-gate`` bounds: ``events.alarm<=+10%,outputs.fan.on_s<=+20%``."""

from __future__ import annotations

from dataclasses import dataclass


class BoundError(ValueError):
    """A gate text that cannot be read; the message names the bad part."""


@dataclass(frozen=True)
class Bound:
    """One bound: a metric path, an operator and a limit (see ``parse``)."""

    text: str
    path: tuple[str, ...]
    op: str
    limit: float
    kind: str  # "pct" (relative change), "abs" (absolute change) or "value" (the new value)
    fleet: bool  # on the fleet's totals, not on each device


def parse(text: str) -> list[Bound]:
    """Bounds joined by ','; BoundError names the first bad one."""
    raise NotImplementedError  # issue 18: the engine helper writes it


def evaluate(bounds: list[Bound], report: dict) -> dict:
    """The report's ``gate`` entry for these bounds."""
    raise NotImplementedError  # issue 18: the engine helper writes it
