"""``orrery api``: serve the HTTP API (``/api/v1``, its OpenAPI document at
``/api/v1/openapi.json``) with uvicorn. It keeps no state of its own: several processes can
serve one PostgreSQL database, as ``orrery serve`` workers do."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from cloud.orrery.cli.common import DbOpt, check_host, err_console, fail, open_db, read_problem


def is_local(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_listen(host: str, port: int) -> None:
    """Fail unless ``host:port`` can be listened on (the address resolves, is this machine's,
    and the port is free), before the server starts and says less."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail(f"--host {host}: {read_problem(exc)}")
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {read_problem(exc)}")


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    db_url: DbOpt = None,
) -> None:
    """Serve the fleet's HTTP API (/api/v1) and its web console (/console); tokens: `orrery
    tokens create`."""
    check_host(host, "--host")
    if not 1 <= port <= 65535:
        fail(f"--port: port {port} is not in 1..65535")
    if (certfile is None) != (keyfile is None):
        fail("--certfile and --keyfile go together")
    for path, what in ((certfile, "--certfile"), (keyfile, "--keyfile")):
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                fail(f"{what} {path}: {read_problem(exc)}")
    if certfile is not None and keyfile is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            fail(
                f"--certfile {certfile} / --keyfile {keyfile}: not a certificate and its key ({exc})"
            )
    engine = open_db(db_url)
    _check_listen(host, port)
    if not is_local(host) and certfile is None:
        err_console.print(
            f"[yellow]warning:[/] listening on {host} without TLS: tokens cross the network in "
            "clear text (give --certfile and --keyfile, or put a TLS proxy in front)"
        )
    import uvicorn

    from cloud.orrery.api.app import create_app

    app = create_app(engine=engine)
    scheme = "https" if certfile else "http"
    err_console.print(
        f"orrery api on {scheme}://{host}:{port}/api/v1, the web console on "
        f"{scheme}://{host}:{port}/console/ (Ctrl-C stops it)"
    )
    try:
        uvicorn.run(
            app, host=host, port=port, log_level="warning",
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
        )  # fmt: skip
    except (OSError, SystemExit) as exc:
        fail(f"cannot serve on {host}:{port}: {exc}")
    finally:
        engine.dispose()
