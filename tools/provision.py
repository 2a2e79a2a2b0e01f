"""Provisioning: device ids, keys and broker credentials for a batch of boards.

Device ids are ``<prefix>-<NNN>`` (zero-padded to the batch's width), continuing after the
highest number the database already has for that prefix, so two batches never collide.
Each board's HMAC command key and MQTT password are derived from the fleet secret
(``cloud/orrery/keys.py``), exactly as the companion derives them, so no per-board secret
is stored anywhere but on the board and in the files written here (mode 0600).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cloud.orrery.fleet import keys
from firmware import config as fwconfig


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
    secret: bytes,
    device_id: str,
    fleet: str,
    board: str,
    broker: dict[str, Any],
    wifi: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The device config of one board, validated with the firmware's own checks."""
    cfg: dict[str, Any] = {
        "device_id": device_id,
        "fleet": fleet,
        "board": board,
        "broker": dict(broker),
        "username": device_id,
        "password": keys.mqtt_password(secret, device_id),
        "hmac_key": keys.device_key(secret, device_id).hex(),
    }
    if wifi:
        cfg["wifi"] = dict(wifi)
    cfg.update(extra or {})
    errors = fwconfig.validate(cfg)
    if errors:
        raise ProvisionError("config: " + "; ".join(errors))
    return cfg


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (it holds a board's secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def register(engine: sa.Engine, fleet: str, profile: str, ids: list[str]) -> list[str]:
    """Insert the devices (insert-or-ignore); return the ids that were new."""
    from cloud.orrery.db.tables import DEVICES as table
    from cloud.orrery.db.tables import insert_ignore

    now = int(time.time() * 1000)
    new = []
    with engine.begin() as conn:
        for name in ids:
            row = {"name": name, "fleet": fleet, "profile": profile, "created_ms": now}
            if conn.execute(insert_ignore(conn, table), [row]).rowcount:
                new.append(name)
    return new


def existing_ids(engine: sa.Engine, prefix: str) -> list[str]:
    """Device names in the database that start with ``prefix-``."""
    from cloud.orrery.db.tables import DEVICES as table

    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.name).where(table.c.name.like(prefix + "-%")))
        return [r[0] for r in rows]


def provision(
    engine: sa.Engine,
    secret: bytes,
    *,
    count: int,
    prefix: str,
    fleet: str,
    profile: dict[str, Any],
    broker: dict[str, Any],
    out_dir: Path,
    wifi: dict[str, str] | None = None,
    firmware: Path | None = None,
) -> list[Provisioned]:
    """Provision ``count`` boards: register them, write ``out_dir/<id>/config.json`` and,
    with ``firmware``, ``out_dir/<id>/factory.bin`` (verified by reading it back)."""
    ids = device_ids(prefix, count, existing_ids(engine, prefix))
    configs = [board_config(secret, d, fleet, profile["name"], broker, wifi) for d in ids]
    fw_bytes = None
    if firmware is not None:
        from tools import espimage

        try:
            fw_bytes, info = espimage.read_firmware(firmware)
            espimage.check_for(info, profile["chip"], f"board {profile['name']}")
        except espimage.ImageError as exc:
            raise ProvisionError(str(exc)) from None
    new = set(register(engine, fleet, profile["name"], ids))
    out: list[Provisioned] = []
    for d, cfg in zip(ids, configs, strict=True):
        item = Provisioned(d, cfg, out_dir / d / "config.json", new=d in new)
        write_private(item.path, json.dumps(cfg, indent=2, sort_keys=True).encode())  # type: ignore[arg-type]
        if fw_bytes is not None:
            from tools import image

            files = image.bundle_files(profile, cfg)
            img = image.build(fw_bytes, profile, files)
            image.verify(img, profile, files)
            item.image = out_dir / d / "factory.bin"
            write_private(item.image, img)
        out.append(item)
    return out
