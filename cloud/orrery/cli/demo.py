"""``orrery demo``: the one-command tour (README command one) on a virtual fleet.

Its own Mosquitto (or ``$ORRERY_BROKER``), SQLite in a temporary directory, the companion, 50
virtual boards running the firmware, workflow v1 and v2 pushed, v2 rolled out in waves while a
third of the fleet is offline, the offline boards brought back, and a final report with a PNG
plot. The timeline is ``cloud.orrery.sim.scenario``'s.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cloud.orrery.cli.common import (
    BrokerOpt,
    JsonOpt,
    SeedOpt,
    broker_address,
    fail,
    output_console,
    output_dir,
)
from cloud.orrery.cli.fleet_view import Display, show_report


def demo(
    devices: Annotated[int, typer.Option(min=6, max=500, help="Virtual boards.")] = 50,
    seed: SeedOpt = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the database, plot and logs (default: a new temporary one)."
        ),
    ] = None,
    broker: BrokerOpt = None,
    speed: Annotated[
        float, typer.Option(min=1, help="Virtual seconds per real second, at most.")
    ] = 40.0,
    as_json: JsonOpt = False,
    console: Annotated[
        bool,
        typer.Option(
            "--console",
            help="At the end, keep the web console up on the demo's database (Ctrl-C ends it) "
            "and print its URL and a viewer token.",
        ),
    ] = False,
    console_port: Annotated[
        int, typer.Option(min=1, max=65535, help="The console's port (127.0.0.1).")
    ] = 8080,
) -> None:
    """The one-command demo: a broker, the companion, 50 virtual boards running the firmware,
    workflow v1 and v2, a staged rollout of v2 while a third of the fleet is offline, then the
    offline boards come back, then the app itself is rolled out as a bundle (OTA); ends with a
    report and a PNG plot (and, with --console, the web console on the result)."""
    from cloud.orrery.sim import scenario
    from cloud.orrery.sim.fleet import VirtualFleet

    t0 = time.monotonic()
    if console:
        check_port_free(console_port)
    con = output_console(as_json)
    addr = broker_address(broker)
    out_dir = output_dir(out, "--out") if out else Path(tempfile.mkdtemp(prefix="orrery-demo-"))
    db_url = f"sqlite:///{out_dir / 'orrery.db'}"
    if (out_dir / "orrery.db").exists():
        fail(f"{out_dir / 'orrery.db'} exists: give an empty --out directory")
    rng = random.Random(seed)
    con.print(
        f"[bold]Orrery demo[/]: {devices} virtual boards, "
        + (f"broker {addr[0]}:{addr[1]}" if addr else "a local Mosquitto")
        + f", SQLite in {out_dir}"
    )
    boards_log = out_dir / "boards.log"
    with scenario.board_output(boards_log):
        fleet = VirtualFleet(
            devices, db_url, broker=addr, seed=seed, uplink_ms=20_000, speed=speed,
            clockless=0.04, small_flash=0.04, health_window_s=30,
        )  # fmt: skip
    cast = scenario.cast_demo(fleet, rng)
    try:
        with (
            Display(fleet, scenario.DEMO_MS, con, enabled=not as_json) as display,
            scenario.board_output(boards_log),
        ):
            rid, at_finish = scenario.run_demo(fleet, cast, rng, display)
            bid = scenario.run_demo_bundle(fleet, display)
            rep = scenario.finish(fleet, out_dir, rid, at_finish, cast.plotted, t0, display, bid)
    except RuntimeError as exc:  # the companion could not start or keep up: say why
        fail(str(exc))
    finally:
        with scenario.board_output(boards_log):
            fleet.close()
    rep.notes.append(
        f"Explore: orrery rollout status {rid} --db {db_url} | orrery rollout status {bid} --db {db_url}"
        f" | orrery readings gaps --db {db_url}"
        f" | orrery readings plot {cast.plotted} --db {db_url} --raw {rep.plot['raw_file'] if rep.plot else ''}"
    )
    show_report(rep, t0, con, as_json)
    if console:
        serve_console(db_url, console_port, rid, as_json)


def check_port_free(port: int) -> None:
    """Fail, in one line, when ``port`` on 127.0.0.1 is taken (before the demo, not after)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            fail(f"--console-port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror}")


def serve_console(db_url: str, port: int, rid: int, as_json: bool) -> None:
    """Serve the API and its console on the demo's database until Ctrl-C, after printing the
    URL and a new viewer token (the only time it is shown; on stderr with ``as_json``)."""
    import uvicorn

    from cloud.orrery.api.app import create_app
    from cloud.orrery.db.engine import engine_for
    from cloud.orrery.fleet import tokens

    engine = engine_for(db_url, create=False)
    with engine.begin() as conn:
        token, _ = tokens.create(conn, f"demo-viewer-{int(time.time())}", "viewer", by="demo")
    url = f"http://127.0.0.1:{port}/console/"
    typer.echo(
        f"\nWeb console: {url}  (rollout: {url}rollouts/{rid})\n"
        f"Viewer token: {token}\n"
        f"An operator's: orrery tokens create --role operator --name NAME --db {db_url}\n"
        "Ctrl-C ends it.",
        err=as_json,
    )
    try:
        uvicorn.run(create_app(engine=engine), host="127.0.0.1", port=port, log_level="warning",
                    lifespan="off")  # fmt: skip
    except (OSError, SystemExit) as exc:
        fail(f"cannot serve the console on 127.0.0.1:{port}: {exc}")
    except KeyboardInterrupt:  # before uvicorn took over Ctrl-C
        pass
    finally:
        engine.dispose()
    typer.echo("console stopped", err=as_json)
