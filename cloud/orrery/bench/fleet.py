"""The fleet benchmark (``orrery bench fleet``): many virtual boards for a virtual hour against a
real Mosquitto and the companion, as fast as the machine allows.

The boards are ``cloud.orrery.sim.fleet``'s: the firmware node (sampler, filters, executor, flash
store, the board's own MQTT link) on simulated sensors, greenhouse@1, in this process; the
companion (``orrery serve``'s Service, Ingest and Orchestrator) in its own process on SQLite,
on the fleet's virtual clock. No faults. The fleet never runs ahead of the companion (it waits
while the companion holds more than a few hundred messages), so the figures are the whole
system's.

Figures:
- ``readings_per_s``: readings stored per real second, from the first pass to the last commit;
- ``companion_cpu_s``: user + system CPU of the companion process (Linux /proc), and
  ``companion_cpu_us_per_reading`` / ``fleet_cpu_us_per_reading``: each process's CPU per
  reading stored (the fleet's includes running the boards' firmware);
- ``waited_for_companion_s``: real seconds the fleet stood still because the companion held
  more than a few hundred messages; ``bottleneck`` says which process set the pace (the
  companion when the fleet waited for it for more than a tenth of the run);
- ``memory_per_board_kb``: this process's resident memory per board after the run (and
  ``memory_per_board_made_kb`` just after the boards were made), over the resident memory
  before the first board was made (the broker, database and registry set up: that one-off
  part is ``memory_fixed_mb``; ``memory_per_board_with_fixed_kb`` counts it in), less the lag
  probes' arrays (the bench's instrument: ``lag_probe_kb``); target ``MAX_KB_PER_BOARD``, part
  of ``met``;
- ``lag_p50_s``/``lag_p99_s``: real seconds from a reading being accepted into a board's flash
  to the commit that stored it, over the readings of every tenth board (``lag_probe``). It
  includes the wait for the board's next uplink turn: a board sends its readings every
  ``uplink`` of virtual time (commands and acks go at once);
- ``loss``: readings the boards accepted that are neither stored nor held; must be 0.

``met``: no loss, every reading accounted for, the fleet drained, and memory per board within
its target.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.orrery.sim.fleet import VirtualFleet

MAX_KB_PER_BOARD = 30.0  # resident memory per virtual board after the run


def lags(fleet: VirtualFleet, commits: Path) -> list[float]:
    """Per reading of the probe boards: real seconds from accepted to stored (first commit)."""
    probes = {n: b for n, b in fleet.boards.items() if b.lag_seq is not None}
    seen: dict[str, set[int]] = {n: set() for n in probes}
    out: list[float] = []
    t0 = fleet.lag_t0
    if not commits.exists():
        return out
    for line in commits.read_text().splitlines():
        dev, first, count, t = json.loads(line)
        b = probes.get(dev)
        if b is None:
            continue
        s_seen = seen[dev]
        for s in range(first, first + count):
            if s in s_seen:
                continue
            s_seen.add(s)
            i = bisect_left(b.lag_seq, s)
            if i < len(b.lag_seq):
                out.append(t - t0 - b.lag_t[i])
    return out


def run(
    devices: int = 1000,
    virtual_s: int = 3600,
    uplink_s: int = 60,
    seed: int = 1,
    broker: tuple[str, int] | None = None,
    progress: Callable[[VirtualFleet, str], None] | None = None,
) -> dict:
    """Run the benchmark; see the module docstring for the figures."""
    from cloud.orrery.sim.fleet import VirtualFleet, lag_probe_bytes, rss_bytes

    tmp = Path(tempfile.mkdtemp(prefix="orrery-bench-fleet-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    rss0 = rss_bytes()
    t_setup = time.monotonic()
    fleet = VirtualFleet(
        devices, url, broker=broker, seed=seed, uplink_ms=uplink_s * 1000, lag_probe=10
    )
    try:
        rss_made = rss_bytes()
        rss_setup = fleet.rss_setup
        fleet.start_companion()
        setup_s = time.monotonic() - t_setup

        def tick() -> None:
            if progress is not None:
                progress(fleet, "running")

        t0 = time.monotonic()
        cpu0 = time.process_time()
        fleet.run(virtual_s * 1000, tick)
        run_s = time.monotonic() - t0
        fleet.freeze()
        drained = fleet.drain(10 * 60_000, tick)
        wall_s = time.monotonic() - t0
        sim_cpu = time.process_time() - cpu0
        rss_end = rss_bytes()
        probe = lag_probe_bytes(fleet.boards.values())
        companion_cpu = fleet.stop_companion()
        acc = fleet.account()
        lag = lags(fleet, fleet.commits_file)
        published = fleet.published()
    finally:
        fleet.close()
        shutil.rmtree(tmp, ignore_errors=True)
    loss = sum(acc.lost.values()) + sum(b - a + 1 for r in acc.missing.values() for a, b in r)
    per_board = (rss_end - rss_setup - probe) / devices / 1024
    stored = max(1, acc.stored)
    waited = fleet.lag_wait_s
    return {
        "devices": devices,
        "virtual_s": virtual_s,
        "uplink_s": uplink_s,
        "workflow": "greenhouse@1",
        "setup_s": round(setup_s, 1),
        "run_s": round(run_s, 1),
        "wall_s": round(wall_s, 1),
        "speedup": round(virtual_s / run_s, 1),
        "readings": acc.accepted,
        "stored": acc.stored,
        "readings_per_s": round(acc.stored / wall_s),
        "messages": published,
        "companion_cpu_s": None if companion_cpu is None else round(companion_cpu, 1),
        "companion_cpu_us_per_reading": (
            None if companion_cpu is None else round(companion_cpu / stored * 1e6, 1)
        ),
        "fleet_cpu_s": round(sim_cpu, 1),
        "fleet_cpu_us_per_reading": round(sim_cpu / stored * 1e6, 1),
        "waited_for_companion_s": round(waited, 1),
        "bottleneck": "companion" if waited > 0.1 * wall_s else "fleet",
        "memory_per_board_kb": round(per_board, 1),
        "memory_per_board_made_kb": round((rss_made - rss_setup) / devices / 1024, 1),
        "memory_per_board_target_kb": MAX_KB_PER_BOARD,
        "memory_fixed_mb": round((rss_setup - rss0) / 2**20, 1),
        "memory_per_board_with_fixed_kb": round((rss_end - rss0 - probe) / devices / 1024, 1),
        "lag_probe_kb": round(probe / 1024, 1),
        "lag_readings": len(lag),
        "lag_p50_s": _r(percentile(lag, 0.50)),
        "lag_p99_s": _r(percentile(lag, 0.99)),
        "duplicates_dropped": acc.duplicates_dropped,
        "loss": loss,
        "drained": drained,
        "memory_met": per_board <= MAX_KB_PER_BOARD,
        "met": loss == 0 and acc.ok and drained and per_board <= MAX_KB_PER_BOARD,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` (0..1) quantile by nearest rank, or None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]
