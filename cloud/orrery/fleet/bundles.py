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

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import BUNDLES, DEVICES
from cloud.orrery.fleet.registry import RegistryError
from tools.board.bundle import MANIFEST_KEYS


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
        sa.select(BUNDLES.c.sha256, BUNDLES.c.profile).where(
            BUNDLES.c.name == name, BUNDLES.c.version == version
        )
    ).first()
    if row is not None:
        if row.sha256 == digest and row.profile != str(manifest["profile"]):
            # the same .mpy files serve every profile: the profile is what a rollout checks
            raise RegistryError(
                f"{name}@{version} already exists built for profile {row.profile}, this is for "
                f"{manifest['profile']}: versions are immutable, build it under a new --version"
            )
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


def running(conn: Connection) -> dict[str, int]:
    """How many devices report each app version (``devices.fw``: a board reports the version
    of the bundle it runs, ``VERSION`` or ``NAME@VERSION``)."""
    return {
        fw: n
        for fw, n in conn.execute(
            sa.select(DEVICES.c.fw, sa.func.count())
            .where(DEVICES.c.fw.is_not(None))
            .group_by(DEVICES.c.fw)
        )
    }


def summary(row: Row, on: dict[str, int]) -> dict:
    """A registry row as shown by ``bundle list`` and ``bundle show``: without its bytes and
    files, with the number of devices running it (``on``: ``running``)."""
    files = manifest(row).get("files", [])
    return {
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "size": row.size,
        "profile": row.profile,
        "mpy_version": row.mpy_version,
        "source_hash": row.source_hash,
        "files": len(files),
        "created": iso(row.created_ms),
        "created_by": row.created_by,
        "devices": on.get(row.version, 0) + on.get(f"{row.name}@{row.version}", 0),
    }


def versions(conn: Connection) -> list[dict]:
    """Every bundle version in the registry (``summary``), by name, oldest first."""
    on = running(conn)
    cols = [c for c in BUNDLES.c if c.name != "data"]
    rows = conn.execute(sa.select(*cols).order_by(BUNDLES.c.name, BUNDLES.c.id))
    return [summary(r, on) for r in rows]


def diff(a: dict, b: dict) -> dict:
    """What changed from manifest ``a`` to manifest ``b``: files added, removed and changed
    (with their sizes), and the packed size, profile, ``.mpy`` version and source hash where
    they differ (``{"from", "to"}``, else None)."""
    fa = {f["path"]: f for f in a.get("files", [])}
    fb = {f["path"]: f for f in b.get("files", [])}
    changed = [
        {"path": p, "from_size": fa[p]["size"], "to_size": fb[p]["size"]}
        for p in sorted(fa.keys() & fb.keys())
        if fa[p]["sha256"] != fb[p]["sha256"]
    ]

    def change(key: str) -> dict | None:
        return None if a.get(key) == b.get(key) else {"from": a.get(key), "to": b.get(key)}

    return {
        "from": f"{a['name']}@{a['version']}",
        "to": f"{b['name']}@{b['version']}",
        "added": [{"path": p, "size": fb[p]["size"]} for p in sorted(fb.keys() - fa.keys())],
        "removed": [{"path": p, "size": fa[p]["size"]} for p in sorted(fa.keys() - fb.keys())],
        "changed": changed,
        "unchanged": len(fa.keys() & fb.keys()) - len(changed),
        **{k: change(k) for k in ("size", "profile", "mpy_version", "source_hash")},
    }
