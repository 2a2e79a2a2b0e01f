"""App bundle files: the content of an app slot, compiled by mpy-cross and packed, with its
manifest, in one file that ``orrery bundle push`` stores in the registry.

A bundle file is ``b"ORBF"``, a u32 (little-endian) manifest length, the manifest (JSON, sorted
keys), then the packed app (``shared.bundle.pack``): the bytes a board downloads and unpacks
into its inactive A/B slot (``firmware/bundle.py``). The packed app holds exactly what ``board
deploy`` copies into a slot (``/app_<slot>/firmware/*.mpy`` and ``shared/*.mpy``), by path
inside the slot; ``/boot.py`` and ``/main.py`` live at the root, outside the slots, and are not
part of it. The same sources compiled by the same mpy-cross give byte-identical packed apps;
the manifest differs only in its ``built`` time (fixed by ``SOURCE_DATE_EPOCH``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import bundle as packing
from tools.board import build, profiles

REPO = build.REPO
OUT_DIR = REPO / "build" / "bundles"
MAGIC = b"ORBF"
FORMAT = 1
DEFAULT_NAME = "app"
#: the manifest keys every bundle carries (the registry refuses a manifest without one)
MANIFEST_KEYS = ("name", "version", "profile", "mpy_version", "source_hash", "files")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_HEAD = struct.Struct("<4sI")


class BundleError(ValueError):
    """A bundle that cannot be built, or a file that is not a sound bundle; the message says why."""


@dataclass
class Built:
    """A bundle: its manifest and the packed app."""

    manifest: dict[str, Any]
    data: bytes

    def encode(self) -> bytes:
        """The bundle file's bytes."""
        head = json.dumps(self.manifest, sort_keys=True, separators=(",", ":")).encode()
        return _HEAD.pack(MAGIC, len(head)) + head + self.data

    @property
    def ref(self) -> str:
        """``NAME@VERSION``."""
        return f"{self.manifest['name']}@{self.manifest['version']}"


def source_hash(repo: Path = REPO) -> str:
    """sha256 over the board's sources (``shared/`` and ``firmware/``): each file's path
    relative to the repository, its length and its bytes, in ``board_sources`` order."""
    h = hashlib.sha256()
    for src in build.board_sources(repo):
        data = src.read_bytes()
        h.update(f"{src.relative_to(repo).as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def mpy_version() -> str:
    """The ``.mpy`` version the installed mpy-cross writes, ``"MAJOR.SUB"`` (``"6.3"``)."""
    from tools.board import deploy

    _, major, sub = deploy.mpy_cross_version()
    return f"{major}.{sub}"


def default_version(src_hash: str) -> str:
    """The version of a build without ``--version``: named after its source hash."""
    return f"src-{src_hash[:12]}"


def _check(pattern: re.Pattern[str], text: str, what: str, rule: str) -> str:
    if not pattern.fullmatch(text):
        raise BundleError(f"bundle {what} {text!r}: {rule}")
    return text


def check_name(name: str) -> str:
    """``name`` if it can name a bundle; BundleError if not."""
    rule = "1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
    return _check(_NAME, name, "name", rule)


def check_version(version: str) -> str:
    """``version`` if it can be a bundle version (``NAME@VERSION`` must stay unambiguous)."""
    rule = "1 to 64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
    rule += " (e.g. 1.2.0)"
    return _check(_VERSION, version, "version", rule)


def check_profile(name: str) -> str:
    """``name`` if it names a valid profile in ``hw/boards``; BundleError if not."""
    if name not in profiles.known():
        raise BundleError(
            f"board profile {name!r} not found (known: {', '.join(profiles.known())})"
        )
    try:
        profiles.load(name)
    except profiles.ProfileError as exc:
        raise BundleError(str(exc)) from None
    return name


def slot_files(repo: Path = REPO) -> dict[str, bytes]:
    """The content of an app slot by path inside the slot (``firmware/node.mpy``): what ``board
    deploy`` copies to ``/app_<slot>/``, compiled by mpy-cross."""
    from tools.board import deploy

    prefix = "/app_a/"
    with tempfile.TemporaryDirectory(prefix="orrery-bundle-") as tmp:
        try:
            files = deploy.build_app(Path(tmp), "a", repo)
        except deploy.DeployError as exc:
            raise BundleError(str(exc)) from None
        return {
            p[len(prefix) :]: f.read_bytes()
            for p, f in sorted(files.items())
            if p.startswith(prefix)
        }


def _built_time() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def build_bundle(
    version: str | None = None,
    name: str = DEFAULT_NAME,
    profile: str = profiles.DEFAULT,
    repo: Path = REPO,
) -> Built:
    """Compile the app and pack it with its manifest; without ``version`` it is named after
    the source hash (``default_version``). BundleError names a bad argument or a failed
    compile."""
    check_name(name)
    if version is not None:
        check_version(version)
    check_profile(profile)
    src_hash = source_hash(repo)
    files = slot_files(repo)
    data = packing.pack(sorted(files.items()))
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version or default_version(src_hash),
        "profile": profile,
        "mpy_version": mpy_version(),
        "source_hash": src_hash,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "files": [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in sorted(files.items())
        ],
        "built": _built_time(),
    }
    return Built(manifest, data)


