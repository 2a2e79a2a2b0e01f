"""Board profiles (``hw/boards/*.json``): load them by name and check them against the hardware.

The firmware checks what it needs at boot (``firmware/profile.py``: channel and output
kinds, pins in range). This module adds what only the host can know, so a mistake is caught
on the bench rather than on a board that does not sample:

- every pin used is a GPIO the module exposes; ADC inputs are on ADC1 (ADC2 is unusable while
  Wi-Fi is on), outputs and the I2C bus are not on input-only pins; no pin serves twice; a
  pin reserved for the console, USB or flash is not used;
- ADC attenuation is one the ESP32 supports; the I2C bus has a valid frequency;
- the partition layout is the one MicroPython's ESP32 port uses: 4 KiB-aligned entries (apps
  64 KiB-aligned) that do not overlap, fit the flash, and a ``vfs`` data partition equal to
  ``vfs_offset``/``vfs_size``, which is where the filesystem (LittleFS, 4 KiB blocks) lives.

``check(profile)`` returns ``(errors, warnings)``: strings naming the key at fault.
Warnings are legal but worth a look (an output on a strapping pin can upset booting).
``python -m tools.board.profiles`` checks every profile in ``hw/boards``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from firmware.profile import parse_profile

REPO = Path(__file__).resolve().parents[2]
BOARDS = REPO / "hw" / "boards"
DEFAULT = "esp32-devkitc"  # the board a command assumes when none is named

CHIPS = ("esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6")
FLASH_SIZES = {"2MB": 2 << 20, "4MB": 4 << 20, "8MB": 8 << 20, "16MB": 16 << 20, "32MB": 32 << 20}
#: the second-stage bootloader's flash offset, per chip (ESP-IDF's default)
BOOTLOADER_OFFSET = {"esp32": 0x1000, "esp32s2": 0x1000}
ATTENUATIONS = ("0db", "2_5db", "6db", "11db")
#: keys the firmware reads from /boards/<name>.json; the rest is for the host only
DEVICE_KEYS = ("name", "chip", "channels", "i2c", "outputs", "safe_mode_pin")

PART_TYPES = {"app": ("factory", "ota_0", "ota_1", "test"), "data": ("nvs", "phy", "fat", "ota")}


class ProfileError(ValueError):
    """A profile that cannot be loaded or is not valid; the message lists every problem."""


def known() -> list[str]:
    """Names of the profiles in ``hw/boards``."""
    return sorted(p.stem for p in BOARDS.glob("*.json"))


def load(name_or_path: str | Path) -> dict[str, Any]:
    """A profile by name (``hw/boards/NAME.json``) or by path, checked; ProfileError if bad."""
    path = Path(name_or_path)
    if not path.exists():
        path = BOARDS / f"{name_or_path}.json"
    if not path.exists():
        raise ProfileError(
            f"board profile {str(name_or_path)!r} not found (known: {', '.join(known())})"
        )
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from None
    errors, _ = check(profile)
    if errors:
        raise ProfileError(f"{path}: " + "; ".join(errors))
    return profile


def device_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The part of ``profile`` the firmware reads (written to the board as /boards/NAME.json)."""
    return {k: profile[k] for k in DEVICE_KEYS if k in profile}


def bootloader_offset(chip: str) -> int:
    """Where the second-stage bootloader goes in flash for ``chip``."""
    return BOOTLOADER_OFFSET.get(chip, 0x0)


