"""``run``: replay many devices' stored readings through two versions, in parallel processes.

Each device replays through the driver (``preview.driver``, the board's main loop over the
shared executor): the version it runs from the state it last reported at the window's start,
the new one from that state as the board would migrate it. Devices go to worker processes in
chunks; each worker opens its own engine from the URL and reads its own devices' readings with
the raw DBAPI cursor (one query a device, in the board's order).
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.context
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud.orrery.db.tables import READINGS
from cloud.orrery.fleet import registry
from cloud.orrery.fleet.preview import bounds as bounds_mod
from cloud.orrery.fleet.preview.bounds import Bound
from cloud.orrery.fleet.preview.driver import REFILTERED, Side, Version, drive, new_cell
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.fleet.replay import in_window
from cloud.orrery.fleet.rollout import compat
from cloud.orrery.ingest.alerts import AlertRule

TOP = 10  # devices named in "top"
NO_READINGS = "no readings in the window"
UNKNOWN_RUNNING = "running version not in the registry"
BAD_PROFILE = "board profile not valid"


def run(
    engine: Engine,
    targets: Sequence[Target],
    since_ms: int,
    until_ms: int,
    *,
    to: str,
    workers: int | None = None,
    alert_rules: Sequence[AlertRule] = (),
    bounds: Sequence[Bound] = (),
    bounds_text: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Replay each target's readings in [since_ms, until_ms) through its running version and
    its new one; the report ``model`` documents. ``to`` labels the new side.

    ``workers``: processes (None: one per CPU; 1: in this process). ``progress(done, total)``
    is called as devices finish. RegistryError if a new version is not in the registry.
    """
    started = time.perf_counter()
    workers = max(1, workers or os.cpu_count() or 1)
    skipped: dict[str, list[str]] = {}
    with engine.connect() as conn:
        blobs = _blobs(conn, targets)
        if bounds:
            bounds_mod.check_names(bounds, _names(blobs, {t.new for t in targets}))
        stranded = _stranded(conn, targets, blobs)
    channels: dict[str | None, list[str] | None] = {}
    jobs = []
    for t in targets:
        if t.running is not None and t.running not in blobs:
            skipped.setdefault(UNKNOWN_RUNNING, []).append(t.device)
            continue
        if t.profile not in channels:
            channels[t.profile] = _channel_names(t.profile)
        if channels[t.profile] is None:
            skipped.setdefault(BAD_PROFILE, []).append(t.device)
            continue
        jobs.append((t.device_id, t.device, t.profile, t.running, t.new))
    rules = tuple(alert_rules)
    url = _url(engine) if workers > 1 else None
    chunks = _chunks(jobs, workers if url else 1)
    per_device: list[dict] = []
    done = 0
    if progress is not None:
        progress(0, len(jobs))
    if url is None or len(chunks) <= 1:
        workers = 1
        for chunk in chunks:
            per_device += replay_chunk(engine, chunk, since_ms, until_ms, blobs, channels, rules)
            done += len(chunk)
            if progress is not None:
                progress(done, len(jobs))
    else:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(chunks)), mp_context=_context()
        ) as pool:
            futures = {
                pool.submit(
                    _replay_chunk_at, url, chunk, since_ms, until_ms, blobs, channels, rules
                ): len(chunk)
                for chunk in chunks
            }
            for f in as_completed(futures):
                per_device += f.result()
                done += futures[f]
                if progress is not None:
                    progress(done, len(jobs))
    replayed = []
    for d in per_device:
        if d["readings"]:
            replayed.append(d)
        else:
            skipped.setdefault(NO_READINGS, []).append(d["device"])
    replayed.sort(key=lambda d: d["device"])
    for names in skipped.values():
        names.sort()
    changed = [d for d in replayed if d["divergence"] is not None]
    top = sorted(changed, key=lambda d: (-d["score"], d["divergence"]["up_ms"], d["device"]))
    both = [d for d in replayed if d["running"] is not None]
    report = {
        "to": to,
        "window": {"since_ms": since_ms, "until_ms": until_ms},
        "devices": len(targets),
        "replayed": len(replayed),
        "readings": sum(d["readings"] for d in replayed),
        "seconds": round(time.perf_counter() - started, 3),
        "workers": workers,
        "skipped": skipped,
        "stranded": stranded,
        "changed": len(changed),
        "totals": {
            "running": total([d["running"] for d in both]),
            "new": total([d["new"] for d in both]),
        },
        "top": [d["device"] for d in top[:TOP]],
        "per_device": replayed,
        "gate": None,
    }
    if bounds:
        report["gate"] = bounds_mod.evaluate(list(bounds), report)
        if bounds_text is not None:
            report["gate"]["bounds"] = bounds_text
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _blobs(conn: Connection, targets: Sequence[Target]) -> dict[str, bytes]:
    # every version named, by ref; a new version that is not in the registry is an error, a
    # running one is skipped (the device, not the preview)
    out: dict[str, bytes] = {}
    for ref in sorted({t.new for t in targets}):
        out[ref] = registry.get(conn, ref).blob
    for ref in sorted({t.running for t in targets if t.running} - set(out)):
        try:
            out[ref] = registry.get(conn, ref).blob
        except (registry.RegistryError, ValueError):
            pass
    return out


