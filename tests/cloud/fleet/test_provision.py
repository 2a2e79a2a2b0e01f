"""Provisioning: ids, derived keys, the devices table, per-board files and factory images."""

from __future__ import annotations

import json
import stat

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cloud.orrery.cli.board import app as board_app
from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import devices, keys, provision
from tools.board import espimage, image, profiles
from tools.board import provision as board_files

SECRET = b"provisioning-secret-for-tests-0123456789"
BROKER = {"host": "10.0.0.2", "port": 1883, "tls": False}


@pytest.fixture
def engine(tmp_path):
    return engine_for(f"sqlite:///{tmp_path / 'orrery.db'}")


def test_ids_continue_after_the_highest():
    assert board_files.device_ids("gh", 3, []) == ["gh-001", "gh-002", "gh-003"]
    assert board_files.device_ids("gh", 2, ["gh-009", "gh-010", "other-500"]) == [
        "gh-011",
        "gh-012",
    ]
    assert board_files.device_ids("gh", 1, ["gh-999"]) == ["gh-1000"]
    with pytest.raises(board_files.ProvisionError, match="--prefix"):
        board_files.device_ids("g h", 1, [])
    with pytest.raises(board_files.ProvisionError, match="--count"):
        board_files.device_ids("gh", 0, [])


def test_provision_registers_and_writes_configs(engine, tmp_path):
    p = profiles.load("esp32-c3-devkitm-1")
    out = tmp_path / "out"
    items = provision.provision(
        engine, SECRET, count=3, prefix="gh", fleet="greenhouse", profile=p, broker=BROKER,
        out_dir=out, wifi={"ssid": "bench", "password": "pw"},
    )  # fmt: skip
    assert [i.device_id for i in items] == ["gh-001", "gh-002", "gh-003"]
    for i in items:
        cfg = json.loads(i.path.read_text())
        assert cfg["hmac_key"] == keys.device_key(SECRET, i.device_id).hex()
        assert cfg["password"] == keys.mqtt_password(SECRET, i.device_id)
        assert cfg["username"] == i.device_id and cfg["board"] == "esp32-c3-devkitm-1"
        assert cfg["wifi"] == {"ssid": "bench", "password": "pw"}
        assert stat.S_IMODE(i.path.stat().st_mode) == 0o600  # it holds the board's secrets
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select name, fleet, profile from devices order by name")
        ).fetchall()
    assert [tuple(r) for r in rows] == [
        ("gh-001", "greenhouse", "esp32-c3-devkitm-1"),
        ("gh-002", "greenhouse", "esp32-c3-devkitm-1"),
        ("gh-003", "greenhouse", "esp32-c3-devkitm-1"),
    ]
    more = provision.provision(
        engine, SECRET, count=2, prefix="gh", fleet="greenhouse", profile=p, broker=BROKER,
        out_dir=out,
    )  # fmt: skip
    assert [i.device_id for i in more] == ["gh-004", "gh-005"] and all(i.new for i in more)


def test_registering_twice_is_harmless(engine):
    assert devices.register(engine, "f", "esp32-devkitc", ["a-001"]) == ["a-001"]
    assert devices.register(engine, "f", "esp32-devkitc", ["a-001", "a-002"]) == ["a-002"]


def test_invalid_broker_is_refused_before_anything_is_written(engine, tmp_path):
    p = profiles.load("esp32-devkitc")
    with pytest.raises(board_files.ProvisionError, match="broker.port: must be 1..65535"):
        provision.provision(
            engine, SECRET, count=1, prefix="x", fleet="f", profile=p,
            broker={**BROKER, "port": 70000}, out_dir=tmp_path / "o",
        )  # fmt: skip
    assert not (tmp_path / "o").exists()
    assert provision.existing_ids(engine, "x") == []


def test_provision_with_factory_images(engine, tmp_path):
    p = profiles.load("esp32-devkitc")
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(espimage.synthetic_firmware("esp32"))
    items = provision.provision(
        engine, SECRET, count=2, prefix="line1", fleet="f", profile=p, broker=BROKER,
        out_dir=tmp_path / "o", firmware=fw,
    )  # fmt: skip
    for i in items:
        img = i.image.read_bytes()
        v = image.verify(img, p)
        assert set(v.files) == set(image.bundle_files(p, i.config))
        assert json.loads(_read_fs_file(img, p, "config.json"))["device_id"] == i.device_id
        assert v.chip == "esp32"


def _read_fs_file(img: bytes, p: dict, name: str) -> bytes:
    from littlefs import LittleFS

    parts = p["partitions"]
    fs = LittleFS(block_size=4096, block_count=parts["vfs_size"] // 4096, mount=False)
    fs.context.buffer[:] = img[parts["vfs_offset"] : parts["vfs_offset"] + parts["vfs_size"]]
    fs.mount()
    with fs.open(name, "rb") as f:
        return f.read()


def test_provision_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET.decode())
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    r = CliRunner().invoke(
        board_app,
        ["provision", "--count", "2", "--prefix", "lab", "--fleet", "f", "--broker-host",
         "10.0.0.2", "--board", "esp32-s3-devkitc-1", "--db", url, "--out",
         str(tmp_path / "o"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert [g["device_id"] for g in got] == ["lab-001", "lab-002"]
    monkeypatch.delenv("ORRERY_SECRET")
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    r = CliRunner().invoke(
        board_app,
        ["provision", "-n", "1", "--prefix", "lab", "--fleet", "f", "--broker-host", "h",
         "--db", url],
    )  # fmt: skip
    assert r.exit_code == 1 and "no fleet secret" in " ".join(r.output.split())
