"""Flashing: the esptool call built from a firmware file, and every error path, for real.

No board is attached here. The port errors are real (a missing device, a pty held open
exclusively); "no bootloader" is esptool failing to sync on a silent pty; the wrong-chip
check runs esptool's real chip detection against a pty that answers as an ESP32's ROM
bootloader does (SYNC, an unsupported GET_SECURITY_INFO, the chip-magic register), so
esptool names the chip and the firmware is refused before anything is written.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest

from tools.board import espimage, flash, serialport

ESP32_MAGIC = 0x00F01D83  # esptool's ESP32ROM.MAGIC_VALUE, read at 0x40001000


@pytest.fixture(scope="module")
def firmwares(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fw")
    out = {}
    for chip in ("esp32", "esp32s3", "esp32c3"):
        out[chip] = d / f"{chip}.bin"
        out[chip].write_bytes(espimage.synthetic_firmware(chip))
    return out


@pytest.mark.parametrize(
    "chip, addr", [("esp32", "0x1000"), ("esp32s3", "0x0"), ("esp32c3", "0x0")]
)
def test_esptool_call_for_each_chip(firmwares, chip, addr):
    p = flash.plan("/dev/ttyUSB0", firmwares[chip], baud=921600)
    assert p.info.chip == chip and p.info.kind == "merged"
    assert p.esptool_args() == [
        "--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "921600",
        "--before", "default-reset", "--after", "hard-reset",
        "write-flash", addr, str(firmwares[chip]),
    ]  # fmt: skip


def test_erase_and_app_only_image(firmwares, tmp_path):
    p = flash.plan("/dev/ttyUSB0", firmwares["esp32"], erase=True)
    assert p.esptool_args()[-4:] == ["write-flash", "--erase-all", "0x1000", str(p.firmware)]
    app = tmp_path / "app.bin"  # an OTA app image goes to the factory partition
    app.write_bytes(firmwares["esp32"].read_bytes()[0x10000 - 0x1000 :])
    p = flash.plan("/dev/ttyUSB0", app)
    assert p.info.kind == "app" and p.address == 0x10000


def test_image_info_of_the_synthetic_firmware(firmwares):
    info = espimage.inspect(firmwares["esp32s3"].read_bytes())
    assert (info.project, info.version) == ("micropython", "v1.27.0")
    assert [x.name for x in info.partitions] == ["nvs", "phy_init", "factory", "vfs"]


def test_corrupt_image(firmwares, tmp_path):
    data = bytearray(firmwares["esp32"].read_bytes())
    data[-100] ^= 0xFF  # a flipped bit in the app
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    with pytest.raises(flash.FlashError, match="corrupt"):
        flash.plan("/dev/ttyUSB0", bad)


def test_truncated_image(firmwares, tmp_path):
    bad = tmp_path / "short.bin"
    bad.write_bytes(firmwares["esp32"].read_bytes()[:0x9000])
    with pytest.raises(flash.FlashError, match="truncated"):
        flash.plan("/dev/ttyUSB0", bad)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"PK\x03\x04" + b"\0" * 200, "not an ESP32 firmware image .first byte 0x50"),
        (b"", "empty"),
        (b"\xe9\x01", "too short"),
    ],
)
def test_foreign_image(tmp_path, data, message):
    f = tmp_path / "foreign.bin"
    f.write_bytes(data)
    with pytest.raises(flash.FlashError, match=message):
        flash.plan("/dev/ttyUSB0", f)


def test_missing_file(tmp_path):
    with pytest.raises(flash.FlashError, match="No such file"):
        flash.plan("/dev/ttyUSB0", tmp_path / "nope.bin")


def test_chip_option_against_the_image(firmwares):
    with pytest.raises(
        flash.FlashError, match="firmware is for ESP32-S3, --chip esp32 is an ESP32"
    ):
        flash.plan("/dev/ttyUSB0", firmwares["esp32s3"], chip="esp32")
    with pytest.raises(flash.FlashError, match="unknown"):
        flash.plan("/dev/ttyUSB0", firmwares["esp32"], chip="esp8266")


def test_no_port(firmwares):
    p = flash.plan("/dev/ttyORRERY9", firmwares["esp32"])
    with pytest.raises(serialport.PortError, match="no such port: /dev/ttyORRERY9"):
        flash.flash(p)


def test_busy_port(firmwares):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    held = serialport.open_port(name)  # another program has it
    try:
        p = flash.plan(name, firmwares["esp32"])
        with pytest.raises(serialport.PortError, match=f"port {name} is busy"):
            flash.flash(p)
    finally:
        held.close()
        os.close(master)
        os.close(slave)


def test_silent_port_is_no_bootloader(firmwares):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        p = flash.plan(name, firmwares["esp32"])
        with pytest.raises(flash.FlashError, match=f"no ESP32 bootloader answered on {name}"):
            flash.flash(p, connect_attempts=1)
    finally:
        os.close(master)
        os.close(slave)


class RomBootloader(threading.Thread):
    """Answers on a pty as an ESP32's ROM bootloader answers esptool's chip detection."""

    def __init__(self, fd: int, magic: int):
        super().__init__(daemon=True)
        self.fd, self.magic, self.done = fd, magic, False

    def send(self, op: int, val: int, data: bytes) -> None:
        pkt = struct.pack("<BBHI", 1, op, len(data), val) + data
        pkt = pkt.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
        os.write(self.fd, b"\xc0" + pkt + b"\xc0")

    def run(self) -> None:
        buf = b""
        while not self.done:
            try:
                buf += os.read(self.fd, 4096)
            except OSError:
                return
            while buf.count(b"\xc0") >= 2:
                start = buf.index(b"\xc0")
                end = buf.index(b"\xc0", start + 1)
                frame, buf = buf[start + 1 : end], buf[end + 1 :]
                if len(frame) < 8:
                    buf = b"\xc0" + buf
                    continue
                frame = frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
                op = frame[1]
                if op == 0x08:  # SYNC: the ROM answers eight times
                    for _ in range(8):
                        self.send(op, 0x20120707, b"\0\0")
                elif op == 0x0A:  # READ_REG
                    addr = struct.unpack_from("<I", frame, 8)[0]
                    self.send(op, self.magic if addr == 0x40001000 else 0, b"\0\0")
                else:  # GET_SECURITY_INFO and the rest: "invalid message", as the ESP32 ROM
                    self.send(op, 0, b"\x01\x05")


def test_wrong_chip_is_refused_naming_both(firmwares):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    rom = RomBootloader(master, ESP32_MAGIC)
    rom.start()
    try:
        assert flash.detect(name, connect_attempts=1) == "esp32"
        p = flash.plan(name, firmwares["esp32s3"])
        with pytest.raises(
            flash.FlashError,
            match=f"wrong chip: the firmware is for ESP32-S3, the board on {name} is an ESP32",
        ):
            flash.flash(p, connect_attempts=1)
    finally:
        rom.done = True
        os.close(slave)
        os.close(master)
