"""Provisioning's board files: device ids, each board's config and its optional factory image.

Device ids are ``<prefix>-<NNN>`` (zero-padded to the batch's width), continuing after the
highest number already taken for that prefix, so two batches never collide. Each board's HMAC
command key and MQTT password come from the caller (``orrery board provision`` derives them
from the fleet secret), so no per-board secret is stored anywhere but on the board and in the
files written here (mode 0600).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import config as config_checks


class ProvisionError(ValueError):
    """Provisioning cannot go ahead; the message says why."""


@dataclass
class Provisioned:
    """One provisioned board."""

    device_id: str
    config: dict[str, Any]
    path: Path | None = None
    image: Path | None = None
    new: bool = True


def device_ids(prefix: str, count: int, existing: list[str]) -> list[str]:
    """``count`` new ids ``prefix-NNN`` after the highest existing number for ``prefix``."""
    if not re.fullmatch(r"[A-Za-z0-9_.]{1,40}(-[A-Za-z0-9_.]+)*", prefix):
        raise ProvisionError(f"--prefix {prefix!r}: use letters, digits, '_', '.', '-'")
    if not 1 <= count <= 10000:
        raise ProvisionError(f"--count {count}: must be 1..10000")
    pat = re.compile(re.escape(prefix) + r"-(\d+)$")
    highest = max((int(m.group(1)) for e in existing if (m := pat.match(e))), default=0)
    width = max(3, len(str(highest + count)))
    return [f"{prefix}-{n:0{width}d}" for n in range(highest + 1, highest + count + 1)]


def board_config(
    credentials: dict[str, str],
    device_id: str,
    fleet: str,
    board: str,
    broker: dict[str, Any],
    wifi: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The device config of one board, validated with the firmware's own checks.

    ``credentials`` holds the board's ``hmac_key`` (hex), MQTT ``username`` and ``password``.
    """
    cfg: dict[str, Any] = {
        "device_id": device_id,
        "fleet": fleet,
        "board": board,
        "broker": dict(broker),
        "username": credentials["username"],
        "password": credentials["password"],
        "hmac_key": credentials["hmac_key"],
    }
    if wifi:
        cfg["wifi"] = dict(wifi)
    cfg.update(extra or {})
    errors = config_checks.validate(cfg)
    if errors:
        raise ProvisionError("config: " + "; ".join(errors))
    return cfg


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (it holds a board's secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_firmware(firmware: Path, profile: dict[str, Any]) -> bytes:
    """The MicroPython firmware for factory images, checked against the profile's chip."""
    from tools.board import espimage

    try:
        fw_bytes, info = espimage.read_firmware(firmware)
        espimage.check_for(info, profile["chip"], f"board {profile['name']}")
    except espimage.ImageError as exc:
        raise ProvisionError(str(exc)) from None
    return fw_bytes


def write_board(
    item: Provisioned, profile: dict[str, Any], out_dir: Path, fw_bytes: bytes | None = None
) -> Provisioned:
    """Write ``out_dir/<id>/config.json`` and, with ``fw_bytes``, ``out_dir/<id>/factory.bin``
    (verified by reading it back); return ``item`` with their paths."""
    item.path = out_dir / item.device_id / "config.json"
    write_private(item.path, json.dumps(item.config, indent=2, sort_keys=True).encode())
    if fw_bytes is not None:
        from tools.board import image

        files = image.bundle_files(profile, item.config)
        img = image.build(fw_bytes, profile, files)
        image.verify(img, profile, files)
        item.image = out_dir / item.device_id / "factory.bin"
        write_private(item.image, img)
    return item
