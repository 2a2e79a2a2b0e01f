"""A rollout's preview: run for its targets, stored with it, judged against its gate.

``orrery rollout preview ID`` (and the API) runs ``preview`` and stores the result; the
orchestrator's ``start`` refuses a rollout whose stored preview broke its ``--preview-gate``
(``refusal``) and runs the preview itself for a gated rollout that has none yet. The stored
report is the engine's without ``per_device`` except the entries of the most changed devices
and of the devices that broke a bound (``compact``), so it stays small for a large fleet; it
adds ``summary`` (the lines a person reads in ten seconds) and ``verdict`` (one line, also the
audit log's ``preview`` entry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import ROLLOUT_LOG, ROLLOUTS
from cloud.orrery.fleet.preview import bounds, report, targets
from cloud.orrery.fleet.preview import engine as replay
from cloud.orrery.fleet.rollout.plan import Plan, RolloutError, parse_duration
from cloud.orrery.ingest.alerts import AlertRule
from shared.workflow.program import Program

#: the window a preview replays unless told otherwise: back from now
DEFAULT_SINCE = "24h"
#: devices a one-line verdict or refusal names before it says how many more
NAMED = 5
#: the latest time a window may name (unix ms): year 9999, as far as ISO 8601 text goes
MAX_MS = 253_402_300_799_999
#: the audit log's event for a preview
EVENT = "preview"


def parse_gate(text: str) -> list[bounds.Bound]:
    """``--preview-gate`` bounds; RolloutError (one line naming the bad part) if unreadable."""
    try:
        return bounds.parse(text)
    except bounds.BoundError as exc:
        msg = str(exc)
        raise RolloutError(
            msg if msg.startswith("--preview-gate") else f"--preview-gate: {msg}"
        ) from None


def check_gate(text: str, blob: bytes) -> list[bounds.Bound]:
    """Parse ``text`` and check it against the version it gates (``blob``): a bound naming an
    event, output or state that version lacks is refused, naming it."""
    found = parse_gate(text)
    p = Program(blob)
    try:
        bounds.check_names(
            found, [(f"{p.name}@{p.version}", p.event_names, p.output_names, p.state_names)]
        )
    except bounds.BoundError as exc:
        raise RolloutError(f"--preview-gate: {exc}") from None
    return found


def _few(names: Sequence[str], count: int | None = None) -> str:
    n = len(names) if count is None else count
    shown = ", ".join(names[:NAMED])
    return shown + (f" … (+{n - min(n, NAMED)})" if n > NAMED else "")


def breaches_text(gate: dict) -> str:
    """The broken bounds of a gate entry, each with the devices that broke it (the first few
    and how many): ``events.fault_raised<=+10% on 12 device(s) (d01, d02 … (+10))``."""
    parts = []
    for b in gate.get("breaches") or []:
        devs = b.get("devices") or []
        n = b.get("count", len(devs))
        parts.append(f"{b['bound']} on {n} device(s) ({_few(devs, n)})" if devs else
                     f"{b['bound']} on the fleet's totals")  # fmt: skip
    return "; ".join(parts)


def verdict(rep: dict) -> str:
    """One line: what was previewed over which window, how many devices change, who is
    stranded, and the gate's verdict."""
    w = rep.get("window") or {}
    line = (
        f"{rep.get('to')} over {iso(w.get('since_ms'))}..{iso(w.get('until_ms'))}: "
        f"{rep.get('replayed', 0)} of {rep.get('devices', 0)} device(s) replayed, "
        f"{rep.get('changed', 0)} change"
    )
    stranded = rep.get("stranded") or []
    if stranded:
        line += f", {len(stranded)} stranded ({_few([s['device'] for s in stranded])})"
    g = rep.get("gate")
    if g:
        line += (
            f"; gate passed ({g['bounds']})"
            if g["passed"]
            else f"; gate broken: {breaches_text(g)}"
        )
    return line


def compact(rep: dict) -> dict:
    """What is stored of report ``rep``: all of it but ``per_device``, of which only the
    entries of its ``top`` devices and of the devices each broken bound names (the worst ten,
    ``bounds.evaluate``) are kept (``per_device_kept`` says so)."""
    keep = set(rep.get("top") or [])
    for b in (rep.get("gate") or {}).get("breaches") or []:
        keep.update(b.get("devices") or [])
    out = {k: v for k, v in rep.items() if k != "per_device"}
    out["per_device"] = [d for d in rep.get("per_device") or [] if d["device"] in keep]
    out["per_device_kept"] = "top and gate-breaking devices"
    return out


def passed(rep: dict | None) -> bool | None:
    """Whether a report's gate passed; None when it had no gate (or there is no report)."""
    g = (rep or {}).get("gate")
    return None if not g else bool(g["passed"])


def preview(
    engine: Engine,
    rid: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    rollback: bool = False,
    workers: int | None = None,
    alert_rules: Sequence[AlertRule] = (),
    progress: Callable[[int, int], None] | None = None,
    actor: str | None = None,
    clock: Callable[[], int] = now_ms,
) -> dict:
    """Preview rollout ``rid`` over [since_ms, until_ms) (default: the last ``DEFAULT_SINCE``
    up to now) and, unless ``rollback``, judge it against the rollout's gate and store it
    (``preview``, ``preview_ms``, an audit log entry ``preview`` by ``actor`` whose detail is
    the verdict). Returns the full report (every device's entry) with ``summary`` and
    ``verdict``. RolloutError (one line) for no such rollout, a bundle rollout, a window that
    ends before it starts, or no device to preview."""
    now = clock()
    until_ms = now if until_ms is None else until_ms
    since_ms = (
        until_ms - parse_duration(DEFAULT_SINCE, "--since") * 1000 if since_ms is None else since_ms
    )
    check_window(since_ms, until_ms)
    with engine.connect() as conn:
        found, to = targets.of_rollout(conn, rid, rollback)
        text = None if rollback else _gate_text(conn, rid)
    if not found:
        name, ver = _subject_ref(engine, rid)
        raise RolloutError(
            f"rollout {rid}: no member runs {name}@{ver} to roll back from"
            if rollback
            else f"rollout {rid}: every member has succeeded already, nothing to preview"
        )
    rep = run(engine, found, since_ms, until_ms, to=to, gate=text, workers=workers,
              alert_rules=alert_rules, progress=progress)  # fmt: skip
    if not rollback:
        with engine.begin() as conn:
            save(conn, rid, rep, actor, clock())
    return rep


