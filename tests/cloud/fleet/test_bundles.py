"""The bundle registry's checks, on SQLite and PostgreSQL: which devices cannot run a bundle
(``fleet.bundles.incompatible``), with device rows as the database holds them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import bundles
from cloud.orrery.fleet.registry import RegistryError
from tools.board import bundle as bundle_file


@pytest.fixture(scope="module")
def built() -> bundle_file.Built:
    return bundle_file.build_bundle("1.0.0")


def test_incompatible_devices_and_why(built, db_url):
    mpy = built.manifest["mpy_version"]
    major, sub = (int(x) for x in mpy.split("."))
    devkitc = built.manifest["profile"]
    with engine_for(db_url, create=True).begin() as c:
        bundles.push(c, built.data, built.manifest, 0, by="test")
        row = bundles.get(c, "app@1.0.0", with_data=False)
        c.execute(sa.insert(DEVICES), [
            {"name": "same", "fleet": "f", "created_ms": 0, "profile": devkitc, "mpy": mpy},
            # another sub-version of the same major: it loads the bytecode (board deploy's rule)
            {"name": "sub", "fleet": "f", "created_ms": 0, "profile": devkitc,
             "mpy": f"{major}.{(sub + 1) % 4}"},
            {"name": "old", "fleet": "f", "created_ms": 0, "profile": devkitc,
             "mpy": f"{major - 1}.{sub}"},
            {"name": "silent", "fleet": "f", "created_ms": 0, "profile": devkitc, "mpy": None},
            {"name": "s3", "fleet": "f", "created_ms": 0, "profile": "esp32-s3-devkitc-1",
             "mpy": mpy},
            {"name": "nobody", "fleet": "f", "created_ms": 0, "profile": None, "mpy": mpy},
        ])  # fmt: skip
        devs = c.execute(sa.select(DEVICES.c.name, DEVICES.c.profile, DEVICES.c.mpy)).all()
    assert bundles.incompatible(row, devs) == {
        "old": f".mpy version {major - 1}.{sub}, bundle compiled for {mpy}",
        "silent": f".mpy version not reported yet, bundle compiled for {mpy}",
        "s3": f"profile esp32-s3-devkitc-1, bundle built for {devkitc}",
        "nobody": f"profile unknown, bundle built for {devkitc}",
    }
    assert bundles.incompatible(row, [d for d in devs if d.name in ("same", "sub")]) == {}


def test_push_checks_the_manifest(built, db_url):
    m = {k: v for k, v in built.manifest.items() if k not in ("profile", "source_hash")}
    with engine_for(db_url, create=True).begin() as c:
        with pytest.raises(RegistryError, match="^bundle manifest lacks profile, source_hash$"):
            bundles.push(c, built.data, m, 0)
        with pytest.raises(RegistryError, match="expected NAME or NAME@VERSION"):
            bundles.get(c, "app@")


def test_diff_names_a_profile_and_mpy_change(built):
    a = built.manifest
    b = dict(a, version="1.0.1", profile="esp32-s3-devkitc-1", mpy_version="7.0")
    d = bundles.diff(a, b)
    assert (d["from"], d["to"]) == ("app@1.0.0", "app@1.0.1")
    assert d["profile"] == {"from": a["profile"], "to": "esp32-s3-devkitc-1"}
    assert d["mpy_version"] == {"from": a["mpy_version"], "to": "7.0"}
    assert d["source_hash"] is None and d["size"] is None
    assert (d["added"], d["removed"], d["changed"]) == ([], [], [])
    assert d["unchanged"] == len(a["files"])