def default_path(built: Built, out_dir: Path = OUT_DIR) -> Path:
    """Where ``orrery bundle build`` writes a bundle without ``-o``: ``NAME-VERSION.orb``."""
    return out_dir / f"{built.manifest['name']}-{built.manifest['version']}.orb"


def decode(blob: bytes) -> Built:
    """A bundle file's manifest and packed app, checked against each other: the app's sha256
    and size, and every file in it against the manifest's list. BundleError says what is
    wrong."""
    if blob.startswith(packing.MAGIC):
        raise BundleError(
            "a packed app without its manifest, not a bundle file (`orrery bundle build` "
            "writes one)"
        )
    if len(blob) < _HEAD.size or not blob.startswith(MAGIC):
        raise BundleError("not an Orrery bundle file (`orrery bundle build` writes one)")
    _, n = _HEAD.unpack_from(blob)
    if _HEAD.size + n > len(blob):
        raise BundleError("bundle file truncated inside its manifest")
    try:
        manifest = json.loads(blob[_HEAD.size : _HEAD.size + n])
    except ValueError:
        raise BundleError("the bundle's manifest is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise BundleError("the bundle's manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"bundle file format {manifest.get('format')!r}: this orrery reads format {FORMAT}"
        )
    missing = [k for k in (*MANIFEST_KEYS, "sha256", "size") if k not in manifest]
    if missing:
        raise BundleError(f"the bundle's manifest lacks {', '.join(missing)}")
    data = blob[_HEAD.size + n :]
    if len(data) != manifest["size"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise BundleError(
            f"the packed app ({len(data)} bytes) does not match its manifest's size and sha256 "
            f"({manifest['size']} bytes): the file is damaged"
        )
    try:
        listed = {f["path"]: (f["sha256"], f["size"]) for f in manifest["files"]}
    except (TypeError, KeyError):
        raise BundleError(
            "the bundle's manifest: files must be a list of {path, sha256, size}"
        ) from None
    found = unpacked(data)
    if found != listed:
        odd = sorted(p for p in set(found) | set(listed) if found.get(p) != listed.get(p))
        raise BundleError(
            f"the packed app and its manifest disagree on {len(odd)} file(s): {', '.join(odd[:3])}"
        )
    return Built(manifest, data)


def unpacked(data: bytes) -> dict[str, tuple[str, int]]:
    """``{path: (sha256, size)}`` of every file in a packed app, read by the board's own
    ``shared.bundle.unpack``; BundleError if it is malformed."""
    hashes: dict[str, Any] = {}
    sizes: dict[str, int] = {}

    def write(path: str, piece: bytes, first: bool) -> None:
        if first:
            hashes[path], sizes[path] = hashlib.sha256(), 0
        hashes[path].update(piece)
        sizes[path] += len(piece)

    try:
        packing.unpack(io.BytesIO(data), write)
    except ValueError as exc:
        raise BundleError(f"the packed app is malformed: {exc}") from None
    return {p: (h.hexdigest(), sizes[p]) for p, h in hashes.items()}
