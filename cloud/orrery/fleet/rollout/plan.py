"""Planning a rollout: wave sizes, target expressions, thresholds, durations and rates as the
operator writes them, and what a rollout's creation decided."""

from __future__ import annotations

import fnmatch
import math
import re
from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, TAGS

# The device columns a rollout plans from: rows are (id, name, fleet, profile, fw, wf, wf_ver,
# online). ``orrery bench rollout`` times the same SELECT as its baseline.
TARGET_COLS = (
    DEVICES.c.id,
    DEVICES.c.name,
    DEVICES.c.fleet,
    DEVICES.c.profile,
    DEVICES.c.fw,
    DEVICES.c.wf,
    DEVICES.c.wf_ver,
    DEVICES.c.online,
)


class RolloutError(ValueError):
    """A rollout request was refused; the message says why."""


def parse_waves(text: str) -> list[str]:
    """``5,10%,50%,100%``: cumulative wave sizes, counts or percentages of the target."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise RolloutError("--waves: give at least one wave, e.g. 5,10%,50%,100%")
    for p in parts:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", p)
        if (
            not m
            or float(m.group(1)) <= 0
            or (m.group(2) and float(m.group(1)) > 100)
            or (not m.group(2) and "." in p)
        ):
            raise RolloutError(
                f"--waves: {p!r} is neither a device count nor a percentage in (0, 100]"
            )
    if parts[-1] != "100%":
        raise RolloutError("--waves: the last wave must be 100% so every target device is covered")
    return parts


def wave_sizes(waves: list[str], total: int) -> list[int]:
    """Cumulative device counts per wave for a target of ``total`` devices (non-decreasing)."""
    out, prev = [], 0
    for w in waves:
        n = math.ceil(total * float(w[:-1]) / 100) if w.endswith("%") else int(w)
        n = max(prev, min(total, n))
        out.append(n)
        prev = n
    return out


def parse_pct(text: str, name: str) -> float:
    """``95%`` or ``95`` -> 95.0."""
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise RolloutError(f"{name}: {text!r} is not a percentage") from None
    if not 0 <= v <= 100:
        raise RolloutError(f"{name}: {text!r} is outside 0..100%")
    return v


def parse_duration(text: str, name: str) -> int:
    """``90s``, ``10m``, ``24h``, ``7d`` or plain seconds -> seconds."""
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise RolloutError(f"{name}: {text!r} is not a duration like 90s, 10m, 24h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_rate(text: str) -> int:
    """``100/min``, ``5/s`` or ``1000/h`` -> commands per minute."""
    m = re.fullmatch(r"(\d+)\s*/\s*(s|sec|min|m|h|hour)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise RolloutError(f"--rate: {text!r} is not a rate like 100/min, 5/s or 1000/h")
    n, unit = int(m.group(1)), m.group(2)
    return n * 60 if unit in ("s", "sec") else n if unit in ("min", "m") else max(1, n // 60)


@dataclass(frozen=True)
class Term:
    """One condition of a target expression."""

    field: str
    op: str
    value: str


_FIELDS = ("fleet", "profile", "fw", "wf", "device")


def parse_target(text: str) -> list[Term]:
    """A target: ``all``, or terms joined by ``,`` (AND): ``FIELD=VALUE`` / ``FIELD!=VALUE``
    with FIELD one of fleet, profile, fw, wf (``name`` or ``name@ver``; ``none``), device
    (glob), or ``tag.KEY``; VALUE may be a glob (``site-*``)."""
    if text.strip() in ("all", "*"):
        return []
    terms = []
    for part in [p.strip() for p in text.split(",")]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(!=|=)\s*(.+)", part)
        if not m:
            raise RolloutError(f"--target: {part!r} is not FIELD=VALUE or FIELD!=VALUE")
        f, op, v = m.group(1), m.group(2), m.group(3).strip()
        if f not in _FIELDS and not (f.startswith("tag.") and len(f) > 4):
            raise RolloutError(
                f"--target: unknown field {f!r} (use {', '.join(_FIELDS)} or tag.KEY)"
            )
        terms.append(Term(f, op, v))
    return terms


def matches(terms: list[Term], dev, tags: dict[str, str]) -> bool:
    """Does a device row (with its tags) satisfy every term?"""
    for t in terms:
        if t.field.startswith("tag."):
            have = tags.get(t.field[4:])
        elif t.field == "wf":
            have = (
                "none"
                if dev.wf is None
                else (f"{dev.wf}@{dev.wf_ver}" if "@" in t.value else dev.wf)
            )
        elif t.field == "device":
            have = dev.name
        else:
            have = getattr(dev, t.field)
        ok = have is not None and fnmatch.fnmatchcase(str(have), t.value)
        if ok == (t.op == "!="):
            return False
    return True


def select_devices(conn: Connection, terms: list[Term], *where) -> list:
    """The devices (rows of ``TARGET_COLS``) that ``terms`` select, among those the SQL
    conditions ``where`` admit."""
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    if any(t.field.startswith("tag.") for t in terms):
        for did, k, v in conn.execute(sa.select(TAGS.c.device_id, TAGS.c.key, TAGS.c.value)):
            tags[did][k] = v
    rows = conn.execute(sa.select(*TARGET_COLS).where(*where)).all()
    if terms:
        rows = [d for d in rows if matches(terms, d, tags.get(d.id, {}))]
    return rows


@dataclass
class Plan:
    """What ``create`` decided (or would, with ``--dry-run``)."""

    rollout_id: int | None
    workflow: str
    waves: list[dict]
    excluded: dict[str, list[str]]
    schedule: dict | None = None  # when it may send (gate.schedule_view), None: at once
    without_zone: list[str] | None = None  # with --window-tz tag.KEY: devices that use UTC
    kind: str = "workflow"  # or "bundle": what ``workflow`` names (NAME@VERSION)
