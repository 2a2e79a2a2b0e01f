"""The scenarios of ``orrery demo`` and ``orrery sim`` on a virtual fleet: the demo's timeline
(a staged rollout while a third of the fleet is away), random faults for a sim run, and the
finish that drains the fleet and reports."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud.orrery.sim.fleet import VirtualFleet
from cloud.orrery.sim.plot import plot_device
from cloud.orrery.sim.report import Report, collect_report


class Progress(Protocol):
    """What a scenario tells whoever watches it (``orrery demo``'s live display)."""

    total_ms: int

    def set(self, phase: str, rid: int | None = None) -> None:
        """A new phase (and the rollout it is about)."""

    def update(self, force: bool = False) -> None:
        """Show the fleet's progress now (at most a few times a second unless ``force``)."""


@contextlib.contextmanager
def board_output(path: Path):
    """The firmware prints its log (``orrery: …``) on stdout: into ``path`` while it runs."""
    with open(path, "a") as log, contextlib.redirect_stdout(log):
        yield


def pick_plotted(fleet: VirtualFleet, avoid: set[str]) -> str:
    """The board whose greenhouse runs warmest (it will change state), among the online ones."""
    cands = [b for b in fleet.boards.values() if b.name not in avoid and b.synced]
    return max(cands, key=lambda b: b.climate["base"] + b.climate["amplitude"]).name


def finish(
    fleet: VirtualFleet,
    out_dir: Path,
    rid: int | None,
    at_finish: dict | None,
    plotted: str | None,
    t0: float,
    display: Progress,
    bundle_rid: int | None = None,
) -> Report:
    """Deliver the last readings, count everything into a report, and plot ``plotted`` (with
    its raw samples, also written to ``out_dir``)."""
    display.set("delivering the last readings")
    until = fleet.now_ms
    if plotted:
        fleet.boards[plotted].stop_recording()
    fleet.freeze()
    drained = fleet.drain(15 * 60_000, on_pass=display.update)
    display.set("counting")
    rep = collect_report(fleet, time.monotonic() - t0, rid, at_finish, bundle_rid)
    if not drained:
        rep.notes.append(f"[yellow]not everything was delivered: {fleet.unsettled()}[/]")
    if plotted:
        b = fleet.boards[plotted]
        raw = {"device": plotted, "samples": b.raw, "states": b.states}
        raw_path = out_dir / f"{plotted}-raw.json"
        raw_path.write_text(json.dumps(raw))
        display.set("plotting")
        rep.plot = plot_device(
            fleet.engine, plotted, out_dir / f"{plotted}.png", raw=raw, until_ms=until
        )
        rep.plot["raw_file"] = str(raw_path)
    return rep


# --- orrery demo --------------------------------------------------------------------------------

DEMO_MS = 45 * 60_000  # the demo's virtual length, as its display first counts it
BUNDLE_VERSION = "1.1.0"  # the app bundle the demo rolls out after the workflow


@dataclass
class DemoCast:
    """Who plays what in the demo: the boards that go away (the small-flash ones among them)
    and the board that is plotted."""

    away: list[str]
    small: list[str]
    plotted: str


def cast_demo(fleet: VirtualFleet, rng: random.Random) -> DemoCast:
    """A third of the fleet goes away, every small-flash board among them; the plotted board
    (it records its raw samples from now on) stays."""
    offline_n = math.ceil(len(fleet.boards) / 3)
    small = [n for n, b in fleet.boards.items() if b.flash]
    others = [n for n in fleet.boards if n not in small]
    away = small + rng.sample(others, offline_n - len(small))
    plotted = pick_plotted(fleet, set(away))
    fleet.boards[plotted].start_recording()
    return DemoCast(away, small, plotted)


def run_demo(
    fleet: VirtualFleet, cast: DemoCast, rng: random.Random, display: Progress
) -> tuple[int, dict]:
    """The demo's timeline: the companion starts, the boards connect on v1, the cast goes away
    (three boards lose power mid-write), greenhouse@2 rolls out in waves while the broker
    restarts, the boards come back (the small-flash ones once their flash has overflowed).
    Returns the rollout's id and its summary when it finished."""
    devices = len(fleet.boards)
    offline_n = len(cast.away)
    others = [n for n in fleet.boards if n not in cast.small]
    display.set("starting the companion")
    fleet.start_companion()
    display.set("boards connecting (workflow v1 and v2 pushed; boards run v1)")
    fleet.wait(lambda: fleet.online_count() == devices, 3 * 60_000, on_pass=display.update)
    fleet.run(60_000, display.update)
    display.set(f"{offline_n} boards ({offline_n * 100 // devices}%) go offline")
    for n in cast.away:
        fleet.at(rng.randrange(0, 30_000), lambda n=n: fleet.go_away(n))
    cuts = rng.sample([n for n in others if n != cast.plotted], 3)
    for n, kind in zip(cuts, ("garbage_record", "torn_record", "torn_cursor"), strict=True):
        fleet.power_cut_later(n, rng.randrange(60_000, 8 * 60_000), kind)
    fleet.run(60_000, display.update)
    rid = fleet.rollout(
        "greenhouse@2", preview=True, waves="10%,50%,100%", success="95%", max_failures="10%",
        min_devices=3, soak="30s", timeout="1h", rate="1000/min", health="30s",
    )  # fmt: skip
    display.set("rolling out greenhouse@2 in waves", rid)
    if fleet.broker_proc is not None:
        fleet.at(90_000, fleet.restart_broker)
    fleet.wait(lambda: fleet.rollout_state(rid)[0] in ("finished", "partial", "paused"), 20 * 60_000,
               on_pass=display.update)  # fmt: skip
    at_finish = fleet.summary(rid)
    display.set("the offline boards come back")
    for n in cast.away:
        if n not in cast.small:
            fleet.come_back(n)
    # the small-flash boards stay away until their flash has overflowed (~14 min)
    left = max(0, 16 * 60_000 - fleet.elapsed_ms + 2 * 60_000)
    fleet.run(left, display.update)
    for n in cast.small:
        fleet.come_back(n)
    fleet.wait(lambda: set(fleet.member_states(rid).values()) <= {"succeeded", "failed"},
               10 * 60_000, on_pass=display.update)  # fmt: skip
    display.total_ms = fleet.elapsed_ms + 60_000
    return rid, at_finish


def run_demo_bundle(fleet: VirtualFleet, display: Progress) -> int:
    """The demo's last act: the board's own app (built with mpy-cross, packed as a bundle) is
    pushed to the registry and rolled out over the air in two waves, in chunks driven by the
    boards' acks; each board boots it on trial and confirms it. Returns the rollout's id."""
    from cloud.orrery.fleet import bundles
    from cloud.orrery.sim.bundle import app_bundle

    data, manifest = app_bundle(BUNDLE_VERSION)
    with fleet.engine.begin() as conn:
        bundles.push(conn, data, manifest, fleet.now_ms)
    o = fleet.operator()
    plan = o.create(
        None, f"fleet={fleet.fleet_id}", "20%,100%", success="95%", max_failures="10%",
        min_devices=3, soak="0s", timeout="1h", rate="1000/min", health="30s",
        bundle=f"app@{BUNDLE_VERSION}",
    )  # fmt: skip
    assert plan.rollout_id is not None
    o.start(plan.rollout_id)
    rid = plan.rollout_id
    fleet.log(f"rollout {rid} of bundle app@{BUNDLE_VERSION} ({len(data):,} B) started")
    display.set(f"rolling out app bundle {BUNDLE_VERSION} ({len(data) // 1024} KB) over the air", rid)
    fleet.wait(lambda: fleet.rollout_state(rid)[0] in ("finished", "partial", "paused"),
               45 * 60_000, on_pass=display.update)  # fmt: skip
    display.total_ms = fleet.elapsed_ms + 60_000
    return rid


# --- orrery sim ---------------------------------------------------------------------------------


def schedule_faults(
    fleet: VirtualFleet,
    rng: random.Random,
    total_ms: int,
    offline_rate: float,
    reboot_rate: float,
    broker_restarts: int,
) -> None:
    """Random faults over ``total_ms`` of virtual time: per board, link outages (``offline_rate``
    an hour, each 2 min to 2 days, log-uniform) and power cuts (``reboot_rate`` an hour); and
    ``broker_restarts`` evenly spread when the fleet runs its own broker."""
    hours = total_ms / 3_600_000
    for n in fleet.boards:
        for _ in range(poisson(rng, offline_rate * hours)):
            start = rng.randrange(0, total_ms)
            length = int(math.exp(rng.uniform(math.log(120_000), math.log(2 * 86_400_000))))
            fleet.at(start, lambda n=n, length=length: fleet.go_away(n, length))
        for _ in range(poisson(rng, reboot_rate * hours)):
            fleet.power_cut_later(n, rng.randrange(0, total_ms))
    if fleet.broker_proc is not None:
        for k in range(broker_restarts):
            fleet.at(total_ms * (k + 1) // (broker_restarts + 1), fleet.restart_broker)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean ``lam`` (Knuth; lam is small here)."""
    if lam <= 0:
        return 0
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
