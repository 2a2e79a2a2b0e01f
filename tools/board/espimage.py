"""ESP32 flash images: read a MicroPython firmware file, and the ESP-IDF partition table.

A MicroPython ``firmware.bin`` for the ESP32 port is the second-stage bootloader, the
partition table at 0x8000 and the app at 0x10000, merged into one file that is flashed at
the chip's bootloader offset (0x1000 on the ESP32, 0x0 on the S3 and C3). An app-only
``micropython.bin`` (what OTA updates use) is flashed at the factory partition instead.
:func:`inspect` tells which it is, which chip it is for (the image header's chip id), and
checks the bootloader and app images with esptool (magic, segments, checksum, SHA-256).

:func:`synthetic_firmware` builds a structurally valid firmware file (real image headers,
segments, checksums and digests, a real partition table, an app description naming
MicroPython) that runs nothing: the tests use it because no real firmware can be
downloaded on this machine.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esptool.bin_image import ELFSection, LoadFirmwareImage
from esptool.util import FatalError

from tools.board import profiles

TABLE_OFFSET = 0x8000
TABLE_SIZE = 0xC00
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
APP_DESC_MAGIC = 0xABCD5432
IMAGE_MAGIC = 0xE9

#: image-header chip id -> esptool chip name
CHIP_IDS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6"}
CHIP_NAMES = {
    "esp32": "ESP32",
    "esp32s2": "ESP32-S2",
    "esp32s3": "ESP32-S3",
    "esp32c3": "ESP32-C3",
    "esp32c2": "ESP32-C2",
    "esp32c6": "ESP32-C6",
}
TYPES = {"app": 0x00, "data": 0x01}
SUBTYPES = {
    "app": {"factory": 0x00, "ota_0": 0x10, "ota_1": 0x11, "test": 0x20},
    "data": {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "fat": 0x81},
}


class ImageError(ValueError):
    """A file that is not a usable ESP32 firmware image; the message says why."""


@dataclass
class Partition:
    """One partition table entry."""

    name: str
    type: str
    subtype: str
    offset: int
    size: int


@dataclass
class FirmwareInfo:
    """What :func:`inspect` found in a firmware file."""

    chip: str  # esptool name: esp32, esp32s3, esp32c3...
    kind: str  # "merged" (bootloader + table + app) or "app"
    flash_offset: int  # where the file goes in flash
    app_offset: int  # where the app image starts, in the file
    project: str | None = None  # from the app description
    version: str | None = None
    idf: str | None = None
    partitions: list[Partition] = field(default_factory=list)

    @property
    def chip_name(self) -> str:
        """``ESP32-S3``."""
        return CHIP_NAMES.get(self.chip, self.chip.upper())


def chip_name(chip: str) -> str:
    """Display name of an esptool chip name."""
    return CHIP_NAMES.get(chip, chip.upper())


# --- the partition table --------------------------------------------------------------------


def encode_table(parts: list[dict[str, Any]]) -> bytes:
    """ESP-IDF's binary partition table (32-byte entries, an MD5 entry, 0xFF fill)."""
    out = b""
    for p in parts:
        t = TYPES[p["type"]]
        st = SUBTYPES[p["type"]][p["subtype"]]
        label = p["name"].encode()[:16].ljust(16, b"\0")
        out += ENTRY_MAGIC + struct.pack("<BBII", t, st, p["offset"], p["size"]) + label
        out += struct.pack("<I", 0)
    out += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(out).digest()
    return out.ljust(TABLE_SIZE, b"\xff")


def decode_table(data: bytes) -> list[Partition]:
    """Parse a partition table; ImageError if it is missing or its MD5 does not match."""
    parts: list[Partition] = []
    names_t = {v: k for k, v in TYPES.items()}
    for i in range(0, min(len(data), TABLE_SIZE), 32):
        entry = data[i : i + 32]
        if entry[:2] == MD5_MAGIC:
            if entry[16:32] != hashlib.md5(data[:i]).digest():
                raise ImageError("partition table: MD5 does not match its entries")
            return parts
        if entry[:2] != ENTRY_MAGIC:
            break
        t, st, off, size = struct.unpack("<BBII", entry[2:12])
        tname = names_t.get(t, f"{t:#x}")
        sname = {v: k for k, v in SUBTYPES.get(tname, {}).items()}.get(st, f"{st:#x}")
        label = entry[12:28].rstrip(b"\0").decode("ascii", "replace")
        parts.append(Partition(label, tname, sname, off, size))
    if not parts:
        raise ImageError("no partition table (no 0xAA50 entry where the table belongs)")
    return parts


# --- firmware files -------------------------------------------------------------------------


def _load_image(chip: str, data: bytes, what: str) -> Any:
    try:
        image = LoadFirmwareImage(chip, data)
    except (FatalError, struct.error, RuntimeError, KeyError, ValueError) as exc:
        raise ImageError(f"{what}: not a valid {chip_name(chip)} image: {exc}") from None
    if image.checksum != image.calculate_checksum():
        raise ImageError(
            f"{what}: checksum {image.checksum:#04x} should be "
            f"{image.calculate_checksum():#04x}: the file is corrupt"
        )
    if image.append_digest and image.stored_digest != image.calc_digest:
        raise ImageError(f"{what}: SHA-256 digest does not match: the file is corrupt")
    return image


def header_chip(data: bytes, what: str = "image") -> str:
    """The chip an image is built for, from its header's chip id."""
    if len(data) < 24:
        raise ImageError(f"{what}: {len(data)} bytes, too short for an ESP32 image")
    if data[0] != IMAGE_MAGIC:
        raise ImageError(
            f"{what}: not an ESP32 firmware image (first byte {data[0]:#04x}, expected 0xe9)"
        )
    chip_id = struct.unpack_from("<H", data, 12)[0]
    if chip_id not in CHIP_IDS:
        raise ImageError(f"{what}: unknown chip id {chip_id} in the image header")
    return CHIP_IDS[chip_id]


