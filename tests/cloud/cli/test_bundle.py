"""``orrery bundle build|push|list|show|diff`` with typer's CliRunner, on SQLite and on
PostgreSQL, with bundles compiled by the real mpy-cross."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud.orrery.cli.common import os_user
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import BUNDLES, DEVICES
from tests.support.cli import flat, run
from tests.tools.board.test_bundle import repo_copy
from tools.board import bundle as bundle_file


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bundle files: app@1.0.0 built by the CLI, the same again, app@1.1.0 from changed
    sources, and other content (and another profile) under 1.0.0."""
    tmp = tmp_path_factory.mktemp("bundles")
    out = {"v1": tmp / "app-1.0.0.orb", "v1again": tmp / "again.orb"}
    run("bundle", "build", "--version", "1.0.0", "-o", str(out["v1"]))
    run("bundle", "build", "--version", "1.0.0", "-o", str(out["v1again"]))
    repo = repo_copy(tmp)
    (repo / "firmware" / "backoff.py").write_text(
        (repo / "firmware" / "backoff.py").read_text() + "\nEXTRA = 1\n"
    )
    (repo / "firmware" / "added.py").write_text("X = 1\n")
    (repo / "firmware" / "clock.py").unlink()
    for key, version in (("v2", "1.1.0"), ("other", "1.0.0")):
        out[key] = tmp / f"{key}.orb"
        out[key].write_bytes(bundle_file.build_bundle(version, repo=repo).encode())
    out["s3"] = tmp / "s3.orb"
    out["s3"].write_bytes(bundle_file.build_bundle("1.0.0", profile="esp32-s3-devkitc-1").encode())
    return out


def test_push_list_show_diff(files, db_url):
    r = run("bundle", "push", str(files["v1"]), "--db", db_url)
    v1 = bundle_file.decode(files["v1"].read_bytes())
    digest = hashlib.sha256(v1.data).hexdigest()
    count = len(v1.manifest["files"])
    assert (
        flat(r.stdout)
        == f"pushed app@1.0.0 ({digest[:12]}…, {len(v1.data):,} bytes, {count} files)"
    )
    # built again from the same sources: the same content, nothing to do
    r = run("bundle", "push", str(files["v1again"]), "--db", db_url)
    assert flat(r.stdout) == "app@1.0.0 is already in the registry with this content: nothing to do"
    res = json.loads(run("bundle", "push", str(files["v2"]), "--db", db_url, "--json").stdout)
    v2 = bundle_file.decode(files["v2"].read_bytes())
    assert res == {
        "name": "app",
        "version": "1.1.0",
        "sha256": v2.manifest["sha256"],
        "size": len(v2.data),
        "created": True,
    }
    with engine_for(db_url).begin() as c:
        c.execute(sa.insert(DEVICES), [
            {"name": "d1", "fleet": "f", "created_ms": 0, "fw": "1.0.0"},
            {"name": "d2", "fleet": "f", "created_ms": 0, "fw": "app@1.0.0"},
            {"name": "d3", "fleet": "f", "created_ms": 0, "fw": "1.1.0"},
            {"name": "d4", "fleet": "f", "created_ms": 0, "fw": "0.1.0"},
        ])  # fmt: skip
        stored = c.execute(sa.select(BUNDLES).order_by(BUNDLES.c.id)).all()
    assert [bytes(s.data) for s in stored] == [v1.data, v2.data]
    assert {s.created_by for s in stored} == {os_user()}
    rows = json.loads(run("bundle", "list", "--db", db_url, "--json").stdout)
    assert [(r["version"], r["size"], r["files"], r["devices"]) for r in rows] == [
        ("1.0.0", len(v1.data), len(v1.manifest["files"]), 2),
        ("1.1.0", len(v2.data), len(v2.manifest["files"]), 1),
    ]
    assert {(r["profile"], r["mpy_version"]) for r in rows} == {
        ("esp32-devkitc", v1.manifest["mpy_version"])
    }
    human = run("bundle", "list", "--db", db_url).stdout
    assert "app@1.0.0" in human and f"{len(v1.data):,}" in human
    shown = json.loads(run("bundle", "show", "app@1.0.0", "--db", db_url, "--json").stdout)
    assert shown["manifest"] == v1.manifest
    assert (shown["sha256"], shown["devices"], shown["created_by"]) == (digest, 2, os_user())
    newest = json.loads(run("bundle", "show", "app", "--db", db_url, "--json").stdout)
    assert newest["version"] == "1.1.0"
    human = flat(run("bundle", "show", "app@1.0.0", "--db", db_url).stdout)
    assert "firmware/node.mpy" in human and v1.manifest["source_hash"][:20] in human
    d = json.loads(run("bundle", "diff", "app@1.0.0", "app@1.1.0", "--db", db_url, "--json").stdout)
    sizes = {f["path"]: f["size"] for f in v2.manifest["files"]}
    old = {f["path"]: f["size"] for f in v1.manifest["files"]}
    assert d["added"] == [{"path": "firmware/added.mpy", "size": sizes["firmware/added.mpy"]}]
    assert d["removed"] == [{"path": "firmware/clock.mpy", "size": old["firmware/clock.mpy"]}]
    assert d["changed"] == [
        {
            "path": "firmware/backoff.mpy",
            "from_size": old["firmware/backoff.mpy"],
            "to_size": sizes["firmware/backoff.mpy"],
        }
    ]
    assert d["unchanged"] == len(old) - 2
    assert d["source_hash"] == {
        "from": v1.manifest["source_hash"],
        "to": v2.manifest["source_hash"],
    }
    assert d["profile"] is None and d["mpy_version"] is None
    human = flat(run("bundle", "diff", "app@1.0.0", "app@1.1.0", "--db", db_url).stdout)
    assert "+ firmware/added.mpy" in human and "- firmware/clock.mpy" in human
    assert "~ firmware/backoff.mpy" in human and "1 added, 1 removed, 1 changed" in human
    same = flat(run("bundle", "diff", "app@1.0.0", "app@1.0.0", "--db", db_url).stdout)
    assert same.endswith(f"no file differs ({len(old)} the same)")


