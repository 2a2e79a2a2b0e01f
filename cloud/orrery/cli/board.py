"""``orrery board …``: flash, deploy, image, provision, monitor and check physical boards.

The work is done in ``tools/`` (flash.py, deploy.py, image.py, provision.py, monitor.py);
these functions parse options, show progress and turn failures into one clear error line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from cloud.orrery.cli.common import (
    DbOpt,
    JsonOpt,
    console,
    err_console,
    fail,
    load_profile,
    open_db,
    output_dir,
    output_file,
    read_json_object,
    read_problem,
    read_text,
)
from cloud.orrery.fleet import keys
from tools.board import profiles

app = typer.Typer(
    help="Physical boards: flash MicroPython, deploy the app, factory images, provisioning.",
    no_args_is_help=True,
)

PortOpt = Annotated[
    str,
    typer.Option("--port", "-p", help="Serial port (/dev/ttyUSB0, COM3) or socket://HOST:PORT."),
]


@app.command("flash")
def board_flash(
    port: PortOpt,
    firmware: Annotated[
        Path, typer.Option("--firmware", "-f", help="MicroPython firmware (.bin) for the chip.")
    ],
    chip: Annotated[str, typer.Option(help="auto, esp32, esp32s3, esp32c3...")] = "auto",
    erase: Annotated[bool, typer.Option("--erase", help="Erase the whole flash first.")] = False,
    baud: Annotated[int, typer.Option(help="Baud rate for writing.")] = 460800,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the file, print the esptool command.")
    ] = False,
) -> None:
    """Flash MicroPython with esptool: the image is checked against the chip before writing."""
    from tools.board import flash, serialport

    try:
        plan = flash.plan(port, firmware, chip, erase, baud)
        desc = f"{plan.info.project or 'firmware'} {plan.info.version or ''}".strip()
        console.print(
            f"{escape(str(firmware))}: {desc} for {plan.info.chip_name} "
            f"({plan.info.kind}), at {plan.address:#x}"
        )
        if dry_run:
            console.print("esptool " + " ".join(plan.esptool_args()))
            return
        name = flash.flash(plan, progress=lambda s: console.print(f"  {escape(s)}"))
    except (flash.FlashError, serialport.PortError) as exc:
        fail(str(exc))
    console.print(f"[green]flashed {name} on {escape(port)}[/]")


@app.command("deploy")
def board_deploy(
    port: PortOpt,
    device_id: Annotated[str, typer.Option("--device-id", "-d", help="The board's device id.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Device config (JSON). Without hmac_key, the key and MQTT credentials are "
            "derived from the fleet secret. Default: keep the board's config.",
        ),
    ] = None,
    board: Annotated[
        str | None, typer.Option(help="Board profile (default: the config's 'board').")
    ] = None,
    lib_dir: Annotated[
        Path | None,
        typer.Option(help="Copy this directory into /lib (e.g. micropython-lib's umqtt)."),
    ] = None,
    mip_index: Annotated[
        str | None, typer.Option(help="mip index: URL or local mirror (default micropython.org).")
    ] = None,
    no_lib: Annotated[bool, typer.Option("--no-lib", help="Skip the MQTT library.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Copy every file again.")] = False,
    no_reset: Annotated[bool, typer.Option("--no-reset", help="Do not reset afterwards.")] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the birth message (0: don't wait).")
    ] = 60.0,
    mqtt_host: Annotated[
        str | None, typer.Option(help="Broker host as this machine reaches it.")
    ] = None,
    mqtt_user: Annotated[str | None, typer.Option(help="Broker user to watch with.")] = None,
    mqtt_password_file: Annotated[
        Path | None, typer.Option(help="File with that user's password.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be copied as mpremote commands.")
    ] = False,
    baud: Annotated[int, typer.Option(help="Serial baud rate.")] = 115200,
) -> None:
    """Compile and copy the app (only changed files), the MQTT library and the config; reset;
    wait for the board's birth message when a broker is configured."""
    from tools.board import deploy, serialport

    cfg = read_json_object(config, "--config") if config else None
    profile = load_profile(board)
    if lib_dir is not None and not lib_dir.is_dir():
        fail(
            f"--lib-dir {lib_dir}: "
            + ("not a directory" if lib_dir.exists() else "no such directory")
        )
    password = (
        read_text(mqtt_password_file, "--mqtt-password-file").strip()
        if mqtt_password_file
        else None
    )
    lines: list[str] | None = [] if dry_run else None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("connecting", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=escape(what), completed=done, total=total or None)

        try:
            result = deploy.deploy(
                port,
                device_id,
                config=cfg,
                profile=profile,
                lib_dir=lib_dir,
                mip_index=mip_index,
                lib=None if no_lib else deploy.DEFAULT_LIB,
                force=force,
                reset=False,
                baud=baud,
                progress=progress,
                dry_run=lines,
                credentials=keys.credentials_from_env,
            )
        except (deploy.DeployError, serialport.PortError) as exc:
            fail(str(exc))
    if lines is not None:
        for line in lines:
            console.print(line, markup=False, highlight=False)
        console.print(f"{len(result.copied)} to copy, {len(result.deleted)} to remove")
        return
    console.print(
        f"MicroPython {result.board.version_text} ({escape(result.board.platform)}): "
        f"{len(result.copied)} file(s) copied, {len(result.deleted)} removed, "
        f"{result.unchanged} unchanged; MQTT library: {escape(result.lib)}"
    )
    if no_reset:
        return
    final = cfg or {}
    watch = wait > 0 and final.get("broker")
    if not watch:
        deploy.Board(port, baud).reset()
        console.print("[green]deployed; board reset[/]")
        return
    full = {**final, "device_id": device_id}
    try:
        with deploy.watch_birth(full, mqtt_host, None, mqtt_user, password) as birth:
            deploy.Board(port, baud).reset()
            console.print(f"board reset; waiting up to {wait:.0f} s for its birth message")
            state = birth(wait)
    except deploy.DeployError as exc:
        fail(f"deployed and reset, but {exc}")
    if state is None:
        fail(
            f"deployed and reset, but no birth message within {wait:.0f} s: check the board's "
            "Wi-Fi, and that the broker host in the config is reachable from the board "
            f"(orrery board monitor --port {port})"
        )
    console.print(f"[green]online: fw {escape(str(state.get('fw')))}, boot {state.get('boot')}[/]")


