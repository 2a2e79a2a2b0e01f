"""``orrery commands list|show``: what became of the commands sent to devices (``orrery
devices send``, rollouts, resends): queued, sent, acked with the board's result, expired."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cloud.orrery.cli.common import DbOpt, JsonOpt, console, fail, open_db
from cloud.orrery.fleet import device_commands

app = typer.Typer(help="Commands sent to devices, and their acks.", no_args_is_help=True)


@app.command("list")
def commands_list(
    device: Annotated[str | None, typer.Option(help="Only this device's commands.")] = None,
    state: Annotated[
        str | None,
        typer.Option(help=f"Only commands in this state: {', '.join(device_commands.STATES)}."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 100,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Commands, newest first: per device its state (queued, sent, acked, done, failed,
    refused, expired, canceled), the board's result code and detail, and who sent it."""
    with open_db(db_url).connect() as conn:
        try:
            rows = device_commands.listing(conn, device, state, limit)
        except device_commands.CommandError as exc:
            fail(str(exc))
    if as_json:
        print(json.dumps(rows))
        return
    t = Table()
    for col in ("id", "device", "kind", "state"):
        t.add_column(col, no_wrap=True)
    for col in ("result", "detail", "sent by", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["id"], r["device"], r["kind"], r["state"], r["result"] or "-", r["detail"] or "",
            r["sent_by"] or r["source"], r["created"],
        )  # fmt: skip
    console.print(t if rows else "no commands")


@app.command("show")
def commands_show(
    command_id: Annotated[str, typer.Argument(help="A command id (see `orrery commands list`).")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One command in full: device, kind and arguments, who sent it, when it was due, sent
    (how many times) and acked, the board's result code and detail, and when it expires."""
    with open_db(db_url).connect() as conn:
        try:
            row = device_commands.show(conn, command_id)
        except device_commands.CommandError as exc:
            fail(str(exc))
    if as_json:
        print(json.dumps(row))
        return
    t = Table(show_header=False)
    for k, v in row.items():
        t.add_row(k, "-" if v is None else json.dumps(v) if isinstance(v, dict) else str(v))
    console.print(t)
