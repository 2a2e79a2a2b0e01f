"""Factory images and the app bundle: built, then read back and checked piece by piece.

The firmware is synthetic (tools/board/espimage.synthetic_firmware: real ESP32 image headers,
segments, checksums and digests, a real partition table), since no MicroPython release can
be downloaded here; everything else is the real build.
"""

from __future__ import annotations

import json
import struct

import pytest
from littlefs import LittleFS

from tools.board import deploy, espimage, image, profiles
from tools.dev import mpwasm

CFG = {
    "device_id": "gh-007",
    "fleet": "greenhouse",
    "broker": {"host": "10.0.0.2", "port": 1883, "tls": False},
    "hmac_key": "00112233445566778899aabbccddeeff",
}


@pytest.fixture(scope="module")
def built() -> dict:
    out = {}
    for name in ("esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1"):
        p = profiles.load(name)
        fw = espimage.synthetic_firmware(p["chip"])
        cfg = deploy.device_config(CFG, "gh-007", name)
        files = image.bundle_files(p, cfg)
        out[name] = (p, fw, files, image.build(fw, p, files))
    return out


@pytest.mark.parametrize("name", ["esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1"])
def test_image_reads_back(built, name):
    p, fw, files, img = built[name]
    assert len(img) == profiles.flash_bytes(p)  # laid out from 0 to the end of vfs
    v = image.verify(img, p, files)
    assert v.chip == p["chip"] and v.version == "v1.27.0"
    assert [x.name for x in v.partitions] == ["nvs", "phy_init", "factory", "vfs"]
    assert set(v.files) == set(files)
    boot = p["partitions"]["bootloader_offset"]
    assert img[boot : boot + len(fw)] == fw  # the firmware, byte for byte, where it goes
    assert img[:boot] == b"\xff" * boot


def test_filesystem_is_what_micropython_mounts(built):
    p, _fw, files, img = built["esp32-devkitc"]
    parts = p["partitions"]
    region = img[parts["vfs_offset"] : parts["vfs_offset"] + parts["vfs_size"]]
    # littlefs superblock: "littlefs" magic, then version 2.0, block size, block count
    assert region[8:16] == b"littlefs"
    version, block_size, block_count = struct.unpack_from("<III", region, 20)
    assert (version, block_size, block_count) == (0x00020000, 4096, 512)
    fs = LittleFS(block_size=4096, block_count=512, read_size=32, prog_size=32, mount=False)
    fs.context.buffer[:] = region
    fs.mount()
    cfg = json.loads(fs.open("config.json", "rb").read())
    assert cfg["device_id"] == "gh-007" and cfg["board"] == "esp32-devkitc"
    assert fs.open("main.py", "rb").read() == files["/main.py"]
    assert "link_paho.mpy" not in fs.listdir("app_a/firmware")
    manifest = json.loads(fs.open(".orrery-deploy.json", "rb").read())
    assert manifest["files"]["/config.json"] == deploy.sha256(files["/config.json"])


def test_verify_catches_a_changed_file(built):
    p, _fw, files, img = built["esp32-devkitc"]
    other = dict(files)
    other["/config.json"] = b"{}"
    with pytest.raises(image.FactoryImageError, match=r"different \['/config.json'\]"):
        image.verify(img, p, other)


def test_verify_catches_a_wiped_filesystem(built):
    p, _fw, files, img = built["esp32-devkitc"]
    parts = p["partitions"]
    broken = bytearray(img)
    broken[parts["vfs_offset"] : parts["vfs_offset"] + 0x2000] = b"\xff" * 0x2000
    with pytest.raises(image.FactoryImageError, match="not a mountable LittleFS"):
        image.verify(bytes(broken), p, files)


def test_verify_catches_a_truncated_image(built):
    p, _fw, files, img = built["esp32-devkitc"]
    with pytest.raises(image.FactoryImageError, match="inside the vfs partition"):
        image.verify(img[:-4096], p, files)