def run(
    engine: Engine,
    found: Sequence,
    since_ms: int,
    until_ms: int,
    *,
    to: str,
    gate: str | None = None,
    workers: int | None = None,
    alert_rules: Sequence[AlertRule] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """``engine.run`` for targets ``found`` with bounds ``gate`` (text, None: no gate), plus
    the report's ``summary`` and ``verdict``; a bound the engine cannot evaluate is a
    RolloutError (one line)."""
    b = parse_gate(gate) if gate else []
    try:
        rep = replay.run(engine, found, since_ms, until_ms, to=to, workers=workers,
                         alert_rules=alert_rules, bounds=b, bounds_text=gate, progress=progress)  # fmt: skip
    except bounds.BoundError as exc:
        raise RolloutError(f"--preview-gate: {exc}") from None
    rep["summary"] = report.summary_lines(rep)
    rep["verdict"] = verdict(rep)
    return rep


def save(conn: Connection, rid: int, rep: dict, actor: str | None, at_ms: int) -> None:
    """Store report ``rep`` as rollout ``rid``'s preview (``compact``), with an audit entry."""
    conn.execute(
        sa.update(ROLLOUTS)
        .where(ROLLOUTS.c.id == rid)
        .values(preview=json.dumps(compact(rep)), preview_ms=at_ms)
    )
    conn.execute(
        sa.insert(ROLLOUT_LOG),
        [{"rollout_id": rid, "at_ms": at_ms, "event": EVENT, "detail": rep["verdict"],
          "actor": actor}],
    )  # fmt: skip


def _gate_text(conn: Connection, rid: int) -> str | None:
    return conn.execute(sa.select(ROLLOUTS.c.preview_gate).where(ROLLOUTS.c.id == rid)).scalar()


def _subject_ref(engine: Engine, rid: int) -> tuple[str, int]:
    with engine.connect() as conn:
        return targets.subject(conn, rid)


def stored(conn: Connection, rid: int) -> tuple[dict, int] | None:
    """Rollout ``rid``'s stored preview and when it ran; None when it has none.
    RolloutError for no such rollout."""
    row = conn.execute(
        sa.select(ROLLOUTS.c.preview, ROLLOUTS.c.preview_ms).where(ROLLOUTS.c.id == rid)
    ).first()
    if row is None:
        raise RolloutError(f"no rollout {rid} (see `orrery rollout list`)")
    if row.preview is None:
        return None
    return json.loads(row.preview), row.preview_ms


def view(conn: Connection, rid: int) -> dict | None:
    """What ``rollout status`` shows of the stored preview: when it ran, what it previewed,
    the summary lines, the verdict and whether the gate passed (None: no gate); None when
    there is none."""
    got = stored(conn, rid)
    if got is None:
        return None
    rep, at = got
    return {"at": iso(at), "to": rep.get("to"), "summary": rep.get("summary") or [],
            "verdict": rep.get("verdict") or verdict(rep), "passed": passed(rep)}  # fmt: skip


def refusal(rid: int, gate_text: str | None, rep: dict | None, at_ms: int | None) -> str | None:
    """Why rollout ``rid`` may not start: its stored preview (``rep``, run at ``at_ms``)
    broke its gate; None when it may."""
    if not gate_text or rep is None or passed(rep) is not False:
        return None
    return (
        f"rollout {rid} cannot start: its preview of {iso(at_ms)} broke its gate "
        f"{gate_text!r}: {breaches_text(rep['gate'])}; push a fixed version and create a new "
        f"rollout of it, or run `orrery rollout preview {rid}` again (another --since window) "
        "if these readings were not representative"
    )


def preview_plan(
    engine: Engine,
    plan: Plan,
    since_ms: int,
    until_ms: int,
    *,
    gate: str | None = None,
    workers: int | None = None,
    alert_rules: Sequence[AlertRule] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Preview a plan that created nothing (``create(..., dry_run=True)``) against ``gate``;
    nothing is stored. RolloutError (one line) for an empty window or a bundle plan."""
    check_window(since_ms, until_ms)
    with engine.connect() as conn:
        found = targets.of_plan(conn, plan)
    return run(engine, found, since_ms, until_ms, to=plan.workflow, gate=gate, workers=workers,
               alert_rules=alert_rules, progress=progress)  # fmt: skip


def check_window(since_ms: int, until_ms: int) -> None:
    """RolloutError (one line) unless [since_ms, until_ms) is a window of 1970..9999."""
    if not (0 <= since_ms <= MAX_MS and 0 <= until_ms <= MAX_MS):
        raise RolloutError(
            f"the window {since_ms}..{until_ms} (unix ms) is outside 1970..{iso(MAX_MS)[:4]}"
        )
    if since_ms >= until_ms:
        raise RolloutError(
            f"--since {iso(since_ms)} is not before --until {iso(until_ms)}: an empty window"
        )
