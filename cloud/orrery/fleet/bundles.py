"""The app bundle registry: immutable versions of the board's app, as the board receives them.

A version is the packed bundle (``shared.bundle.pack``: the ``.mpy`` files ``board deploy``
copies) with its manifest: files with their sha256 and size, the ``.mpy`` version, the board
profile it was built for and the hash of the sources. Pushing the same bytes again is a no-op;
other bytes under an existing name and version are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from cloud.orrery.db.tables import BUNDLES
from cloud.orrery.fleet.registry import RegistryError

# the manifest keys every bundle carries (``tools.board.bundle`` writes them)
MANIFEST_KEYS = ("name", "version", "profile", "mpy_version", "source_hash", "files")


@dataclass
class Pushed:
    """The outcome of a push."""

    name: str
    version: str
    sha256: str
    size: int
    created: bool


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` (its newest version) or ``NAME@VERSION``."""
    name, _, ver = ref.partition("@")
    if not name or (ref.endswith("@") and not ver):
        raise RegistryError(f"{ref!r}: expected NAME or NAME@VERSION (e.g. app@1.2.0)")
    return name, ver or None


def push(
    conn: Connection, data: bytes, manifest: dict, now_ms: int, by: str | None = None
) -> Pushed:
    """Store a bundle version; RegistryError if the manifest lacks a key or the version exists
    with other bytes."""
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise RegistryError(f"bundle manifest lacks {', '.join(missing)}")
    name, version = str(manifest["name"]), str(manifest["version"])
    digest = hashlib.sha256(data).hexdigest()
    row = conn.execute(
        sa.select(BUNDLES.c.sha256).where(BUNDLES.c.name == name, BUNDLES.c.version == version)
    ).first()
    if row is not None:
        if row.sha256 == digest:
            return Pushed(name, version, digest, len(data), False)
        raise RegistryError(
            f"{name}@{version} already exists with other content (sha256 {row.sha256[:12]}…, "
            f"this is {digest[:12]}…): versions are immutable, build it under a new --version"
        )
    conn.execute(
        sa.insert(BUNDLES),
        [
            {
                "name": name,
                "version": version,
                "sha256": digest,
                "size": len(data),
                "profile": str(manifest["profile"]),
                "mpy_version": str(manifest["mpy_version"]),
                "source_hash": str(manifest["source_hash"]),
                "manifest": json.dumps(manifest, sort_keys=True),
                "data": data,
                "created_ms": now_ms,
                "created_by": by,
            }
        ],
    )
    return Pushed(name, version, digest, len(data), True)


def get(conn: Connection, ref: str, with_data: bool = True) -> Row:
    """The bundle row for ``NAME@VERSION`` (or the newest of ``NAME``); RegistryError if absent.

    Without ``with_data`` the row has no ``data`` column (a listing need not read the bytes).
    """
    name, ver = parse_ref(ref)
    cols = list(BUNDLES.c) if with_data else [c for c in BUNDLES.c if c.name != "data"]
    q = sa.select(*cols).where(BUNDLES.c.name == name)
    q = q.where(BUNDLES.c.version == ver) if ver is not None else q.order_by(BUNDLES.c.id.desc())
    row = conn.execute(q.limit(1)).first()
    if row is None:
        known = [
            f"{n}@{v}"
            for n, v in conn.execute(
                sa.select(BUNDLES.c.name, BUNDLES.c.version)
                .where(BUNDLES.c.name == name)
                .order_by(BUNDLES.c.id)
            )
        ]
        raise RegistryError(
            f"no bundle {ref!r} in the registry"
            + (
                f" (known: {', '.join(known)})"
                if known
                else " (build and push one: orrery bundle build)"
            )
        )
    return row


def manifest(row: Row) -> dict:
    """The manifest of a registry row."""
    return json.loads(row.manifest)


def incompatible(bundle: Row, devices: list[Row]) -> dict[str, str]:
    """Why each of ``devices`` (rows with ``name``, ``profile`` and ``mpy``) cannot run
    ``bundle``, by device name; empty when all can. A board whose profile or ``.mpy`` version
    is unknown cannot be shown to match, so it is refused too. ``.mpy`` versions are
    ``"MAJOR.SUB"`` (``sys.implementation._mpy & 0xFF`` and ``>> 8 & 3``); a board loads
    bytecode of its own major version, the rule ``board deploy`` applies."""
    out: dict[str, str] = {}
    for d in devices:
        if d.profile != bundle.profile:
            out[d.name] = f"profile {d.profile or 'unknown'}, bundle built for {bundle.profile}"
        elif not d.mpy or d.mpy.split(".")[0] != bundle.mpy_version.split(".")[0]:
            out[d.name] = (
                f".mpy version {d.mpy or 'not reported yet'}, bundle compiled for "
                f"{bundle.mpy_version}"
            )
    return out
