"""``orrery readings export|gaps|stats|dead-letters|alerts|plot``: stored readings, gaps and statistics; rich
tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cloud.orrery.cli.common import (
    DbOpt,
    JsonOpt,
    console,
    fail,
    known_device,
    open_db,
    output_file,
    parse_time,
    read_json_object,
    read_problem,
)
from cloud.orrery.fleet.devices import profile_of
from cloud.orrery.ingest import queries
from cloud.orrery.sim.plot import plot_device

app = typer.Typer(help="Stored readings, gaps and statistics.", no_args_is_help=True)


@app.command("export")
def readings_export(
    device: str,
    since: Annotated[
        str | None, typer.Option(help="From this event time (ISO 8601 or unix s).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this event time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default stdout).")
    ] = None,
    db_url: DbOpt = None,
) -> None:
    """Export one device's readings in event-time order (readings without a time anchor last),
    each with its channel's name and its value scaled to the channel's unit."""
    if fmt not in queries.EXPORT_FORMATS:
        fail(f"--format {fmt!r}: expected csv or jsonl")
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    engine = open_db(db_url)
    with engine.connect() as conn:
        did = known_device(conn, device)
        try:
            out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
        except OSError as exc:
            fail(f"-o {output}: {read_problem(exc)}")
        n = -1 if fmt == "csv" else 0  # the header line is no reading
        try:
            for line in queries.export_lines(conn, did, fmt, lo, hi, profile_of(conn, did)):
                out.write(line)
                n += 1
        finally:
            if output:
                out.close()
    if output:
        console.print(f"wrote {n} reading(s) to {output}")


@app.command("gaps")
def readings_gaps(
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open gaps (may still arrive) and permanent losses, each with its reason."""
    with open_db(db_url).connect() as conn:
        did = None if device is None else known_device(conn, device)
        rows = queries.gaps_and_losses(conn, did)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("device", "seqs", "count", "kind", "status", "reason", "since")
    for r in rows:
        t.add_row(
            r["device"],
            f"{r['first']}..{r['last']}",
            str(r["count"]),
            r["kind"],
            r["status"],
            r["reason"],
            r["since"],
        )
    console.print(t if rows else "no gaps and no losses")


@app.command("stats")
def readings_stats(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Per device: received, duplicates dropped, historical, pending gaps, permanent loss;
    the devices whose data was not what it claimed (conflicts, readings stored without an
    event time that could not be true, gaps too large to be true); dead letters by reason."""
    with open_db(db_url).connect() as conn:
        result = queries.stats(conn)
    if as_json:
        print(json.dumps(result))
        return
    totals = result["totals"]
    for cols, heads, only_odd in (
        (queries.FLOW_COLUMNS, ("received", "duplicates", "historical", "pending gap",
                                "permanent loss"), False),
        (queries.ANOMALY_COLUMNS, ("conflicts", "bad time", "gap anomalies"), True),
    ):  # fmt: skip
        rows = [r for r in result["devices"] if not only_odd or any(r[k] for k in cols)]
        if not rows and only_odd:
            continue
        t = Table("device", *heads)
        for r in rows:
            t.add_row(r["device"], *(str(r[k]) for k in cols))
        t.add_row("[bold]total[/]", *(f"[bold]{totals[k]}[/]" for k in cols))
        console.print(t)
    if result["dead_letters"]:
        d = Table("dead-letter reason", "count")
        for reason, n in result["dead_letters"].items():
            d.add_row(reason, str(n))
        console.print(d)


@app.command("dead-letters")
def readings_dead_letters(
    device: Annotated[str | None, typer.Option(help="Only this device's.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only reasons starting with this.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 100,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Messages the ingest could not accept, newest first: when, the topic, the device, why,
    and the size (`readings stats` counts them by reason)."""
    with open_db(db_url).connect() as conn:
        rows, total = queries.dead_letters(conn, device, reason, limit)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("id", "received", "topic", "reason", "bytes")
    for r in rows:
        t.add_row(str(r["id"]), r["received"], r["topic"], r["reason"], str(r["size"]))
    console.print(t if rows else "no dead letters")
    if total > len(rows):
        console.print(f"the newest {len(rows)} of {total} (--limit)")


@app.command("alerts")
def readings_alerts(
    device: Annotated[str | None, typer.Option(help="Only this device's.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 100,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Live alerts (`orrery serve --alert` rules a live reading crossed), newest first."""
    with open_db(db_url).connect() as conn:
        did = None if device is None else known_device(conn, device)
        rows, total = queries.alerts(conn, did, limit)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("id", "device", "rule", "value", "event time", "raised")
    for r in rows:
        t.add_row(str(r["id"]), r["device"], r["rule"], str(r["value"]), r["event_time"] or "-",
                  r["created"])  # fmt: skip
    console.print(t if rows else "no alerts")
    if total > len(rows):
        console.print(f"the newest {len(rows)} of {total} (--limit)")


@app.command("plot")
def readings_plot(
    device: Annotated[str, typer.Argument(help="Device id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")] = Path(
        "readings.png"
    ),
    since: Annotated[
        str | None, typer.Option(help="From this event time (ISO 8601 or unix s).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this event time.")] = None,
    raw: Annotated[
        Path | None,
        typer.Option(help="Raw samples and state changes recorded by `orrery sim`/`demo`."),
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot one device's readings (PNG): stored values per channel, workflow events, and with
    --raw the simulator's raw samples and state changes."""
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    raw_data = None
    if raw is not None:
        raw_data = read_json_object(raw, "--raw")
        if raw_data.get("device") not in (None, device):
            fail(f"--raw {raw} holds {raw_data.get('device')}, not {device}")
    output_file(output, "-o")
    try:
        info = plot_device(open_db(db_url), device, output, since_ms=lo, until_ms=hi, raw=raw_data)
    except LookupError as exc:
        fail(str(exc).strip("'\""))
    if as_json:
        print(json.dumps(info))
    else:
        console.print(
            f"wrote {output}: {info['readings']} stored readings on {', '.join(info['channels'])}"
            + (f", {info['raw_samples']} raw samples" if info["raw_samples"] else "")
            + (f", {info['state_changes']} state changes" if info["state_changes"] else "")
            + f", {info['events']} events"
        )
