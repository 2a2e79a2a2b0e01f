"""The preview benchmark (``orrery bench preview``): replay a fleet's day of readings through the
version it runs and a new one (``fleet.preview.engine.run``), against a plain SELECT of the
same rows.

A fresh database (a temporary SQLite file, or with ``--db`` a fresh database on a PostgreSQL
server, dropped after) gets ``devices`` devices on the default board profile, every one running
greenhouse@2, and greenhouse@3 beside it: greenhouse@2 with the level at which idle starts
cooling lowered by ``COOL_DELTA`` (3000 -> 2800). Each device has one reading every
``READ_EVERY_MS`` over ``hours`` (8,640 a device-day), its channel rotating over the channels the
workflow reads, values a greenhouse gives (temperature on a daily curve that crosses both
levels in the afternoon, humidity against it, soil drying until watered, a heat spike past the
fault level on one device in ``SPIKE_EVERY``), noise from ``seed``; one device in
``UNANCHORED_EVERY`` reboots twice in the window and its middle boot has no time anchor (its
readings have no event time: they replay in device order); one device in ``REPORTED_EVERY``
reported its state before the window (an event), the others start from the initial state. The
rows go in with ``executemany`` (SQLite) or ``COPY`` (PostgreSQL) in large transactions:
``build.seconds``, not part of any figure.

Figures:

- ``select_s``: a plain SELECT of the rows the preview reads (``engine.select_rows``: the
  preview's own statement, one query a device in the board's order, every row fetched with the
  raw DBAPI cursor as the preview fetches them; all devices, in this process), best of
  ``SELECT_RUNS``;
- ``preview_s``: ``engine.run`` over every device (``workers`` processes, the engine's default
  unless given), once, wall clock;
- ``device_days_per_s`` = device_days / preview_s; ``readings_per_s`` = readings replayed (each
  through both versions) / preview_s; ``projected_10k_device_days_s`` = 10000 /
  device_days_per_s; ``ratio`` = preview_s / select_s.

Targets (issue 18): 10,000 device-days in at most ``TARGETS["device_days_10k_s"]`` s (projected
from this run's rate), ``ratio`` at most ``TARGETS["ratio"]``. ``preview`` says what the replay
found (devices changed, the events v3 adds), so the figures are of a replay that did its work.
``load_average`` (1 min) before the SELECT and after the preview says how busy the machine was:
every figure is wall time.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import cycle, islice, repeat
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.bench.rollout import scratch_database
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES, EVENTS, READING_COLS, READINGS, SESSIONS
from cloud.orrery.fleet import registry
from cloud.orrery.fleet.preview import engine as preview_engine
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.sim import workflows
from firmware.profile import parse_profile
from shared.workflow import compiler
from shared.workflow.program import Program
from tools.board import profiles

FLEET = "bench"
PROFILE = profiles.DEFAULT
READ_EVERY_MS = 10_000  # one reading per device every 10 s: 8,640 a device-day
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# The window starts at noon (UTC, the greenhouse's clock): even an hour's run sees the
# afternoon's heat cross the cooling levels.
SINCE_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z
COOL_DELTA = -200  # greenhouse@3: idle cools from 200 cdegC lower than greenhouse@2
UNANCHORED_EVERY = 50  # one device in this many has a boot without time anchor
REPORTED_EVERY = 3  # one device in this many reported its state before the window
SPIKE_EVERY = 40  # one device in this many sees a heat spike past the fault level
SPIKE = [3500, 4000, 4400] + [4700] * 7  # the heat spike's temperatures, one a temp reading
SELECT_RUNS = 3
BATCH_DEVICES = 50  # devices' readings per insert transaction
TARGETS = {"device_days_10k_s": 600, "ratio": 10}


def _log(msg: str) -> None:
    print(f"bench preview: {msg}", file=sys.stderr, flush=True)


def device_name(i: int) -> str:
    """The bench's device ``i``."""
    return f"p{i:06d}"


def new_version(text: bytes) -> tuple[bytes, str]:
    """greenhouse@2's definition as greenhouse@3, idle's cooling level moved by ``COOL_DELTA``;
    and what changed, in words."""
    wf = json.loads(text)
    wf["version"] += 1
    idle = next(s for s in wf["states"] if s["name"] == wf["initial"])
    when = next(r["when"] for r in idle["on"] if r.get("target") == "cooling" and "above" in r["when"])  # fmt: skip
    old = when["level"]
    when["level"] = old + COOL_DELTA
    what = (
        f"{wf['name']}@{wf['version']}: {idle['name']} -> cooling above {when['above']} "
        f"{old} -> {when['level']}"
    )
    return json.dumps(wf).encode(), what


