"""What every ``orrery`` command shares: the consoles, ``fail``, the ``--db`` and ``--json``
options, opening the database, and parsing times, durations, board profiles and broker URLs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import Connection

from cloud.orrery.db.engine import describe, engine_for, url_from
from cloud.orrery.fleet.devices import device_id
from cloud.orrery.fleet.rollout.plan import RolloutError, parse_duration

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def output_console(as_json: bool) -> Console:
    """Where a command talks to people: stderr when stdout carries its JSON."""
    return err_console if as_json else console


DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $ORRERY_DB_URL, else sqlite:///orrery.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
# The virtual fleet's (orrery demo, orrery sim)
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        help="Broker mqtt://HOST:PORT (default $ORRERY_BROKER, else a local Mosquitto of its own)."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of sensors, faults and timing.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error for a person and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def open_db(url: str | None) -> sa.Engine:
    """The engine for ``--db``, migrated; a clear error if it can't be opened."""
    try:
        return engine_for(url)
    except ValueError as exc:
        fail(str(exc))
    except sa.exc.OperationalError as exc:
        fail(f"cannot open database {describe(url_from(url))}: {exc.orig}")


def known_device(conn: Connection, name: str) -> int:
    """The id of device ``name``; fails with a hint when it is not registered."""
    did = device_id(conn, name)
    if did is None:
        fail(f"unknown device {name!r} (see `orrery devices list`)")
    return did


def parse_time(text: str | None, name: str) -> int | None:
    """ISO 8601 (naive = UTC) or unix seconds -> unix ms."""
    if text is None:
        return None
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{name}: {text!r} is neither ISO 8601 (2026-11-21T10:00:00) nor unix seconds")
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def parse_seconds(text: str, name: str) -> int:
    """A duration option (``90s``, ``10m``, ``24h``, ``7d``) in seconds."""
    try:
        return parse_duration(text, name)
    except RolloutError as exc:
        fail(str(exc))


def load_profile(board: str | None) -> dict[str, Any] | None:
    """A board profile by name (``hw/boards/NAME.json``) or path, checked; None when not given."""
    from tools.board import profiles

    if board is None:
        return None
    try:
        return profiles.load(board)
    except profiles.ProfileError as exc:
        fail(str(exc))


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` (or ``HOST:PORT``) -> (host, port); the port defaults to 1883."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.split("/", 1)[0]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "1883")
    if not host:
        raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"broker URL {url!r}: port {port!r} is not a number") from None


def broker_address(broker: str | None) -> tuple[str, int] | None:
    """``--broker``, else ``$ORRERY_BROKER``, as (host, port); None when neither is given."""
    url = broker or os.environ.get("ORRERY_BROKER")
    if not url:
        return None
    try:
        return parse_broker_url(url)
    except ValueError as exc:
        fail(str(exc))
