"""Factory images: one flashable file per board, for manufacturing.

The image holds the MicroPython firmware (bootloader, partition table and app, as the
firmware file has them) and the ``vfs`` partition already formatted as LittleFS and holding
the app bundle (``.mpy``), the board profile, that board's config and the deploy manifest,
so the board boots straight into the app and a later ``orrery board deploy`` copies only
what changed. The filesystem is built with littlefs-python with the geometry MicroPython's
ESP32 port mounts (``vfs.VfsLfs2`` on ``esp32.Partition``): 4096-byte blocks, one block per
4 KiB of the partition, read/prog size 32, lookahead 32, block_cycles 100, on-disk
version 2.0; esptool's merge-bin lays everything out from flash address 0.

:func:`verify` reads an image back: the firmware header (chip, checksum, SHA-256), the
partition table (MD5, the vfs partition where the profile says), and every file in the
filesystem compared byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from littlefs import LittleFS
from littlefs.errors import LittleFSError

from tools.board import deploy, espimage, profiles

LFS_READ_SIZE = 32
LFS_PROG_SIZE = 32
LFS_LOOKAHEAD = 32
LFS_BLOCK_CYCLES = 100
LFS_DISK_VERSION = 0x00020000  # readable by every littlefs 2.x MicroPython has shipped


class FactoryImageError(ValueError):
    """The image cannot be built, or does not read back as built."""


@dataclass
class Verified:
    """What reading an image back found."""

    chip: str
    version: str | None
    partitions: list[espimage.Partition]
    files: dict[str, int]  # board path -> size


def firmware_mpy_ok(info: espimage.FirmwareInfo) -> None:
    """FactoryImageError if the firmware's MicroPython cannot load our ``.mpy`` files."""
    m = re.match(r"v?(\d+)\.(\d+)", info.version or "")
    if info.project and info.project != "micropython":
        raise FactoryImageError(f"the firmware is {info.project!r}, not MicroPython")
    if m and (int(m.group(1)), int(m.group(2))) < (1, 19):
        raise FactoryImageError(
            f"the firmware is MicroPython {info.version}: it loads .mpy v5, the app is built "
            "as .mpy v6 (MicroPython 1.19 or later)"
        )


def new_fs(profile: dict[str, Any]) -> LittleFS:
    """An empty LittleFS sized for the profile's vfs partition."""
    parts = profile["partitions"]
    block = parts["block_size"]
    return LittleFS(
        block_size=block,
        block_count=parts["vfs_size"] // block,
        read_size=LFS_READ_SIZE,
        prog_size=LFS_PROG_SIZE,
        lookahead_size=LFS_LOOKAHEAD,
        block_cycles=LFS_BLOCK_CYCLES,
        disk_version=LFS_DISK_VERSION,
    )


def bundle_files(profile: dict[str, Any], cfg: dict[str, Any]) -> dict[str, bytes]:
    """Every file the filesystem gets, by board path (what a deploy would write)."""
    with tempfile.TemporaryDirectory(prefix="orrery-image-") as tmp:
        files = {p: f.read_bytes() for p, f in deploy.build_app(Path(tmp), "a").items()}
    files[f"/boards/{profile['name']}.json"] = json.dumps(
        profiles.device_profile(profile), sort_keys=True
    ).encode()
    files["/config.json"] = json.dumps(cfg, sort_keys=True).encode()
    manifest = {
        "version": 1,
        "slot": "a",
        "deployed_ms": int(time.time() * 1000),
        "files": {p: deploy.sha256(d) for p, d in sorted(files.items())},
    }
    files[deploy.MANIFEST] = json.dumps(manifest, sort_keys=True).encode()
    return files


def build_fs(profile: dict[str, Any], files: dict[str, bytes]) -> bytes:
    """The vfs partition's bytes: a LittleFS holding ``files``."""
    fs = new_fs(profile)
    try:
        for path, data in sorted(files.items()):
            rel = path.lstrip("/")
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(rel, "wb") as f:
                f.write(data)
    except LittleFSError as exc:
        raise FactoryImageError(
            f"the files do not fit the {profile['partitions']['vfs_size']}-byte filesystem: {exc}"
        ) from None
    return bytes(fs.context.buffer)