@app.command("image")
def board_image(
    firmware: Annotated[
        Path, typer.Option("--firmware", "-f", help="MicroPython firmware.bin (full).")
    ],
    device_id: Annotated[str, typer.Option("--device-id", "-d", help="The board's device id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Factory image to write.")],
    board: Annotated[str, typer.Option(help="Board profile.")] = profiles.DEFAULT,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Device config (JSON); default: derived, see deploy."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build one flashable image: firmware + LittleFS with the app and this board's config,
    merged with esptool, then verified by reading it back."""
    from tools.board import deploy, espimage, image

    profile = load_profile(board)
    assert profile is not None
    cfg_in = read_json_object(config, "--config") if config else None
    if cfg_in is None:
        fail("--config FILE is required (orrery board provision writes one per board)")
    output_file(output, "-o")
    try:
        cfg = deploy.device_config(cfg_in, device_id, profile["name"], keys.credentials_from_env)
        fw, _info = espimage.read_firmware(firmware)
        files = image.bundle_files(profile, cfg)
        img = image.build(fw, profile, files)
        checked = image.verify(img, profile, files)
    except (deploy.DeployError, espimage.ImageError, image.FactoryImageError) as exc:
        fail(str(exc))
    try:
        output.write_bytes(img)
    except OSError as exc:
        fail(f"-o {output}: {read_problem(exc)}")
    info = {
        "output": str(output),
        "bytes": len(img),
        "chip": checked.chip,
        "micropython": checked.version,
        "files": len(checked.files),
        "flash": f"esptool --chip {checked.chip} write-flash 0x0 {output}",
    }
    if as_json:
        print(json.dumps(info))
        return
    console.print(
        f"[green]{escape(str(output))}[/]: {len(img)} bytes for {espimage.chip_name(checked.chip)}, "
        f"MicroPython {checked.version}, {len(checked.files)} files; verified"
    )
    console.print(f"flash it with: {escape(info['flash'])}")


@app.command("provision")
def board_provision(
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=10000, help="Boards.")],
    prefix: Annotated[str, typer.Option(help="Device id prefix: ids are PREFIX-001...")],
    fleet: Annotated[str, typer.Option(help="Fleet id.")],
    broker_host: Annotated[str, typer.Option(help="Broker host as the boards reach it.")],
    broker_port: Annotated[int, typer.Option(help="Broker port.")] = 1883,
    tls: Annotated[bool, typer.Option(help="Connect with TLS.")] = False,
    board: Annotated[str, typer.Option(help="Board profile.")] = profiles.DEFAULT,
    wifi_ssid: Annotated[str | None, typer.Option(help="Wi-Fi network.")] = None,
    wifi_password: Annotated[str | None, typer.Option(help="Wi-Fi password.")] = None,
    firmware: Annotated[
        Path | None, typer.Option(help="Also write a factory image per board from this firmware.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "provisioned"
    ),
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate device ids, keys and broker credentials; register the boards; write a config
    (and optionally a factory image) per board."""
    from cloud.orrery.fleet.provision import provision as provision_boards
    from tools.board import provision as board_files

    profile = load_profile(board)
    assert profile is not None
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        fail(str(exc))
    broker = {"host": broker_host, "port": broker_port, "tls": tls}
    wifi = None
    if wifi_ssid:
        wifi = {"ssid": wifi_ssid}
        if wifi_password is not None:
            wifi["password"] = wifi_password
    engine = open_db(db_url, create=True)
    output_dir(out, "--out")
    try:
        items = provision_boards(
            engine,
            secret,
            count=count,
            prefix=prefix,
            fleet=fleet,
            profile=profile,
            broker=broker,
            out_dir=out,
            wifi=wifi,
            firmware=firmware,
        )
    except board_files.ProvisionError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "device_id": i.device_id,
                        "config": str(i.path),
                        "image": str(i.image) if i.image else None,
                        "new": i.new,
                    }
                    for i in items
                ]
            )
        )
        return
    table = Table("device", "config", "factory image")
    for i in items:
        table.add_row(i.device_id, str(i.path), str(i.image) if i.image else "-")
    console.print(table)
    console.print(
        f"{len(items)} board(s) registered in fleet {escape(fleet)}; the files hold secrets "
        "(mode 0600). Broker accounts: orrery broker config with these ids."
    )


@app.command("monitor")
def board_monitor(
    port: PortOpt,
    baud: Annotated[int, typer.Option(help="Baud rate.")] = 115200,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-]).")
    ] = None,
) -> None:
    """Serial console: the node's log lines, safe-mode banners and tracebacks highlighted."""
    from tools.board import monitor, serialport

    def show(line: str, style: str | None) -> None:
        if line.endswith(monitor.PARTIAL):
            console.print(escape(line[:-1]), end="", highlight=False)
        elif style:
            console.print(f"[{style}]{escape(line)}[/]", highlight=False)
        else:
            console.print(escape(line), highlight=False)

    try:
        if seconds is None:
            err_console.print(f"[dim]{escape(port)} at {baud} baud; Ctrl-] leaves[/]")
        monitor.monitor(port, baud, seconds, show)
    except serialport.PortError as exc:
        fail(str(exc))


@app.command("profiles")
def check_profiles(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Profiles (default: hw/boards).")
    ] = None,
) -> None:
    """Check board profiles: pins, ADC1, conflicts, partition layout."""
    for f in files or []:
        read_text(f)  # a file that cannot be read is an error, not a report line
    raise typer.Exit(profiles.main([str(f) for f in files or []]))
