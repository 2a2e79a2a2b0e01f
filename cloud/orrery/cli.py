"""The ``orrery`` command line: one command, one function; type hints carry the interface."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cloud.orrery import fleetcli, rolloutcli, simcli
from cloud.orrery.bench import fleet as bench_fleet
from cloud.orrery.board import board_app
from cloud.orrery.fleet.broker import broker_app

app = typer.Typer(
    help="Orrery: MicroPython sensor boards and the companion that runs their fleet.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks (commands, not timed tests).", no_args_is_help=True)
workflow_app = typer.Typer(help="Workflow definitions.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(workflow_app, name="workflow")
app.add_typer(fleetcli.devices_app, name="devices")
app.add_typer(fleetcli.readings_app, name="readings")
app.command("serve")(fleetcli.serve)
app.add_typer(rolloutcli.rollout_app, name="rollout")
app.add_typer(broker_app, name="broker")
app.add_typer(board_app, name="board")
app.command("demo")(simcli.demo)
app.command("sim")(simcli.sim)
fleetcli.readings_app.command("plot")(simcli.readings_plot)
bench_app.command("fleet")(bench_fleet.bench_fleet)
workflow_app.command("push")(rolloutcli.workflow_push)
workflow_app.command("list")(rolloutcli.workflow_list)
workflow_app.command("show")(rolloutcli.workflow_show)
workflow_app.command("diff")(rolloutcli.workflow_diff)
workflow_app.command("simulate")(rolloutcli.workflow_simulate)
fleetcli.devices_app.command("tag")(rolloutcli.devices_tag)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

BOARDS = Path(__file__).resolve().parents[2] / "hw" / "boards"


def fail(message: str, code: int = 1) -> None:
    """Print an error for a person and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load_profile(board: str | None) -> dict | None:
    """A board profile by name (``hw/boards/NAME.json``) or path; None when not given."""
    if board is None:
        return None
    path = Path(board)
    if not path.exists():
        path = BOARDS / f"{board}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BOARDS.glob("*.json")))
        fail(f"board profile {board!r} not found (known: {known})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{path}: not valid JSON: {exc}")
    return None


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from importlib.metadata import version as pkg_version

        console.print(f"orrery {pkg_version('orrery')}")
        raise typer.Exit()


@workflow_app.command("validate")
def workflow_validate(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[str | None, typer.Option(help="Board profile name or path.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate a workflow with the board's own validator; errors name the path and the reason."""
    from shared import workflow

    if not file.exists():
        fail(f"{file}: no such file")
    errors = workflow.errors(file.read_bytes(), load_profile(board))
    if as_json:
        print(
            json.dumps({"ok": not errors, "errors": [{"path": p, "reason": r} for p, r in errors]})
        )
    elif errors:
        for path, reason in errors:
            err_console.print(f"[red]{file}[/]: [bold]{path}[/]: {reason}")
    else:
        console.print(f"[green]{file}: valid[/]")
    if errors:
        raise typer.Exit(1)


@workflow_app.command("compile")
def workflow_compile(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[str | None, typer.Option(help="Board profile name or path.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the device form here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Compile a workflow to its compact device form; print its hash and heap footprint."""
    from shared import workflow

    if not file.exists():
        fail(f"{file}: no such file")
    try:
        compiled = workflow.compile(file.read_bytes(), load_profile(board))
    except workflow.WorkflowError as exc:
        for path, reason in exc.errors:
            err_console.print(f"[red]{file}[/]: [bold]{path}[/]: {reason}")
        raise typer.Exit(1) from None
    if output:
        output.write_bytes(compiled.blob)
    info = {
        "name": compiled.name,
        "version": compiled.version,
        "hash": compiled.hash,
        "blob_bytes": len(compiled.blob),
        "heap_bytes": compiled.heap_bytes,
    }
    if as_json:
        print(json.dumps(info))
    else:
        table = Table(show_header=False)
        for k, v in info.items():
            table.add_row(k, str(v))
        console.print(table)


@bench_app.command("device")
def bench_device(
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    samples: Annotated[
        int, typer.Option(min=100, max=2000, help="Samples per measurement.")
    ] = 1000,
) -> None:
    """Cost per sample/step, allocations and heap of the shared core, on real MicroPython."""
    from cloud.orrery.bench import device

    result = device.run(samples=samples)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        device.print_report(result, console)
    if not result["targets"]["met"]:
        raise typer.Exit(2)


@bench_app.command("ingest")
def bench_ingest(
    readings: Annotated[
        int, typer.Option(min=1000, help="Unique readings to publish.")
    ] = 1_000_000,
    devices: Annotated[int, typer.Option(min=1, max=99999, help="Simulated boards.")] = 1000,
    batch: Annotated[int, typer.Option(min=1, max=512, help="Readings per message.")] = 100,
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
        int, typer.Option(min=1, max=8, help="orrery serve processes sharing the subscription.")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Readings through a real broker into SQLite (and PostgreSQL), against raw executemany."""
    import os

    from cloud.orrery.bench import ingest

    if devices > readings:
        fail(f"--devices {devices} is more than --readings {readings}")
    pg = (
        pg_url
        or os.environ.get("ORRERY_TEST_PG_URL")
        or "postgresql://postgres@127.0.0.1:5432/test"
    )
    result = ingest.run(
        readings, devices, batch, dup, None if pg == "none" else pg, workers=workers
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print_json(json.dumps(result))
    if not result["met"]:
        raise typer.Exit(2)


@bench_app.command("rollout")
def bench_rollout(
    devices: Annotated[
        int, typer.Option(min=100, max=1_000_000, help="Registered devices to roll out to.")
    ] = 100_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Plan a rollout over many devices (against a plain SELECT of them), then run it: signed
    commands to a real broker, acks through `orrery serve`."""
    from cloud.orrery.bench import rollout

    result = rollout.run(devices)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print_json(json.dumps(result))
    if not result["met"]:
        raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="orrery")


if __name__ == "__main__":
    sys.exit(main())