class Fleet:
    """The shape of the bench's data: which channels the readings rotate over, and each
    device's boots, values and times (deterministic from ``seed``)."""

    def __init__(self, devices: int, hours: int, seed: int, program: Program) -> None:
        self.devices, self.hours = devices, hours
        self.n = hours * HOUR_MS // READ_EVERY_MS  # readings per device
        self.until_ms = SINCE_MS + hours * HOUR_MS
        names = [c[0] for c in parse_profile(profiles.load(PROFILE))[0]]
        # (input, channel index) in the workflow's input order: temp, humidity, soil
        self.inputs = [(program.input_names[i], names.index(ch))
                       for i, ch in enumerate(program.input_channels)]  # fmt: skip
        rnd = random.Random(seed)
        self.noise = [rnd.randint(-100, 100) for _ in range(4096)]
        self.offsets = [rnd.randint(-250, 250) for _ in range(devices)]
        # the day's curve at each reading: +1 at 15:00, -1 at 03:00
        day = [
            math.sin(2 * math.pi * (((SINCE_MS + k * READ_EVERY_MS) % DAY_MS) / HOUR_MS - 9) / 24)
            for k in range(self.n)
        ]
        self.temp = [2200 + 900 * s for s in day]
        self.humidity = [6500 - 1500 * s for s in day]
        self.channels = list(islice(cycle(ch for _, ch in self.inputs), self.n))

    def values(self, d: int) -> list[int]:
        """Device ``d``'s readings' values, in order (the values its filters stored)."""
        n, off, noise = self.n, self.offsets[d], self.noise
        j = (d * 1031) & 4095
        k = len(self.inputs)
        out = [0] * n
        out[0::k] = [int(self.temp[i] + off + noise[(j + i) & 4095]) for i in range(0, n, k)]
        out[1::k] = [int(self.humidity[i] - off + noise[(j + 7 * i) & 4095] // 2)
                     for i in range(1, n, k)]  # fmt: skip
        # soil: dries at its own pace from where the device starts, watered back at 1100
        soil, dry = 2500 - (d * 37) % 900, 1 + (d % 5)
        s = []
        for i in range(2, n, k):
            soil -= dry
            if soil < 1100:
                soil = 2500
            s.append(soil + noise[(j + 3 * i) & 4095] // 10)
        out[2::k] = s
        if d % SPIKE_EVERY == SPIKE_EVERY // 8:
            # a heat spike past the fault level an hour in (before the cooling cycles run
            # out), rising through the cooling level so that it crosses the fault level cooling
            at = n // 24 // k * k
            spike = SPIKE[: len(out[at::k])]
            out[at : at + len(spike) * k : k] = spike
        return out

    def boots(self, d: int) -> list[tuple[int, int, int, int | None]]:
        """Device ``d``'s boots in the window: (boot, first reading, end reading, unix ms at
        uptime 0 or None when the boot has no time anchor)."""
        up0 = SINCE_MS - HOUR_MS - d * 1000  # boot 1 started an hour (and a bit) before
        if d % UNANCHORED_EVERY != 1:
            return [(1, 0, self.n, up0)]
        a, b = self.n // 3, 2 * self.n // 3
        return [(1, 0, a, up0), (2, a, b, None), (3, b, self.n, self._t(d, b) - 1500)]

    def _t(self, d: int, k: int) -> int:
        return SINCE_MS + (d * 7919) % READ_EVERY_MS + k * READ_EVERY_MS

    def rows(self, device_id: int, d: int) -> Iterator[tuple]:
        """Device ``d``'s readings as rows of ``READING_COLS``."""
        vals, chans = self.values(d), self.channels
        for boot, a, b, t0 in self.boots(d):
            t_a = self._t(d, a)
            up_a = t_a - t0 if t0 is not None else 1500
            up = range(up_a, up_a + (b - a) * READ_EVERY_MS, READ_EVERY_MS)
            t = range(t_a, t_a + (b - a) * READ_EVERY_MS, READ_EVERY_MS)
            yield from zip(
                repeat(device_id), repeat(boot), range(1 + a, 1 + b), chans[a:b], vals[a:b],
                up, repeat(None) if t0 is None else t, repeat(False), (x + 800 for x in t),
            )  # fmt: skip

    def sessions(self, device_id: int, d: int) -> list[dict]:
        """Device ``d``'s sessions, one per boot."""
        out = []
        for boot, a, b, t0 in self.boots(d):
            t_a, t_b = self._t(d, a), self._t(d, b - 1)
            out.append({
                "device_id": device_id, "boot": boot,
                "anchor_up_ms": None if t0 is None else t_a - t0,
                "anchor_unix_ms": None if t0 is None else t_a,
                "first_seen_ms": t_a + 800, "last_seen_ms": t_b + 800,
                "first_seq": 1 + a, "last_seq": b,
            })  # fmt: skip
        return out

    def reported(self, device_id: int, d: int) -> dict | None:
        """The event device ``d`` published before the window, if it is one that did: its state
        then is where its replay starts."""
        if d % REPORTED_EVERY:
            return None
        t0 = self.boots(d)[0][3]
        assert t0 is not None
        t = SINCE_MS - 600_000
        return {"device_id": device_id, "boot": 1, "seq": 1, "up_ms": t - t0, "event_ms": t,
                "state": "idle", "event": "status", "value": 0, "received_ms": t + 800}  # fmt: skip


def build(engine: sa.Engine, fleet: Fleet, v2: bytes, v3: bytes) -> dict:
    """Register the devices, push both versions, insert every reading, session and the reported
    events; what was built and how long it took."""
    t0 = time.perf_counter()
    c2 = compiler.compile(v2)
    with engine.begin() as conn:
        registry.push(conn, v2, None, 0)
        registry.push(conn, v3, None, 0)
        rows = [
            {"name": device_name(d), "fleet": FLEET, "profile": PROFILE, "online": True,
             "created_ms": 0, "fw": "1.0.0", "wf": c2.name, "wf_ver": c2.version,
             "wf_hash": c2.hash, "boot": fleet.boots(d)[-1][0], "last_seq": fleet.n}
            for d in range(fleet.devices)
        ]  # fmt: skip
        conn.execute(sa.insert(DEVICES), rows)
        ids = {r.name: r.id for r in conn.execute(sa.select(DEVICES.c.name, DEVICES.c.id))}
        sessions = [s for d in range(fleet.devices)
                    for s in fleet.sessions(ids[device_name(d)], d)]  # fmt: skip
        conn.execute(sa.insert(SESSIONS), sessions)
        events = [e for d in range(fleet.devices)
                  if (e := fleet.reported(ids[device_name(d)], d))]  # fmt: skip
        if events:
            conn.execute(sa.insert(EVENTS), events)
    inserted = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        pg = engine.dialect.name == "postgresql"
        sql = (f"INSERT INTO {READINGS.name} ({', '.join(READING_COLS)}) "
               f"VALUES ({', '.join('?' * len(READING_COLS))})")  # fmt: skip
        for lo in range(0, fleet.devices, BATCH_DEVICES):
            batch = [r for d in range(lo, min(lo + BATCH_DEVICES, fleet.devices))
                     for r in fleet.rows(ids[device_name(d)], d)]  # fmt: skip
            if pg:
                with cur.copy(f"COPY {READINGS.name} ({', '.join(READING_COLS)}) FROM STDIN") as cp:  # type: ignore[attr-defined]
                    for r in batch:
                        cp.write_row(r)
            else:
                cur.executemany(sql, batch)
            raw.commit()
            inserted += len(batch)
        cur.close()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text(f"ANALYZE {READINGS.name}"))
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 1),
        "readings": inserted,
        "readings_per_s": round(inserted / seconds),
        "unanchored_boots": sum(1 for d in range(fleet.devices) for b in fleet.boots(d) if b[3] is None),
        "reported_start": len(events),
    }  # fmt: skip


