"""``orrery bundle build|push|list|show|diff``: app bundles (the board's code, compiled by
mpy-cross, for an over-the-air install) and the registry of their versions."""

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
    fail,
    open_db,
    os_user,
    output_console,
    output_dir,
    output_file,
    read_bytes,
    read_problem,
)
from cloud.orrery.clock import now_ms
from cloud.orrery.fleet import bundles
from cloud.orrery.fleet.registry import RegistryError
from tools.board import bundle as bundle_file
from tools.board import profiles

app = typer.Typer(
    help="App bundles: the board's code for over-the-air installs.", no_args_is_help=True
)


def _short(digest: str) -> str:
    return f"{digest[:12]}…"


@app.command("build")
def bundle_build(
    version: Annotated[
        str | None,
        typer.Option("--version", help="Version (default: src-HASH, from the source hash)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Bundle name.")] = bundle_file.DEFAULT_NAME,
    profile: Annotated[
        str, typer.Option(help="Board profile it is built for (hw/boards).")
    ] = profiles.DEFAULT,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Bundle file (default: build/bundles/NAME-VERSION.orb)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compile the app (what `board deploy` puts in a slot) into a bundle file with its
    manifest; the same sources give the same packed app, byte for byte."""
    if output is not None:
        output_file(output, "-o")
    try:
        built = bundle_file.build_bundle(version, name, profile)
    except bundle_file.BundleError as exc:
        fail(str(exc))
    m = built.manifest
    path = output or bundle_file.default_path(built, output_dir(bundle_file.OUT_DIR))
    try:
        path.write_bytes(built.encode())
    except OSError as exc:
        fail(f"{path}: {read_problem(exc)}")
    out = output_console(as_json)
    if version is None:
        out.print(f"no --version given: {built.ref}, named after the source hash")
    if as_json:
        print(json.dumps({"file": str(path), **m}))
        return
    out.print(
        f"built [bold]{built.ref}[/] for {m['profile']} (.mpy {m['mpy_version']}): "
        f"{len(m['files'])} files, {m['size']:,} bytes"
    )
    out.print(f"  sha256       {m['sha256']}")
    out.print(f"  source hash  {m['source_hash']}")
    out.print(f"  written to   {path}", soft_wrap=True)  # a path to copy, in one piece


@app.command("push")
def bundle_push(
    file: Annotated[Path, typer.Argument(help="Bundle file (orrery bundle build).")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store an immutable version: the same content again is a no-op, other content under an
    existing version is refused."""
    try:
        built = bundle_file.decode(read_bytes(file))
    except bundle_file.BundleError as exc:
        fail(f"{file}: {exc}")
    engine = open_db(db_url, create=True)
    try:
        with engine.begin() as conn:
            res = bundles.push(conn, built.data, built.manifest, now_ms(), by=os_user())
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(res.__dict__))
    elif res.created:
        console.print(
            f"pushed [bold]{res.name}@{res.version}[/] ({_short(res.sha256)}, {res.size:,} bytes, "
            f"{len(built.manifest['files'])} files)"
        )
    else:
        console.print(
            f"{res.name}@{res.version} is already in the registry with this content: nothing to do"
        )


@app.command("list")
def bundle_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every version in the registry, with how many devices run it."""
    with open_db(db_url).connect() as conn:
        rows = bundles.versions(conn)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("bundle", "bytes", "profile", ".mpy", "files", "created", "devices")
    t.columns[0].no_wrap = True
    for r in rows:
        t.add_row(
            f"{r['name']}@{r['version']}",
            f"{r['size']:,}",
            r["profile"],
            r["mpy_version"],
            str(r["files"]),
            r["created"][:16].replace("T", " "),
            str(r["devices"]),
        )
    out = console
    out.print(t if rows else "the registry has no bundles: `orrery bundle build`, then `push`")


@app.command("show")
def bundle_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A version's manifest: what it was built from and for, and its files."""
    with open_db(db_url).connect() as conn:
        try:
            row = bundles.get(conn, ref, with_data=False)
        except RegistryError as exc:
            fail(str(exc))
        info = bundles.summary(row, bundles.running(conn))
    m = bundles.manifest(row)
    if as_json:
        print(json.dumps({**info, "built": m.get("built"), "manifest": m}))
        return
    out = console
    head = Table(show_header=False, box=None)
    for key in ("sha256", "size", "profile", "mpy_version", "source_hash", "created"):
        head.add_row(key, f"{info[key]:,} B" if key == "size" else str(info[key]))
    head.add_row("created by", info["created_by"] or "-")
    head.add_row("built", str(m.get("built", "-")))
    head.add_row("devices running it", str(info["devices"]))
    out.print(f"[bold]{row.name}@{row.version}[/]")
    out.print(head)
    t = Table("file", "size", "sha256")
    for f in m.get("files", []):
        t.add_row(f["path"], f"{f['size']:,}", _short(f["sha256"]))
    out.print(t)


@app.command("diff")
def bundle_diff(
    a: Annotated[str, typer.Argument(help="NAME@A")],
    b: Annotated[str, typer.Argument(help="NAME@B")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed between two versions: files added, removed and changed, and the profile,
    .mpy version and sources they were built from."""
    with open_db(db_url).connect() as conn:
        try:
            ra, rb = bundles.get(conn, a, with_data=False), bundles.get(conn, b, with_data=False)
        except RegistryError as exc:
            fail(str(exc))
    d = bundles.diff(bundles.manifest(ra), bundles.manifest(rb))
    if as_json:
        print(json.dumps(d))
        return
    out = console
    out.print(f"[bold]{d['from']}[/] → [bold]{d['to']}[/]")
    for key in ("profile", "mpy_version"):
        if d[key]:
            out.print(f"[yellow]~ {key}[/]: {d[key]['from']} → {d[key]['to']}")
    if d["source_hash"]:
        out.print(
            f"[yellow]~ source_hash[/]: {_short(d['source_hash']['from'])} → "
            f"{_short(d['source_hash']['to'])}"
        )
    if d["size"]:
        was, now = d["size"]["from"], d["size"]["to"]
        out.print(f"[yellow]~ packed size[/]: {was:,} → {now:,} B ({now - was:+,})")
    for f in d["added"]:
        out.print(f"[green]+ {f['path']}[/] ({f['size']:,} B)")
    for f in d["removed"]:
        out.print(f"[red]- {f['path']}[/] ({f['size']:,} B)")
    for f in d["changed"]:
        delta = f["to_size"] - f["from_size"]
        out.print(f"[yellow]~ {f['path']}[/] ({f['from_size']:,} → {f['to_size']:,} B, {delta:+,})")
    if not (d["added"] or d["removed"] or d["changed"]):
        out.print(f"no file differs ({d['unchanged']} the same)")
    else:
        out.print(
            f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed, "
            f"{d['unchanged']} the same"
        )
