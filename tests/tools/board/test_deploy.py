"""Deploy: the plan and the mpremote calls built from it, the config, and whole deploys
against a virtual board (MicroPython's WebAssembly port behind a TCP serial port, reached
by mpremote's own transport)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cloud.orrery.fleet import keys
from tools.board import deploy, serialport
from tools.dev.virtualboard import VirtualBoard

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")

CFG = {
    "fleet": "bench",
    "broker": {"host": "127.0.0.1", "port": 1883, "tls": False},
    "board": "esp32-devkitc",
}
SECRET = "a-fleet-secret-for-tests-only-0123456789"
CREDENTIALS = keys.credentials_from_env  # as `orrery board deploy` hands them over


@pytest.fixture(scope="module")
def board():
    with VirtualBoard() as b:
        yield b


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    return SECRET.encode()


def test_plan_copies_only_what_changed():
    local = {"/a.mpy": b"a", "/b.mpy": b"b2", "/c.mpy": b"c"}
    on_board = {"/a.mpy": deploy.sha256(b"a"), "/b.mpy": deploy.sha256(b"b1"), "/c.mpy": None}
    plan = deploy.make_plan(local, on_board, previous=["/a.mpy", "/b.mpy", "/old.mpy"])
    assert sorted(plan.copy) == ["/b.mpy", "/c.mpy"]
    assert plan.unchanged == ["/a.mpy"]
    assert plan.delete == ["/old.mpy"]


def test_mpremote_commands():
    lines = deploy.mpremote_commands(
        "/dev/ttyUSB0",
        {"/app_a/firmware/node.mpy": Path("/tmp/b/firmware/node.mpy"), "/main.py": Path("l.py")},
        ["/app_a/firmware/gone.mpy"],
    )
    assert lines == [
        "mpremote connect /dev/ttyUSB0 fs mkdir :/app_a",
        "mpremote connect /dev/ttyUSB0 fs mkdir :/app_a/firmware",
        "mpremote connect /dev/ttyUSB0 fs cp /tmp/b/firmware/node.mpy :/app_a/firmware/node.mpy",
        "mpremote connect /dev/ttyUSB0 fs cp l.py :/main.py",
        "mpremote connect /dev/ttyUSB0 fs rm :/app_a/firmware/gone.mpy",
    ]


def test_the_bundle_leaves_out_cpython_modules(tmp_path):
    files = deploy.build_app(tmp_path, slot="b")
    assert files["/main.py"].name == "entry.py" and files["/boot.py"].name == "slots.py"
    assert "/app_b/firmware/node.mpy" in files and "/app_b/shared/workflow/compiler.mpy" in files
    assert not [p for p in files if "link_paho" in p or "simhal" in p]


def test_config_keys_come_from_the_fleet_secret(secret):
    cfg = deploy.device_config(CFG, "gh-01", "esp32-devkitc", CREDENTIALS)
    assert cfg["hmac_key"] == keys.device_key(secret, "gh-01").hex()
    assert cfg["username"] == "gh-01"
    assert cfg["password"] == keys.mqtt_password(secret, "gh-01")


def test_config_errors(secret, monkeypatch):
    with pytest.raises(deploy.DeployError, match="config is for device 'x', not 'y'"):
        deploy.device_config({**CFG, "device_id": "x"}, "y", "esp32-devkitc", CREDENTIALS)
    with pytest.raises(deploy.DeployError, match="broker.port: must be 1..65535"):
        deploy.device_config(
            {**CFG, "broker": {**CFG["broker"], "port": 0}}, "y", "esp32-devkitc", CREDENTIALS
        )
    with pytest.raises(deploy.DeployError, match="names board 'esp32-devkitc' but the profile"):
        deploy.device_config(CFG, "y", "esp32-s3-devkitc-1", CREDENTIALS)
    with pytest.raises(deploy.DeployError, match="no hmac_key and no credentials were given"):
        deploy.device_config(CFG, "y", "esp32-devkitc")
    monkeypatch.delenv("ORRERY_SECRET")
    with pytest.raises(deploy.DeployError, match="no hmac_key and no fleet secret"):
        deploy.device_config(CFG, "y", "esp32-devkitc", CREDENTIALS)


def test_board_with_an_old_mpy_version_is_refused():
    old = deploy.BoardInfo((1, 18, 0), 5, "esp32", "ESP32 module")
    with pytest.raises(deploy.DeployError, match=r"MicroPython 1.18.0, which loads .mpy v5"):
        deploy.check_compatible(old)
    esp32 = deploy.BoardInfo((1, 27, 0), 6 | 3 << 8 | 10 << 10, "esp32", "ESP32 module")
    assert (esp32.mpy_version, esp32.mpy_sub, esp32.arch) == (6, 3, "xtensawin")
    deploy.check_compatible(esp32)


def test_no_port_and_busy_port():
    with pytest.raises(serialport.PortError, match="no such port: /dev/ttyORRERY9"):
        deploy.deploy("/dev/ttyORRERY9", "d", config=CFG)
    with pytest.raises(serialport.PortError, match="nothing is listening"):
        deploy.deploy("socket://127.0.0.1:9", "d", config=CFG)
    master, slave = os.openpty()
    name = os.ttyname(slave)
    held = serialport.open_port(name)
    try:
        with pytest.raises(serialport.PortError, match="is busy"):
            deploy.deploy(name, "d", config=CFG)
    finally:
        held.close()
        os.close(master)
        os.close(slave)


def _board_files(b: VirtualBoard) -> dict[str, bytes]:
    return {
        "/" + p.relative_to(b.flash).as_posix(): p.read_bytes()
        for p in b.flash.rglob("*")
        if p.is_file()
    }


def test_deploy_then_redeploy(board, secret, tmp_path):
    lib = tmp_path / "lib"
    (lib / "orrery_probe").mkdir(parents=True)
    (lib / "orrery_probe" / "__init__.py").write_text("X = 1\n")
    (lib / "orrery_probe" / "extra.py").write_text("Y = 2\n")
    steps: list[str] = []
    first = deploy.deploy(
        board.url, "vb-01", config=CFG, lib_dir=lib, reset=False, credentials=CREDENTIALS,
        progress=lambda what, done, total: steps.append(what),
    )  # fmt: skip
    assert first.board.version == (1, 27, 0) and first.board.mpy_version == 6
    # the modules, /boot.py and /main.py, the profile and the config, the two lib files
    assert len(first.copied) == len(deploy.board_files()) + 2 + 2 + 2
    assert any(s.startswith("copy /app_a/firmware/") for s in steps)
    with deploy.Board(board.url) as b:
        manifest = json.loads(b.read(deploy.MANIFEST))
        assert b.has_module("orrery_probe.extra")
        assert b.eval("__import__('json').load(open('/config.json'))['device_id']") == "vb-01"
    board.stop()  # power off: the flash directory is the board's filesystem
    on_flash = _board_files(board)
    for path, digest in manifest["files"].items():
        assert deploy.sha256(on_flash[path]) == digest, path
    board.start()

    again = deploy.deploy(
        board.url, "vb-01", config=CFG, lib_dir=lib, reset=False, credentials=CREDENTIALS
    )
    assert again.copied == [] and again.deleted == []

    (lib / "orrery_probe" / "extra.py").unlink()  # a file leaves the bundle: it is removed
    (lib / "orrery_probe" / "__init__.py").write_text("X = 3\n")
    third = deploy.deploy(
        board.url, "vb-01", config=CFG, lib_dir=lib, reset=False, credentials=CREDENTIALS
    )
    assert third.copied == ["/lib/orrery_probe/__init__.py"]
    assert third.deleted == ["/lib/orrery_probe/extra.py"]

    with deploy.Board(board.url) as b:  # changed on the board behind the manifest's back
        b.write("/app_a/shared/workflow/compiler.mpy", b"garbage")
    fourth = deploy.deploy(board.url, "vb-01", config=None, lib=None, reset=False)
    assert fourth.copied == []  # the manifest said unchanged; the check after copying caught it
    with deploy.Board(board.url) as b:
        got = b.hashes(["/app_a/shared/workflow/compiler.mpy"])[
            "/app_a/shared/workflow/compiler.mpy"
        ]
    assert got == manifest["files"]["/app_a/shared/workflow/compiler.mpy"]


def test_dry_run_lists_mpremote_commands(board, secret):
    lines: list[str] = []
    deploy.deploy(
        board.url, "vb-01", config={**CFG, "log_level": "debug"}, dry_run=lines,
        credentials=CREDENTIALS,
    )  # fmt: skip
    assert lines == [f"mpremote connect {board.url} fs cp '<generated config.json>' :/config.json"]


def test_mip_install_from_a_local_index(board, tmp_path):
    """mpremote's mip, offline: a local directory laid out as micropython-lib's index."""
    index = tmp_path / "index"
    data = b"VALUE = 42\n"
    h = deploy.sha256(data)
    (index / "file" / h[:2]).mkdir(parents=True)
    (index / "file" / h[:2] / h[:8]).write_bytes(data)
    pkg = index / "package" / "6" / "orrery-mip-probe"
    pkg.mkdir(parents=True)
    (pkg / "latest.json").write_text(
        json.dumps({"hashes": [["orrery_mip_probe.py", h[:8]]], "version": "1.0"})
    )
    with deploy.Board(board.url) as b:
        deploy.mip_install(b, "orrery-mip-probe", str(index))
        assert b.eval("__import__('orrery_mip_probe').VALUE") == 42
        with pytest.raises(deploy.DeployError, match="mip install nope .* failed"):
            deploy.mip_install(b, "nope", str(index))


def test_a_running_app_is_restarted_in_safe_mode_first(board, secret):
    """The app's watchdog stays armed after Ctrl-C: deploy resets into safe mode first."""
    deploy.deploy(board.url, "vb-01", config=CFG, lib=None, reset=False, credentials=CREDENTIALS)
    with deploy.Board(board.url) as b:  # as if the node had been running
        b.exec("import sys\nsys.modules['firmware.node'] = sys")
    steps: list[str] = []
    deploy.deploy(
        board.url, "vb-01", config=CFG, lib=None, reset=False, credentials=CREDENTIALS,
        progress=lambda what, done, total: steps.append(what),
    )  # fmt: skip
    assert "the app was running: restarting the board in safe mode for the deploy" in steps
    with deploy.Board(board.url) as b:
        assert b.read(deploy.HOLD) is None  # cleared: the next reset starts the app
        assert b.eval("'firmware.node' in __import__('sys').modules") is False


