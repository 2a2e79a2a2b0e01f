"""``orrery sim``: a virtual fleet with random faults for a while, then the same report as the
demo's."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from cloud.orrery.cli.common import (
    BrokerOpt,
    DbOpt,
    JsonOpt,
    SeedOpt,
    broker_address,
    fail,
    open_db,
    output_console,
    output_dir,
    parse_seconds,
)
from cloud.orrery.cli.fleet_view import Display, show_report
from cloud.orrery.db.engine import describe, url_from
from cloud.orrery.db.tables import DEVICES


def sim(
    devices: Annotated[
        int, typer.Option("--devices", min=1, max=5000, help="Virtual boards.")
    ] = 50,
    broker: BrokerOpt = None,
    speed: Annotated[
        float, typer.Option(min=0, help="Virtual seconds per real second, at most (0: no limit).")
    ] = 60.0,
    offline_rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="Link outages per board per virtual hour; each lasts 2 min to 2 days (log-uniform).",
        ),
    ] = 0.2,
    reboot_rate: Annotated[
        float, typer.Option(min=0, help="Power cuts mid-write (and reboots) per board per hour.")
    ] = 0.05,
    clockless: Annotated[
        float, typer.Option(min=0, max=1, help="Share of boards whose clock is never set.")
    ] = 0.05,
    broker_restarts: Annotated[
        int, typer.Option(min=0, help="Restarts of our own broker, spread over the run.")
    ] = 1,
    duration: Annotated[str, typer.Option(help="Virtual time to run: 90s, 30m, 2h, 1d.")] = "30m",
    seed: SeedOpt = 1,
    db_url: DbOpt = None,
    plot: Annotated[
        str | None, typer.Option(help="Record this board's raw samples and plot it at the end.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory for the plot and logs (default: a temporary one)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run N virtual boards (the firmware on simulated sensors) against a real broker and the
    companion, on accelerated virtual time, with outages, power cuts, unset clocks and broker
    restarts; report what was taken, stored and lost."""
    from cloud.orrery.sim import scenario
    from cloud.orrery.sim.fleet import VirtualFleet

    total = parse_seconds(duration, "--duration") * 1000
    if total < 60_000:
        fail("--duration must be at least 60s")
    t0 = time.monotonic()
    con = output_console(as_json)
    addr = broker_address(broker)
    out_dir = output_dir(out, "--out") if out else Path(tempfile.mkdtemp(prefix="orrery-sim-"))
    url = db_url or f"sqlite:///{out_dir / 'orrery.db'}"
    engine = open_db(url, create=True)  # a database that cannot be opened fails here, first
    with engine.connect() as conn:
        held = conn.execute(sa.select(sa.func.count()).select_from(DEVICES)).scalar_one()
    engine.dispose()
    if held:  # the report accounts for every reading in the database
        fail(f"{describe(url_from(url))} already holds {held} device(s): give a fresh --db")
    rng = random.Random(seed)
    boards_log = out_dir / "boards.log"
    with scenario.board_output(boards_log):
        fleet = VirtualFleet(devices, url, broker=addr, seed=seed, speed=speed or None,
                             clockless=clockless)  # fmt: skip
    names = list(fleet.boards)
    plotted = None if plot is None else fleet.board_named(plot)
    if plot is not None and plotted is None:
        fleet.close()
        fail(
            f"--plot {plot!r}: the boards are {names[0]} … {names[-1]} (or without -{fleet.run_id})"
        )
    if plotted:
        fleet.boards[plotted].start_recording()
    scenario.schedule_faults(fleet, rng, total, offline_rate, reboot_rate, broker_restarts)
    try:
        with (
            Display(fleet, total, con, enabled=not as_json) as display,
            scenario.board_output(boards_log),
        ):
            display.set("starting the companion")
            fleet.start_companion()
            display.set("running")
            fleet.run(total, display.update)
            rep = scenario.finish(fleet, out_dir, None, None, plotted, t0, display)
    except RuntimeError as exc:  # the companion could not start or keep up: say why
        fail(str(exc))
    finally:
        with scenario.board_output(boards_log):
            fleet.close()
    rep.notes.append(f"Database: {url}")
    show_report(rep, t0, con, as_json)
