"""``orrery bench device|ingest|rollout|fleet|api|preview``: benchmarks (commands, not timed
tests). Each prints its figures and exits 2 when a target is not met."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cloud.orrery.cli.common import (
    JsonOpt,
    broker_address,
    check_database_server,
    console,
    err_console,
    fail,
    parse_seconds,
)
from cloud.orrery.clock import fmt_ms

if TYPE_CHECKING:
    from cloud.orrery.sim.fleet import VirtualFleet

# a bench's own database: a scratch one on a PostgreSQL server, or a temporary SQLite file
ScratchDbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="A PostgreSQL server to run on (postgresql://USER@HOST:PORT/DB): a fresh "
        "database is created there and dropped after. Default: a temporary SQLite file.",
    ),
]

app = typer.Typer(help="Benchmarks (commands, not timed tests).", no_args_is_help=True)


def show_figures(result: dict, as_json: bool) -> None:
    """Print a benchmark's figures (indented JSON for scripts, highlighted for people); exit 2
    when it did not meet its targets."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print_json(json.dumps(result))
    if not result["met"]:
        raise typer.Exit(2)


@app.command("fleet")
def bench_fleet(
    devices: Annotated[int, typer.Option(min=1, max=5000, help="Virtual boards.")] = 1000,
    duration: Annotated[str, typer.Option(help="Virtual time to run: 10m, 1h …")] = "1h",
    uplink: Annotated[
        str, typer.Option(help="Virtual time between a board's readings uploads.")
    ] = "60s",
    seed: Annotated[int, typer.Option(help="Seed of the simulated sensors.")] = 1,
    broker: Annotated[
        str | None,
        typer.Option(help="Broker mqtt://HOST:PORT (default $ORRERY_BROKER, else its own)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Virtual boards for a virtual hour against a real broker and the companion: readings/s,
    companion CPU, memory per board, end-to-end lag, loss (must be 0)."""
    from cloud.orrery.bench import fleet as fleet_bench
    from cloud.orrery.sim.fleet import files_needed, raise_fd_limit

    virtual_s = parse_seconds(duration, "--duration")
    uplink_s = parse_seconds(uplink, "--uplink")
    addr = broker_address(broker)
    need = files_needed(devices)
    have = raise_fd_limit(need)
    if have < need:
        fail(f"--devices {devices} needs {need:,} open files and this process may open {have:,}"
             " (ulimit -n): run fewer boards or raise the limit")  # fmt: skip
    last = [0.0]

    def progress(fleet: VirtualFleet, what: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 5:
            last[0] = now
            err_console.print(
                f"[dim]{what}: virtual {fmt_ms(fleet.elapsed_ms)} of {fmt_ms(virtual_s * 1000)}, "
                f"{sum(b.node.store.last_seq for b in fleet.boards.values()):,} readings taken[/]"
            )

    result = fleet_bench.run(devices, virtual_s, uplink_s, seed, addr, progress)
    show_figures(result, as_json)


@app.command("device")
def bench_device(
    as_json: JsonOpt = False,
    samples: Annotated[
        int, typer.Option(min=100, max=2000, help="Samples per measurement.")
    ] = 1000,
) -> None:
    """Cost per sample/step, allocations and heap of the shared core, on real MicroPython."""
    from cloud.orrery.bench import device as device_bench
    from tools.dev.umqtt import UmqttUnavailable

    try:
        result = device_bench.run(samples=samples)
    except UmqttUnavailable as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_device_report(result)
    if not result["targets"]["met"]:
        raise typer.Exit(2)


@app.command("ingest")
def bench_ingest(
    readings: Annotated[
        int, typer.Option(min=1000, help="Unique readings to publish.")
    ] = 1_000_000,
    devices: Annotated[int, typer.Option(min=1, max=99999, help="Simulated boards.")] = 1000,
    batch: Annotated[
        str, typer.Option(help="Readings per message: one size or several (26,100).")
    ] = "26,100",
    dup: Annotated[
        float, typer.Option(min=0, max=1, help="Share of batches published twice.")
    ] = 0.10,
    pg_url: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL server to measure too (default $ORRERY_TEST_PG_URL, else "
            "postgresql://postgres@127.0.0.1:5432/test; 'none' to skip)."
        ),
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            help="orrery serve processes sharing the subscription: one count or several (1,2)."
        ),
    ] = "1,2",
    as_json: JsonOpt = False,
) -> None:
    """Readings through a real broker into SQLite (and PostgreSQL), against a plain paho
    subscriber of the same messages and the raw insert of the same rows."""
    import os

    from cloud.orrery.bench import ingest

    batches = int_list(batch, "--batch", 1, 512)
    counts = int_list(workers, "--workers", 1, 8)
    if devices > readings:
        fail(f"--devices {devices} is more than --readings {readings}")
    if pg_url not in (None, "none"):  # asked for by name: it must answer (the default may not)
        check_database_server(pg_url, "--pg-url")
    pg = (
        pg_url
        or os.environ.get("ORRERY_TEST_PG_URL")
        or "postgresql://postgres@127.0.0.1:5432/test"
    )
    result = ingest.run(
        readings, devices, batches, dup, None if pg == "none" else pg, workers=counts
    )
    show_figures(result, as_json)


def int_list(text: str, option: str, lo: int, hi: int) -> list[int]:
    """``N`` or ``N,M,...`` as a list of distinct integers from ``lo`` to ``hi``, or one error
    line and exit 1."""
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        fail(f"{option} {text!r}: expected a number or numbers separated by commas, e.g. 1,2")
    bad = [x for x in out if not lo <= x <= hi]
    if bad or len(set(out)) != len(out):
        fail(f"{option} {text!r}: each must be from {lo} to {hi}, each once")
    return out


@app.command("rollout")
def bench_rollout(
    devices: Annotated[
        int | None,
        typer.Option(
            min=100,
            max=1_000_000,
            help="Registered devices to roll out to (default 100000; with --bundle 1000).",
        ),
    ] = None,
    bundle: Annotated[
        bool,
        typer.Option(
            "--bundle",
            help="Roll out the real app as a bundle instead (chunks, acks, convergence).",
        ),
    ] = False,
    db: ScratchDbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a rollout over many devices (against a plain SELECT of them), then run it: signed
    commands to a real broker, acks through `orrery serve`; then its signing against
    json.dumps + hmac. With --bundle: the app bundle's size, chunks/s and the time for the
    boards to converge."""
    from cloud.orrery.bench import rollout

    if bundle:
        from cloud.orrery.bench import ota

        if db is not None:
            fail(f"--db {db!r}: --bundle runs on a temporary SQLite file; leave out --db")
        show_figures(ota.run(devices or 1000), as_json)
        return
    devices = devices or 100_000
    if db is not None:
        check_postgres_url(db)
    result = rollout.run(devices, db)
    show_figures(result, as_json)


def check_postgres_url(db: str) -> None:
    """``--db``: a PostgreSQL server's URL that answers, or one error line and exit 1."""
    if not db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        fail(f"--db {db!r}: give a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)")
    check_database_server(db, "--db")


@app.command("api")
def bench_api(
    devices: Annotated[
        int, typer.Option(min=100, max=1_000_000, help="Registered devices.")
    ] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Requests/s of the fleet overview (devices page, fleet summary) and a rollout's status
    over a real `orrery api` server, against the same queries run directly (ratio)."""
    from cloud.orrery.bench import api

    show_figures(api.run(devices), as_json)


def print_device_report(result: dict) -> None:
    """The same figures as a table for people."""
    console.print(f"[bold]orrery bench device[/] on {result['runtime']}")
    t = Table(
        "filter",
        "fuel/sample",
        "µs/sample",
        "alloc B",
        "naive fuel",
        "naive µs",
        "ratio (fuel)",
        "ratio (µs)",
    )
    rows = [(f["name"], f) for f in result["filters"]] + [
        ("chain: " + "+".join(result["chain"]["filters"]), result["chain"])
    ]
    for name, f in rows:
        t.add_row(
            name,
            f"{f['int']['fuel']:.0f}",
            f"{f['int']['us']:.1f}",
            f"{f['int']['alloc_bytes']:.0f}",
            f"{f['naive_float']['fuel']:.0f}",
            f"{f['naive_float']['us']:.1f}",
            f"{f['ratio_fuel']:.2f}x",
            f"{f['ratio_us']:.2f}x" if f["ratio_us"] else "-",
        )
    console.print(t)
    w = result["workflow_step"]
    h = result["heap"]["from_mpy"]
    r = result["heap"]["from_romfs"]
    fw = result["firmware"]
    t = result["targets"]
    lines = [
        f"workflow step ({result['workflow']['name']} v{result['workflow']['version']}): "
        f"{w['fuel']:.0f} fuel, {w['us']:.1f} µs, {w['alloc_bytes']:.0f} B allocated, "
        f"{w['heap_lock_allocations']} heap-locked failures",
        f"heap held by the shared core + workflow (loaded from .mpy): {h['total']} B = "
        f"code {h['modules']} B + workflow {h['workflow']} B "
        f"(computed {result['workflow']['computed_heap_bytes']} B)",
        "  per module: " + ", ".join(f"{k} {v} B" for k, v in h["per_module"].items()),
        "  imported only while used (rare paths, dropped again): "
        + ", ".join(f"{k} {v} B" for k, v in h["on_demand"].items()),
        f"  executed in place from ROMFS: {r['total']} B = code {r['modules']} B + "
        f"workflow {r['workflow']} B",
        f"whole firmware at work (boot.py, main, config, safe mode, node, store, link, "
        f"umqtt.simple {fw['umqtt']['version']}, buffers, workflow): {fw['steady']} B from .mpy, "
        f"{fw['romfs']['steady']} B from ROMFS (target "
        f"{t['firmware_steady_bytes']['target'].lstrip('<= ')} B)",
        f"  peak while a workflow install and an app bundle install run: {fw['peak']} B from "
        f".mpy, {fw['romfs']['peak']} B from ROMFS (target "
        f"{t['firmware_peak_bytes']['target'].lstrip('<= ')} B; live before a pass plus all "
        "it allocates)",
        "  per phase (.mpy): "
        + ", ".join(
            f"{k} {v['live']}..{v['bound']} B in {v['passes']} passes"
            for k, v in fw["phases"].items()
        ),
    ]
    for line in lines:
        console.print(line)
    ok = result["targets"]["met"]
    console.print("[green]targets met[/]" if ok else "[red]targets NOT met[/]")


@app.command("preview")
def bench_preview(
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="Devices to replay.")] = 1000,
    hours: Annotated[
        int, typer.Option(min=1, max=24 * 31, help="Hours of readings (one per 10 s).")
    ] = 24,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Replay processes (default: the preview's own)."),
    ] = None,
    db: ScratchDbOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the readings' noise.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Replay every device's readings through the version it runs and a new one (fleet
    preview): device-days/s, readings/s and the ratio to a plain SELECT of the same rows."""
    from cloud.orrery.bench import preview

    if db is not None:
        check_postgres_url(db)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5 or done == total:
            last[0] = now
            err_console.print(f"[dim]preview: {done:,} of {total:,} devices replayed[/]")

    show_figures(preview.run(devices, hours, workers, db, seed, progress), as_json)
