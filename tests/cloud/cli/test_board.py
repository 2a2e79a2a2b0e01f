"""``orrery board …`` through typer: options, output and errors as a person sees them."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli.board import app as board_app
from tools.board import espimage, image, profiles

runner = CliRunner()


def flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    p = tmp_path_factory.mktemp("fw") / "micropython.bin"
    p.write_bytes(espimage.synthetic_firmware("esp32"))
    return p


def test_flash_dry_run_prints_the_esptool_command(fw):
    r = runner.invoke(board_app, ["flash", "--port", "/dev/ttyUSB0", "-f", str(fw), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "micropython v1.27.0 for ESP32 (merged), at 0x1000" in flat(r.output)
    assert f"--after hard-reset write-flash 0x1000 {fw}" in flat(r.output)


def test_flash_errors(fw, tmp_path):
    r = runner.invoke(board_app, ["flash", "--port", "/dev/ttyORRERY9", "-f", str(fw)])
    assert r.exit_code == 1 and "no such port: /dev/ttyORRERY9" in flat(r.output)
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello, this is not a firmware image at all")
    r = runner.invoke(board_app, ["flash", "--port", "/dev/ttyUSB0", "-f", str(bad)])
    assert r.exit_code == 1 and "not an ESP32 firmware image" in flat(r.output)


def test_image_command(fw, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "fleet": "f",
                "broker": {"host": "10.0.0.2", "port": 1883, "tls": False},
                "hmac_key": "00" * 16,
            }
        )
    )
    out = tmp_path / "factory.bin"
    r = runner.invoke(
        board_app,
        ["image", "-f", str(fw), "-d", "gh-001", "-c", str(cfg), "-o", str(out), "--json"],
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (
        info["chip"] == "esp32" and info["flash"] == f"esptool --chip esp32 write-flash 0x0 {out}"
    )
    image.verify(out.read_bytes(), profiles.load("esp32-devkitc"))
    r = runner.invoke(
        board_app,
        ["image", "-f", str(fw), "-d", "gh-001", "-c", str(cfg), "-o", str(out), "--board",
         "esp32-s3-devkitc-1"],
    )  # fmt: skip
    assert r.exit_code == 1
    assert "firmware is for ESP32, board esp32-s3-devkitc-1 is an ESP32-S3" in flat(r.output)


def test_profiles_command():
    assert runner.invoke(board_app, ["profiles"]).exit_code == 0
    r = runner.invoke(board_app, ["deploy", "--port", "/dev/ttyUSB0", "-d", "x", "--board", "nope"])
    assert r.exit_code == 1 and "board profile 'nope' not found" in flat(r.output)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_deploy_command_on_the_virtual_board(tmp_path, monkeypatch):
    from tools.board import deploy
    from tools.dev.virtualboard import VirtualBoard

    monkeypatch.setenv("ORRERY_SECRET", "cli-secret-for-tests-0123456789")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps({"fleet": "f", "broker": {"host": "127.0.0.1", "port": 1883, "tls": False}})
    )
    with VirtualBoard() as b:
        args = ["deploy", "--port", b.url, "-d", "vb-9", "-c", str(cfg), "--board"]
        args += ["esp32-devkitc", "--no-lib", "--no-reset"]  # the app cannot run here
        r = runner.invoke(board_app, args)
        assert r.exit_code == 0, r.output
        # the app's modules, /boot.py and /main.py, the board profile and the config
        copied = len(deploy.board_files()) + len(deploy.ENTRY) + 2
        assert f"MicroPython 1.27.0 (webassembly): {copied} file(s) copied" in flat(r.output)
        r = runner.invoke(board_app, args[:-1] + ["--dry-run"])
        assert r.exit_code == 0 and "0 to copy, 0 to remove" in flat(r.output)
        r = runner.invoke(board_app, ["monitor", "--port", b.url, "--seconds", "0.5"])
        assert r.exit_code == 0, r.output