def test_birth_watch_ignores_the_retained_state(own_broker):
    """After the reset, only a fresh (not retained) online state counts as the birth."""
    import paho.mqtt.client as mqtt

    from shared.wire import codec

    cfg = {"fleet": "bench", "device_id": "vb-01", "broker": {"host": "127.0.0.1", "port": 1}}
    topic = codec.topic("bench", "vb-01", codec.STATE)
    old = codec.encode_state(True, "0.0.9", None, None, None, 1, 0, False, None, None)
    new = codec.encode_state(True, "0.1.0", None, None, None, 2, 0, False, None, None)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", own_broker.port)
    pub.loop_start()
    pub.publish(topic, old, qos=1, retain=True).wait_for_publish()
    with deploy.watch_birth(cfg, "127.0.0.1", own_broker.port) as wait:
        assert wait(0.5) is None  # the previous boot's retained birth is not this one
        pub.publish(topic, new, qos=1, retain=True).wait_for_publish()
        state = wait(5)
    pub.loop_stop()
    pub.disconnect()
    assert state is not None and state["boot"] == 2 and state["fw"] == "0.1.0"
    with pytest.raises(deploy.DeployError, match="cannot reach the broker"):
        with deploy.watch_birth(cfg, "127.0.0.1", 1):
            pass
