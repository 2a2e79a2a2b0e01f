"""The preview a person reads in ten seconds."""

from __future__ import annotations

import math
from collections import Counter

from cloud.orrery.clock import fmt_ms, iso
from cloud.orrery.fleet.preview.driver import REFILTERED

CHANGES_SHOWN = 5  # the biggest changes in the totals
NAMES_SHOWN = 5  # devices named on a line


def summary_lines(report: dict) -> list[str]:
    """A few plain lines: what was replayed, what changes, who is stranded, the gate."""
    w = report["window"]
    devices = report["per_device"]
    running = Counter(d["running_version"] or "no workflow" for d in devices)
    lines = [
        f"preview {report['to']} over {_when(w['since_ms'])} → {_when(w['until_ms'])} "
        f"({fmt_ms(w['until_ms'] - w['since_ms'])}): {report['replayed']} of "
        f"{report['devices']} device(s) replayed, {report['readings']:,} reading(s) through "
        f"both versions in {report['seconds']:.1f} s ({report['workers']} worker(s))",
    ]
    if running:
        lines.append("running now: " + ", ".join(f"{v} ({n})" for v, n in sorted(running.items())))
    skipped = report["skipped"]
    if skipped:
        lines.append(
            "skipped: "
            + "; ".join(f"{len(names)} {why} ({_names(names)})" for why, names in skipped.items())
        )
    refiltered = [d["device"] for d in devices if REFILTERED in (d["note"] or "")]
    if refiltered:
        lines.append(
            f"approximate on {len(refiltered)} device(s): the new version filters its inputs "
            "otherwise, so their stored (filtered) readings were filtered again"
        )
    n = report["replayed"]
    pct = f" ({report['changed'] / n:.0%})" if n else ""
    line = f"behave differently: {report['changed']} of {n} device(s){pct}"
    if report["top"]:
        line += "; most: " + _names(report["top"], report["changed"])
    lines.append(line)
    changes = biggest_changes(report["totals"]["running"], report["totals"]["new"])
    if changes:
        lines.append("biggest changes (fleet): " + "; ".join(changes[:CHANGES_SHOWN]))
    elif any(d["running"] is not None for d in devices):
        lines.append("fleet totals: no change in events, alerts, outputs or transitions")
    elif n:
        lines.append("nothing to compare with: no replayed device runs a workflow")
    stranded = report["stranded"]
    if stranded:
        lines.append(
            f"stranded: {len(stranded)} device(s) whose current state has no place in the new "
            "version: "
            + _names([f"{s['device']} ({s['state']} of {s['version']})" for s in stranded])
        )
    else:
        lines.append("stranded: none (every current state has a place in the new version)")
    gate = report.get("gate")
    if gate is not None:
        if gate["passed"]:
            lines.append(f"gate {gate['bounds']}: passed")
        else:
            parts = [
                f"{b['bound']} broken ({b.get('actual', '?')})"
                + (
                    f" on {b['count']} device(s): {_names(b['devices'], b['count'])}"
                    if b["devices"]
                    else ""
                )
                for b in gate["breaches"]
            ]
            lines.append(f"gate {gate['bounds']}: FAILED: " + "; ".join(parts))
    return lines


def biggest_changes(a: dict, b: dict) -> list[str]:
    """The fleet's metrics that change, ``name before → after (+x%)``, the biggest relative
    change first: events (each and in all), alerts, outputs (sets, time on), transitions."""
    rows: list[tuple[float, float, str]] = []

    def add(label: str, x: float, y: float, unit: str = "") -> None:
        if x == y:
            return
        rel = math.inf if x == 0 else abs(y - x) / abs(x)
        p = ("+inf%" if y > x else "-inf%") if x == 0 else f"{(y - x) / abs(x):+.0%}"
        rows.append((rel, abs(y - x), f"{label} {_num(x, unit)} → {_num(y, unit)} ({p})"))

    add("alerts", a["alerts"], b["alerts"])
    add("events", a["events_total"], b["events_total"])
    for k in sorted(set(a["events"]) | set(b["events"])):
        add(f"events.{k}", a["events"].get(k, 0), b["events"].get(k, 0))
    for k in sorted(set(a["outputs"]) | set(b["outputs"])):
        oa, ob = a["outputs"].get(k, {}), b["outputs"].get(k, {})
        add(f"outputs.{k}.on_s", oa.get("on_s", 0), ob.get("on_s", 0), "s")
        add(f"outputs.{k}.sets", oa.get("sets", 0), ob.get("sets", 0))
    add("transitions", a["transitions"], b["transitions"])
    rows.sort(key=lambda r: (-r[0], -r[1]))
    return [r[2] for r in rows]


def _num(x: float, unit: str) -> str:
    if unit == "s":
        return fmt_ms(round(x * 1000)) if x >= 60 else f"{x:g}s"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _names(names: list[str], count: int | None = None) -> str:
    count = len(names) if count is None else count
    more = count - min(len(names), NAMES_SHOWN)
    return ", ".join(names[:NAMES_SHOWN]) + (f" … (+{more})" if more > 0 else "")


def _when(ms: int) -> str:
    return (iso(ms) or "?").replace("T", " ")[:16] + " UTC"