def time_select(
    engine: sa.Engine, ids: list[int], since_ms: int, until_ms: int
) -> tuple[float, int]:
    """Seconds to fetch every row the preview of devices ``ids`` reads (``engine.select_rows``:
    its statement and raw cursor, in this process), and how many."""
    t = time.perf_counter()
    n = preview_engine.select_rows(engine, ids, since_ms, until_ms)
    return time.perf_counter() - t, n


def targets_of(engine: sa.Engine, to: str) -> list[Target]:
    """Every device, previewing ``to`` beside the version it runs."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.profile, DEVICES.c.wf,
                      DEVICES.c.wf_ver).order_by(DEVICES.c.id)
        ).all()  # fmt: skip
    return [Target(r.id, r.name, r.profile, f"{r.wf}@{r.wf_ver}", to) for r in rows]


def found(report: dict) -> dict:
    """What the preview found: devices replayed and changed, events by name on each side and
    what the new version adds, transitions, who is stranded."""
    run, new = report["totals"]["running"], report["totals"]["new"]
    names = sorted(set(run["events"]) | set(new["events"]))
    return {
        "replayed": report["replayed"],
        "readings": report["readings"],
        "changed": report["changed"],
        "events": {"running": run["events_total"], "new": new["events_total"]},
        "extra_events": {e: new["events"].get(e, 0) - run["events"].get(e, 0) for e in names},
        "transitions": {"running": run["transitions"], "new": new["transitions"]},
        "alerts": {"running": run["alerts"], "new": new["alerts"]},
        "stranded": len(report["stranded"]),
        "skipped": {k: len(v) for k, v in report["skipped"].items()},
        "top": report["top"][:3],
        "start_states": _count(d["start_state_source"] for d in report["per_device"]),
        "engine_seconds": report["seconds"],
    }


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant figures (a small run's seconds keep their precision)."""
    return round(x, digits - 1 - math.floor(math.log10(abs(x)))) if x else 0.0


