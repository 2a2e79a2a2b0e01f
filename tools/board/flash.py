"""Flash MicroPython onto a board with esptool's Python API.

Order of checks, each with its own clear error, before anything is written:

1. the firmware file: an ESP32-family image, not corrupt (esptool's image loader: magic,
   segments, checksum, SHA-256; the partition table's MD5 for a full firmware);
2. the port: present, not held by another program;
3. the chip: esptool talks to the ROM bootloader and names the chip; the firmware must be
   built for it (and for ``--chip`` when one is given).

Then: the flasher stub, the requested baud rate, the flash chip, an optional full erase,
write (compressed, verified by esptool's MD5 check), hard reset.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.board import espimage, serialport

ROM_BAUD = 115200


class FlashError(Exception):
    """Flashing cannot go ahead, or failed; the message says why."""


@dataclass
class FlashPlan:
    """What will be written where."""

    port: str
    firmware: Path
    info: espimage.FirmwareInfo
    chip: str | None  # --chip, None for auto
    erase: bool
    baud: int

    @property
    def address(self) -> int:
        """Flash address of the file."""
        return self.info.flash_offset

    def esptool_args(self) -> list[str]:
        """The same operation as an esptool command line (shown to the user, and tested)."""
        args = ["--chip", self.chip or self.info.chip, "--port", self.port, "--baud"]
        args += [str(self.baud), "--before", "default-reset", "--after", "hard-reset"]
        args += ["write-flash"]
        if self.erase:
            args.append("--erase-all")
        args += [f"{self.address:#x}", str(self.firmware)]
        return args


def plan(
    port: str, firmware: Path, chip: str = "auto", erase: bool = False, baud: int = 460800
) -> FlashPlan:
    """Check the firmware file (and ``chip`` against it); FlashError if it can't be flashed."""
    try:
        _, info = espimage.read_firmware(firmware)
    except espimage.ImageError as exc:
        raise FlashError(str(exc)) from None
    want = None if chip == "auto" else chip.lower().replace("-", "")
    if want is not None:
        if want not in espimage.CHIP_NAMES:
            raise FlashError(
                f"--chip {chip}: unknown (known: auto, {', '.join(espimage.CHIP_NAMES)})"
            )
        try:
            espimage.check_for(info, want, f"--chip {chip}")
        except espimage.ImageError as exc:
            raise FlashError(str(exc)) from None
    return FlashPlan(port, firmware, info, want, erase, baud)


def detect(port: str, connect_attempts: int = 7) -> str:
    """The chip on ``port`` (esptool name, e.g. ``esp32s3``), via its ROM bootloader."""
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    serialport.check(port)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            esp = detect_chip(port, ROM_BAUD, connect_attempts=connect_attempts)
    except (FatalError, OSError) as exc:
        raise FlashError(
            f"no ESP32 bootloader answered on {port} ({exc}). Is it an ESP32 board? If it "
            "does not enter the bootloader by itself, hold BOOT, tap EN/RST, release BOOT"
        ) from None
    try:
        return esp.CHIP_NAME.lower().replace("-", "")
    finally:
        esp._port.close()


def flash(
    p: FlashPlan,
    progress: Callable[[str], None] | None = None,
    connect_attempts: int = 7,
) -> str:
    """Flash ``p``; return the chip's name. FlashError on any failure."""
    from esptool.cmds import (
        attach_flash,
        detect_chip,
        erase_flash,
        reset_chip,
        run_stub,
        write_flash,
    )
    from esptool.util import FatalError

    def say(text: str) -> None:
        if progress:
            progress(text)

    serialport.check(p.port)
    say(f"connecting to {p.port}")
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            esp = detect_chip(p.port, ROM_BAUD, connect_attempts=connect_attempts)
    except (FatalError, OSError) as exc:
        raise FlashError(
            f"no ESP32 bootloader answered on {p.port} ({exc}). Hold BOOT, tap EN/RST, "
            "release BOOT, and retry"
        ) from None
    try:
        found = esp.CHIP_NAME.lower().replace("-", "")
        say(f"chip: {esp.CHIP_NAME}")
        try:
            espimage.check_for(p.info, found, f"the board on {p.port}")
        except espimage.ImageError as exc:
            raise FlashError(str(exc)) from None
        if p.chip and p.chip != found:
            raise FlashError(
                f"--chip {p.chip} given, but the board on {p.port} is an {esp.CHIP_NAME}"
            )
        with contextlib.redirect_stdout(log):
            esp = run_stub(esp)
            if p.baud != ROM_BAUD:
                esp.change_baud(p.baud)
            attach_flash(esp)
            if p.erase:
                say("erasing the whole flash")
                erase_flash(esp)
            say(f"writing {p.firmware.name} at {p.address:#x}")
            write_flash(esp, [(p.address, str(p.firmware))])
            reset_chip(esp, "hard-reset")
        say("done; the board is resetting")
        return esp.CHIP_NAME
    except FatalError as exc:
        raise FlashError(f"esptool: {exc}\n{log.getvalue()[-2000:]}") from None
    finally:
        with contextlib.suppress(Exception):
            esp._port.close()