def error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return flat(lines[0])


def test_refusals(files, db_url, tmp_path):
    run("bundle", "push", str(files["v1"]), "--db", db_url)
    # other content under an existing version: refused, the stored version untouched
    r = run("bundle", "push", str(files["other"]), "--db", db_url, ok=False)
    assert error(r).startswith("error: app@1.0.0 already exists with other content")
    assert "build it under a new --version" in error(r)
    # the same bytes built for another profile are another bundle, too
    r = run("bundle", "push", str(files["s3"]), "--db", db_url, ok=False)
    assert error(r) == (
        "error: app@1.0.0 already exists built for profile esp32-devkitc, this is for "
        "esp32-s3-devkitc-1: versions are immutable, build it under a new --version"
    )
    rows = json.loads(run("bundle", "list", "--db", db_url, "--json").stdout)
    assert [(r["version"], r["profile"]) for r in rows] == [("1.0.0", "esp32-devkitc")]
    # damaged and foreign files
    good = files["v1"].read_bytes()
    head = len(good) - len(bundle_file.decode(good).data)
    for name, blob, why in (
        ("text.orb", b"hello\n", "not an Orrery bundle file"),
        ("bare.orb", bundle_file.decode(good).data, "a packed app without its manifest"),
        ("cut.orb", good[:-100], f"the packed app ({len(good) - 100 - head} bytes) does not"),
    ):
        p = tmp_path / name
        p.write_bytes(blob)
        r = run("bundle", "push", str(p), "--db", db_url, ok=False)
        assert error(r).startswith(f"error: {p}: {why}"), error(r)
    # an unknown version names the known ones
    r = run("bundle", "show", "app@9.9", "--db", db_url, ok=False)
    assert error(r) == "error: no bundle 'app@9.9' in the registry (known: app@1.0.0)"
    r = run("bundle", "diff", "app@1.0.0", "other@1", "--db", db_url, ok=False)
    assert "no bundle 'other@1' in the registry (build and push one" in error(r)


def test_build_writes_to_build_bundles_and_says_which_version(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_file, "OUT_DIR", tmp_path / "bundles")
    r = run("bundle", "build")
    src = bundle_file.source_hash()
    version = f"src-{src[:12]}"
    assert f"no --version given: app@{version}, named after the source hash" in flat(r.stdout)
    path = tmp_path / "bundles" / f"app-{version}.orb"
    assert f"written to {path}" in flat(r.stdout)
    m = bundle_file.decode(path.read_bytes()).manifest
    assert (m["version"], m["source_hash"]) == (version, src)
    r = run("bundle", "build", "--version", "2.0.0", "--name", "lab", "--json")
    info = json.loads(r.stdout)
    assert info["file"] == str(tmp_path / "bundles" / "lab-2.0.0.orb")
    assert (info["name"], info["version"]) == ("lab", "2.0.0")
    r = run("bundle", "build", "--profile", "esp32-nope", ok=False)
    assert error(r) == (
        "error: board profile 'esp32-nope' not found (known: esp32-c3-devkitm-1, esp32-devkitc, "
        "esp32-s3-devkitc-1)"
    )
