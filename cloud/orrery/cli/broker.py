"""``orrery broker secret|config``: the fleet secret and a locked-down Mosquitto configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cloud.orrery.cli.common import JsonOpt, console, fail
from cloud.orrery.fleet import keys
from cloud.orrery.fleet.broker import (
    COMPANION_USER,
    BrokerConfigError,
    TLSFiles,
    default_owner,
    read_devices_file,
    write_config,
    write_secret,
)

app = typer.Typer(
    help="Mosquitto for the fleet: per-device passwords, topic ACLs, TLS.",
    no_args_is_help=True,
)


@app.command("secret")
def secret_cmd(
    file: Annotated[Path, typer.Argument(help="Where to write the fleet secret.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing secret.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a new random fleet secret (mode 0600); every board's password and key derive from it."""
    try:
        path = write_secret(file, force=force)
    except BrokerConfigError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"secret_file": str(path.resolve())}))
    else:
        console.print(f"[green]wrote fleet secret {escape(str(path))}[/] (mode 0600)")
        console.print(f"use it with ORRERY_SECRET_FILE={escape(str(path.resolve()))}")


@app.command("config")
def config_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the generated files.")],
    fleet: Annotated[str, typer.Option(help="Fleet id.")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device id (repeatable).")
    ] = None,
    devices_file: Annotated[
        Path | None, typer.Option(help="Device ids, one per line (# comments).")
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(help="Fleet secret (else $ORRERY_SECRET / $ORRERY_SECRET_FILE)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Listener port (default 8883 with TLS, else 1883).")
    ] = None,
    bind: Annotated[str, typer.Option(help="Listen address (default: all interfaces).")] = "",
    companion_user: Annotated[
        str, typer.Option(help="MQTT user of the companion (ingest, orchestrator).")
    ] = COMPANION_USER,
    cafile: Annotated[
        Path | None, typer.Option(help="TLS: CA certificate the boards trust (PEM).")
    ] = None,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS: the broker's certificate, signed by the CA (PEM).")
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(help="TLS: the broker's private key (PEM).")
    ] = None,
    persistence_dir: Annotated[
        Path | None, typer.Option(help="Mosquitto's persistence directory (default OUT_DIR/data).")
    ] = None,
    max_queued: Annotated[
        int, typer.Option(help="Messages queued per client before Mosquitto drops (0 = no limit).")
    ] = 0,
    companion_port: Annotated[
        int | None,
        typer.Option(
            help="Give the companion its own plain listener on this port; board client ids are "
            "then tied to their user names."
        ),
    ] = None,
    companion_bind: Annotated[
        str, typer.Option(help="Address of the companion's listener.")
    ] = "127.0.0.1",
    owner: Annotated[
        str | None,
        typer.Option(
            help="User to own the password file, ACL, TLS copies and persistence directory "
            "(default: mosquitto when run as root; '' leaves them yours)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a Mosquitto config: per-device passwords, per-board topic ACL, persistence, TLS.

    Board user name = device id, password = the one derived from the fleet secret (the deploy
    tool writes it into the board's config). Write it again when devices change and send
    Mosquitto SIGHUP.
    """
    tls_given = [cafile, certfile, keyfile]
    if any(tls_given) and not all(tls_given):
        missing = [
            n
            for n, p in zip(("--cafile", "--certfile", "--keyfile"), tls_given, strict=True)
            if not p
        ]
        fail(f"TLS needs --cafile, --certfile and --keyfile; missing {', '.join(missing)}")
    tls = TLSFiles(cafile, certfile, keyfile) if cafile and certfile and keyfile else None
    try:
        devices = list(device or [])
        if devices_file is not None:
            devices += read_devices_file(devices_file)
        secret = keys.load_secret(secret_file)
        paths = write_config(
            out_dir,
            fleet,
            devices,
            secret,
            port=port,
            companion_user=companion_user,
            tls=tls,
            bind=bind,
            persistence_dir=persistence_dir,
            max_queued=max_queued,
            owner=default_owner() if owner is None else owner or None,
            companion_port=companion_port,
            companion_bind=companion_bind,
        )
    except (BrokerConfigError, keys.SecretError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({name: str(path) for name, path in paths.items()}))
        return
    console.print(
        f"[green]Mosquitto config for fleet {escape(fleet)}[/]: {len(devices)} device(s), "
        f"{'TLS' if tls else 'plain MQTT (no TLS)'}"
    )
    for name, path in paths.items():
        console.print(f"  {name:<24} {escape(str(path))}")
    console.print(f"run:       mosquitto -c {escape(str(paths['config']))}")
    console.print("reload:    kill -HUP <mosquitto pid>  (after writing it again for new devices)")
    console.print(
        f"companion: orrery serve --username {escape(companion_user)} --password-file "
        f"{escape(str(paths['companion_password_file']))}"
        + (f" --port {companion_port}" if companion_port else "")
    )
    if not (default_owner() if owner is None else owner):
        console.print(
            "[yellow]note:[/] if mosquitto runs as another user, give it the password file, "
            "the ACL, tls/ and the persistence directory (e.g. `chown mosquitto:mosquitto`)"
        )
