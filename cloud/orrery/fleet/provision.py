"""Provisioning a batch of boards: new device ids after those registered, their credentials
derived from the fleet secret, their registration, and their files (written by
``tools.board.provision``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import devices, keys
from tools.board import provision as board_files


def existing_ids(engine: sa.Engine, prefix: str) -> list[str]:
    """Device names in the database that start with ``prefix-``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(DEVICES.c.name).where(DEVICES.c.name.like(prefix + "-%")))
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
) -> list[board_files.Provisioned]:
    """Provision ``count`` boards: register them, write ``out_dir/<id>/config.json`` and,
    with ``firmware``, ``out_dir/<id>/factory.bin`` (verified by reading it back).

    Every config is built and checked, and the firmware read, before anything is registered
    or written; raises ``tools.board.provision.ProvisionError``.
    """
    ids = board_files.device_ids(prefix, count, existing_ids(engine, prefix))
    configs = [
        board_files.board_config(
            keys.credentials(secret, d), d, fleet, profile["name"], broker, wifi
        )
        for d in ids
    ]
    fw_bytes = None if firmware is None else board_files.read_firmware(firmware, profile)
    new = set(devices.register(engine, fleet, profile["name"], ids))
    return [
        board_files.write_board(
            board_files.Provisioned(d, cfg, new=d in new), profile, out_dir, fw_bytes
        )
        for d, cfg in zip(ids, configs, strict=True)
    ]
