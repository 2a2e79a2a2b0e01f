"""What every ``orrery`` command shares: the consoles, ``fail``, the ``--db`` and ``--json``
options, opening the database, who runs the command, and parsing times, durations, board
profiles and broker URLs."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import Connection

from cloud.orrery.clock import parse_instant
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
# From when (``fleet.timeline.parse_since``): devices timeline/logs, rollout preview
SinceOpt = Annotated[
    str | None,
    typer.Option(
        help="From: a duration back from now (90s, 10m, 24h, 7d), an ISO 8601 "
        "time (UTC if naive) or unix seconds."
    ),
]
# The virtual fleet's (orrery demo, orrery sim)
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        help="Broker mqtt://HOST:PORT (default $ORRERY_BROKER, else a local Mosquitto of its own)."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of sensors, faults and timing.")]


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr as one line (line breaks in ``message``, e.g. from a
    database driver, become spaces)."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error for a person (one line) and exit non-zero."""
    error_line(message)
    raise typer.Exit(code)


_READ_PROBLEMS = (
    (IsADirectoryError, "is a directory, not a file"),
    (FileNotFoundError, "no such file"),
    (NotADirectoryError, "a part of the path is not a directory"),
    (PermissionError, "permission denied"),
    (UnicodeDecodeError, "not UTF-8 text (a binary file?)"),
)


def read_problem(exc: Exception) -> str:
    """Why a file could not be read or written, in a few words."""
    for kind, why in _READ_PROBLEMS:
        if isinstance(exc, kind):
            return why
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _named(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def read_bytes(path: Path, what: str = "") -> bytes:
    """The bytes of an input file; fails naming it (and its option ``what``) when it cannot be
    read: missing, a directory, no permission."""
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{_named(path, what)}: {read_problem(exc)}")


def read_text(path: Path, what: str = "") -> str:
    """The text of an input file (UTF-8); fails like ``read_bytes``, and on a binary file."""
    data = read_bytes(path, what)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        fail(f"{_named(path, what)}: {read_problem(exc)}")


def read_json_object(path: Path, what: str = "") -> dict[str, Any]:
    """An input file holding one JSON object; fails naming the file when it is not one."""
    import json

    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        fail(f"{_named(path, what)}: not valid JSON: {exc}")
    if not isinstance(data, dict):
        fail(f"{_named(path, what)}: must be a JSON object")
    return data


def output_file(path: Path, what: str = "") -> Path:
    """``path`` if a file can be written there (not a directory, in a directory that exists);
    checked before any work is done, so a long command does not fail at its very end."""
    if path.is_dir():
        fail(f"{_named(path, what)}: is a directory, not a file")
    parent = path.absolute().parent
    if not parent.is_dir():
        fail(f"{_named(path, what)}: {parent} is not a directory")
    return path


def output_dir(path: Path, what: str = "") -> Path:
    """``path``, created if needed, if it is (or can be) a directory; fails naming it if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        fail(f"{_named(path, what)}: is a file, not a directory")
    except OSError as exc:
        fail(f"{_named(path, what)}: {read_problem(exc)}")
    return path


def open_db(url: str | None, create: bool = False) -> sa.Engine:
    """The engine for ``--db``, migrated; a clear error if it can't be opened. Only a command
    that stores something of its own (``create``) may create a SQLite file."""
    from alembic.util import CommandError

    try:
        return engine_for(url, create=create)
    except ValueError as exc:
        fail(str(exc))
    except sa.exc.DBAPIError as exc:
        fail(f"cannot open database {describe(url_from(url))}: {exc.orig}")
    except (sa.exc.SQLAlchemyError, CommandError) as exc:
        fail(f"cannot open database {describe(url_from(url))}: {exc}")


def check_database_server(url: str, what: str) -> None:
    """Fail unless a connection to the database at ``url`` opens (nothing is created)."""
    full = url_from(url)
    try:
        engine = sa.create_engine(full)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        fail(f"{what} {describe(full)}: not a database URL ({exc})")
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        fail(f"{what} {describe(full)}: cannot connect: {exc.orig}")
    finally:
        engine.dispose()


def os_user() -> str:
    """Who runs this command: the OS user, for the audit (who sent a command, who created or
    paused a rollout)."""
    import getpass

    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):  # no name for this uid (a container): the uid itself
        return f"uid:{os.getuid()}"


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
        return parse_instant(text)
    except ValueError:
        fail(f"{name}: {text!r} is neither ISO 8601 (2026-11-21T10:00:00) nor unix seconds")


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
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--board {board}: {read_problem(exc)}")


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def check_host(host: str, what: str) -> str:
    """``host`` if it is a host name or an IP address (no scheme, no port); fails if not."""
    if not _HOST.fullmatch(host):
        fail(f"{what} {host!r}: expected a host name or an IP address (no scheme, no port)")
    return host


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST[:PORT]`` or ``HOST:PORT`` -> (host, port); the port defaults to 1883.
    ValueError for anything else (another scheme, a path, a bare word, a bad port)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
        if ":" not in rest:
            raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT")
    elif scheme.lower() != "mqtt":
        raise ValueError(f"broker URL {url!r}: the scheme must be mqtt:// (plain MQTT)")
    rest = rest[:-1] if rest.endswith("/") else rest
    has_port = rest.count(":") == 1 or ("]:" in rest)  # an IPv6 address is in brackets
    host, port = rest.rsplit(":", 1) if has_port else (rest, "1883")
    if not _HOST.fullmatch(host):
        raise ValueError(f"broker URL {url!r}: {host!r} is not a host name or an IP address")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"broker URL {url!r}: port {port!r} is not a number in 1..65535")
    return host.strip("[]"), int(port)


def broker_address(broker: str | None) -> tuple[str, int] | None:
    """``--broker``, else ``$ORRERY_BROKER``, as (host, port); None when neither is given.

    Fails when the URL is malformed or nothing answers at that address (checked with a TCP
    connection, so a command does not set up a fleet and then stall on a dead broker)."""
    url = broker or os.environ.get("ORRERY_BROKER")
    if not url:
        return None
    try:
        host, port = parse_broker_url(url)
    except ValueError as exc:
        fail(str(exc))
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        fail(f"broker {url}: cannot connect to {host}:{port}: {read_problem(exc)}")
    return host, port
