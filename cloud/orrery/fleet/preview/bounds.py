"""``--preview-gate`` bounds: ``events.alarm<=+10%,outputs.fan.on_s<=+20%``.

A bound is ``PATH OP LIMIT``; bounds are joined by ','.

- PATH: ``transitions``, ``state_changes``, ``events`` (all of them), ``events.NAME``,
  ``alerts``, ``outputs.NAME.sets``, ``outputs.NAME.on_s``, ``states.NAME.s``; ``fleet.``
  before it bounds the fleet's totals instead of each device.
- OP: ``<=``, ``<``, ``>=``, ``>``.
- LIMIT: ``+N%`` / ``-N%`` the relative change of the new version against the running one
  (from 0 to more than 0 is +inf%), ``+N`` / ``-N`` the absolute change, ``N`` the new value.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PATHS = (
    "transitions, state_changes, events, events.NAME, alerts, outputs.NAME.sets, "
    "outputs.NAME.on_s, states.NAME.s (fleet. before any: on the fleet's totals)"
)
LIMITS = "+N% / -N% (relative change), +N / -N (absolute change) or N (the new value)"
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
EXAMPLE = "events.alarm<=+10%"
_BOUND = re.compile(r"^\s*([^<>=\s]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_LIMIT = re.compile(r"^([+-]?)(\d+(?:\.\d+)?|\.\d+)(%?)$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DEVICES_SHOWN = 10  # devices a breach names


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
    items = [x.strip() for x in (text or "").split(",")]
    if not any(items):
        raise BoundError(f"no bounds given: expected PATH OP LIMIT, e.g. {EXAMPLE}")
    return [_bound(x) for x in items]


def _bound(item: str) -> Bound:
    if not item:
        raise BoundError("an empty bound between commas: expected PATH OP LIMIT, e.g. " + EXAMPLE)
    m = _BOUND.match(item)
    if m is None:
        raise BoundError(
            f"bound {item!r}: expected PATH OP LIMIT with OP one of <= < >= >, e.g. {EXAMPLE}"
        )
    path_text, op, limit_text = m.groups()
    fleet = path_text.startswith("fleet.")
    path = tuple(path_text.split("."))[1 if fleet else 0 :]
    if not _valid_path(path):
        raise BoundError(f"bound {item!r}: unknown metric {path_text!r}; metrics: {PATHS}")
    lm = _LIMIT.match(limit_text)
    if lm is None:
        raise BoundError(f"bound {item!r}: limit {limit_text!r} is not one of {LIMITS}")
    sign, number, pct = lm.groups()
    if pct and not sign:
        raise BoundError(
            f"bound {item!r}: a relative limit needs its sign, +{number}% or -{number}%"
        )
    limit = float(number) * (-1 if sign == "-" else 1)
    kind = "pct" if pct else "abs" if sign else "value"
    return Bound(item, path, op, limit, kind, fleet)


def _valid_path(p: tuple[str, ...]) -> bool:
    if len(p) == 1:
        return p[0] in ("transitions", "state_changes", "events", "alerts")
    if len(p) == 2:
        return p[0] == "events" and bool(_NAME.match(p[1]))
    if len(p) == 3 and _NAME.match(p[1]):
        return (p[0] == "outputs" and p[2] in ("sets", "on_s")) or (
            p[0] == "states" and p[2] == "s"
        )
    return False


def check_names(
    bounds: Sequence[Bound],
    versions: Iterable[tuple[str, Sequence[str], Sequence[str], Sequence[str]]],
) -> None:
    """BoundError for a bound naming an event, output or state that a new version lacks;
    ``versions``: ``(ref, event names, output names, state names)`` of each new version."""
    for ref, events, outputs, states in versions:
        for b in bounds:
            kind = b.path[0] if len(b.path) > 1 else None
            names = {"events": events, "outputs": outputs, "states": states}.get(kind or "")
            if names is not None and b.path[1] not in names:
                raise BoundError(
                    f"bound {b.text!r}: {ref} has no {kind[:-1]} {b.path[1]!r}"  # type: ignore[index]
                    f" (its {kind}: {', '.join(names) or 'none'})"
                )


def value(m: dict, path: tuple[str, ...]) -> float:
    """The metric ``path`` of metrics ``m`` (the report's M); a name M lacks counts 0."""
    head = path[0]
    if len(path) == 1:
        return m["events_total"] if head == "events" else m[head]
    if head == "events":
        return m["events"].get(path[1], 0)
    if head == "outputs":
        o = m["outputs"].get(path[1])
        return 0 if o is None else o[path[2]]
    return m["states_s"].get(path[1], 0.0)


def change(b: Bound, running: dict | None, new: dict) -> float | None:
    """What ``b`` limits, new against running: the relative change in %, the absolute
    change, or the new value (None: a change with nothing to compare with)."""
    y = value(new, b.path)
    if b.kind == "value":
        return y
    if running is None:
        return None
    x = value(running, b.path)
    if b.kind == "abs":
        return y - x
    if x == 0:
        return 0.0 if y == 0 else math.copysign(math.inf, y)
    return (y - x) / abs(x) * 100


def holds(b: Bound, q: float) -> bool:
    """True if quantity ``q`` (``change``) is within ``b``."""
    return OPS[b.op](q, b.limit)


def shown(b: Bound, q: float) -> str:
    """A quantity as its bound writes it: +12.5%, +3, 40."""
    if b.kind == "pct":
        return ("+inf" if q > 0 else "-inf") + "%" if math.isinf(q) else f"{q:+.1f}%"
    n = f"{q:+g}" if b.kind == "abs" else f"{q:g}"
    return n


def evaluate(bounds: list[Bound], report: dict) -> dict:
    """The report's ``gate`` entry for these bounds: each breach names the bound, the devices
    that break it (at most ten, the worst first; for a ``fleet.`` bound, those that add most to
    the change) with how many there are, and the value that broke it (``actual``)."""
    breaches = []
    devices = report["per_device"]
    for b in bounds:
        if b.fleet:
            t = report["totals"]
            q = change(b, t["running"], t["new"])
            if q is None or holds(b, q):
                continue
            worst = sorted(
                (
                    (value(d["new"], b.path) - value(d["running"], b.path), d["device"])
                    for d in devices
                    if d["running"] is not None
                ),
                reverse=not b.op.startswith(">"),
            )
            names = [n for diff, n in worst if (diff > 0 if not b.op.startswith(">") else diff < 0)]
            breaches.append(
                {
                    "bound": b.text,
                    "devices": names[:DEVICES_SHOWN],
                    "count": len(names),
                    "actual": shown(b, q),
                }
            )
            continue
        bad = []
        for d in devices:
            q = change(b, d["running"], d["new"])
            if q is not None and not holds(b, q):
                bad.append((q, d["device"]))
        if bad:
            bad.sort(key=lambda x: (-x[0] if not b.op.startswith(">") else x[0], x[1]))
            breaches.append(
                {
                    "bound": b.text,
                    "devices": [n for _, n in bad[:DEVICES_SHOWN]],
                    "count": len(bad),
                    "actual": shown(b, bad[0][0]),
                }
            )
    return {
        "bounds": ",".join(b.text for b in bounds),
        "passed": not breaches,
        "breaches": breaches,
    }