def _count(xs) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def run(
    devices: int = 1000,
    hours: int = 24,
    workers: int | None = None,
    db: str | None = None,
    seed: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Build the data, time the SELECT and the preview, and return the figures (see the module
    docstring); on a temporary SQLite file, or on a fresh database on the PostgreSQL server
    ``db``, dropped afterwards."""
    with tempfile.TemporaryDirectory(prefix="orrery-bench-preview-") as tmp:
        with scratch_database(db, Path(tmp) / "preview.db", "preview") as (url, what):
            return _run(url, what, devices, hours, workers, seed, progress)


def _run(url, what, devices, hours, workers, seed, progress) -> dict:
    v2 = workflows.GREENHOUSE.read_bytes()
    v3, change = new_version(v2)
    p3 = Program(compiler.compile(v3).blob)
    to = f"{p3.name}@{p3.version}"
    fleet = Fleet(devices, hours, seed, Program(compiler.compile(v2).blob))
    engine = engine_for(url)
    try:
        _log(f"building {devices} devices x {fleet.n:,} readings ({what})")
        built = build(engine, fleet, v2, v3)
        _log(f"built {built['readings']:,} readings in {built['seconds']} s")
        since, until = SINCE_MS, fleet.until_ms
        targets = targets_of(engine, to)
        ids = [t.device_id for t in targets]
        load = [os.getloadavg()[0]]
        time_select(engine, ids, since, until)  # warm the page cache for both
        selects = []
        for _ in range(SELECT_RUNS):
            s, n = time_select(engine, ids, since, until)
            if n != built["readings"]:
                raise RuntimeError(f"the SELECT read {n:,} rows of {built['readings']:,}")
            selects.append(s)
        select_s = min(selects)
        _log(f"select {select_s:.2f} s; preview of {to} over {devices} devices")
        t = time.perf_counter()
        report = preview_engine.run(engine, targets, since, until, to=to, workers=workers,
                                    progress=progress)  # fmt: skip
        preview_s = time.perf_counter() - t
        load.append(os.getloadavg()[0])
        _log(f"preview {preview_s:.1f} s")
    finally:
        engine.dispose()
    device_days = devices * hours / 24
    per_s = device_days / preview_s
    result = {
        "devices": devices,
        "hours": hours,
        "device_days": device_days,
        "readings_per_device_day": DAY_MS // READ_EVERY_MS,
        "database": what,
        "load_average": {"before": round(load[0], 2), "after": round(load[1], 2)},
        "change": change,
        "build": built,
        "select_s": sig(select_s),
        "select_runs_s": [sig(x) for x in selects],
        "select_rows": built["readings"],
        "select_rows_per_s": round(built["readings"] / select_s),
        "workers": report["workers"],
        "preview_s": sig(preview_s),
        "device_days_per_s": sig(per_s),
        "readings_per_s": round(report["readings"] / preview_s),
        "ratio": sig(preview_s / select_s),
        "projected_10k_device_days_s": sig(10_000 / per_s),
        "preview": found(report),
    }
    met = {
        "device_days_10k_s": 10_000 / per_s <= TARGETS["device_days_10k_s"],
        "ratio": preview_s / select_s <= TARGETS["ratio"],
    }
    result["targets"] = {k: {"target": TARGETS[k], "met": v} for k, v in met.items()}
    result["met"] = all(met.values())
    return result
