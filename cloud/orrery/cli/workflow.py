"""``orrery workflow validate|compile|push|list|show|diff|simulate``: workflow definitions and
the registry of their versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cloud.orrery.cli.common import (
    DbOpt,
    JsonOpt,
    console,
    error_line,
    fail,
    load_profile,
    open_db,
    parse_time,
    read_bytes,
    read_problem,
)
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.fleet import registry, replay
from shared.workflow import compiler

app = typer.Typer(help="Workflow definitions.", no_args_is_help=True)


def _invalid(file: Path, errors: list[tuple[str, str]]) -> None:
    """Print each validation error as ``error: FILE: PATH: REASON``."""
    for path, reason in errors:
        error_line(f"{file}: {path}: {reason}")


@app.command("push")
def workflow_push(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[
        str | None, typer.Option(help="Board profile name or path to validate against.")
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store an immutable version: identical content is a no-op, other content under an
    existing version is refused."""
    source = read_bytes(file)
    profile = load_profile(board)
    engine = open_db(db_url, create=True)
    try:
        with engine.begin() as conn:
            res = registry.push(conn, source, profile, now_ms())
    except compiler.WorkflowError as exc:
        _invalid(file, exc.errors)
        raise typer.Exit(1) from None
    except registry.RegistryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(res.__dict__))
    elif res.created:
        console.print(f"pushed [bold]{res.name}@{res.version}[/] ({res.hash[:12]}…)")
    else:
        console.print(
            f"{res.name}@{res.version} is already in the registry with this content: nothing to do"
        )


@app.command("list")
def workflow_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every version in the registry, with how many devices run it."""
    with open_db(db_url).connect() as conn:
        rows = registry.versions(conn)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("workflow", "hash", "heap", "created", "devices running it")
    for r in rows:
        t.add_row(
            f"{r['name']}@{r['version']}",
            r["hash"][:12],
            f"{r['heap_bytes']} B",
            r["created"],
            str(r["devices"]),
        )
    console.print(t if rows else "the registry is empty: `orrery workflow push FILE`")


@app.command("show")
def workflow_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")], db_url: DbOpt = None
) -> None:
    """Print a version's definition (JSON) and its hash."""

    with open_db(db_url).connect() as conn:
        try:
            row = registry.get(conn, ref)
        except registry.RegistryError as exc:
            fail(str(exc))
    print(json.dumps({"name": row.name, "version": row.version, "hash": row.hash, "heap_bytes": row.heap_bytes,
                      "definition": registry.definition(row)}, indent=2))  # fmt: skip


@app.command("diff")
def workflow_diff(
    a: Annotated[str, typer.Argument(help="NAME@A")],
    b: Annotated[str, typer.Argument(help="NAME@B")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed between two versions: states, transitions, parameters."""

    with open_db(db_url).connect() as conn:
        try:
            ra, rb = registry.get(conn, a), registry.get(conn, b)
        except registry.RegistryError as exc:
            fail(str(exc))
    d = registry.diff(registry.definition(ra), registry.definition(rb))
    if as_json:
        print(json.dumps(d))
        return
    console.print(f"[bold]{ra.name}@{ra.version}[/] → [bold]{rb.name}@{rb.version}[/]")
    for part, ch in d.items():
        for k, v in ch["added"].items():
            console.print(f"[green]+ {part[:-1]} {k}[/]: {json.dumps(v)}")
        for k, v in ch["removed"].items():
            console.print(f"[red]- {part[:-1]} {k}[/]: {json.dumps(v)}")
        for k, v in ch["changed"].items():
            console.print(
                f"[yellow]~ {part[:-1]} {k}[/]: {json.dumps(v['from'])} → {json.dumps(v['to'])}"
            )
    if not any(ch[x] for ch in d.values() for x in ch):
        console.print("no differences")


@app.command("simulate")
def workflow_simulate(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to preview.")],
    device: Annotated[str, typer.Option(help="Replay this device's stored readings.")],
    since: Annotated[str | None, typer.Option(help="From (ISO 8601 or unix s).")] = None,
    until: Annotated[str | None, typer.Option(help="Until.")] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay a device's stored readings through the shared executor: what this version would
    have done, side by side with what the running version did."""
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    with open_db(db_url).connect() as conn:
        try:
            result = replay.simulate(conn, ref, device, lo, hi)
        except (registry.RegistryError, replay.SimulateError) as exc:
            fail(str(exc))
    preview, running, actual = result["preview"], result["running"], result["board_events"]
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"replayed {result['readings']} reading(s) of {device}")
    t = Table(
        "", f"preview {preview['version']}", f"running {running['version'] if running else '-'}"
    )
    for key in ("transitions", "events", "outputs"):
        t.add_row(key, str(len(preview[key])), str(len(running[key])) if running else "-")
    t.add_row("final state", preview["final_state"], running["final_state"] if running else "-")
    t.add_row("board's own events", "", str(len(actual)))
    console.print(t)
    if preview["note"]:
        console.print(f"[yellow]note:[/] {preview['note']}")
    for tr in preview["transitions"][:20]:
        console.print(
            f"  {iso(tr['t']) if tr['t'] > 10**11 else tr['t']}: {tr['from']} → {tr['to']}"
        )


@app.command("validate")
def workflow_validate(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[str | None, typer.Option(help="Board profile name or path.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a workflow with the board's own validator; errors name the path and the reason."""
    errors = compiler.errors(read_bytes(file), load_profile(board))
    if as_json:
        print(
            json.dumps({"ok": not errors, "errors": [{"path": p, "reason": r} for p, r in errors]})
        )
    elif errors:
        _invalid(file, errors)
    else:
        console.print(f"[green]{file}: valid[/]")
    if errors:
        raise typer.Exit(1)


@app.command("compile")
def workflow_compile(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[str | None, typer.Option(help="Board profile name or path.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the device form here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compile a workflow to its compact device form; print its hash and heap footprint."""
    source = read_bytes(file)
    profile = load_profile(board)
    try:
        compiled = compiler.compile(source, profile)
    except compiler.WorkflowError as exc:
        _invalid(file, exc.errors)
        raise typer.Exit(1) from None
    if output:
        try:
            output.write_bytes(compiled.blob)
        except OSError as exc:
            fail(f"-o {output}: {read_problem(exc)}")
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