def flash_bytes(profile: dict[str, Any]) -> int:
    """The flash size in bytes."""
    return FLASH_SIZES[profile["flash_size"]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_pins(p: dict[str, Any], errors: list[str], warnings: list[str]) -> None:
    pins = p.get("pins")
    if not isinstance(pins, dict):
        errors.append("pins: required, an object with gpio, input_only, adc1, strapping")
        return
    lists: dict[str, set[int]] = {}
    for key in ("gpio", "input_only", "adc1", "strapping"):
        v = pins.get(key)
        if not isinstance(v, list) or not all(_is_int(x) and 0 <= x <= 63 for x in v):
            errors.append(f"pins.{key}: must be a list of GPIO numbers 0..63")
            return
        lists[key] = set(v)
    for key in ("input_only", "adc1", "strapping"):
        extra = sorted(lists[key] - lists["gpio"])
        if extra:
            errors.append(f"pins.{key}: {extra} not in pins.gpio")
    reserved_raw = pins.get("reserved", {})
    if not isinstance(reserved_raw, dict) or not all(
        isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in reserved_raw.items()
    ):
        errors.append('pins.reserved: must map "GPIO number" to what it is used for')
        reserved_raw = {}
    reserved = {int(k): v for k, v in reserved_raw.items()}
    gpio, adc1 = lists["gpio"], lists["adc1"]
    input_only, strapping = lists["input_only"], lists["strapping"]

    users: dict[int, str] = {}

    def use(pin: Any, who: str, *, output: bool = False, adc: bool = False) -> None:
        if not _is_int(pin):
            return  # the firmware's own check reports it
        if pin not in gpio:
            errors.append(f"{who}: GPIO{pin} is not a usable pin of this module")
            return
        if pin in reserved:
            errors.append(f"{who}: GPIO{pin} is reserved ({reserved[pin]})")
        if pin in users:
            errors.append(f"{who}: GPIO{pin} is already used by {users[pin]}")
        users[pin] = who
        if output and pin in input_only:
            errors.append(f"{who}: GPIO{pin} is input-only")
        if adc and pin not in adc1:
            errors.append(f"{who}: GPIO{pin} is not an ADC1 pin (ADC2 stops working with Wi-Fi on)")
        if output and pin in strapping:
            warnings.append(f"{who}: GPIO{pin} is a strapping pin; keep it floating at reset")

    i2c_used = False
    for name, spec in sorted((p.get("channels") or {}).items()):
        if not isinstance(spec, dict):
            continue
        if spec.get("kind") == "adc":
            use(spec.get("pin"), f"channels.{name}", adc=True)
            if spec.get("atten") not in ATTENUATIONS:
                errors.append(f"channels.{name}.atten: must be one of {', '.join(ATTENUATIONS)}")
        elif spec.get("kind") == "i2c":
            i2c_used = True
    bus = p.get("i2c")
    if isinstance(bus, dict):
        if i2c_used or bus:
            use(bus.get("scl"), "i2c.scl", output=True)
            use(bus.get("sda"), "i2c.sda", output=True)
        freq = bus.get("freq", 100000)
        if not _is_int(freq) or not 10_000 <= freq <= 1_000_000:
            errors.append("i2c.freq: must be an int in 10000..1000000 Hz")
    for name, spec in sorted((p.get("outputs") or {}).items()):
        if isinstance(spec, dict):
            use(spec.get("pin"), f"outputs.{name}", output=True)
    pin = p.get("safe_mode_pin")
    if _is_int(pin):
        if pin not in gpio:
            errors.append(f"safe_mode_pin: GPIO{pin} is not a usable pin of this module")
        elif pin in users:
            errors.append(f"safe_mode_pin: GPIO{pin} is already used by {users[pin]}")


def _check_partitions(p: dict[str, Any], errors: list[str]) -> None:
    parts = p.get("partitions")
    size = FLASH_SIZES.get(p.get("flash_size", ""))
    if size is None:
        errors.append(f"flash_size: must be one of {', '.join(FLASH_SIZES)}")
    if not isinstance(parts, dict):
        errors.append("partitions: required, an object")
        return
    for key in ("vfs_offset", "vfs_size", "block_size", "table_offset", "bootloader_offset"):
        if not _is_int(parts.get(key)) or parts[key] < 0:
            errors.append(f"partitions.{key}: required, a non-negative int")
            return
    if parts["block_size"] != 4096:
        errors.append("partitions.block_size: MicroPython's ESP32 port uses 4096-byte blocks")
    chip = p.get("chip")
    if isinstance(chip, str) and parts["bootloader_offset"] != bootloader_offset(chip):
        errors.append(
            f"partitions.bootloader_offset: the {chip} bootloader goes at "
            f"{bootloader_offset(chip):#x}, not {parts['bootloader_offset']:#x}"
        )
    entries = parts.get("entries")
    if not isinstance(entries, list) or not entries:
        errors.append("partitions.entries: required, a non-empty list")
        return
    spans: list[tuple[int, int, str]] = []
    vfs = None
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"partitions.entries[{i}]"
        if not isinstance(e, dict):
            errors.append(f"{where}: must be an object")
            continue
        name, typ, sub, off, length = (
            e.get("name"),
            e.get("type"),
            e.get("subtype"),
            e.get("offset"),
            e.get("size"),
        )
        if not isinstance(name, str) or not 0 < len(name) <= 16 or name in names:
            errors.append(f"{where}.name: 1..16 chars, unique")
            continue
        names.add(name)
        where = f"partitions.{name}"
        if typ not in PART_TYPES or sub not in PART_TYPES[typ]:
            errors.append(f"{where}: unknown type/subtype {typ}/{sub}")
        if not (_is_int(off) and _is_int(length)) or length <= 0:
            errors.append(f"{where}: offset and size must be ints, size > 0")
            continue
        align = 0x10000 if typ == "app" else 0x1000
        if off % align or length % 0x1000:
            errors.append(f"{where}: offset must be {align:#x}-aligned, size 0x1000-aligned")
        if off < parts["table_offset"] + 0x1000:
            errors.append(f"{where}: starts inside the partition table")
        if size is not None and off + length > size:
            errors.append(f"{where}: ends at {off + length:#x}, past the {size:#x}-byte flash")
        spans.append((off, off + length, name))
        if name == "vfs":
            vfs = e
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            errors.append(f"partitions: {a} and {b} overlap")
    if not any(isinstance(e, dict) and e.get("type") == "app" for e in entries):
        errors.append("partitions: no app partition for the firmware")
    if vfs is None:
        errors.append("partitions: no 'vfs' partition (MicroPython mounts its filesystem there)")
    elif (vfs.get("offset"), vfs.get("size")) != (parts["vfs_offset"], parts["vfs_size"]):
        errors.append("partitions: vfs_offset/vfs_size differ from the 'vfs' entry")


def check(profile: Any) -> tuple[list[str], list[str]]:
    """All problems with ``profile``: ``(errors, warnings)``."""
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(profile, dict):
        return ["profile: must be an object"], []
    for key, kind in (("name", str), ("description", str), ("chip", str), ("flash_size", str)):
        if not isinstance(profile.get(key), kind):
            errors.append(f"{key}: required, a string")
    if isinstance(profile.get("chip"), str) and profile["chip"] not in CHIPS:
        errors.append(f"chip: must be one of {', '.join(CHIPS)}")
    try:
        parse_profile(profile)
    except ValueError as exc:
        errors.append(str(exc))
    _check_pins(profile, errors, warnings)
    _check_partitions(profile, errors)
    return errors, warnings


def main(argv: list[str] | None = None) -> int:
    """Check the named profiles (default: all in hw/boards); exit 1 on any error."""
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or sorted(
        BOARDS.glob("*.json")
    )
    bad = 0
    for path in paths:
        try:
            errors, warnings = check(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            errors, warnings = [str(exc)], []
        for w in warnings:
            print(f"{path}: warning: {w}")
        for e in errors:
            print(f"{path}: error: {e}")
        bad += bool(errors)
        if not errors:
            print(f"{path}: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
