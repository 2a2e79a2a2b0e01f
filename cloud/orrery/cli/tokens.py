"""``orrery tokens create|list|revoke``: the API's bearer tokens (``orrery api``) and their roles."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cloud.orrery.cli.common import DbOpt, JsonOpt, console, fail, open_db, os_user
from cloud.orrery.fleet import tokens

app = typer.Typer(help="API tokens and their roles (orrery api).", no_args_is_help=True)


@app.command("create")
def tokens_create(
    role: Annotated[
        str, typer.Option(help="viewer (reads), operator (rollouts, commands) or admin (all).")
    ],
    name: Annotated[str, typer.Option(help="Who or what uses it: the actor in the audit log.")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it, once: only its hash is stored."""
    with open_db(db_url, create=True).begin() as conn:
        try:
            token, row = tokens.create(conn, name, role, by=os_user())
        except tokens.TokenError as exc:
            fail(str(exc))
    if as_json:
        print(json.dumps({**row, "token": token}))
        return
    console.print(f"token {row['name']} ({row['role']}), shown this once:")
    print(token)


@app.command("list")
def tokens_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every token: name, role, who created it, when it was last used, whether it is revoked."""
    with open_db(db_url).connect() as conn:
        rows = tokens.listing(conn)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("id", "name", "role", "created", "by", "last used", "revoked")
    for r in rows:
        t.add_row(str(r["id"]), r["name"], r["role"], r["created"], r["created_by"] or "-",
                  r["last_used"] or "never", r["revoked"] or "")  # fmt: skip
    console.print(t if rows else "no tokens: `orrery tokens create --role viewer --name NAME`")


@app.command("revoke")
def tokens_revoke(
    token: Annotated[str, typer.Argument(help="The token's name or id.")], db_url: DbOpt = None
) -> None:
    """Revoke a token: the API refuses it (401) from now on."""
    with open_db(db_url).begin() as conn:
        try:
            row, now = tokens.revoke(conn, token, by=os_user())
        except tokens.TokenError as exc:
            fail(str(exc))
    console.print(f"token {row['name']} " + ("revoked" if now else f"was revoked {row['revoked']}"))