def _names(blobs: dict[str, bytes], refs: set[str]) -> list[tuple]:
    # what a bound may name in each new version: (ref, events, outputs, states)
    from shared.workflow.program import Program

    out = []
    for ref in sorted(refs):
        p = Program(blobs[ref])
        out.append((ref, p.event_names, p.output_names, p.state_names))
    return out


def _stranded(conn: Connection, targets: Sequence[Target], blobs: dict[str, bytes]) -> list[dict]:
    # devices whose current state (the last one reported) has no place in their new version,
    # judged as a rollout judges it (``compat``)
    from shared.workflow.program import Program

    pairs = [t for t in targets if t.running in blobs and t.running != t.new]
    if not pairs:
        return []
    programs = {ref: Program(blob) for ref, blob in blobs.items()}
    pairs = [t for t in pairs if compat.homeless_states(programs[t.running], programs[t.new])]
    reported = compat.reported_states(conn, [t.device_id for t in pairs])
    out = []
    for t in pairs:
        old = programs[t.running]
        rep = reported.get(t.device_id)
        state = compat.state_name(old, rep[0]) if rep else None
        why = compat.strands(old, programs[t.new], state)
        if why is not None:
            out.append({"device": t.device, "version": t.running, "state": state, "why": why})
    return sorted(out, key=lambda x: x["device"])


def _channel_names(profile: str | None) -> list[str] | None:
    # the board channels' names in index order (a reading's channel is an index into them)
    from firmware.profile import parse_profile
    from tools.board import profiles

    try:
        return [c[0] for c in parse_profile(profiles.load(profile or profiles.DEFAULT))[0]]
    except (ValueError, OSError):
        return None


def _context() -> multiprocessing.context.BaseContext:
    # Workers come from a fork server, not a fork of this process: the API server calls ``run``
    # from a thread, and a fork of a threaded process may inherit a lock another thread held.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _url(engine: Engine) -> str | None:
    # the URL a worker opens; None for a database only this process can see
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    return url.render_as_string(hide_password=False)


def _chunks(jobs: list, workers: int) -> list[list]:
    # several chunks a worker, so that a slow one does not hold the others up
    if not jobs:
        return []
    size = max(1, min(64, math.ceil(len(jobs) / (workers * 8))))
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


_ENGINES: dict[str, Engine] = {}
_VERSIONS: dict[tuple[str, tuple[str, ...]], Version] = {}


def _replay_chunk_at(url: str, chunk, since_ms, until_ms, blobs, channels, rules) -> list[dict]:
    # a worker: its own engine from the URL (one a process), then the chunk
    engine = _ENGINES.get(url)
    if engine is None:
        from cloud.orrery.db.engine import engine_for

        engine = _ENGINES[url] = engine_for(url, migrate=False, create=False)
    return replay_chunk(engine, chunk, since_ms, until_ms, blobs, channels, rules)


def replay_chunk(
    engine: Engine,
    chunk: Sequence[tuple],
    since_ms: int,
    until_ms: int,
    blobs: dict[str, bytes],
    channels: dict,
    rules: Sequence[AlertRule] = (),
) -> list[dict]:
    """Replay devices ``(id, name, profile, running ref or None, new ref)``: each one's D
    (``preview.model``; ``readings`` 0 when it has none in the window)."""
    out = []
    with engine.connect() as conn:
        starts = compat.reported_states(conn, [c[0] for c in chunk], since_ms)
        readings = _Readings(conn, since_ms, until_ms)
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for did, name, profile, running, new in chunk:
                rows = readings.fetch(cur, did)
                names = tuple(channels[profile])
                out.append(
                    replay_device(
                        name,
                        rows,
                        _version(blobs[running], names) if running else None,
                        _version(blobs[new], names),
                        starts.get(did),
                        rules,
                    )
                )
        finally:
            cur.close()
    return out


class _Readings:
    """One device's readings in the window, in the board's order: the statement compiled
    once for the connection's dialect, run with the raw DBAPI cursor."""

    def __init__(self, conn: Connection, since_ms: int, until_ms: int) -> None:
        c = READINGS.c
        q = (
            sa.select(c.boot, c.up_ms, c.event_ms, c.channel, c.value, c.seq)
            .where(c.device_id == sa.bindparam("device"), in_window(since_ms, until_ms))
            .order_by(c.seq)
        )
        compiled = q.compile(dialect=conn.dialect)
        self.sql = str(compiled)
        self.params = dict(compiled.params)
        self.order = compiled.positiontup if compiled.positional else None

    def fetch(self, cur, device_id: int) -> list[tuple]:
        """The rows of device ``device_id``, as ``driver.Row``."""
        p = self.params | {"device": device_id}
        cur.execute(self.sql, tuple(p[k] for k in self.order) if self.order is not None else p)
        return cur.fetchall()