def build(firmware: bytes, profile: dict[str, Any], files: dict[str, bytes]) -> bytes:
    """Merge the firmware and the filesystem into one image that starts at flash address 0."""
    from esptool.cmds import merge_bin

    info = espimage.inspect(firmware)
    espimage.check_for(info, profile["chip"], f"board {profile['name']}")
    firmware_mpy_ok(info)
    parts = profile["partitions"]
    if info.kind == "merged":
        vfs = next((p for p in info.partitions if p.name == "vfs"), None)
        if vfs is None or (vfs.offset, vfs.size) != (parts["vfs_offset"], parts["vfs_size"]):
            where = f"{vfs.offset:#x}+{vfs.size:#x}" if vfs else "nowhere"
            raise FactoryImageError(
                f"the firmware's partition table puts vfs at {where}; board profile "
                f"{profile['name']} says {parts['vfs_offset']:#x}+{parts['vfs_size']:#x}"
            )
        if info.flash_offset + len(firmware) > parts["vfs_offset"]:
            raise FactoryImageError("the firmware runs into the vfs partition")
    else:
        raise FactoryImageError(
            "this is an app-only image; a factory image needs the full firmware "
            "(bootloader + partition table + app, MicroPython's firmware.bin)"
        )
    fs = build_fs(profile, files)
    with contextlib.redirect_stdout(io.StringIO()):  # esptool's notes are not for us
        out = merge_bin(
            [(info.flash_offset, firmware), (parts["vfs_offset"], fs)], profile["chip"], output=None
        )
    assert isinstance(out, bytes)
    return out


def verify(
    image: bytes, profile: dict[str, Any], expect: dict[str, bytes] | None = None
) -> Verified:
    """Read ``image`` back; FactoryImageError on the first thing that is not as it should be."""
    parts = profile["partitions"]
    boot = parts["bootloader_offset"]
    try:
        info = espimage.inspect(image[boot : parts["vfs_offset"]])
        espimage.check_for(info, profile["chip"], f"board {profile['name']}")
    except espimage.ImageError as exc:
        raise FactoryImageError(f"firmware in the image: {exc}") from None
    table = espimage.decode_table(
        image[espimage.TABLE_OFFSET : espimage.TABLE_OFFSET + espimage.TABLE_SIZE]
    )
    vfs = next((p for p in table if p.name == "vfs"), None)
    if vfs is None or (vfs.offset, vfs.size) != (parts["vfs_offset"], parts["vfs_size"]):
        raise FactoryImageError("partition table: no vfs partition where the profile says")
    region = image[vfs.offset : vfs.offset + vfs.size]
    if len(region) != vfs.size:
        raise FactoryImageError(
            f"image ends at {len(image):#x}, inside the vfs partition ({vfs.offset:#x}+"
            f"{vfs.size:#x})"
        )
    fs = new_fs(profile)
    fs.context.buffer[:] = region
    try:
        fs.mount()
    except LittleFSError as exc:
        raise FactoryImageError(f"vfs partition: not a mountable LittleFS: {exc}") from None
    found: dict[str, bytes] = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            rel = f"{root.rstrip('/')}/{name}"
            with fs.open(rel.lstrip("/"), "rb") as f:
                found["/" + rel.lstrip("/")] = f.read()
    if expect is not None:
        missing = sorted(set(expect) - set(found))
        extra = sorted(set(found) - set(expect))
        differ = sorted(p for p in expect if p in found and found[p] != expect[p])
        if missing or extra or differ:
            raise FactoryImageError(
                f"filesystem: missing {missing}, unexpected {extra}, different {differ}"
            )
    return Verified(info.chip, info.version, table, {p: len(d) for p, d in found.items()})