def _app_desc(image: Any) -> dict[str, str] | None:
    for seg in image.segments:
        if len(seg.data) >= 256 and struct.unpack_from("<I", seg.data, 0)[0] == APP_DESC_MAGIC:
            fields = struct.unpack_from("<II8s32s32s16s16s32s", seg.data, 0)

            def s(b: bytes) -> str:
                return b.split(b"\0", 1)[0].decode("utf-8", "replace")

            return {"version": s(fields[3]), "project": s(fields[4]), "idf": s(fields[7])}
    return None


def inspect(data: bytes) -> FirmwareInfo:
    """Identify and check a firmware file; ImageError naming the problem if it is unusable."""
    if not data:
        raise ImageError("the firmware file is empty")
    chip = header_chip(data, "firmware")
    boot_off = profiles.bootloader_offset(chip)
    table_at = TABLE_OFFSET - boot_off
    merged = len(data) > table_at + 2 and data[table_at : table_at + 2] == ENTRY_MAGIC
    if merged:
        _load_image(chip, data[:table_at], "bootloader")
        parts = decode_table(data[table_at : table_at + TABLE_SIZE])
        app = next((p for p in parts if p.type == "app"), None)
        if app is None:
            raise ImageError("partition table has no app partition")
        app_at = app.offset - boot_off
        if len(data) <= app_at:
            raise ImageError(
                f"firmware ends at {len(data):#x}, before the app at {app.offset:#x}: truncated"
            )
        app_chip = header_chip(data[app_at:], "app")
        if app_chip != chip:
            raise ImageError(
                f"bootloader is for {chip_name(chip)} but the app for {chip_name(app_chip)}"
            )
        image = _load_image(chip, data[app_at:], "app")
        info = FirmwareInfo(chip, "merged", boot_off, app_at, partitions=parts)
    else:
        image = _load_image(chip, data, "firmware")
        info = FirmwareInfo(chip, "app", 0x10000, 0)
    desc = _app_desc(image)
    if desc:
        info.project, info.version, info.idf = desc["project"], desc["version"], desc["idf"]
    return info


def check_for(info: FirmwareInfo, chip: str, what: str = "the board") -> None:
    """ImageError naming both chips unless ``info`` is for ``chip``."""
    if info.chip != chip:
        raise ImageError(
            f"wrong chip: the firmware is for {info.chip_name}, {what} is an {chip_name(chip)}"
        )


def read_firmware(path: Path) -> tuple[bytes, FirmwareInfo]:
    """Read and inspect a firmware file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    try:
        return data, inspect(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


# --- a synthetic firmware for tests ---------------------------------------------------------

_IMAGE_CLASSES = {
    "esp32": "ESP32FirmwareImage",
    "esp32s3": "ESP32S3FirmwareImage",
    "esp32c3": "ESP32C3FirmwareImage",
}


def _image(chip: str, segments: list[tuple[int, bytes]], entry: int) -> bytes:
    from esptool import bin_image

    img = getattr(bin_image, _IMAGE_CLASSES[chip])()
    img.entrypoint = entry
    img.flash_mode = 2  # DIO
    img.flash_size_freq = 0x20  # 4MB, 40m
    for addr, data in segments:
        img.segments.append(ELFSection(b".seg%d" % len(img.segments), addr, data, 0))
    out = img.save(None)
    assert out is not None
    return out


def app_description(version: str, project: str = "micropython") -> bytes:
    """An esp_app_desc_t (256 bytes) as ESP-IDF puts at the start of the app's DROM segment."""
    desc = struct.pack(
        "<II8s32s32s16s16s32s32sHHB3s72s",
        APP_DESC_MAGIC,
        0,
        b"",
        version.encode(),
        project.encode(),
        b"00:00:00",
        b"Jan  1 2026",
        b"v5.4.1",
        b"\0" * 32,
        0,
        0,
        0,
        b"",
        b"",
    )
    assert len(desc) == 256
    return desc


def synthetic_firmware(
    chip: str, version: str = "v1.27.0", partitions: list[dict[str, Any]] | None = None
) -> bytes:
    """A merged firmware file laid out as MicroPython's: bootloader, table, app.

    Structurally valid (esptool reads and checks every image); it runs nothing.
    """
    if partitions is None:
        partitions = profiles.load(
            {"esp32": "esp32-devkitc", "esp32s3": "esp32-s3-devkitc-1"}.get(
                chip, "esp32-c3-devkitm-1"
            )
        )["partitions"]["entries"]
    assert partitions is not None
    from esptool.targets import CHIP_DEFS

    rom = CHIP_DEFS[chip]
    boot_off = profiles.bootloader_offset(chip)
    iram = 0x40080000 if chip == "esp32" else 0x40378000 if chip == "esp32s3" else 0x403C8000
    boot = _image(chip, [(iram, b"\x00" * 1024)], iram)
    drom = rom.DROM_MAP_START + 0x20
    app = _image(
        chip,
        [(drom, app_description(version) + b"MicroPython " + version.encode() + b"\0" * 4)],
        iram + 0x400,
    )
    out = bytearray(b"\xff" * (0x10000 - boot_off))
    out[: len(boot)] = boot
    table_at = TABLE_OFFSET - boot_off
    out[table_at : table_at + TABLE_SIZE] = encode_table(partitions)
    return bytes(out) + app