def select_rows(engine: Engine, device_ids: Sequence[int], since_ms: int, until_ms: int) -> int:
    """A plain SELECT of the rows a preview of these devices reads, with the same statement
    and raw cursor, in this process; returns how many. The baseline a benchmark compares the
    replay's cost with."""
    n = 0
    with engine.connect() as conn:
        readings = _Readings(conn, since_ms, until_ms)
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for did in device_ids:
                n += len(readings.fetch(cur, did))
        finally:
            cur.close()
    return n


def _version(blob: bytes, channel_names: tuple[str, ...]) -> Version:
    import hashlib

    key = (hashlib.sha256(blob).hexdigest(), channel_names)
    v = _VERSIONS.get(key)
    if v is None:
        v = _VERSIONS[key] = Version(blob, channel_names)
    return v


def replay_device(
    device: str,
    rows: Sequence[tuple],
    running: Version | None,
    new: Version,
    reported: tuple | None,
    rules: Sequence[AlertRule] = (),
) -> dict:
    """One device's D (``preview.model``): ``rows`` (its readings, ``driver.Row``) through
    ``running`` (None: it runs nothing) and ``new``, from its last reported state
    ``reported`` (``compat.reported_states``; None: the running version's initial state)."""
    notes = []
    cell = new_cell()
    first_boot = rows[0][0] if rows else None
    base = running if running is not None else new
    state, source, boot = base.initial, "initial", None
    if reported is not None and running is not None:
        name = compat.state_name(running.program, reported[0])
        if name in running.state_names:
            state, source, boot = running.state_names.index(name), "reported", reported[1]
    # a board that reported its state in an earlier boot has booted since: restore and start
    start = source == "reported" and first_boot is not None and first_boot != boot
    # the window holds the device's first reading and no state was reported before it: the
    # board started afresh (its initial state's entry actions ran)
    fresh = source == "initial" and bool(rows) and rows[0][5] == 1
    snap = None if fresh else base.snapshot_in(state)
    sides = []
    starts: list[tuple] = []
    refilter = False
    if running is not None:
        sides.append(Side(running, cell, rules=rules))
        starts.append((snap, start or fresh))
        refilter = not running.same_filters(new)
        try:
            new_snap = None if snap is None else running.migrated(snap, new)
        except ValueError as exc:
            new_snap = new.snapshot_in(new.initial)
            notes.append(f"{exc}: the new version replayed from its initial state")
    else:
        new_snap = snap
        notes.append("runs no workflow: the new version alone, from its initial state")
    if refilter:
        notes.append(REFILTERED)
    sides.append(Side(new, cell, refilter=refilter, rules=rules))
    starts.append((new_snap, start or fresh))
    divergence = drive(rows, sides, starts, powered_on=fresh) if rows else None
    m_new = sides[-1].as_metrics()
    m_run = sides[0].as_metrics() if running is not None else None
    if not rows:
        m_new["final_state"] = None if running is not None else m_new["final_state"]
    return {
        "device": device,
        "running_version": running.ref if running is not None else None,
        "new_version": new.ref,
        "readings": len(rows),
        "start_state": base.state_names[state],
        "start_state_source": source,
        "note": "; ".join(notes) or None,
        "running": m_run,
        "new": m_new,
        "score": score(m_run, m_new) if m_run is not None else 0.0,
        "divergence": divergence,
    }


def score(a: dict, b: dict) -> float:
    """How much two versions' metrics differ: transitions, events, alerts and output sets
    count one each, and a minute of time in another state or with an output on counts one."""
    s = abs(a["transitions"] - b["transitions"]) + abs(a["events_total"] - b["events_total"])
    s += abs(a["alerts"] - b["alerts"])
    s += _diff(a["outputs"], b["outputs"], lambda o: o["sets"])
    s += _diff(a["outputs"], b["outputs"], lambda o: o["on_s"]) / 60
    s += _diff(a["states_s"], b["states_s"], lambda x: x) / 120  # a move counts on both sides
    return round(s, 3)


def _diff(a: dict, b: dict, get) -> float:
    return sum(
        abs((get(a[k]) if k in a else 0) - (get(b[k]) if k in b else 0)) for k in set(a) | set(b)
    )


def total(ms: Sequence[dict]) -> dict:
    """Metrics summed over devices (``final_state`` None)."""
    out: dict = {
        "transitions": 0,
        "state_changes": 0,
        "events": {},
        "events_total": 0,
        "outputs": {},
        "alerts": 0,
        "states_s": {},
        "final_state": None,
    }
    for m in ms:
        for k in ("transitions", "state_changes", "events_total", "alerts"):
            out[k] += m[k]
        for k, n in m["events"].items():
            out["events"][k] = out["events"].get(k, 0) + n
        for k, o in m["outputs"].items():
            t = out["outputs"].setdefault(k, {"sets": 0, "on_s": 0.0})
            t["sets"] += o["sets"]
            t["on_s"] = round(t["on_s"] + o["on_s"], 3)
        for k, s in m["states_s"].items():
            out["states_s"][k] = round(out["states_s"].get(k, 0.0) + s, 3)
    return out