def test_wrong_chip_firmware(built):
    p, _fw, files, _img = built["esp32-devkitc"]
    fw = espimage.synthetic_firmware("esp32s3")
    with pytest.raises(espimage.ImageError, match="firmware is for ESP32-S3, board esp32-devkitc"):
        image.build(fw, p, files)


def test_app_only_firmware_is_refused(built):
    p, fw, files, _img = built["esp32-devkitc"]
    with pytest.raises(image.FactoryImageError, match="app-only image"):
        image.build(fw[0x10000 - 0x1000 :], p, files)


def test_partition_table_must_match_the_profile(built):
    p, _fw, files, _img = built["esp32-devkitc"]
    parts = [dict(e) for e in p["partitions"]["entries"]]
    parts[3]["offset"], parts[3]["size"] = 0x300000, 0x100000
    fw = espimage.synthetic_firmware("esp32", partitions=parts)
    with pytest.raises(image.FactoryImageError, match="puts vfs at 0x300000"):
        image.build(fw, p, files)


def test_too_old_micropython_is_refused(built):
    p, _fw, files, _img = built["esp32-devkitc"]
    fw = espimage.synthetic_firmware("esp32", version="v1.18")
    with pytest.raises(image.FactoryImageError, match=r"MicroPython v1.18: it loads .mpy v5"):
        image.build(fw, p, files)


def test_files_that_do_not_fit(built):
    p, fw, files, _img = built["esp32-devkitc"]
    small = json.loads(json.dumps(p))
    small["partitions"]["vfs_size"] = 0x10000  # 16 blocks
    small["partitions"]["entries"][3]["size"] = 0x10000
    big = dict(files)
    big["/big.bin"] = bytes(0x20000)
    with pytest.raises(image.FactoryImageError, match="do not fit"):
        image.build_fs(small, big)


def test_partition_table_round_trip_and_md5():
    entries = profiles.load("esp32-c3-devkitm-1")["partitions"]["entries"]
    table = espimage.encode_table(entries)
    assert len(table) == espimage.TABLE_SIZE
    got = espimage.decode_table(table)
    assert [(x.name, x.type, x.subtype, x.offset, x.size) for x in got] == [
        (e["name"], e["type"], e["subtype"], e["offset"], e["size"]) for e in entries
    ]
    bad = bytearray(table)
    bad[40] ^= 1
    with pytest.raises(espimage.ImageError, match="MD5"):
        espimage.decode_table(bytes(bad))


def test_every_module_builds_and_loads_on_micropython(tmp_path):
    """mpy-cross compiles every board module; real MicroPython imports each one from .mpy."""
    files = deploy.build_app(tmp_path / "mpy")
    mpys = sorted(p for p in files if p.endswith(".mpy"))
    sources = deploy.board_files()
    assert len(mpys) == len(sources)
    assert not any("link_paho" in p or "simhal" in p for p in mpys)
    for p in mpys:
        head = files[p].read_bytes()[:4]
        assert head[:2] == b"M\x06", p  # .mpy v6, what MicroPython 1.19+ loads
    modules = [p[len("/app_a/") : -len(".mpy")].replace("/", ".") for p in mpys]
    modules = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in modules]
    code = (
        "import sys\nsys.path.insert(0, '/app')\nok = []\n"
        f"for m in {modules!r}:\n"
        "    if m == 'firmware.entry':\n        continue\n"  # /main.py: importing it starts the app
        "    __import__(m)\n    ok.append(m)\n"
        "import firmware.node\n"
        "print(firmware.node.__file__)\n"
        "print(len(ok))\n"
    )
    r = mpwasm.run(code, mounts={"/app": tmp_path / "mpy"}, repo_ro=False)  # no sources
    r.check()
    assert r.stdout.split()[-2] == "/app/firmware/node.mpy"
    assert int(r.stdout.split()[-1]) == len(modules) - 1
